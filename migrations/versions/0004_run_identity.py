"""runs.uuid (identity across stores), runs.excluded / exclude_reason, runs.origin.

Existing runs get an identity derived from what they already hold (id, kind,
config_hash, started_at), so that copies of one old store upgraded apart give
their runs the same identities and `ra db merge` counts each run once.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import uuid as uuidlib

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# Frozen copy of racli.store.models.legacy_uuid (tests check that they agree).
_NAMESPACE = uuidlib.UUID("6f1d3a52-8c1e-4b8e-9a57-0d2b6c4e7a10")


def legacy_uuid(run_id, kind, config_hash, started_at) -> str:
    key = f"{run_id}|{kind}|{config_hash}|{started_at.isoformat()}"
    return str(uuidlib.uuid5(_NAMESPACE, key))


_runs = sa.table(
    "runs",
    sa.column("id", sa.Integer()),
    sa.column("kind", sa.String()),
    sa.column("config_hash", sa.String()),
    sa.column("started_at", sa.DateTime()),
    sa.column("uuid", sa.String()),
)


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("uuid", sa.String(36)))
        batch.add_column(
            sa.Column("excluded", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("exclude_reason", sa.Text()))
        batch.add_column(sa.Column("origin", sa.Text()))
    bind = op.get_bind()
    rows = bind.execute(
        sa.select(_runs.c.id, _runs.c.kind, _runs.c.config_hash, _runs.c.started_at)
    ).all()
    if rows:
        bind.execute(
            _runs.update().where(_runs.c.id == sa.bindparam("rid")).values(uuid=sa.bindparam("u")),
            [
                {"rid": r.id, "u": legacy_uuid(r.id, r.kind, r.config_hash, r.started_at)}
                for r in rows
            ],
        )
    with op.batch_alter_table("runs") as batch:
        batch.alter_column("uuid", existing_type=sa.String(36), nullable=False)
        batch.create_index("ix_runs_uuid", ["uuid"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_index("ix_runs_uuid")
        batch.drop_column("origin")
        batch.drop_column("exclude_reason")
        batch.drop_column("excluded")
        batch.drop_column("uuid")
