"""Adapters trained elsewhere: a LoRA folder written by peft directly (as LLaMA-Factory and Unsloth write
theirs) is imported for a registered base through the API, exported by the worker, deployed, and the
kiosk server's greedy answers equal those of the same weights exported by the appliance's own run path.
Adapters that do not fit the base are refused, naming the mismatch, and record nothing."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import tiny_families
from conftest import make_settings
from fastapi.testclient import TestClient
from test_inference import Server

from appliance.api.app import create_app
from appliance.bootstrap import Runtime, bootstrap
from appliance.models.registry import BUNDLED_ID, import_model
from appliance.worker.worker import Worker

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


@pytest.fixture
def appliance(data_dir: Path) -> Iterator[tuple[Runtime, TestClient]]:
    runtime = bootstrap(make_settings(data_dir))
    with TestClient(create_app(runtime=runtime)) as client:
        client.headers["Authorization"] = "Bearer test-admin-token"
        yield runtime, client
    runtime.engine.dispose()


def _base(runtime: Runtime, tmp_path: Path, family: str) -> tuple[str, Path]:
    folder = tiny_families.build(family, tmp_path / f"tiny-{family}", runtime.paths.model_dir(BUNDLED_ID) / "hf")
    model = import_model(engine=runtime.engine, paths=runtime.paths, source=folder)
    return model.id, runtime.paths.model_dir(model.id) / "hf"


def _peft_adapter(base_hf: Path, out: Path, weights_from: Path | None = None, rank: int = 8) -> Path:
    """A LoRA folder written by peft itself (plus the tokenizer files LLaMA-Factory saves beside it)."""
    import torch
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_hf, dtype=torch.float32),
                           LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets, task_type="CAUSAL_LM"))
    if weights_from is not None:
        set_peft_model_state_dict(model, load_file(weights_from / "adapter_model.safetensors"))
    model.save_pretrained(out)
    for name in TOKENIZER_FILES:
        shutil.copy2(base_hf / name, out / name)
    return out


def _drive(runtime: Runtime, client: TestClient, art_id: str) -> dict[str, object]:
    worker, deadline = Worker(runtime), time.monotonic() + 600
    while (art := client.get(f"/api/artifacts/{art_id}").json())["status"] not in ("ready", "failed"):
        assert time.monotonic() < deadline, "export timed out"
        worker.run_once()
        time.sleep(0.05)
    return dict(art)


def test_peft_adapter_imports_exports_and_deploys_like_the_appliances_own(
        appliance: tuple[Runtime, TestClient], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from llama_cpp import Llama

    runtime, client = appliance
    base_id, base_hf = _base(runtime, tmp_path, "qwen2")
    own_adapter, losses = tiny_families.train(base_hf, tmp_path, capsys)  # the appliance's trainer
    assert losses[-1] < losses[0]
    elsewhere = _peft_adapter(base_hf, tmp_path / "llamafactory-output", weights_from=own_adapter)

    res = client.post(f"/api/models/{base_id}/adapters", json={"path": str(elsewhere), "name": "faq-lf"})
    assert res.status_code == 201, res.text
    adapter = res.json()
    assert (adapter["kind"], adapter["status"], adapter["run_id"], adapter["base_model_id"]) == (
        "adapter", "ready", None, base_id)
    res = client.post("/api/artifacts/export", json={"adapter_id": adapter["id"], "type": "f16"})
    assert res.status_code == 202, res.text
    exported = _drive(runtime, client, res.json()["id"])
    assert exported["status"] == "ready", exported
    assert exported["verification"]["next_token_top1"] == 1.0  # type: ignore[index]
    # Not the base model's own export: asking for that is a different artifact.
    base_export = client.post("/api/artifacts/export", json={"base_model_id": base_id, "type": "f16"}).json()
    assert base_export["id"] != exported["id"]

    # The same weights through the appliance's own path: a run's adapter, exported by export/job.py.
    own = tiny_families.export(base_hf, tmp_path, "f16", "own", own_adapter, None)
    question = tiny_families.messages(tiny_families.QUESTIONS[0][0])
    llm = Llama(model_path=str(own["path"]), n_ctx=256, verbose=False, n_threads=2)
    try:
        expected = llm.create_chat_completion(messages=question, max_tokens=8, temperature=0.0)
    finally:
        llm.close()

    res = client.post("/api/deployments", json={"artifact_id": exported["id"], "force": True})
    assert res.status_code == 202, res.text
    server = Server(runtime.paths.root).start()
    try:
        deadline = time.monotonic() + 600
        while client.get(f"/api/deployments/{res.json()['id']}").json()["status"] == "pending":
            assert time.monotonic() < deadline, "deployment still pending"
            time.sleep(0.2)
        assert client.get(f"/api/deployments/{res.json()['id']}").json()["status"] == "active"
        kiosk = server.client()
        name = kiosk.models.list().data[0].id
        answer = kiosk.chat.completions.create(model=name, messages=question, max_tokens=8,  # type: ignore[arg-type]
                                               temperature=0.0)
    finally:
        server.stop()
    assert expected["usage"]["completion_tokens"] > 0 and expected["choices"][0]["message"]["content"]
    assert answer.choices[0].message.content == expected["choices"][0]["message"]["content"]


def test_adapters_that_do_not_fit_the_base_are_refused(appliance: tuple[Runtime, TestClient], tmp_path: Path) -> None:
    runtime, client = appliance
    base_id, base_hf = _base(runtime, tmp_path, "qwen2")
    _other_id, other_hf = _base(runtime, tmp_path, "qwen3")  # q_proj is 64 -> 128 there, 64 -> 64 here
    foreign = _peft_adapter(other_hf, tmp_path / "for-qwen3")
    res = client.post(f"/api/models/{base_id}/adapters", json={"path": str(foreign)})
    assert res.status_code == 422 and "does not match base model" in res.text and "q_proj" in res.text, res.text

    wrong_rank = _peft_adapter(base_hf, tmp_path / "rank")
    config = json.loads((wrong_rank / "adapter_config.json").read_text())
    (wrong_rank / "adapter_config.json").write_text(json.dumps({**config, "r": 4}))
    res = client.post(f"/api/models/{base_id}/adapters", json={"path": str(wrong_rank)})
    assert res.status_code == 422 and "rank 4" in res.text, res.text

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy2(wrong_rank / "adapter_config.json", pickled / "adapter_config.json")
    (pickled / "adapter_model.bin").write_bytes(b"pickle")
    res = client.post(f"/api/models/{base_id}/adapters", json={"path": str(pickled)})
    assert res.status_code == 422 and "adapter_model.bin is not accepted" in res.text

    assert client.post("/api/models/nope/adapters", json={"path": str(foreign)}).status_code == 404
    assert not [a for a in client.get("/api/artifacts").json() if a["kind"] == "adapter"]


def test_import_adapter_command(appliance: tuple[Runtime, TestClient], tmp_path: Path) -> None:
    from test_cli import appliance as cli

    runtime, client = appliance
    base_id, base_hf = _base(runtime, tmp_path, "qwen2")
    made = _peft_adapter(base_hf, tmp_path / "unsloth-output", rank=4)
    res = cli(runtime.paths.root, "models", "import-adapter", str(made), "--base", base_id, "--name", "faq")
    assert res.returncode == 0, res.stderr
    art = json.loads(res.stdout)
    assert (art["kind"], art["name"], art["base_model_id"]) == ("adapter", "faq", base_id)
    assert client.get(f"/api/artifacts/{art['id']}").json()["status"] == "ready"
    # The LoRA alone, as a GGUF adapter applied on the base's GGUF (llama.cpp's lora_path), verified too.
    res = client.post("/api/artifacts/export", json={"adapter_id": art["id"], "kind": "gguf-adapter"})
    assert res.status_code == 202, res.text
    gguf_adapter = _drive(runtime, client, res.json()["id"])
    assert gguf_adapter["status"] == "ready" and gguf_adapter["verification"]["next_token_top1"] == 1.0  # type: ignore[index]
    res = cli(runtime.paths.root, "models", "import-adapter", str(made), "--base", BUNDLED_ID)
    assert res.returncode == 1 and "does not match base model smollm2-135m-instruct" in res.stderr
