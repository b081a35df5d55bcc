"""The control-plane app factory. The runtime (settings, engine, tokens) is created here and
passed in through app.state; nothing is created at import time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from appliance import __version__
from appliance.api import errors
from appliance.api.limits import BodyLimitMiddleware
from appliance.api.routers import (
    artifacts,
    dataset_views,
    datasets,
    deployments,
    evaluations,
    health,
    models,
    playground,
    runs,
    session,
    system,
)
from appliance.bootstrap import Runtime, bootstrap
from appliance.settings import Settings

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
# The console loads nothing from another host (its libraries are vendored): the browser holds it to that.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}

DESCRIPTION = """Control plane of the appliance: base models, datasets, training runs,
artifacts (GGUF exports) and deployments. Every route under `/api` needs the admin token as
`Authorization: Bearer <token>`; `GET /healthz` is open."""


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> FastAPI:
    runtime = runtime or bootstrap(settings or Settings())
    app = FastAPI(title="appliance control plane", version=__version__, description=DESCRIPTION)
    app.state.runtime = runtime
    app.add_middleware(BodyLimitMiddleware, max_bytes=runtime.settings.max_upload_bytes)
    errors.install(app)
    app.include_router(health.router)
    app.include_router(models.router)
    app.include_router(datasets.router)
    app.include_router(dataset_views.router)
    app.include_router(runs.router)
    app.include_router(runs.presets_router)
    app.include_router(artifacts.router)
    app.include_router(deployments.router)
    app.include_router(evaluations.router)
    app.include_router(session.router)
    app.include_router(system.router)
    app.include_router(playground.router)

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        return errors.add_schemas(generate())  # the ErrorBody the routes' error responses refer to

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        # The page itself holds no data; it signs in with the admin token (an HttpOnly cookie) and calls the API.
        return FileResponse(WEB_DIR / "index.html", media_type="text/html", headers=SECURITY_HEADERS)

    return app
