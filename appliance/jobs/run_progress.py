"""What a running fine-tune reports, recorded as it comes (appliance/worker/children.py relays the
training child's messages): each step's metrics, the data report, the held-out eval set, sample
answers, checkpoints (a resumed attempt forgets what came after its checkpoint), and how the run ended.
Creation, the queue and deletion are appliance/jobs/runs.py."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import delete
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from appliance import fsutil
from appliance.child_protocol import DataReport, Metric, Sample
from appliance.db import events
from appliance.db.engine import write_session
from appliance.db.tables import (
    Artifact,
    Checkpoint,
    Dataset,
    RunMetric,
    RunSample,
)
from appliance.jobs.runs import HOLDOUT, QUEUE, get_run
from appliance.paths import CheckpointDir, Paths
from appliance.trainer.config import TrainConfig


def record_metric(*, engine: Engine, run_id: str, metric: Metric) -> None:
    """One step's (or evaluation's) figures; a resumed attempt's repeat of a step replaces it."""
    fields = metric.model_dump(exclude={"type"})
    with write_session(engine) as session:
        session.exec(delete(RunMetric).where(col(RunMetric.run_id) == run_id).where(  # type: ignore[call-overload]
            col(RunMetric.kind) == metric.kind).where(col(RunMetric.step) == metric.step))
        session.add(RunMetric.model_validate({"run_id": run_id, **fields}))
        if metric.kind == "train":
            run = get_run(session, run_id)
            run.step, run.loss = metric.step, metric.loss
            session.add(run)


def record_data(*, engine: Engine, run_id: str, report: DataReport) -> None:
    """The trainer's DataReport (trainer/rows.py): rows truncated or dropped at cutoff_len. A resumed
    attempt reports the same rows again; the event is recorded once."""
    encoded = json.dumps(report.model_dump(exclude={"type"}))
    with write_session(engine) as session:
        run = get_run(session, run_id)
        if run.data_report_json == encoded:
            return
        run.data_report_json = encoded
        session.add(run)
        cut, dropped = report.truncated_count, report.dropped_count
        if cut or dropped:
            named = {k: [n.row for n in notes][:20] for k, notes in (("truncated", report.truncated),
                                                                      ("dropped", report.dropped))}
            events.record(session, kind="run.data", entity_type="run", entity_id=run_id,
                          message=f"{report.used} of {report.rows} rows used at cutoff_len "
                                  f"{report.cutoff_len}: {cut} truncated (rows {named['truncated']}), "
                                  f"{dropped} dropped (rows {named['dropped']})")


def record_holdout(*, engine: Engine, paths: Paths, run_id: str, rows: list[int]) -> Dataset:
    """The rows the trainer holds out (val_size) become an eval dataset (purpose "eval", source_type
    "holdout"), content-addressed like any dataset, named on the run. A resumed attempt holds out the same
    rows: the same dataset. It is not the gate's site eval set (jobs/gate.py site_eval_set): a run's own
    held-out rows measure that run, not the site."""
    from appliance.datasets.record import NewDataset, record_datasets

    with Session(engine) as session:
        run = get_run(session, run_id)
        source = session.get(Dataset, run.dataset_id)
        assert source is not None
        cfg = TrainConfig.model_validate_json(run.config_json)
        label, base_model_id = run.name or run.id, run.base_model_id
    wanted = set(rows)
    with open(paths.resolve(source.path), encoding="utf-8") as f:
        conversations = [json.loads(line)["messages"] for i, line in enumerate(f, 1) if i in wanted]
    if len(conversations) != len(wanted):
        raise ValueError(f"the trainer held out rows {sorted(wanted)[:20]}, but {source.id} has no such rows")
    item = NewDataset(name=f"{label} held-out", source_filename=f"{run_id}.holdout.jsonl", format="messages",
                      source_type=HOLDOUT, conversations=conversations, purpose="eval",
                      origin=f"held out by run {run_id} from {source.id} (val_size {cfg.val_size})")
    [(dataset, _created)] = record_datasets(engine=engine, paths=paths, items=[item], base_model_id=base_model_id,
                                            cutoff_len=cfg.cutoff_len)
    with write_session(engine) as session:
        run = get_run(session, run_id)
        if run.holdout_dataset_id != dataset.id:
            run.holdout_dataset_id = dataset.id
            session.add(run)
            events.record(session, kind="run.holdout", entity_type="run", entity_id=run_id,
                          message=f"{len(conversations)} held-out rows recorded as eval dataset {dataset.id}"
                                  + ("" if dataset.purpose == "eval" else f" (already recorded as {dataset.purpose})"))
    return dataset


def record_samples(*, engine: Engine, run_id: str, step: int, samples: list[Sample]) -> None:
    """The answers to held-out questions at an eval step; a resumed attempt's repeat of a step replaces them."""
    with write_session(engine) as session:
        session.exec(delete(RunSample).where(col(RunSample.run_id) == run_id).where(  # type: ignore[call-overload]
            col(RunSample.step) == step))
        for s in samples:
            session.add(RunSample(run_id=run_id, step=step, **s.model_dump()))


def samples(session: Session, run_id: str) -> list[RunSample]:
    query = select(RunSample).where(RunSample.run_id == run_id)
    return list(session.exec(query.order_by(col(RunSample.step), col(RunSample.row))))


def metrics(session: Session, run_id: str, after_id: int = 0) -> list[RunMetric]:
    query = select(RunMetric).where(RunMetric.run_id == run_id).where(col(RunMetric.id) > after_id)
    return list(session.exec(query.order_by(col(RunMetric.kind).desc(), col(RunMetric.step))))


def record_checkpoint(*, engine: Engine, paths: Paths, run_id: str, step: int, path: Path, keep: int) -> None:
    """Recorded only after the child renamed it into place; older ones beyond `keep` are removed."""
    with write_session(engine) as session:
        session.add(Checkpoint(run_id=run_id, step=step, path=paths.rel(path)))
        older = list(session.exec(
            select(Checkpoint).where(Checkpoint.run_id == run_id).order_by(col(Checkpoint.step).desc()).offset(keep)
        ))
        for ckpt in older:
            session.delete(ckpt)
    for ckpt in older:
        shutil.rmtree(paths.resolve(ckpt.path), ignore_errors=True)


def latest_checkpoint(*, engine: Engine, paths: Paths, run_id: str) -> tuple[int, Path] | None:
    """The newest recorded checkpoint whose folder is complete; metrics past it are forgotten."""
    with Session(engine) as session:
        ckpts = list(session.exec(
            select(Checkpoint).where(Checkpoint.run_id == run_id).order_by(col(Checkpoint.step).desc())
        ))
    for ckpt in ckpts:
        path = paths.resolve(ckpt.path)
        if CheckpointDir(path).complete():
            return ckpt.step, path
    return None


def forget_after(*, engine: Engine, run_id: str, step: int) -> None:
    with write_session(engine) as session:
        session.exec(delete(RunMetric).where(col(RunMetric.run_id) == run_id).where(  # type: ignore[call-overload]
            col(RunMetric.step) > step))
        session.exec(delete(RunSample).where(col(RunSample.run_id) == run_id).where(  # type: ignore[call-overload]
            col(RunSample.step) > step))
        run = get_run(session, run_id)
        run.step = step
        session.add(run)


def finish_run(
    *, engine: Engine, paths: Paths, run_id: str, ok: bool, error: str | None = None,
    result: dict[str, Any] | None = None, adapter: Path | None = None, paused_s: float = 0.0,
) -> str:
    """Record how the child ended. A run cancelled meanwhile stays cancelled."""
    with write_session(engine) as session:
        run = QUEUE.still_running(session, run_id)
        if run is None:
            return str(get_run(session, run_id).status)
        run.paused_for_serving_s += paused_s
        if ok and adapter is not None:
            weights = adapter / "adapter_model.safetensors"
            session.add(Artifact(
                id=f"art_{uuid.uuid4().hex[:12]}", kind="adapter", type="safetensors", status="ready", run_id=run_id,
                base_model_id=run.base_model_id, name=run.name, path=paths.rel(adapter), size=weights.stat().st_size,
                sha256=fsutil.sha256_file(weights),
            ))
            run.result_json = json.dumps(result or {})
            QUEUE.end(session, run, ok=True, message=f"finished at step {run.step}, loss {run.loss}")
        else:
            QUEUE.end(session, run, ok=False, message=error or "the training process failed")
        return str(run.status)
