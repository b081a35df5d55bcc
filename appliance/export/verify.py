"""Proof that a GGUF computes what the torch model computes: the same fixed prompts go through both,
and the next-token distributions are compared at every position.

Figures: `top1_agreement` (share of positions whose argmax agrees), `next_token_top1` (the same,
at the last position of each prompt only: the token a kiosk would get first), `mean_kl` and
`max_kl` (KL(torch || gguf) in nats). An F16/BF16/F32 export must agree on every next token and
stay under F16_MAX_MEAN_KL; quantized ones record their figures (a 4-bit type of a 135M model
legitimately disagrees on many tokens) and the user decides.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from appliance.models.chat import ChatTokenizer, TemplateError

PROMPTS: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a short poem about the sea."}],
    [{"role": "system", "content": "You answer in one sentence."},
     {"role": "user", "content": "How do I reset the conveyor belt after an emergency stop?"}],
    [{"role": "user", "content": "List three fruits."},
     {"role": "assistant", "content": "Apples, bananas and cherries."},
     {"role": "user", "content": "Which of them is yellow?"}],
    [{"role": "user", "content": "Translate 'good morning' into German and Spanish."}],
]

EXACT_TYPES = {"f32", "f16", "bf16"}
F16_MAX_MEAN_KL = 0.01


def prompt_tokens(hf_dir: Path) -> list[list[int]]:
    """Token ids of the PROMPTS the model's template can render (Gemma 2's refuses a system message);
    TemplateError when it renders none."""
    tok = ChatTokenizer(hf_dir)
    texts = []
    for prompt in PROMPTS:
        with contextlib.suppress(TemplateError):
            texts.append(tok.render(prompt, add_generation_prompt=True))
    if not texts:
        raise TemplateError(f"the chat template of {hf_dir} renders none of the verification prompts")
    return [e.ids for e in tok.tokenizer.encode_batch(texts, add_special_tokens=False)]


def torch_logits(model: Any, token_lists: list[list[int]]) -> list[np.ndarray]:
    import torch

    out = []
    with torch.inference_mode():
        for ids in token_lists:
            logits = model(input_ids=torch.tensor([ids])).logits[0]
            out.append(logits.float().numpy())
    return out


def gguf_logits(gguf_path: Path, token_lists: list[list[int]], lora_path: Path | None = None) -> list[np.ndarray]:
    from llama_cpp import Llama

    n_ctx = max(len(t) for t in token_lists) + 8
    llm = Llama(model_path=str(gguf_path), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, verbose=False,
                n_threads=os.cpu_count() or 1, lora_path=str(lora_path) if lora_path else None)
    try:
        out = []
        for ids in token_lists:
            llm.reset()
            llm.eval(ids)
            out.append(np.array(llm.scores[: len(ids)], dtype=np.float32))
        return out
    finally:
        llm.close()


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def compare(reference: list[np.ndarray], candidate: list[np.ndarray]) -> dict[str, Any]:
    agree, total, last_agree, kls = 0, 0, 0, []
    for ref, cand in zip(reference, candidate, strict=True):
        if ref.shape != cand.shape:
            raise ValueError(f"logit shapes differ: torch {ref.shape}, gguf {cand.shape}")
        top_ref, top_cand = ref.argmax(-1), cand.argmax(-1)
        agree += int((top_ref == top_cand).sum())
        total += len(top_ref)
        last_agree += int(top_ref[-1] == top_cand[-1])
        lp, lq = _log_softmax(ref), _log_softmax(cand)
        kls.append((np.exp(lp) * (lp - lq)).sum(-1))
    kl = np.concatenate(kls)
    return {
        "prompts": len(reference), "positions": total,
        "top1_agreement": agree / total, "next_token_top1": last_agree / len(reference),
        "mean_kl": float(kl.mean()), "max_kl": float(kl.max()),
    }


def verdict(out_type: str, figures: dict[str, Any]) -> str | None:
    """Why an export fails its verification, or None when it passes."""
    if out_type in EXACT_TYPES:
        if figures["next_token_top1"] < 1.0:
            return (f"the {out_type} GGUF disagrees with torch on the next token of "
                    f"{1 - figures['next_token_top1']:.0%} of the test prompts")
        if figures["mean_kl"] > F16_MAX_MEAN_KL:
            return f"the {out_type} GGUF's distributions differ from torch (mean KL {figures['mean_kl']:.4f})"
    return None  # quantized: the figures are recorded on the artifact for the user to judge
