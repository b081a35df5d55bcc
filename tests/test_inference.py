"""The inference server in its own process, driven by the real `openai` client: chat, streaming,
JSON schema, model listing, auth, a full queue; hot swaps between the bundled model and a fine-tune
under continuous traffic with no failed request; a corrupt GGUF refused while serving goes on;
restart, rollback, and the drain strategy when memory cannot hold two models."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import START_TIMEOUT_S, clone_data_dir, free_port, make_settings
from fastapi.testclient import TestClient
from sqlmodel import Session

from appliance.api.app import create_app
from appliance.bootstrap import bootstrap
from appliance.db.tables import Artifact
from appliance.models.registry import BUNDLED_ID
from appliance.serving import is_held

KEY = "test-kiosk-key"
# A swap, a restart or a few kiosk answers take seconds here, minutes at worst on a loaded 2-core box:
# tests wait on the event and give up only after this long.
WAIT_S = 600
QUESTION = [{"role": "user", "content": "Where is the pharmacy?"}]


class Server:
    def __init__(self, data_dir: Path, **env: str) -> None:
        self.data_dir, self.env = data_dir, env
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / f"inference-{self.port}.log"

    def start(self) -> Server:
        env = {**os.environ, "APPLIANCE_DATA_DIR": str(self.data_dir), "APPLIANCE_INFERENCE_PORT": str(self.port),
               "APPLIANCE_KIOSK_KEY": KEY, "APPLIANCE_ADMIN_TOKEN": "test-admin-token",
               "APPLIANCE_INFERENCE_RECONCILE_S": "0.2", "APPLIANCE_INFERENCE_CTX": "1024", **self.env}
        self.proc = subprocess.Popen([sys.executable, "-m", "appliance.cli", "inference"], env=env,
                                     stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.base}/readyz", timeout=5).status_code == 200:
                    return self
            assert self.proc.poll() is None, f"inference exited: {self.log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"inference server not ready within {START_TIMEOUT_S} s"
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(60)

    def client(self, key: str = KEY, retries: int = 0) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.base}/v1", api_key=key, max_retries=retries, timeout=120)


class ControlPlane:
    def __init__(self, data_dir: Path) -> None:
        self.runtime = bootstrap(make_settings(data_dir))
        self.api = TestClient(create_app(runtime=self.runtime))
        self.api.headers["Authorization"] = "Bearer test-admin-token"
        arts = [a for a in self.api.get("/api/artifacts").json() if a["kind"] == "gguf" and a["status"] == "ready"]
        assert arts, "the trained data dir has no GGUF export"
        self.finetune = arts[0]

    def deploy(self, **body: Any) -> dict[str, Any]:
        res = self.api.post("/api/deployments", json=body)
        assert res.status_code == 202, res.text
        return dict(res.json())

    def wait(self, dep_id: str, timeout: float = WAIT_S) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            dep = self.api.get(f"/api/deployments/{dep_id}").json()
            if dep["status"] != "pending":
                return dict(dep)
            assert time.monotonic() < deadline, f"deployment {dep_id} still pending"
            time.sleep(0.1)

    def close(self) -> None:
        self.api.close()
        self.runtime.engine.dispose()


@pytest.fixture
def served(trained_dir: Path, tmp_path: Path) -> Iterator[tuple[Server, ControlPlane]]:
    data = tmp_path / "data"
    clone_data_dir(trained_dir, data)
    cp = ControlPlane(data)
    server = Server(data).start()
    yield server, cp
    server.stop()
    cp.close()


def chat(client: openai.OpenAI, **kw: Any) -> Any:
    return client.chat.completions.create(**{"model": "any", "messages": QUESTION, "max_tokens": 16, "temperature": 0,
                                             **kw})


def test_openai_client_chat_stream_json_and_models(served: tuple[Server, ControlPlane]) -> None:
    server, _cp = served
    client = server.client()
    models = client.models.list().data
    assert [m.id for m in models] == [BUNDLED_ID]
    res = chat(client)
    assert res.choices[0].message.content and res.model == BUNDLED_ID
    assert res.usage is not None and res.usage.completion_tokens > 0
    streamed = "".join(c.choices[0].delta.content or "" for c in chat(client, stream=True) if c.choices)
    assert streamed == res.choices[0].message.content  # greedy: same tokens either way
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                               "floor": {"type": "integer"}},
              "required": ["city", "floor"], "additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "place", "schema": schema}}
    res = chat(client, messages=[{"role": "user", "content": "Give the city and floor of the pharmacy as JSON."}],
               max_tokens=60, response_format=fmt)
    data = json.loads(res.choices[0].message.content or "")
    assert isinstance(data["city"], str) and isinstance(data["floor"], int)
    # Plain JSON mode: the grammar forces an object from the first token (a 135M model may ramble
    # inside it until max_tokens, so only the start is certain).
    res = chat(client, response_format={"type": "json_object"}, max_tokens=40,
               messages=[{"role": "user", "content": "Reply with a JSON object."}])
    content = res.choices[0].message.content or ""
    assert content.lstrip().startswith("{")
    if res.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(content), dict)
    text = client.completions.create(model="any", prompt="The capital of France is", max_tokens=5, temperature=0)
    assert text.choices[0].text
    with pytest.raises(openai.AuthenticationError):
        server.client(key="wrong").models.list()
    assert httpx.get(f"{server.base}/v1/models").status_code == 401
    # No admin route on the kiosk port; health, readiness and metrics are open.
    assert httpx.get(f"{server.base}/api/runs", headers={"Authorization": "Bearer test-admin-token"}).status_code == 404
    metrics = httpx.get(f"{server.base}/metrics").text
    assert 'appliance_inference_requests_total{code="200",endpoint="/v1/chat/completions"}' in metrics
    # The wrong key, then none: both counted.
    assert 'appliance_inference_requests_total{code="401",endpoint="/v1/models"} 2' in metrics
    assert f'appliance_inference_active_model{{artifact="",deployment="",model="{BUNDLED_ID}"}} 1' in metrics
    assert "appliance_inference_time_to_first_token_seconds_count 1" in metrics


def test_requests_in_flight_hold_the_serving_signal_for_worker_children(served: tuple[Server, ControlPlane]) -> None:
    """Kiosks first: while a kiosk request is generating, training/export children see the signal and wait;
    it is released when the answer ends and when a client goes away mid-stream."""
    server, cp = served
    lock = cp.runtime.paths.serving_lock
    client = server.client()
    assert not is_held(lock)
    for disconnect in (False, True):
        stream = chat(client, stream=True, max_tokens=40)
        next(iter(stream))  # the first token is out: the request is generating
        assert is_held(lock)
        if disconnect:
            stream.close()
        else:
            assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        deadline = time.monotonic() + WAIT_S
        while is_held(lock):
            assert time.monotonic() < deadline, "the signal outlived the request"
            time.sleep(0.05)


def test_two_streams_do_not_cut_each_other_off(served: tuple[Server, ControlPlane]) -> None:
    server, _cp = served
    client = server.client()
    expected = chat(client, max_tokens=40).choices[0].message.content
    results: list[str] = []

    def stream() -> None:
        results.append("".join(c.choices[0].delta.content or "" for c in chat(client, stream=True, max_tokens=40)
                               if c.choices))

    threads = [threading.Thread(target=stream) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results == [expected, expected]


def test_full_queue_answers_503_with_retry_after(trained_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    clone_data_dir(trained_dir, data)
    server = Server(data, APPLIANCE_INFERENCE_PARALLEL="2", APPLIANCE_INFERENCE_QUEUE="1").start()  # 3 in at once
    try:
        client = server.client()
        outcomes: list[Any] = []

        def ask() -> None:
            try:
                outcomes.append(chat(client, max_tokens=120, temperature=0.8, seed=1))
            except openai.APIStatusError as exc:
                outcomes.append(exc)

        threads = [threading.Thread(target=ask) for _ in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        refused = [o for o in outcomes if isinstance(o, openai.APIStatusError)]
        served_ok = [o for o in outcomes if not isinstance(o, Exception)]
        assert refused and served_ok and len(outcomes) == 5
        assert all(r.status_code == 503 and r.response.headers["retry-after"] == "1" for r in refused)
        assert "queue is full" in refused[0].message
    finally:
        server.stop()


class Traffic:
    """A kiosk asking the same question without pause; every answer and every error is kept."""

    def __init__(self, client: openai.OpenAI) -> None:
        self.client = client
        self.answers: list[tuple[str, str]] = []
        self.errors: list[BaseException] = []
        self.changed = threading.Condition()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                res = chat(self.client, max_tokens=12)
                with self.changed:
                    self.answers.append((res.model, res.choices[0].message.content or ""))
                    self.changed.notify_all()
            except BaseException as exc:  # noqa: BLE001
                with self.changed:
                    self.errors.append(exc)
                    self.changed.notify_all()

    def wait_for(self, model: str, n: int = 2, timeout: float = WAIT_S) -> None:
        """Until the last n answers came from `model`, woken by each answer; a failed request ends the
        wait at once with its error (a busy machine once turned one into a bare "no answers")."""
        with self.changed:
            done = self.changed.wait_for(
                lambda: bool(self.errors) or sum(1 for m, _ in self.answers[-n:] if m == model) >= n, timeout)
        assert not self.errors, f"a kiosk request failed: {self.errors[0]!r}"
        assert done, f"no answers from {model} within {timeout} s; last answers: {self.answers[-3:]}"

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(WAIT_S)


def _corrupt_artifact(cp: ControlPlane, source: Path) -> str:
    art_id = f"art_{uuid.uuid4().hex[:12]}"
    folder = cp.runtime.paths.artifact_dir(art_id)
    folder.mkdir(parents=True)
    target = folder / "broken.q8_0.gguf"
    data = source.read_bytes()
    target.write_bytes(data[: len(data) // 2])  # a copy cut off half-way, as a failed transfer leaves it
    with Session(cp.runtime.engine) as session:
        session.add(Artifact(id=art_id, kind="gguf", type="q8_0", status="ready", base_model_id=BUNDLED_ID,
                             path=cp.runtime.paths.rel(target), size=target.stat().st_size))
        session.commit()
    return art_id


def test_hot_swaps_under_traffic_corrupt_model_restart_and_rollback(served: tuple[Server, ControlPlane]) -> None:
    server, cp = served
    ft_name = cp.finetune["file"].removesuffix(".gguf")
    traffic = Traffic(server.client())
    try:
        traffic.wait_for(BUNDLED_ID)
        plan = [{"artifact_id": cp.finetune["id"]}, {"base_model_id": BUNDLED_ID}] * 2 + [
            {"artifact_id": cp.finetune["id"]}]
        deps = []
        for body in plan:
            dep = cp.wait(cp.deploy(**body)["id"])
            assert dep["status"] == "active" and dep["strategy"] == "overlap" and dep["gap_ms"] == 0, dep
            assert dep["smoke_text"] is not None and dep["load_ms"] > 0
            traffic.wait_for(dep["model"])
            deps.append(dep)
        assert [d["model"] for d in deps] == [ft_name, BUNDLED_ID, ft_name, BUNDLED_ID, ft_name]
        # A corrupt GGUF is refused; the fine-tune keeps answering.
        broken = cp.wait(cp.deploy(artifact_id=_corrupt_artifact(cp, server.data_dir / "artifacts" /
                                                                 cp.finetune["id"] / cp.finetune["file"]))["id"])
        assert broken["status"] == "failed" and "corrupt or truncated" in broken["error"], broken
        traffic.wait_for(ft_name, n=3)
    finally:
        traffic.finish()
    assert traffic.errors == []
    models = [m for m, _ in traffic.answers]
    switches = sum(1 for a, b in zip(models, models[1:], strict=False) if a != b)
    assert switches == 5, models
    base_answers = {a for m, a in traffic.answers if m == BUNDLED_ID}
    ft_answers = {a for m, a in traffic.answers if m == ft_name}
    assert len(base_answers) == 1 and len(ft_answers) == 1 and base_answers != ft_answers  # greedy, per model
    listed = cp.api.get("/api/deployments").json()
    assert [d["status"] for d in listed] == ["failed", "active", "retired", "retired", "retired", "retired"]
    # Restart: back on the active deployment, from SQLite alone.
    server.stop()
    server.start()
    assert [m.id for m in server.client().models.list().data] == [ft_name]
    # Roll back: the model active before the current one (the bundled model) is served again.
    res = cp.api.post("/api/deployments/rollback")
    assert res.status_code == 202
    back = cp.wait(res.json()["id"])
    assert back["status"] == "active" and back["model"] == BUNDLED_ID
    assert chat(server.client()).model == BUNDLED_ID


def test_drain_strategy_when_two_models_do_not_fit(trained_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    clone_data_dir(trained_dir, data)
    cp = ControlPlane(data)
    server = Server(data, APPLIANCE_INFERENCE_MEMORY_MB="200").start()  # room for one model, not two
    try:
        traffic = Traffic(server.client(retries=5))  # the client honours Retry-After during the gap
        traffic.wait_for(BUNDLED_ID)
        dep = cp.wait(cp.deploy(artifact_id=cp.finetune["id"])["id"])
        traffic.wait_for(dep["model"])
        traffic.finish()
        assert dep["status"] == "active" and dep["strategy"] == "drain" and dep["gap_ms"] > 0, dep
        assert traffic.errors == []
        metrics = httpx.get(f"{server.base}/metrics").text
        assert 'appliance_inference_swaps_total{result="ok",strategy="drain"} 1' in metrics
        # Rolling back the first deployment returns to the bundled model served before it.
        back = cp.wait(cp.api.post("/api/deployments/rollback").json()["id"])
        assert back["status"] == "active" and back["model"] == BUNDLED_ID and back["strategy"] == "drain"
    finally:
        server.stop()
        cp.close()


def test_deployment_requests_are_checked(served: tuple[Server, ControlPlane]) -> None:
    _server, cp = served
    adapter = [a for a in cp.api.get("/api/artifacts").json() if a["kind"] == "adapter"][0]
    res = cp.api.post("/api/deployments", json={"artifact_id": adapter["id"]})
    assert res.status_code == 422 and "only a GGUF model" in res.text
    assert cp.api.post("/api/deployments", json={"artifact_id": "art_nothere0000"}).status_code == 404
    assert cp.api.post("/api/deployments", json={}).status_code == 422
    assert cp.api.post("/api/deployments/rollback").status_code == 409  # nothing was ever active before
    shutil.rmtree(cp.runtime.paths.artifact_dir(cp.finetune["id"]))
    res = cp.api.post("/api/deployments", json={"artifact_id": cp.finetune["id"]})
    assert res.status_code == 422 and "missing" in res.text
