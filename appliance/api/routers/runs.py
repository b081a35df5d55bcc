from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import PlainTextResponse, StreamingResponse
from pydantic import BaseModel, Field
from sqlmodel import Session

from appliance.api.deps import AdminDep, RuntimeDep, SessionDep
from appliance.api.errors import responses
from appliance.api.schemas import MetricPublic, RunPublic, SamplePublic
from appliance.db.tables import Run
from appliance.jobs import run_progress, runs
from appliance.trainer.config import list_presets

router = APIRouter(prefix="/api/runs", tags=["runs"], dependencies=[AdminDep], responses=responses(401, 422))
presets_router = APIRouter(prefix="/api/presets", tags=["runs"], dependencies=[AdminDep], responses=responses(401, 422))
NOT_FOUND = {404: "No such run"}


class RunCreate(BaseModel):
    dataset_id: str
    base_model_id: str | None = Field(None, description="Default: config.model_name_or_path")
    preset: str | None = Field(None, description="A preset from configs/presets (e.g. lora-cpu); config overrides it")
    config: dict[str, Any] = Field(
        default_factory=dict, description="LLaMA-Factory-style keys; unknown keys are refused"
    )
    name: str | None = Field(None, max_length=200, description="Display name (at most 200 characters)")


@presets_router.get("", summary="Training presets (configs/presets/*.yaml)")
def presets() -> dict[str, dict[str, Any]]:
    return list_presets()


@router.post("", response_model=RunPublic, status_code=status.HTTP_201_CREATED, summary="Queue a training run",
             responses=responses(400, 413, 507, notes={
                 422: "Bad config (names the key), unknown dataset or model, or the pre-flight estimate does not "
                      "fit memory"}))
def create(body: RunCreate, runtime: RuntimeDep) -> RunPublic:
    run = runs.create_run(engine=runtime.engine, paths=runtime.paths, dataset_id=body.dataset_id,
                          base_model_id=body.base_model_id, config=body.config, preset=body.preset, name=body.name,
                          kiosk_min_share=runtime.settings.kiosk_min_share)
    return _public(runtime.engine, run.id)


class EstimatePublic(BaseModel):
    device: str = Field(description="cpu or cuda")
    peak_memory_mb: float
    available_memory_mb: float | None
    steps: int
    tokens: int
    seconds: float = Field(description="Expected wall time while kiosks are idle")
    fits: bool = Field(description="Whether the peak fits the memory available (a run that does not is refused)")
    seconds_under_kiosk_load: float | None
    note: str
    config: dict[str, Any] = Field(description="The full config the run would use")


@router.post("/estimate", response_model=EstimatePublic,
             summary="The pre-flight estimate of a run without queueing it (memory, time, fits)",
             responses=responses(400, 413, notes={422: "Bad config (names the key), unknown dataset or model"}))
def estimate(body: RunCreate, runtime: RuntimeDep) -> EstimatePublic:
    from appliance.trainer import preflight

    cfg, _model, _template, est = runs.plan_run(
        engine=runtime.engine, paths=runtime.paths, dataset_id=body.dataset_id, base_model_id=body.base_model_id,
        config=body.config, preset=body.preset, kiosk_min_share=runtime.settings.kiosk_min_share)
    return EstimatePublic(**preflight.as_dict(est), config=cfg.model_dump(exclude_defaults=False))


def _public(engine: Any, run_id: str) -> RunPublic:
    with Session(engine) as session:
        return public(session, [runs.get_run(session, run_id)])[0]


def public(session: Session, rows: list[Run]) -> list[RunPublic]:
    """Public views of many runs with a fixed number of queries."""
    extra = runs.extras(session, [r.id for r in rows])
    return [RunPublic.of(r, extra[r.id]) for r in rows]


@router.get("", response_model=list[RunPublic], summary="List runs, newest first")
def list_(session: SessionDep) -> list[RunPublic]:
    return public(session, runs.list_runs(session))


@router.get("/{run_id}", response_model=RunPublic, summary="One run", responses=responses(notes=NOT_FOUND))
def show(run_id: str, session: SessionDep) -> RunPublic:
    return public(session, [runs.get_run(session, run_id)])[0]


@router.get("/{run_id}/metrics", response_model=list[MetricPublic], summary="Per-step metrics",
            responses=responses(notes=NOT_FOUND))
def metrics(run_id: str, session: SessionDep) -> list[MetricPublic]:
    runs.get_run(session, run_id)
    return [MetricPublic.of(m) for m in run_progress.metrics(session, run_id)]


@router.get("/{run_id}/samples", response_model=list[SamplePublic],
            summary="Answers to a few held-out questions at each eval step, by step",
            responses=responses(notes=NOT_FOUND))
def samples(run_id: str, session: SessionDep) -> list[SamplePublic]:
    runs.get_run(session, run_id)
    return [SamplePublic.of(s) for s in run_progress.samples(session, run_id)]


@router.get("/{run_id}/events", summary="Live progress (Server-Sent Events: data, metric, status)",
            response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}}, **responses(422, notes=NOT_FOUND)})
async def events(run_id: str, request: Request, runtime: RuntimeDep,
                 poll_s: Annotated[float, Query(ge=0.1, le=10)] = 0.5) -> StreamingResponse:
    with Session(runtime.engine) as session:
        runs.get_run(session, run_id)

    async def stream() -> AsyncIterator[str]:
        last_id, last_status, last_paused, reported = 0, None, 0.0, False
        while not await request.is_disconnected():
            with Session(runtime.engine) as session:
                run = runs.get_run(session, run_id)
                new = run_progress.metrics(session, run_id, after_id=last_id)
                view = public(session, [run])[0]
            if view.data_report is not None and not reported:  # rows cut or dropped at cutoff_len
                reported = True
                yield f"event: data\ndata: {json.dumps(view.data_report)}\n\n"
            for m in sorted(new, key=lambda m: m.id or 0):
                last_id = max(last_id, m.id or 0)
                yield f"event: metric\ndata: {MetricPublic.of(m).model_dump_json()}\n\n"
            if view.status != last_status or new or view.paused_for_serving_s != last_paused:
                last_status, last_paused = view.status, view.paused_for_serving_s
                head = view.model_dump(include={"id", "status", "step", "max_steps", "loss", "error",
                                                  "paused_for_serving_s"})
                yield f"event: status\ndata: {json.dumps(head)}\n\n"
            if view.status in ("succeeded", "failed", "cancelled"):
                return
            await asyncio.sleep(poll_s)

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@router.get("/{run_id}/logs", response_class=PlainTextResponse, summary="The training log (last lines)",
            responses=responses(422, notes=NOT_FOUND))
def logs(run_id: str, runtime: RuntimeDep, session: SessionDep,
         lines: Annotated[int, Query(ge=1, le=10000)] = 200) -> str:
    runs.get_run(session, run_id)
    log = runtime.paths.run(run_id).log
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""


@router.post("/{run_id}/cancel", response_model=RunPublic, summary="Cancel a queued or running run",
             responses=responses(507, notes={**NOT_FOUND, 409: "Already finished"}))
def cancel(run_id: str, runtime: RuntimeDep) -> RunPublic:
    runs.cancel_run(engine=runtime.engine, run_id=run_id)
    return _public(runtime.engine, run_id)


@router.post("/{run_id}/retry", response_model=RunPublic, summary="Queue a failed or cancelled run again "
             "(it resumes from its last checkpoint)",
             responses=responses(507, notes={**NOT_FOUND, 409: "Not failed or cancelled"}))
def retry(run_id: str, runtime: RuntimeDep) -> RunPublic:
    runs.retry_run(engine=runtime.engine, run_id=run_id)
    return _public(runtime.engine, run_id)


@router.delete("/{run_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Delete a finished run and its files",
               responses=responses(507, notes={**NOT_FOUND, 409: "Queued or running"}))
def remove(run_id: str, runtime: RuntimeDep) -> Response:
    runs.delete_run(engine=runtime.engine, paths=runtime.paths, run_id=run_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
