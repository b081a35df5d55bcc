"""Alembic environment. The URL comes from appliance.db.migrate (or APPLIANCE_DATA_DIR when the
`alembic` command is used directly with alembic.ini)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool
from sqlmodel import SQLModel

from appliance.db import tables  # noqa: F401  (registers the tables on SQLModel.metadata)
from appliance.paths import Paths
from appliance.settings import Settings

config = context.config
target_metadata = SQLModel.metadata


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    return url or Paths.from_data_dir(Settings().data_dir).db_url


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        # batch mode: SQLite cannot ALTER most things, so alembic rebuilds tables.
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
