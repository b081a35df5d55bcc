"""Load the base model (full precision, or 4/8-bit with bitsandbytes) and wrap it with LoRA."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from appliance.trainer.config import TrainConfig
from appliance.trainer.kernels import patch_model


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def compute_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype:
    # On CPU fp32 is fastest here (measured); half precision is for CUDA.
    if device.type != "cuda":
        return torch.float32
    if cfg.bf16:
        return torch.bfloat16
    if cfg.fp16:
        return torch.float16
    return torch.float32


def load(hf_dir: Path, cfg: TrainConfig, device: torch.device) -> Any:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = compute_dtype(cfg, device)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if cfg.quantization_bit == 4:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
    elif cfg.quantization_bit == 8:
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    if cfg.quantization_bit:
        kwargs["device_map"] = {"": device.index or 0} if device.type == "cuda" else {"": "cpu"}
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), **kwargs)
    if not cfg.quantization_bit:
        model.to(device)  # type: ignore[arg-type]
    model.config.use_cache = False
    # Non-reentrant checkpointing: no need to make the (frozen) embeddings' output require grad.
    ckpt_kwargs = {"use_reentrant": False}
    if cfg.quantization_bit:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.gradient_checkpointing, gradient_checkpointing_kwargs=ckpt_kwargs
        )
    elif cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ckpt_kwargs)
    # Seeded here: LoRA's A matrices are initialized at random.
    torch.manual_seed(cfg.seed)
    lora = LoraConfig(
        r=cfg.lora_rank, lora_alpha=cfg.alpha, lora_dropout=cfg.lora_dropout,
        target_modules=cfg.targets, task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, lora)
    # The trainer's own MLP, norm and LoRA-projection functions (trainer/kernels.py), where a module matches.
    patch_model(peft_model)
    return peft_model


def parts(peft_model: Any) -> tuple[Any, Any]:
    """(decoder stack, lm_head): the loss applies lm_head only where there are labels."""
    base = peft_model.get_base_model()
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else base.model
    return decoder, base.get_output_embeddings()
