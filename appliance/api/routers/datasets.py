from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Query, Response, UploadFile, status
from fastapi.responses import FileResponse
from sqlalchemy.engine import Engine
from sqlmodel import Session

from appliance.api.deps import AdminDep, RuntimeDep, SessionDep
from appliance.api.errors import responses
from appliance.api.schemas import DatasetPreview, DatasetPublic, LfImportedPublic
from appliance.datasets import store
from appliance.datasets.intake import add_dataset
from appliance.datasets.lf_import import import_archive, split_names

router = APIRouter(prefix="/api/datasets", tags=["datasets"], dependencies=[AdminDep], responses=responses(401, 422))
NOT_FOUND = {404: "No such dataset"}


@router.post(
    "",
    response_model=DatasetPublic,
    status_code=status.HTTP_201_CREATED,
    summary="Upload a dataset (JSON, JSONL, CSV or Parquet; alpaca, sharegpt or messages rows)",
    responses={
        200: {"model": DatasetPublic, "description": "The same content was already uploaded: that dataset"},
        **responses(400, 413, 507, notes={
            404: "No such base model (base_model_id)",
            422: "Invalid file: `detail`, plus `errors` with line, field and message of the first 20"}),
    },
)
def upload(
    runtime: RuntimeDep,
    response: Response,
    file: Annotated[UploadFile, File(description="The dataset file")],
    name: Annotated[str | None, Form(description="Display name (default: the file's name)")] = None,
    format: Annotated[
        Literal["alpaca", "sharegpt", "messages"] | None, Form(description="Row shape; detected when omitted")
    ] = None,
    base_model_id: Annotated[
        str | None, Form(description="Model whose tokenizer and chat template measure token counts")
    ] = None,
    cutoff_len: Annotated[int | None, Form(gt=0, description="Token cutoff for the over-length count")] = None,
    purpose: Annotated[
        Literal["train", "eval"], Form(description="eval: golden questions with reference answers, the set "
                                       "evaluations score on and the deployment gate compares on")
    ] = "train",
) -> DatasetPublic:
    dataset, created = add_dataset(
        engine=runtime.engine, paths=runtime.paths, settings=runtime.settings, stream=file.file,
        filename=file.filename or "upload", name=name, fmt=format, base_model_id=base_model_id,
        cutoff_len=cutoff_len, purpose=purpose,
    )
    if not created:
        response.status_code = status.HTTP_200_OK
    return _public(runtime.engine, dataset.id)


@router.post(
    "/import-lf",
    response_model=list[LfImportedPublic],
    status_code=status.HTTP_201_CREATED,
    summary="Import a LLaMA-Factory data folder (dataset_info.json and its files) uploaded as a zip or tar",
    responses={
        200: {"model": list[LfImportedPublic], "description": "Every entry's content was already a dataset"},
        **responses(400, 413, 507, notes={
            404: "No such base model (base_model_id)",
            422: "Not an archive, an unsafe member, a refused dataset_info.json key (field `<dataset>.<key>`) or "
                 "a bad row (`file`, line and field); nothing is recorded"}),
    },
)
def import_lf(
    runtime: RuntimeDep,
    response: Response,
    file: Annotated[UploadFile, File(description="The folder as .zip, .tar or .tar.gz, dataset_info.json at its top "
                                                 "or in its one top folder")],
    names: Annotated[list[str] | None, Form(description="Entries to import (repeat the field, or separate with "
                                                        "commas); default: all")] = None,
    base_model_id: Annotated[
        str | None, Form(description="Model whose tokenizer and chat template measure token counts")
    ] = None,
    cutoff_len: Annotated[int | None, Form(gt=0, description="Token cutoff for the over-length count")] = None,
) -> list[LfImportedPublic]:
    imported = import_archive(
        engine=runtime.engine, paths=runtime.paths, settings=runtime.settings, stream=file.file,
        filename=file.filename or "upload", names=split_names(names), base_model_id=base_model_id,
        cutoff_len=cutoff_len,
    )
    if not any(i.created for i in imported):
        response.status_code = status.HTTP_200_OK
    return [LfImportedPublic(lf_name=i.lf_name, created=i.created, dataset=_public(runtime.engine, i.dataset.id))
            for i in imported]


def _public(engine: Engine, dataset_id: str) -> DatasetPublic:
    with Session(engine) as session:
        dataset = store.get_dataset(session, dataset_id)
        return DatasetPublic.of(dataset, store.token_stats_of(session, dataset_id))


@router.get("", response_model=list[DatasetPublic], summary="List datasets, newest first")
def list_(session: SessionDep) -> list[DatasetPublic]:
    # One session is one read transaction: the list and the stats come from the same snapshot, so a
    # dataset deleted meanwhile is simply not listed (reading each one again answered 404 in a race).
    stats = store.token_stats_by_dataset(session)
    return [DatasetPublic.of(d, stats.get(d.id, [])) for d in store.list_datasets(session)]


@router.get("/{dataset_id}", response_model=DatasetPublic, summary="One dataset with its stats",
            responses=responses(notes=NOT_FOUND))
def show(dataset_id: str, runtime: RuntimeDep) -> DatasetPublic:
    return _public(runtime.engine, dataset_id)


@router.get(
    "/{dataset_id}/stats",
    response_model=DatasetPublic,
    summary="Token stats for a base model and cutoff (measured on first request, then recorded)",
    responses=responses(422, 507, notes={404: "No such dataset or base model"}),
)
def stats(
    dataset_id: str,
    runtime: RuntimeDep,
    base_model_id: Annotated[str | None, Query(description="Default: the bundled model")] = None,
    cutoff_len: Annotated[int | None, Query(gt=0)] = None,
) -> DatasetPublic:
    store.stats_for(
        engine=runtime.engine, paths=runtime.paths, dataset_id=dataset_id, base_model_id=base_model_id,
        cutoff_len=cutoff_len or runtime.settings.default_cutoff_len,
    )
    return _public(runtime.engine, dataset_id)


@router.get("/{dataset_id}/preview", response_model=DatasetPreview, summary="The first N rows",
            responses=responses(422, notes=NOT_FOUND))
def preview(
    dataset_id: str, runtime: RuntimeDep, session: SessionDep, n: Annotated[int, Query(ge=1, le=100)] = 5
) -> DatasetPreview:
    dataset = store.get_dataset(session, dataset_id)
    return DatasetPreview(id=dataset.id, rows=store.read_rows(runtime.paths, dataset, n))


@router.get(
    "/{dataset_id}/download",
    summary="The normalized JSONL",
    response_class=FileResponse,
    responses={200: {"content": {"application/jsonl": {}}}, **responses(notes=NOT_FOUND)},
)
def download(dataset_id: str, runtime: RuntimeDep, session: SessionDep) -> FileResponse:
    dataset = store.get_dataset(session, dataset_id)
    stem = dataset.name.rsplit(".", 1)[0] if "." in dataset.name else dataset.name
    return FileResponse(
        runtime.paths.resolve(dataset.path), media_type="application/jsonl", filename=f"{stem}.jsonl"
    )


@router.delete(
    "/{dataset_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a dataset that no run uses",
    responses=responses(507, notes={**NOT_FOUND, 409: "A run uses the dataset"}),
)
def delete(dataset_id: str, runtime: RuntimeDep) -> Response:
    store.delete_dataset(engine=runtime.engine, paths=runtime.paths, dataset_id=dataset_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
