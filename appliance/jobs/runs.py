"""Runs: creation (config + pre-flight), their queue (`QUEUE`: claim, heartbeat, reclaim, requeue; the
contract is appliance/jobs/queue.py), cancel, retry, delete. What a running run reports (metrics,
checkpoints, its end) is recorded by appliance/jobs/run_progress.py. Every status change goes through
transition()."""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from appliance.datasets.stats import pick_model
from appliance.db import events
from appliance.db.engine import write_session
from appliance.db.status import RunStatus
from appliance.db.tables import (
    Artifact,
    Checkpoint,
    Dataset,
    DatasetTokenStats,
    ModelRecord,
    Run,
)
from appliance.errors import ConflictError
from appliance.jobs.common import bad_request as _bad
from appliance.jobs.common import now as _now
from appliance.jobs.queue import Beat, JobQueue
from appliance.models.templates import choose_template
from appliance.paths import Paths
from appliance.trainer import preflight
from appliance.trainer.config import TrainConfig, load_preset, parse_config
from appliance.trainer.targets import check_targets

TERMINAL = {RunStatus.succeeded, RunStatus.failed, RunStatus.cancelled}
HOLDOUT = "holdout"  # source_type of a run's held-out eval dataset: never the site's eval set (jobs/gate.py)


# --- the queue (appliance/jobs/queue.py) ---------------------------------------------------


def _on_claim(run: Run) -> None:
    run.started_at = run.started_at or _now()


def _on_beat(run: Run, beat: Beat) -> None:
    run.paused_for_serving_s += beat.paused_s


# A run taken back resumes from its last recorded checkpoint.
QUEUE = JobQueue(table=Run, entity="run", waiting=RunStatus.queued, running=RunStatus.running,
                 succeeded=RunStatus.succeeded, failed=RunStatus.failed, restart="resuming", on_claim=_on_claim,
                 on_beat=_on_beat)


def get_run(session: Session, run_id: str) -> Run:
    """The run; NotFoundError (404) when there is none."""
    return QUEUE.get(session, run_id)


@dataclass(frozen=True)
class RunExtra:
    """What a run's public view needs from other tables."""

    checkpoints: list[Checkpoint] = field(default_factory=list)
    adapter_artifact_id: str | None = None


def extras(session: Session, run_ids: list[str]) -> dict[str, RunExtra]:
    """Checkpoints and adapter artifact of many runs in two queries (not two per run)."""
    ckpts: dict[str, list[Checkpoint]] = {r: [] for r in run_ids}
    for c in session.exec(select(Checkpoint).where(col(Checkpoint.run_id).in_(run_ids)).order_by(
            col(Checkpoint.step))):
        ckpts[c.run_id].append(c)
    adapters = dict(session.exec(select(Artifact.run_id, Artifact.id).where(col(Artifact.run_id).in_(run_ids))
                                 .where(Artifact.kind == "adapter")).all())
    return {r: RunExtra(ckpts[r], adapters.get(r)) for r in run_ids}


def list_runs(session: Session) -> list[Run]:
    return list(session.exec(select(Run).order_by(col(Run.created_at).desc())))


def resolve_config(preset: str | None, config: dict[str, Any]) -> TrainConfig:
    raw = {**(load_preset(preset) if preset else {}), **config}
    return parse_config(raw)


def plan_run(
    *, engine: Engine, paths: Paths, dataset_id: str, base_model_id: str | None, config: dict[str, Any],
    preset: str | None = None, kiosk_min_share: float | None = None,
) -> tuple[TrainConfig, str, Any, preflight.Estimate]:
    """Everything checked and estimated before a run is queued (also the console's live pre-flight):
    the config, the model id, the chat template and the estimate (which may not fit)."""
    cfg = resolve_config(preset, config)
    model_id = base_model_id or cfg.model_name_or_path
    if model_id is None:
        with Session(engine) as session:
            default = pick_model(session, None)  # the bundled model, else the first registered
        if default is None:
            raise _bad("base_model_id", "no base model is registered; import one with `appliance models import`")
        model_id = default.id
    if base_model_id and cfg.model_name_or_path and cfg.model_name_or_path != base_model_id:
        raise _bad(
            "config.model_name_or_path", f"{cfg.model_name_or_path!r} differs from base_model_id {base_model_id!r}"
        )
    with Session(engine) as session:
        model = session.get(ModelRecord, model_id)
        if model is None:
            raise _bad("base_model_id", f"no base model with id {model_id!r}")
        dataset = session.get(Dataset, dataset_id)
        if dataset is None:
            raise _bad("dataset_id", f"no dataset with id {dataset_id!r}")
        stats = session.exec(
            select(DatasetTokenStats).where(DatasetTokenStats.dataset_id == dataset_id)
            .where(DatasetTokenStats.base_model_id == model_id)
        ).first()
    if model.hf_path is None:
        raise _bad("base_model_id", f"{model_id} has no full-precision weights to train on")
    # Refused here, before queueing, rather than honoured halfway (trainer/targets.py, models/templates.py).
    check_targets(paths.resolve(model.hf_path), model_id, cfg)
    template = choose_template(paths.resolve(model.hf_path), model_id, cfg.template)
    mean_tokens = stats.total_tokens / dataset.rows if stats else dataset.characters / dataset.rows / 4 + 16
    rows = min(dataset.rows, cfg.max_samples or dataset.rows)
    est = preflight.estimate(
        hf_dir=paths.resolve(model.hf_path), parameters=model.parameters, cfg=cfg, rows=rows, mean_tokens=mean_tokens,
        kiosk_min_share=kiosk_min_share,
    )
    return cfg, model_id, template, est


def create_run(
    *, engine: Engine, paths: Paths, dataset_id: str, base_model_id: str | None, config: dict[str, Any],
    preset: str | None = None, name: str | None = None, kiosk_min_share: float | None = None,
) -> Run:
    cfg, model_id, template, est = plan_run(engine=engine, paths=paths, dataset_id=dataset_id,
                                            base_model_id=base_model_id, config=config, preset=preset,
                                            kiosk_min_share=kiosk_min_share)
    if not est.fits:
        raise _bad(
            "config",
            f"estimated peak memory {est.peak_memory_mb / 1024:.1f} GiB does not fit the "
            f"{(est.available_memory_mb or 0) / 1024:.1f} GiB available on {est.device}: lower "
            "per_device_train_batch_size or cutoff_len, enable gradient_checkpointing, "
            "or use quantization_bit: 4 on a GPU",
        )
    run = Run(
        id=f"run_{uuid.uuid4().hex[:12]}", dataset_id=dataset_id, base_model_id=model_id, name=name, preset=preset,
        config_json=cfg.model_dump_json(exclude_defaults=False), max_steps=est.steps,
        estimate_json=json.dumps(preflight.as_dict(est)), chat_template_name=template.name,
        chat_template=template.source,
    )
    with write_session(engine) as session:
        session.add(run)
        events.record(session, kind="run.queued", entity_type="run", entity_id=run.id,
                      message=f"run queued: {dataset_id} on {model_id}, {est.steps} steps, ~{est.seconds:.0f}s")
    with Session(engine) as session:
        return get_run(session, run.id)


def cancel_run(*, engine: Engine, run_id: str) -> Run:
    """Queued runs are cancelled at once; a running one's worker sees it and stops the child."""
    with write_session(engine) as session:
        run = get_run(session, run_id)
        if RunStatus(run.status) in TERMINAL:
            raise ConflictError(f"run {run_id} is already {run.status}")
        QUEUE.move(session, run, RunStatus.cancelled, "cancelled by the user")
        run.finished_at = _now()
    with Session(engine) as session:
        return get_run(session, run_id)


def retry_run(*, engine: Engine, run_id: str) -> Run:
    """A failed or cancelled run goes back to the queue and resumes from its last checkpoint."""
    with write_session(engine) as session:
        run = get_run(session, run_id)
        if RunStatus(run.status) not in (RunStatus.failed, RunStatus.cancelled):
            raise ConflictError(f"only failed or cancelled runs can be retried; {run_id} is {run.status}")
        QUEUE.move(session, run, RunStatus.queued, "queued again by the user")
        run.error, run.finished_at = None, None
    with Session(engine) as session:
        return get_run(session, run_id)


def delete_run(*, engine: Engine, paths: Paths, run_id: str) -> None:
    with write_session(engine) as session:
        run = get_run(session, run_id)
        if run.status in (RunStatus.running, RunStatus.queued):
            raise ConflictError(f"run {run_id} is {run.status}; cancel it first")
        used = session.exec(select(Artifact.id).where(Artifact.run_id == run_id).where(Artifact.kind != "adapter"))
        if list(used):
            raise ConflictError(f"run {run_id} has exported artifacts; delete those first")
        session.exec(delete(Artifact).where(col(Artifact.run_id) == run_id))  # type: ignore[call-overload]
        session.delete(run)
        events.record(session, kind="run.deleted", entity_type="run", entity_id=run_id, message="run deleted")
    shutil.rmtree(paths.run_dir(run_id), ignore_errors=True)
