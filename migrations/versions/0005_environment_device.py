"""environments.gpu_index and environments.gpu_uuid: the device a run used.

Two GPUs of one host become two environments (of one environment class:
GPU name + torch version), so `ra compare` can tell when the two sides ran
on different devices.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("environments") as batch:
        batch.add_column(sa.Column("gpu_index", sa.Integer()))
        batch.add_column(sa.Column("gpu_uuid", sa.String(64)))


def downgrade() -> None:
    with op.batch_alter_table("environments") as batch:
        batch.drop_column("gpu_uuid")
        batch.drop_column("gpu_index")
