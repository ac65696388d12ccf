"""Alembic environment for the ra results store.

`racli.store.engine` runs the migrations programmatically with an open
connection (`config.attributes["connection"]`). The plain `alembic` command
works too, from the project root: `alembic -x db=PATH_OR_URL upgrade head`.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from racli.store.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite alters tables by copy-and-move
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    from racli.store.urls import database_url

    url = context.get_x_argument(as_dictionary=True).get("db") or config.get_main_option(
        "sqlalchemy.url"
    )
    engine = create_engine(database_url(url or "ra.db"))
    with engine.begin() as conn:
        _run(conn)
