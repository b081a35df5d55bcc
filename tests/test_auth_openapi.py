"""Security by default: every /api route needs the admin token; /healthz is open; the OpenAPI
document describes every route with typed responses."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from appliance.api.app import create_app
from appliance.bootstrap import Runtime

PLACEHOLDERS = {"{dataset_id}": "ds_x", "{model_id}": "m_x", "{run_id}": "r_x", "{artifact_id}": "art_x",
                "{deployment_id}": "dep_x"}


def _fill(path: str) -> str:
    for name, value in PLACEHOLDERS.items():
        path = path.replace(name, value)
    return path


def _unfill(path: str) -> str:
    for name, value in PLACEHOLDERS.items():
        path = path.replace(value, name)
    return path


def api_routes(runtime: Runtime) -> list[tuple[str, str]]:
    """(method, concrete path) of every /api route, from the app's own OpenAPI document."""
    doc = create_app(runtime=runtime).openapi()
    return [
        (method.upper(), _fill(path))
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
    assert page.status_code == 200 and ">appliance</title>" in page.text
    for name in ("datasets", "runs", "models", "evaluations", "deploy", "playground", "system"):
        assert f'data-page="{name}"' in page.text  # the contract the console's pages keep
    assert anon.get("/static/js/main.js").status_code == 200


@pytest.mark.parametrize("path", ["/api/models", "/api/datasets"])
def test_the_right_token_is_accepted(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 200


def test_openapi_describes_every_route(anon: TestClient, runtime: Runtime) -> None:
    doc = anon.get("/openapi.json").json()
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for method, path in api_routes(runtime):
        template = _unfill(path)
        op = doc["paths"][template][method.lower()]
        assert op.get("summary"), (method, template)
        assert op.get("security"), (method, template)
        ok = next(code for code in op["responses"] if code.startswith("2"))
        plain = template.endswith(("/download", "/events", "/logs", "/modelfile", "/playground/chat")) or \
            template == "/api/presets"
        if ok != "204" and not plain:
            assert "$ref" in str(op["responses"][ok]["content"]["application/json"]["schema"]), template
        # Every error status it answers, with the one error body (tests/test_fuzz_api.py holds it to that).
        for code in ("401", "422", *(["404"] if "{" in template else [])):
            assert code in op["responses"], (method, template, code)
            schema = op["responses"][code]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (method, template, code)
    upload = doc["paths"]["/api/datasets"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in upload
