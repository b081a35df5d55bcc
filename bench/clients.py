"""Concurrent streaming clients against an OpenAI-compatible server, and the servers compared:
the appliance's inference process (batched, or serial with APPLIANCE_INFERENCE_PARALLEL=1) and
llama.cpp's own `llama-server`. Used by bench/inference.py.

Each of N clients sends its own prompt (so no server answers from another client's cached prompt)
as a streamed greedy chat completion, `requests` times back to back, after one warm-up request each.
Figures over the measured requests: aggregate decode tokens/s (content chunks of all clients, one
per token on both servers, over the phase's wall time), time to first token and request latency
(p50, p99).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

TOPICS = ["a lighthouse keeper and a storm", "a baker who wakes at three", "a lost dog in a big city",
          "a train that never arrives", "a gardener and a strange seed", "a clockmaker's last clock",
          "a kite that flies away", "a fisherman and a silver fish"]


def _one(client: httpx.Client, url: str, body: dict[str, Any]) -> dict[str, float]:
    start = time.perf_counter()
    stamps = []
    with client.stream("POST", url, json=body) as res:
        res.raise_for_status()
        for line in res.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                    stamps.append(time.perf_counter())
    end = time.perf_counter()
    return {"ttft_s": stamps[0] - start if stamps else end - start, "latency_s": end - start,
            "tokens": len(stamps), "start": start, "end": end}


def run_clients(base: str, clients: int, requests: int, tokens: int, key: str | None,
                extra: Callable[[int], dict[str, Any]] | None = None) -> dict[str, Any]:
    """`clients` threads, each: one warm-up request, then `requests` measured ones back to back.
    `extra(i)`: more request fields for client i (its `model`, llama-server's `lora`)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    url = f"{base}/v1/chat/completions"
    done: list[dict[str, float]] = []
    failed: list[str] = []
    barrier = threading.Barrier(clients)
    lock = threading.Lock()

    def client(i: int) -> None:
        body = {"messages": [{"role": "user", "content": f"Write a short story about {TOPICS[i % len(TOPICS)]}."}],
                "max_tokens": tokens, "temperature": 0, "seed": 0, "stream": True, **(extra(i) if extra else {})}
        # A connection per request: llama-server closes idle keep-alive connections, and a request
        # sent on one it has just closed fails ("Server disconnected without sending a response").
        with httpx.Client(timeout=600, headers={**headers, "Connection": "close"}) as http:
            try:
                _one(http, url, body)
                barrier.wait(timeout=600)
                for _ in range(requests):
                    figures = _one(http, url, body)
                    with lock:
                        done.append(figures)
            except Exception as exc:  # noqa: BLE001  (counted; the bench reports failures)
                barrier.abort()  # the others do not wait for this one at the start line
                with lock:
                    failed.append(repr(exc))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if not done:
        return {"clients": clients, "requests": 0, "failed": len(failed), "errors": failed[:3]}
    wall = max(d["end"] for d in done) - min(d["start"] for d in done)
    total = sum(d["tokens"] for d in done)
    return {"clients": clients, "requests": len(done), "failed": len(failed), "errors": failed[:3], "tokens": total,
            "aggregate_tokens_per_s": total / wall, "wall_s": wall,
            "ttft_p50_s": statistics.median(d["ttft_s"] for d in done),
            "latency_p50_s": statistics.median(d["latency_s"] for d in done),
            "latency_p99_s": _p99([d["latency_s"] for d in done]),
            "tokens_per_request": statistics.median(d["tokens"] for d in done)}


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def free_port() -> int:
    """A port nothing listens on now (other benches may run on this box at the same time)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=5).status_code == 200:
                return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.2)


@contextlib.contextmanager
def appliance(data_dir: Path, port: int, key: str, threads: int, ctx: int, **env: str) -> Iterator[str]:
    """The appliance's inference process on `data_dir` (serving its active deployment)."""
    full = {**os.environ, "APPLIANCE_DATA_DIR": str(data_dir), "APPLIANCE_INFERENCE_PORT": str(port),
            "APPLIANCE_KIOSK_KEY": key, "APPLIANCE_ADMIN_TOKEN": "bench", "APPLIANCE_INFERENCE_CTX": str(ctx),
            "APPLIANCE_INFERENCE_THREADS": str(threads), "APPLIANCE_LOG_LEVEL": "warning", **env}
    proc = subprocess.Popen([sys.executable, "-m", "appliance.cli", "inference"], env=full,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{base}/readyz", proc, "the appliance's inference server")
        yield base
    finally:
        proc.terminate()
        proc.wait(60)


@contextlib.contextmanager
def llama_server(binary: Path, gguf: Path, port: int, threads: int, parallel: int, ctx: int,
                 *args: str) -> Iterator[str]:
    """llama.cpp's llama-server: `parallel` slots of `ctx` tokens each (continuous batching); `args`:
    more of its options (e.g. --lora FILE)."""
    cmd = [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-t", str(threads),
           "-tb", str(threads), "--parallel", str(parallel), "-c", str(ctx * parallel), "--no-webui", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{base}/health", proc, "llama-server")
        yield base
    finally:
        proc.terminate()
        proc.wait(60)
