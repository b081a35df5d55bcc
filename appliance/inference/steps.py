"""One decode step of a batched context (appliance/inference/batching.py): a group of sequences (those
of one LoRA adapter) put in one `llama_batch`, decoded, and each sampled with its own chain. A mixin
of `BatchedModel`, run by its batch thread only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import llama_cpp

from appliance.inference.seats import Seats
from appliance.inference.sequences import GrammarDeadEnd, Sequence, sample

if TYPE_CHECKING:
    import threading

N_BATCH = 512  # tokens per decode step: every generating sequence's next token, then prompt tokens


class DecodeSteps:
    compute: threading.Lock
    threads: int
    _threads_now: int
    loading: threading.Event
    ready: threading.Event
    _ctx: Any
    llm: Any

    def _step(self, batch: Any, group: list[Sequence], active: list[Sequence], seats: Seats, buf: Any) -> None:
        """One decode of `group` (sequences of one adapter): a token of every generating sequence,
        then prompt tokens up to N_BATCH.

        In seat order: with a KV stream per sequence, llama.cpp puts in one micro-batch only
        sequences whose ids follow each other in the batch (llama_batch_allocr::split_equal,
        sequential); 8 sequences in admission order were decoded one micro-batch each, measured
        here at 103 ms a step instead of 24 (the weights read 8 times)."""
        ordered = sorted(group, key=lambda s: s.seat)
        outputs: list[tuple[Sequence, int, int]] = []  # (sequence, row in the batch, prompt position or -1)
        fed: list[tuple[Sequence, list[int]]] = []
        n = 0
        for seq in ordered:
            if not seq.prefilling:
                _add(batch, n, seq.last, seq.n_past, seq.seat, True)
                outputs.append((seq, n, -1))
                fed.append((seq, [seq.last]))
                n += 1
        for seq in ordered:
            if seq.prefilling and n < N_BATCH:
                chunk = seq.prompt[seq.fed: seq.fed + N_BATCH - n]
                for i, token in enumerate(chunk):
                    wanted = seq.fed + i >= seq.score_from
                    _add(batch, n, token, seq.n_past + i, seq.seat, wanted)
                    if wanted:
                        outputs.append((seq, n, seq.fed + i))
                    n += 1
                fed.append((seq, chunk))
        if n == 0:
            return
        batch.n_tokens = n
        self._fit_threads()
        with self.compute:
            rc = llama_cpp.llama_decode(self._ctx.ctx, batch)
        if rc != 0:
            error = RuntimeError(f"llama_decode failed ({rc})")
            for seq in ordered:
                seq.fail(error)
                self._free(seq, active, seats, None)
            return
        for seq, tokens in fed:
            seq.n_past += len(tokens)
            seq.tokens += tokens
            if seq.prefilling:
                seq.fed += len(tokens)
        for seq in ordered:
            seq.hold()
        try:
            self._sample(outputs, active, seats, buf)
        finally:
            for seq in ordered:
                seq.flush()

    def _sample(self, outputs: list[tuple[Sequence, int, int]], active: list[Sequence], seats: Seats,
                buf: Any) -> None:
        for seq, index, position in outputs:
            if seq.targets is not None:  # scoring: a row of logits per target, then the sequence ends
                seq.take_logits(llama_cpp.llama_get_logits_ith(self._ctx.ctx, index), position, self.llm.n_vocab())
                if position == len(seq.prompt) - 1:
                    seq.send(("scored", seq.nll))
                    self._free(seq, active, seats, "stop", keep=True)
                continue
            try:
                token = sample(seq.sampler, self._ctx.ctx, index, self.llm.n_vocab(), seq.sampling.grammar is not None)
            except GrammarDeadEnd as exc:
                seq.fail(exc)
                self._free(seq, active, seats, None)
                continue
            if seq.accept(token, self.llm._model, buf):
                self._free(seq, active, seats, None, keep=True)

    def _free(self, seq: Sequence, active: list[Sequence], seats: Seats, reason: str | None,
              keep: bool = False) -> None:
        """The seat back to the free ones; `keep`: its cells stay for a later prompt with the same prefix."""
        seats.give_back(seq, keep)
        seq.release()
        active.remove(seq)
        if reason is not None:
            seq.send(("end", reason, seq.generated))

    def _fit_threads(self) -> None:
        if self.threads <= 1:
            return
        # A model loading beside another: the newcomer smoke-tests on one core, the other keeps the rest.
        loading = self.loading.is_set()
        wanted = self.threads if not loading else 1 if not self.ready.is_set() else self.threads - 1
        if wanted != self._threads_now:
            llama_cpp.llama_set_n_threads(self._ctx.ctx, wanted, wanted)
            self._threads_now = wanted


def _add(batch: Any, i: int, token: int, pos: int, seq_id: int, logits: bool) -> None:
    batch.token[i] = token
    batch.pos[i] = pos
    batch.n_seq_id[i] = 1
    batch.seq_id[i][0] = seq_id
    batch.logits[i] = logits
