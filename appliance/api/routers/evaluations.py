"""Evaluations: a model scored on an eval set by the worker (appliance/jobs/evaluations.py), and two
evaluations of the same eval set compared (appliance/evaluation/compare.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field
from sqlmodel import Session

from appliance.api.deps import AdminDep, RuntimeDep, SessionDep
from appliance.api.errors import responses
from appliance.bootstrap import Runtime
from appliance.db.tables import Evaluation
from appliance.errors import ConflictError
from appliance.evaluation.schemas import Comparison, EvaluationResult
from appliance.jobs import evaluations

router = APIRouter(prefix="/api/evaluations", tags=["evaluations"], dependencies=[AdminDep],
                   responses=responses(401, 422))
NOT_FOUND = {404: "No such evaluation"}


class EvaluationRequest(BaseModel):
    artifact_id: str | None = Field(None, description="A ready GGUF artifact")
    base_model_id: str | None = Field(None, description="Or a base model's own GGUF")
    dataset_id: str = Field(description="The eval set: each row's last assistant message is the reference answer")


class EvaluationPublic(BaseModel):
    id: str
    status: str = Field(description="queued, running, succeeded or failed")
    artifact_id: str | None
    base_model_id: str | None
    dataset_id: str
    model: str = Field(description="The model evaluated (the name kiosks would see)")
    questions_done: int
    questions_total: int | None = Field(description="Eval rows plus the retention probe's questions")
    metrics: dict[str, float] = Field(description="Once succeeded, the mean of each metric: nll (nats per "
                                      "reference token), perplexity, rouge_l, token_f1, exact_match, retention "
                                      "(fractions 0-1), ttft_s, tokens_per_s")
    intervals: dict[str, dict[str, float]] = Field(description="Each metric's bootstrap 95% interval: mean, low, "
                                                   "high, n")
    engine: str | None = Field(description="What computed the figures (llama-cpp-python's version, the "
                               "engine's revision); evaluations are compared and reused only within one engine. "
                               "None: queued or older than this field")
    error: str | None
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, ev: Evaluation) -> EvaluationPublic:
        intervals = evaluations.metrics(ev)
        return cls(id=ev.id, status=ev.status, artifact_id=ev.artifact_id, base_model_id=ev.base_model_id,
                   dataset_id=ev.dataset_id, model=ev.model_name, questions_done=ev.questions_done,
                   questions_total=ev.questions_total, metrics={k: v["mean"] for k, v in intervals.items()},
                   intervals=intervals, engine=ev.engine, error=ev.error, attempts=ev.attempts,
                   created_at=ev.created_at, started_at=ev.started_at, finished_at=ev.finished_at)


def _result(runtime: Runtime, evaluation_id: str) -> Any:
    from appliance.evaluation.export import evaluation_from_json

    with Session(runtime.engine) as session:
        ev = evaluations.get_evaluation(session, evaluation_id)
        path = evaluations.result_file(runtime.paths, ev)
    return evaluation_from_json(path.read_bytes())


@router.post("", response_model=EvaluationPublic, status_code=status.HTTP_202_ACCEPTED,
             summary="Evaluate a model on an eval set (the worker runs it; an existing one is reused)",
             responses=responses(400, 413, notes={404: "No such artifact, base model or dataset"}))
def create(body: EvaluationRequest, runtime: RuntimeDep, response: Response) -> EvaluationPublic:
    ev, created = evaluations.request_evaluation(engine=runtime.engine, paths=runtime.paths,
                                                 dataset_id=body.dataset_id, artifact_id=body.artifact_id,
                                                 base_model_id=body.base_model_id)
    if not created and ev.status == "succeeded":
        response.status_code = status.HTTP_200_OK
    return EvaluationPublic.of(ev)


@router.get("", response_model=list[EvaluationPublic], summary="Evaluations, newest first")
def list_(session: SessionDep, dataset_id: str | None = Query(None), artifact_id: str | None = Query(None),
          base_model_id: str | None = Query(None)) -> list[EvaluationPublic]:
    return [EvaluationPublic.of(e) for e in evaluations.list_evaluations(
        session, dataset_id=dataset_id, artifact_id=artifact_id, base_model_id=base_model_id)]


CSV = {"text/csv": {"schema": {"type": "string"}}}


@router.get("/compare", summary="Two evaluations of the same eval set side by side", response_model=None,
            responses={200: {"model": Comparison, "description": "The comparison (format=json), or CSV",
                             "content": CSV},
                       **responses(notes={**NOT_FOUND, 409: "Not both succeeded, or not of the same eval set"})})
def compare(runtime: RuntimeDep, baseline: str = Query(description="Evaluation id of the model to beat"),
            candidate: str = Query(description="Evaluation id of the new model"),
            format: Literal["json", "csv", "metrics.csv"] = Query("json")) -> Response:
    """Per metric the candidate's change with its paired 95% interval and a verdict (better, no worse,
    worse: see the README); per question both answers next to the reference, the largest changes first.
    `csv`: one row per question; `metrics.csv`: one row per metric."""
    from appliance.evaluation.compare import compare as run_compare
    from appliance.evaluation.export import comparison_csv, comparison_json, comparison_metrics_csv

    try:
        comparison = run_compare(_result(runtime, baseline), _result(runtime, candidate),
                                 margins=runtime.settings.gate_margins)
    except ValueError as exc:
        raise ConflictError(f"cannot compare {baseline} and {candidate}: {exc}") from exc
    if format == "csv":
        return PlainTextResponse(comparison_csv(comparison), media_type="text/csv")
    if format == "metrics.csv":
        return PlainTextResponse(comparison_metrics_csv(comparison), media_type="text/csv")
    return Response(comparison_json(comparison), media_type="application/json")


@router.get("/{evaluation_id}", response_model=EvaluationPublic, summary="One evaluation",
            responses=responses(notes=NOT_FOUND))
def show(evaluation_id: str, session: SessionDep) -> EvaluationPublic:
    return EvaluationPublic.of(evaluations.get_evaluation(session, evaluation_id))


@router.get("/{evaluation_id}/questions", summary="Every question: the answer, the reference and its scores",
            response_model=None,
            responses={200: {"model": EvaluationResult, "description": "The whole result (format=json), or CSV",
                             "content": CSV},
                       **responses(notes={**NOT_FOUND, 409: "Not succeeded yet"})})
def questions(evaluation_id: str, runtime: RuntimeDep, format: Literal["json", "csv"] = Query("json")) -> Response:
    from appliance.evaluation.export import evaluation_csv, evaluation_json

    result = _result(runtime, evaluation_id)
    if format == "csv":
        return PlainTextResponse(evaluation_csv(result), media_type="text/csv")
    return Response(evaluation_json(result), media_type="application/json")


@router.post("/{evaluation_id}/cancel", response_model=EvaluationPublic,
             summary="Stop a queued or running evaluation (it ends failed, 'cancelled by ...')",
             responses=responses(notes={**NOT_FOUND, 409: "Already ended"}))
def cancel(evaluation_id: str, runtime: RuntimeDep, request: Request) -> EvaluationPublic:
    ev = evaluations.cancel_evaluation(engine=runtime.engine, evaluation_id=evaluation_id,
                                       who=f"admin token from {request.client.host if request.client else 'unknown'}")
    return EvaluationPublic.of(ev)


@router.delete("/{evaluation_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Delete an evaluation",
               responses=responses(notes={**NOT_FOUND, 409: "It is running (cancel it first)"}))
def delete(evaluation_id: str, runtime: RuntimeDep) -> Response:
    evaluations.delete_evaluation(engine=runtime.engine, paths=runtime.paths, evaluation_id=evaluation_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
