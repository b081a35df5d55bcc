"""The one queue contract (appliance/jobs/queue.py) for runs and exports alike, on a real SQLite file:
claim is exclusive and oldest first, heartbeats record, stale jobs are taken back, a stopping worker
requeues, and a finish moves only a job that is still running."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from samples import ALPACA, jsonl
from sqlmodel import Session, col, select

from appliance.api.app import create_app
from appliance.bootstrap import Runtime
from appliance.db.engine import write_session
from appliance.db.tables import Event
from appliance.jobs import exports, runs
from appliance.jobs.common import now
from appliance.jobs.queue import Beat, JobQueue
from appliance.models.registry import BUNDLED_ID


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()  # reaped: no process has this pid now
    return proc.pid


@dataclass
class Case:
    queue: JobQueue[Any]
    jobs: list[str]  # oldest first
    runtime: Runtime

    def row(self, job_id: str) -> Any:
        with Session(self.runtime.engine) as session:
            return self.queue.get(session, job_id)

    def events(self, job_id: str) -> list[str]:
        with Session(self.runtime.engine) as session:
            return [f"{e.kind}: {e.message}" for e in session.exec(
                select(Event).where(Event.entity_id == job_id).order_by(col(Event.id)))]

    def age_heartbeat(self, job_id: str, seconds: float) -> None:
        with write_session(self.runtime.engine) as session:
            row = self.queue.get(session, job_id)
            row.heartbeat_at = now() - timedelta(seconds=seconds)


@pytest.fixture(params=["run", "export"])
def case(request: pytest.FixtureRequest, runtime: Runtime) -> Iterator[Case]:
    with TestClient(create_app(runtime=runtime)) as api:
        api.headers["Authorization"] = "Bearer test-admin-token"
        if request.param == "run":
            ds = api.post("/api/datasets", files={"file": ("faq.jsonl", jsonl(ALPACA))}).json()["id"]
            made = [api.post("/api/runs", json={"dataset_id": ds, "base_model_id": BUNDLED_ID,
                                                "config": {"max_steps": n}}) for n in (2, 3)]
        else:
            made = [api.post("/api/artifacts/export", json={"base_model_id": BUNDLED_ID, "type": t})
                    for t in ("f16", "q8_0")]
        assert all(r.status_code in (201, 202) for r in made), [r.text for r in made]
        yield Case(runs.QUEUE if request.param == "run" else exports.QUEUE, [r.json()["id"] for r in made], runtime)


def test_claim_is_exclusive_and_oldest_first(case: Case) -> None:
    engine = case.runtime.engine
    with ThreadPoolExecutor(6) as pool:  # six workers at once; each job is claimed exactly once
        claimed = [r.id for r in pool.map(lambda _: case.queue.claim(engine=engine, pid=os.getpid()), range(6)) if r]
    assert sorted(claimed) == sorted(case.jobs)
    assert case.queue.claim(engine=engine, pid=os.getpid()) is None
    first = case.row(case.jobs[0])
    assert first.status == "running" and first.attempts == 1 and first.worker_pid == os.getpid()
    assert first.heartbeat_at is not None and first.started_at is not None
    assert f"{case.queue.entity}.running: claimed by worker pid {os.getpid()}" in case.events(case.jobs[0])
    # Oldest first, one at a time.
    for job_id in case.jobs:
        case.queue.requeue(engine=engine, job_id=job_id, reason="test")
    assert case.queue.claim(engine=engine, pid=os.getpid()).id == case.jobs[0]  # type: ignore[union-attr]


def test_a_heartbeat_records_the_beat_and_answers_the_status(case: Case) -> None:
    engine, job_id = case.runtime.engine, case.jobs[0]
    case.queue.claim(engine=engine, pid=os.getpid())
    case.age_heartbeat(job_id, 60)
    before = case.row(job_id).heartbeat_at
    beat = Beat(paused_s=1.5, stage="write", progress=0.25)
    assert case.queue.heartbeat(engine=engine, job_id=job_id, beat=beat) == "running"
    assert case.queue.heartbeat(engine=engine, job_id=job_id, beat=beat) == "running"
    row = case.row(job_id)
    assert row.heartbeat_at > before
    if case.queue is runs.QUEUE:
        assert row.paused_for_serving_s == pytest.approx(3.0)
    else:
        assert (row.stage, row.progress) == ("write", 0.25)
    # Not running (back in the queue): the status is answered and nothing is recorded.
    case.queue.requeue(engine=engine, job_id=job_id, reason="worker stopped")
    assert case.queue.heartbeat(engine=engine, job_id=job_id, beat=beat) == str(case.queue.waiting)
    assert case.row(job_id).heartbeat_at == row.heartbeat_at


def test_a_silent_job_is_taken_back_and_a_live_one_is_kept(case: Case) -> None:
    engine = case.runtime.engine
    for _ in case.jobs:  # pid 1: a live process that started long before the heartbeats (so not "gone")
        case.queue.claim(engine=engine, pid=1)
    silent, live = case.jobs
    case.age_heartbeat(silent, 120)
    assert case.queue.reclaim_stale(engine=engine, stale_after_s=60) == [silent]
    row = case.row(silent)
    assert row.status == str(case.queue.waiting) and row.worker_pid is None
    assert (f"{case.queue.entity}.{case.queue.waiting}: worker pid 1 went silent; {case.queue.restart}"
            in case.events(silent))
    if case.queue is exports.QUEUE:
        assert (row.stage, row.progress) == ("queued", 0.0)
    assert case.row(live).status == "running"
    with write_session(engine) as session:  # its worker's process gone: taken back at once
        case.queue.get(session, live).worker_pid = dead_pid()
    assert case.queue.reclaim_stale(engine=engine, stale_after_s=10**7) == [live]
    assert case.events(live)[-1].endswith(f"is gone; {case.queue.restart}")
    again = case.queue.claim(engine=engine, pid=os.getpid())
    assert again is not None and again.id == silent and again.attempts == 2
    assert again.heartbeat_at.replace(tzinfo=UTC) > now() - timedelta(seconds=60)


def test_a_stopping_worker_requeues_only_running_jobs(case: Case) -> None:
    engine, job_id = case.runtime.engine, case.jobs[0]
    before = case.events(job_id)
    case.queue.requeue(engine=engine, job_id=job_id, reason="worker stopped")  # waiting: nothing to do
    assert case.events(job_id) == before and case.row(job_id).status == str(case.queue.waiting)
    case.queue.claim(engine=engine, pid=os.getpid())
    case.queue.requeue(engine=engine, job_id=job_id, reason="worker stopped; will resume")
    assert case.row(job_id).status == str(case.queue.waiting)
    assert case.events(job_id)[-1] == f"{case.queue.entity}.{case.queue.waiting}: worker stopped; will resume"


@pytest.mark.parametrize("ok", [True, False])
def test_a_finish_moves_a_running_job_once(case: Case, ok: bool) -> None:
    engine, job_id = case.runtime.engine, case.jobs[0]
    case.queue.claim(engine=engine, pid=os.getpid())
    with write_session(engine) as session:
        row = case.queue.still_running(session, job_id)
        assert row is not None
        case.queue.end(session, row, ok=ok, message="all done" if ok else "it broke")
    row = case.row(job_id)
    assert row.status == str(case.queue.succeeded if ok else case.queue.failed)
    assert row.finished_at is not None and row.worker_pid is None and row.error == (None if ok else "it broke")
    with write_session(engine) as session:
        assert case.queue.still_running(session, job_id) is None  # a second finish moves nothing
    assert case.queue.heartbeat(engine=engine, job_id=job_id) == row.status
