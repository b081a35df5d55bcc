"""`appliance export` and `appliance artifacts list | show | download | rm`: GGUF files, adapters, merged models."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from sqlmodel import Session

from appliance.bootstrap import Runtime
from appliance.cli.common import checked, get_runtime, show

artifacts_app = typer.Typer(help="Artifacts: adapters, merged models, GGUF files.", no_args_is_help=True)


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

    runtime = get_runtime()
    kind = "gguf-adapter" if adapter else "gguf"
    out_type = None if adapter and type_ == "q8_0" else type_
    art, created = checked(lambda: request_export(engine=runtime.engine, paths=runtime.paths, run_id=run,
                                                   base_model_id=base, out_type=out_type, kind=kind,
                                                   adapter_id=adapter_id, base_artifact_id=base_artifact))
    typer.echo(f"{'queued' if created else 'already exported or queued'}: {art.id}", err=True)
    info = _watch_artifact(runtime, art.id) if wait else _artifact_public(runtime, art.id)
    show(info)
    if info["status"] == "failed":
        raise typer.Exit(1)


@artifacts_app.command("list")
def artifacts_list() -> None:
    """List artifacts, newest first."""
    from appliance.jobs.exports import list_artifacts

    runtime = get_runtime()
    with Session(runtime.engine) as session:
        for a in list_artifacts(session):
            size = f"{a.size / 1e6:.1f} MB" if a.size else "-"
            source = a.run_id or a.base_model_id
            typer.echo(f"{a.id}  {a.kind:<12} {a.type or '-':<15} {a.status:<8} {size:>10}  {source}")


@artifacts_app.command("show")
def artifacts_show(artifact_id: str) -> None:
    """Show an artifact: files, checksum, verification figures, error."""
    runtime = get_runtime()
    show(checked(lambda: _artifact_public(runtime, artifact_id)))


@artifacts_app.command("download")
def artifacts_download(
    artifact_id: str,
    out: Annotated[str, typer.Option("--out", "-o", help="Where to write it: a folder (made when it ends with / "
                                     "or the artifact is a folder: a LoRA adapter, a merged model), or a file "
                                     "name")] = ".",
) -> None:
    """Copy an artifact out of the data directory: a GGUF (and its Modelfile, into a folder), or a folder
    artifact's files (a LoRA adapter as peft reads it: adapter_config.json, adapter_model.safetensors)."""
    import os
    import shutil

    from appliance.jobs.exports import file_of, folder_of, get_artifact

    runtime = get_runtime()
    with Session(runtime.engine) as session:
        art = checked(lambda: get_artifact(session, artifact_id))
        folder = checked(lambda: folder_of(paths=runtime.paths, art=art))
        src = folder if folder is not None else checked(lambda: file_of(paths=runtime.paths, art=art))
    target = Path(out)
    into_folder = target.is_dir() or out.endswith(("/", os.sep)) or folder is not None
    if into_folder:
        if target.exists() and not target.is_dir():
            raise typer.BadParameter(f"{out} is a file; a {art.kind} is a folder of files: give a folder",
                                     param_hint="--out")
        target.mkdir(parents=True, exist_ok=True)
    if folder is not None:  # the whole folder (what the API sends as one tar): the weights alone are no adapter
        for f in sorted(folder.iterdir()):
            if f.is_file() and not f.is_symlink():
                shutil.copyfile(f, target / f.name)
        typer.echo(str(target))
        return
    dst = target / src.name if into_folder else target
    shutil.copyfile(src, dst)
    modelfile = src.parent / "Modelfile"
    if modelfile.is_file() and into_folder:
        shutil.copyfile(modelfile, target / "Modelfile")
    typer.echo(str(dst))


@artifacts_app.command("rm")
def artifacts_rm(artifact_id: str) -> None:
    """Delete an artifact and its files (not a run's adapter, not a deployed model)."""
    from appliance.jobs.exports import delete_artifact

    runtime = get_runtime()
    checked(lambda: delete_artifact(engine=runtime.engine, paths=runtime.paths, artifact_id=artifact_id))
    typer.echo(f"deleted {artifact_id}")

