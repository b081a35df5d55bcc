"""A LoRA adapter with random weights for the bundled model, for the benchmarks and the tests that
serve adapters (bench/adapters.py, tests/test_adapters.py): peft's own init leaves B zero, so an
adapter straight from get_peft_model changes nothing; A and B drawn from N(0, scale^2) make one that
does (a fine-tune's magnitude at scale 0.02). Saved as a peft folder with the base's tokenizer files."""

from __future__ import annotations

import shutil
from pathlib import Path

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]  # every linear layer
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def random_adapter(base_hf: Path, out: Path, *, rank: int, scale: float, seed: int) -> Path:
    """`out` as a peft LoRA folder (rank `rank`, alpha 2 * rank, on TARGETS) over the HF model in `base_hf`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_hf, dtype=torch.float32),
                           LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS, task_type="CAUSAL_LM"))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn_like(param) * scale)
    model.save_pretrained(str(out))
    for name in TOKENIZER_FILES:
        if (base_hf / name).is_file():
            shutil.copy2(base_hf / name, out / name)
    return out
