"""Read what a model is from its files alone, without torch: GGUF metadata, HF config and
safetensors headers."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import ModelImportError

GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class ModelInfo:
    name: str
    architecture: str
    parameters: int
    context_length: int | None
    vocab_size: int | None
    has_chat_template: bool


def is_gguf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == GGUF_MAGIC


def inspect_gguf(path: Path) -> ModelInfo:
    import gguf  # numpy only; kept lazy so the API starts fast

    if not path.is_file() or not is_gguf(path):
        raise ModelImportError(f"{path}: not a GGUF file (bad magic)")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:  # the reader raises a variety of errors on truncated files
        raise ModelImportError(f"{path}: unreadable GGUF file: {exc}") from exc

    def field(key: str) -> object:
        f = reader.fields.get(key)
        return f.contents() if f is not None else None

    arch = str(field("general.architecture") or "")
    if not arch:
        raise ModelImportError(f"{path}: GGUF has no general.architecture")
    ctx = field(f"{arch}.context_length")
    vocab = field(f"{arch}.vocab_size")
    if vocab is None and (tokens := reader.fields.get("tokenizer.ggml.tokens")) is not None:
        vocab = len(tokens.data)
    return ModelInfo(
        name=str(field("general.name") or path.stem),
        architecture=arch,
        parameters=sum(int(t.n_elements) for t in reader.tensors),
        context_length=int(ctx) if isinstance(ctx, int) else None,
        vocab_size=int(vocab) if isinstance(vocab, int) else None,
        has_chat_template=bool(field("tokenizer.chat_template")),
    )


def safetensors_header(path: Path) -> dict[str, dict[str, object]]:
    """Tensor name -> {dtype, shape, data_offsets} from a safetensors header (8-byte length, then JSON),
    reading no weights."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ModelImportError(f"{path}: truncated safetensors file")
        (n,) = struct.unpack("<Q", raw)
        if n > 100 * 1024 * 1024:
            raise ModelImportError(f"{path}: implausible safetensors header size {n}")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelImportError(f"{path}: corrupt safetensors header: {exc}") from exc
    if not isinstance(header, dict):
        raise ModelImportError(f"{path}: corrupt safetensors header: not a JSON object")
    return {k: v for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}


def safetensors_parameters(path: Path) -> int:
    """Count parameters from a safetensors header, reading no weights."""
    total = 0
    for meta in safetensors_header(path).values():
        count = 1
        for dim in meta["shape"]:  # type: ignore[attr-defined]
            count *= int(dim)
        total += count
    return total


def read_chat_template(folder: Path) -> str | None:
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    cfg = folder / "tokenizer_config.json"
    if cfg.is_file():
        template = json.loads(cfg.read_text()).get("chat_template")
        if isinstance(template, str):
            return template
    return None


def inspect_hf(folder: Path) -> ModelInfo:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelImportError(f"{folder}: not a Hugging Face model folder (no config.json)")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelImportError(f"{config_path}: invalid JSON: {exc}") from exc
    if not (folder / "tokenizer.json").is_file():
        raise ModelImportError(f"{folder}: no tokenizer.json (a fast tokenizer is required)")
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        # Pickled .bin weights can run code when loaded; we only accept safetensors.
        raise ModelImportError(f"{folder}: no *.safetensors weights (pickled .bin files are not accepted)")
    archs = config.get("architectures") or [config.get("model_type", "unknown")]
    return ModelInfo(
        name=folder.name,
        architecture=str(archs[0]),
        parameters=sum(safetensors_parameters(w) for w in weights),
        context_length=config.get("max_position_embeddings"),
        vocab_size=config.get("vocab_size"),
        has_chat_template=read_chat_template(folder) is not None,
    )
