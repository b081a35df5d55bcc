"""Downloads: an evaluation or a comparison as JSON (the whole pydantic model, read back with
`*_from_json`) or as CSV (one row per question; per metric a second CSV for a comparison).

CSV is UTF-8 with a header row, written with the csv module (quotes for commas, newlines and
quotes in answers); floats as Python's repr, None as an empty cell.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from typing import Any

from appliance.evaluation.schemas import Comparison, EvaluationResult, MetricDiff, QuestionDiff, QuestionResult

NULLABLE = frozenset({"tokens_per_s", "finish_reason"})


def evaluation_json(result: EvaluationResult) -> str:
    return result.model_dump_json(indent=2)


def evaluation_from_json(text: str | bytes) -> EvaluationResult:
    return EvaluationResult.model_validate_json(text)


def comparison_json(comparison: Comparison) -> str:
    return comparison.model_dump_json(indent=2)


def comparison_from_json(text: str | bytes) -> Comparison:
    return Comparison.model_validate_json(text)


def _csv(fields: list[str], rows: Iterable[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else str(v) for k, v in row.items()})
    return out.getvalue()


def evaluation_csv(result: EvaluationResult) -> str:
    """One row per question, the columns of QuestionResult in their order."""
    fields = list(QuestionResult.model_fields)
    return _csv(fields, (q.model_dump(mode="json") for q in result.questions))


def comparison_csv(comparison: Comparison) -> str:
    """One row per question (QuestionDiff's columns), largest change first."""
    return _csv(list(QuestionDiff.model_fields), (q.model_dump(mode="json") for q in comparison.questions))


def comparison_metrics_csv(comparison: Comparison) -> str:
    """One row per metric (MetricDiff's columns)."""
    return _csv(list(MetricDiff.model_fields), (m.model_dump(mode="json") for m in comparison.metrics))


def questions_from_csv(text: str) -> list[QuestionResult]:
    """Per-question results read back from `evaluation_csv` (an empty cell of a field that may be
    None is None; an empty answer stays '')."""
    return [QuestionResult.model_validate({k: (None if v == "" and k in NULLABLE else v) for k, v in row.items()})
            for row in csv.DictReader(io.StringIO(text))]
