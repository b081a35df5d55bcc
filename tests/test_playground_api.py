"""The Playground's side-by-side comparison through the control plane: the models the inference
server serves now, a chat with one picked by `model` (404 with a clear detail for one not served),
and "serve for comparison": a model deployed under the reserved name `playground`, past the gate and
recorded as a playground comparison, then chatted with beside the kiosks' default."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import make_settings
from fastapi.testclient import TestClient
from test_inference import QUESTION, WAIT_S, Server

from appliance.api.app import create_app
from appliance.bootstrap import bootstrap
from appliance.models.registry import BUNDLED_ID


@pytest.fixture
def playground(data_dir: Path) -> Iterator[TestClient]:
    server = Server(data_dir).start()
    runtime = bootstrap(make_settings(data_dir, inference_url=server.base))
    try:
        with TestClient(create_app(runtime=runtime)) as c:
            c.headers["Authorization"] = "Bearer test-admin-token"
            yield c
    finally:
        server.stop()
        runtime.engine.dispose()


def chat(c: TestClient, **body: Any) -> tuple[int, str]:
    res = c.post("/api/playground/chat", json={"messages": QUESTION, "max_tokens": 8, "temperature": 0, **body})
    return res.status_code, res.text


def test_two_models_chatted_with_side_by_side(playground: TestClient) -> None:
    c = playground
    assert c.get("/api/playground/models").json() == {"models": [BUNDLED_ID], "comparison": None}
    for model in (None, BUNDLED_ID):
        code, text = chat(c, **({"model": model} if model else {}))
        assert code == 200 and text.startswith("data: ") and text.rstrip().endswith("data: [DONE]"), text
    code, text = chat(c, model="playground")  # nothing served for comparison yet
    assert code == 404 and "'playground' is not served now" in text and "/api/playground/models" in text, text
    refused = c.post("/api/deployments", json={"base_model_id": BUNDLED_ID, "name": "playground"})
    assert refused.status_code == 422 and "reserved" in refused.text
    assert c.post("/api/playground/compare", json={"artifact_id": "art_nope"}).status_code == 404
    assert c.post("/api/playground/compare", json={}).status_code == 422

    dep = c.post("/api/playground/compare", json={"base_model_id": BUNDLED_ID})
    assert dep.status_code == 202, dep.text
    assert dep.json()["name"] == "playground" and dep.json()["status"] == "pending"
    assert dep.json()["gate"]["status"] == "forced" and "playground comparison" in dep.json()["gate"]["reason"]
    assert dep.json()["forced_by"]
    deadline = time.monotonic() + WAIT_S
    while (listed := c.get("/api/playground/models").json())["comparison"]["status"] == "pending":
        assert time.monotonic() < deadline, listed
        time.sleep(0.2)
    assert listed["comparison"]["status"] == "active", listed
    assert listed["models"] == [BUNDLED_ID, "playground"]
    code, text = chat(c, model="playground")
    assert code == 200 and '"model":"playground"' in text.replace(" ", ""), text
    assert c.get("/api/deployments").json()[0]["id"] == dep.json()["id"]
    assert all(d["name"] == "playground" for d in c.get("/api/deployments").json())  # the default untouched
