"""Evaluating one model on one eval set (plus the retention probe): every question scored, then the
aggregates with their intervals.

Batched: up to `parallel` questions are answered at once on the kiosk server's continuous-batching
engine (batched.py), and each question's reference NLL is computed by the same engine in the same
batch (`BatchedLlama.score`: the prompt's cells reused from the answer just generated, only the
reference decoded). Measured (bench/eval_speed.py, README; bundled model, quiet 2-core machine): 100
questions took 93 s answered one at a time, 53.4 s four at a time, 51.5 s eight at a time.

Resumable: `evaluate` reports each `QuestionResult` through `progress` as soon as it is scored
(what the worker job persists), so results arrive in the order answers end, not in index order,
and takes the results an earlier, killed evaluation had already reported (`done`, in any order):
their questions are not asked again. The order of questions is fixed (eval rows in the order given,
then the probe), so `index` identifies a question across attempts. The next question is handed to
the engine only once `progress` has returned for one that ended: a progress callback that waits
(the worker's ServingGate, while kiosks are answered) lets the questions in flight end and starts
no new one.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
import time
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import closing
from pathlib import Path

from appliance.evaluation import overlap, stats
from appliance.evaluation.batched import BatchedGenerator
from appliance.evaluation.model import DEFAULT_CTX, DEFAULT_MAX_TOKENS, as_messages
from appliance.evaluation.retention import load_probe
from appliance.evaluation.schemas import (
    EvalRow,
    EvaluationResult,
    Interval,
    QuestionResult,
    RowSet,
    engine_id,
    fingerprint,
)

Progress = Callable[[QuestionResult, int, int], None]  # (result, questions scored so far, total)
RETENTION_MAX_TOKENS = 48  # probe answers are a word or a sentence
EVAL_METRICS = ("nll", "rouge_l", "token_f1", "exact_match")
LATENCY_METRICS = ("ttft_s", "tokens_per_s")
DEFAULT_PARALLEL = 4  # questions decoded together; 8 was no faster on 2 cores (README, evaluation speed)


Retention = bool | Sequence[EvalRow]  # True: the shipped probe; False: none; rows: those probe rows


def plan(rows: Sequence[EvalRow], retention: Retention = True) -> list[tuple[RowSet, EvalRow]]:
    """The questions of an evaluation in the order they are asked; a question's index is its place here."""
    probe = list(load_probe() if retention is True else retention or [])
    if len({row.id for row in [*rows, *probe]}) != len(rows) + len(probe):
        raise ValueError("eval rows must have distinct ids (and none of the probe's)")
    return [(RowSet.EVAL, row) for row in rows] + [(RowSet.RETENTION, row) for row in probe]


def score_row(engine: BatchedGenerator, index: int, kind: RowSet, row: EvalRow, max_tokens: int,
              cancelled: threading.Event | None = None) -> QuestionResult:
    """Ask one question on `engine` and score the answer (see model.py for NLL, overlap.py for the
    rest), the NLL from the engine's logits too. Thread-safe (one call per question in flight)."""
    gen = engine.generate(as_messages(row.messages), max_tokens, cancelled)
    nll, n = engine.reference_nll(gen.prompt, row.reference, cancelled)
    refs = [row.reference, *row.aliases]
    return QuestionResult(
        index=index, id=row.id, set=kind, question=row.question, reference=row.reference, answer=gen.text,
        prompt_tokens=len(gen.prompt), answer_tokens=gen.tokens, finish_reason=gen.finish_reason, nll=nll,
        perplexity=math.exp(nll), nll_tokens=n, rouge_l=overlap.rouge_l(gen.text, row.reference),
        token_f1=overlap.token_f1(gen.text, row.reference), exact_match=overlap.exact_match(gen.text, refs),
        contains=overlap.contains(gen.text, refs), ttft_s=gen.ttft_s, tokens_per_s=gen.tokens_per_s)


def answered(engine: BatchedGenerator, questions: Sequence[tuple[RowSet, EvalRow]],
             todo: Sequence[int], limits: Callable[[RowSet], int],
             parallel: int) -> Generator[QuestionResult, None, None]:
    """The results of questions `todo` (indices into `questions`), as each ends; at most `parallel`
    in flight, the next one started when the consumer asks for the next result. The first error
    (ContextLengthExceeded, ValueError: a question that does not fit) is raised here; the answers
    still in flight are then cancelled and not reported."""
    cancelled = threading.Event()
    upcoming = iter(todo)
    with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="eval-question") as pool:

        def start(n: int) -> set[Future[QuestionResult]]:
            return {pool.submit(score_row, engine, i, *questions[i], limits(questions[i][0]), cancelled)
                    for i in itertools.islice(upcoming, n)}

        running = start(parallel)
        try:
            while running:
                finished, running = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    yield future.result()
                    running |= start(1)
        finally:
            cancelled.set()  # an error, or the consumer stopped: end what is in flight at the next step


def evaluate(model_path: Path, rows: Sequence[EvalRow], *, lora_path: Path | None = None,
             chat_template: str | None = None,
             retention: Retention = True, done: Sequence[QuestionResult] = (), progress: Progress | None = None,
             max_tokens: int = DEFAULT_MAX_TOKENS, retention_max_tokens: int = RETENTION_MAX_TOKENS,
             n_ctx: int = DEFAULT_CTX, threads: int | None = None, gpu_layers: int = 0, model_name: str | None = None,
             resamples: int = stats.RESAMPLES, seed: int = stats.SEED,
             parallel: int = DEFAULT_PARALLEL) -> EvaluationResult:
    """Evaluate the GGUF at `model_path` on `rows`, then on the retention probe (`retention`: True
    the shipped probe, False none, or a list of probe rows).

    `lora_path`: a GGUF LoRA adapter applied on the model (llama.cpp's lora_path, as the inference
    server applies it). `chat_template`: None renders prompts with the GGUF's own template, as kiosks get them.
    `done`: results reported by an earlier attempt of this evaluation; their questions are skipped
    (a result whose id does not match the question at its index raises ValueError: not the same
    eval set). `progress(result, scored, total)` is called on the caller's thread after each
    question, as it ends (not in index order). `parallel`: questions answered at once (>= 1; the
    KV cache holds parallel x n_ctx cells); `threads`: llama.cpp threads, default all cores.
    `ttft_s` / `tokens_per_s` are per request, measured among the questions decoded with it.
    Returns every question's result (done ones included) sorted by index, and the aggregates.
    Raises ValueError for an empty eval set or duplicate ids; ContextLengthExceeded / ValueError
    for a question or reference that does not fit `n_ctx`."""
    if not rows:
        raise ValueError("the eval set has no rows")
    questions = plan(rows, retention)
    results = {r.index: r for r in done}
    for index, result in results.items():
        if index >= len(questions) or questions[index][1].id != result.id:
            raise ValueError(f"result {index} ({result.id!r}) is not a question of this eval set")
    started = time.monotonic()
    todo = [i for i in range(len(questions)) if i not in results]
    if todo:
        parallel = max(1, min(parallel, len(todo)))
        threads = threads or os.cpu_count() or 1
        with BatchedGenerator(model_path, parallel=parallel, n_ctx=n_ctx, threads=threads, gpu_layers=gpu_layers,
                              chat_template=chat_template, lora_path=lora_path) as engine:
            def limit(kind: RowSet) -> int:
                return max_tokens if kind == RowSet.EVAL else retention_max_tokens

            # closing(): a progress callback that raises ends the answers in flight before the engine closes.
            with closing(answered(engine, questions, todo, limit, parallel)) as scored:
                for result in scored:
                    results[result.index] = result
                    if progress is not None:
                        progress(result, len(results), len(questions))
    ordered = [results[i] for i in sorted(results)]
    return EvaluationResult(model=model_name or model_path.name, eval_set=fingerprint(list(rows)), engine=engine_id(),
                            questions=ordered,
                            metrics=summarize(ordered, resamples=resamples, seed=seed),
                            seconds=time.monotonic() - started)


def metric_values(questions: Sequence[QuestionResult], metric: str) -> list[float]:
    """Per-question values of `metric`, from the rows it is defined on: eval rows for nll, rouge_l,
    token_f1, exact_match; probe rows for retention ('contains'); all rows for the latencies (a
    question with fewer than 2 generated tokens has no tokens_per_s and is left out)."""
    if metric in EVAL_METRICS:
        return [getattr(q, metric) for q in questions if q.set == RowSet.EVAL]
    if metric == "retention":
        return [q.contains for q in questions if q.set == RowSet.RETENTION]
    if metric in LATENCY_METRICS:
        return [v for q in questions if (v := getattr(q, metric)) is not None]
    raise ValueError(f"unknown metric {metric!r}")


def summarize(questions: Sequence[QuestionResult], *, resamples: int = stats.RESAMPLES,
              seed: int = stats.SEED) -> dict[str, Interval]:
    """Mean and percentile-bootstrap 95% interval of every metric that has rows. Perplexity is
    exp(mean NLL) with exp() of NLL's interval (exp is monotone, so the percentiles carry over):
    the perplexity of the average question, not the average of per-question perplexities, which
    a single badly predicted reference would dominate."""
    out: dict[str, Interval] = {}
    for metric in (*EVAL_METRICS, "retention", *LATENCY_METRICS):
        values = metric_values(questions, metric)
        if values:
            mean, low, high = stats.interval(values, resamples=resamples, seed=seed)
            out[metric] = Interval(mean=mean, low=low, high=high, n=len(values))
    if "nll" in out:
        nll = out["nll"]
        out["perplexity"] = Interval(mean=math.exp(nll.mean), low=math.exp(nll.low), high=math.exp(nll.high), n=nll.n)
    return out
