"""A Hugging Face folder (config.json, safetensors, tokenizer) as the GGUF writers read it: which
architecture it is in GGUF terms, its hyperparameters, its tensors (from the safetensors headers
only) and their GGUF names. Used by the appliance's own writer (gguf_write.py, gguf_meta.py) and the
adapter exporter (adapter.py).

llama-family q/k weights are stored with the rotary halves interleaved (`rope_permute`), because
ggml's RoPE for LLAMA rotates adjacent pairs while HF rotates the two halves. Qwen2 uses NEOX-style
RoPE in llama.cpp and is written as is.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from appliance.errors import ApplianceError

# HF architecture -> GGUF architecture. Mistral is a llama in GGUF terms.
ARCHITECTURES: dict[str, gguf.MODEL_ARCH] = {
    "LlamaForCausalLM": gguf.MODEL_ARCH.LLAMA,
    "MistralForCausalLM": gguf.MODEL_ARCH.LLAMA,
    "Qwen2ForCausalLM": gguf.MODEL_ARCH.QWEN2,
    "Qwen3ForCausalLM": gguf.MODEL_ARCH.QWEN3,  # Qwen2 plus q/k norms (attn_q_norm, attn_k_norm)
    "Gemma2ForCausalLM": gguf.MODEL_ARCH.GEMMA2,  # norms stored as 1 + weight; soft-capping, sliding window
}
# Gemma's RMSNorm multiplies by (1 + weight); llama.cpp's by weight: the writer adds the 1.
NORM_PLUS_ONE = {gguf.MODEL_ARCH.GEMMA2}


class ExportError(ApplianceError):
    status_code = 422


@dataclass
class HfModel:
    """What the exporter needs to know about a Hugging Face folder."""

    path: Path
    config: dict[str, Any]
    arch: gguf.MODEL_ARCH
    hf_arch: str
    files: list[Path]

    @property
    def n_layers(self) -> int:
        return int(self.config["num_hidden_layers"])

    @property
    def n_head(self) -> int:
        return int(self.config["num_attention_heads"])

    @property
    def n_head_kv(self) -> int:
        return int(self.config.get("num_key_value_heads") or self.n_head)

    @property
    def head_dim(self) -> int:
        return int(self.config.get("head_dim") or self.config["hidden_size"] // self.n_head)

    @property
    def rope(self) -> dict[str, Any]:
        params = dict(self.config.get("rope_parameters") or self.config.get("rope_scaling") or {})
        if "rope_theta" not in params and "rope_theta" in self.config:
            params["rope_theta"] = self.config["rope_theta"]
        if "type" in params and "rope_type" not in params:
            params["rope_type"] = params["type"]
        return params

    @property
    def gguf_name(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.arch]


def open_hf(path: Path) -> HfModel:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ExportError(f"{path}: no config.json; not a Hugging Face model folder")
    config = json.loads(config_file.read_text())
    hf_arch = (config.get("architectures") or ["?"])[0]
    if hf_arch not in ARCHITECTURES:
        supported = ", ".join(sorted(ARCHITECTURES))
        raise ExportError(f"architecture {hf_arch!r} is not supported by the GGUF exporter (supported: {supported})")
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ExportError(f"{path}: no *.safetensors weights")
    if not (path / "tokenizer.json").is_file():
        raise ExportError(f"{path}: no tokenizer.json")
    return HfModel(path, config, ARCHITECTURES[hf_arch], hf_arch, files)


def rope_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotate-half layout -> ggml's interleaved pairs (llama.cpp's LlamaModel.permute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute_for(model: HfModel, hf_name: str) -> int | None:
    """Heads to un-rotate for this weight, or None. Only llama-family q/k."""
    if model.arch != gguf.MODEL_ARCH.LLAMA:
        return None
    if hf_name.endswith(("q_proj.weight", "q_proj.bias")):
        return model.n_head
    if hf_name.endswith(("k_proj.weight", "k_proj.bias")):
        return model.n_head_kv
    return None


@functools.lru_cache(maxsize=8)
def _name_map(arch: gguf.MODEL_ARCH, n_layers: int) -> gguf.TensorNameMap:
    return gguf.get_tensor_name_map(arch, n_layers)  # builds ~10^6 strings: once per shape


def gguf_tensor_name(model: HfModel, hf_name: str) -> str:
    new = _name_map(model.arch, model.n_layers).get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if new is None:
        raise ExportError(f"tensor {hf_name!r} has no GGUF name for {model.gguf_name}")
    return new


def hf_tensors(model: HfModel) -> Iterator[tuple[str, Path, list[int], str]]:
    """(name, file, shape, dtype) of every tensor, from the safetensors headers only."""
    for file in model.files:
        with file.open("rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            yield name, file, list(info["shape"]), info["dtype"]
