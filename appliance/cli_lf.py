"""`appliance datasets import-lf DIR`: a LLaMA-Factory data folder, imported on the data directory
directly (with or without the server up). Its own module: cli.py is long enough."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from sqlmodel import Session


def import_lf(
    folder: Annotated[Path, typer.Argument(help="Folder holding dataset_info.json (e.g. LLaMA-Factory/data)",
                                           exists=True, file_okay=False)],
    name: Annotated[list[str] | None, typer.Option(
        help="Entry of dataset_info.json to import (repeat, or separate with commas); default: all")] = None,
    model: Annotated[str | None, typer.Option(help="Base model id whose tokenizer counts tokens")] = None,
    cutoff_len: Annotated[int | None, typer.Option(help="Token cutoff for the over-length count")] = None,
) -> None:
    """Import LLaMA-Factory datasets (dataset_info.json): one dataset per entry, all or nothing."""
    from appliance.api.schemas import DatasetPublic, LfImportedPublic
    from appliance.cli import _checked, _print, _runtime
    from appliance.datasets.lf_import import import_folder
    from appliance.datasets.store import token_stats_of

    runtime = _runtime()
    imported = _checked(lambda: import_folder(
        engine=runtime.engine, paths=runtime.paths, settings=runtime.settings, folder=folder, names=name,
        base_model_id=model, cutoff_len=cutoff_len,
    ))
    with Session(runtime.engine) as session:
        _print([LfImportedPublic(lf_name=i.lf_name, created=i.created,
                                 dataset=DatasetPublic.of(i.dataset, token_stats_of(session, i.dataset.id))
                                 ).model_dump(mode="json") for i in imported])
