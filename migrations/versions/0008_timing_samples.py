"""timings.samples: the time of every repeat (ms, a JSON list as text).

With the samples stored, `ra bench` and `ra compare --metric ms` judge a speed
difference with a Mann-Whitney U test on the repeats; rows recorded before this
revision keep NULL and are judged by the p10-p90 rule, labelled.

Revision ID: 0008
Revises: 0006
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("timings") as batch:
        batch.add_column(sa.Column("samples", sa.Text()))


def downgrade() -> None:
    with op.batch_alter_table("timings") as batch:
        batch.drop_column("samples")
