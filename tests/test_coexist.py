"""Kiosks first, end to end: a real inference server answering continuous kiosk traffic while the worker
trains. The run still finishes (the server leaves it its minimum share), the time it spent behind kiosk
requests is recorded, and the server says how long it held requests back for it."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import httpx
from test_inference import Server, chat
from test_runs import CRASH_CONFIG, Env, wait_for

from appliance.worker.worker import Worker


def test_a_run_progresses_under_continuous_kiosk_traffic(data_dir: Path) -> None:
    env = Env(data_dir, training_min_share=0.5)
    server = Server(data_dir, APPLIANCE_TRAINING_MIN_SHARE="0.5").start()
    stop, answers, errors = threading.Event(), [], []

    def kiosk() -> None:  # the next question the moment an answer arrives
        client = server.client(retries=2)
        while not stop.is_set():
            try:
                answers.append(chat(client, max_tokens=32).choices[0].message.content)
            except Exception as exc:  # noqa: BLE001  (reported below: a kiosk must never fail)
                errors.append(exc)

    thread = threading.Thread(target=kiosk, daemon=True)
    try:
        thread.start()
        wait_for(lambda: len(answers) >= 2, 120)  # kiosks are busy before the run starts
        run = env.create({**CRASH_CONFIG, "max_steps": 4, "save_steps": 10})
        worker = Worker(env.runtime)
        wait_for(lambda: env.run(run["id"])["status"] in ("succeeded", "failed"), 900, worker.run_once)
        stop.set()
        thread.join(120)
        done = env.run(run["id"])
        assert done["status"] == "succeeded", done["error"]
        assert errors == [] and len(answers) > 2
        assert done["paused_for_serving_s"] > 0
        metrics = httpx.get(f"{server.base}/metrics").text
        held = re.search(r"^appliance_inference_held_back_seconds_total (\S+)$", metrics, re.M)
        assert held is not None and float(held.group(1)) > 0, metrics
    finally:
        stop.set()
        server.stop()
        env.close()
