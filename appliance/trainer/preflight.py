"""Pre-flight: estimate a run's peak memory and duration from the model's shape, the method, the
batch and the data, before it is queued. Torch-free (it runs in the API). Rough by design; it is
calibrated on SmolLM2-135M on 2 CPU cores (about 1.8 GB peak RSS, ~150 real tokens/s at batch 4)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from appliance.models.families import find
from appliance.trainer.config import TrainConfig
from appliance.trainer.memory import training_memory

CPU_FLOPS_PER_CORE = 60e9  # effective fp32 training FLOP/s per core, measured order of magnitude
GPU_FLOPS = 50e12  # effective mixed-precision training FLOP/s of a mid-range GPU
RUNTIME_OVERHEAD_MB = {"cpu": 800.0, "cuda": 600.0}  # torch + transformers + allocator slack


@dataclass(frozen=True)
class Estimate:
    device: str
    peak_memory_mb: float
    available_memory_mb: float | None
    steps: int
    tokens: int
    seconds: float
    fits: bool
    # Kiosks first (appliance/serving.py): the run waits while kiosk requests are in flight, so `seconds`
    # holds only while kiosks are idle; under continuous kiosk traffic it runs at least min_share of the time.
    seconds_under_kiosk_load: float | None = None
    note: str = ""
    memory_mb: dict[str, float] | None = None  # CUDA: weights, activations, logits, trainable, overhead


def gpu_free_mb() -> float | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.free", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
        return float(out.split()[0])
    except (subprocess.SubprocessError, ValueError, IndexError):
        return None


def cpu_available_mb() -> float:
    import psutil

    return float(psutil.virtual_memory().available) / 2**20


def _int(config: dict[str, object], key: str, default: int) -> int:
    value = config.get(key)
    return int(value) if isinstance(value, int | float) else default


def lora_parameters(config: dict[str, object], cfg: TrainConfig) -> int:
    hidden = _int(config, "hidden_size", 0)
    inter = _int(config, "intermediate_size", 4 * hidden)
    layers = _int(config, "num_hidden_layers", 0)
    heads = _int(config, "num_attention_heads", 1)
    kv = _int(config, "num_key_value_heads", heads)
    head_dim = _int(config, "head_dim", hidden // max(heads, 1))
    shapes = {
        "q_proj": (hidden, heads * head_dim), "k_proj": (hidden, kv * head_dim), "v_proj": (hidden, kv * head_dim),
        "o_proj": (heads * head_dim, hidden), "gate_proj": (hidden, inter), "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
        # Phi-3 / Phi-4-mini fuse them: qkv_proj and gate_up_proj.
        "qkv_proj": (hidden, (heads + 2 * kv) * head_dim), "gate_up_proj": (hidden, 2 * inter),
    }
    archs = config.get("architectures")
    family = find(str(archs[0])) if isinstance(archs, list) and archs else None
    fused = family is not None and "fused-qkv" in family.traits
    every = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj") if fused else (
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    targets = cfg.targets
    chosen = [shapes[t] for t in (every if targets == "all-linear" else targets) if t in shapes]
    return layers * sum(cfg.lora_rank * (i + o) for i, o in chosen)


def estimate(*, hf_dir: Path, parameters: int, cfg: TrainConfig, rows: int, mean_tokens: float,
             kiosk_min_share: float | None = None) -> Estimate:
    """`kiosk_min_share`: the settings' training_min_share when serving priority is on, else None."""
    config = json.loads((hf_dir / "config.json").read_text())
    gpu_free = gpu_free_mb()
    device = "cuda" if gpu_free is not None else "cpu"
    half = device == "cuda" and (cfg.bf16 or cfg.fp16)
    act_bytes = 2 if half else 4
    weight_bytes = {4: 0.55, 8: 1.1}.get(cfg.quantization_bit or 0, act_bytes)
    hidden = _int(config, "hidden_size", 1024)
    layers = _int(config, "num_hidden_layers", 24)
    vocab = _int(config, "vocab_size", 32000)
    seq = min(cfg.cutoff_len, max(16.0, mean_tokens * 1.3))
    batch_tokens = cfg.per_device_train_batch_size * seq
    per_layer = batch_tokens * hidden * 18 * act_bytes
    activations = per_layer * (2 if cfg.gradient_checkpointing else layers)
    logits = batch_tokens * 0.6 * vocab * 4 * 2  # label rows only, fp32 logits and their gradient
    trainable = lora_parameters(config, cfg) * 16  # weight, gradient, two Adam moments, fp32
    peak_mb = (parameters * weight_bytes + activations + logits + trainable) / 2**20 + RUNTIME_OVERHEAD_MB[device]
    breakdown = None
    if device == "cuda":  # the per-family model (trainer/memory.py); the CPU figure above is calibrated here
        memory = training_memory(config, parameters=parameters, quantization_bit=cfg.quantization_bit,
                                 compute_bytes=act_bytes, batch=cfg.per_device_train_batch_size, seq_len=int(seq),
                                 gradient_checkpointing=cfg.gradient_checkpointing,
                                 lora_parameters=lora_parameters(config, cfg))
        peak_mb, breakdown = memory.total_mb, memory.as_dict()
    available = gpu_free if device == "cuda" else cpu_available_mb()
    batches = math.ceil(rows / cfg.per_device_train_batch_size)
    per_epoch = math.ceil(batches / cfg.gradient_accumulation_steps)
    steps = cfg.max_steps or max(1, math.ceil(cfg.num_train_epochs * per_epoch))
    tokens = int(steps * cfg.gradient_accumulation_steps * cfg.per_device_train_batch_size * mean_tokens)
    flops = GPU_FLOPS if device == "cuda" else CPU_FLOPS_PER_CORE * (os.cpu_count() or 1)
    seconds = tokens * 6 * parameters / flops
    if kiosk_min_share is not None and kiosk_min_share < 1:
        slowest = round(seconds / kiosk_min_share, 1)
        loaded: float | None = slowest
        note = (f"about {_duration(seconds)} with idle kiosks; the run waits while kiosks are answered, up to "
                f"{_duration(slowest)} if they never stop (it keeps at least {kiosk_min_share:.0%} of the time)")
    else:
        loaded, note = None, "serving priority is off: training and kiosks share the cores as equals"
    return Estimate(
        device=device, peak_memory_mb=round(peak_mb, 1),
        available_memory_mb=round(available, 1) if available is not None else None,
        steps=steps, tokens=tokens, seconds=round(seconds, 1),
        fits=available is None or peak_mb <= 0.9 * available, seconds_under_kiosk_load=loaded, note=note,
        memory_mb=breakdown,
    )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def as_dict(e: Estimate) -> dict[str, object]:
    return asdict(e)
