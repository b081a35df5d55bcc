"""What the console relies on beside the page itself: sign-in into an HttpOnly SameSite=Strict
cookie with CSRF protection of cookie-authenticated writes (Bearer clients unaffected), the
dataset histogram and eval-set marking, the live pre-flight estimate, the System page's numbers,
and the kiosk page on the inference port (no admin function, nothing from another host)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from samples import ALPACA, jsonl

from appliance.api.deps import CSRF_HEADER, SESSION_COOKIE
from appliance.bootstrap import Runtime
from appliance.inference.server import create_inference_app

CONSOLE = {CSRF_HEADER: "1"}


def signed_in(anon: TestClient) -> TestClient:
    res = anon.post("/console/session", json={"token": "test-admin-token"})
    assert res.status_code == 204, res.text
    cookie = res.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=") and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert "test-admin-token" not in cookie  # the cookie is not the token (it cannot be replayed as Bearer)
    return anon


def test_sign_in_sets_a_cookie_that_reads_but_writes_only_with_the_console_header(anon: TestClient) -> None:
    assert anon.post("/console/session", json={"token": "wrong"}).status_code == 401
    assert anon.get("/console/session").status_code == 401
    c = signed_in(anon)
    assert c.get("/console/session").status_code == 204
    assert c.get("/api/datasets").status_code == 200
    upload = {"file": ("faq.jsonl", jsonl(ALPACA))}
    refused = c.post("/api/datasets", files=upload)  # what a foreign page's form could make the browser send
    assert refused.status_code == 403 and CSRF_HEADER in refused.json()["detail"]
    foreign = c.post("/api/datasets", files=upload, headers={**CONSOLE, "Origin": "http://evil.example"})
    assert foreign.status_code == 403
    assert c.post("/api/datasets", files=upload, headers={**CONSOLE, "Origin": "http://testserver"}).status_code == 201
    assert c.delete("/console/session").status_code == 204
    c.cookies.clear()  # what the browser does with the expired cookie
    assert c.get("/api/datasets").status_code == 401


def test_a_session_cookie_expires_and_cannot_be_forged(anon: TestClient) -> None:
    from appliance.api.deps import SESSION_S, session_value

    stale = session_value("test-admin-token", now=time.time() - SESSION_S - 1)
    anon.cookies.set(SESSION_COOKIE, stale)
    assert anon.get("/api/datasets").status_code == 401
    expires = stale.split(".")[0]
    for forged in (f"{int(expires) + 2 * SESSION_S}.{stale.split('.')[1]}", "9999999999.", "x.y", ""):
        anon.cookies.set(SESSION_COOKIE, forged)
        assert anon.get("/api/datasets").status_code == 401, forged
    anon.cookies.set(SESSION_COOKIE, session_value("test-admin-token"))
    assert anon.get("/api/datasets").status_code == 200


def test_bearer_clients_need_no_console_header(client: TestClient) -> None:
    assert client.post("/api/datasets", files={"file": ("faq.jsonl", jsonl(ALPACA))}).status_code == 201


def test_histogram_marking_an_eval_set_and_the_live_estimate(client: TestClient) -> None:
    ds = client.post("/api/datasets", files={"file": ("faq.jsonl", jsonl(ALPACA))}).json()
    hist = client.get(f"/api/datasets/{ds['id']}/histogram", params={"cutoff_len": 48, "bins": 4}).json()
    assert sum(b["rows"] for b in hist["bins"]) == 3 and len(hist["bins"]) == 4
    assert hist["cutoff_len"] == 48 and hist["over_cutoff"] == 2  # 41, 49 and 50 tokens (test_datasets)
    marked = client.patch(f"/api/datasets/{ds['id']}", json={"purpose": "eval"})
    assert marked.status_code == 200 and marked.json()["purpose"] == "eval"
    assert client.patch(f"/api/datasets/{ds['id']}", json={"purpose": "nope"}).status_code == 422
    est = client.post("/api/runs/estimate", json={"dataset_id": ds["id"], "preset": "lora-cpu",
                                                  "config": {"max_steps": 7}})
    assert est.status_code == 200, est.text
    assert est.json()["steps"] == 7 and est.json()["fits"] is True and est.json()["peak_memory_mb"] > 0
    assert client.get("/api/runs").json() == []  # estimating queues nothing
    bad = client.post("/api/runs/estimate", json={"dataset_id": ds["id"], "config": {"nope": 1}})
    assert bad.status_code == 422


def test_system_reports_use_versions_and_the_kiosk_address(client: TestClient) -> None:
    s = client.get("/api/system").json()
    assert 0 <= s["cpu_percent"] <= 100 and s["memory"]["total_bytes"] > s["memory"]["used_bytes"] > 0
    assert s["disk"]["total_bytes"] > 0 and s["versions"]["appliance"]
    assert s["kiosk_url"] == "http://testserver:8080/" and s["kiosk_key"] == "test-kiosk-key"


@pytest.fixture
def kiosk(runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_inference_app(runtime, start=False)) as c:
        yield c


def test_kiosk_page_is_served_with_its_settings_and_nothing_else(kiosk: TestClient) -> None:
    page = kiosk.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert not re.search(r"(src|href)=\"(https?:)?//", page.text)  # nothing from another host
    assert kiosk.get("/kiosk/config.json").json() == {
        "title": "Ask us", "welcome": "Hello! Type your question below and I will answer it.", "idle_reset_s": 120.0}
    assert kiosk.get("/kiosk/kiosk.js").headers["content-type"].startswith("text/javascript")
    for probe in ("/kiosk/..%2fi18n%2fen.json", "/kiosk/.hidden.js", "/kiosk/missing.js", "/api/datasets"):
        assert kiosk.get(probe).status_code == 404, probe
    assert kiosk.get("/v1/models").status_code == 401
