"""Migrations: an empty database goes up to head and back down to base; the tables the code uses
are exactly what the migrations build; the event log refuses rewrites."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import DatabaseError
from sqlmodel import Session, SQLModel

from appliance.db import migrate
from appliance.db.engine import make_engine
from appliance.db.tables import Event
from appliance.paths import Paths

TABLES = {
    "alembic_version", "base_models", "datasets", "dataset_token_stats", "runs", "checkpoints",
    "artifacts", "deployments", "events", "run_metrics", "evaluations", "run_samples",
}


def test_upgrade_to_head_and_downgrade_to_base(tmp_path: Path) -> None:
    paths = Paths.from_data_dir(tmp_path / "data")
    migrate.upgrade(paths)
    assert migrate.current_revision(paths) == "0009"
    engine = create_engine(paths.db_url)
    assert set(inspect(engine).get_table_names()) == TABLES
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), SQLModel.metadata) == []
    migrate.downgrade(paths, "base")
    assert migrate.current_revision(paths) is None
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    migrate.upgrade(paths)  # and up again from base
    assert set(inspect(engine).get_table_names()) == TABLES
    engine.dispose()


def test_engine_uses_wal_foreign_keys_and_busy_timeout(tmp_path: Path) -> None:
    paths = Paths.from_data_dir(tmp_path / "data")
    migrate.upgrade(paths)
    engine = make_engine(paths)
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 30000
    engine.dispose()


def test_event_log_is_append_only(tmp_path: Path) -> None:
    paths = Paths.from_data_dir(tmp_path / "data")
    migrate.upgrade(paths)
    engine = make_engine(paths)
    with Session(engine) as session:
        session.add(Event(kind="k", entity_type="t", entity_id="e", message="m"))
        session.commit()
    with engine.connect() as conn:
        with pytest.raises(DatabaseError, match="append-only"):
            conn.execute(text("UPDATE events SET message = 'rewritten'"))
        with pytest.raises(DatabaseError, match="append-only"):
            conn.execute(text("DELETE FROM events"))
    engine.dispose()
