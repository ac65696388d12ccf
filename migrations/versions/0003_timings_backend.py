"""timings.backend (the SDPA backend that ran) and timings.compile_s.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("timings") as batch:
        batch.add_column(sa.Column("backend", sa.String(32)))
        batch.add_column(sa.Column("compile_s", sa.Float()))


def downgrade() -> None:
    with op.batch_alter_table("timings") as batch:
        batch.drop_column("compile_s")
        batch.drop_column("backend")
