"""Dataset rows -> training examples within `cutoff_len`, and a report naming every row that was cut
or left out, for the run's log, record and events (hiyouga/LlamaFactory#3995: rows past the cutoff
vanished without a word).

A row longer than the cutoff loses its prompt before its answer, as LLaMA-Factory does, so the labels
the row exists for survive: turns after the last trained answer go (they train nothing), then the
earliest exchanges, then the start of the last user message (a pasted log or document keeps its end,
where the question usually is). A row is dropped only when even its answer alone, with an empty
question, does not fit; cutting the answer instead would train a response that never ends.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from appliance.models.chat import ChatTokenizer
from appliance.trainer.data import Example, encode_full

NAMED_ROWS = 200  # rows named in the report (counts are always exact)
CUT_ROUNDS = 8  # re-tokenizing after a cut can shift a boundary by a token or two


@dataclass(frozen=True)
class RowNote:
    row: int  # 1-based, in the dataset's order
    tokens: int  # the whole row, as the chat template renders it
    detail: str
    kept: int | None = None  # tokens kept, for a truncated row


@dataclass
class DataReport:
    cutoff_len: int
    rows: int = 0
    used: int = 0
    truncated_count: int = 0
    dropped_count: int = 0
    truncated: list[RowNote] = field(default_factory=list)
    dropped: list[RowNote] = field(default_factory=list)

    def add(self, kind: str, note: RowNote) -> None:
        if kind == "truncated":
            self.truncated_count += 1
            if len(self.truncated) < NAMED_ROWS:
                self.truncated.append(note)
        else:
            self.dropped_count += 1
            if len(self.dropped) < NAMED_ROWS:
                self.dropped.append(note)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        def rows(notes: list[RowNote], count: int) -> str:
            named = ", ".join(str(n.row) for n in notes[:20])
            return named + (f" and {count - min(len(notes), 20)} more" if count > min(len(notes), 20) else "")

        parts = [f"{self.used} of {self.rows} rows used at cutoff_len {self.cutoff_len}"]
        if self.truncated_count:
            parts.append(f"{self.truncated_count} truncated (row {rows(self.truncated, self.truncated_count)})")
        if self.dropped_count:
            parts.append(f"{self.dropped_count} dropped (row {rows(self.dropped, self.dropped_count)})")
        return "; ".join(parts)


@dataclass(frozen=True)
class Fitted:
    example: Example | None
    note: str | None  # how the row was cut, or why it was dropped; None when it fits as it is
    tokens: int  # the whole row, uncut


def _first_turn(messages: list[dict[str, Any]]) -> int:
    return 1 if messages and messages[0]["role"] == "system" else 0


def _through_last_trained(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    last = max((k for k, m in enumerate(messages) if m["role"] == "assistant" and m.get("weight", 1) != 0),
               default=len(messages) - 1)
    return messages[: last + 1]


def _cut_user_start(tok: ChatTokenizer, messages: list[dict[str, Any]], cutoff_len: int) -> tuple[Example, int] | None:
    """The last user message with its start cut until the row fits: (example, tokens cut), or None."""
    k = max(i for i, m in enumerate(messages) if m["role"] == "user")
    ids = tok.tokenizer.encode(messages[k]["content"], add_special_tokens=False).ids
    drop = 0
    for _ in range(CUT_ROUNDS):
        if drop >= len(ids):
            break
        example = encode_full(tok, _with_user(messages, k, tok.tokenizer.decode(ids[drop:], skip_special_tokens=False)))
        over = len(example.input_ids) - cutoff_len
        if over <= 0:
            return example, drop
        drop += over
    example = encode_full(tok, _with_user(messages, k, ""))  # the answer with an empty question
    return (example, len(ids)) if len(example.input_ids) <= cutoff_len else None


def _with_user(messages: list[dict[str, Any]], k: int, content: str) -> list[dict[str, Any]]:
    return [*messages[:k], {**messages[k], "content": content}, *messages[k + 1:]]


def fit(tok: ChatTokenizer, messages: list[dict[str, Any]], cutoff_len: int) -> Fitted:
    """One row as a training example of at most `cutoff_len` tokens, cutting its prompt first."""
    full = encode_full(tok, messages)
    if len(full.input_ids) <= cutoff_len:
        return Fitted(full if full.label_count else None, None if full.label_count else "no trained answer",
                      len(full.input_ids))
    msgs, how = _through_last_trained(messages), []
    if len(msgs) < len(messages):
        how.append(f"{len(messages) - len(msgs)} turn(s) after the last trained answer removed")
    start, removed = _first_turn(msgs), 0
    example = encode_full(tok, msgs)
    while len(example.input_ids) > cutoff_len and len(msgs) - start > 2:
        msgs, removed = [*msgs[:start], *msgs[start + 2:]], removed + 1  # one user/assistant exchange
        example = encode_full(tok, msgs)
    if removed:
        how.append(f"the first {removed} exchange(s) removed")
    if len(example.input_ids) > cutoff_len:
        cut = _cut_user_start(tok, msgs, cutoff_len)
        if cut is None:
            k = max(i for i, m in enumerate(msgs) if m["role"] == "user")
            alone = len(encode_full(tok, _with_user(msgs, k, "")).input_ids)
            return Fitted(None, f"the answer alone takes {alone} tokens with its template, over cutoff_len "
                                f"{cutoff_len}; raise cutoff_len to at least {alone} to train on this row",
                          len(full.input_ids))
        example, dropped_tokens = cut
        how.append(f"the first {dropped_tokens} tokens of the last user message cut")
    if not example.label_count:
        return Fitted(None, "no trained answer left within cutoff_len", len(full.input_ids))
    return Fitted(example, "; ".join(how), len(full.input_ids))


def encode(tok: ChatTokenizer, messages: list[dict[str, Any]], cutoff_len: int) -> Example | None:
    return fit(tok, messages, cutoff_len).example


def load_examples(
    path: Path, tok: ChatTokenizer, cutoff_len: int, max_samples: int | None
) -> tuple[list[Example], DataReport]:
    examples: list[Example] = []
    report = DataReport(cutoff_len)
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if max_samples is not None and i >= max_samples:
                break
            messages = json.loads(line)["messages"]
            fitted = fit(tok, messages, cutoff_len)
            report.rows += 1
            if fitted.example is None:
                report.add("dropped", RowNote(i + 1, fitted.tokens, fitted.note or ""))
                continue
            examples.append(replace(fitted.example, row=i + 1))
            report.used += 1
            if fitted.note:
                report.add("truncated", RowNote(i + 1, fitted.tokens, fitted.note, kept=len(fitted.example.input_ids)))
    return examples, report
