"""Run ids are never reused; runs.owner (the recording session that owns a run).

SQLite gave a new run the id of the newest run after `ra runs delete` of it
(its rowid is max(id) + 1), so a checkpoint file, a reference in another run's
config or an `origin` could name a different run than it did. The runs table
is rebuilt with AUTOINCREMENT: ids only grow (SQLite keeps the largest id ever
given in `sqlite_sequence`, which the copy of the rows seeds). PostgreSQL's
sequence never gives an id twice, so there only the column is added.

`owner` holds the session id of the recorder writing the run: a process whose
run was deleted, or taken over by a `--resume` after its heartbeat went stale,
sees that it no longer owns the run and stops without writing.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _rebuild(autoincrement: bool, add_owner: bool | None) -> None:
    """Rebuild `runs` (every row, index and foreign key kept; the child tables refer to it
    by name) with or without AUTOINCREMENT; add or drop `owner` on the way."""
    with op.batch_alter_table(
        "runs", recreate="always", table_kwargs={"sqlite_autoincrement": autoincrement}
    ) as batch:
        if add_owner is True:
            batch.add_column(sa.Column("owner", sa.String(36)))
        elif add_owner is False:
            batch.drop_column("owner")


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild(autoincrement=True, add_owner=True)
    else:
        op.add_column("runs", sa.Column("owner", sa.String(36)))


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild(autoincrement=False, add_owner=False)
    else:
        op.drop_column("runs", "owner")
