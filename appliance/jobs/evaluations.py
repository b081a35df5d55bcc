"""Evaluation jobs: one model (a GGUF artifact, or a base model's GGUF) on one dataset, scored by a
worker child (appliance/evaluation/job.py) with the engine and chat template kiosks get.

Resumable: each scored question is appended to `evaluations/<id>/questions.jsonl` as it is scored,
so an evaluation taken back (worker gone) goes on where it stopped; the result file is renamed into
place only when every question is scored, and only then is the row `succeeded` with its metrics.
Asking again for an evaluation that is queued, running or succeeded returns that one (reuse); a
succeeded one only when the engine running now computed it (after an upgrade, it is evaluated again).
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, col, or_, select

from appliance.child_protocol import EvalDone
from appliance.db import events
from appliance.db.engine import write_session
from appliance.db.status import EvaluationStatus
from appliance.db.tables import Dataset, Evaluation
from appliance.errors import ConflictError, NotFoundError
from appliance.jobs.common import bad_request as _bad
from appliance.jobs.common import now as _now
from appliance.jobs.queue import Beat, JobQueue
from appliance.models.served import served_file
from appliance.paths import Paths


def _on_claim(ev: Evaluation) -> None:
    ev.started_at = ev.started_at or _now()


def _on_beat(ev: Evaluation, beat: Beat) -> None:
    if beat.progress is not None and ev.questions_total:
        ev.questions_done = round(beat.progress * ev.questions_total)


QUEUE = JobQueue(table=Evaluation, entity="evaluation", waiting=EvaluationStatus.queued,
                 running=EvaluationStatus.running, succeeded=EvaluationStatus.succeeded,
                 failed=EvaluationStatus.failed, restart="evaluation will resume", on_claim=_on_claim,
                 on_beat=_on_beat)


def get_evaluation(session: Session, evaluation_id: str) -> Evaluation:
    """The evaluation; NotFoundError (404) when there is none."""
    return QUEUE.get(session, evaluation_id)


def list_evaluations(session: Session, *, dataset_id: str | None = None, artifact_id: str | None = None,
                     base_model_id: str | None = None) -> list[Evaluation]:
    query = select(Evaluation).order_by(col(Evaluation.created_at).desc())
    if dataset_id:
        query = query.where(Evaluation.dataset_id == dataset_id)
    if artifact_id:
        query = query.where(Evaluation.artifact_id == artifact_id)
    if base_model_id:
        query = query.where(Evaluation.base_model_id == base_model_id)
    return list(session.exec(query))


def find(session: Session, *, artifact_id: str | None, base_model_id: str | None, dataset_id: str,
         statuses: tuple[str, ...] = ("queued", "running", "succeeded")) -> Evaluation | None:
    """The newest evaluation of this model on this dataset in one of `statuses`; a succeeded one only
    when the engine running now computed it (schemas.engine_id: another one's figures are not comparable)."""
    from appliance.evaluation.schemas import engine_id

    current = or_(col(Evaluation.status) != EvaluationStatus.succeeded, Evaluation.engine == engine_id())
    return session.exec(
        select(Evaluation).where(Evaluation.artifact_id == artifact_id, Evaluation.base_model_id == base_model_id,
                                 Evaluation.dataset_id == dataset_id, col(Evaluation.status).in_(statuses), current)
        .order_by(col(Evaluation.created_at).desc())).first()


def request_evaluation(*, engine: Engine, paths: Paths, dataset_id: str, artifact_id: str | None = None,
                       base_model_id: str | None = None, reason: str = "requested") -> tuple[Evaluation, bool]:
    """Queue an evaluation (or return the one queued, running or succeeded for the same model and
    dataset); returns (evaluation, created). Raises NotFoundError for an unknown dataset or model,
    InvalidInputError (422) when the model has no ready GGUF or not exactly one of the two ids is given."""
    if (artifact_id is None) == (base_model_id is None):
        raise _bad("artifact_id", "give exactly one of artifact_id or base_model_id")
    with write_session(engine) as session:
        if session.get(Dataset, dataset_id) is None:
            raise NotFoundError(f"no dataset with id {dataset_id!r}")
        served = served_file(session, paths, artifact_id=artifact_id, base_model_id=base_model_id)
        name = served.name
        if (missing := served.missing()) is not None:
            raise _bad("artifact_id", f"the model file {missing.name} is missing from the data directory")
        existing = find(session, artifact_id=artifact_id, base_model_id=base_model_id, dataset_id=dataset_id)
        if existing is not None:
            session.expunge(existing)
            return existing, False
        ev = Evaluation(id=f"eval_{uuid.uuid4().hex[:12]}", artifact_id=artifact_id, base_model_id=base_model_id,
                        dataset_id=dataset_id, model_name=name, status=EvaluationStatus.queued)
        session.add(ev)
        events.record(session, kind="evaluation.queued", entity_type="evaluation", entity_id=ev.id,
                      message=f"{reason}: {name} on dataset {dataset_id}")
        session.flush()
        session.expunge(ev)
        return ev, True


def set_total(*, engine: Engine, evaluation_id: str, total: int) -> None:
    with write_session(engine) as session:
        ev = get_evaluation(session, evaluation_id)
        ev.questions_total = total
        session.add(ev)


def finish(*, engine: Engine, evaluation_id: str, done: EvalDone | None, error: str | None) -> str:
    """Record how the child ended; returns the evaluation's status (a job no longer running keeps its own)."""
    with write_session(engine) as session:
        ev = QUEUE.still_running(session, evaluation_id)
        if ev is None:
            return str(get_evaluation(session, evaluation_id).status)
        if done is not None and error is None:
            from appliance.evaluation.schemas import engine_id

            ev.metrics_json, ev.eval_set, ev.engine = json.dumps(done.metrics), done.eval_set, engine_id()
            ev.questions_done = ev.questions_total = done.questions
            QUEUE.end(session, ev, ok=True, message=f"{done.questions} questions in {done.seconds:.0f} s")
        else:
            QUEUE.end(session, ev, ok=False, message=error or "the evaluation ended without a result")
        return str(ev.status)


def metrics(ev: Evaluation) -> dict[str, dict[str, float]]:
    """{metric: {mean, low, high, n}} of a succeeded evaluation; {} otherwise."""
    return json.loads(ev.metrics_json) if ev.metrics_json else {}


def result_file(paths: Paths, ev: Evaluation) -> Path:
    """The complete result (appliance.evaluation.schemas.EvaluationResult as JSON); ConflictError (409)
    until the evaluation has succeeded."""
    if ev.status != EvaluationStatus.succeeded:
        raise ConflictError(f"evaluation {ev.id} is {ev.status}; its answers are there once it has succeeded")
    return paths.evaluation(ev.id).result


def cancel_evaluation(*, engine: Engine, evaluation_id: str, who: str = "the user") -> Evaluation:
    """Stop a queued or running evaluation: it ends `failed` with "cancelled by WHO" (a worker running it
    stops its child at the next heartbeat; a deployment the gate holds for it is refused, saying so).
    ConflictError (409) when it has already ended."""
    with write_session(engine) as session:
        ev = get_evaluation(session, evaluation_id)
        if ev.status not in (EvaluationStatus.queued, EvaluationStatus.running):
            raise ConflictError(f"evaluation {evaluation_id} has already ended ({ev.status})")
        QUEUE.end(session, ev, ok=False, message=f"cancelled by {who}")
        session.flush()
        session.expunge(ev)
        return ev


def delete_evaluation(*, engine: Engine, paths: Paths, evaluation_id: str) -> None:
    """Remove an evaluation and its files; a running one cannot be removed (409: cancel it first)."""
    with write_session(engine) as session:
        ev = get_evaluation(session, evaluation_id)
        if ev.status == EvaluationStatus.running:
            raise ConflictError(f"evaluation {evaluation_id} is running; cancel it first")
        session.delete(ev)
        events.record(session, kind="evaluation.deleted", entity_type="evaluation", entity_id=evaluation_id,
                      message=f"deleted ({ev.model_name})")
    shutil.rmtree(paths.evaluation(evaluation_id).root, ignore_errors=True)


def spec_values(session: Session, paths: Paths, ev: Evaluation) -> dict[str, Any]:
    """What the evaluation child needs, looked up now: the model file, its name, the dataset file."""
    served = served_file(session, paths, artifact_id=ev.artifact_id, base_model_id=ev.base_model_id)
    dataset = session.get(Dataset, ev.dataset_id)
    if dataset is None:
        raise NotFoundError(f"no dataset with id {ev.dataset_id!r}")
    return {"model_path": served.path, "lora_path": served.lora, "model_name": served.name,
            "dataset_path": paths.resolve(dataset.path)}
