"""The services and the box: `appliance up | inference | worker | api | migrate | config | health | token`."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from appliance.cli.common import ensure_bundled, get_runtime
from appliance.settings import Settings


def up() -> None:
    """Start everything (API, worker, inference server), supervised, in the foreground."""
    from appliance import fsutil
    from appliance.supervisor import Service, Supervisor

    runtime = get_runtime()
    fsutil.sweep_tmp(runtime.paths.tmp)  # nothing runs yet, so whatever is there is a crash's leftover
    ensure_bundled(runtime)
    s = runtime.settings
    typer.echo(f"control plane: http://{s.host}:{s.api_port}/  (admin token: {runtime.paths.admin_token})")
    typer.echo(f"kiosks:        http://{s.host}:{s.inference_port}/v1  (kiosk key: {runtime.paths.kiosk_key})")
    Supervisor([
        Service("api", [sys.executable, "-m", "appliance.cli", "api"]),
        Service("worker", [sys.executable, "-m", "appliance.cli", "worker"]),
        Service("inference", [sys.executable, "-m", "appliance.cli", "inference"]),
    ]).run_forever()


def inference() -> None:
    """Run the OpenAI-compatible inference server for kiosks (port 8080) in the foreground."""
    import logging

    from appliance.inference import openmp

    openmp.tune()  # before llama.cpp loads
    import uvicorn

    from appliance.inference.server import create_inference_app

    runtime = get_runtime()
    logging.basicConfig(level=runtime.settings.log_level.upper(), format="[inference] %(message)s")
    uvicorn.run(
        create_inference_app(runtime), host=runtime.settings.host, port=runtime.settings.inference_port,
        log_level=runtime.settings.log_level,
    )


def worker() -> None:
    """Run the trainer worker: claims queued runs, trains in a child process, resumes after crashes."""
    from appliance.serving import Signal
    from appliance.worker.worker import Worker

    runtime = get_runtime()
    alive = Signal(runtime.paths.worker_lock)  # `appliance health worker` asks whether it is held
    alive.enter()
    try:
        Worker(runtime).run_forever()
    finally:
        alive.close()


def api() -> None:
    """Run the control plane (REST API and web page) in the foreground."""
    import uvicorn

    from appliance.api.app import create_app

    runtime = get_runtime()
    ensure_bundled(runtime)  # a no-op under `up`, which did it; the first start of the api service does it
    uvicorn.run(
        create_app(runtime=runtime), host=runtime.settings.host, port=runtime.settings.api_port,
        log_level=runtime.settings.log_level,
    )


def migrate(
    revision: Annotated[str | None, typer.Option(help="Target revision (default: head, or base with --down)")] = None,
    down: Annotated[bool, typer.Option("--down", help="Downgrade instead of upgrade")] = False,
) -> None:
    """Apply database migrations (also done at every start)."""
    from appliance.db import migrate as m
    from appliance.paths import Paths

    paths = Paths.from_data_dir(Settings().data_dir)
    if down:
        m.downgrade(paths, revision or "base")
    else:
        m.upgrade(paths, revision or "head")
    typer.echo(f"database {paths.db} at revision {m.current_revision(paths)}")


def config() -> None:
    """Print the effective settings (secrets masked) with their environment variables."""
    settings = Settings()
    for name, info in Settings.model_fields.items():
        value = getattr(settings, name)
        shown = "(generated)" if value is None and name in ("admin_token", "kiosk_key") else value
        if hasattr(value, "get_secret_value"):
            shown = "********"
        typer.echo(f"APPLIANCE_{name.upper()}={shown}")
        typer.echo(f"    {info.description}")


def health(
    service: Annotated[str, typer.Argument(help="api, worker, inference, or all")] = "all",
) -> None:
    """Exit 0 when the service answers (the containers' HEALTHCHECK), else print what is wrong and exit 1."""
    from appliance.health import SERVICES, check

    settings = Settings()
    names = SERVICES if service == "all" else (service,)
    try:
        problems = [p for p in (check(n, settings) for n in names) if p]
    except ValueError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
    for problem in problems:
        typer.echo(problem, err=True)
    raise typer.Exit(1 if problems else 0)


def token(
    kiosk: Annotated[bool, typer.Option("--kiosk", help="Print the kiosk key (the kiosks' API key)")] = False,
) -> None:
    """Print the admin token (for the web page and API clients), or with --kiosk the kiosk key."""
    runtime = get_runtime()
    typer.echo(runtime.kiosk_key if kiosk else runtime.admin_token)

