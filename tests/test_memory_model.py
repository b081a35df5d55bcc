"""The pre-flight's GPU memory model (appliance/trainer/memory.py) on the published config shapes of each
family's 7-9B model: what QLoRA / 8-bit / LoRA cost, where families differ (16-bit embeddings of large
vocabularies, Gemma 2's eager attention for soft-capping), and the seed claim that a 7B model fine-tunes
in 8 GB with QLoRA (batch 1, cutoff 1024, gradient checkpointing)."""

from __future__ import annotations

from typing import Any

import pytest

from appliance.trainer.config import TrainConfig
from appliance.trainer.memory import WEIGHT_BYTES, embedding_parameters, training_memory
from appliance.trainer.preflight import lora_parameters


def _cfg(arch: str, vocab: int, hidden: int, inter: int, layers: int, heads: int, kv: int, tied: bool,
         **extra: Any) -> dict[str, Any]:
    return dict(architectures=[arch], vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
                num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                tie_word_embeddings=tied, **extra)


# (config, parameters) from each model's config.json and safetensors index.
MODELS = {
    "Mistral-7B-v0.3": (_cfg("MistralForCausalLM", 32768, 4096, 14336, 32, 32, 8, False), 7_248_023_552),
    "Llama-3.1-8B": (_cfg("LlamaForCausalLM", 128256, 4096, 14336, 32, 32, 8, False), 8_030_261_248),
    "Qwen2.5-7B": (_cfg("Qwen2ForCausalLM", 152064, 3584, 18944, 28, 28, 4, False), 7_615_616_512),
    "Qwen3-8B": (_cfg("Qwen3ForCausalLM", 151936, 4096, 12288, 36, 32, 8, False, head_dim=128), 8_190_735_360),
    "gemma-2-9b": (_cfg("Gemma2ForCausalLM", 256000, 3584, 14336, 42, 16, 8, True, head_dim=256), 9_241_705_984),
    "Phi-4-mini": (_cfg("Phi3ForCausalLM", 200064, 3072, 8192, 32, 24, 8, True), 3_836_021_760),
}
SEED_CLAIM = dict(batch=1, seq_len=1024, gradient_checkpointing=True, compute_bytes=2)


def _qlora(name: str, **kw: Any) -> Any:
    config, params = MODELS[name]
    lora = lora_parameters(config, TrainConfig(lora_rank=16, lora_target="all"))
    return training_memory(config, parameters=params, quantization_bit=kw.pop("bits", 4), lora_parameters=lora,
                           **{**SEED_CLAIM, **kw})


@pytest.mark.parametrize("name", list(MODELS))
def test_qlora_below_8bit_below_lora_and_embeddings_stay_16_bit(name: str) -> None:
    config, params = MODELS[name]
    q4, q8, full = _qlora(name), _qlora(name, bits=8), _qlora(name, bits=None)
    assert q4.total_mb < q8.total_mb < full.total_mb
    embed = embedding_parameters(config)
    assert q4.weights_mb == pytest.approx(((params - embed) * WEIGHT_BYTES[4] + embed * 2) / 2**20, abs=0.1)
    assert q4.activations_mb == q8.activations_mb == full.activations_mb  # the method changes weights only


def test_the_seed_claim_holds_for_a_small_vocabulary_7b_not_for_llama_3_8b() -> None:
    # Mistral-7B's 32k vocabulary: QLoRA at batch 1, cutoff 1024, checkpointing fits 8 GB.
    assert _qlora("Mistral-7B-v0.3").total_mb < 8 * 1024
    # Llama 3's 128k vocabulary, untied: ~1.05B embedding parameters stay 16-bit, and it no longer fits.
    assert _qlora("Llama-3.1-8B").total_mb > 8 * 1024
    for name in ("Llama-3.1-8B", "Qwen2.5-7B", "gemma-2-9b", "Phi-4-mini"):  # large vocabularies
        config, _ = MODELS[name]
        assert embedding_parameters(config) * 2 / 2**20 > 0.25 * _qlora(name).weights_mb, name


def test_soft_capping_families_pay_for_attention_scores_quadratically() -> None:
    short, long = _qlora("gemma-2-9b", seq_len=512), _qlora("gemma-2-9b", seq_len=2048)
    assert long.activations_mb > 4 * short.activations_mb * 0.9  # seq^2 dominates at 2k
    l_short, l_long = _qlora("Llama-3.1-8B", seq_len=512), _qlora("Llama-3.1-8B", seq_len=2048)
    assert l_long.activations_mb == pytest.approx(4 * l_short.activations_mb, rel=1e-3)  # linear in tokens (SDPA)


def test_checkpointing_keeps_one_layer_and_phi_lora_counts_its_fused_projections() -> None:
    with_ckpt, without = _qlora("Qwen3-8B"), _qlora("Qwen3-8B", gradient_checkpointing=False)
    assert without.activations_mb > 10 * with_ckpt.activations_mb
    config, _ = MODELS["Phi-4-mini"]
    all_linear = lora_parameters(config, TrainConfig(lora_rank=16, lora_target="all"))
    qkv = 16 * (3072 + (24 + 2 * 8) * 128)
    assert lora_parameters(config, TrainConfig(lora_rank=16, lora_target="qkv_proj")) == 32 * qkv
    assert all_linear == 32 * (qkv + 16 * (3072 + 3072) + 16 * (3072 + 2 * 8192) + 16 * (8192 + 3072))
