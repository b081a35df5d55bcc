"""The SQLite engine: WAL so readers never block the writer, foreign keys on, a busy timeout so
three processes (API, worker, inference) can share one file without 'database is locked'."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, create_engine

from appliance.errors import NoSpaceError
from appliance.fsutil import no_space_message
from appliance.paths import Paths

BUSY_TIMEOUT_MS = 30_000
SQLITE_FULL = 13  # "database or disk is full": a write of the database or its WAL found no room


def _on_connect(dbapi_conn: Any, _record: Any) -> None:
    # pysqlite opens transactions lazily and its own way; we issue BEGIN ourselves (see _on_begin).
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    # NORMAL in WAL mode is durable across application crashes; a power cut can lose the last
    # transactions but never corrupts the file.
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _on_begin(conn: Any) -> None:
    # IMMEDIATE takes the write lock at BEGIN, so two writers queue on busy_timeout instead of one
    # failing with SQLITE_BUSY when it upgrades a read transaction (the classic deferred deadlock).
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get("immediate") else "BEGIN")


def make_engine(paths: Paths) -> Engine:
    paths.root.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        paths.db_url, connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000}
    )
    event.listen(engine, "connect", _on_connect)
    event.listen(engine, "begin", _on_begin)
    return engine


@contextmanager
def write_session(engine: Engine) -> Iterator[Session]:
    """A session in one BEGIN IMMEDIATE transaction: committed when the block ends, rolled back
    if it raises. Use it for read-then-write logic (claims, content-addressed inserts)."""
    with engine.connect() as conn:
        conn.info["immediate"] = True
        try:
            trans = conn.begin()
        finally:
            # info outlives this checkout (it belongs to the pooled DBAPI connection).
            conn.info.pop("immediate", None)
        try:
            with Session(bind=conn) as session:
                yield session
                session.flush()
            trans.commit()
        except BaseException as exc:
            if trans.is_active:  # a failed COMMIT has already ended it
                trans.rollback()
            if _database_full(exc):
                # Rolled back: the database is as it was before this transaction.
                raise NoSpaceError(no_space_message(Path(str(engine.url.database)), "database or disk is full")) \
                    from exc
            raise


def _database_full(exc: BaseException) -> bool:
    orig = exc.orig if isinstance(exc, OperationalError) else None
    return isinstance(orig, sqlite3.Error) and getattr(orig, "sqlite_errorcode", 0) & 0xFF == SQLITE_FULL
