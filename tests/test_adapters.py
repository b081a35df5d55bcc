"""Several fine-tunes on one loaded base: two LoRA adapters of one base deployed under their own names
share one loaded copy of the base GGUF, answer differently, and each answers exactly as the merged
export of the same fine-tune does (greedy); adapters are added, swapped and removed while kiosks
stream, without a failed request and without reloading the base."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import make_settings
from fastapi.testclient import TestClient
from test_import_adapter import _drive
from test_inference import Server

from appliance.api.app import create_app
from appliance.bootstrap import bootstrap
from appliance.models.registry import BUNDLED_ID
from bench.loras import random_adapter

QUESTION = [{"role": "user", "content": "Where is the pharmacy?"}]
MAX_TOKENS = 12


class Site:
    """A data dir with the bundled model, its f32 GGUF, and two adapters of it exported both ways (the
    adapter alone, served on that base; merged into the base). A real model, not a tiny random one:
    a random model's next-token logits are nearly flat, and the rounding that differs between a
    merged weight and base + adapter then flips greedy choices."""

    def __init__(self, data_dir: Path, tmp_path: Path) -> None:
        self.runtime = bootstrap(make_settings(data_dir))
        self.api = TestClient(create_app(runtime=self.runtime))
        self.api.headers["Authorization"] = "Bearer test-admin-token"
        rt = self.runtime
        self.base_id = BUNDLED_ID
        base_hf = rt.paths.model_dir(self.base_id) / "hf"
        self.base_gguf = self.export(base_model_id=self.base_id, type="f32")
        self.adapter: dict[str, dict[str, Any]] = {}
        self.merged: dict[str, dict[str, Any]] = {}
        self.imported: dict[str, str] = {}
        for name, (scale, seed) in ADAPTERS.items():
            made = random_adapter(base_hf, tmp_path / name, rank=4, scale=scale, seed=seed)
            res = self.api.post(f"/api/models/{self.base_id}/adapters", json={"path": str(made), "name": name})
            assert res.status_code == 201, res.text
            self.imported[name] = res.json()["id"]
            self.adapter[name] = self.export(adapter_id=res.json()["id"], kind="gguf-adapter",
                                             base_artifact_id=self.base_gguf["id"])
            self.merged[name] = self.export(adapter_id=res.json()["id"], type="f32")

    def export(self, **body: Any) -> dict[str, Any]:
        res = self.api.post("/api/artifacts/export", json=body)
        assert res.status_code == 202, res.text
        art = _drive(self.runtime, self.api, res.json()["id"])
        assert art["status"] == "ready", art
        return art

    def file(self, art: dict[str, Any]) -> Path:
        from sqlmodel import Session

        from appliance.db.tables import Artifact

        with Session(self.runtime.engine) as session:
            row = session.get(Artifact, art["id"])
            assert row is not None and row.path is not None
            return self.runtime.paths.resolve(row.path)

    def deploy(self, artifact_id: str, name: str) -> dict[str, Any]:
        res = self.api.post("/api/deployments", json={"artifact_id": artifact_id, "name": name, "force": True})
        assert res.status_code == 202, res.text
        return self.wait(res.json()["id"])

    def wait(self, dep_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + 300
        while (dep := self.api.get(f"/api/deployments/{dep_id}").json())["status"] == "pending":
            assert time.monotonic() < deadline, f"deployment {dep_id} still pending"
            time.sleep(0.1)
        return dict(dep)

    def undeploy(self, name: str) -> dict[str, Any]:
        res = self.api.post("/api/deployments/undeploy", params={"name": name})
        assert res.status_code == 200, res.text
        return dict(res.json())

    def close(self) -> None:
        self.api.close()
        self.runtime.engine.dispose()


# (scale, seed) of each random adapter: chosen by a scan in torch so that both change the base's answer
# and every greedy token of it leads the runner-up by >= 0.15 logits. A random adapter that leaves a
# near-tie makes the greedy text depend on rounding (flash attention's f16 products flip a 0.02 lead
# between a merged weight and base + adapter), which is not what this test is about.
ADAPTERS = {"ward-a": (0.05, 0), "ward-b": (0.04, 1)}
@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, template_dir: Path) -> Iterator[Site]:
    from conftest import clone_data_dir

    tmp = tmp_path_factory.mktemp("adapters")
    clone_data_dir(template_dir, tmp / "data")
    made = Site(tmp / "data", tmp)
    yield made
    made.close()


def _greedy(model_path: Path) -> str:
    from llama_cpp import Llama

    llm = Llama(model_path=str(model_path), n_ctx=256, n_threads=2, verbose=False)
    try:
        out = llm.create_chat_completion(messages=QUESTION, max_tokens=MAX_TOKENS, temperature=0.0)
    finally:
        llm.close()
    return str(out["choices"][0]["message"]["content"])


def _ask(client: openai.OpenAI, model: str) -> str:
    res = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=MAX_TOKENS,  # type: ignore[arg-type]
                                         temperature=0.0)
    return str(res.choices[0].message.content)


def _loaded(server: Server) -> dict[str, float]:
    text = httpx.get(f"{server.base}/metrics", timeout=10).text
    return {kind: float(line.split()[-1]) for line in text.splitlines()
            for kind in ("model", "adapter") if line.startswith(f'appliance_inference_loaded_files{{kind="{kind}"}}')}


@pytest.mark.parametrize("parallel", ["0", "1"], ids=["batched", "serial"])
def test_two_adapters_of_one_base_answer_as_their_merged_exports(site: Site, parallel: str) -> None:
    names = ("ward-a", "ward-b")
    server = Server(site.runtime.paths.root, APPLIANCE_INFERENCE_PARALLEL=parallel).start()
    try:
        for name in names:
            assert site.deploy(site.adapter[name]["id"], name)["status"] == "active"
            assert site.deploy(site.merged[name]["id"], f"merged-{name}")["status"] == "active"
        client = server.client()
        assert {m.id for m in client.models.list().data} == {BUNDLED_ID, *names, *(f"merged-{n}" for n in names)}
        answers = {name: _ask(client, name) for name in names}
        for name in names:
            assert answers[name] == _ask(client, f"merged-{name}"), name
        # The two fine-tunes, and the base, answer differently.
        assert len({*answers.values(), _greedy(site.file(site.base_gguf))}) == 3, answers
        if parallel == "0":  # one copy of the base for both adapters, beside the default and the merged ones
            assert _loaded(server) == {"model": 4, "adapter": 2}
    finally:
        for name in names:
            site.undeploy(name)
            site.undeploy(f"merged-{name}")
        server.stop()


def test_adapters_come_and_go_under_load_without_a_failed_request(site: Site) -> None:
    rt = site.runtime
    server = Server(rt.paths.root).start()
    failures: list[str] = []
    counts: dict[str, int] = {}
    stop = threading.Event()
    try:
        site.deploy(site.adapter["ward-a"]["id"], "ward-a")

        def kiosk(model: str) -> None:
            client = server.client()
            while not stop.is_set():
                try:
                    stream = client.chat.completions.create(model=model, messages=QUESTION,  # type: ignore[arg-type]
                                                            max_tokens=MAX_TOKENS, temperature=0.0, stream=True)
                    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
                    assert text, "empty answer"
                    counts[model] = counts.get(model, 0) + 1
                except Exception as exc:  # noqa: BLE001  (every failure is collected and reported)
                    failures.append(f"{model}: {exc!r}")

        threads = [threading.Thread(target=kiosk, args=(m,)) for m in ("ward-a", "ward-a", "default")]
        for t in threads:
            t.start()
        while counts.get("ward-a", 0) < 3:
            time.sleep(0.05)
        added = site.deploy(site.adapter["ward-b"]["id"], "ward-c")  # an adapter added beside ward-a
        assert added["status"] == "active", added
        assert _loaded(server) == {"model": 2, "adapter": 2}
        swapped = site.deploy(site.adapter["ward-b"]["id"], "ward-a")  # ward-a's adapter replaced, base kept
        assert swapped["status"] == "active" and swapped["strategy"] == "overlap", swapped
        assert site.undeploy("ward-c")["status"] == "retired"
        before = counts.get("ward-a", 0)
        while counts.get("ward-a", 0) < before + 3:
            time.sleep(0.05)
        stop.set()
        for t in threads:
            t.join(120)
        assert not failures, failures[:5]
        assert counts.get("default", 0) > 0 and counts["ward-a"] > 6, counts
        assert _loaded(server) == {"model": 2, "adapter": 1}
        with pytest.raises(openai.NotFoundError):
            _ask(server.client(), "ward-c")
        # The last adapter of the base removed: the base is unloaded too.
        site.undeploy("ward-a")
        deadline = time.monotonic() + 60
        while _loaded(server) != {"model": 1, "adapter": 0}:
            assert time.monotonic() < deadline, _loaded(server)
            time.sleep(0.1)
    finally:
        stop.set()
        server.stop()


def test_undeploy_refuses_what_it_cannot_remove(site: Site) -> None:
    from test_cli import appliance as cli

    assert site.api.post("/api/deployments/undeploy", params={"name": "nowhere"}).status_code == 404
    res = cli(site.runtime.paths.root, "undeploy", "nowhere")
    assert res.returncode == 1 and "no deployment named 'nowhere' is served" in res.stderr, res.stderr
    res = site.api.post("/api/deployments", json={"artifact_id": site.adapter["ward-a"]["id"], "name": "ward-x",
                                                  "force": True})
    assert res.status_code == 202 and res.json()["status"] == "pending"  # no inference server here to load it
    res = cli(site.runtime.paths.root, "undeploy", "ward-x")
    assert res.returncode == 0 and "ward-x" in res.stdout, res.stderr
    assert site.api.get("/api/deployments").json()[0]["status"] == "failed"  # never to be loaded
    res = site.api.post("/api/deployments/undeploy", params={"name": "default"})
    assert res.status_code == 409 and "default" in res.text
    res = site.api.post("/api/deployments", json={"artifact_id": site.adapter["ward-a"]["id"],
                                                  "base_model_id": site.base_id})
    assert res.status_code == 422
    # An adapter's base must be an export of its own base model, not of a fine-tune or another model.
    for wrong in (site.merged["ward-b"]["id"], site.adapter["ward-b"]["id"]):
        res = site.api.post("/api/artifacts/export", json={"adapter_id": site.imported["ward-a"],
                                                           "kind": "gguf-adapter", "base_artifact_id": wrong})
        assert res.status_code == 422 and "not a ready GGUF export of the base model" in res.text, res.text
    res = site.api.post("/api/artifacts/export", json={"adapter_id": site.imported["ward-a"], "kind": "gguf-adapter",
                                                       "base_artifact_id": "art_nope"})
    assert res.status_code == 404, res.text
    # The base GGUF the adapters are served on stays while they do.
    res = site.api.delete(f"/api/artifacts/{site.base_gguf['id']}")
    assert res.status_code == 409 and site.adapter["ward-a"]["id"] in res.text, res.text
    assert site.file(site.base_gguf).is_file()


def test_an_adapter_is_evaluated_as_it_is_served(site: Site) -> None:
    """An evaluation of a GGUF adapter artifact loads its base with the adapter applied: the same
    scores as the merged export's (appliance/models/served.py decides the base for both)."""
    from sqlmodel import Session

    from appliance.evaluation import EvalRow, evaluate
    from appliance.models.served import served_file

    with Session(site.runtime.engine) as session:
        served = served_file(session, site.runtime.paths, artifact_id=site.adapter["ward-a"]["id"], base_model_id=None)
    assert served.path == site.file(site.base_gguf) and served.lora == site.file(site.adapter["ward-a"])
    rows = [EvalRow.of("q1", "Where is the pharmacy?", "The pharmacy is on floor 2."),
            EvalRow.of("q2", "When does the lab open?", "The lab opens at seven.")]
    adapter = evaluate(served.path, rows, lora_path=served.lora, retention=False, threads=2)
    merged = evaluate(site.file(site.merged["ward-a"]), rows, retention=False, threads=2)
    assert [q.answer for q in adapter.questions] == [q.answer for q in merged.questions]
    # Not bit-identical weights (W + BA merged once, against W x + B(A x) at run time) and the engine's
    # flash attention rounds K and V to f16: measured 1.6e-4 apart (same weights agree to 1e-6).
    assert abs(adapter.metrics["nll"].mean - merged.metrics["nll"].mean) < 1e-3
