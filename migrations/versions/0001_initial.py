"""Initial schema: environments, runs, timings, metrics, gate_values.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "environments",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("fingerprint", sa.String(64), nullable=False, unique=True),
        sa.Column("hostname", sa.String(255)),
        sa.Column("os", sa.String(255)),
        sa.Column("python", sa.String(64)),
        sa.Column("torch", sa.String(64)),
        sa.Column("cuda", sa.String(64)),
        sa.Column("cudnn", sa.String(64)),
        sa.Column("gpu_name", sa.String(255)),
        sa.Column("gpu_count", sa.Integer()),
        sa.Column("gpu_memory_gb", sa.Float()),
        sa.Column("driver", sa.String(64)),
        sa.Column("cpu", sa.String(255)),
        sa.Column("cpu_count", sa.Integer()),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("attn", sa.String(64)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("config_hash", sa.String(64), nullable=False),
        sa.Column("seed", sa.Integer()),
        sa.Column("tag", sa.String(255)),
        sa.Column("git_commit", sa.String(64)),
        sa.Column("env_id", sa.Integer(), sa.ForeignKey("environments.id")),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime()),
        sa.Column("heartbeat_at", sa.DateTime()),
        sa.Column("error", sa.Text()),
        sa.Column("iterations", sa.Integer()),
        # 64-bit on PostgreSQL; the SQLite DDL is unchanged (INTEGER)
        sa.Column("tokens", sa.Integer().with_variant(sa.BigInteger(), "postgresql")),
        sa.Column("train_seconds", sa.Float()),
        sa.Column("val_loss", sa.Float()),
        sa.Column("tokens_per_s", sa.Float()),
    )
    op.create_index("ix_runs_kind_status", "runs", ["kind", "status"])
    op.create_index("ix_runs_config_hash", "runs", ["config_hash"])
    op.create_table(
        "timings",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "run_id", sa.Integer(), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("attn", sa.String(64), nullable=False),
        sa.Column("mode", sa.String(32), nullable=False),
        sa.Column("phase", sa.String(16), nullable=False),
        sa.Column("batch", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("heads", sa.Integer(), nullable=False),
        sa.Column("head_dim", sa.Integer(), nullable=False),
        sa.Column("dtype", sa.String(16), nullable=False),
        sa.Column("device", sa.String(16), nullable=False),
        sa.Column("median_ms", sa.Float()),
        sa.Column("p10_ms", sa.Float()),
        sa.Column("p90_ms", sa.Float()),
        sa.Column("iters", sa.Integer()),
        sa.Column("tflops", sa.Float()),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text()),
    )
    op.create_index("ix_timings_run", "timings", ["run_id"])
    op.create_table(
        "metrics",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "run_id", sa.Integer(), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("elapsed_s", sa.Float()),
    )
    op.create_index("ix_metrics_run_name_step", "metrics", ["run_id", "name", "step"])
    op.create_table(
        "gate_values",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "run_id", sa.Integer(), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("layer", sa.Integer(), nullable=False),
        sa.Column("head", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
    )
    op.create_index("ix_gate_values_run_step", "gate_values", ["run_id", "step"])


def downgrade() -> None:
    op.drop_table("gate_values")
    op.drop_table("metrics")
    op.drop_table("timings")
    op.drop_table("runs")
    op.drop_table("environments")
