"""Evaluations and the deployment gate, on the real bundled model and the FAQ fine-tune (the
`trained_dir` fixture): an eval set of rephrased FAQ questions; evaluations run by the worker; the
fine-tune passes the gate against the bundled model and the bundled model is refused against the
fine-tune (409 naming the metric), unless forced (recorded with who); compare as JSON and CSV; an
evaluation killed with its worker resumes where it stopped."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import clone_data_dir, drive_worker, make_settings
from fastapi.testclient import TestClient
from samples import jsonl
from sqlmodel import Session, col, select
from test_restart_faults import power_cut, wait_for, worker_process

from appliance.api.app import create_app
from appliance.bootstrap import Runtime, bootstrap
from appliance.db.engine import write_session
from appliance.db.tables import Evaluation, Event
from appliance.evaluation.schemas import engine_id
from appliance.jobs import deployments
from appliance.models.registry import BUNDLED_ID

# The FAQ the fine-tune learned (conftest.FAQ), asked in other words.
EVAL_SET = [{"instruction": q, "output": a} for q, a in [
    ("Where can I find the pharmacy?", "The pharmacy is on floor 1, room 100."),
    ("Which floor is the lab on?", "The lab is on floor 2, room 101."),
    ("Where's the x-ray room?", "The x-ray room is on floor 3, room 102."),
    ("How do I get to the cafeteria?", "The cafeteria is on floor 4, room 103."),
    ("Where is parking?", "The parking is on floor 1, room 104."),
    ("Where do I find the front desk?", "The front desk is on floor 2, room 105."),
]]
FAST = {"eval_max_tokens": 24, "eval_retention_probe": False}


@pytest.fixture
def box(tmp_path: Path, trained_dir: Path) -> Iterator[tuple[TestClient, Runtime]]:
    data = tmp_path / "data"
    clone_data_dir(trained_dir, data)
    runtime = bootstrap(make_settings(data, **FAST))
    with TestClient(create_app(runtime=runtime)) as c:
        c.headers["Authorization"] = "Bearer test-admin-token"
        yield c, runtime
    runtime.engine.dispose()


def upload_eval_set(c: TestClient) -> str:
    r = c.post("/api/datasets", files={"file": ("golden.jsonl", jsonl(EVAL_SET))}, data={"purpose": "eval"})
    assert r.status_code == 201, r.text
    assert r.json()["purpose"] == "eval"
    return str(r.json()["id"])


def fine_tune(c: TestClient) -> str:
    (art,) = c.get("/api/artifacts", params={"kind": "gguf"}).json()
    return str(art["id"])


def events(runtime: Runtime, kind: str) -> list[Event]:
    with Session(runtime.engine) as session:
        return list(session.exec(select(Event).where(Event.kind == kind).order_by(col(Event.id))))


def test_the_gate_passes_the_fine_tune_refuses_the_base_model_and_records_force(
        box: tuple[TestClient, Runtime]) -> None:
    c, runtime = box
    eval_ds, ft = upload_eval_set(c), fine_tune(c)

    # Nothing deployed yet: the bundled model serves, so the fine-tune is compared with it.
    dep = c.post("/api/deployments", json={"artifact_id": ft})
    assert dep.status_code == 202, dep.text
    assert dep.json()["status"] == "gating" and dep.json()["gate"]["status"] == "waiting"
    dep_url = f"/api/deployments/{dep.json()['id']}"
    drive_worker(runtime, lambda: c.get(dep_url).json()["status"] != "gating")
    passed = c.get(dep_url).json()
    assert passed["status"] == "pending", passed
    gate = passed["gate"]
    assert gate["status"] == "passed" and gate["eval_dataset_id"] == eval_ds and gate["baseline"] == BUNDLED_ID
    by_metric = {m["metric"]: m for m in gate["metrics"]}
    assert by_metric["nll"]["verdict"] == "better", by_metric["nll"]  # the fine-tune knows these answers
    assert by_metric["nll"]["candidate"] < by_metric["nll"]["baseline"]

    evals = {e["model"]: e for e in c.get("/api/evaluations", params={"dataset_id": eval_ds}).json()}
    assert len(evals) == 2 and all(e["status"] == "succeeded" for e in evals.values())
    ft_eval, base_eval = evals[passed["model"]], evals[BUNDLED_ID]
    for key in ("nll", "rouge_l", "exact_match", "token_f1", "perplexity", "ttft_s"):
        assert isinstance(ft_eval["metrics"][key], float), key
        low, high = ft_eval["intervals"][key]["low"], ft_eval["intervals"][key]["high"]
        assert low <= ft_eval["metrics"][key] <= high
    assert ft_eval["questions_done"] == ft_eval["questions_total"] == len(EVAL_SET)

    # The fine-tune serves (the inference server would record this); the base model is now worse.
    deployments.mark_active(engine=runtime.engine, deployment_id=passed["id"], strategy="overlap", gap_ms=0,
                            load_ms=1, smoke_text="ok")
    refused = c.post("/api/deployments", json={"base_model_id": BUNDLED_ID})
    assert refused.status_code == 409, refused.text
    detail = refused.json()["detail"]
    assert detail.startswith("refused by the deployment gate: worse than") and "nll" in detail, detail
    assert len(c.get("/api/deployments").json()) == 1, "a refused deployment is not recorded"

    forced = c.post("/api/deployments", json={"base_model_id": BUNDLED_ID, "force": True})
    assert forced.status_code == 202 and forced.json()["status"] == "pending", forced.text
    assert forced.json()["forced_by"].startswith("admin token from") and forced.json()["gate"]["status"] == "forced"
    (event,) = events(runtime, "deployment.forced")
    assert event.entity_id == forced.json()["id"] and "without the deployment gate" in event.message

    # Side by side: per metric and per question; JSON and CSV.
    cmp = c.get("/api/evaluations/compare", params={"baseline": base_eval["id"], "candidate": ft_eval["id"]})
    assert cmp.status_code == 200, cmp.text
    body = cmp.json()
    assert {m["metric"] for m in body["metrics"]} >= {"nll", "rouge_l", "exact_match"}
    changes = [abs(q["change"]) for q in body["questions"]]
    assert changes == sorted(changes, reverse=True) and len(changes) == len(EVAL_SET)
    rows = list(csv.DictReader(io.StringIO(c.get("/api/evaluations/compare", params={
        "baseline": base_eval["id"], "candidate": ft_eval["id"], "format": "csv"}).text)))
    assert len(rows) == len(EVAL_SET) and {"baseline_answer", "candidate_answer", "reference"} <= set(rows[0])
    answers = c.get(f"/api/evaluations/{ft_eval['id']}/questions").json()
    assert [q["reference"] for q in answers["questions"]] == [row["output"] for row in EVAL_SET]
    assert c.get(f"/api/evaluations/{ft_eval['id']}/questions", params={"format": "csv"}).text.startswith("index,")


def test_without_an_eval_set_a_deployment_is_not_gated_and_says_so(box: tuple[TestClient, Runtime]) -> None:
    c, _ = box
    dep = c.post("/api/deployments", json={"artifact_id": fine_tune(c)})
    assert dep.status_code == 202 and dep.json()["status"] == "pending", dep.text
    assert dep.json()["gate"] == {**dep.json()["gate"], "status": "not_gated"}
    assert "no eval set" in dep.json()["gate"]["reason"]


def test_evaluation_requests_are_checked_and_reused(box: tuple[TestClient, Runtime]) -> None:
    c, _ = box
    eval_ds = upload_eval_set(c)
    assert c.post("/api/evaluations", json={"dataset_id": eval_ds}).status_code == 422
    assert c.post("/api/evaluations", json={"dataset_id": "ds_nope", "base_model_id": BUNDLED_ID}).status_code == 404
    assert c.post("/api/evaluations", json={"dataset_id": eval_ds, "artifact_id": "art_nope"}).status_code == 404
    first = c.post("/api/evaluations", json={"dataset_id": eval_ds, "base_model_id": BUNDLED_ID})
    again = c.post("/api/evaluations", json={"dataset_id": eval_ds, "base_model_id": BUNDLED_ID})
    assert first.status_code == again.status_code == 202 and first.json()["id"] == again.json()["id"]
    assert first.json()["status"] == "queued" and first.json()["metrics"] == {}
    assert c.get(f"/api/evaluations/{first.json()['id']}/questions").status_code == 409
    assert c.get("/api/evaluations/eval_nope").status_code == 404
    # The same file uploaded again as a training set stays an eval set; as eval again, the same dataset.
    assert c.post("/api/datasets", files={"file": ("g.jsonl", jsonl(EVAL_SET))}).json()["purpose"] == "eval"


def test_an_evaluation_by_another_engine_is_neither_reused_nor_compared(box: tuple[TestClient, Runtime]) -> None:
    """After an upgrade (another llama.cpp rounds differently), a stored evaluation is evaluated again
    rather than reused, as the gate would reuse it, and comparing it with a fresh one is refused."""
    c, runtime = box
    eval_ds = upload_eval_set(c)
    body = {"dataset_id": eval_ds, "base_model_id": BUNDLED_ID}
    first = c.post("/api/evaluations", json=body).json()
    drive_worker(runtime, lambda: c.get(f"/api/evaluations/{first['id']}").json()["status"] == "succeeded")
    done = c.get(f"/api/evaluations/{first['id']}").json()
    assert done["engine"] == engine_id() and engine_id().startswith("batched-fa ")
    assert c.post("/api/evaluations", json=body).json()["id"] == first["id"]  # the same engine: reused

    # Made by the engine before this one: its row and its result file say so.
    stale = "batched-fa 1, llama-cpp-python 0.3.0"
    with write_session(runtime.engine) as session:
        row = session.get(Evaluation, first["id"])
        assert row is not None
        row.engine = stale
    result = runtime.paths.evaluation(first["id"]).result
    result.write_text(json.dumps({**json.loads(result.read_text()), "engine": stale}))

    again = c.post("/api/evaluations", json=body)
    assert again.status_code == 202 and again.json()["id"] != first["id"], again.text
    assert again.json()["status"] == "queued"
    drive_worker(runtime, lambda: c.get(f"/api/evaluations/{again.json()['id']}").json()["status"] == "succeeded")
    cmp = c.get("/api/evaluations/compare", params={"baseline": first["id"], "candidate": again.json()["id"]})
    assert cmp.status_code == 409, cmp.text
    assert "different engines" in cmp.json()["detail"] and stale in cmp.json()["detail"], cmp.text
    listed = {e["id"]: e for e in c.get("/api/evaluations", params={"dataset_id": eval_ds}).json()}
    assert listed[first["id"]]["engine"] == stale  # kept, and shown for what it is
    # The eval set cannot go while evaluations were made on it (it was a 500 from a database constraint).
    kept = c.delete(f"/api/datasets/{eval_ds}")
    assert kept.status_code == 409 and first["id"] in kept.json()["detail"], kept.text
    assert c.get(f"/api/datasets/{eval_ds}").status_code == 200


def test_an_evaluation_killed_with_its_worker_resumes_where_it_stopped(box: tuple[TestClient, Runtime]) -> None:
    c, runtime = box
    eval_ds = upload_eval_set(c)
    ev_id = c.post("/api/evaluations", json={"dataset_id": eval_ds, "artifact_id": fine_tune(c)}).json()["id"]

    def evaluation() -> dict[str, object]:
        return dict(c.get(f"/api/evaluations/{ev_id}").json())

    env = {"APPLIANCE_EVAL_MAX_TOKENS": "24", "APPLIANCE_EVAL_RETENTION_PROBE": "false"}
    scored = runtime.paths.evaluation(ev_id).questions
    first = worker_process(runtime.paths.root, **env)
    try:
        wait_for(lambda: scored.exists() and len(scored.read_text().splitlines()) >= 2, "two questions scored")
        power_cut(first)  # with its evaluation child
    finally:
        if first.poll() is None:
            first.kill()
    before = len(scored.read_text().splitlines())
    assert evaluation()["status"] == "running" and not runtime.paths.evaluation(ev_id).result.exists()
    second = worker_process(runtime.paths.root, **env)
    try:
        wait_for(lambda: evaluation()["status"] in ("succeeded", "failed"), "the evaluation resumed and ended")
    finally:
        second.terminate()
        second.wait(60)
    done = evaluation()
    assert done["status"] == "succeeded" and done["attempts"] == 2, done
    indices = [json.loads(line)["index"] for line in scored.read_text().splitlines()]
    assert sorted(indices) == list(range(len(EVAL_SET))), "every question scored once, none again"
    assert before >= 2
    assert any("evaluation will resume" in e.message for e in events(runtime, "evaluation.queued"))


def test_an_evaluation_is_cancelled_queued_or_running_and_its_gated_deployment_says_why(
        box: tuple[TestClient, Runtime]) -> None:
    c, runtime = box
    eval_ds = upload_eval_set(c)
    queued = c.post("/api/evaluations", json={"dataset_id": eval_ds, "base_model_id": BUNDLED_ID}).json()
    cancelled = c.post(f"/api/evaluations/{queued['id']}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "failed" and cancelled.json()["error"].startswith("cancelled by admin token")
    assert c.post(f"/api/evaluations/{queued['id']}/cancel").status_code == 409  # already ended
    assert c.post("/api/evaluations/eval_nope/cancel").status_code == 404

    # Running, with the deployment gate waiting on it: the worker stops its child, the deployment is refused.
    dep = c.post("/api/deployments", json={"artifact_id": fine_tune(c)}).json()
    assert dep["status"] == "gating", dep
    env = {"APPLIANCE_EVAL_MAX_TOKENS": "24", "APPLIANCE_EVAL_RETENTION_PROBE": "false"}
    worker = worker_process(runtime.paths.root, **env)
    try:
        seen: list[dict[str, Any]] = []
        wait_for(lambda: bool(seen.extend(e for e in c.get("/api/evaluations").json() if e["status"] == "running")
                              or seen), "an evaluation of the gate running")
        running = seen[0]
        assert c.delete(f"/api/evaluations/{running['id']}").status_code == 409  # running: cancel it first
        assert c.post(f"/api/evaluations/{running['id']}/cancel").status_code == 200
        wait_for(lambda: c.get(f"/api/deployments/{dep['id']}").json()["status"] == "failed", "the gate's verdict")
    finally:
        worker.terminate()
        worker.wait(60)
    refused = c.get(f"/api/deployments/{dep['id']}").json()
    assert "cancelled by admin token" in refused["error"], refused
    ended = c.get(f"/api/evaluations/{running['id']}").json()
    assert ended["status"] == "failed" and ended["metrics"] == {}, ended
    assert c.delete(f"/api/evaluations/{running['id']}").status_code == 204


def test_a_run_with_deploy_auto_puts_its_export_through_the_gate(box: tuple[TestClient, Runtime]) -> None:
    from appliance.child_protocol import ServingSpec
    from appliance.db.engine import write_session
    from appliance.db.tables import Artifact, Run
    from appliance.worker.children import Export

    c, runtime = box
    upload_eval_set(c)
    art_id = fine_tune(c)
    with write_session(runtime.engine) as session:  # the run had asked for it: `deploy: auto`
        art = session.get(Artifact, art_id)
        assert art is not None and art.run_id is not None
        run = session.get(Run, art.run_id)
        assert run is not None
        run.config_json = json.dumps({**json.loads(run.config_json), "deploy": "auto"})
        session.add(run)
        run_id = run.id
    # What the worker does when the run's first export is ready.
    Export(runtime, ServingSpec(lock=runtime.paths.serving_lock, enabled=False, min_share=1))._promote(art_id)
    (dep,) = c.get("/api/deployments").json()
    assert dep["artifact_id"] == art_id and dep["status"] == "gating"
    drive_worker(runtime, lambda: c.get(f"/api/deployments/{dep['id']}").json()["status"] != "gating")
    assert c.get(f"/api/deployments/{dep['id']}").json()["status"] == "pending"
    said = [e.message for e in events(runtime, "run.promotion") if e.entity_id == run_id]
    assert said[0].startswith("auto-promotion: deployment") and "gate waiting" in said[0], said
    assert said[-1].startswith(f"deployment {dep['id']}: deployed"), said
