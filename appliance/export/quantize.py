"""Quantized types made by llama.cpp's own quantizer, through llama-cpp-python's binding: the same
code `llama-quantize` runs, without a llama.cpp checkout. K-quants need rows divisible by 256;
llama.cpp falls back to a legacy type for tensors that are not (e.g. SmolLM2-135M's width 576)."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from appliance.export.gguf_hf import ExportError
from appliance.export.gguf_write import DIRECT_TYPES

# type -> name of the llama_ftype constant in llama_cpp
QUANT_TYPES: dict[str, str] = {
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "q4_1": "LLAMA_FTYPE_MOSTLY_Q4_1",
    "q5_0": "LLAMA_FTYPE_MOSTLY_Q5_0",
    "q5_1": "LLAMA_FTYPE_MOSTLY_Q5_1",
    "q2_k": "LLAMA_FTYPE_MOSTLY_Q2_K",
    "q3_k_s": "LLAMA_FTYPE_MOSTLY_Q3_K_S",
    "q3_k_m": "LLAMA_FTYPE_MOSTLY_Q3_K_M",
    "q3_k_l": "LLAMA_FTYPE_MOSTLY_Q3_K_L",
    "q4_k_s": "LLAMA_FTYPE_MOSTLY_Q4_K_S",
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q5_k_s": "LLAMA_FTYPE_MOSTLY_Q5_K_S",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "iq4_nl": "LLAMA_FTYPE_MOSTLY_IQ4_NL",
}

ALL_TYPES = sorted(DIRECT_TYPES) + sorted(QUANT_TYPES)


def check_type(out_type: str) -> str:
    t = out_type.lower()
    if t not in DIRECT_TYPES and t not in QUANT_TYPES:
        raise ExportError(f"unknown GGUF type {out_type!r}; choose one of: {', '.join(ALL_TYPES)}")
    return t


def quantize(src: Path, dst: Path, out_type: str, threads: int | None = None) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_TYPES[out_type])
    params.nthread = threads or os.cpu_count() or 1
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise ExportError(f"llama.cpp's quantizer failed ({rc}) making {out_type} from {src.name}")
