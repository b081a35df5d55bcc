"""The GGUF metadata the appliance's writer (gguf_write.py) puts before the tensors: general keys,
hyperparameters, and the tokenizer (vocabulary, merges, special tokens, chat template).

`tokenizer.ggml.pre` names the BPE pre-tokenizer; it is recognised by hashing how the tokenizer
splits a fixed text (CHECK_TEXT), the same test llama.cpp's converter uses.
"""

from __future__ import annotations

import json
from hashlib import sha256
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from appliance.export.gguf_hf import ExportError, HfModel, hf_tensors

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
    n_params = sum(int(np.prod(shape)) for _n, _f, shape, _d in hf_tensors(model))
    w.add_size_label(gguf.size_label(n_params, 0, n_params, 0))
    w.add_string("general.source.hf_architecture", model.hf_arch)
