"""Small helpers every job module uses."""

from __future__ import annotations

from datetime import UTC, datetime

from appliance.errors import InputProblem, InvalidInputError


def now() -> datetime:
    return datetime.now(UTC)


def bad_request(field: str, message: str) -> InvalidInputError:
    """A 422 naming the request field that is wrong."""
    return InvalidInputError("request", [InputProblem(None, field, message)])
