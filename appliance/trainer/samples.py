"""Answers to a few held-out questions at each eval step, so the live page shows how the answers change
as the eval loss falls (issue 13). Kept cheap: at most SAMPLE_QUESTIONS questions, greedy, at most
SAMPLE_TOKENS new tokens each, the kiosks' gate waited on before each question, and all of them within a
time budget (`budget`): a tenth of the training time since the last eval step, at least SAMPLE_MIN_S. An
answer that runs out of time is cut there and the questions after it are skipped at that step, so on a
slow CPU answers are fewer and shorter (the first question is always asked: one forward pass at least).

A question is a held-out row's messages before its last assistant message, rendered with the run's chat
template and a generation prompt (as the evaluation child asks it); the reference is that message.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from appliance.child_protocol import Sample
from appliance.models.chat import ChatTokenizer
from appliance.serving import ServingGate

SAMPLE_QUESTIONS = 3
SAMPLE_TOKENS = 48
SAMPLE_SHARE = 0.1  # of the training time since the last eval step
SAMPLE_MIN_S = 3.0
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")


@dataclass(frozen=True)
class Probe:
    row: int
    prompt_ids: list[int]
    question: str
    reference: str


def probes(dataset_path: Path, held_out: list[int], tok: ChatTokenizer, cutoff_len: int) -> list[Probe]:
    """The first SAMPLE_QUESTIONS held-out rows (1-based, ascending) that have a question and an answer."""
    wanted = set(held_out)
    out: list[Probe] = []
    with open(dataset_path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if len(out) >= SAMPLE_QUESTIONS:
                break
            if i not in wanted:
                continue
            messages: list[dict[str, Any]] = json.loads(line)["messages"]
            last = max((k for k, m in enumerate(messages) if m["role"] == "assistant"), default=0)
            if last == 0:
                continue
            prompt = [{"role": m["role"], "content": m["content"]} for m in messages[:last]]
            question = next((m["content"] for m in reversed(prompt) if m["role"] == "user"), prompt[-1]["content"])
            ids = tok.tokenizer.encode(tok.render(prompt, add_generation_prompt=True), add_special_tokens=False).ids
            out.append(Probe(i, list(ids)[-cutoff_len:], question, messages[last]["content"]))
    return out


def stop_ids(tok: ChatTokenizer) -> list[int]:
    """The end-of-sequence token and the usual end-of-turn markers the tokenizer has."""
    names = [tok.special.get("eos_token"), *END_OF_TURN]
    ids = [tok.tokenizer.token_to_id(n) for n in names if n]
    return list(dict.fromkeys(i for i in ids if i is not None))


def budget(trained_s: float) -> float:
    """Seconds all the questions of one eval step may take, after `trained_s` seconds of training."""
    return max(SAMPLE_MIN_S, SAMPLE_SHARE * trained_s)


def answer(model: Any, tok: ChatTokenizer, questions: list[Probe], device: torch.device, gate: ServingGate,
           stops: list[int], budget_s: float) -> list[Sample]:
    """Greedy answers of `model` (in eval mode: the caller's job) to each question, each within an equal
    share of what is left of `budget_s` (waits for kiosks not counted)."""
    out: list[Sample] = []
    spent = 0.0
    for k, probe in enumerate(questions):
        if k and spent >= budget_s:  # out of time: the first question is always asked, the rest wait
            break
        gate.wait()
        ids = torch.tensor([probe.prompt_ids], dtype=torch.long, device=device)
        share = max(0.05, (budget_s - spent) / (len(questions) - k))
        t0 = time.perf_counter()
        with torch.no_grad():
            generated = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                       max_new_tokens=SAMPLE_TOKENS, do_sample=False, num_beams=1, max_time=share,
                                       use_cache=True,  # the trainer turns it off in the config (no KV cache)
                                       eos_token_id=stops or None, pad_token_id=stops[0] if stops else 0)
        spent += time.perf_counter() - t0
        new = [t for t in generated[0, ids.shape[1]:].tolist() if t not in stops]
        text = tok.tokenizer.decode(new, skip_special_tokens=True).strip()
        out.append(Sample(row=probe.row, question=probe.question, reference=probe.reference, answer=text))
    return out
