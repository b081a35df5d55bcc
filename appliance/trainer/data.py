"""Training data: conversations -> token ids with labels on assistant tokens only -> batches.

The batch order is a pure function of (seed, epoch), so a resumed run finds its data position
from the step number alone and sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from appliance.models.chat import ChatTokenizer

IGNORE = -100
GROUP_FACTOR = 50  # length-grouping window, in batches


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]
    row: int = 0  # 1-based, in the dataset's order (trainer/rows.py load_examples); 0: not from a dataset

    @property
    def label_count(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE)


def assistant_spans(tok: ChatTokenizer, messages: list[dict[str, Any]], text: str) -> list[tuple[int, int]]:
    """Character spans of each trained assistant turn (content and end-of-turn marker) in the rendered
    text. A turn stored with `weight: 0` (OpenAI's "context, do not train") stays in the text but gets
    no span, so none of its tokens carries a label."""
    spans: list[tuple[int, int]] = []
    cursor = 0
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix = tok.render(messages[:k], add_generation_prompt=True)
        upto = tok.render(messages[: k + 1])
        span: tuple[int, int] | None = None
        if text.startswith(prefix) and text.startswith(upto):
            span = (len(prefix), len(upto))
        else:  # a template whose prefixes are not stable: find the content itself
            start = text.find(message["content"], cursor)
            if start >= 0:
                span = (start, start + len(message["content"]))
        if span is not None:
            cursor = span[1]
            if message.get("weight", 1) != 0:
                spans.append(span)
    return spans


def encode_full(tok: ChatTokenizer, messages: list[dict[str, Any]]) -> Example:
    """The whole conversation, uncut; fitting it into cutoff_len is trainer/rows.py's job."""
    text = tok.render(messages)
    spans = assistant_spans(tok, messages, text)
    enc = tok.tokenizer.encode(text, add_special_tokens=False)
    labels = [
        tid if any(s <= start < e for s, e in spans) else IGNORE
        for tid, (start, _end) in zip(enc.ids, enc.offsets, strict=True)
    ]
    return Example(list(enc.ids), labels)


def split(examples: list[Example], val_size: float, seed: int) -> tuple[list[Example], list[Example]]:
    if val_size <= 0 or len(examples) < 2:
        return examples, []
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, int(round(len(examples) * val_size)))
    return [examples[i] for i in order[n_val:]], [examples[i] for i in order[:n_val]]


def epoch_batches(examples: list[Example], batch_size: int, seed: int, epoch: int, group: bool) -> list[list[int]]:
    """Example indices of each micro-batch of one epoch. With `group`, batches hold examples of
    similar length (little padding) while the order of batches stays random."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(len(examples), generator=gen).tolist()
    if not group:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    window = batch_size * GROUP_FACTOR
    batches: list[list[int]] = []
    for w in range(0, len(order), window):
        chunk = sorted(order[w : w + window], key=lambda i: len(examples[i].input_ids))
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    shuffle = torch.randperm(len(batches), generator=gen).tolist()
    return [batches[i] for i in shuffle]


class BatchPlan:
    """Maps a global micro-batch number to its examples, across epochs."""

    def __init__(self, examples: list[Example], batch_size: int, seed: int, group: bool) -> None:
        self.examples = examples
        self.batch_size = batch_size
        self.seed = seed
        self.group = group
        self.per_epoch = math.ceil(len(examples) / batch_size)
        self._cache: dict[int, list[list[int]]] = {}

    def micro_batch(self, index: int) -> list[Example]:
        epoch, within = divmod(index, self.per_epoch)
        if epoch not in self._cache:
            self._cache = {epoch: epoch_batches(self.examples, self.batch_size, self.seed, epoch, self.group)}
        return [self.examples[i] for i in self._cache[epoch][within]]


def split_for_memory(batch: list[Example], budget: int | None) -> list[list[Example]]:
    """Consecutive parts of a batch whose padded size (rows x longest) stays within `budget`."""
    if budget is None:
        return [batch]
    parts: list[list[Example]] = []
    current: list[Example] = []
    for example in batch:
        width = max([len(e.input_ids) for e in current] + [len(example.input_ids)])
        if current and width * (len(current) + 1) > budget:
            parts.append(current)
            current = []
        current.append(example)
    parts.append(current)
    return parts


def collate(batch: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, e in enumerate(batch):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}
