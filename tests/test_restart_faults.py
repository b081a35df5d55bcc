"""Restarts after a crash or a power cut: a job whose worker process is gone is taken back at once
(not after APPLIANCE_WORKER_STALE_AFTER_S of silence), and a model whose load was cut is loaded once
more before its deployment is blamed (a model that kills the server twice is refused as before)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import START_TIMEOUT_S
from fastapi.testclient import TestClient
from samples import ALPACA, jsonl
from sqlmodel import Session, col, select
from test_inference import Server

from appliance.api.app import create_app
from appliance.bootstrap import Runtime
from appliance.db.engine import write_session
from appliance.db.tables import Artifact, Event, Run
from appliance.inference.loading import LoadingMarker
from appliance.jobs import exports, runs
from appliance.jobs.common import now
from appliance.models.registry import BUNDLED_ID

NEVER_STALE = 10**7  # seconds: only the worker-gone rule can take a job back in these tests


def wait_for(check: Callable[[], bool], what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.1)


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()  # reaped: no process has this pid now
    return proc.pid


def events_of(runtime: Runtime, entity_id: str) -> list[str]:
    with Session(runtime.engine) as session:
        return [e.message for e in session.exec(select(Event).where(Event.entity_id == entity_id)
                                                .order_by(col(Event.id)))]


@pytest.fixture
def api(runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(runtime=runtime)) as c:
        c.headers["Authorization"] = "Bearer test-admin-token"
        yield c


def test_a_job_whose_worker_process_is_gone_is_taken_back_at_once(api: TestClient, runtime: Runtime) -> None:
    engine = runtime.engine
    ds = api.post("/api/datasets", files={"file": ("faq.jsonl", jsonl(ALPACA))}).json()["id"]
    run = api.post("/api/runs", json={"dataset_id": ds, "base_model_id": BUNDLED_ID, "config": {"max_steps": 2}})
    art = api.post("/api/artifacts/export", json={"base_model_id": BUNDLED_ID, "type": "f16"})
    assert run.status_code == 201 and art.status_code == 202, (run.text, art.text)

    # A live worker (this process, started before the heartbeat) keeps its jobs.
    assert runs.QUEUE.claim(engine=engine, pid=os.getpid()) is not None
    assert exports.QUEUE.claim(engine=engine, pid=os.getpid()) is not None
    assert runs.QUEUE.reclaim_stale(engine=engine, stale_after_s=NEVER_STALE) == []
    assert exports.QUEUE.reclaim_stale(engine=engine, stale_after_s=NEVER_STALE) == []

    # Its process gone (killed, power cut): both are back in the queue at once.
    gone = dead_pid()
    with write_session(engine) as session:
        for job in (session.get(Run, run.json()["id"]), session.get(Artifact, art.json()["id"])):
            assert job is not None
            job.worker_pid = gone
    assert runs.QUEUE.reclaim_stale(engine=engine, stale_after_s=NEVER_STALE) == [run.json()["id"]]
    assert exports.QUEUE.reclaim_stale(engine=engine, stale_after_s=NEVER_STALE) == [art.json()["id"]]
    assert api.get(f"/api/runs/{run.json()['id']}").json()["status"] == "queued"
    assert api.get(f"/api/artifacts/{art.json()['id']}").json()["status"] == "pending"
    assert f"worker pid {gone} is gone; resuming" in events_of(runtime, run.json()["id"])

    # Its pid reused by a process that started after the last heartbeat (after a reboot, or this very
    # worker after a restart): gone too.
    newcomer = subprocess.Popen(["sleep", "60"])
    try:
        claimed = runs.QUEUE.claim(engine=engine, pid=newcomer.pid)
        assert claimed is not None
        with write_session(engine) as session:
            job = session.get(Run, claimed.id)
            assert job is not None
            job.heartbeat_at = now() - timedelta(minutes=5)
        assert runs.QUEUE.reclaim_stale(engine=engine, stale_after_s=NEVER_STALE) == [claimed.id]
    finally:
        newcomer.kill()
        newcomer.wait()


def worker_process(data_dir: Path, **env: str) -> subprocess.Popen[bytes]:
    full = {**os.environ, "APPLIANCE_DATA_DIR": str(data_dir), "APPLIANCE_ADMIN_TOKEN": "t",
            "APPLIANCE_WORKER_POLL_S": "0.2", "APPLIANCE_WORKER_STALE_AFTER_S": str(NEVER_STALE), **env}
    return subprocess.Popen([sys.executable, "-m", "appliance.cli", "worker"], env=full,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def power_cut(worker: subprocess.Popen[bytes]) -> None:
    """Kill a worker process and its children with SIGKILL, as a power cut would."""
    children = subprocess.run(["pgrep", "-P", str(worker.pid)], capture_output=True, text=True).stdout.split()
    worker.send_signal(signal.SIGKILL)
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(child), signal.SIGKILL)
    worker.wait(60)


def test_an_export_killed_with_its_worker_restarts_as_soon_as_a_worker_starts(api: TestClient,
                                                                              runtime: Runtime) -> None:
    art_id = api.post("/api/artifacts/export", json={"base_model_id": BUNDLED_ID, "type": "f16"}).json()["id"]

    def artifact() -> dict[str, object]:
        return dict(api.get(f"/api/artifacts/{art_id}").json())

    first = worker_process(runtime.paths.root)
    try:
        wait_for(lambda: artifact()["status"] == "running" and artifact()["stage"] != "starting",
                 "the export started")
        power_cut(first)
    finally:
        if first.poll() is None:
            first.kill()
    assert artifact()["status"] == "running"  # as the dead worker left it
    second = worker_process(runtime.paths.root)  # would wait NEVER_STALE seconds for silence alone
    try:
        wait_for(lambda: artifact()["status"] in ("ready", "failed"), "the export restarted and finished")
    finally:
        second.terminate()
        second.wait(60)
    done = artifact()
    assert done["status"] == "ready" and done["attempts"] == 2, done
    assert f"worker pid {first.pid} is gone; export will restart" in events_of(runtime, art_id)


# --- a power cut while the inference server loads a model ----------------------------------------------


def test_the_loading_marker_allows_one_more_load_then_refuses(tmp_path: Path) -> None:
    path = tmp_path / "inference-loading"
    LoadingMarker(path).begin("dep_a")  # the process dies during this load
    second = LoadingMarker(path)
    assert second.recover() is None and not path.exists()  # loaded once more
    second.begin("dep_a")  # and dies again
    third = LoadingMarker(path)
    assert third.recover() == "dep_a"  # refused
    path.write_text("dep_b")  # left by an older version: one attempt
    assert LoadingMarker(path).recover() is None
    LoadingMarker(path).begin(None)  # the bundled model: never refused
    assert LoadingMarker(path).recover() is None


def deploy_bundled(api: TestClient) -> str:
    res = api.post("/api/deployments", json={"base_model_id": BUNDLED_ID})
    assert res.status_code == 202, res.text
    return str(res.json()["id"])


def deployment(api: TestClient, dep_id: str) -> dict[str, object]:
    deadline = time.monotonic() + START_TIMEOUT_S
    while (dep := dict(api.get(f"/api/deployments/{dep_id}").json()))["status"] == "pending":
        assert time.monotonic() < deadline, f"deployment {dep_id} still pending"
        time.sleep(0.1)
    return dep


def test_a_model_whose_load_was_cut_once_is_served_and_one_that_died_twice_is_refused(
    api: TestClient, runtime: Runtime
) -> None:
    marker = runtime.paths.inference_loading
    dep_id = deploy_bundled(api)
    LoadingMarker(marker).begin(dep_id)  # what a power cut during the load leaves
    server = Server(runtime.paths.root).start()
    try:
        dep = deployment(api, dep_id)
        assert dep["status"] == "active", dep
        assert [m.id for m in server.client().models.list().data] == [BUNDLED_ID]
        assert not marker.exists()
    finally:
        server.stop()

    again = deploy_bundled(api)
    died = LoadingMarker(marker)
    died.begin(again)
    died = LoadingMarker(marker)
    died.recover()
    died.begin(again)  # the second load of it killed the process too
    server = Server(runtime.paths.root).start()
    try:
        dep = deployment(api, again)
        assert dep["status"] == "failed" and "died twice while loading" in str(dep["error"]), dep
        assert not marker.exists()
        assert server.client().models.list().data  # the model active before goes on serving
    finally:
        server.stop()
