"""GGUF export end to end, through the API and the real worker: the bundled model and a fine-tuned
adapter to F16, Q8_0, Q4_0 and a GGUF adapter; tiny local Qwen2 and Llama (K-quants); every file
loaded by llama-cpp-python and compared with torch; bad requests refused; a full disk leaves
nothing behind."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import tiny_models
from conftest import clone_data_dir, make_settings
from fastapi.testclient import TestClient
from sqlmodel import Session

from appliance.api.app import create_app
from appliance.bootstrap import Runtime, bootstrap
from appliance.db.tables import Artifact
from appliance.errors import ModelImportError
from appliance.models.registry import BUNDLED_ID, import_model
from appliance.worker.worker import Worker


class Appliance:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.runtime: Runtime = bootstrap(make_settings(data_dir))
        self.client = TestClient(create_app(runtime=self.runtime))
        self.client.headers["Authorization"] = "Bearer test-admin-token"
        self.worker = Worker(self.runtime)

    def drive(self, done: Any, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, "timed out"
            self.worker.run_once()
            time.sleep(0.05)

    def export(self, expect: str = "ready", **body: Any) -> dict[str, Any]:
        res = self.client.post("/api/artifacts/export", json=body)
        assert res.status_code == 202, res.text
        art_id = res.json()["id"]
        assert res.json()["status"] in ("pending", "ready")
        self.drive(lambda: self.artifact(art_id)["status"] in ("ready", "failed"))
        art = self.artifact(art_id)
        assert art["status"] == expect, art
        return art

    def artifact(self, art_id: str) -> dict[str, Any]:
        return dict(self.client.get(f"/api/artifacts/{art_id}").json())

    def file(self, art: dict[str, Any]) -> Path:
        return self.data_dir / "artifacts" / art["id"] / art["file"]


@pytest.fixture(scope="module")
def app(trained_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    """A fine-tuned run (and its Q8_0 export) from the session's trained data directory."""
    data = tmp_path_factory.mktemp("export") / "data"
    clone_data_dir(trained_dir, data)
    a = Appliance(data)
    runs = a.client.get("/api/runs").json()
    assert runs and runs[0]["status"] == "succeeded"
    a.run_id = runs[0]["id"]  # type: ignore[attr-defined]
    yield a
    a.client.close()
    a.runtime.engine.dispose()


def tensor_types(path: Path) -> set[str]:
    return {t.tensor_type.name for t in gguf.GGUFReader(path).tensors}


def test_bundled_model_f16_matches_torch_and_downloads_with_ranges(app: Appliance) -> None:
    art = app.export(base_model_id=BUNDLED_ID, type="f16")
    assert art["kind"] == "gguf" and art["type"] == "f16" and art["run_id"] is None
    v = art["verification"]
    assert v["top1_agreement"] == 1.0 and v["next_token_top1"] == 1.0 and v["mean_kl"] < 1e-3, v
    path = app.file(art)
    assert path.stat().st_size == art["size"]
    assert tensor_types(path) == {"F16", "F32"}
    reader = gguf.GGUFReader(path)
    assert reader.fields["general.architecture"].contents() == "llama"
    assert reader.fields["tokenizer.ggml.pre"].contents() == "smollm"
    assert "<|im_start|>" in reader.fields["tokenizer.chat_template"].contents()
    assert "output.weight" not in {t.name for t in reader.tensors}  # tied embeddings
    # Whole file, then a range.
    full = app.client.get(f"/api/artifacts/{art['id']}/download")
    assert full.status_code == 200 and len(full.content) == art["size"]
    import hashlib

    assert hashlib.sha256(full.content).hexdigest() == art["sha256"]
    part = app.client.get(f"/api/artifacts/{art['id']}/download", headers={"Range": "bytes=0-3"})
    assert part.status_code == 206 and part.content == b"GGUF"
    modelfile = app.client.get(f"/api/artifacts/{art['id']}/modelfile").text
    assert f"FROM ./{art['file']}" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    # The same export asked again is the same artifact, not a second copy.
    again = app.client.post("/api/artifacts/export", json={"base_model_id": BUNDLED_ID, "type": "f16"})
    assert again.status_code == 202 and again.json()["id"] == art["id"]


def test_fine_tune_exports_q8_0_and_q4_0_and_registers_the_merged_model(app: Appliance) -> None:
    run_id = app.run_id  # type: ignore[attr-defined]
    q8 = app.export(run_id=run_id, type="q8_0")
    assert "Q8_0" in tensor_types(app.file(q8))
    assert q8["verification"]["top1_agreement"] > 0.9, q8["verification"]
    merged = [a for a in app.client.get("/api/artifacts", params={"run_id": run_id}).json() if a["kind"] == "merged"]
    assert len(merged) == 1 and merged[0]["status"] == "ready"
    q4 = app.export(run_id=run_id, type="q4_0")
    assert "Q4_0" in tensor_types(app.file(q4))
    assert 0 < q4["verification"]["top1_agreement"] <= 1 and q4["size"] < q8["size"]
    # The merged model is reused, not made twice.
    assert len([a for a in app.client.get("/api/artifacts").json() if a["kind"] == "merged"]) == 1
    # F16 of the fine-tune is held to the exact standard.
    f16 = app.export(run_id=run_id, type="f16")
    assert f16["verification"]["next_token_top1"] == 1.0 and f16["verification"]["mean_kl"] < 1e-3
    kinds = {a["kind"] for a in app.client.get("/api/artifacts").json()}
    assert {"adapter", "merged", "gguf"} <= kinds
    # A folder artifact downloads as one tar of its files: the adapter as peft loads it, the merged model whole.
    import io
    import tarfile

    for art in [a for a in app.client.get("/api/artifacts", params={"run_id": run_id}).json()
                if a["kind"] in ("adapter", "merged")]:
        got = app.client.get(f"/api/artifacts/{art['id']}/download")
        assert got.status_code == 200 and got.headers["content-type"] == "application/x-tar", got.text[:200]
        assert int(got.headers["content-length"]) == len(got.content)
        assert got.headers["content-disposition"].endswith(f'.{art["kind"]}.tar"')
        with tarfile.open(fileobj=io.BytesIO(got.content)) as tar:
            files = {Path(m.name).name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
        with Session(app.runtime.engine) as session:
            row = session.get(Artifact, art["id"])
            assert row is not None and row.path is not None
            folder = app.runtime.paths.resolve(row.path)
        wanted = {"adapter": {"adapter_config.json", "adapter_model.safetensors"},
                  "merged": {"config.json", "model.safetensors"}}[art["kind"]]
        assert wanted <= set(files), sorted(files)
        assert all(files[n] == (folder / n).read_bytes() for n in wanted)


def test_adapter_gguf_applies_on_the_base_in_llama_cpp(app: Appliance) -> None:
    art = app.export(run_id=app.run_id, kind="gguf-adapter")  # type: ignore[attr-defined]
    assert art["kind"] == "gguf-adapter" and art["type"] == "f32"
    reader = gguf.GGUFReader(app.file(art))
    assert reader.fields["general.type"].contents() == "adapter"
    assert reader.fields["adapter.type"].contents() == "lora"
    names = {t.name for t in reader.tensors}
    assert "blk.0.attn_q.weight.lora_a" in names and "blk.29.ffn_down.weight.lora_b" in names
    v = art["verification"]
    assert v["next_token_top1"] == 1.0 and v["mean_kl"] < 1e-3, v


def _import_tiny(app: Appliance, kind: str, tmp: Path) -> str:
    hf = app.data_dir / "models" / BUNDLED_ID / "hf"
    folder = tiny_models.build(kind, tmp / f"tiny-{kind}", hf)
    return import_model(engine=app.runtime.engine, paths=app.runtime.paths, source=folder, model_id=f"tiny-{kind}").id


def test_tiny_qwen2_and_llama_export_and_verify(app: Appliance, tmp_path: Path) -> None:
    qwen = _import_tiny(app, "qwen2", tmp_path)
    art = app.export(base_model_id=qwen, type="f16")
    reader = gguf.GGUFReader(app.file(art))
    assert reader.fields["general.architecture"].contents() == "qwen2"
    assert "blk.0.attn_q.bias" in {t.name for t in reader.tensors}
    assert art["verification"]["next_token_top1"] == 1.0

    llama = _import_tiny(app, "llama", tmp_path)
    f16 = app.export(base_model_id=llama, type="f16")
    assert f16["verification"]["next_token_top1"] == 1.0
    assert "output.weight" in {t.name for t in gguf.GGUFReader(app.file(f16)).tensors}  # untied
    km = app.export(base_model_id=llama, type="q4_k_m")
    assert {"Q4_K", "Q6_K"} <= tensor_types(app.file(km))  # width 256: real K-quants, no fallback
    assert km["verification"]["positions"] > 100


def test_bad_requests_are_refused_up_front(app: Appliance, tmp_path: Path) -> None:
    c = app.client
    res = c.post("/api/artifacts/export", json={"base_model_id": BUNDLED_ID, "type": "q9_9"})
    assert res.status_code == 422 and "q9_9" in res.text and "q4_k_m" in res.text
    res = c.post("/api/artifacts/export", json={"run_id": "run_000000000000", "type": "q8_0"})
    assert res.status_code == 404
    res = c.post("/api/artifacts/export", json={"type": "q8_0"})
    assert res.status_code == 422
    res = c.post("/api/artifacts/export", json={"base_model_id": BUNDLED_ID, "kind": "gguf-adapter"})
    assert res.status_code == 422 and "run" in res.text
    # An architecture outside the supported families: refused at import, naming them; nothing recorded.
    folder = tmp_path / "gpt2ish"
    tiny_models.build("llama", folder, app.data_dir / "models" / BUNDLED_ID / "hf", seed=3)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["architectures"] = ["FalconForCausalLM"]
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelImportError, match="FalconForCausalLM.*supported: Llama 3.x"):
        import_model(engine=app.runtime.engine, paths=app.runtime.paths, source=folder, model_id="oddarch")
    assert "oddarch" not in {m["id"] for m in c.get("/api/models").json()}


def test_corrupt_adapter_and_unfinished_run_are_refused(template_dir: Path, tmp_path: Path, app: Appliance) -> None:
    run_id = app.run_id  # type: ignore[attr-defined]
    adapter = [a for a in app.client.get("/api/artifacts").json() if a["kind"] == "adapter"][0]
    weights = app.data_dir / "runs" / run_id / "adapter" / "adapter_model.safetensors"
    original = weights.read_bytes()
    try:
        weights.write_bytes(original[:-100] + bytes(100))
        res = app.client.post("/api/artifacts/export", json={"run_id": run_id, "type": "q5_k_m"})
        assert res.status_code == 422 and "corrupt" in res.text and adapter["id"]
    finally:
        weights.write_bytes(original)
    queued = app.client.post("/api/runs", json={"dataset_id": app.client.get("/api/datasets").json()[0]["id"],
                                                "base_model_id": BUNDLED_ID, "config": {"max_steps": 2}}).json()
    res = app.client.post("/api/artifacts/export", json={"run_id": queued["id"], "type": "q8_0"})
    assert res.status_code == 422 and "queued" in res.text
    app.client.post(f"/api/runs/{queued['id']}/cancel")


def test_full_disk_fails_the_export_and_leaves_nothing(app: Appliance, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPLIANCE_FAULT_EXPORT_MAX_FILE_BYTES", str(20_000_000))
    art = app.export(expect="failed", base_model_id=BUNDLED_ID, type="bf16")
    assert "no space left" in art["error"], art["error"]
    assert art["size"] is None and art["sha256"] is None
    assert not (app.data_dir / "artifacts" / art["id"]).exists()
    assert not list((app.data_dir / "tmp").glob(f"*{art['id']}*"))
    listed = {a["id"]: a["status"] for a in app.client.get("/api/artifacts").json()}
    assert listed[art["id"]] == "failed"
    # What was exported before is untouched and still loads.
    ready = [a for a in app.client.get("/api/artifacts").json() if a["kind"] == "gguf" and a["status"] == "ready"]
    assert ready
    from llama_cpp import Llama

    llm = Llama(model_path=str(app.file(ready[0])), n_ctx=64, verbose=False)
    assert np.isfinite(llm.create_completion("Hello", max_tokens=2)["usage"]["total_tokens"])
    llm.close()
