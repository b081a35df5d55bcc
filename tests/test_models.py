"""The base-model registry on the real bundled model: import, listing, dedup, bad imports."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from appliance.bootstrap import Runtime
from appliance.errors import ModelImportError
from appliance.fsutil import sha256_file
from appliance.models.registry import BUNDLED_ID, bundled_gguf, import_model, list_models

SMOLLM2_PARAMETERS = 134_515_008  # from the GGUF's tensor shapes; embeddings are tied


def test_bundled_model_is_registered_with_its_facts(client: TestClient, runtime: Runtime) -> None:
    [model] = client.get("/api/models").json()
    assert model["id"] == BUNDLED_ID
    assert (model["architecture"], model["parameters"]) == ("llama", SMOLLM2_PARAMETERS)
    assert (model["family"], model["exporter"]) == ("Llama 3.x / SmolLM2", "writer")
    assert (model["context_length"], model["vocab_size"], model["chat_template"]) == (8192, 49152, True)
    assert model["source"] == "bundled" and model["has_gguf"]
    source = bundled_gguf()
    assert source is not None
    assert model["sha256"] == sha256_file(source)
    files = {f["path"]: f for f in model["files"]}
    assert {"model.gguf", "hf/model.safetensors", "hf/tokenizer.json", "hf/config.json"} <= set(files)
    folder = runtime.paths.model_dir(BUNDLED_ID)
    for path, f in files.items():
        assert (folder / path).stat().st_size == f["size"]
    assert sha256_file(folder / "hf" / "tokenizer.json") == files["hf/tokenizer.json"]["sha256"]
    assert files["model.gguf"]["size"] == model["gguf_size"]
    config = json.loads((folder / "hf" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["dtype"] == "float32"
    assert "quantization_config" not in config
    assert client.get(f"/api/models/{BUNDLED_ID}").json()["id"] == BUNDLED_ID
    assert client.get("/api/models/nope").status_code == 404


def test_importing_the_same_file_again_is_the_same_model(runtime: Runtime) -> None:
    source = bundled_gguf()
    assert source is not None
    again = import_model(engine=runtime.engine, paths=runtime.paths, source=source, name="another name")
    assert again.id == BUNDLED_ID
    with Session(runtime.engine) as session:
        assert len(list_models(session)) == 1


def test_import_of_a_hugging_face_folder(runtime: Runtime, tmp_path: Path) -> None:
    folder = tmp_path / "my-llama"
    shutil.copytree(runtime.paths.model_dir(BUNDLED_ID) / "hf", folder)
    (folder / "pytorch_model.bin").write_bytes(b"pickles are never copied")
    model = import_model(engine=runtime.engine, paths=runtime.paths, source=folder)
    assert (model.id, model.source, model.architecture) == ("my-llama", "hf", "LlamaForCausalLM")
    assert (model.parameters, model.context_length, model.has_chat_template) == (SMOLLM2_PARAMETERS, 8192, True)
    assert model.gguf_path is None
    stored = runtime.paths.model_dir(model.id) / "hf"
    assert (stored / "model.safetensors").exists() and not (stored / "pytorch_model.bin").exists()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: (d / "notes.txt").write_text("hello") and d / "notes.txt", "neither a GGUF file"),
        (lambda d: d / "missing.gguf", "no such file"),
        (lambda d: (d / "empty").mkdir() or d / "empty", "no config.json"),
        (lambda d: (d / "bad.gguf").write_bytes(b"GGUF" + b"\0" * 12) and d / "bad.gguf", "unreadable GGUF"),
    ],
    ids=["text file", "missing", "empty folder", "truncated gguf"],
)
def test_bad_imports_are_refused_and_record_nothing(runtime: Runtime, tmp_path: Path, make, message: str) -> None:  # type: ignore[no-untyped-def]
    path = make(tmp_path)
    with pytest.raises(ModelImportError, match=message):
        import_model(engine=runtime.engine, paths=runtime.paths, source=path)
    with Session(runtime.engine) as session:
        assert [m.id for m in list_models(session)] == [BUNDLED_ID]
    assert sorted(p.name for p in runtime.paths.models.iterdir()) == [BUNDLED_ID]
    assert list(runtime.paths.tmp.iterdir()) == []


def test_hf_folder_without_safetensors_is_refused(runtime: Runtime, tmp_path: Path) -> None:
    folder = tmp_path / "pickled"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(runtime.paths.model_dir(BUNDLED_ID) / "hf" / name, folder / name)
    with pytest.raises(ModelImportError, match="safetensors"):
        import_model(engine=runtime.engine, paths=runtime.paths, source=folder)
