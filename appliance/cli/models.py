"""`appliance models list | import | import-adapter`: base models, and LoRA adapters trained elsewhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from sqlmodel import Session

from appliance.cli.common import checked, fail, get_runtime, import_progress, show
from appliance.errors import ApplianceError

models_app = typer.Typer(help="Base models.", no_args_is_help=True)


@models_app.command("list")
def models_list() -> None:
    """List base models."""
    from appliance.api.schemas import ModelPublic
    from appliance.models.registry import list_models

    runtime = get_runtime()
    with Session(runtime.engine) as session:
        show([ModelPublic.of(m).model_dump(exclude={"files"}) for m in list_models(session)])


@models_app.command("import")
def models_import(
    path: Annotated[Path, typer.Argument(help="A GGUF file or a Hugging Face model folder (safetensors)")],
    name: Annotated[str | None, typer.Option(help="Display name (and id)")] = None,
) -> None:
    """Register a local model (no network needed)."""
    from appliance.api.schemas import ModelPublic
    from appliance.models.registry import import_model

    runtime = get_runtime()
    bar, progress = import_progress(f"importing {path.name}")
    try:
        model = import_model(engine=runtime.engine, paths=runtime.paths, source=path, name=name, progress=progress)
    except ApplianceError as exc:
        raise fail(exc) from exc
    finally:
        bar.close()
    show(ModelPublic.of(model).model_dump(exclude={"files"}))


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

    runtime = get_runtime()
    art = checked(lambda: import_adapter(engine=runtime.engine, paths=runtime.paths, source=path,
                                          base_model_id=base, name=name))
    show(ArtifactPublic.of(art).model_dump())

