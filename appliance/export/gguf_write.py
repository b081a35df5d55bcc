"""A Hugging Face folder (safetensors, tokenizer, chat template) written as GGUF with the `gguf`
package: no llama.cpp checkout, no network.

Tensors are streamed: the header and every tensor's info are written first (shapes and types come
from the safetensors headers), then each tensor is read, converted and written on its own, so peak
memory is about one tensor, not the model.

What llama.cpp needs and a naive writer gets wrong:
- llama-family q/k weights are stored with the rotary halves interleaved (`gguf_hf.rope_permute`),
  because ggml's RoPE for LLAMA rotates adjacent pairs while HF rotates the two halves. Qwen2 uses
  NEOX-style RoPE in llama.cpp and is written as is.
- Tied embeddings: no `output.weight`; llama.cpp falls back to `token_embd.weight`.
- 1-D tensors (norms, biases) stay F32 whatever the output type, as llama.cpp's converter does.
- `tokenizer.ggml.pre` names the BPE pre-tokenizer (gguf_meta.py).

The folder is read by gguf_hf.py; the metadata (general keys, hyperparameters, tokenizer) is
gguf_meta.py's; this module plans, converts and writes the tensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from safetensors import safe_open

from appliance.export.gguf_hf import (
    NORM_PLUS_ONE,
    ExportError,
    HfModel,
    gguf_tensor_name,
    hf_tensors,
    open_hf,
    permute_for,
    rope_permute,
)
from appliance.export.gguf_meta import add_general, add_hparams, add_tokenizer

Progress = Callable[[float, str], None]

# Types written directly by this module; every other type goes through llama.cpp's quantizer.
DIRECT_TYPES: dict[str, tuple[gguf.GGMLQuantizationType, gguf.LlamaFileType]] = {
    "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (gguf.GGMLQuantizationType.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}

def _load(file: Path, name: str, qtype: gguf.GGMLQuantizationType, plus_one: bool = False) -> np.ndarray:
    with safe_open(str(file), framework="pt") as f:
        t = f.get_tensor(name)
    if plus_one and name.endswith("norm.weight"):
        t = t.float() + 1
    # F16 output: let torch halve it (several times faster than numpy's astype).
    return (t.half() if qtype == gguf.GGMLQuantizationType.F16 else t.float()).numpy()


def _skip(name: str, model: HfModel) -> bool:
    if name.endswith("rotary_emb.inv_freq"):
        return True
    tied = model.config.get("tie_word_embeddings", model.arch == gguf.MODEL_ARCH.GEMMA2)  # Gemma: tied by default
    return bool(name == "lm_head.weight" and tied)


def _out_type(qtype: gguf.GGMLQuantizationType, shape: list[int]) -> gguf.GGMLQuantizationType:
    if len(shape) <= 1:
        return gguf.GGMLQuantizationType.F32
    if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.BF16):
        return qtype
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    return qtype if shape[-1] % block == 0 else gguf.GGMLQuantizationType.F16


def _encode(data: np.ndarray, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    if qtype == gguf.GGMLQuantizationType.F32:
        return data.astype(np.float32, copy=False)
    if qtype == gguf.GGMLQuantizationType.F16:
        return data.astype(np.float16, copy=False)
    return gguf.quants.quantize(data.astype(np.float32, copy=False), qtype)


def _llama3_rope_factors(model: HfModel) -> np.ndarray | None:
    rope = model.rope
    if str(rope.get("rope_type", "")).lower() != "llama3":
        return None
    base, dim = float(rope.get("rope_theta", 10000.0)), model.head_dim
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor, low, high = rope.get("factor", 8.0), rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old_ctx = rope.get("original_max_position_embeddings", 8192)
    low_wl, high_wl = old_ctx / low, old_ctx / high
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wl:
            out.append(1.0)
        elif wavelen > low_wl:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


# --- writing ----------------------------------------------------------------------------------


@dataclass
class _Planned:
    gguf_name: str
    hf_name: str | None
    file: Path | None
    shape: list[int]
    qtype: gguf.GGMLQuantizationType
    extra: np.ndarray | None = None


def plan_tensors(model: HfModel, qtype: gguf.GGMLQuantizationType) -> list[_Planned]:
    planned: list[_Planned] = []
    for name, file, shape, _dtype in hf_tensors(model):
        if _skip(name, model):
            continue
        new = gguf_tensor_name(model, name)
        planned.append(_Planned(new, name, file, shape, _out_type(qtype, shape)))
    if (factors := _llama3_rope_factors(model)) is not None:
        planned.append(_Planned("rope_freqs.weight", None, None, list(factors.shape),
                                gguf.GGMLQuantizationType.F32, factors))
    planned.sort(key=lambda p: _order(p.gguf_name))
    return planned


def _order(name: str) -> tuple[int, int, str]:
    parts = name.split(".")
    if parts[0] == "blk":
        return (1, int(parts[1]), name)
    return (0 if name.startswith("token_embd") else 2, 0, name)


def _nbytes(shape: list[int], qtype: gguf.GGMLQuantizationType) -> int:
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    n = int(np.prod(shape)) if shape else 1
    return n // block * size


def write_gguf(
    hf_dir: Path, out: Path, out_type: str, *, name: str, progress: Progress | None = None,
    chat_template: str | None = None,
) -> dict[str, Any]:
    """Write `hf_dir` as a GGUF of `out_type` (one of DIRECT_TYPES) at `out`. Returns a summary."""
    if out_type not in DIRECT_TYPES:
        raise ExportError(f"type {out_type!r} is not written directly; choose one of {sorted(DIRECT_TYPES)}")
    model = open_hf(hf_dir)
    qtype, ftype = DIRECT_TYPES[out_type]
    planned = plan_tensors(model, qtype)
    w = gguf.GGUFWriter(out, model.gguf_name)
    add_general(w, model, name)
    add_hparams(w, model)
    w.add_file_type(int(ftype))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_tokenizer(w, model, chat_template)
    for p in planned:
        # Element shape in numpy order; raw_dtype says how the bytes are laid out (a non-uint8 numpy
        # dtype keeps the writer from reading the shape as a byte shape).
        raw = None if p.qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16) else p.qtype
        w.add_tensor_info(p.gguf_name, p.shape, _np_dtype(p.qtype), _nbytes(p.shape, p.qtype), raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    total = sum(_nbytes(p.shape, p.qtype) for p in planned)
    done = 0
    for p in planned:
        if p.extra is not None:
            data = p.extra
        else:
            assert p.file is not None and p.hf_name is not None
            data = _load(p.file, p.hf_name, p.qtype, model.arch in NORM_PLUS_ONE)
            if (heads := permute_for(model, p.hf_name)) is not None:
                data = rope_permute(data, heads)
        encoded = _encode(data, p.qtype)
        w.write_tensor_data(encoded)
        done += encoded.nbytes
        if progress is not None:
            progress(done / total, p.gguf_name)
    w.flush()
    w.close()
    return {"architecture": model.gguf_name, "tensors": len(planned), "type": out_type}


def _np_dtype(qtype: gguf.GGMLQuantizationType) -> np.dtype[Any]:
    if qtype == gguf.GGMLQuantizationType.F32:
        return np.dtype(np.float32)
    if qtype == gguf.GGMLQuantizationType.F16:
        return np.dtype(np.float16)
    return np.dtype(np.float32)  # quantized: the layout is in raw_dtype
