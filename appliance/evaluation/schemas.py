"""What an evaluation reads and writes: eval rows in, one result per question, aggregates, and the
comparison of two evaluations. Pydantic models with no I/O, so the worker can persist a
`QuestionResult` per question as it is scored and the API can return these as they are.

Units: NLL in nats per token (natural log), perplexity = exp(NLL), overlap scores in [0, 1],
time to first token in seconds, decode speed in tokens per second.
"""

from __future__ import annotations

import hashlib
import json
from enum import StrEnum
from functools import cache
from importlib import metadata
from typing import Literal

from pydantic import BaseModel, Field

Role = Literal["system", "user", "assistant"]
Verdict = Literal["better", "no worse", "worse"]


class RowSet(StrEnum):
    EVAL = "eval"  # the site's eval set: scored against its reference answers
    RETENTION = "retention"  # the bundled general-knowledge probe: scored by whether the answer is in it


class Message(BaseModel):
    role: Role
    content: str


class EvalRow(BaseModel):
    """One question: the conversation up to and including the user's question, and the answer a kiosk
    should give. `aliases`: other accepted answers (the retention probe's; they count for exact match
    and containment, not for ROUGE/F1/NLL, which use `reference`)."""

    id: str = Field(description="Stable within the eval set; pairs questions across evaluations")
    messages: list[Message] = Field(min_length=1, description="Ends with the user's question")
    reference: str
    aliases: list[str] = Field(default_factory=list)
    lang: str | None = Field(None, description="'en', 'zh', ... (informational)")

    @classmethod
    def of(cls, id: str, question: str, reference: str, system: str | None = None) -> EvalRow:
        msgs = [Message(role="system", content=system)] if system else []
        return cls(id=id, messages=[*msgs, Message(role="user", content=question)], reference=reference)

    @property
    def question(self) -> str:
        return self.messages[-1].content


# What computes the figures: bump it when the evaluation's engine changes how they come out (2: the
# batched engine, a KV stream per sequence with flash attention; 1 and none: the serial Llama before it).
ENGINE_REVISION = 2


@cache
def engine_id() -> str:
    """The engine that computes an evaluation's figures, e.g. "batched-fa 2, llama-cpp-python 0.3.36".
    Two evaluations are compared, and an evaluation is reused, only when theirs are equal: another
    llama.cpp (an upgrade of the appliance) rounds differently, and a deployment gate comparing a fresh
    evaluation with a stale one would judge the engines, not the models."""
    try:
        version = metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return f"batched-fa {ENGINE_REVISION}, llama-cpp-python {version}"


def fingerprint(rows: list[EvalRow]) -> str:
    """sha256 of the rows' ids, prompts and references: two evaluations are comparable when equal."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row.model_dump(include={"id", "messages", "reference"}), sort_keys=True,
                                 ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()


class QuestionResult(BaseModel):
    """One scored question. `index` is the row's position in the list given to `evaluate` (eval rows
    first, then the retention probe): what a resumed evaluation skips."""

    index: int
    id: str
    set: RowSet
    question: str
    reference: str
    answer: str = Field(description="Greedy generation, as a kiosk would get it")
    prompt_tokens: int
    answer_tokens: int = Field(description="Tokens generated (end-of-generation token excluded)")
    finish_reason: str | None
    nll: float = Field(description="Mean -log p(reference token | everything before), nats/token")
    perplexity: float = Field(description="exp(nll)")
    nll_tokens: int = Field(description="Tokens scored: the reference's and the end-of-turn token")
    rouge_l: float = Field(description="ROUGE-L F1 of answer vs reference, [0, 1]")
    token_f1: float = Field(description="SQuAD token F1, [0, 1]")
    exact_match: float = Field(description="1.0 when normalized answer == a normalized reference")
    contains: float = Field(description="1.0 when a normalized reference occurs in the normalized answer")
    ttft_s: float = Field(description="Seconds from the request to the first generated text")
    tokens_per_s: float | None = Field(description="Decode speed: (tokens - 1) / (last - first token time); "
                                       "None with fewer than 2 tokens")


class Interval(BaseModel):
    """A mean over questions with its percentile-bootstrap 95% interval."""

    mean: float
    low: float
    high: float
    n: int


class EvaluationResult(BaseModel):
    model: str = Field(description="What was evaluated (a file name or an id)")
    eval_set: str = Field(description="fingerprint() of the rows evaluated")
    engine: str | None = Field(None, description="engine_id() of what computed it (None: older than the field)")
    questions: list[QuestionResult]
    metrics: dict[str, Interval] = Field(
        default_factory=dict, description="nll, perplexity, rouge_l, token_f1, exact_match (eval rows), "
        "retention (probe rows), ttft_s, tokens_per_s (all rows); a metric with no rows is absent")
    seconds: float = Field(0.0, description="Wall time of this call of evaluate (not of resumed work)")


class MetricDiff(BaseModel):
    """candidate - baseline for one metric, with its paired-bootstrap 95% interval and the verdict
    (see appliance.evaluation.compare for the rule). `higher_is_better` says which side improves."""

    metric: str
    baseline: float
    candidate: float
    diff: float
    low: float
    high: float
    higher_is_better: bool
    margin: float
    verdict: Verdict
    n: int


class QuestionDiff(BaseModel):
    id: str
    set: RowSet
    question: str
    reference: str
    baseline_answer: str
    candidate_answer: str
    score: str = Field(description="The score `change` is of: rouge_l (eval rows), contains (retention)")
    change: float = Field(description="candidate - baseline of `score`; rows are sorted by |change|")
    nll_change: float


class Comparison(BaseModel):
    baseline: str
    candidate: str
    eval_set: str
    metrics: list[MetricDiff]
    questions: list[QuestionDiff]

    def worse(self, metrics: tuple[str, ...] | None = None) -> list[str]:
        """The metrics (of `metrics`, default all) whose verdict is 'worse': what a gate refuses on."""
        return [m.metric for m in self.metrics if m.verdict == "worse" and (metrics is None or m.metric in metrics)]
