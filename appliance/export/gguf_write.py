"""A Hugging Face folder (safetensors, tokenizer, chat template) written as GGUF with the `gguf`
package: no llama.cpp checkout, no network.

Tensors are streamed: the header and every tensor's info are written first (shapes and types come
from the safetensors headers), then each tensor is read, converted and written on its own, so peak
memory is about one tensor, not the model.

What llama.cpp needs and a naive writer gets wrong:
- llama-family q/k weights are stored with the rotary halves interleaved (`rope_permute`), because
  ggml's RoPE for LLAMA rotates adjacent pairs while HF rotates the two halves. Qwen2 uses
  NEOX-style RoPE in llama.cpp and is written as is.
- Tied embeddings: no `output.weight`; llama.cpp falls back to `token_embd.weight`.
- 1-D tensors (norms, biases) stay F32 whatever the output type, as llama.cpp's converter does.
- `tokenizer.ggml.pre` names the BPE pre-tokenizer; it is recognised by hashing how the tokenizer
  splits a fixed text, the same test llama.cpp's converter uses.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from safetensors import safe_open

from appliance.errors import ApplianceError

Progress = Callable[[float, str], None]

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

# Types written directly by this module; every other type goes through llama.cpp's quantizer.
DIRECT_TYPES: dict[str, tuple[gguf.GGMLQuantizationType, gguf.LlamaFileType]] = {
    "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (gguf.GGMLQuantizationType.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}

# sha256 of the token ids of CHECK_TEXT -> llama.cpp pre-tokenizer name (values from llama.cpp's
# convert_hf_to_gguf.py; only the families this exporter supports).
PRE_TOKENIZERS = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",
    "b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5": "deepseek-r1-qwen",
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
    "0fe1cf6eda062318a1af7270f3331a85c539a01778ff948e24388e949c5282f4": "gpt-2",
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",
    "9d032fcbd5501f4a38150912590928bfb36091efb5df11b8e2124b0390e3fb1e": "falcon3",
    "049ecf7629871e3041641907f3de7c733e4dbfdc736f57d882ba0b0845599754": "deepseek-llm",
}
CHECK_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) "
    "✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, "
    "'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)


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


def _hf_tensors(model: HfModel) -> Iterator[tuple[str, Path, list[int], str]]:
    """(name, file, shape, dtype) of every tensor, from the safetensors headers only."""
    for file in model.files:
        with file.open("rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            yield name, file, list(info["shape"]), info["dtype"]


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


# --- metadata ---------------------------------------------------------------------------------


def add_hparams(w: gguf.GGUFWriter, model: HfModel) -> None:
    c = model.config
    w.add_block_count(model.n_layers)
    if (ctx := c.get("max_position_embeddings")) is not None:
        w.add_context_length(int(ctx))
    w.add_embedding_length(int(c["hidden_size"]))
    w.add_feed_forward_length(int(c["intermediate_size"]))
    w.add_head_count(model.n_head)
    w.add_head_count_kv(model.n_head_kv)
    w.add_layer_norm_rms_eps(float(c.get("rms_norm_eps", 1e-6)))
    rope = model.rope
    if "rope_theta" in rope:
        w.add_rope_freq_base(float(rope["rope_theta"]))
    rope_type, factor = rope.get("rope_type"), rope.get("factor")
    if rope_type == "linear" and factor:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(factor))
    elif rope_type == "yarn" and factor:
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(float(factor))
        w.add_rope_scaling_orig_ctx_len(int(rope["original_max_position_embeddings"]))
    w.add_vocab_size(int(c["vocab_size"]))
    w.add_rope_dimension_count(model.head_dim)
    w.add_key_length(model.head_dim)
    w.add_value_length(model.head_dim)
    if model.arch == gguf.MODEL_ARCH.GEMMA2:  # llama.cpp scales queries by 1/sqrt(head_dim) for these
        if float(c.get("query_pre_attn_scalar") or model.head_dim) != model.head_dim:
            raise ExportError("Gemma 2 whose query_pre_attn_scalar is not head_dim (the 27B shape) is not supported")
        w.add_attn_logit_softcapping(float(c.get("attn_logit_softcapping") or 0.0))
        w.add_final_logit_softcapping(float(c.get("final_logit_softcapping") or 0.0))
        w.add_sliding_window(int(c.get("sliding_window") or 4096))


def add_tokenizer(w: gguf.GGUFWriter, model: HfModel, chat_template: str | None = None) -> None:
    """`chat_template` (a run's recorded template) is written as `tokenizer.chat_template` in place of the
    folder's own, so llama.cpp renders prompts as training did."""
    tok_json = json.loads((model.path / "tokenizer.json").read_text())
    kind = tok_json.get("model", {}).get("type")
    if kind != "BPE" or tok_json["model"].get("byte_fallback"):
        _add_llama_hf_vocab(w, model)
    else:
        _add_gpt2_vocab(w, model, tok_json)
    special = gguf.SpecialVocab(model.path, load_merges=kind == "BPE" and not tok_json["model"].get("byte_fallback"),
                                n_vocab=int(model.config["vocab_size"]))
    if chat_template is not None:
        special.chat_template = chat_template
    if "bos" not in special.add_special_token:
        # What the tokenizer really does, so llama.cpp tokenizes prompts as training did.
        special.add_special_token["bos"] = _adds_bos(model.path, special.special_token_ids.get("bos"))
    special.add_to_gguf(w, quiet=True)


def _adds_bos(path: Path, bos_id: int | None) -> bool:
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(path / "tokenizer.json")).encode("a").ids
    return bos_id is not None and bool(ids) and ids[0] == bos_id


def pre_tokenizer(model_path: Path) -> str:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_path / "tokenizer.json"))
    digest = sha256(str(tok.encode(CHECK_TEXT).ids).encode()).hexdigest()
    name = PRE_TOKENIZERS.get(digest)
    if name is None:
        raise ExportError(
            f"{model_path / 'tokenizer.json'}: BPE pre-tokenizer not recognised (hash {digest[:16]}...); "
            f"supported: {', '.join(sorted(set(PRE_TOKENIZERS.values())))}"
        )
    return name


def _add_gpt2_vocab(w: gguf.GGUFWriter, model: HfModel, tok_json: dict[str, Any]) -> None:
    vocab: dict[str, int] = dict(tok_json["model"]["vocab"])
    added = {t["id"]: t for t in tok_json.get("added_tokens", [])}
    for t in added.values():
        vocab[t["content"]] = t["id"]
    reverse = {i: s for s, i in vocab.items()}
    n_vocab = int(model.config["vocab_size"])
    tokens: list[str] = []
    types: list[int] = []
    for i in range(n_vocab):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(reverse[i])
            special = added[i].get("special") or _looks_special(reverse[i])
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.NORMAL)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre_tokenizer(model.path))
    w.add_token_list(tokens)
    w.add_token_types(types)


def _looks_special(token: str) -> bool:
    return (token.startswith("<|") and token.endswith("|>")) or (token.startswith("<") and token.endswith(">")
                                                                  and token[1:-1].isalnum() and len(token) < 12)


def _add_llama_hf_vocab(w: gguf.GGUFWriter, model: HfModel) -> None:
    """SentencePiece-style vocabularies (Llama 2, TinyLlama, Mistral) from tokenizer.json."""
    try:
        vocab = gguf.LlamaHfVocab(model.path)
    except Exception as exc:
        raise ExportError(f"{model.path / 'tokenizer.json'}: cannot read the vocabulary: {exc}") from exc
    tokens, scores, types = [], [], []
    for text, score, ttype in vocab.all_tokens():
        tokens.append(text)
        scores.append(score)
        types.append(ttype)
    n_vocab = int(model.config["vocab_size"])
    for i in range(len(tokens), n_vocab):
        tokens.append(f"[PAD{i}]".encode())
        scores.append(-1000.0)
        types.append(gguf.TokenType.UNUSED)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)


def add_general(w: gguf.GGUFWriter, model: HfModel, name: str) -> None:
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name)
    n_params = sum(int(np.prod(shape)) for _n, _f, shape, _d in _hf_tensors(model))
    w.add_size_label(gguf.size_label(n_params, 0, n_params, 0))
    w.add_string("general.source.hf_architecture", model.hf_arch)


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
    for name, file, shape, _dtype in _hf_tensors(model):
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
