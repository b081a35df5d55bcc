"""What the console shows of a dataset beyond its record: the token-length histogram against the
cutoff, and marking it as the eval set (or back)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from sqlmodel import Session

from appliance.api.deps import AdminDep, RuntimeDep
from appliance.api.errors import responses
from appliance.api.schemas import DatasetPublic
from appliance.datasets import store
from appliance.datasets.stats import chat_tokenizer, pick_model
from appliance.db import events
from appliance.db.engine import write_session
from appliance.errors import NotFoundError

router = APIRouter(prefix="/api/datasets", tags=["datasets"], dependencies=[AdminDep], responses=responses(401, 422))


class Bin(BaseModel):
    low: int = Field(description="Fewest tokens of the bin (inclusive)")
    high: int = Field(description="Most tokens of the bin (exclusive)")
    rows: int


class Histogram(BaseModel):
    base_model_id: str
    cutoff_len: int
    over_cutoff: int = Field(description="Rows longer than cutoff_len tokens")
    bins: list[Bin]


class DatasetUpdate(BaseModel):
    purpose: Literal["train", "eval"] = Field(description="eval: the set evaluations score on and the gate compares on")


@router.get("/{dataset_id}/histogram", response_model=Histogram,
            summary="Rows by token length (the base model's tokenizer and chat template), against the cutoff",
            responses=responses(notes={404: "No such dataset or model"}))
def histogram(dataset_id: str, runtime: RuntimeDep,
              cutoff_len: Annotated[int | None, Query(gt=0)] = None,
              base_model_id: Annotated[str | None, Query()] = None,
              bins: Annotated[int, Query(ge=2, le=100)] = 20) -> Histogram:
    cutoff = cutoff_len or runtime.settings.default_cutoff_len
    with Session(runtime.engine) as session:
        dataset = store.get_dataset(session, dataset_id)
        model = pick_model(session, base_model_id)
    if model is None:
        raise NotFoundError("no base model is registered to count tokens with")
    rows = store.read_rows(runtime.paths, dataset)
    counts = chat_tokenizer(runtime.paths, model).count_tokens([r["messages"] for r in rows])
    # The bins span the rows' lengths (not up to a far-away cutoff, which would put every row in one bin).
    top = max([*counts, 1]) + 1
    width = max(1, -(-top // bins))  # ceil: the last bin holds the longest row
    found = [0] * bins
    for n in counts:
        found[min(n // width, bins - 1)] += 1
    return Histogram(base_model_id=model.id, cutoff_len=cutoff, over_cutoff=sum(n > cutoff for n in counts),
                     bins=[Bin(low=i * width, high=(i + 1) * width, rows=c) for i, c in enumerate(found)])


@router.patch("/{dataset_id}", response_model=DatasetPublic, summary="Mark a dataset as the eval set (or train)",
              responses=responses(400, notes={404: "No such dataset"}))
def update(dataset_id: str, body: DatasetUpdate, runtime: RuntimeDep) -> DatasetPublic:
    with write_session(runtime.engine) as session:
        dataset = store.get_dataset(session, dataset_id)
        dataset.purpose = body.purpose
        session.add(dataset)
        events.record(session, kind="dataset.updated", entity_type="dataset", entity_id=dataset_id,
                      message=f"dataset {dataset.name} marked {body.purpose}")
    with Session(runtime.engine) as session:
        return DatasetPublic.of(store.get_dataset(session, dataset_id), store.token_stats_of(session, dataset_id))
