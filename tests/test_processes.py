"""The real processes: the API imports and serves without torch; `appliance api` binds 127.0.0.1;
the supervisor restarts a dead service with backoff."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
from conftest import api_server

from appliance.supervisor import Service, Supervisor

NO_TORCH = r"""
import json, sys
from fastapi.testclient import TestClient
from appliance.api.app import create_app
from appliance.settings import Settings
app = create_app(Settings(data_dir=sys.argv[1], admin_token="t"))
with TestClient(app) as c:
    c.headers["Authorization"] = "Bearer t"
    up = c.post("/api/datasets", files={"file": ("a.jsonl", b'{"instruction": "Hi", "output": "Hello"}\n')})
    assert up.status_code == 201, up.text
    assert up.json()["token_stats"], "token stats need the tokenizer"
    assert c.get("/api/models").status_code == 200
heavy = sorted(m for m in ("torch", "transformers", "peft", "bitsandbytes", "accelerate") if m in sys.modules)
print(json.dumps(heavy))
"""


def test_api_process_never_imports_torch(data_dir: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", NO_TORCH, str(data_dir)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_appliance_api_serves_on_loopback(data_dir: Path) -> None:
    with api_server(data_dir, "tok") as base:
        assert base.startswith("http://127.0.0.1:")
        assert httpx.get(f"{base}/api/models").status_code == 401
        models = httpx.get(f"{base}/api/models", headers={"Authorization": "Bearer tok"}).json()
        assert [m["id"] for m in models] == ["smollm2-135m-instruct"]


def test_supervisor_restarts_a_dead_service_with_backoff(tmp_path: Path) -> None:
    marker = tmp_path / "starts"
    script = f"open({str(marker)!r}, 'a').write('x'); raise SystemExit(3)"
    sup = Supervisor([Service("flaky", [sys.executable, "-c", script])])
    assert sup.run_once(now=0.0) == [f"started flaky (pid {sup.services[0].proc.pid})"]  # type: ignore[union-attr]
    sup.services[0].proc.wait(timeout=30)  # type: ignore[union-attr]
    assert sup.run_once(now=1.0) == ["flaky exited with 3; restarting in 1s"]
    assert sup.run_once(now=1.5) == []  # still backing off
    assert sup.run_once(now=2.1)[0].startswith("started flaky")
    sup.services[0].proc.wait(timeout=30)  # type: ignore[union-attr]
    assert sup.run_once(now=3.0) == ["flaky exited with 3; restarting in 2s"]  # the delay doubles
    sup.stop()
    assert marker.read_text() == "xx"
