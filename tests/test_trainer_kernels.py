"""The trainer's own autograd pieces give the same loss and gradients as plain PyTorch."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from appliance.trainer import loss as fused_loss
from appliance.trainer.kernels import LoraLinear, RMSNorm, SiluMul, patch_gated_mlps, patch_lora_linears, patch_norms


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


def test_fused_cross_entropy_reuses_one_logits_buffer_per_thread() -> None:
    head = torch.nn.Linear(32, 500, bias=False).requires_grad_(False)

    def losses(chunk_rows: int) -> torch.Tensor:
        for rows in (3, 300, 40):
            hidden = torch.randn(1, rows, 32, requires_grad=True)
            fused_loss.label_loss(hidden, head, torch.randint(0, 500, (1, rows)), -100, chunk_rows).backward()
        return fused_loss._local.logits

    first = losses(fused_loss.CHUNK_ROWS)
    assert first.shape == (fused_loss.CHUNK_ROWS, 500)
    assert losses(fused_loss.CHUNK_ROWS).data_ptr() == first.data_ptr()  # kept between calls
    with ThreadPoolExecutor(1) as pool:  # another thread has its own, of its own size
        other = pool.submit(losses, 64).result()
    assert other.shape == (64, 500) and other.data_ptr() != first.data_ptr()
    assert fused_loss._local.logits is first


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


def test_rms_norm_gradients_match_autograd() -> None:
    torch.manual_seed(1)
    x = torch.randn(2, 5, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(16, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, w: RMSNorm.apply(a, w, 1e-5), (x, weight))
    reference = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * weight
    assert torch.allclose(RMSNorm.apply(x, weight, 1e-5), reference)


def test_lora_linear_gradients_match_autograd() -> None:
    torch.manual_seed(2)
    x = torch.randn(3, 4, 10, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(12, 10, dtype=torch.float64)
    a = torch.randn(2, 10, dtype=torch.float64, requires_grad=True)
    b = torch.randn(12, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x_, a_, b_: LoraLinear.apply(x_, weight, a_, b_, 0.5), (x, a, b))
    reference = x @ weight.t() + 0.5 * (x @ a.t()) @ b.t()
    assert torch.allclose(LoraLinear.apply(x, weight, a, b, 0.5), reference)


def test_patched_lora_llama_trains_like_plain_peft() -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    torch.manual_seed(0)
    plain = get_peft_model(LlamaForCausalLM(config), lora)
    for p in plain.parameters():  # LoRA B starts at zero; make the update non-trivial
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.1)
    patched = get_peft_model(LlamaForCausalLM(config), lora)
    patched.load_state_dict(plain.state_dict())
    assert patch_lora_linears(patched) == 4
    assert patch_norms(patched) == 5  # two per layer and the final one
    ids = torch.randint(0, 128, (2, 16))
    losses, grads = [], []
    for model in (plain, patched):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        losses.append(loss)
        grads.append([p.grad for p in model.parameters() if p.requires_grad])
    assert torch.allclose(losses[0], losses[1], rtol=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(*grads, strict=True))
    with torch.no_grad():  # an adapter switched off falls back to the base model, as in peft
        with patched.disable_adapter():
            off = patched(input_ids=ids).logits
        with plain.disable_adapter():
            assert torch.allclose(off, plain(input_ids=ids).logits, atol=1e-5)
