"""The trainer's own autograd pieces give the same loss and gradients as plain PyTorch."""

from __future__ import annotations

import pytest
import torch

from appliance.trainer import loss as fused_loss
from appliance.trainer.swiglu import SiluMul, patch_gated_mlps


@pytest.mark.parametrize("rows", [5, fused_loss.CHUNK_ROWS, fused_loss.CHUNK_ROWS * 2 + 37])
def test_fused_cross_entropy_matches_autograd(rows: int) -> None:
    torch.manual_seed(rows)
    vocab, width = 3000, 64
    head = torch.nn.Linear(width, vocab, bias=False)
    head.weight.requires_grad_(False)
    hidden = torch.randn(2, rows // 2 + 1, width, requires_grad=True)
    labels = torch.randint(0, vocab, (2, rows // 2 + 1))
    labels[0, :3] = -100  # a prompt: no loss there
    ours = fused_loss.label_loss(hidden, head, labels, -100)
    ours.backward()
    grad_ours = hidden.grad.clone()
    hidden.grad = None
    logits = head(hidden[:, :-1]).reshape(-1, vocab)
    reference = torch.nn.functional.cross_entropy(logits, labels[:, 1:].reshape(-1), ignore_index=-100,
                                                  reduction="sum")
    reference.backward()
    assert torch.allclose(ours, reference, rtol=1e-5)
    assert torch.allclose(grad_ours, hidden.grad, atol=1e-6)
    assert hidden.grad[0, :2].abs().sum() == 0  # rows whose next token is unlabelled get no gradient


def test_fused_cross_entropy_reuses_one_logits_buffer() -> None:
    head = torch.nn.Linear(32, 500, bias=False).requires_grad_(False)
    for rows in (3, 300, 40):
        hidden = torch.randn(1, rows, 32, requires_grad=True)
        fused_loss.label_loss(hidden, head, torch.randint(0, 500, (1, rows)), -100).backward()
    assert len(fused_loss._LOGITS) == 1
    assert next(iter(fused_loss._LOGITS.values())).shape == (fused_loss.CHUNK_ROWS, 500)


def test_silu_mul_gradients_match_autograd() -> None:
    torch.manual_seed(0)
    gate = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    up = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(SiluMul.apply, (gate, up))
    frozen_up = up.detach()
    out = SiluMul.apply(gate, frozen_up)
    out.sum().backward()
    expected = torch.autograd.grad((torch.nn.functional.silu(gate) * frozen_up).sum(), gate)[0]
    assert torch.allclose(gate.grad, expected)


def test_patched_llama_mlp_trains_identically_and_keeps_less() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    plain = LlamaForCausalLM(config)
    patched = LlamaForCausalLM(config)
    patched.load_state_dict(plain.state_dict())
    assert patch_gated_mlps(patched) == 2
    ids = torch.randint(0, 128, (2, 16))

    def run(model: torch.nn.Module) -> tuple[torch.Tensor, list[torch.Tensor], int]:
        saved = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal saved
            if not isinstance(t, torch.nn.Parameter) and t.dim() == 3 and t.shape[-1] == config.intermediate_size:
                saved += 1
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(input_ids=ids, labels=ids).loss
        out.backward()
        return out, [p.grad for p in model.parameters()], saved

    loss_a, grads_a, saved_a = run(plain)
    loss_b, grads_b, saved_b = run(patched)
    assert torch.allclose(loss_a, loss_b)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads_a, grads_b, strict=True))
    assert saved_b < saved_a  # silu(gate) is no longer kept for backward
