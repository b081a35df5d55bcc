"""Inference: the appliance's HTTP endpoint versus llama-cpp-python called in-process, on the same
GGUF and thread count, in one run; steady clients' latency during hot swaps versus without; and
1, 2, 4, 8 concurrent streaming clients against the appliance (continuous batching), the appliance's
previous serial serving (APPLIANCE_INFERENCE_PARALLEL=1) and llama.cpp's own llama-server built from
the llama.cpp source our llama-cpp-python vendors (bench/clients.py).

    .venv/bin/python bench/inference.py [--repeats 9] [--tokens 128] [--llama-server PATH]

Throughput: a streamed greedy chat completion (same prompt, same seed, so both produce the same
tokens); time to first token and decode tokens/s; the endpoint's share is the median over repeats
of endpoint/in-process, each repeat running the two back to back. Swaps: a client sends short chat
requests back to back; p50/p99 latency and failures without swaps, then while deployments
alternate between the bundled model and its Q8_0 export every 2 s (overlap strategy): over all
requests, and over those that overlapped a swap (deployment requested -> new model served), with
`--swap-clients` clients at once. Concurrency: on the Q8_0 export, `--client-tokens` greedy tokens
per answer, each server started per client count with that many parallel sequences. Uses
its own data directory in bench/.work/inference. Writes bench/results/inference.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import clients as clients_mod  # bench/clients.py, beside this file
import httpx

from appliance.bootstrap import bootstrap
from appliance.jobs import deployments, exports
from appliance.models.registry import BUNDLED_ID, ensure_bundled
from appliance.models.served import served_file
from appliance.settings import Settings
from appliance.worker.worker import Worker

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work" / "inference"
KEY = "bench-kiosk-key"
MESSAGES = [{"role": "user", "content": "Write a short story about a lighthouse keeper and a storm."}]


def setup() -> tuple[Any, Path, str]:
    rt = bootstrap(Settings(data_dir=WORK / "data", admin_token="bench", kiosk_key=KEY))
    ensure_bundled(engine=rt.engine, paths=rt.paths)
    art, _ = exports.request_export(engine=rt.engine, paths=rt.paths, base_model_id=BUNDLED_ID, out_type="q8_0")
    worker = Worker(rt)
    while True:
        from sqlmodel import Session

        with Session(rt.engine) as s:
            status = exports.get_artifact(s, art.id).status
            if status in ("ready", "failed"):
                break
        worker.run_once()
        time.sleep(0.1)
    assert status == "ready", "the Q8_0 export failed"
    with Session(rt.engine) as s:
        gguf_path = served_file(s, rt.paths, artifact_id=None, base_model_id=BUNDLED_ID).path
    return rt, gguf_path, art.id


def in_process(llm: Any, tokens: int, repeats: int) -> list[dict[str, float]]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        stamps = []
        for chunk in llm.create_chat_completion(messages=MESSAGES, max_tokens=tokens, temperature=0, seed=0,
                                                stream=True):
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                stamps.append(time.perf_counter())
        out.append(_figures(start, stamps))
    return out


def over_http(base: str, tokens: int, repeats: int) -> list[dict[str, float]]:
    out = []
    body = {"messages": MESSAGES, "max_tokens": tokens, "temperature": 0, "seed": 0, "stream": True}
    with httpx.Client(timeout=300, headers={"Authorization": f"Bearer {KEY}"}) as client:
        for _ in range(repeats):
            start = time.perf_counter()
            stamps = []
            with client.stream("POST", f"{base}/v1/chat/completions", json=body) as res:
                for line in res.iter_lines():
                    if line.startswith("data: {"):
                        chunk = json.loads(line[6:])
                        if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                            stamps.append(time.perf_counter())
            out.append(_figures(start, stamps))
    return out


def _figures(start: float, stamps: list[float]) -> dict[str, float]:
    decode = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0
    return {"ttft_ms": (stamps[0] - start) * 1000, "decode_tokens_per_s": decode, "tokens": len(stamps),
            "total_s": stamps[-1] - start}


def _pcts(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    if not ordered:
        return {"p50_ms": 0.0, "p99_ms": 0.0}
    return {"p50_ms": statistics.median(ordered), "p99_ms": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]}


def steady(base: str, seconds: float, swap: Any = None, clients: int = 1) -> dict[str, Any]:
    """`clients` clients sending short requests back to back for `seconds`; with `swap`, a thread
    deploying models meanwhile, which reports each swap's window (deployment requested -> served)."""
    done: list[tuple[float, float]] = []
    failed: list[int] = []
    windows: list[tuple[float, float]] = []
    stop = threading.Event()
    swapper = None
    if swap is not None:
        swapper = threading.Thread(target=swap, args=(stop, windows), daemon=True)
        swapper.start()
    body = {"messages": [{"role": "user", "content": "Where is the pharmacy?"}], "max_tokens": 16, "temperature": 0}
    end = time.monotonic() + seconds

    def kiosk() -> None:
        with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {KEY}"}) as client:
            while time.monotonic() < end:
                t0 = time.monotonic()
                res = client.post(f"{base}/v1/chat/completions", json=body)
                if res.status_code == 200:
                    done.append((t0, time.monotonic()))
                else:
                    failed.append(res.status_code)

    kiosks = [threading.Thread(target=kiosk) for _ in range(clients)]
    for k in kiosks:
        k.start()
    for k in kiosks:
        k.join()
    failures = len(failed)
    stop.set()
    if swapper is not None:
        swapper.join(30)
    latencies = [(b - a) * 1000 for a, b in done]
    overlapping = [(b - a) * 1000 for a, b in done if any(a < w1 and b > w0 for w0, w1 in windows)]
    return {"clients": clients, "requests": len(done) + failures, "failed": failures, **_pcts(latencies),
            "swaps": len(windows), "overlapping_a_swap": {"requests": len(overlapping), **_pcts(overlapping)}}


def throughput_section(base: str, gguf_path: Path, threads: int, args: argparse.Namespace) -> dict[str, Any]:
    from llama_cpp import Llama

    # One model object for all in-process runs, like the server's (both keep the prompt's KV prefix).
    llm = Llama(model_path=str(gguf_path), n_ctx=1024, n_threads=threads, verbose=False)
    over_http(base, 8, 1)  # warm-up both ways
    in_process(llm, 8, 1)
    http_runs, local_runs = [], []
    for i in range(args.repeats):
        if i % 2 == 0:
            local_runs += in_process(llm, args.tokens, 1)
            http_runs += over_http(base, args.tokens, 1)
        else:
            http_runs += over_http(base, args.tokens, 1)
            local_runs += in_process(llm, args.tokens, 1)
    llm.close()

    def med(runs: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    throughput: dict[str, Any] = {
        "in_process": {"decode_tokens_per_s": med(local_runs, "decode_tokens_per_s"),
                       "ttft_ms": med(local_runs, "ttft_ms"), "runs": local_runs},
        "http_endpoint": {"decode_tokens_per_s": med(http_runs, "decode_tokens_per_s"),
                          "ttft_ms": med(http_runs, "ttft_ms"), "runs": http_runs},
    }
    # Each repeat runs the two back to back (order alternating), so a pair shares the machine's
    # state; this box's speed drifts by a quarter over minutes, which the ratio of the two
    # medians would count against whichever side ran in the slow stretch.
    pair_ratios = [h["decode_tokens_per_s"] / loc["decode_tokens_per_s"]
                   for h, loc in zip(http_runs, local_runs, strict=True)]
    throughput["endpoint_vs_in_process"] = statistics.median(pair_ratios)
    throughput["endpoint_vs_in_process_pairs"] = pair_ratios
    throughput["ratio_of_medians"] = (throughput["http_endpoint"]["decode_tokens_per_s"]
                                      / throughput["in_process"]["decode_tokens_per_s"])
    t = throughput
    print(f"decode tokens/s: in-process {t['in_process']['decode_tokens_per_s']:.1f}, "
          f"endpoint {t['http_endpoint']['decode_tokens_per_s']:.1f}; endpoint/in-process median of "
          f"{len(http_runs)} back-to-back pairs {t['endpoint_vs_in_process']:.1%}; "
          f"TTFT {t['in_process']['ttft_ms']:.0f} vs {t['http_endpoint']['ttft_ms']:.0f} ms")
    return throughput


def swap_section(base: str, rt: Any, q8_id: str, args: argparse.Namespace) -> dict[str, Any]:
    from sqlmodel import Session

    swaps: list[str] = []

    def alternate(stop: threading.Event, windows: list[tuple[float, float]]) -> None:
        """A deployment every `--swap-every` seconds, alternating the two models."""
        targets = [{"artifact_id": q8_id}, {"base_model_id": BUNDLED_ID}]
        i = 0
        while not stop.wait(args.swap_every):
            t0 = time.monotonic()
            dep = deployments.request_deployment(engine=rt.engine, paths=rt.paths, **targets[i % 2])
            swaps.append(dep.id)
            while True:
                with Session(rt.engine) as s:
                    if deployments.get_deployment(s, dep.id).status != "pending":
                        break
                time.sleep(0.01)
            windows.append((t0, time.monotonic()))
            i += 1

    without = steady(base, args.swap_seconds, clients=args.swap_clients)
    during = steady(base, args.swap_seconds, alternate, clients=args.swap_clients)
    with Session(rt.engine) as s:
        recorded = [deployments.get_deployment(s, d) for d in swaps]
    o = during["overlapping_a_swap"]
    print(f"{args.swap_clients} clients, latency p50/p99 without swaps {without['p50_ms']:.0f}/{without['p99_ms']:.0f} "
          f"ms; with {len(swaps)} swaps all {during['p50_ms']:.0f}/{during['p99_ms']:.0f} ms, the {o['requests']} "
          f"overlapping a swap {o['p50_ms']:.0f}/{o['p99_ms']:.0f} ms; failed {during['failed']}")
    return {"without_swaps": without, "during_swaps": during, "swap_every_s": args.swap_every,
            "clients": args.swap_clients,
            "swaps_active": sum(d.status in ("active", "retired") for d in recorded),
            "strategies": sorted({d.strategy or "-" for d in recorded}),
            "load_ms_median": statistics.median(d.load_ms or 0 for d in recorded) if recorded else None,
            "p99_ratio_overlapping": during["overlapping_a_swap"]["p99_ms"] / without["p99_ms"],
            "p99_ratio_all": during["p99_ms"] / without["p99_ms"]}


def concurrency_section(rt: Any, q8_id: str, threads: int, args: argparse.Namespace) -> dict[str, Any]:
    """Each client count against the three servers back to back (this box's speed drifts)."""
    from sqlmodel import Session

    dep = deployments.request_deployment(engine=rt.engine, paths=rt.paths, artifact_id=q8_id, reason="bench")
    with Session(rt.engine) as s:
        gguf = served_file(s, rt.paths, artifact_id=q8_id, base_model_id=None).path
    ctx, tokens, n = 1024, args.client_tokens, args.client_requests
    levels: dict[str, Any] = {}
    for clients in [int(c) for c in args.clients.split(",")]:
        level: dict[str, Any] = {}
        # The appliance as a site runs it: one capacity (8 sequences) whatever the load; llama-server
        # as the issue measured it, --parallel N. Each started per level, so the three run back to back.
        runs = [("appliance_batched", {"APPLIANCE_INFERENCE_PARALLEL": "8"}),
                ("appliance_serial", {"APPLIANCE_INFERENCE_PARALLEL": "1"})]
        for name, env in runs:
            with clients_mod.appliance(rt.paths.root, clients_mod.free_port(), KEY, threads, ctx, **env) as base:
                level[name] = clients_mod.run_clients(base, clients, n, tokens, KEY)
        if args.llama_server:
            with clients_mod.llama_server(args.llama_server, gguf, clients_mod.free_port(), threads, clients,
                                          ctx) as base:
                level["llama_server"] = clients_mod.run_clients(base, clients, n, tokens, None)
        levels[str(clients)] = level
        print(f"{clients} clients: " + "; ".join(
            f"{k} {v.get('aggregate_tokens_per_s', 0):.1f} tok/s, TTFT p50 {v.get('ttft_p50_s', 0):.2f} s, "
            f"p50/p99 {v.get('latency_p50_s', 0):.2f}/{v.get('latency_p99_s', 0):.2f} s, failed {v['failed']} "
            f"{v.get('errors') or ''}"
            for k, v in level.items()))
    ratios = {}
    for key, level in levels.items():
        peer = level.get("llama_server")
        if peer and peer.get("requests"):
            ours = level["appliance_batched"]
            ratios[key] = {"tokens_per_s": ours["aggregate_tokens_per_s"] / peer["aggregate_tokens_per_s"],
                           "p99_latency": ours["latency_p99_s"] / peer["latency_p99_s"]}
    return {"gguf": f"{gguf.name} (the bundled model's Q8_0 export)", "deployment_id": dep.id, "ctx_per_sequence": ctx,
            "max_tokens": tokens, "requests_per_client": n, "levels": levels, "batched_vs_llama_server": ratios,
            "targets": "at 4 and 8 clients: tokens/s >= 0.9x llama-server's, p99 latency <= 1.2x"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--swap-seconds", type=float, default=40, help="length of each latency phase")
    parser.add_argument("--swap-every", type=float, default=2.0, help="seconds between deployments")
    parser.add_argument("--swap-clients", type=int, default=4, help="concurrent clients during the swap phases")
    parser.add_argument("--llama-server", type=Path, help="llama.cpp's llama-server binary (the same vendored "
                        "llama.cpp as llama-cpp-python); without it the concurrency section has no peer")
    parser.add_argument("--clients", default="1,2,4,8", help="concurrent client counts")
    parser.add_argument("--client-requests", type=int, default=3, help="measured requests per client")
    parser.add_argument("--client-tokens", type=int, default=96, help="answer tokens per request")
    parser.add_argument("--sections", default="throughput,swaps,concurrency",
                        help="what to measure; the others keep their figures from the last results file")
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    threads = os.cpu_count() or 1
    rt, gguf_path, q8_id = setup()
    out = HERE / "results" / "inference.json"
    results = json.loads(out.read_text()) if out.exists() else {}
    results.update({"machine": {"cpus": threads, "platform": platform.platform(), "python": platform.python_version()},
                    "model": f"{gguf_path.name} (SmolLM2-135M-Instruct) and its Q8_0 export", "threads": threads,
                    "max_tokens": args.tokens})
    port = clients_mod.free_port()
    if sections & {"throughput", "swaps"}:
        deployments.request_deployment(engine=rt.engine, paths=rt.paths, base_model_id=BUNDLED_ID, reason="bench")
        with clients_mod.appliance(rt.paths.root, port, KEY, threads, 1024) as base:
            if "throughput" in sections:
                results["throughput"] = throughput_section(base, gguf_path, threads, args)
            if "swaps" in sections:
                results["latency"] = swap_section(base, rt, q8_id, args)
    if "concurrency" in sections:
        results["concurrency"] = concurrency_section(rt, q8_id, threads, args)
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
