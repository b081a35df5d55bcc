"""One queue contract for the worker's jobs (runs, exports, evaluations): claim, heartbeat, reclaim, requeue, finish.

A job is a row with a status, `worker_pid`, `heartbeat_at`, `attempts`, `started_at`, `finished_at`
and `error`; `JobQueue` is parametrized by its table, its statuses and what its own columns need at
each move (hooks). Every move goes through `transition()` and records a `<entity>.<status>` event.

    waiting --claim--> running --end(ok)--> succeeded
       ^                  |  \\--end(not ok)--> failed
       +--reclaim/requeue-+

Every write runs inside one BEGIN IMMEDIATE (`write_session`): two workers never claim the same job.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, timedelta
from enum import StrEnum
from typing import Generic, TypeVar

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from appliance.db import events
from appliance.db.engine import write_session
from appliance.db.status import transition
from appliance.db.tables import Artifact, Evaluation, Run
from appliance.errors import NotFoundError
from appliance.jobs.common import now, worker_gone

J = TypeVar("J", Run, Artifact, Evaluation)


@dataclass(frozen=True)
class Beat:
    """What a worker reports with a heartbeat: seconds waited for kiosks since the last beat (runs), the
    child's stage and progress 0..1 (exports). A queue records the parts its table has."""

    paused_s: float = 0.0
    stage: str | None = None
    progress: float | None = None


def _nothing(_row: object) -> None:
    return None


@dataclass(frozen=True)
class JobQueue(Generic[J]):
    """The queue of one table. `entity`: the events' entity type and kind prefix ("run": run.running).
    `restart`: how a job taken back goes on, for its event ("resuming"). Hooks: `on_claim(row)` sets the
    table's own columns when a worker takes the row, `on_release(row)` when it goes back to waiting,
    `on_beat(row, beat)` at each heartbeat."""

    table: type[J]
    entity: str
    waiting: StrEnum
    running: StrEnum
    succeeded: StrEnum
    failed: StrEnum
    restart: str
    on_claim: Callable[[J], None] = _nothing
    on_release: Callable[[J], None] = _nothing
    on_beat: Callable[[J, Beat], None] = lambda _row, _beat: None

    def get(self, session: Session, job_id: str) -> J:
        """The row; NotFoundError (404) when there is none."""
        row = session.get(self.table, job_id)
        if row is None:
            raise NotFoundError(f"no {self.entity} with id {job_id!r}")
        return row

    def move(self, session: Session, row: J, new: StrEnum, message: str) -> None:
        """Apply a legal status move (IllegalTransitionError otherwise) and record its event."""
        row.status = transition(type(new)(row.status), new)
        session.add(row)
        events.record(session, kind=f"{self.entity}.{new}", entity_type=self.entity, entity_id=row.id,
                      message=message)

    def claim(self, *, engine: Engine, pid: int) -> J | None:
        """The oldest waiting job, moved to running for worker `pid` (attempts + 1); None when none waits.
        The returned row is detached (read its columns, do not write it)."""
        with write_session(engine) as session:
            row = session.exec(select(self.table).where(col(self.table.status) == self.waiting)
                               .order_by(col(self.table.created_at)).limit(1)).first()
            if row is None:
                return None
            self.move(session, row, self.running, f"claimed by worker pid {pid}")
            row.worker_pid, row.heartbeat_at, row.attempts = pid, now(), row.attempts + 1
            self.on_claim(row)
            session.flush()
            session.expunge(row)
            return row

    def heartbeat(self, *, engine: Engine, job_id: str, beat: Beat | None = None) -> str:
        """Refresh a running job's heartbeat and record `beat`; returns its status (the worker stops a
        child whose job is no longer running: cancelled, or taken back by another worker)."""
        with write_session(engine) as session:
            row = self.get(session, job_id)
            if row.status == self.running:
                row.heartbeat_at = now()
                self.on_beat(row, beat or Beat())
                session.add(row)
            return str(row.status)

    def reclaim_stale(self, *, engine: Engine, stale_after_s: float) -> list[str]:
        """Running jobs whose worker is gone (its process no longer exists, or its pid now belongs to a
        process started after the last heartbeat) or went silent for `stale_after_s` seconds go back to
        waiting; returns their ids. The caller removes what their dead attempt left half-written."""
        limit = now() - timedelta(seconds=stale_after_s)
        taken = []
        with write_session(engine) as session:
            for row in session.exec(select(self.table).where(col(self.table.status) == self.running)):
                gone = worker_gone(row.worker_pid, row.heartbeat_at)
                if gone or row.heartbeat_at is None or row.heartbeat_at.replace(tzinfo=UTC) < limit:
                    taken.append((row, "is gone" if gone else "went silent"))
            for row, why in taken:
                self._release(session, row, f"worker pid {row.worker_pid} {why}; {self.restart}")
        return [row.id for row, _ in taken]

    def requeue(self, *, engine: Engine, job_id: str, reason: str) -> None:
        """A running job whose worker is stopping goes back to waiting; any other is left as it is."""
        with write_session(engine) as session:
            row = self.get(session, job_id)
            if row.status == self.running:
                self._release(session, row, reason)

    def _release(self, session: Session, row: J, message: str) -> None:
        self.move(session, row, self.waiting, message)
        row.worker_pid = None
        self.on_release(row)

    def still_running(self, session: Session, job_id: str) -> J | None:
        """The row if it is still running (the one state a finish may move), else None: a job cancelled
        or taken back meanwhile keeps the status it has."""
        row = self.get(session, job_id)
        return row if row.status == self.running else None

    def end(self, session: Session, row: J, *, ok: bool, message: str) -> None:
        """Finish a running job: succeeded, or failed with `message` as its error; its worker is released."""
        row.finished_at, row.worker_pid = now(), None
        if not ok:
            row.error = message
        self.move(session, row, self.succeeded if ok else self.failed, message)
