"""Runs on the real bundled model: lifecycle, cancel, config refusals, and resume after kill -9
(also in the middle of a checkpoint write) with the same losses as an uninterrupted run."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import clone_data_dir, make_settings
from fastapi.testclient import TestClient
from samples import jsonl
from sqlmodel import Session, select

from appliance.api.app import create_app
from appliance.bootstrap import Runtime, bootstrap
from appliance.db.tables import Event
from appliance.serving import Signal
from appliance.worker.worker import Worker

PLACES = ["pharmacy", "lab", "x-ray room", "cafeteria", "parking", "front desk", "billing office", "chapel"]
FAQ = [
    {"instruction": f"Where is the {p}?", "output": f"The {p} is on floor {i % 4 + 1}, room {100 + i}."}
    for i, p in enumerate(PLACES * 3)
]
CRASH_CONFIG = {"max_steps": 8, "save_steps": 3, "cutoff_len": 96, "per_device_train_batch_size": 4,
                "learning_rate": 1e-3, "lora_rank": 8, "seed": 11, "warmup_ratio": 0.0}


def wait_for(check: Callable[[], bool], timeout: float, step: Callable[[], object] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        if step is not None:
            step()
        time.sleep(0.1)


class Env:
    """A data dir with the FAQ dataset, an API client, and a way to run workers."""

    def __init__(self, data_dir: Path, **settings: Any) -> None:
        self.data_dir = data_dir
        self.runtime: Runtime = bootstrap(make_settings(data_dir, **settings))
        self.client = TestClient(create_app(runtime=self.runtime))
        self.client.headers["Authorization"] = "Bearer test-admin-token"
        res = self.client.post("/api/datasets", files={"file": ("faq.jsonl", jsonl(FAQ))})
        assert res.status_code == 201, res.text
        self.dataset_id = res.json()["id"]

    def create(self, config: dict[str, Any], **body: Any) -> dict[str, Any]:
        res = self.client.post("/api/runs", json={"dataset_id": self.dataset_id,
                                                  "base_model_id": "smollm2-135m-instruct", "config": config, **body})
        assert res.status_code == 201, res.text
        return dict(res.json())

    def run(self, run_id: str) -> dict[str, Any]:
        return dict(self.client.get(f"/api/runs/{run_id}").json())

    def losses(self, run_id: str) -> dict[int, float]:
        return {m["step"]: m["loss"] for m in self.client.get(f"/api/runs/{run_id}/metrics").json()
                if m["kind"] == "train"}

    def worker_process(self, **env: str) -> subprocess.Popen[bytes]:
        full = {**os.environ, "APPLIANCE_DATA_DIR": str(self.data_dir), "APPLIANCE_ADMIN_TOKEN": "t",
                "APPLIANCE_WORKER_STALE_AFTER_S": "3", "APPLIANCE_WORKER_POLL_S": "0.2", **env}
        return subprocess.Popen([sys.executable, "-m", "appliance.cli", "worker"], env=full,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def close(self) -> None:
        self.client.close()
        self.runtime.engine.dispose()


@pytest.fixture
def env(data_dir: Path) -> Iterator[Env]:
    e = Env(data_dir)
    yield e
    e.close()


@pytest.fixture(scope="module")
def reference_losses(tmp_path_factory: pytest.TempPathFactory, template_dir: Path) -> dict[int, float]:
    """CRASH_CONFIG trained once without interruption, by an in-process worker."""
    data = tmp_path_factory.mktemp("reference") / "data"
    clone_data_dir(template_dir, data)
    e = Env(data)
    run = e.create(CRASH_CONFIG)
    worker = Worker(e.runtime)
    wait_for(lambda: e.run(run["id"])["status"] == "succeeded", 300, worker.run_once)
    losses = e.losses(run["id"])
    e.close()
    assert sorted(losses) == list(range(1, 9))
    return losses


def test_run_goes_queued_running_succeeded_and_loss_goes_down(env: Env) -> None:
    run = env.create({"max_steps": 6, "save_steps": 2, "cutoff_len": 96, "seed": 3, "val_size": 0.25, "eval_steps": 3},
                     preset="lora-cpu", name="faq")
    assert (run["status"], run["step"], run["max_steps"], run["preset"]) == ("queued", 0, 6, "lora-cpu")
    assert run["config"]["lora_rank"] == 16 and run["config"]["max_steps"] == 6  # preset + override
    assert run["estimate"]["fits"] and run["estimate"]["peak_memory_mb"] > 500
    worker = Worker(env.runtime)
    seen: set[str] = set()

    def step() -> None:
        worker.run_once()
        seen.add(env.run(run["id"])["status"])

    wait_for(lambda: env.run(run["id"])["status"] == "succeeded", 300, step)
    assert "running" in seen
    done = env.run(run["id"])
    assert (done["step"], done["error"], done["attempts"]) == (6, None, 1)
    everything = env.client.get(f"/api/runs/{run['id']}/metrics").json()
    metrics = [m for m in everything if m["kind"] == "train"]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    evals = [m for m in everything if m["kind"] == "eval"]
    assert [m["step"] for m in evals] == [3, 6] and evals[1]["loss"] < evals[0]["loss"]  # held-out loss falls
    assert all(m["tokens_per_s"] > 0 and m["memory_mb"] > 0 and m["grad_norm"] > 0 for m in metrics)
    assert metrics[-1]["loss"] < metrics[0]["loss"] * 0.7
    assert done["loss"] == metrics[-1]["loss"]
    assert [c["step"] for c in done["checkpoints"]] == [2, 4]  # save_total_limit 2 of 2, 4 (6 is final)
    artifact = done["adapter_artifact_id"]
    assert artifact is not None
    adapter = env.runtime.paths.run_dir(run["id"]) / "adapter"
    assert (adapter / "adapter_model.safetensors").exists() and (adapter / "adapter_config.json").exists()
    with Session(env.runtime.engine) as session:
        kinds = [e.kind for e in session.exec(select(Event).where(Event.entity_id == run["id"]))]
    assert kinds == ["run.queued", "run.running", "run.holdout", "run.succeeded"]  # val_size: held-out eval set
    assert done["holdout_dataset_id"] and {s["step"] for s in env.client.get(f"/api/runs/{run['id']}/samples").json()} \
        == {3, 6}
    events = env.client.get(f"/api/runs/{run['id']}/events")
    assert events.headers["content-type"].startswith("text/event-stream")
    assert events.text.count("event: metric") == 8 and '"status": "succeeded"' in events.text


def test_cancel_stops_a_running_run(env: Env) -> None:
    run = env.create({"max_steps": 500, "save_steps": 100, "cutoff_len": 96})
    worker = Worker(env.runtime)
    wait_for(lambda: env.run(run["id"])["step"] >= 2, 300, worker.run_once)
    assert worker.job is not None
    child = worker.job.proc
    res = env.client.post(f"/api/runs/{run['id']}/cancel")
    assert res.status_code == 200 and res.json()["status"] == "cancelled"
    wait_for(lambda: worker.job is None, 30, worker.run_once)
    assert child.poll() is not None
    assert env.run(run["id"])["status"] == "cancelled"
    assert env.client.post(f"/api/runs/{run['id']}/cancel").status_code == 409


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"config": {"max_steps": 5, "learning_rat": 0.1}}, "config.learning_rat: unknown or unsupported key"),
        ({"config": {"lora_rank": 0}}, "config.lora_rank"),
        ({"config": {"finetuning_type": "full"}}, "config.finetuning_type"),
        ({"config": {"lr_scheduler_type": "warmup_stable_decay"}}, "config.lr_scheduler_type"),
        ({"config": {}, "preset": "nope"}, "unknown preset 'nope'"),
        ({"config": {}, "base_model_id": "missing"}, "no base model with id 'missing'"),
        ({"config": {"per_device_train_batch_size": 1024, "cutoff_len": 131072}}, "estimated peak memory"),
    ],
    ids=["unknown key", "bad value", "unsupported method", "unsupported scheduler", "bad preset", "bad model",
         "does not fit"],
)
def test_bad_config_is_refused(env: Env, body: dict[str, Any], needle: str) -> None:
    res = env.client.post("/api/runs", json={"dataset_id": env.dataset_id, "base_model_id": "smollm2-135m-instruct",
                                             **body})
    assert res.status_code == 422, res.text
    assert needle in res.json()["detail"]
    assert env.client.get("/api/runs").json() == []


def test_a_llamafactory_sft_yaml_is_accepted_unchanged(env: Env) -> None:
    import yaml

    lf = yaml.safe_load("""
model_name_or_path: smollm2-135m-instruct
stage: sft
do_train: true
finetuning_type: lora
lora_target: q_proj,v_proj
lora_rank: 8
dataset: identity,alpaca_en_demo
template: chatml
cutoff_len: 256
max_samples: 1000
overwrite_cache: true
preprocessing_num_workers: 16
output_dir: saves/smollm2/lora/sft
logging_steps: 10
save_steps: 500
plot_loss: true
overwrite_output_dir: true
per_device_train_batch_size: 4
gradient_accumulation_steps: 2
learning_rate: 2.0e-4
num_train_epochs: 3.0
lr_scheduler_type: cosine
warmup_ratio: 0.1
bf16: false
ddp_timeout: 180000000
report_to: none
""")
    res = env.client.post("/api/runs", json={"dataset_id": env.dataset_id, "config": lf})
    assert res.status_code == 201, res.text
    run = res.json()
    assert (run["base_model_id"], run["config"]["lora_target"], run["max_steps"]) == ("smollm2-135m-instruct",
                                                                                      "q_proj,v_proj", 9)


def test_a_run_under_continuous_kiosk_traffic_progresses_records_its_wait_and_learns_the_same(
    data_dir: Path, reference_losses: dict[int, float]
) -> None:
    """Kiosks busy for the whole run (the inference server's signal held throughout): the run still
    finishes at its minimum share, says how long it waited, and computes exactly what it computes alone."""
    e = Env(data_dir, training_min_share=0.5)
    kiosks = Signal(e.runtime.paths.serving_lock)
    kiosks.enter()
    try:
        run = e.create(CRASH_CONFIG)
        assert "kiosks" in run["estimate"]["note"] and run["estimate"]["seconds_under_kiosk_load"] > 0
        worker = Worker(e.runtime)
        policies: set[int] = set()

        def step() -> None:
            worker.run_once()
            if worker.job is not None and worker.job.proc.poll() is None:
                policies.add(os.sched_getscheduler(worker.job.proc.pid))

        wait_for(lambda: e.run(run["id"])["status"] in ("succeeded", "failed"), 600, step)
        done = e.run(run["id"])
        assert done["status"] == "succeeded", done["error"]
        assert policies == {os.SCHED_IDLE}  # the trainer ran below serving
        assert done["paused_for_serving_s"] > 0
        log = (e.runtime.paths.run_dir(run["id"]) / "train.log").read_text()
        assert "for kiosk requests" in log
        events = e.client.get(f"/api/runs/{run['id']}/events").text
        assert '"paused_for_serving_s"' in events
        losses = e.losses(run["id"])
        assert losses == reference_losses  # pausing changes timing, never results: bit for bit
    finally:
        kiosks.close()
        e.close()


@pytest.mark.parametrize("power_cut_in_checkpoint,kiosks_busy", [(False, False), (True, False), (False, True)],
                         ids=["kill -9 after a checkpoint", "power cut during a checkpoint write",
                              "kill -9 while kiosks are busy"])
def test_resume_after_kill_matches_an_uninterrupted_run(
    env: Env, reference_losses: dict[int, float], power_cut_in_checkpoint: bool, kiosks_busy: bool
) -> None:
    run = env.create(CRASH_CONFIG)
    run_dir = env.runtime.paths.run_dir(run["id"])
    fault = {"APPLIANCE_FAULT_POWER_CUT_IN_CHECKPOINT": "6"} if power_cut_in_checkpoint else {}
    kiosks = Signal(env.runtime.paths.serving_lock)
    if kiosks_busy:  # the run pauses between micro-batches for the whole first attempt
        kiosks.enter()
    first = env.worker_process(APPLIANCE_TRAINING_MIN_SHARE="0.5", **fault)
    try:
        if power_cut_in_checkpoint:
            first.wait(300)  # the fault kills the worker and its child while step 6 is being written
            assert [c["step"] for c in env.run(run["id"])["checkpoints"]] == [3]
            assert list((run_dir / "tmp").iterdir()), "a half-written checkpoint should be left behind"
        else:
            wait_for(lambda: env.run(run["id"])["step"] >= 4 and env.run(run["id"])["checkpoints"] != [], 300)
            # kill -9 the worker and its training child together, as a power cut would.
            children = subprocess.run(["pgrep", "-P", str(first.pid)], capture_output=True, text=True).stdout.split()
            assert children, "the worker should have a training child"
            first.send_signal(signal.SIGKILL)
            for child in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(child), signal.SIGKILL)
            first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
        kiosks.close()
    assert env.run(run["id"])["status"] == "running"  # as the dead worker left it
    assert (env.run(run["id"])["paused_for_serving_s"] > 0) == kiosks_busy
    second = env.worker_process()
    try:
        wait_for(lambda: env.run(run["id"])["status"] in ("succeeded", "failed"), 300)
    finally:
        second.terminate()
        second.wait(30)
    done = env.run(run["id"])
    assert done["status"] == "succeeded", done["error"]
    assert done["attempts"] == 2
    losses = env.losses(run["id"])
    assert sorted(losses) == list(range(1, 9))
    for step, loss in reference_losses.items():
        assert abs(losses[step] - loss) <= 1e-5, (step, losses[step], loss)
    log = (run_dir / "train.log").read_text()
    resumed_from = 3
    assert f"resumed from step {resumed_from}" in log or f"resumed from step {resumed_from + 3}" in log
    assert not (run_dir / "tmp").exists() or not list((run_dir / "tmp").iterdir())
    assert json.loads((run_dir / "config.json").read_text())["seed"] == 11
