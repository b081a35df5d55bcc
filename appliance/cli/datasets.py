"""`appliance datasets add | list | show | rm | import-lf`: training and eval sets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from sqlmodel import Session

from appliance.cli.common import checked, fail, get_runtime, show
from appliance.errors import ApplianceError

datasets_app = typer.Typer(help="Training datasets.", no_args_is_help=True)


@datasets_app.command("add")
def datasets_add(
    file: Annotated[Path, typer.Argument(help="JSON, JSONL, CSV or Parquet file", exists=True, dir_okay=False)],
    name: Annotated[str | None, typer.Option(help="Display name")] = None,
    format: Annotated[str | None, typer.Option(help="alpaca, sharegpt or messages (default: detect)")] = None,
    model: Annotated[str | None, typer.Option(help="Base model id whose tokenizer counts tokens")] = None,
    cutoff_len: Annotated[int | None, typer.Option(help="Token cutoff for the over-length count", min=1)] = None,
    purpose: Annotated[str, typer.Option(help="train, or eval: golden questions with reference answers (the "
                                         "set evaluations score on and the deployment gate compares on)")] = "train",
) -> None:
    """Validate and store a dataset."""
    from appliance.api.schemas import DatasetPublic
    from appliance.datasets.intake import add_dataset
    from appliance.datasets.store import token_stats_of

    runtime = get_runtime()
    try:
        with open(file, "rb") as stream:
            dataset, created = add_dataset(
                engine=runtime.engine, paths=runtime.paths, settings=runtime.settings, stream=stream,
                filename=file.name, name=name, fmt=format, base_model_id=model, cutoff_len=cutoff_len,
                purpose=purpose,
            )
    except ApplianceError as exc:
        raise fail(exc) from exc
    if not created:
        kept = "it is now an eval set; " if purpose == "eval" else ""
        typer.echo(f"this content is already stored as {dataset.id} ({dataset.name}, {dataset.purpose}): {kept}its "
                   "name and token counts are kept", err=True)
    with Session(runtime.engine) as session:
        show(DatasetPublic.of(dataset, token_stats_of(session, dataset.id)).model_dump())


@datasets_app.command("list")
def datasets_list() -> None:
    """List datasets, newest first."""
    from appliance.datasets.store import list_datasets

    runtime = get_runtime()
    with Session(runtime.engine) as session:
        for d in list_datasets(session):
            typer.echo(f"{d.id}  {d.rows:>7} rows  {d.format:<9} {d.purpose:<5}  {d.name}")


@datasets_app.command("show")
def datasets_show(dataset_id: str,
                  rows: Annotated[int, typer.Option(help="Also print the first N rows", min=0)] = 0) -> None:
    """Show a dataset's stats (and optionally its first rows)."""
    from appliance.api.schemas import DatasetPublic
    from appliance.datasets import store

    runtime = get_runtime()
    try:
        with Session(runtime.engine) as session:
            dataset = store.get_dataset(session, dataset_id)
            show(DatasetPublic.of(dataset, store.token_stats_of(session, dataset_id)).model_dump())
            for row in store.read_rows(runtime.paths, dataset, rows) if rows else []:
                typer.echo(json.dumps(row, ensure_ascii=False))
    except ApplianceError as exc:
        raise fail(exc) from exc


@datasets_app.command("rm")
def datasets_rm(dataset_id: str) -> None:
    """Delete a dataset that no run uses."""
    from appliance.datasets.store import delete_dataset

    runtime = get_runtime()
    try:
        delete_dataset(engine=runtime.engine, paths=runtime.paths, dataset_id=dataset_id)
    except ApplianceError as exc:
        raise fail(exc) from exc
    typer.echo(f"deleted {dataset_id}")


@datasets_app.command("import-lf")
def import_lf(
    folder: Annotated[Path, typer.Argument(help="Folder holding dataset_info.json (e.g. LLaMA-Factory/data)",
                                           exists=True, file_okay=False)],
    name: Annotated[list[str] | None, typer.Option(
        help="Entry of dataset_info.json to import (repeat, or separate with commas); default: all")] = None,
    model: Annotated[str | None, typer.Option(help="Base model id whose tokenizer counts tokens")] = None,
    cutoff_len: Annotated[int | None, typer.Option(help="Token cutoff for the over-length count", min=1)] = None,
) -> None:
    """Import LLaMA-Factory datasets (dataset_info.json): one dataset per entry, all or nothing."""
    from appliance.api.schemas import DatasetPublic, LfImportedPublic
    from appliance.datasets.lf_import import import_folder
    from appliance.datasets.store import token_stats_of

    runtime = get_runtime()
    imported = checked(lambda: import_folder(
        engine=runtime.engine, paths=runtime.paths, settings=runtime.settings, folder=folder, names=name,
        base_model_id=model, cutoff_len=cutoff_len,
    ))
    with Session(runtime.engine) as session:
        show([LfImportedPublic(lf_name=i.lf_name, created=i.created,
                                 dataset=DatasetPublic.of(i.dataset, token_stats_of(session, i.dataset.id))
                                 ).model_dump(mode="json") for i in imported])
