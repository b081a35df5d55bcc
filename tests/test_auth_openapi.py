"""Security by default: every /api route needs the admin token; /healthz is open; the OpenAPI
document describes every route with typed responses."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from appliance.api.app import create_app
from appliance.bootstrap import Runtime


def api_routes(runtime: Runtime) -> list[tuple[str, str]]:
    """(method, concrete path) of every /api route, from the app's own OpenAPI document."""
    doc = create_app(runtime=runtime).openapi()
    return [
        (method.upper(), path.replace("{dataset_id}", "ds_x").replace("{model_id}", "m_x").replace("{run_id}", "r_x"))
        for path, ops in doc["paths"].items()
        if path.startswith("/api")
        for method in ops
    ]


def test_every_api_route_refuses_a_missing_or_wrong_token(anon: TestClient, runtime: Runtime) -> None:
    routes = api_routes(runtime)
    assert len(routes) >= 9
    for method, path in routes:
        missing = anon.request(method, path)
        assert missing.status_code == 401, (method, path)
        assert "admin token" in missing.json()["detail"]
        wrong = anon.request(method, path, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401, (method, path)
        kiosk = anon.request(method, path, headers={"Authorization": f"Bearer {runtime.kiosk_key}"})
        assert kiosk.status_code == 401, (method, path)


def test_refused_upload_stores_nothing(anon: TestClient, runtime: Runtime) -> None:
    res = anon.post("/api/datasets", files={"file": ("a.jsonl", b'{"instruction": "a", "output": "b"}\n')})
    assert res.status_code == 401
    assert list(runtime.paths.datasets.iterdir()) == []


def test_healthz_and_page_are_open(anon: TestClient) -> None:
    assert anon.get("/healthz").json()["status"] == "ok"
    page = anon.get("/")
    assert page.status_code == 200 and "<title>appliance</title>" in page.text
    assert anon.get("/static/app.js").status_code == 200


@pytest.mark.parametrize("path", ["/api/models", "/api/datasets"])
def test_the_right_token_is_accepted(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 200


def test_openapi_describes_every_route(anon: TestClient, runtime: Runtime) -> None:
    doc = anon.get("/openapi.json").json()
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for method, path in api_routes(runtime):
        template = path.replace("ds_x", "{dataset_id}").replace("m_x", "{model_id}").replace("r_x", "{run_id}")
        op = doc["paths"][template][method.lower()]
        assert op.get("summary"), (method, template)
        assert op.get("security"), (method, template)
        ok = next(code for code in op["responses"] if code.startswith("2"))
        if ok != "204" and not template.endswith(("/download", "/events", "/logs")) and template != "/api/presets":
            assert "$ref" in str(op["responses"][ok]["content"]["application/json"]["schema"]), template
    upload = doc["paths"]["/api/datasets"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in upload
