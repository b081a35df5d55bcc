"""The training loss: cross-entropy on label positions only, with the output projection fused in.

For small models the output projection is a large share of the work and the logits the largest
tensors (SmolLM2: 49,152 x 4 bytes per row). So the loss (1) runs the projection only on rows that
have a label, and (2) does it in chunks, forming the gradient w.r.t. the hidden states during the
forward pass: the projection is frozen, so that gradient is all backward needs, and no more than one
chunk of logits ever exists.
"""

from __future__ import annotations

from typing import Any

import torch

CHUNK_ROWS = 256


_LOGITS: dict[tuple[int, torch.dtype, torch.device], torch.Tensor] = {}


def _logits_buffer(vocab: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """One chunk's logits on CPU, kept between steps: a fresh 50 MB buffer per chunk costs page faults
    (jemalloc hands such sizes back to the system at once), measured at a third of the matmul's speed."""
    key = (vocab, dtype, device)
    if key not in _LOGITS:
        _LOGITS.clear()
        _LOGITS[key] = torch.empty(CHUNK_ROWS, vocab, dtype=dtype, device=device)
    return _LOGITS[key]


class FusedLinearCrossEntropy(torch.autograd.Function):
    """sum over rows of CE(hidden @ weight.T, labels), for a weight that needs no gradient."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        grad = torch.empty_like(hidden)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        reuse = hidden.dtype == torch.float32 and hidden.device.type == "cpu"
        buffer = _logits_buffer(weight.shape[0], hidden.dtype, hidden.device) if reuse else None
        for start in range(0, hidden.shape[0], CHUNK_ROWS):
            rows = slice(start, start + CHUNK_ROWS)
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
    def backward(ctx: Any, upstream: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        (grad,) = ctx.saved_tensors
        return grad * upstream.to(grad.dtype), None, None


def label_loss(hidden: torch.Tensor, head: torch.nn.Module, labels: torch.Tensor, ignore: int) -> torch.Tensor:
    """Summed next-token cross-entropy over positions whose (shifted) label is not `ignore`."""
    targets = labels[:, 1:]
    keep = targets != ignore
    rows = hidden[:, :-1][keep]
    weight = head.weight
    if weight.requires_grad or getattr(head, "bias", None) is not None:
        # A trainable or biased head (not the case for LoRA on the usual targets): plain autograd.
        logits = head(rows).float()
        return torch.nn.functional.cross_entropy(logits, targets[keep], reduction="sum")
    out = FusedLinearCrossEntropy.apply(rows, weight, targets[keep])
    assert isinstance(out, torch.Tensor)
    return out
