"""One request's sequence in a batched llama.cpp context: its sampler chain, its place in the KV
cache, and its text as it grows (UTF-8 assembled across tokens, stop strings held back until they
are known not to start one).

A `Sequence` is created by the request's thread (appliance/inference/batching.py, `BatchedLlama`)
and then touched only by the model's batch thread until it ends; what crosses back is a stream of
events: `("text", str)` per token that adds text (a scored sequence: one `("scored", [nll, ...])`), then
one `("end", finish_reason, completion_tokens)` or `("error", Exception)`, posted by the batch thread
to the sequence's `sink` once every sequence of the step is sampled: `Collected` keeps them for the
thread that waits for the whole answer; a kiosk's streamed request has them posted to the event
loop (appliance/inference/streams.py).

The sampler chain is built in llama-cpp-python's order (`Llama._init_sampler`), so a request
samples with the chain the serial server uses for the same parameters (the text can still differ: the
batched context decodes with flash attention, which rounds differently): logit bias, penalties over the
last 64 tokens, grammar, then greedy (temperature 0) or top-k, typical, top-p, min-p, temperature
and a seeded draw.
"""

from __future__ import annotations

import codecs
import ctypes
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import llama_cpp
import numpy as np

PENALTY_LAST_N = 64  # llama-cpp-python's last_n_tokens_size


@dataclass
class Sampling:
    """llama-cpp-python's create_completion sampling keywords, with its defaults."""

    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    logit_bias: dict[int, float] | None = None
    grammar: str | None = None  # GBNF text, root rule "root"

    def chain(self, model: Any) -> Any:
        """A new llama_sampler chain (owned by the caller: free with llama_sampler_free).
        `model` is llama-cpp-python's LlamaModel. Raises ValueError for a grammar llama.cpp refuses."""
        vocab = model.vocab
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        add = llama_cpp.llama_sampler_chain_add
        if self.logit_bias:
            biases = (llama_cpp.llama_logit_bias * len(self.logit_bias))(
                *(llama_cpp.llama_logit_bias(token, bias) for token, bias in self.logit_bias.items()))
            add(chain, llama_cpp.llama_sampler_init_logit_bias(model.n_vocab(), len(self.logit_bias), biases))
        prune = self._prune()
        if prune:
            add(chain, llama_cpp.llama_sampler_init_top_k(prune))
        add(chain, llama_cpp.llama_sampler_init_penalties(model.n_vocab(), PENALTY_LAST_N, self.repeat_penalty,
                                                          self.frequency_penalty, self.presence_penalty))
        if self.grammar is not None:
            grammar = llama_cpp.llama_sampler_init_grammar(vocab, self.grammar.encode(), b"root")
            if not grammar:
                llama_cpp.llama_sampler_free(chain)
                raise ValueError("the response format's grammar could not be parsed by llama.cpp")
            add(chain, grammar)
        if self.temperature == 0:
            add(chain, llama_cpp.llama_sampler_init_greedy())
            return chain
        seed = self.seed if self.seed is not None else random.randint(0, 2**32 - 1)
        add(chain, llama_cpp.llama_sampler_init_top_k(self.top_k))
        add(chain, llama_cpp.llama_sampler_init_typical(self.typical_p, 1))
        add(chain, llama_cpp.llama_sampler_init_top_p(self.top_p, 1))
        add(chain, llama_cpp.llama_sampler_init_min_p(self.min_p, 1))
        add(chain, llama_cpp.llama_sampler_init_temp(self.temperature))
        add(chain, llama_cpp.llama_sampler_init_dist(seed))
        return chain


    def _prune(self) -> int:
        """Candidates that may be kept before the penalties run, 0 for all. The penalties sampler looks
        every token of the vocabulary up in its table of recent tokens (0.17 ms a token for a 49k
        vocabulary, measured here: most of a decode step's sampling with 8 sequences, where
        llama-server's default, repeat_penalty 1.0, skips it). When the penalties can only lower
        logits (repeat_penalty >= 1, frequency and presence penalties >= 0) they touch at most
        PENALTY_LAST_N distinct tokens, so the k highest after them are among the k + PENALTY_LAST_N
        highest before them, and what follows (greedy, or top_k then the rest) sees the same
        candidates. Not with a grammar (it may reject any of them) or without a top_k bound. Exact
        ties between logits may then be ordered differently (greedy took the lowest token id)."""
        active = self.repeat_penalty != 1.0 or self.frequency_penalty != 0.0 or self.presence_penalty != 0.0
        lowers = self.repeat_penalty >= 1.0 and self.frequency_penalty >= 0.0 and self.presence_penalty >= 0.0
        if not active or not lowers or self.grammar is not None:
            return 0
        if self.temperature == 0:
            return 1 + PENALTY_LAST_N
        return self.top_k + PENALTY_LAST_N if self.top_k > 0 else 0


TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])  # llama_token_data, 12 bytes


class GrammarDeadEnd(ValueError):
    """The response format's grammar admits no token here (e.g. it asks for a character no token's
    text holds): the request fails (a 400 before its stream starts) instead of llama.cpp aborting the
    process."""


def sample(chain: Any, ctx: Any, index: int, n_vocab: int, grammar: bool) -> int:
    """llama_sampler_sample (the chain applied to the logits of batch row `index`, then the token
    accepted), with a guard where a grammar constrains the chain: when the grammar has left no
    candidate (every logit -inf), llama.cpp would accept a token the grammar refuses and abort the
    whole process (llama_grammar_accept_impl: GGML_ABORT, or an uncaught C++ exception); raises
    GrammarDeadEnd instead. The guarded path costs ~0.1 ms more (the candidates built here)."""
    if not grammar:
        return int(llama_cpp.llama_sampler_sample(chain, ctx, index))
    logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, index), shape=(n_vocab,))
    cur = np.empty(n_vocab, dtype=TOKEN_DATA)
    cur["id"] = np.arange(n_vocab, dtype=np.int32)
    cur["logit"] = logits
    cur["p"] = 0.0
    array = llama_cpp.llama_token_data_array(
        data=cur.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data)), size=n_vocab, selected=-1, sorted=False)
    llama_cpp.llama_sampler_apply(chain, ctypes.byref(array))
    chosen = array.data[array.selected] if 0 <= array.selected < array.size else None  # a sampler may move `data`
    if chosen is None or not np.isfinite(chosen.logit):
        raise GrammarDeadEnd("the response format admits no token the model can produce at this point "
                             "(a character no token's text holds?)")
    token = int(chosen.id)
    llama_cpp.llama_sampler_accept(chain, token)
    return token


class TextOut:
    """Generated bytes -> text: UTF-8 assembled across tokens; text that could be the start of a
    stop string is held back until the next tokens show it is not. `push` returns the text that may
    be sent now and whether a stop string was found (the text is then cut before it)."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = ""

    def push(self, piece: bytes) -> tuple[str, bool]:
        text = self._held + self._utf8.decode(piece)
        for stop in self.stops:
            at = text.find(stop)
            if at >= 0:
                self._held = ""
                return text[:at], True
        keep = max((n for stop in self.stops for n in range(1, len(stop)) if text.endswith(stop[:n])), default=0)
        self._held = text[len(text) - keep:] if keep else ""
        return text[: len(text) - keep], False

    def flush(self) -> str:
        """What is held back, at the end of the answer (a stop string that never completed)."""
        text, self._held = self._held + self._utf8.decode(b"", final=True), ""
        return text


def ends(events: list[tuple[Any, ...]]) -> bool:
    """Whether a sequence's `events` hold its last one ("end" or "error": nothing follows)."""
    return any(event[0] in ("end", "error") for event in events)


class Collected:
    """A sink (`Sequence.sink`) keeping a sequence's events until its last, so the thread waiting for the
    whole answer wakes once, not once a token. `first_text_s`, `last_text_s`: time.perf_counter() when
    the first and the last text were posted (an evaluation's time to first token and decode rate)."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.ended = threading.Event()
        self.first_text_s: float | None = None
        self.last_text_s: float | None = None

    def post(self, events: list[tuple[Any, ...]]) -> None:
        if any(event[0] == "text" for event in events):
            self.last_text_s = time.perf_counter()
            self.first_text_s = self.first_text_s or self.last_text_s
        self.events.extend(events)
        if ends(events):
            self.ended.set()

    def wait(self) -> tuple[Any, ...]:
        """The last event ("end", ...), once posted; raises the sequence's error."""
        self.ended.wait()
        last = self.events[-1]
        if last[0] == "error":
            raise last[1]
        return last


@dataclass
class Sequence:
    """One request in the batch. `prompt`: token ids; `max_tokens`: answer tokens at most;
    `cancelled`: set by the request's side when the client goes away (the batch frees the
    sequence's KV cells at its next step)."""

    prompt: list[int]
    max_tokens: int
    sampling: Sampling
    stops: list[str]
    cancelled: threading.Event = field(default_factory=threading.Event)
    adapter: str | None = None  # the LoRA adapter it is decoded with (its key on the model), None: the base
    # Scoring instead of generating (an evaluation's reference answer): the tokens whose likelihood is
    # asked, the last len(targets) - 1 of them at the end of `prompt`; see `score_from`, `take_logits`.
    targets: list[int] | None = None
    nll: list[float] = field(default_factory=list)  # -log p(targets[i]), nats, as the rows come
    # Where its events go: an object with `post(events)`, called on the batch thread (Collected, or
    # streams.DirectStream, or batched_llm's queue for a stream read on a thread).
    sink: Any = None
    # batch-thread state
    seat: int = -1  # llama.cpp sequence id while it holds one
    n_past: int = 0  # tokens of this sequence in the KV cache
    fed: int = 0  # prompt tokens already in the KV cache
    last: int = -1  # the token to feed at the next decode step
    tokens: list[int] = field(default_factory=list)  # what this sequence has in its seat's KV cells
    generated: int = 0
    sampler: Any = None
    text: TextOut | None = None
    outbox: list[tuple[Any, ...]] | None = None

    @property
    def prefilling(self) -> bool:
        return self.fed < len(self.prompt)

    @property
    def score_from(self) -> int:
        """The first prompt position whose logits are needed: the last one (to sample the answer's first
        token), or for scoring the one whose logits predict targets[0]."""
        return len(self.prompt) - (len(self.targets) if self.targets is not None else 1)

    def take_logits(self, logits: Any, position: int, n_vocab: int) -> None:
        """Scoring: the logits row (a float pointer, `n_vocab` long) of prompt `position` >= score_from.
        NLL = -log softmax(row)[target], in float64 (stable: shift by the max)."""
        assert self.targets is not None
        row = np.ctypeslib.as_array(logits, shape=(n_vocab,)).astype(np.float64)
        top = row.max()
        self.nll.append(float(top + np.log(np.exp(row - top).sum()) - row[self.targets[position - self.score_from]]))

    def start(self, model: Any, reused: int = 0) -> None:
        """Seated (`seat` set), its seat's KV cells already holding the first `reused` prompt tokens."""
        self.n_past, self.fed = reused, reused
        self.tokens = self.prompt[:reused]
        self.sampler = self.sampling.chain(model)
        self.text = TextOut(self.stops)

    def accept(self, token: int, model: Any, buf: ctypes.Array[ctypes.c_char]) -> bool:
        """A sampled token; True when the answer has ended (its "end" event is sent)."""
        assert self.text is not None
        if llama_cpp.llama_vocab_is_eog(model.vocab, token):
            return self._end("stop", flush=True)
        self.generated += 1
        n = llama_cpp.llama_token_to_piece(model.vocab, token, buf, len(buf), 0, False)
        text, stopped = self.text.push(buf.raw[:n] if n > 0 else b"")
        if text:
            self.send(("text", text))
        if stopped:
            return self._end("stop", flush=False)
        if self.generated >= self.max_tokens:
            return self._end("length", flush=True)
        self.last = token
        return False

    def fail(self, exc: BaseException) -> None:
        self.send(("error", exc))

    def _end(self, reason: str, *, flush: bool) -> bool:
        assert self.text is not None
        if flush:  # text held back for a stop string that never came
            rest = self.text.flush()
            if rest:
                self.send(("text", rest))
        self.send(("end", reason, self.generated))
        return True

    def send(self, event: tuple[Any, ...]) -> None:
        if self.outbox is not None:
            self.outbox.append(event)
        else:
            self._post([event])

    def hold(self) -> None:
        """Keep what `send` sends until `flush`: the batch thread samples every sequence of a step
        before any consumer wakes (a woken request thread took the GIL between two samplings)."""
        self.outbox = []

    def flush(self) -> None:
        outbox, self.outbox = self.outbox, None
        if outbox:
            self._post(outbox)

    def _post(self, events: list[tuple[Any, ...]]) -> None:
        self.sink.post(events)

    def release(self) -> None:
        if self.sampler is not None:
            llama_cpp.llama_sampler_free(self.sampler)
            self.sampler = None
