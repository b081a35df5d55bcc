"""The seats of a batched context: llama.cpp sequence ids, one KV stream of cells each, and what
each seat's cells hold once its request ended (llama-server's prompt cache: a new request takes
the free seat whose cells share the longest prefix with its prompt and decodes only the rest).

Cells computed with a LoRA adapter hold that adapter's keys and values: a seat's cells are reused
only by a request decoded with the same adapter (or with none, as they were).
"""

from __future__ import annotations

from typing import Any

import llama_cpp

from appliance.inference.sequences import Sequence


class Seats:
    """Batch thread only. `memory`: the context's llama_memory_t; `parallel`: the seats."""

    def __init__(self, memory: Any, parallel: int) -> None:
        self.memory = memory
        self.free = list(range(parallel - 1, -1, -1))
        # What each seat's cells hold: (adapter key, token ids).
        self.cached: list[tuple[str | None, list[int]]] = [(None, []) for _ in range(parallel)]

    def take(self, seq: Sequence) -> int:
        """Seat `seq` (a seat must be free) and return how many of its prompt tokens are already in
        the seat's cells; the rest of the cells are dropped. The prompt from `seq.score_from` on is
        always decoded again (its logits are needed: the last token's to sample the first answer
        token; a scored sequence's for the likelihood of its targets)."""
        seat = max(self.free, key=lambda s: (self._common(s, seq), -s))  # ties: the lowest seat
        self.free.remove(seat)
        reused = min(self._common(seat, seq), seq.score_from)
        llama_cpp.llama_memory_seq_rm(self.memory, seat, reused, -1)
        self.cached[seat] = (None, [])
        seq.seat = seat
        return reused

    def give_back(self, seq: Sequence, keep: bool) -> None:
        """`keep`: the cells stay for a later prompt with the same prefix (and adapter)."""
        if keep:
            self.cached[seq.seat] = (seq.adapter, seq.tokens)
        else:
            llama_cpp.llama_memory_seq_rm(self.memory, seq.seat, -1, -1)
        self.free.append(seq.seat)

    def forget(self, adapter: str) -> None:
        """Drop the cells computed with `adapter` (it is being unloaded)."""
        for seat, (key, _tokens) in enumerate(self.cached):
            if key == adapter:
                llama_cpp.llama_memory_seq_rm(self.memory, seat, -1, -1)
                self.cached[seat] = (None, [])

    def _common(self, seat: int, seq: Sequence) -> int:
        adapter, tokens = self.cached[seat]
        if adapter != seq.adapter:
            return 0
        n = 0
        for x, y in zip(tokens, seq.prompt, strict=False):
            if x != y:
                break
            n += 1
        return n
