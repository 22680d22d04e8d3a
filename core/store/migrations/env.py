"""Alembic environment for keyrotor.

`Store.migrate()` runs the migrations programmatically and hands over its connection (already in a
transaction holding the migration lock) through `config.attributes["connection"]`.

To author a revision from the command line, Alembic needs `script_location`; with
`[tool.alembic] script_location = "core/store/migrations"` in pyproject.toml:

    alembic -x url=sqlite:///.keyrotor/keyrotor.db revision --autogenerate -m "..."

The URL comes from `-x url=...`, `sqlalchemy.url`, or `KEYROTOR_DATABASE_URL`.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import Connection

from core.store.db import Store, normalize_url
from core.store.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things in place; batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _url() -> str:
    url = (
        context.get_x_argument(as_dictionary=True).get("url")
        or config.get_main_option("sqlalchemy.url")
        or os.environ.get("KEYROTOR_DATABASE_URL")
    )
    if not url:
        raise RuntimeError("no database URL: pass -x url=..., or set KEYROTOR_DATABASE_URL")
    return url


def run_migrations_offline() -> None:
    context.configure(
        url=normalize_url(_url()), target_metadata=target_metadata, literal_binds=True
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    store = Store(_url())
    try:
        with store.engine.begin() as connection:
            _run(connection)
    finally:
        store.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
