"""A gated MLP (Llama, Mistral, Qwen2: down(silu(gate(x)) * up(x))) that keeps less for backward.

Autograd keeps three intermediate-size tensors per token for `silu(gate) * up`: gate (for silu's
backward), silu(gate) and up (for the product's). This function keeps gate and up and recomputes
silu in backward, a cheap elementwise pass: a fifth less activation memory per layer for the
SmolLM2 shapes (measured with saved-tensor hooks: 7,872 -> 6,336 floats per token and layer), the
same gradients.
"""

from __future__ import annotations

import types
from typing import Any

import torch

SILU_CLASSES = {"SiLU", "SiLUActivation"}


class SiluMul(torch.autograd.Function):
    """silu(gate) * up, saving only gate and up."""

    @staticmethod
    def forward(ctx: Any, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        return torch.nn.functional.silu(gate) * up

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        gate, up = ctx.saved_tensors
        sig = torch.sigmoid(gate)
        grad_up = grad * gate * sig if ctx.needs_input_grad[1] else None
        grad_gate = None
        if ctx.needs_input_grad[0]:
            # d silu(g)/dg = sig * (1 + g * (1 - sig))
            grad_gate = (grad * up).mul_(sig.mul_(gate * (1 - sig) + 1))
        return grad_gate, grad_up


def _forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    return self.down_proj(SiluMul.apply(self.gate_proj(x), self.up_proj(x)))


def patch_gated_mlps(model: torch.nn.Module) -> int:
    """Use SiluMul in every SiLU-gated MLP of the model; returns how many were patched."""
    count = 0
    for module in model.modules():
        act = getattr(module, "act_fn", None)
        if (act is not None and type(act).__name__ in SILU_CLASSES
                and all(hasattr(module, n) for n in ("gate_proj", "up_proj", "down_proj"))):
            module.forward = types.MethodType(_forward, module)  # type: ignore[method-assign]
            count += 1
    return count
