"""Domain errors -> HTTP answers, in one place. Every error body has a `detail` string that says
what is wrong; input errors add `errors`, a list of {line, field, message}."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from appliance.errors import ApplianceError, InvalidInputError
from appliance.paths import UnsafeIdError


def _problem_dict(line: int | None, field: str | None, message: str, unit: str = "line") -> dict[str, Any]:
    return {unit: line, "field": field, "message": message} if unit != "line" else {
        "line": line, "field": field, "message": message
    }


async def _appliance_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApplianceError)
    body: dict[str, Any] = {"detail": str(exc)}
    if isinstance(exc, InvalidInputError):
        body["file"] = exc.source
        body["errors"] = [_problem_dict(p.line, p.field, p.message, p.unit) for p in exc.problems]
        body["error_count"] = exc.total
    return JSONResponse(body, status_code=exc.status_code)


async def _unsafe_id(_request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=404)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"field": ".".join(str(p) for p in err.get("loc", ()) if p != "body"), "message": err.get("msg", "")}
        for err in exc.errors()
    ]
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return JSONResponse({"detail": detail, "errors": errors}, status_code=422)


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApplianceError, _appliance_error)
    app.add_exception_handler(UnsafeIdError, _unsafe_id)
    app.add_exception_handler(RequestValidationError, _validation_error)
