"""A peft LoRA adapter written as a GGUF adapter (`general.type = adapter`), which llama.cpp applies
on top of the base GGUF (`--lora`, llama-cpp-python's `lora_path`).

Tensors are `<gguf weight name>.lora_a` / `.lora_b` as peft stores them (A: r x in, B: out x r);
the q/k RoPE permutation of llama-family weights permutes output rows, so it applies to B only.
rsLoRA's scale alpha/sqrt(r) is written as the equivalent alpha for llama.cpp's alpha/r.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from safetensors import safe_open

from appliance.export.gguf_hf import ExportError, gguf_tensor_name, open_hf, permute_for, rope_permute

PREFIX = "base_model.model."


def read_adapter(adapter_dir: Path) -> tuple[dict[str, Any], Path]:
    cfg_file, weights = adapter_dir / "adapter_config.json", adapter_dir / "adapter_model.safetensors"
    if not cfg_file.is_file() or not weights.is_file():
        raise ExportError(f"{adapter_dir}: the adapter is missing (adapter_config.json, adapter_model.safetensors)")
    try:
        cfg = json.loads(cfg_file.read_text())
    except ValueError as exc:
        raise ExportError(f"{cfg_file}: not valid JSON ({exc})") from exc
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ExportError(f"{cfg_file}: peft_type {cfg.get('peft_type')!r} is not LoRA")
    return cfg, weights


def write_adapter_gguf(
    adapter_dir: Path, base_hf_dir: Path, out: Path, *, name: str, out_type: str = "f32"
) -> dict[str, Any]:
    cfg, weights = read_adapter(adapter_dir)
    model = open_hf(base_hf_dir)
    rank, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    if cfg.get("use_rslora"):
        alpha = alpha * math.sqrt(rank)
    if cfg.get("modules_to_save"):
        raise ExportError(
            f"{adapter_dir}: modules_to_save ({cfg['modules_to_save']}) cannot be expressed as a GGUF LoRA")
    dtype = {"f32": np.float32, "f16": np.float16}.get(out_type)
    if dtype is None:
        raise ExportError(f"a GGUF adapter is written as f32 or f16, not {out_type!r}")
    pairs: dict[str, dict[str, np.ndarray]] = {}
    try:
        with safe_open(str(weights), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118  (safe_open has no __iter__)
                if "lora_embedding" in key or "lora_magnitude" in key:
                    raise ExportError(
                        f"{weights}: tensor {key} (embedding LoRA / DoRA) is not supported in GGUF adapters")
                part = "a" if ".lora_A." in key else "b" if ".lora_B." in key else None
                if part is None:
                    raise ExportError(f"{weights}: unexpected tensor {key}")
                base = key.removeprefix(PREFIX).split(".lora_")[0] + ".weight"
                pairs.setdefault(base, {})[part] = f.get_tensor(key).float().numpy()
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"{weights}: cannot read the adapter ({exc})") from exc
    w = gguf.GGUFWriter(out, model.gguf_name)
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_name(name)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    for base in sorted(pairs):
        ab = pairs[base]
        if set(ab) != {"a", "b"}:
            raise ExportError(f"{weights}: {base} has lora_{'A' if 'a' not in ab else 'B'} missing")
        a, b = ab["a"], ab["b"]
        if (heads := permute_for(model, base)) is not None:
            b = rope_permute(b, heads)
        dest = gguf_tensor_name(model, base)
        w.add_tensor(dest + ".lora_a", a.astype(dtype))
        w.add_tensor(dest + ".lora_b", b.astype(dtype))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {"architecture": model.gguf_name, "modules": len(pairs), "rank": rank, "alpha": alpha, "type": out_type}
