"""Adapters trained elsewhere: a PEFT LoRA folder (LLaMA-Factory's, Unsloth's or peft's own output) checked
against a registered base model and registered as an `adapter` artifact, which export and deployment
then treat as a run's adapter (jobs/exports.py `adapter_id`). Torch-free: only JSON and safetensors
headers are read.

A full disk while copying is a NoSpaceError (507) and keeps nothing.

Checked before anything is copied, each refusal a ModelImportError (422) saying what does not match:
- `adapter_config.json` says LoRA (`peft_type: LORA`), not DoRA, and a rank `r`;
- `adapter_model.safetensors` (pickled `adapter_model.bin` is refused: loading it can run code);
- every lora_A / lora_B pair names a linear module the base has, with lora_A `[r, in]` and lora_B
  `[out, r]` where the base weight is `[out, in]` and `r` is the config's rank (or its rank_pattern);
- the embeddings carry no LoRA (a merged GGUF could, but a GGUF adapter cannot).
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlmodel import Session

from appliance import fsutil
from appliance.db import events
from appliance.db.engine import write_session
from appliance.db.tables import Artifact, utcnow
from appliance.errors import ModelImportError
from appliance.models.inspect import read_chat_template, safetensors_header
from appliance.models.registry import get_model
from appliance.paths import Paths

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# What else of a trainer's output folder is worth keeping: the tokenizer and the template it trained with.
EXTRA_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")
LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")


@dataclass(frozen=True)
class AdapterInfo:
    rank: int
    alpha: float
    modules: list[str]  # the base's module paths the adapter changes
    targets: list[str]  # their leaf names (q_proj, ...)


def _base_shapes(base_hf: Path) -> dict[str, list[int]]:
    shapes: dict[str, list[int]] = {}
    for file in sorted(base_hf.glob("*.safetensors")):
        for name, meta in safetensors_header(file).items():
            if name.endswith(".weight"):
                shapes[name.removesuffix(".weight")] = [int(d) for d in meta["shape"]]  # type: ignore[attr-defined]
    config = json.loads((base_hf / "config.json").read_text())
    embed = next((k for k in shapes if k.endswith("embed_tokens")), None)
    if "lm_head" not in shapes and embed is not None and config.get("tie_word_embeddings", True):
        shapes["lm_head"] = shapes[embed]
    return shapes


def check_adapter(adapter_dir: Path, base_hf: Path, base_id: str) -> AdapterInfo:
    """What the adapter is, once it is known to fit the base; ModelImportError naming the first mismatches."""
    config_file, weights = adapter_dir / ADAPTER_FILES[0], adapter_dir / ADAPTER_FILES[1]
    if not config_file.is_file():
        raise ModelImportError(f"{adapter_dir}: no adapter_config.json; not a PEFT adapter folder")
    if not weights.is_file():
        pickled = " (adapter_model.bin is not accepted: pickles can run code)" if (
            adapter_dir / "adapter_model.bin").exists() else ""
        raise ModelImportError(f"{adapter_dir}: no adapter_model.safetensors{pickled}")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise ModelImportError(f"{config_file}: invalid JSON: {exc}") from exc
    if str(config.get("peft_type", "")).upper() != "LORA" or config.get("use_dora"):
        raise ModelImportError(f"{adapter_dir}: a {config.get('peft_type')} adapter"
                               f"{' with DoRA' if config.get('use_dora') else ''}; only plain LoRA is supported")
    rank, patterns = int(config.get("r") or 0), dict(config.get("rank_pattern") or {})
    base = _base_shapes(base_hf)
    pairs: dict[str, dict[str, list[int]]] = {}
    for name, meta in safetensors_header(weights).items():
        if "lora_embedding" in name or ("embed_tokens" in name and "lora_" in name):
            raise ModelImportError(f"{adapter_dir}: a LoRA on the embeddings ({name}) cannot be exported as GGUF")
        m = LORA_KEY.match(name)
        if m is not None:
            pairs.setdefault(m["module"], {})[m["ab"]] = [int(d) for d in meta["shape"]]  # type: ignore[attr-defined]
    if not pairs:
        raise ModelImportError(f"{weights}: no lora_A/lora_B weights")
    problems = []
    for module, ab in sorted(pairs.items()):
        want_r = next((int(r) for p, r in patterns.items() if module == p or module.endswith("." + p)), rank)
        shape = base.get(module)
        if shape is None or len(shape) != 2:
            problems.append(f"{module}: {base_id} has no linear layer of that name")
        elif "A" not in ab or "B" not in ab:
            problems.append(f"{module}: lora_A or lora_B is missing")
        elif ab["A"] != [want_r, shape[1]] or ab["B"] != [shape[0], want_r]:
            problems.append(f"{module}: lora_A {ab['A']} / lora_B {ab['B']} do not fit rank {want_r} on the "
                            f"base weight {shape} (lora_A must be [r, {shape[1]}], lora_B [{shape[0]}, r])")
        if len(problems) >= 3:
            break
    if problems:
        raise ModelImportError(f"the adapter in {adapter_dir} does not match base model {base_id}: "
                               + "; ".join(problems))
    modules = sorted(pairs)
    return AdapterInfo(rank=rank, alpha=float(config.get("lora_alpha") or rank), modules=modules,
                       targets=sorted({m.rsplit(".", 1)[-1] for m in modules}))


def import_adapter(*, engine: Engine, paths: Paths, source: Path, base_model_id: str,
                   name: str | None = None) -> Artifact:
    """Check `source` against the base and register it as a ready `adapter` artifact (no run). Raises
    ModelImportError (422) on a mismatch, NotFoundError (404) for an unknown base."""
    try:
        source = source.expanduser().resolve()
        is_dir = source.is_dir()
    except (OSError, ValueError) as exc:  # a NUL byte, a path too long, a loop of links
        raise ModelImportError(f"{source}: not a usable path: {exc}") from exc
    if not is_dir:
        raise ModelImportError(f"{source}: not a folder (a PEFT adapter is a folder with adapter_config.json)")
    with Session(engine) as session:
        model = get_model(session, base_model_id)
        if model.hf_path is None:
            raise ModelImportError(f"model {model.id} has no full-precision (HF) copy to apply an adapter to")
        base_hf = paths.resolve(model.hf_path)
    info = check_adapter(source, base_hf, base_model_id)
    art_id = f"art_{uuid.uuid4().hex[:12]}"
    paths.ensure()
    with fsutil.refuse_when_full(paths.tmp), fsutil.temp_path(paths.tmp) as work:  # 507, nothing kept
        work.mkdir()
        for f in (*ADAPTER_FILES, *EXTRA_FILES):
            if (source / f).is_file():
                shutil.copy2(source / f, work / f)
        final = paths.artifact_dir(art_id)
        final.parent.mkdir(parents=True, exist_ok=True)
        fsutil.publish(work, final)
    weights = final / ADAPTER_FILES[1]
    template = read_chat_template(final)
    art = Artifact(id=art_id, kind="adapter", type="safetensors", status="ready", base_model_id=base_model_id,
                   name=name or source.name, path=paths.rel(final), size=weights.stat().st_size,
                   sha256=fsutil.sha256_file(weights), progress=1.0, stage="done", finished_at=utcnow(),
                   spec_json=json.dumps({"imported_from": str(source), "rank": info.rank, "alpha": info.alpha,
                                         "targets": info.targets, "chat_template": template}))
    with write_session(engine) as session:
        session.add(art)
        events.record(session, kind="artifact.imported", entity_type="artifact", entity_id=art_id,
                      message=f"adapter {art.name} imported for {base_model_id}: LoRA r={info.rank} on "
                              f"{len(info.modules)} modules ({', '.join(info.targets)})")
        session.flush()
        session.expunge(art)
    return art
