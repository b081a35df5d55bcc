"""The training loss: cross-entropy on label positions only, with the output projection fused in.

For small models the output projection is a large share of the work and the logits the largest
tensors (SmolLM2: 49,152 x 4 bytes per row). So the loss (1) runs the projection only on rows that
have a label, and (2) does it in chunks, forming the gradient w.r.t. the hidden states during the
forward pass: the projection is frozen, so that gradient is all backward needs, and no more than one
chunk of logits ever exists.
"""

from __future__ import annotations

import threading
from typing import Any

import torch

CHUNK_ROWS = 256


_local = threading.local()


def _logits_buffer(rows: int, vocab: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """One chunk's logits on CPU, kept between steps by each thread that computes losses: a fresh 50 MB
    buffer per chunk costs page faults (jemalloc hands such sizes back to the system at once), measured at
    a third of the matmul's speed."""
    buffer = getattr(_local, "logits", None)
    if buffer is None or buffer.shape != (rows, vocab) or buffer.dtype != dtype or buffer.device != device:
        _local.logits = None  # the old one freed before the new one is made
        buffer = _local.logits = torch.empty(rows, vocab, dtype=dtype, device=device)
    return buffer


class FusedLinearCrossEntropy(torch.autograd.Function):
    """sum over rows of CE(hidden @ weight.T, labels), for a weight that needs no gradient."""

    @staticmethod
    def forward(
        ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk_rows: int
    ) -> torch.Tensor:
        grad = torch.empty_like(hidden)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        reuse = hidden.dtype == torch.float32 and hidden.device.type == "cpu"
        buffer = _logits_buffer(chunk_rows, weight.shape[0], hidden.dtype, hidden.device) if reuse else None
        for start in range(0, hidden.shape[0], chunk_rows):
            rows = slice(start, start + chunk_rows)
            chunk = hidden[rows]
            if buffer is not None:
                # In place, one buffer throughout: logits, log-probabilities, probabilities, dCE/dlogits.
                logits = torch.mm(chunk, weight.t(), out=buffer[: chunk.shape[0]])
                logp = torch.ops.aten._log_softmax.out(logits, -1, False, out=logits)
            else:  # GPU: the caching allocator makes fresh tensors cheap; softmax in fp32 for half types
                logp = torch.log_softmax((chunk @ weight.t()).float(), -1)
            target = labels[rows]
            total -= logp.gather(1, target[:, None]).sum(dtype=torch.float32)
            probs = logp.exp_()
            probs[torch.arange(target.shape[0], device=probs.device), target] -= 1.0
            torch.mm(probs.to(hidden.dtype), weight, out=grad[rows])
        ctx.save_for_backward(grad)
        return total

    @staticmethod
    def backward(ctx: Any, upstream: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        (grad,) = ctx.saved_tensors
        return grad * upstream.to(grad.dtype), None, None, None


def label_loss(
    hidden: torch.Tensor, head: torch.nn.Module, labels: torch.Tensor, ignore: int, chunk_rows: int = CHUNK_ROWS
) -> torch.Tensor:
    """Summed next-token cross-entropy over positions whose (shifted) label is not `ignore`, `chunk_rows`
    rows of logits at a time."""
    targets = labels[:, 1:]
    keep = targets != ignore
    rows = hidden[:, :-1][keep]
    weight = head.weight
    # A LoRA on the head itself (lm_head of an untied model): the fused path reads only the frozen base
    # weight, so the LoRA would never train; a trainable or biased head likewise needs plain autograd.
    if hasattr(head, "lora_A") or weight.requires_grad or getattr(head, "bias", None) is not None:
        logits = head(rows).float()
        return torch.nn.functional.cross_entropy(logits, targets[keep], reduction="sum")
    out = FusedLinearCrossEntropy.apply(rows, weight, targets[keep], chunk_rows)
    assert isinstance(out, torch.Tensor)
    return out
