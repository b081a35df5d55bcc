"""The boundary between the worker and its children (appliance/child_protocol.py): every message kind
survives the wire, anything else is refused naming what is wrong, and the specs the real worker writes
parse in the models the children read them with."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel, ValidationError
from samples import ALPACA, jsonl

from appliance.api.app import create_app
from appliance.bootstrap import Runtime
from appliance.child_protocol import (
    CheckpointSaved,
    DataReport,
    ExportDone,
    ExportSpec,
    Failed,
    HeldOut,
    Metric,
    Plan,
    Progress,
    ProtocolError,
    RowNote,
    Sample,
    Samples,
    ServingSpec,
    TrainDone,
    TrainSpec,
    parse_message,
    read_spec,
)
from appliance.jobs import exports, runs
from appliance.models.registry import BUNDLED_ID
from appliance.trainer import rows
from appliance.trainer.config import TrainConfig
from appliance.worker.worker import Job, Worker, _pump

VERIFICATION = {"prompts": 3, "positions": 40, "top1_agreement": 1.0, "next_token_top1": 1.0, "mean_kl": 0.001,
                "max_kl": 0.01}
TRAIN_MESSAGES: list[BaseModel] = [
    Plan(max_steps=12, examples=20, val_examples=2),
    DataReport(cutoff_len=64, rows=3, used=2, truncated_count=1, dropped_count=1,
               truncated=[RowNote(row=1, tokens=90, detail="earliest exchange cut", kept=60)],
               dropped=[RowNote(row=3, tokens=200, detail="the answer alone is 120 tokens")]),
    Metric(kind="train", step=3, loss=1.25, learning_rate=2e-4, grad_norm=0.5, tokens_per_s=812.5, tokens=384,
           memory_mb=1024.0, epoch=0.5),
    HeldOut(rows=[2, 5]),
    Metric(kind="eval", step=3, loss=1.5),
    Samples(step=3, samples=[Sample(row=2, question="Opening hours?", reference="9 to 5.", answer="9 to")]),
    CheckpointSaved(step=3, path=Path("/data/runs/run_x/checkpoints/step-0000003")),
    TrainDone(adapter=Path("/data/runs/run_x/adapter"), steps=12, best_eval=None),
    Failed(message="loss became nan at step 4"),
]
EXPORT_MESSAGES: list[BaseModel] = [
    Progress(stage="write", progress=0.42, detail="blk.3.attn_q.weight"),
    ExportDone(main="faq.q8_0.gguf", files=["faq.q8_0.gguf", "Modelfile"], merged="merged",
               verification=VERIFICATION),
    ExportDone(main="faq.lora.f32.gguf", files=["faq.lora.f32.gguf"], verification=VERIFICATION,
               summary={"architecture": "llama", "modules": 60, "rank": 8, "alpha": 16, "type": "f32"}),
    Failed(message="top-1 agreement 41% is below 90% for q4_0", verification=VERIFICATION),
]
WIRE_NAMES = {Plan: "plan", DataReport: "data", HeldOut: "holdout", Samples: "samples", Metric: "metric",
              CheckpointSaved: "checkpoint", TrainDone: "done",
              Progress: "progress", ExportDone: "done", Failed: "error"}


@pytest.mark.parametrize("child,message", [("train", m) for m in TRAIN_MESSAGES]
                         + [("export", m) for m in EXPORT_MESSAGES], ids=lambda v: getattr(v, "type", v))
def test_every_message_kind_survives_the_wire(child: str, message: BaseModel) -> None:
    line = message.model_dump_json()
    assert json.loads(line)["type"] == WIRE_NAMES[type(message)]  # the names the worker has always read
    assert parse_message(line + "\n", child) == message  # type: ignore[arg-type]


def test_the_trainers_data_report_is_a_data_message() -> None:
    report = rows.DataReport(cutoff_len=64, rows=2, used=1)
    report.add("dropped", rows.RowNote(row=2, tokens=99, detail="too long"))
    msg = DataReport.model_validate(report.as_dict())
    assert msg.dropped == [RowNote(row=2, tokens=99, detail="too long")] and msg.dropped_count == 1


@pytest.mark.parametrize("child,line,needle", [
    ("train", '{"type": "metric", "kind": "train", "step": 1, "loss": 2.0, "perplexity": 7.4}',
     "perplexity: Extra inputs are not permitted"),
    ("train", '{"type": "metric", "kind": "train", "loss": 2.0}', "metric.step: Field required"),
    ("train", '{"type": "holdout", "rows": []}', "holdout.rows: List should have at least 1 item"),
    ("train", '{"type": "samples", "step": 2, "samples": [{"row": 1, "question": "q", "answer": "a"}]}',
     "samples.samples.0.reference: Field required"),
    ("export", '{"type": "holdout", "rows": [1]}', "does not match any of the expected tags"),
    ("train", '{"type": "hello", "text": "hi"}', "does not match any of the expected tags"),
    ("train", '{"message": "no type"}', "Unable to extract tag using discriminator"),
    ("train", '{"type": "progress", "stage": "merge", "progress": 0.5}', "does not match any of the expected tags"),
    ("export", '{"type": "checkpoint", "step": 3, "path": "/x"}', "does not match any of the expected tags"),
    ("export", '{"type": "done", "adapter": "/x", "steps": 3}', "Field required"),
    ("export", '{"type": "progress", "stage": "merge"', "Invalid JSON"),
])
def test_anything_else_is_refused_naming_what_is_wrong(child: str, line: str, needle: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_message(line, child)  # type: ignore[arg-type]
    assert needle in str(caught.value) and f"the {child} child sent a message" in str(caught.value)


def test_specs_refuse_unknown_keys_also_in_the_run_config(tmp_path: Path) -> None:
    base = {"run_id": "run_x", "run_dir": "/r", "config": {}, "dataset_path": "/d.jsonl", "hf_dir": "/hf"}
    assert TrainSpec.model_validate(base).config == TrainConfig()
    with pytest.raises(ValidationError, match="output_format"):
        TrainSpec.model_validate({**base, "output_format": "gguf"})
    with pytest.raises(ValidationError, match="lora_rnak"):
        TrainSpec.model_validate({**base, "config": {"lora_rnak": 8}})
    with pytest.raises(ValidationError, match="min_share"):
        ServingSpec.model_validate({"lock": "/l", "enabled": True, "min_share": 0})
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"artifact_id": "art_x", "kind": "gguf", "type": "q8_0", "name": "m",
                                "work_dir": "/w", "base_hf_dir": "/hf", "verify": False}))
    with pytest.raises(ValidationError, match="verify"):
        read_spec(spec, ExportSpec)


def test_a_child_given_a_bad_spec_says_so_in_a_message(tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"run_id": "run_x", "run_dir": str(tmp_path)}))
    for module in ("appliance.trainer", "appliance.export"):
        proc = subprocess.run([sys.executable, "-m", module, str(spec)], capture_output=True, text=True, timeout=300)
        msg = parse_message(proc.stdout.splitlines()[-1], "train" if module == "appliance.trainer" else "export")
        assert proc.returncode == 2 and isinstance(msg, Failed) and "cannot be read" in msg.message, proc.stdout


@pytest.fixture
def api(runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(runtime=runtime)) as c:
        c.headers["Authorization"] = "Bearer test-admin-token"
        yield c


def test_the_specs_the_worker_writes_parse_in_the_childrens_models(api: TestClient, runtime: Runtime) -> None:
    ds = api.post("/api/datasets", files={"file": ("faq.jsonl", jsonl(ALPACA))}).json()["id"]
    res = api.post("/api/runs", json={"dataset_id": ds, "base_model_id": BUNDLED_ID,
                                      "config": {"max_steps": 2, "export_gguf": ["Q8_0"], "template": "chatml"}})
    art = api.post("/api/artifacts/export", json={"base_model_id": BUNDLED_ID, "type": "f16"})
    assert res.status_code == 201 and art.status_code == 202, (res.text, art.text)
    worker = Worker(runtime)
    training, export, _evaluating = worker.kinds
    run = runs.QUEUE.claim(engine=runtime.engine, pid=1)
    launch = training.prepare(run)
    spec = read_spec(launch.spec_file, TrainSpec)
    assert spec == launch.spec and launch.spec_file == runtime.paths.run(run.id).spec
    assert spec.config.export_gguf == ["q8_0"] and spec.config.max_steps == 2  # typed once, as created
    assert spec.chat_template is not None and spec.serving == worker.serving_spec()
    assert TrainConfig.model_validate_json(runtime.paths.run(run.id).config.read_text()) == spec.config
    row = exports.QUEUE.claim(engine=runtime.engine, pid=1)
    launch = export.prepare(row)
    spec_e = read_spec(launch.spec_file, ExportSpec)
    assert spec_e == launch.spec and spec_e.work_dir == runtime.paths.export_work_dir(row.id)
    assert spec_e.work_dir.is_dir() and spec_e.kind == "gguf" and spec_e.type == "f16" and spec_e.adapter_dir is None


def test_a_message_the_worker_cannot_read_fails_the_job_and_a_stray_print_does_not(runtime: Runtime) -> None:
    lines = [Plan(max_steps=1, examples=1, val_examples=0).model_dump_json(), "loading weights...",
             '{"type": "metric", "kind": "train", "step": 1, "loss": 1.0, "perplexity": 2.7}',
             TrainDone(adapter=Path("/x"), steps=1).model_dump_json()]
    child = subprocess.Popen([sys.executable, "-c", f"print({chr(10).join(lines)!r})"], stdout=subprocess.PIPE,
                             text=True)
    worker = Worker(runtime)
    job = Job("run_x", worker.kinds[0], child)
    assert child.stdout is not None
    threading.Thread(target=_pump, args=(child.stdout, job.lines), daemon=True).start()
    deadline = time.monotonic() + 60
    while not worker._relay(job):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    child.wait()
    assert isinstance(job.done, TrainDone)  # read, but the job fails: the two ends disagree
    assert job.error is not None and "perplexity: Extra inputs are not permitted" in job.error
    assert "loading weights" not in job.error
