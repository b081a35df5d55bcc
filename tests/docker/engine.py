"""The engine test (`make test-docker`, after tests/docker/run.sh started an engine and built the
bundle): install the cpu bundle with its own install.sh into a real Docker engine and drive the whole
loop through the published ports, on 127.0.0.1 only.

    python tests/docker/engine.py BUNDLE.tar [--results FILE]

Steps, each failing with a message: install (time to the first kiosk answer), a dataset, a CPU run
whose worker container is `docker kill`ed mid-run (then started again: the run resumes and finishes),
a Q8_0 export whose worker process crashes mid-export (kill -9: the restart policy brings it back and
the export finishes), a deployment answered by a kiosk, `docker compose down` + `up` (the deployment is
still served), install.sh again (an upgrade in place keeps data and secrets), backup.sh + restore.sh.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
FAQ = [{"instruction": f"Where is the {p}?", "output": f"The {p} is on floor {i % 4 + 1}, room {100 + i}."}
       for i, p in enumerate(["pharmacy", "lab", "x-ray room", "cafeteria", "parking", "front desk"] * 4)]
RUN_CONFIG = {"max_steps": 24, "cutoff_len": 96, "per_device_train_batch_size": 4, "learning_rate": 2e-3,
              "lora_rank": 8, "lora_target": "all", "warmup_ratio": 0.0, "save_steps": 3}


def log(msg: str) -> None:
    print(f"[engine-test {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 1.0) -> Any:
    """Poll `check` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except httpx.HTTPError as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


class Box:
    """The installed appliance: its compose project, ports and secrets."""

    def __init__(self, prefix: Path, api_port: int, kiosk_port: int) -> None:
        self.prefix = prefix
        env = dict(line.split("=", 1) for line in (prefix / ".env").read_text().splitlines()
                   if "=" in line and not line.startswith("#"))
        self.admin, self.key = env["APPLIANCE_ADMIN_TOKEN"], env["APPLIANCE_KIOSK_KEY"]
        self.api = httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=60,
                                headers={"Authorization": f"Bearer {self.admin}"})
        self.kiosk = httpx.Client(base_url=f"http://127.0.0.1:{kiosk_port}", timeout=300,
                                  headers={"Authorization": f"Bearer {self.key}"})

    def compose(self, *args: str) -> str:
        out = subprocess.run(["docker", "compose", *args], cwd=self.prefix, check=True, text=True,
                             stdout=subprocess.PIPE)
        return out.stdout

    def container(self, service: str) -> str:
        return self.compose("ps", "-q", service).strip()

    def ok(self, r: httpx.Response) -> Any:
        assert r.status_code < 300, f"{r.request.method} {r.request.url}: {r.status_code} {r.text}"
        return r.json()

    def ask(self, question: str) -> str:
        body = {"model": "any", "messages": [{"role": "user", "content": question}], "max_tokens": 24,
                "temperature": 0}
        return str(self.ok(self.kiosk.post("/v1/chat/completions", json=body))["choices"][0]["message"]["content"])

    def served(self) -> str | None:
        r = self.kiosk.get("/readyz")
        return r.json().get("deployment_id") if r.status_code == 200 else None


def install(bundle_dir: Path, prefix: Path, env: dict[str, str]) -> float:
    started = time.monotonic()
    subprocess.run([str(bundle_dir / "install.sh"), "--prefix", str(prefix),
                    "--override", str(ROOT / "tests/docker/compose.test.yaml")], check=True, env=env)
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--results", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="appliance-engine-test-"))
    bundle_dir, prefix = work / "bundle", work / "installed"
    with tarfile.open(args.bundle) as tar:
        tar.extractall(bundle_dir, filter="tar")
    api_port, kiosk_port = free_port(), free_port()
    env = {**os.environ, "APPLIANCE_API_PORT": str(api_port), "APPLIANCE_INFERENCE_PORT": str(kiosk_port),
           "APPLIANCE_BIND": "127.0.0.1"}
    results: dict[str, Any] = {"bundle_bytes": args.bundle.stat().st_size}
    box: Box | None = None
    try:
        log("install.sh (Docker): load the image, write .env, compose up --wait")
        started = time.monotonic()
        install(bundle_dir, prefix, env)
        box = Box(prefix, api_port, kiosk_port)
        first = box.ask("Say hello.")
        results["install_to_kiosk_answer_s"] = round(time.monotonic() - started, 1)
        log(f"first kiosk answer {results['install_to_kiosk_answer_s']} s after install.sh started: {first!r}")
        assert oct((prefix / ".env").stat().st_mode & 0o777) == "0o600", "the .env holding secrets is not 0600"
        assert box.api.get("/api/runs", headers={"Authorization": "Bearer wrong"}).status_code == 401
        # The console and the kiosk page come from the installed wheel in the image: every file they load.
        for client, paths in [(box.api, ["/", "/static/js/main.js", "/static/js/pages/runs.js", "/static/i18n/zh.json",
                                         "/static/vendor/uPlot.esm.js", "/static/style.css",
                                         "/static/kiosk/sse.js"]),
                              (box.kiosk, ["/", "/kiosk/kiosk.js", "/kiosk/sse.js", "/kiosk/kiosk.css",
                                           "/kiosk/config.json"])]:
            for path in paths:
                r = client.get(path)
                assert r.status_code == 200 and r.content, f"{client.base_url}{path}: {r.status_code}"
        log("the console's and the kiosk page's files are served from the image")

        ds = box.ok(box.api.post("/api/datasets", files={"file": ("faq.jsonl", "\n".join(map(json.dumps, FAQ)))}))
        run = box.ok(box.api.post("/api/runs", json={"dataset_id": ds["id"], "base_model_id": "smollm2-135m-instruct",
                                                     "name": "docker", "config": RUN_CONFIG}))
        run_url = f"/api/runs/{run['id']}"
        wait_for("the run to pass step 4", lambda: (box.ok(box.api.get(run_url)).get("step") or 0) >= 4, 900)
        log("docker kill the worker container mid-run")
        subprocess.run(["docker", "kill", box.container("worker")], check=True, stdout=subprocess.DEVNULL)
        step_at_kill = box.ok(box.api.get(run_url))["step"]
        box.compose("up", "-d", "--wait", "--wait-timeout", "600")
        done = wait_for("the run to finish", lambda: box.ok(box.api.get(run_url))["status"]
                        in ("succeeded", "failed", "cancelled") and box.ok(box.api.get(run_url)), 1200, every=2)
        assert done["status"] == "succeeded", done
        log(f"run {done['status']} after the kill at step {step_at_kill} (resumed from its checkpoint)")

        art = box.ok(box.api.post("/api/artifacts/export", json={"run_id": run["id"], "type": "q8_0"}))
        art_url = f"/api/artifacts/{art['id']}"
        wait_for("the export to start", lambda: box.ok(box.api.get(art_url))["status"] == "running", 600, every=0.5)
        pid = subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}}", box.container("worker")], check=True,
                             text=True, stdout=subprocess.PIPE).stdout.strip()
        log(f"crash the worker mid-export (kill -9 of its process {pid}); the restart policy brings it back")
        os.kill(int(pid), 9)
        ready = wait_for("the export to end", lambda: box.ok(box.api.get(art_url))["status"] in ("ready", "failed")
                         and box.ok(box.api.get(art_url)), 1200, every=2)
        assert ready["status"] == "ready", ready
        restarts = subprocess.run(["docker", "inspect", "-f", "{{.RestartCount}}", box.container("worker")],
                                  check=True, text=True, stdout=subprocess.PIPE).stdout.strip()
        assert int(restarts) >= 1, f"the crashed worker was not restarted by its policy ({restarts})"

        dep = box.ok(box.api.post("/api/deployments", json={"artifact_id": art["id"]}))
        wait_for("the kiosk port to serve the deployment", lambda: box.served() == dep["id"], 600)
        answer = box.ask("Where is the pharmacy?")
        log(f"kiosk answer from the fine-tune: {answer!r}")
        assert answer.strip(), "empty kiosk answer"

        log("docker compose down, then up: the deployment is still served")
        box.compose("down")
        box.compose("up", "-d", "--wait", "--wait-timeout", "600")
        wait_for("the deployment after down/up", lambda: box.served() == dep["id"], 600)
        assert box.ask("Where is the pharmacy?") == answer

        log("install.sh again (upgrade in place): data and secrets kept")
        install(bundle_dir, prefix, env)
        box = Box(prefix, api_port, kiosk_port)
        wait_for("the deployment after the upgrade", lambda: box.served() == dep["id"], 600)
        assert box.ok(box.api.get(run_url))["status"] == "succeeded"

        log("backup.sh, a change, restore.sh: the backup's state comes back")
        backup = work / "backup.tar"
        subprocess.run([str(prefix / "backup.sh"), str(backup)], check=True, cwd=prefix)
        extra = box.ok(box.api.post("/api/datasets", files={"file": ("later.jsonl", json.dumps(FAQ[0]) + "\n")}))
        subprocess.run([str(prefix / "restore.sh"), str(backup)], check=True, cwd=prefix)
        assert box.api.get(f"/api/datasets/{extra['id']}").status_code == 404, "restore kept a later dataset"
        wait_for("the deployment after restore", lambda: box.served() == dep["id"], 600)
        results["backup_bytes"] = backup.stat().st_size
        log("all steps passed")
    finally:
        if box is not None:
            subprocess.run(["docker", "compose", "logs", "--no-color", "--tail", "40"], cwd=prefix, check=False)
        subprocess.run([str(prefix / "uninstall.sh"), "--purge"], cwd=prefix, check=False) if (
            prefix / "uninstall.sh").exists() else None
        shutil.rmtree(work, ignore_errors=True)  # the unpacked bundle and the backup: gigabytes
    if args.results:
        args.results.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
