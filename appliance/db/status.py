"""Statuses and the one function that moves them. Every status change goes through transition()."""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar

S = TypeVar("S", bound=StrEnum)


class RunStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


class ArtifactStatus(StrEnum):
    pending = "pending"
    running = "running"
    ready = "ready"
    failed = "failed"


class DeploymentStatus(StrEnum):
    gating = "gating"  # waiting for the evaluations the deployment gate compares
    pending = "pending"
    active = "active"
    failed = "failed"
    retired = "retired"


class EvaluationStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"


_ALLOWED: dict[type[StrEnum], dict[str, set[str]]] = {
    RunStatus: {
        "queued": {"running", "cancelled"},
        # running -> queued: the worker died and the run is reclaimed for resume.
        "running": {"succeeded", "failed", "cancelled", "queued"},
        "failed": {"queued"},  # retry
        "cancelled": {"queued"},  # retry
        "succeeded": set(),
    },
    ArtifactStatus: {
        "pending": {"running", "failed"},
        "running": {"ready", "failed", "pending"},
        "ready": set(),
        "failed": set(),
    },
    EvaluationStatus: {
        "queued": {"running", "failed"},
        "running": {"succeeded", "failed", "queued"},  # -> queued: taken back, resumes where it stopped
        "succeeded": set(),
        "failed": {"queued"},  # asked for again
    },
    DeploymentStatus: {
        "gating": {"pending", "failed"},  # the gate passed / refused
        "pending": {"active", "failed"},
        # active -> failed: its file could not be loaded when the inference server started.
        "active": {"retired", "failed"},
        "failed": set(),
        "retired": set(),
    },
}


class IllegalTransitionError(ValueError):
    def __init__(self, current: str, new: str) -> None:
        super().__init__(f"cannot go from {current!r} to {new!r}")
        self.current = current
        self.new = new


def transition(current: S, new: S) -> S:
    """Return `new` if the move from `current` is legal, else raise IllegalTransitionError."""
    allowed = _ALLOWED[type(current)]
    if str(new) not in allowed[str(current)]:
        raise IllegalTransitionError(str(current), str(new))
    return new
