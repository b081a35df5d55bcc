"""The retention probe: 50 short general-knowledge questions (25 English, 25 Chinese), written for
the appliance, each with one unambiguous short answer and a few accepted spellings ('7'/'seven',
'2'/'二'/'两'). A fine-tune that has forgotten how to answer ordinary questions scores lower on it
than the base model did.

Scoring: a question is answered when a normalized accepted answer occurs as a contiguous run of
tokens in the normalized generated answer (overlap.contains: 'Paris' in 'The capital of France is
Paris.'; Chinese character by character). Containment rather than exact match, because a chat model
answers in a sentence. The retention metric is the fraction answered, with its bootstrap interval.
Answers avoid words normalization drops (the articles a/an/the), which could never match.

The file ships inside the package (`probes/retention.jsonl`, package-data in pyproject.toml).
"""

from __future__ import annotations

import json
from importlib import resources

from appliance.evaluation.schemas import EvalRow, Message

PROBE_FILE = "retention.jsonl"
ID_PREFIX = "retention:"


def load_probe(langs: tuple[str, ...] | None = None) -> list[EvalRow]:
    """The probe's questions as eval rows (ids 'retention:en-01', ...), optionally only `langs`."""
    text = resources.files("appliance.evaluation").joinpath("probes", PROBE_FILE).read_text(encoding="utf-8")
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        item = json.loads(line)
        if langs is not None and item["lang"] not in langs:
            continue
        rows.append(EvalRow(id=ID_PREFIX + item["id"], messages=[Message(role="user", content=item["question"])],
                            reference=item["answer"], aliases=item.get("aliases", []), lang=item["lang"]))
    return rows
