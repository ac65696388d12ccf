"""jobs: the units of work of `ra experiment` (calibration, arm x seed), their owner and
their scheduler job.

One row per unit and experiment (unique): claiming it is one UPDATE, so two processes
never train the same arm and seed at once, and a rerun finds the Slurm job or Ray actor
it submitted before.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("experiment", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("arm", sa.String(64), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("launcher", sa.String(16), nullable=False),
        sa.Column("scheduler_job", sa.String(128)),
        sa.Column("scheduler_state", sa.String(32)),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id", ondelete="SET NULL")),
        sa.Column("owner", sa.String(255)),
        sa.Column("claimed_at", sa.DateTime()),
        sa.Column("note", sa.Text()),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("experiment", "kind", "arm", "seed", name="uq_jobs_unit"),
    )
    op.create_index("ix_jobs_owner", "jobs", ["owner"])


def downgrade() -> None:
    op.drop_index("ix_jobs_owner", table_name="jobs")
    op.drop_table("jobs")
