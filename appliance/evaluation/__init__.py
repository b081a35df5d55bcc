"""Evaluation: a model's GGUF on an eval set, through the same llama-cpp-python engine and chat
template the kiosks get, greedy; per question the answer, the reference and scores (reference NLL,
ROUGE-L, token F1, exact match, retention probe, latency); per evaluation the means with bootstrap
95% intervals; two evaluations compared with a verdict per metric.

Modules: model (loading, generation, NLL), overlap (ROUGE-L, F1, EM), stats (bootstrap), run
(evaluate, resume), retention (the probe), compare (verdicts), export (JSON/CSV), schemas.
Importing this package does not load llama_cpp; `evaluate` does, when it opens the model.
"""

from appliance.evaluation.compare import DEFAULT_MARGINS, GATE_METRICS, compare, verdict
from appliance.evaluation.export import (
    comparison_csv,
    comparison_from_json,
    comparison_json,
    comparison_metrics_csv,
    evaluation_csv,
    evaluation_from_json,
    evaluation_json,
    questions_from_csv,
)
from appliance.evaluation.retention import load_probe
from appliance.evaluation.run import evaluate, plan, summarize
from appliance.evaluation.schemas import (
    Comparison,
    EvalRow,
    EvaluationResult,
    Interval,
    Message,
    MetricDiff,
    QuestionDiff,
    QuestionResult,
    RowSet,
    fingerprint,
)

__all__ = [
    "DEFAULT_MARGINS", "GATE_METRICS", "Comparison", "EvalRow", "EvaluationResult", "Interval", "Message",
    "MetricDiff", "QuestionDiff", "QuestionResult", "RowSet", "compare", "comparison_csv", "comparison_from_json",
    "comparison_json", "comparison_metrics_csv", "evaluate", "evaluation_csv", "evaluation_from_json",
    "evaluation_json", "fingerprint", "load_probe", "plan", "questions_from_csv", "summarize", "verdict",
]
