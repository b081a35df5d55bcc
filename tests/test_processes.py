"""The real processes: the API imports and serves without torch; `appliance api` binds 127.0.0.1;
the supervisor restarts a dead service with backoff."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
from conftest import free_port

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
    port = free_port()
    env = {**os.environ, "APPLIANCE_DATA_DIR": str(data_dir), "APPLIANCE_API_PORT": str(port),
           "APPLIANCE_ADMIN_TOKEN": "tok"}
    proc = subprocess.Popen([sys.executable, "-m", "appliance.cli", "api"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "API did not come up"
            time.sleep(0.2)
        assert httpx.get(f"{base}/api/models").status_code == 401
        models = httpx.get(f"{base}/api/models", headers={"Authorization": "Bearer tok"}).json()
        assert [m["id"] for m in models] == ["smollm2-135m-instruct"]
    finally:
        proc.terminate()
        proc.wait(timeout=20)


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
