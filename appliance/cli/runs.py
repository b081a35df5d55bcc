"""`appliance runs create | list | show | watch | cancel | retry | rm | logs`: fine-tuning runs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from sqlmodel import Session

from appliance.bootstrap import Runtime
from appliance.cli.common import checked, fail, get_runtime, show
from appliance.errors import ApplianceError

runs_app = typer.Typer(help="Fine-tuning runs.", no_args_is_help=True)


def _run_public(runtime: Runtime, run_id: str) -> dict[str, Any]:
    from appliance.api.routers.runs import public
    from appliance.jobs.runs import get_run

    with Session(runtime.engine) as session:
        return public(session, [get_run(session, run_id)])[0].model_dump(mode="json")


@runs_app.command("create")
def runs_create(
    dataset: Annotated[str, typer.Option(help="Dataset id")],
    model: Annotated[str | None, typer.Option(help="Base model id (default: the bundled one)")] = None,
    preset: Annotated[str | None, typer.Option(help="Preset name from configs/presets")] = "lora-cpu",
    config: Annotated[Path | None, typer.Option(help="A YAML config (LLaMA-Factory keys)", exists=True,
                                                dir_okay=False)] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override one key: --set max_steps=50")] = None,
    name: Annotated[str | None, typer.Option(help="Display name")] = None,
) -> None:
    """Queue a fine-tuning run (a worker must be running: `appliance up` or `appliance worker`)."""
    import yaml

    from appliance.jobs.runs import create_run
    from appliance.models.registry import BUNDLED_ID

    overrides: dict[str, Any] = {}
    if config is not None:
        try:
            loaded = yaml.safe_load(config.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise typer.BadParameter(f"{config} is not valid YAML: {exc}", param_hint="--config") from exc
        if not isinstance(loaded, dict):
            raise typer.BadParameter(f"{config} must hold a mapping of config keys (LLaMA-Factory's), "
                                     f"not {type(loaded).__name__}", param_hint="--config")
        overrides = loaded
    for item in set_ or []:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise typer.BadParameter(f"{item!r}: write KEY=VALUE, e.g. --set max_steps=50", param_hint="--set")
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise typer.BadParameter(f"{item!r}: the value is not valid YAML: {exc}", param_hint="--set") from exc
    runtime = get_runtime()
    try:
        run = create_run(engine=runtime.engine, paths=runtime.paths, dataset_id=dataset,
                         base_model_id=model or (None if "model_name_or_path" in overrides else BUNDLED_ID),
                         config=overrides, preset=preset, name=name,
                         kiosk_min_share=runtime.settings.kiosk_min_share)
    except ApplianceError as exc:
        raise fail(exc) from exc
    show(_run_public(runtime, run.id))


@runs_app.command("list")
def runs_list() -> None:
    """List runs, newest first."""
    from appliance.jobs.runs import list_runs

    runtime = get_runtime()
    with Session(runtime.engine) as session:
        for r in list_runs(session):
            loss = f"{r.loss:.4f}" if r.loss is not None else "-"
            typer.echo(f"{r.id}  {r.status:<9} step {r.step}/{r.max_steps}  loss {loss}  {r.dataset_id}")


@runs_app.command("show")
def runs_show(run_id: str) -> None:
    """Show a run: status, progress, estimate, error."""
    runtime = get_runtime()
    try:
        show(_run_public(runtime, run_id))
    except ApplianceError as exc:
        raise fail(exc) from exc


@runs_app.command("watch")
def runs_watch(run_id: str) -> None:
    """Follow a run with a progress bar until it ends."""
    import time

    from tqdm import tqdm

    runtime = get_runtime()
    info = checked(lambda: _run_public(runtime, run_id))
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

    runtime = get_runtime()
    run = checked(lambda: cancel_run(engine=runtime.engine, run_id=run_id))
    typer.echo(f"{run.id}: {run.status}")


@runs_app.command("retry")
def runs_retry(run_id: str) -> None:
    """Queue a failed or cancelled run again; it resumes from its last checkpoint."""
    from appliance.jobs.runs import retry_run

    runtime = get_runtime()
    run = checked(lambda: retry_run(engine=runtime.engine, run_id=run_id))
    typer.echo(f"{run.id}: {run.status}")


@runs_app.command("rm")
def runs_rm(run_id: str) -> None:
    """Delete a finished run and its files."""
    from appliance.jobs.runs import delete_run

    runtime = get_runtime()
    checked(lambda: delete_run(engine=runtime.engine, paths=runtime.paths, run_id=run_id))
    typer.echo(f"deleted {run_id}")


@runs_app.command("logs")
def runs_logs(run_id: str) -> None:
    """Print the run's training log."""
    runtime = get_runtime()
    checked(lambda: _run_public(runtime, run_id))  # an unknown id is an error, not an empty log
    log = runtime.paths.run(run_id).log
    typer.echo(log.read_text() if log.exists() else "")

