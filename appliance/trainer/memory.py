"""Peak training memory of a LoRA / QLoRA (4-bit NF4) / 8-bit run, per model family, from config.json
alone (torch-free: the pre-flight runs in the API). Each term is in bytes; `total_mb` is MiB.

    weights      linear layers at 0.52 B/param (NF4 + double-quantised absmax: 4 bits + ~0.13 bits),
                 1.06 B/param (int8 + outlier columns) or the compute dtype; embeddings, lm_head (bitsandbytes
                 skips both) and norms stay in the compute dtype. The embeddings are where families differ
                 most: Gemma's 256k vocabulary, Qwen's 152k and Llama 3's 128k are a third of a 1-3B model.
    activations  per token and layer, kept for backward: about 18 x hidden (attention block, norms,
                 residuals) + 3 x intermediate (the gated MLP's gate, up and product; Phi-3's fused gate_up
                 the same), x the family's activation_factor; with gradient checkpointing only each layer's
                 input is kept, plus one layer being recomputed. Families with logit soft-capping (Gemma 2)
                 run eager attention and keep heads x seq x seq scores per layer (two copies: scores and
                 softmax); the others use SDPA, which keeps none.
    logits       the trainer's chunked loss (trainer/loss.py): CHUNK_ROWS x vocab in fp32, three buffers.
    trainable    LoRA weights, gradients and two AdamW moments in fp32: 16 B per LoRA parameter.
    overhead     CUDA context, cuBLAS workspace and allocator slack (RUNTIME_OVERHEAD_MB).

Errors: none raised; a config missing a key falls back to the defaults of a llama-shaped model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from appliance.models.families import find

CHUNK_ROWS = 256  # trainer/loss.py's rows per logits chunk
RUNTIME_OVERHEAD_MB = {"cpu": 800.0, "cuda": 600.0}
WEIGHT_BYTES = {4: 0.52, 8: 1.06}
ALLOCATOR_SLACK = 1.10  # PyTorch's caching allocator: fragmentation between steps


@dataclass(frozen=True)
class MemoryEstimate:
    weights_mb: float
    activations_mb: float
    logits_mb: float
    trainable_mb: float
    overhead_mb: float
    total_mb: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _int(config: dict[str, Any], key: str, default: int) -> int:
    value = config.get(key)
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else default


def embedding_parameters(config: dict[str, Any]) -> int:
    """Parameters of embed_tokens, plus lm_head when it is not tied."""
    vocab, hidden = _int(config, "vocab_size", 32000), _int(config, "hidden_size", 1024)
    tied = bool(config.get("tie_word_embeddings", False))
    return vocab * hidden * (1 if tied else 2)


def training_memory(config: dict[str, Any], *, parameters: int, quantization_bit: int | None, compute_bytes: int,
                    batch: int, seq_len: int, gradient_checkpointing: bool, lora_parameters: int,
                    device: str = "cuda") -> MemoryEstimate:
    """Peak memory of one training step. `parameters`: the model's total; `compute_bytes`: 2 (bf16/fp16)
    or 4 (fp32); `seq_len`: padded tokens per sequence; `lora_parameters`: trainable parameters."""
    arch = str((config.get("architectures") or [""])[0])
    family = find(arch)
    hidden = _int(config, "hidden_size", 1024)
    inter = _int(config, "intermediate_size", 4 * hidden)
    layers = _int(config, "num_hidden_layers", 24)
    heads = _int(config, "num_attention_heads", 16)
    vocab = _int(config, "vocab_size", 32000)
    embed = min(embedding_parameters(config), parameters)
    linear = parameters - embed
    weights = linear * WEIGHT_BYTES.get(quantization_bit or 0, compute_bytes) + embed * compute_bytes
    tokens = batch * seq_len
    factor = family.activation_factor if family is not None else 1.0
    per_layer = tokens * (18 * hidden + 3 * inter) * compute_bytes * factor
    if family is not None and "softcap" in family.traits:  # eager attention: the scores are materialised
        per_layer += 2 * batch * heads * seq_len * seq_len * compute_bytes
    # Checkpointing keeps each layer's input and recomputes one layer at a time.
    kept = layers * tokens * hidden * compute_bytes + per_layer
    activations = kept if gradient_checkpointing else layers * per_layer
    logits = min(tokens, CHUNK_ROWS) * vocab * 4 * 3
    trainable = lora_parameters * 16
    overhead = RUNTIME_OVERHEAD_MB[device] * 2**20
    total = (weights + activations + logits + trainable) * (ALLOCATOR_SLACK if device == "cuda" else 1) + overhead
    mb = 2**20
    return MemoryEstimate(weights_mb=round(weights / mb, 1), activations_mb=round(activations / mb, 1),
                          logits_mb=round(logits / mb, 1), trainable_mb=round(trainable / mb, 1),
                          overhead_mb=round(overhead / mb, 1), total_mb=round(total / mb, 1))
