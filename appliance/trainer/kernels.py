"""The trainer's own autograd functions for the decoder's hot spots: fewer passes over memory, fewer
tensors kept for backward, the same gradients.

On a CPU the matmuls of a LoRA step run near the machine's peak and the rest of the step is
elementwise work and autograd bookkeeping. Each function here replaces a chain of small autograd
nodes with one node whose forward and backward do the arithmetic in as few passes as they can:

- `SiluMul`: the gated MLP's silu(gate) * up (Llama, Mistral, Qwen2). Autograd keeps gate, silu(gate)
  and up and its backward makes ~9 passes; this keeps gate and up and makes 4 (one fused
  `silu_backward`). A fifth less activation memory per layer for the SmolLM2 shapes (measured with
  saved-tensor hooks: 7,872 -> 6,336 floats per token and layer).
- `RMSNorm`: one reduction and two passes forward, keeping the input and one scalar per row; four
  passes backward (autograd's composite keeps the squared input and several intermediates).
- `LoraLinear`: base projection plus the LoRA update as one node; the update is added in place
  (`addmm_`) instead of through a scaled temporary and an add, and backward adds its share of the
  input gradient in place.

`patch_model` swaps these in, per module instance, only where a module matches exactly what the
function computes; anything else (other norms, DoRA, dropout, merged or disabled adapters, half
precision) keeps its own forward.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import torch

SILU_CLASSES = {"SiLU", "SiLUActivation"}
# x * rsqrt(mean(x^2) + eps) * weight, with `weight` and `variance_epsilon` attributes (not Gemma's 1 + weight).
# Which families match is in appliance/models/families.py (fused_norm, fused_mlp); tests/test_family_kernels.py
# checks both agree. Gemma's norms (1 + weight) and GELU MLPs, Phi-3's fused gate_up_proj keep their own.
RMSNORM_CLASSES = {"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm", "Phi3RMSNorm", "SmolLM3RMSNorm"}


class SiluMul(torch.autograd.Function):
    """silu(gate) * up, saving only gate and up."""

    @staticmethod
    def forward(ctx: Any, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        return torch.nn.functional.silu(gate).mul_(up)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        gate, up = ctx.saved_tensors
        grad_up = torch.nn.functional.silu(gate).mul_(grad) if ctx.needs_input_grad[1] else None
        grad_gate = torch.ops.aten.silu_backward(grad * up, gate) if ctx.needs_input_grad[0] else None
        return grad_gate, grad_up


class RMSNorm(torch.autograd.Function):
    """x * rsqrt(mean(x^2, last dim) + eps) * weight."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        width = x.shape[-1]
        inv = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(width).add_(eps).rsqrt_()
        ctx.save_for_backward(x, weight, inv)
        return (x * inv).mul_(weight)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        x, weight, inv = ctx.saved_tensors
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = (grad * x * inv).reshape(-1, x.shape[-1]).sum(0)
        grad_x = None
        if ctx.needs_input_grad[0]:
            # d/dx_i: g_i * inv - x_i * inv^3 / n * sum_j(g_j * x_j), with g = grad * weight
            g = grad * weight
            coef = (g * x).sum(-1, keepdim=True).mul_(inv.pow(3)).div_(x.shape[-1])
            grad_x = g.mul_(inv).addcmul_(x, coef, value=-1)
        return grad_x, grad_weight, None


class LoraLinear(torch.autograd.Function):
    """x @ weight.T + scale * (x @ a.T) @ b.T for a frozen, bias-free base weight."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                scale: float) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        out = torch.mm(rows, weight.t())
        low = torch.mm(rows, a.t()).mul_(scale)
        out.addmm_(low, b.t())
        ctx.save_for_backward(rows, weight, a, b, low)
        ctx.scale = scale
        ctx.in_shape = x.shape
        return out.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, torch.Tensor | None,
                                                          torch.Tensor | None, None]:
        rows, weight, a, b, low = ctx.saved_tensors
        grad_rows = grad.reshape(-1, grad.shape[-1])
        grad_b = torch.mm(grad_rows.t(), low) if ctx.needs_input_grad[3] else None
        grad_low = torch.mm(grad_rows, b).mul_(ctx.scale)
        grad_a = torch.mm(grad_low.t(), rows) if ctx.needs_input_grad[2] else None
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.mm(grad_rows, weight).addmm_(grad_low, a).view(ctx.in_shape)
        return grad_x, None, grad_a, grad_b, None


def _mlp_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    return self.down_proj(SiluMul.apply(self.gate_proj(x), self.up_proj(x)))


def _norm_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    if x.dtype != torch.float32 or self.weight.dtype != torch.float32:
        return type(self).forward(self, x)  # half precision: the model's own fp32 upcast and cast back
    return RMSNorm.apply(x, self.weight, self.variance_epsilon)


def _lora_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    adapters = [name for name in self.active_adapters if name in self.lora_A]
    if (args or kwargs or self.disable_adapters or self.merged or len(adapters) != 1
            or adapters[0] in getattr(self, "lora_variant", {})):
        return type(self).forward(self, x, *args, **kwargs)
    name = adapters[0]
    base, a, b = self.get_base_layer(), self.lora_A[name], self.lora_B[name]
    weight = base.weight
    if (not isinstance(self.lora_dropout[name], torch.nn.Identity) or weight.requires_grad
            or base.bias is not None or a.bias is not None or b.bias is not None
            or not (x.dtype == weight.dtype == a.weight.dtype == b.weight.dtype)):
        return type(self).forward(self, x, *args, **kwargs)
    return LoraLinear.apply(x, weight, a.weight, b.weight, float(self.scaling[name]))


def _patch(model: torch.nn.Module, matches: Callable[[torch.nn.Module], bool], forward: Callable[..., Any]) -> int:
    """Give every module that `matches` the given forward (this instance only); returns how many."""
    count = 0
    for module in model.modules():
        if matches(module):
            module.forward = types.MethodType(forward, module)  # type: ignore[method-assign]
            count += 1
    return count


def patch_gated_mlps(model: torch.nn.Module) -> int:
    """Use SiluMul in every SiLU-gated MLP of the model."""
    return _patch(model, lambda m: type(getattr(m, "act_fn", None)).__name__ in SILU_CLASSES
                  and all(hasattr(m, n) for n in ("gate_proj", "up_proj", "down_proj")), _mlp_forward)


def patch_norms(model: torch.nn.Module) -> int:
    return _patch(model, lambda m: type(m).__name__ in RMSNORM_CLASSES and hasattr(m, "variance_epsilon"),
                  _norm_forward)


def patch_lora_linears(model: torch.nn.Module) -> int:
    """Fuse base projection and LoRA update in peft's plain LoRA Linear layers (not 4/8-bit ones)."""
    from peft.tuners.lora.layer import Linear as LoraLinearModule

    return _patch(model, lambda m: type(m) is LoraLinearModule and type(m.get_base_layer()) is torch.nn.Linear,
                  _lora_forward)


def patch_model(model: torch.nn.Module) -> None:
    """All of the above, on a (peft-wrapped) model."""
    patch_gated_mlps(model)
    patch_norms(model)
    patch_lora_linears(model)
