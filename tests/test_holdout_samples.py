"""Issue 13, training side: a run's held-out rows (val_size) become an eval dataset named on the run, and
each eval step stores the answers to a few held-out questions. One tiny real run on the bundled model."""

from __future__ import annotations

import json
import time
from pathlib import Path

from conftest import make_settings
from fastapi.testclient import TestClient
from samples import jsonl
from sqlmodel import Session, select

from appliance.api.app import create_app
from appliance.bootstrap import bootstrap
from appliance.db.tables import Event
from appliance.jobs import gate, run_progress
from appliance.models.registry import BUNDLED_ID
from appliance.trainer import data
from appliance.worker.worker import Worker

PLACES = ["pharmacy", "lab", "x-ray room", "cafeteria", "parking", "front desk", "billing office", "chapel"]
FAQ = [{"instruction": f"Where is the {p}?", "output": f"The {p} is on floor {i % 4 + 1}, room {100 + i}."}
       for i, p in enumerate(PLACES)]
LONG = {"instruction": "Tell me everything.", "output": "word " * 400}  # dropped at cutoff_len 96
ROWS = [*FAQ[:2], LONG, *FAQ[2:]]  # row 3 is dropped: never held out
CONFIG = {"max_steps": 2, "save_steps": 10, "eval_steps": 1, "cutoff_len": 96, "val_size": 0.25, "seed": 5,
          "per_device_train_batch_size": 2, "lora_rank": 4, "learning_rate": 1e-3}


def test_held_out_rows_become_an_eval_dataset_and_eval_steps_store_answers(data_dir: Path) -> None:
    rt = bootstrap(make_settings(data_dir))
    client = TestClient(create_app(runtime=rt))
    client.headers["Authorization"] = "Bearer test-admin-token"
    source = client.post("/api/datasets", files={"file": ("faq.jsonl", jsonl(ROWS))}).json()
    res = client.post("/api/runs", json={"dataset_id": source["id"], "base_model_id": BUNDLED_ID, "config": CONFIG,
                                         "name": "faq"})
    assert res.status_code == 201, res.text
    run_id = res.json()["id"]
    assert res.json()["holdout_dataset_id"] is None  # not before the trainer has split the data
    worker, deadline = Worker(rt), time.monotonic() + 300
    while client.get(f"/api/runs/{run_id}").json()["status"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, "timed out"
        worker.run_once()
        time.sleep(0.1)
    run = client.get(f"/api/runs/{run_id}").json()
    assert run["status"] == "succeeded", run["error"]
    assert run["data_report"]["dropped_count"] == 1 and run["data_report"]["dropped"][0]["row"] == 3

    # Exactly the rows the trainer evaluated on: its seeded split of the rows that survived cutoff_len.
    survived = [r for r in range(1, len(ROWS) + 1) if r != 3]
    _, val = data.split([data.Example([], [], row=r) for r in survived], 0.25, 5)
    expected = sorted(e.row for e in val)
    assert len(expected) == 2 and 3 not in expected
    holdout = client.get(f"/api/datasets/{run['holdout_dataset_id']}").json()
    assert (holdout["purpose"], holdout["source_type"], holdout["name"], holdout["rows"]) == (
        "eval", "holdout", "faq held-out", 2)
    with Session(rt.engine) as session:
        assert gate.site_eval_set(session) is None  # a run's held-out rows are not the site's eval set
    source_lines = rt.paths.resolve(runs_dataset_path(rt, source["id"])).read_text().splitlines()
    held_lines = rt.paths.resolve(runs_dataset_path(rt, holdout["id"])).read_text().splitlines()
    assert held_lines == [source_lines[r - 1] for r in expected]  # the conversations, as the dataset has them
    assert [json.loads(line)["messages"][-1]["role"] for line in held_lines] == ["assistant", "assistant"]

    # Samples at each eval step (1 and 2), for the held-out questions, by step.
    got = client.get(f"/api/runs/{run_id}/samples").json()
    for step in (1, 2):  # within the time budget: the first question always, the second if time is left
        assert [s["row"] for s in got if s["step"] == step] in ([expected[0]], expected)
    assert [s["step"] for s in got] == sorted(s["step"] for s in got)
    first = json.loads(source_lines[expected[0] - 1])["messages"]
    assert got[0]["question"] == first[-2]["content"] and got[0]["reference"] == first[-1]["content"]
    assert all(isinstance(s["answer"], str) and len(s["answer"]) < 400 for s in got)
    assert client.get("/api/runs/run_nope/samples").status_code == 404
    assert client.get(f"/api/runs/{run_id}/samples", headers={"Authorization": "Bearer wrong"}).status_code == 401

    # A user can evaluate a model on it (here the base model; an export's artifact_id works alike).
    ev = client.post("/api/evaluations", json={"base_model_id": BUNDLED_ID, "dataset_id": holdout["id"]})
    assert ev.status_code in (200, 201, 202), ev.text
    with Session(rt.engine) as session:
        kinds = [e.kind for e in session.exec(select(Event).where(Event.entity_id == run_id))]
    assert kinds.count("run.holdout") == 1

    # A resumed attempt forgets the samples past its checkpoint, as it forgets metrics.
    run_progress.forget_after(engine=rt.engine, run_id=run_id, step=1)
    assert {s["step"] for s in client.get(f"/api/runs/{run_id}/samples").json()} == {1}
    client.close()
    rt.engine.dispose()


def runs_dataset_path(rt: object, dataset_id: str) -> str:
    from appliance.db.tables import Dataset

    with Session(rt.engine) as session:  # type: ignore[attr-defined]
        ds = session.get(Dataset, dataset_id)
        assert ds is not None
        return ds.path
