"""Two evaluations on the same eval set, side by side: per metric the paired difference with its
95% interval and a verdict, per question the two answers next to the reference.

The verdict, per metric, from the improvement u = candidate - baseline (or baseline - candidate
where lower is better: NLL, time to first token), its paired-bootstrap 95% interval [lo, hi], and
the metric's margin m >= 0 (the loss that does not matter):
- "better":   lo > 0. The candidate improves, beyond the resampling noise.
- "worse":    hi < 0 and mean(u) < -m. A loss the interval shows is real (it excludes 0) and whose
              estimated size is larger than the margin.
- "no worse": anything else: a loss no larger than the margin, or no evidence of a loss.
Why not non-inferiority (worse unless lo >= -m): with the tens of questions a site writes, a
retention interval spans +-0.1, and nearly every fine-tune would be refused for noise. Why not
"worse only when hi < -m": a candidate that loses 10 of 50 probe answers (u = -0.2, interval about
[-0.3, -0.1]) is refused by both rules, but one losing 5 (u = -0.1, hi about -0.02) would pass.
Margins are parameters; DEFAULT_MARGINS are in each metric's unit (nats/token, fraction, s, tok/s).
"""

from __future__ import annotations

from collections.abc import Mapping

from appliance.evaluation import stats
from appliance.evaluation.run import EVAL_METRICS, LATENCY_METRICS
from appliance.evaluation.schemas import (
    Comparison,
    EvaluationResult,
    MetricDiff,
    QuestionDiff,
    QuestionResult,
    RowSet,
    Verdict,
)

HIGHER_IS_BETTER = {"nll": False, "rouge_l": True, "token_f1": True, "exact_match": True, "retention": True,
                    "ttft_s": False, "tokens_per_s": True}
DEFAULT_MARGINS = {"nll": 0.05, "rouge_l": 0.02, "token_f1": 0.02, "exact_match": 0.02, "retention": 0.05,
                   "ttft_s": 0.05, "tokens_per_s": 5.0}
# What a deployment gate should refuse on: latency depends on what else the machine does at the time.
GATE_METRICS = ("nll", "rouge_l", "token_f1", "exact_match", "retention")


def verdict(diff: float, low: float, high: float, *, higher_is_better: bool, margin: float) -> Verdict:
    """The rule of the module docstring; `diff`, `low`, `high` are candidate - baseline."""
    if margin < 0:
        raise ValueError("a margin is a tolerated loss, >= 0")
    u, lo, hi = (diff, low, high) if higher_is_better else (-diff, -high, -low)
    if lo > 0:
        return "better"
    if hi < 0 and u < -margin:
        return "worse"
    return "no worse"


def _value(q: QuestionResult, metric: str) -> float | None:
    if metric == "retention":
        return q.contains
    value: float | None = getattr(q, metric)
    return value


def _applies(q: QuestionResult, metric: str) -> bool:
    if metric in EVAL_METRICS:
        return q.set == RowSet.EVAL
    if metric == "retention":
        return q.set == RowSet.RETENTION
    return True


def compare(baseline: EvaluationResult, candidate: EvaluationResult, *,
            margins: Mapping[str, float] | None = None, resamples: int = stats.RESAMPLES,
            seed: int = stats.SEED) -> Comparison:
    """Compare two evaluations of the same eval set by the same engine (ValueError when their `eval_set`
    or `engine` differ: another llama.cpp rounds differently).
    Questions are paired by id; a metric only one side has (e.g. retention, when the other was
    run without the probe) is left out. `margins` override DEFAULT_MARGINS per metric."""
    if baseline.eval_set != candidate.eval_set:
        raise ValueError("the two evaluations are not of the same eval set")
    if baseline.engine != candidate.engine:
        old = "an older one"
        raise ValueError(f"the two evaluations were computed by different engines ({baseline.engine or old}; "
                         f"{candidate.engine or old}): evaluate the older model again to compare them")
    margin_of = {**DEFAULT_MARGINS, **(margins or {})}
    theirs = {q.id: q for q in candidate.questions}
    pairs = [(q, theirs[q.id]) for q in baseline.questions if q.id in theirs]
    diffs = []
    for metric in (*EVAL_METRICS, "retention", *LATENCY_METRICS):
        values = [(a, b) for q, c in pairs if _applies(q, metric)
                  and (a := _value(q, metric)) is not None and (b := _value(c, metric)) is not None]
        if not values:
            continue
        base, cand = [a for a, _ in values], [b for _, b in values]
        diff, low, high = stats.paired_interval(base, cand, resamples=resamples, seed=seed)
        up = HIGHER_IS_BETTER[metric]
        diffs.append(MetricDiff(
            metric=metric, baseline=sum(base) / len(base), candidate=sum(cand) / len(cand), diff=diff, low=low,
            high=high, higher_is_better=up, margin=margin_of[metric],
            verdict=verdict(diff, low, high, higher_is_better=up, margin=margin_of[metric]), n=len(values)))
    return Comparison(baseline=baseline.model, candidate=candidate.model, eval_set=baseline.eval_set, metrics=diffs,
                      questions=question_diffs(pairs))


def question_diffs(pairs: list[tuple[QuestionResult, QuestionResult]]) -> list[QuestionDiff]:
    """Per question, both answers and the change of its main score (ROUGE-L for eval rows, whether
    the answer is in it for probe rows), largest absolute change first (then NLL change, then id)."""
    rows = []
    for a, b in pairs:
        score = "rouge_l" if a.set == RowSet.EVAL else "contains"
        rows.append(QuestionDiff(
            id=a.id, set=a.set, question=a.question, reference=a.reference, baseline_answer=a.answer,
            candidate_answer=b.answer, score=score, change=getattr(b, score) - getattr(a, score),
            nll_change=b.nll - a.nll))
    return sorted(rows, key=lambda r: (-abs(r.change), -abs(r.nll_change), r.id))
