"""The trainer's fused kernels on every family: they replace a family's modules only where the family table
says its layers match (appliance/models/families.py fused_mlp, fused_norm), everything else keeps the
library's forward, and a LoRA step gives the same loss and gradients as unpatched peft either way (tied
embeddings, attention biases, q/k norms, sliding windows, soft-capping, NoPE layers, fused projections)."""

from __future__ import annotations

import pytest
import tiny_families
import torch

from appliance.models.families import family_of
from appliance.trainer.kernels import patch_gated_mlps, patch_lora_linears, patch_norms


@pytest.mark.parametrize("key", list(tiny_families.SPECS))
def test_patched_family_trains_like_unpatched_peft(key: str) -> None:
    from peft import LoraConfig, get_peft_model

    # A sliding window shorter than the sequence, so windowed layers really mask.
    overrides = {"sliding_window": 8} if key.startswith("gemma") else {}
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    plain = get_peft_model(tiny_families.model_of(key, **overrides), lora)
    for p in plain.parameters():  # LoRA B starts at zero; make the update non-trivial
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    patched = get_peft_model(tiny_families.model_of(key, **overrides), lora)
    patched.load_state_dict(plain.state_dict())
    family = family_of(type(plain.get_base_model()).__name__)
    layers = plain.get_base_model().config.num_hidden_layers
    assert (patch_gated_mlps(patched) == layers) == family.fused_mlp
    assert (patch_norms(patched) > 0) == family.fused_norm
    assert patch_lora_linears(patched) > 0  # plain nn.Linear bases everywhere: always fused
    ids = torch.randint(0, 49152, (2, 24), generator=torch.Generator().manual_seed(1))
    losses, grads = [], []
    for model in (plain, patched):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad for p in model.parameters() if p.requires_grad])
    assert torch.allclose(losses[0], losses[1], rtol=1e-5)
    assert all(g is not None for g in grads[1])
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(*grads, strict=True))
