"""The deployment gate: a model reaches the kiosks only if, on the site's eval set, it answers no worse
than the model serving now (appliance/evaluation/compare.py: the verdict per metric; the margins are
settings: APPLIANCE_GATE_MAX_NLL_INCREASE, _OVERLAP_DROP, _RETENTION_DROP).

- The site's eval set: the dataset named in the request, else the newest dataset uploaded with
  `purpose=eval` (a run's held-out rows, source_type "holdout", are not the site's set). None: the
  deployment proceeds and its record says it was not gated.
- Both models' evaluations on it are reused when they exist, else queued. When both have succeeded
  at request time the answer is immediate: 409 naming the worse metrics, or the deployment. Otherwise
  the deployment waits as `gating`; the worker settles it when the evaluations end (`resolve`):
  `pending` (then served) or `failed` with the reason.
- `force`: deployed without the gate; recorded with who and when in the event log.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from appliance.db import events
from appliance.db.engine import write_session
from appliance.db.status import DeploymentStatus, EvaluationStatus, transition
from appliance.db.tables import Artifact, Dataset, Deployment, Evaluation
from appliance.errors import ConflictError, NotFoundError
from appliance.evaluation.schemas import MetricDiff
from appliance.jobs import deployments, evaluations
from appliance.paths import Paths

Status = Literal["passed", "refused", "waiting", "not_gated", "forced"]


class GateRecord(BaseModel):
    """What the gate decided for one deployment (stored with it, shown by GET /api/deployments)."""

    status: Status
    reason: str
    eval_dataset_id: str | None = None
    baseline: str | None = None  # the model serving when the deployment was asked for
    baseline_evaluation_id: str | None = None
    candidate_evaluation_id: str | None = None
    worse: list[str] = []
    metrics: list[MetricDiff] = []


def site_eval_set(session: Session) -> Dataset | None:
    """The newest dataset uploaded as an eval set (not a run's held-out rows: jobs/runs.py record_holdout)."""
    return session.exec(select(Dataset).where(Dataset.purpose == "eval").where(Dataset.source_type != "holdout")
                        .order_by(col(Dataset.created_at).desc())).first()


def serving_now(session: Session) -> tuple[str | None, str | None, str]:
    """(artifact_id, base_model_id, name) of the model kiosks get now: the active deployment's, or the
    bundled base model before any deployment."""
    from appliance.models.registry import BUNDLED_ID

    active = deployments.current(session)
    if active is None:
        return None, BUNDLED_ID, BUNDLED_ID
    return active.artifact_id, active.base_model_id if active.artifact_id is None else None, active.name or active.id


def _compare(paths: Paths, margins: dict[str, float], base: Evaluation, cand: Evaluation) -> GateRecord:
    from appliance.evaluation.compare import GATE_METRICS, compare
    from appliance.evaluation.export import evaluation_from_json

    baseline = evaluation_from_json(evaluations.result_file(paths, base).read_bytes())
    candidate = evaluation_from_json(evaluations.result_file(paths, cand).read_bytes())
    comparison = compare(baseline, candidate, margins=margins)
    rows = [m for m in comparison.metrics if m.metric in GATE_METRICS]
    worse = comparison.worse(GATE_METRICS)
    if worse:
        said = "; ".join(f"{m.metric} {m.baseline:.3f} -> {m.candidate:.3f} (95% interval of the change "
                         f"{m.low:+.3f} to {m.high:+.3f}, margin {m.margin})" for m in rows if m.metric in worse)
        reason = f"refused by the deployment gate: worse than {base.model_name} on {', '.join(worse)}: {said}"
        return GateRecord(status="refused", reason=reason, worse=worse, metrics=rows)
    return GateRecord(status="passed", reason=f"no worse than {base.model_name} on any gated metric", metrics=rows)


def decide(session: Session, paths: Paths, margins: dict[str, float], base: Evaluation,
           cand: Evaluation) -> GateRecord:
    ids = {"baseline_evaluation_id": base.id, "candidate_evaluation_id": cand.id, "eval_dataset_id": cand.dataset_id,
           "baseline": base.model_name}
    failed = [e for e in (base, cand) if e.status == EvaluationStatus.failed]
    if failed:
        why = "; ".join(f"{e.model_name}: {e.error}" for e in failed)
        return GateRecord(status="refused", reason=f"refused by the deployment gate: an evaluation failed ({why})",
                          **ids)
    if base.status != EvaluationStatus.succeeded or cand.status != EvaluationStatus.succeeded:
        return GateRecord(status="waiting", reason="waiting for the evaluations on the eval set", **ids)
    return _compare(paths, margins, base, cand).model_copy(update=ids)


def request(*, engine: Engine, paths: Paths, margins: dict[str, float], artifact_id: str | None = None,
            base_model_id: str | None = None, eval_dataset_id: str | None = None, force: bool = False,
            who: str = "admin", channel: str | None = None) -> Deployment:
    """A deployment through the gate (module docstring). Raises ConflictError (409) with the reason when
    the gate refuses now, NotFoundError for an unknown eval dataset."""
    with Session(engine) as session:
        if eval_dataset_id is not None and session.get(Dataset, eval_dataset_id) is None:
            raise NotFoundError(f"no dataset with id {eval_dataset_id!r}")
        eval_set = session.get(Dataset, eval_dataset_id) if eval_dataset_id else site_eval_set(session)
        base_art, base_model, base_name = serving_now(session)
    if force:
        record = GateRecord(status="forced", reason=f"deployed past the gate by {who}")
        dep = deployments.request_deployment(engine=engine, paths=paths, artifact_id=artifact_id,
                                             base_model_id=base_model_id, reason=f"forced by {who}",
                                             gate_json=record.model_dump_json(), forced_by=who, channel=channel)
        with write_session(engine) as session:
            events.record(session, kind="deployment.forced", entity_type="deployment", entity_id=dep.id,
                          message=f"{who} deployed {dep.name} without the deployment gate")
        return dep
    if eval_set is None or (base_art, base_model) == (artifact_id, base_model_id):
        why = ("no eval set: upload one with purpose=eval to gate deployments" if eval_set is None
               else f"{base_name} is what serves now; nothing to compare")
        record = GateRecord(status="not_gated", reason=why)
        return deployments.request_deployment(engine=engine, paths=paths, artifact_id=artifact_id,
                                              base_model_id=base_model_id, gate_json=record.model_dump_json(),
                                              channel=channel)
    cand, _ = evaluations.request_evaluation(engine=engine, paths=paths, dataset_id=eval_set.id,
                                             artifact_id=artifact_id, base_model_id=base_model_id,
                                             reason="for the deployment gate")
    base, _ = evaluations.request_evaluation(engine=engine, paths=paths, dataset_id=eval_set.id,
                                             artifact_id=base_art, base_model_id=base_model,
                                             reason="for the deployment gate (the model serving now)")
    with Session(engine) as session:
        record = decide(session, paths, margins, base, cand)
    if record.status == "refused":
        raise ConflictError(record.reason)
    return deployments.request_deployment(
        engine=engine, paths=paths, artifact_id=artifact_id, base_model_id=base_model_id,
        status=DeploymentStatus.gating if record.status == "waiting" else DeploymentStatus.pending,
        gate_json=record.model_dump_json(), reason=f"gate {record.status}", channel=channel)


def resolve(*, engine: Engine, paths: Paths, margins: dict[str, float] | None = None) -> list[str]:
    """Settle deployments waiting on the gate whose evaluations have ended; returns what was done."""
    from appliance.evaluation.compare import DEFAULT_MARGINS

    done = []
    with write_session(engine) as session:
        for dep in session.exec(select(Deployment).where(Deployment.status == DeploymentStatus.gating)):
            record = GateRecord.model_validate_json(dep.gate_json or "{}")
            base = session.get(Evaluation, record.baseline_evaluation_id or "")
            cand = session.get(Evaluation, record.candidate_evaluation_id or "")
            if base is None or cand is None:
                decided = GateRecord(status="refused", reason="refused by the deployment gate: its evaluations "
                                     "were deleted")
            else:
                decided = decide(session, paths, margins or DEFAULT_MARGINS, base, cand)
            if decided.status == "waiting":
                continue
            dep.gate_json = decided.model_dump_json()
            new = DeploymentStatus.pending if decided.status == "passed" else DeploymentStatus.failed
            dep.status = transition(DeploymentStatus(dep.status), new)
            if new == DeploymentStatus.failed:
                dep.error = decided.reason
            session.add(dep)
            events.record(session, kind=f"deployment.gate_{decided.status}", entity_type="deployment",
                          entity_id=dep.id, message=decided.reason)
            art = session.get(Artifact, dep.artifact_id) if dep.artifact_id else None
            if art is not None and art.run_id:  # the run's page says what became of its model
                outcome = "deployed" if decided.status == "passed" else "not deployed"
                events.record(session, kind="run.promotion", entity_type="run", entity_id=art.run_id,
                              message=f"deployment {dep.id}: {outcome}: {decided.reason}")
            done.append(f"deployment {dep.id}: gate {decided.status}: {decided.reason}")
    return done


def record_of(dep: Deployment) -> dict[str, object] | None:
    """The gate's record of a deployment, as JSON data (None for one made before the gate existed)."""
    return json.loads(dep.gate_json) if dep.gate_json else None
