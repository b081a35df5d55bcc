"""Alembic, driven from code: `appliance migrate` and every start run upgrade(head)."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine

from appliance.paths import Paths
from appliance.resources import migrations_dir


def alembic_config(paths: Paths) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("sqlalchemy.url", paths.db_url)
    return cfg


def upgrade(paths: Paths, revision: str = "head") -> None:
    paths.root.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(paths), revision)


def downgrade(paths: Paths, revision: str = "base") -> None:
    command.downgrade(alembic_config(paths), revision)


def current_revision(paths: Paths) -> str | None:
    engine = create_engine(paths.db_url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
