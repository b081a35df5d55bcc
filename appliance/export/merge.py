"""The LoRA adapter merged into the full-precision base (never into a 4-bit copy: QLoRA trains
against NF4 weights, but merging into them would bake the rounding in twice)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "chat_template.json",
                   "special_tokens_map.json", "generation_config.json", "tokenizer.model")


def load_base(hf_dir: Path) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()


def merge(base_hf: Path, adapter_dir: Path) -> Any:
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_base(base_hf), str(adapter_dir))
    return model.merge_and_unload().eval()


def save_merged(model: Any, base_hf: Path, out_dir: Path) -> None:
    model.save_pretrained(out_dir, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (base_hf / name).is_file() and not (out_dir / name).exists():
            shutil.copy2(base_hf / name, out_dir / name)
