"""Named deployments: a fine-tune served under a name beside the site's default, chosen by `model`;
/v1/models lists both; an unknown name is OpenAI's 404; no `model`, `default` or `any` keeps going to
the default; a named deployment swaps (and rolls back) on its own, the default untouched."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from conftest import clone_data_dir
from test_inference import KEY, QUESTION, ControlPlane, Server, chat

from appliance.models.registry import BUNDLED_ID


@pytest.fixture
def served(trained_dir: Path, tmp_path: Path) -> Iterator[tuple[Server, ControlPlane]]:
    data = tmp_path / "data"
    clone_data_dir(trained_dir, data)
    cp = ControlPlane(data)
    server = Server(data).start()
    yield server, cp
    server.stop()
    cp.close()


def test_a_named_deployment_is_served_beside_the_default(served: tuple[Server, ControlPlane]) -> None:
    server, cp = served
    client = server.client()
    base_answer = chat(client).choices[0].message.content
    dep = cp.wait(cp.deploy(artifact_id=cp.finetune["id"], name="pharmacy")["id"])
    assert dep["status"] == "active" and dep["model"] == "pharmacy" and dep["name"] == "pharmacy", dep
    assert [m.id for m in client.models.list().data] == [BUNDLED_ID, "pharmacy"]
    tuned = chat(client, model="pharmacy")
    assert tuned.model == "pharmacy" and tuned.choices[0].message.content != base_answer
    for alias in ("default", "any", BUNDLED_ID):
        res = chat(client, model=alias)
        assert (res.model, res.choices[0].message.content) == (BUNDLED_ID, base_answer), alias
    no_model = httpx.post(f"{server.base}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                          json={"messages": QUESTION, "max_tokens": 16, "temperature": 0}, timeout=120).json()
    assert no_model["model"] == BUNDLED_ID
    with pytest.raises(openai.NotFoundError) as info:
        chat(client, model="radiology")
    assert (info.value.type, info.value.code, info.value.param) == ("invalid_request_error", "model_not_found",
                                                                    "model")
    # The name moves to the bundled model (a swap of that deployment alone), then rolls back.
    again = cp.wait(cp.deploy(base_model_id=BUNDLED_ID, name="pharmacy")["id"])
    assert again["status"] == "active" and again["strategy"] == "overlap", again
    assert chat(client, model="pharmacy").choices[0].message.content == base_answer
    back = cp.wait(cp.api.post("/api/deployments/rollback", params={"name": "pharmacy"}).json()["id"])
    assert back["status"] == "active" and back["name"] == "pharmacy" and back["artifact_id"] == cp.finetune["id"]
    assert chat(client, model="pharmacy").choices[0].message.content == tuned.choices[0].message.content
    statuses = {d["id"]: d["status"] for d in cp.api.get("/api/deployments").json()}
    assert statuses == {dep["id"]: "retired", again["id"]: "retired", back["id"]: "active"}
    assert cp.api.post("/api/deployments", json={"base_model_id": BUNDLED_ID, "name": "default"}).status_code == 422
