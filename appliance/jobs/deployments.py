"""Deployments: which model the inference server should serve. The control plane only records the
wish (a `pending` deployment); the inference process reconciles to it from SQLite, loads and
smoke-tests the model, and records the outcome (`active`, the previous one `retired`; or `failed`
with the reason while the old model keeps serving). No call between the processes is needed, so
a restart of either side changes nothing.

Deployments are grouped by `channel`, the name kiosks ask for in a request's `model`: null is the
site's default (what a request without `model`, or with `default`, gets), and each named channel
is served beside it. A channel's target is its newest deployment that is pending or active; until
the default channel has one, the bundled base model is served there.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from appliance.db import events
from appliance.db.engine import write_session
from appliance.db.status import DeploymentStatus, transition
from appliance.db.tables import Deployment
from appliance.errors import ConflictError, NotFoundError
from appliance.jobs.common import bad_request as _bad
from appliance.jobs.common import now as _now
from appliance.models.served import served_file
from appliance.paths import Paths

DEFAULT_ALIASES = ("default", "any")  # `model` values that mean the site's default (README examples say "any")
CHANNEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_channel(channel: str | None) -> str | None:
    """A deployment's name as kiosks will send it in `model`; None (or empty): the site default."""
    if not channel:
        return None
    if not CHANNEL.fullmatch(channel) or channel in DEFAULT_ALIASES:
        raise _bad("name", f"name {channel!r}: letters, digits, '.', '_' or '-', at most 64, not one of "
                   f"{', '.join(DEFAULT_ALIASES)} (they mean the site's default deployment)")
    return channel


def _move(session: Session, dep: Deployment, new: DeploymentStatus, message: str) -> None:
    dep.status = transition(DeploymentStatus(dep.status), new)
    events.record(session, kind=f"deployment.{new}", entity_type="deployment", entity_id=dep.id, message=message)


def get_deployment(session: Session, deployment_id: str) -> Deployment:
    dep = session.get(Deployment, deployment_id)
    if dep is None:
        raise NotFoundError(f"no deployment with id {deployment_id!r}")
    return dep


def list_deployments(session: Session) -> list[Deployment]:
    return list(session.exec(select(Deployment).order_by(col(Deployment.created_at).desc(), col(Deployment.id))))


def request_deployment(*, engine: Engine, paths: Paths, artifact_id: str | None = None,
                       base_model_id: str | None = None, reason: str = "requested",
                       status: DeploymentStatus = DeploymentStatus.pending, gate_json: str | None = None,
                       forced_by: str | None = None, channel: str | None = None) -> Deployment:
    """Record the wish to serve a model (`pending`; `gating` while the deployment gate waits for its
    evaluations, appliance/jobs/gate.py, which is the way the API deploys) on `channel` (None: the
    site's default; a name: kiosks asking for that `model`, which /v1/models then lists)."""
    channel = check_channel(channel)
    if (artifact_id is None) == (base_model_id is None):
        raise _bad("artifact_id", "give exactly one of artifact_id or base_model_id")
    with write_session(engine) as session:
        served = served_file(session, paths, artifact_id=artifact_id, base_model_id=base_model_id)
        name = served.name
        if (missing := served.missing()) is not None:
            raise _bad("artifact_id", f"the model file {missing.name} is missing from the data directory")
        dep = Deployment(id=f"dep_{uuid.uuid4().hex[:12]}", artifact_id=artifact_id, base_model_id=base_model_id,
                         name=channel or name, channel=channel, status=str(status), gate_json=gate_json,
                         forced_by=forced_by)
        session.add(dep)
        events.record(session, kind="deployment.requested", entity_type="deployment", entity_id=dep.id,
                      message=f"{reason}: {name}")
        session.flush()
        session.expunge(dep)
        return dep


def rollback(*, engine: Engine, paths: Paths, channel: str | None = None) -> Deployment:
    """Deploy again what was active on `channel` before its current deployment (on the default
    channel, the bundled model when the current one is the first).

    Raises ConflictError (409) while a deployment on the channel is gating or pending, and when
    nothing was active before."""
    with Session(engine) as session:
        active = current(session, channel)
        underway = session.exec(
            select(Deployment).where(col(Deployment.status).in_([DeploymentStatus.gating, DeploymentStatus.pending]))
            .where(_on(channel)).order_by(col(Deployment.created_at).desc())
        ).first()
        if underway is not None:
            # Rolling back from under a deployment still loading would pick the model before the active
            # one, not undo the newcomer: say what is underway instead of guessing which was meant.
            raise ConflictError(f"deployment {underway.id} is {underway.status}; roll back once it is active "
                                "or has failed")
        history = session.exec(
            select(Deployment).where(Deployment.status == DeploymentStatus.retired)
            .where(_on(channel)).order_by(col(Deployment.activated_at).desc())
        ).all()
    previous = next((d for d in history if active is None or (d.artifact_id, d.base_model_id) !=
                     (active.artifact_id, active.base_model_id)), None)
    if previous is None and active is not None and active.artifact_id is not None and channel is None:
        # Before the first deployment the bundled model was served: that is what rollback returns to.
        from appliance.models.registry import BUNDLED_ID

        return request_deployment(engine=engine, paths=paths, base_model_id=BUNDLED_ID,
                                  reason=f"rollback from {active.id} to the bundled model", channel=channel)
    if previous is None:
        raise ConflictError("nothing to roll back to: no earlier deployment was ever active")
    return request_deployment(engine=engine, paths=paths, artifact_id=previous.artifact_id,
                              base_model_id=previous.base_model_id if previous.artifact_id is None else None,
                              reason=f"rollback from {active.id if active else '-'} to {previous.id}'s model",
                              channel=channel)


def undeploy(*, engine: Engine, channel: str, who: str) -> Deployment:
    """Stop serving the named deployment `channel`: its active deployment is retired (and one still
    pending fails, never to be loaded); the inference server stops serving the name within a second,
    requests in flight on it ending first. Returns the retired (or failed) deployment.

    Raises NotFoundError (404) when nothing is served or pending under the name, ConflictError (409)
    for the site's default deployment (deploy another or roll back instead) or while a deployment of
    the name is gating."""
    if not channel or channel in DEFAULT_ALIASES:
        raise ConflictError("the site's default deployment cannot be removed: deploy another model or roll back")
    with write_session(engine) as session:
        mine = list(session.exec(select(Deployment).where(_on(channel)).where(
            col(Deployment.status).in_([DeploymentStatus.gating, DeploymentStatus.pending, DeploymentStatus.active]))
            .order_by(col(Deployment.created_at).desc())))
        gating = [d for d in mine if d.status == DeploymentStatus.gating]
        if gating:
            raise ConflictError(f"deployment {gating[0].id} of {channel!r} is gating; remove the name once it is "
                                "active or has failed")
        if not mine:
            raise NotFoundError(f"no deployment named {channel!r} is served")
        for dep in mine:
            if dep.status == DeploymentStatus.active:
                dep.retired_at = _now()
                _move(session, dep, DeploymentStatus.retired, f"undeployed by {who}")
            else:
                dep.error = f"undeployed by {who} before it was loaded"
                _move(session, dep, DeploymentStatus.failed, dep.error)
        session.flush()
        for dep in mine:
            session.expunge(dep)
        return mine[0]


def _on(channel: str | None) -> Any:
    return col(Deployment.channel).is_(None) if channel is None else col(Deployment.channel) == channel


def current(session: Session, channel: str | None = None) -> Deployment | None:
    return session.exec(select(Deployment).where(Deployment.status == DeploymentStatus.active).where(_on(channel))
                        .order_by(col(Deployment.activated_at).desc())).first()


def target(session: Session, channel: str | None = None) -> Deployment | None:
    """What the inference server should serve on `channel`: its newest pending or active deployment."""
    return targets(session).get(channel)


def targets(session: Session) -> dict[str | None, Deployment]:
    """Every channel's target (its newest pending or active deployment); the default channel is None."""
    found: dict[str | None, Deployment] = {}
    for dep in session.exec(
        select(Deployment).where(col(Deployment.status).in_([DeploymentStatus.pending, DeploymentStatus.active]))
        .order_by(col(Deployment.created_at).desc(), col(Deployment.id).desc())
    ):
        found.setdefault(dep.channel, dep)
    return found


# --- outcomes, recorded by the inference process -------------------------------------------------


def mark_active(*, engine: Engine, deployment_id: str, strategy: str, gap_ms: float, load_ms: float,
                smoke_text: str) -> None:
    with write_session(engine) as session:
        dep = get_deployment(session, deployment_id)
        on = _on(dep.channel)
        for other in session.exec(select(Deployment).where(Deployment.status == DeploymentStatus.active).where(on)):
            if other.id != deployment_id:
                other.retired_at = _now()
                _move(session, other, DeploymentStatus.retired, f"replaced by {deployment_id}")
        # Older pending deployments were overtaken by this one: they will never be served.
        for stale in session.exec(select(Deployment).where(Deployment.status == DeploymentStatus.pending).where(on)):
            if stale.id != deployment_id and stale.created_at <= dep.created_at:
                stale.error = f"superseded by {deployment_id} before it was loaded"
                _move(session, stale, DeploymentStatus.failed, stale.error)
        if dep.status == DeploymentStatus.pending:
            dep.strategy, dep.gap_ms, dep.load_ms, dep.smoke_text = strategy, gap_ms, load_ms, smoke_text[:500]
            dep.activated_at = _now()
            _move(session, dep, DeploymentStatus.active,
                  f"serving {dep.name} ({strategy}, load {load_ms:.0f} ms, gap {gap_ms:.0f} ms)")


def mark_failed(*, engine: Engine, deployment_id: str, error: str) -> None:
    with write_session(engine) as session:
        dep = get_deployment(session, deployment_id)
        if dep.status in (DeploymentStatus.pending, DeploymentStatus.active):
            dep.error = error
            _move(session, dep, DeploymentStatus.failed, error)
