"""Domain errors -> HTTP answers, in one place, and the one schema every error answer has.

Every error body is an `ErrorBody`: a `detail` string that says what is wrong; input errors add
`errors`, a list of {line (or row), field, message}, and uploads `file` and `error_count`. Each route
documents the error statuses it can answer with `responses(...)`, so the OpenAPI document tells a
client every status it will see (checked by fuzzing: tests/test_fuzz_api.py). Before this, 422
bodies were documented as FastAPI's list-shaped default and seven routes answered undocumented
401, 404 and 400s.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import IntegrityError
from starlette.exceptions import HTTPException as StarletteHTTPException

from appliance.errors import ApplianceError, InvalidInputError
from appliance.fsutil import describe_no_space
from appliance.paths import UnsafeIdError

log = logging.getLogger("appliance.api")


class Problem(BaseModel):
    """One thing wrong with the input."""

    field: str | None = Field(None, description="The request field or the file's key path")
    message: str
    line: int | None = Field(None, description="Line of the uploaded file (1-based), when it has lines")
    row: int | None = Field(None, description="Row of an uploaded Parquet file (1-based)")


class ErrorBody(BaseModel):
    """Every error answer of the control plane."""

    detail: str = Field(description="What is wrong and, where it helps, what to do")
    file: str | None = Field(None, description="The uploaded file's name (refused uploads)")
    error_count: int | None = Field(None, description="How many problems were found (the first 20 are listed)")
    errors: list[Problem] | None = None


DEFAULT_DESCRIPTIONS = {
    400: "The body could not be read: not JSON or multipart, or nested too deeply",
    401: "Missing or wrong admin token",
    403: "A write signed in by the console's cookie without its X-Appliance-Console header (CSRF)",
    404: "No such resource",
    409: "Conflicts with the resource's state",
    413: "Request body over the upload limit (APPLIANCE_MAX_UPLOAD_BYTES)",
    422: "Invalid input: `detail`, plus `errors` with the field (and line) and message of each problem",
    503: "A service the route relies on cannot be reached",
    507: "No space left on the device: `detail` names the path and its free space; nothing was kept",
}
ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}


def responses(*codes: int, notes: dict[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for error statuses, e.g. `responses(404, 422, notes={404: "No such run"})`.
    Bodies are referenced by name (not `model=`), so plain-text and file routes document JSON errors."""
    notes = notes or {}
    return {code: {"description": notes.get(code, DEFAULT_DESCRIPTIONS[code]),
                   "content": {"application/json": {"schema": ERROR_REF}}}
            for code in sorted({*codes, *notes})}


def add_schemas(doc: dict[str, Any]) -> dict[str, Any]:
    """Put ErrorBody (and Problem) into the document's components, where `responses` points."""
    schema = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = schema.pop("$defs", {})
    components = doc.setdefault("components", {}).setdefault("schemas", {})
    components.update(defs)
    components["ErrorBody"] = schema
    return doc


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


async def _http_error(request: Request, exc: Exception) -> Any:
    """FastAPI answers any failure to read a body with a bare 400 ("There was an error parsing the
    body"); say why when we know: a full disk while spooling an upload, or JSON nested too deeply."""
    assert isinstance(exc, StarletteHTTPException)
    cause = exc.__cause__
    if exc.status_code == 400 and cause is not None:
        full = describe_no_space(cause, Path(tempfile.gettempdir()))  # where multipart parts are spooled
        if full is not None:
            return JSONResponse({"detail": full}, status_code=507)
        if isinstance(cause, RecursionError):
            return JSONResponse({"detail": "the request body is JSON nested too deeply"}, status_code=400)
    return await http_exception_handler(request, exc)


async def _integrity_error(_request: Request, exc: Exception) -> JSONResponse:
    """A delete or write the database's constraints refuse (a check in the domain code missed a case):
    a 409 that says so, never a 500; nothing was written (the transaction rolled back)."""
    log.warning("refused by a database constraint: %s", exc)
    cause = getattr(exc, "orig", exc)
    return JSONResponse({"detail": f"refused: other records depend on this one ({cause}); nothing was changed"},
                        status_code=409)


async def _internal_error(_request: Request, exc: Exception) -> JSONResponse:
    """A bug: the body is still JSON with a `detail` (the traceback goes to the api service's log)."""
    return JSONResponse({"detail": f"internal error ({type(exc).__name__}); the api service's log has the "
                                   "details"}, status_code=500)


def install(app: FastAPI) -> None:
    app.add_exception_handler(IntegrityError, _integrity_error)
    app.add_exception_handler(Exception, _internal_error)
    app.add_exception_handler(ApplianceError, _appliance_error)
    app.add_exception_handler(UnsafeIdError, _unsafe_id)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
