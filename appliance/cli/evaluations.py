"""`appliance eval`, `appliance compare`, `appliance evaluations list|show|questions|rm`: evaluations
queued on the data directory (the worker runs them; `appliance up` starts one) and compared."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from sqlmodel import Session

from appliance.cli.common import checked, fail, get_runtime, show

evaluations_app = typer.Typer(help="Evaluations of models on eval sets.", no_args_is_help=True)
SHOWN = ("nll", "perplexity", "rouge_l", "token_f1", "exact_match", "retention", "ttft_s", "tokens_per_s")


def _public(runtime: Any, evaluation_id: str) -> dict[str, Any]:
    from appliance.api.routers.evaluations import EvaluationPublic
    from appliance.jobs.evaluations import get_evaluation

    with Session(runtime.engine) as session:
        return EvaluationPublic.of(get_evaluation(session, evaluation_id)).model_dump(mode="json")


def _table(info: dict[str, Any]) -> None:
    for metric in SHOWN:
        if metric in info["intervals"]:
            i = info["intervals"][metric]
            typer.echo(f"  {metric:<13} {i['mean']:9.4f}   95% [{i['low']:.4f}, {i['high']:.4f}]  n={i['n']:.0f}")


def evaluate(
    artifact: Annotated[str | None, typer.Argument(help="A ready GGUF artifact's id")] = None,
    base: Annotated[str | None, typer.Option(help="Evaluate a base model's own GGUF instead")] = None,
    dataset: Annotated[str | None, typer.Option(help="The eval set (default: the newest dataset added with "
                                                "--purpose eval)")] = None,
    wait: Annotated[bool, typer.Option(help="Follow it with a progress bar until it ends")] = True,
) -> None:
    """Evaluate a model on an eval set with the engine and chat template kiosks get: each question's
    answer, reference likelihood, ROUGE-L, token F1, exact match; retention on the shipped probe;
    latency. The worker runs it (`appliance up`); an evaluation already made is reused."""
    from tqdm import tqdm

    from appliance.errors import NotFoundError
    from appliance.jobs import evaluations, gate

    runtime = get_runtime()
    if dataset is None:
        with Session(runtime.engine) as session:
            found = gate.site_eval_set(session)
        if found is None:
            raise fail(NotFoundError("no eval set: add one with `appliance datasets add FILE --purpose eval`, "
                                      "or name a dataset with --dataset"))
        dataset = found.id
    ev, created = checked(lambda: evaluations.request_evaluation(
        engine=runtime.engine, paths=runtime.paths, dataset_id=str(dataset), artifact_id=artifact,
        base_model_id=base))
    if not created:
        typer.echo(f"reusing {ev.id} ({ev.status})", err=True)
    info = _public(runtime, ev.id)
    if wait and info["status"] in ("queued", "running"):
        bar = tqdm(total=info["questions_total"] or 1, desc=f"evaluating {info['model']}", unit="question")
        while info["status"] in ("queued", "running"):
            time.sleep(0.5)
            info = _public(runtime, ev.id)
            bar.total = info["questions_total"] or bar.total
            bar.n = info["questions_done"]
            bar.refresh()
        bar.close()
    show({k: v for k, v in info.items() if k != "intervals"})
    _table(info)
    if info["status"] == "failed":
        raise typer.Exit(1)


def compare(
    baseline: Annotated[str, typer.Argument(help="Evaluation id of the model to beat")],
    candidate: Annotated[str, typer.Argument(help="Evaluation id of the new model")],
    csv: Annotated[Path | None, typer.Option(help="Also write the per-question rows to this CSV file")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the whole comparison as JSON")] = None,
) -> None:
    """Two evaluations of the same eval set side by side: per metric the change with its 95% interval and
    a verdict (better / no worse / worse); the questions whose answers changed most."""
    from appliance.errors import ConflictError
    from appliance.evaluation.compare import compare as run_compare
    from appliance.evaluation.export import comparison_csv, comparison_json, evaluation_from_json
    from appliance.jobs import evaluations

    runtime = get_runtime()

    def load(evaluation_id: str) -> Any:
        with Session(runtime.engine) as session:
            path = evaluations.result_file(runtime.paths, evaluations.get_evaluation(session, evaluation_id))
        return evaluation_from_json(path.read_bytes())

    def both() -> Any:
        try:
            return run_compare(load(baseline), load(candidate), margins=runtime.settings.gate_margins)
        except ValueError as exc:
            raise ConflictError(f"cannot compare {baseline} and {candidate}: {exc}") from exc

    comparison = checked(both)
    typer.echo(f"{comparison.baseline}  ->  {comparison.candidate}")
    for m in comparison.metrics:
        typer.echo(f"  {m.metric:<13} {m.baseline:9.4f} -> {m.candidate:9.4f}  change {m.diff:+.4f} "
                   f"[{m.low:+.4f}, {m.high:+.4f}]  {m.verdict}")
    for q in comparison.questions[:5]:
        typer.echo(f"\n  {q.question}\n    reference: {q.reference}\n    {comparison.baseline}: "
                   f"{q.baseline_answer}\n    {comparison.candidate}: {q.candidate_answer}")
    if csv is not None:
        csv.write_text(comparison_csv(comparison))
    if json_out is not None:
        json_out.write_text(comparison_json(comparison))


@evaluations_app.command("list")
def evaluations_list() -> None:
    """Evaluations, newest first."""
    from appliance.jobs.evaluations import list_evaluations, metrics

    runtime = get_runtime()
    with Session(runtime.engine) as session:
        listed = list_evaluations(session)
        for e in listed:
            m = metrics(e)
            summary = "  ".join(f"{k} {m[k]['mean']:.3f}" for k in ("nll", "rouge_l", "retention") if k in m)
            typer.echo(f"{e.id}  {e.status:<9} {e.model_name:<40} {e.dataset_id}  {summary or e.error or ''}")
    if not listed:
        typer.echo("no evaluations yet (appliance eval ARTIFACT, with an eval set: appliance datasets add FILE "
                   "--purpose eval)", err=True)


@evaluations_app.command("show")
def evaluations_show(evaluation_id: str) -> None:
    """One evaluation: status and metrics with their intervals."""

    runtime = get_runtime()
    info = checked(lambda: _public(runtime, evaluation_id))
    show({k: v for k, v in info.items() if k != "intervals"})
    _table(info)


@evaluations_app.command("questions")
def evaluations_questions(
    evaluation_id: str,
    csv: Annotated[Path | None, typer.Option(help="Write them as CSV to this file instead")] = None,
) -> None:
    """Every question of a succeeded evaluation: answer, reference, scores."""
    from appliance.evaluation.export import evaluation_csv, evaluation_from_json
    from appliance.jobs import evaluations

    runtime = get_runtime()

    def load() -> Any:
        with Session(runtime.engine) as session:
            path = evaluations.result_file(runtime.paths, evaluations.get_evaluation(session, evaluation_id))
        return evaluation_from_json(path.read_bytes())

    result = checked(load)
    if csv is not None:
        csv.write_text(evaluation_csv(result))
        typer.echo(f"{len(result.questions)} questions written to {csv}", err=True)
        return
    for q in result.questions:
        typer.echo(f"[{q.set}] {q.question}\n  reference: {q.reference}\n  answer:    {q.answer}\n  "
                   f"rouge_l {q.rouge_l:.3f}  nll {q.nll:.3f}  exact {q.exact_match:.0f}")


@evaluations_app.command("rm")
def evaluations_rm(evaluation_id: str) -> None:
    """Delete an evaluation and its files."""
    from appliance.jobs.evaluations import delete_evaluation

    runtime = get_runtime()
    checked(lambda: delete_evaluation(engine=runtime.engine, paths=runtime.paths, evaluation_id=evaluation_id))
    typer.echo(f"deleted {evaluation_id}")


@evaluations_app.command("cancel")
def evaluations_cancel(evaluation_id: str) -> None:
    """Stop a queued or running evaluation (it ends failed, "cancelled by ..."; a deployment waiting on it
    at the gate is refused)."""
    import getpass

    from appliance.jobs.evaluations import cancel_evaluation

    runtime = get_runtime()
    ev = checked(lambda: cancel_evaluation(engine=runtime.engine, evaluation_id=evaluation_id,
                                           who=f"{getpass.getuser()} (CLI)"))
    typer.echo(f"{ev.id}: {ev.status} ({ev.error})")
