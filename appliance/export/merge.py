"""The LoRA adapter merged into the full-precision base (never into a 4-bit copy: QLoRA trains
against NF4 weights, but merging into them would bake the rounding in twice)."""

from __future__ import annotations

import json
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


def save_merged(model: Any, base_hf: Path, out_dir: Path, chat_template: str | None = None) -> None:
    """`chat_template`: the template the run trained with; it replaces the base's own, in
    tokenizer_config.json and chat_template.jinja alike (readers differ in which they prefer)."""
    model.save_pretrained(out_dir, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (base_hf / name).is_file() and not (out_dir / name).exists():
            shutil.copy2(base_hf / name, out_dir / name)
    if chat_template is None:
        return
    (out_dir / "chat_template.json").unlink(missing_ok=True)
    (out_dir / "chat_template.jinja").write_text(chat_template)
    config_file = out_dir / "tokenizer_config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    config["chat_template"] = chat_template
    config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False))
