"""Several fine-tunes on one base: 4 concurrent streaming clients on the bundled model's Q8_0 export,
served plain, through one LoRA adapter, and split 2 + 2 over two adapters of it; the appliance
(one loaded base, sequences grouped by adapter every decode step) against llama.cpp's own
llama-server loaded with the same two GGUF adapters (`--lora`, chosen per request with `lora`), on
the same GGUF and thread count, in one run.

    PYTHONPATH=. .venv/bin/python bench/adapters.py [--llama-server PATH] [--clients 4] [--tokens 96]

The adapters are random (rank 8 on every linear layer, as a fine-tune makes them): what is measured
is the cost of applying them and of decoding two adapters' sequences in separate micro-batches.
Writes bench/results/adapters.json. Uses its own data directory in bench/.work/adapters.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import clients as clients_mod  # bench/clients.py, beside this file
import httpx
from loras import random_adapter  # bench/loras.py, beside this file
from sqlmodel import Session

from appliance.bootstrap import bootstrap
from appliance.db.tables import Artifact
from appliance.jobs import deployments, exports
from appliance.models.adapters import import_adapter
from appliance.models.registry import BUNDLED_ID, ensure_bundled
from appliance.settings import Settings
from appliance.worker.worker import Worker

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work" / "adapters"
KEY = "bench-kiosk-key"


def _export(rt: Any, **kw: Any) -> tuple[str, Path]:
    art, _ = exports.request_export(engine=rt.engine, paths=rt.paths, **kw)
    worker = Worker(rt)
    while True:
        with Session(rt.engine) as s:
            row = s.get(Artifact, art.id)
            assert row is not None
            if row.status in ("ready", "failed"):
                assert row.status == "ready" and row.path, row.error
                return row.id, rt.paths.resolve(row.path)
        worker.run_once()
        time.sleep(0.1)


def setup() -> tuple[Any, Path, dict[str, str], dict[str, Path]]:
    """(runtime, the Q8_0 base GGUF, deployment artifact ids by name, GGUF adapter files by name)."""
    shutil.rmtree(WORK / "data", ignore_errors=True)  # a fresh site each run (the adapter folders are kept)
    rt = bootstrap(Settings(data_dir=WORK / "data", admin_token="bench", kiosk_key=KEY))
    ensure_bundled(engine=rt.engine, paths=rt.paths)
    base_id, base = _export(rt, base_model_id=BUNDLED_ID, out_type="q8_0")
    hf = rt.paths.model_dir(BUNDLED_ID) / "hf"
    ids, files = {"plain": base_id}, {}
    for seed, name in enumerate(("ward-a", "ward-b")):
        folder = WORK / name
        if not (folder / "adapter_model.safetensors").exists():
            random_adapter(hf, folder, rank=8, scale=0.02, seed=seed)
        imported = import_adapter(engine=rt.engine, paths=rt.paths, source=folder, base_model_id=BUNDLED_ID, name=name)
        ids[name], files[name] = _export(rt, adapter_id=imported.id, kind="gguf-adapter", out_type="f16",
                                         base_artifact_id=base_id)
    return rt, base, ids, files


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-server", type=Path, default=Path("/work/cache/llama-server/build/bin/llama-server"))
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--requests", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--ctx", type=int, default=1024)
    args = ap.parse_args()
    load0 = os.getloadavg()[0]
    rt, base, ids, files = setup()
    for name, art in ids.items():
        deployments.request_deployment(engine=rt.engine, paths=rt.paths, artifact_id=art, channel=name)
    n = args.clients
    mixes: dict[str, Any] = {"plain": lambda i: "plain", "one adapter": lambda i: "ward-a",
                             "two adapters, 2 + 2": lambda i: ("ward-a", "ward-b")[i % 2]}
    out: dict[str, Any] = {"appliance": {}, "llama_server": {}}
    port = clients_mod.free_port()
    with clients_mod.appliance(rt.paths.root, port, KEY, args.threads, args.ctx,
                               APPLIANCE_INFERENCE_PARALLEL=str(n)) as url:
        for _ in range(600):  # every named deployment served
            served = {m["id"] for m in httpx.get(f"{url}/v1/models", headers={
                "Authorization": f"Bearer {KEY}"}).json()["data"]}
            if {"plain", "ward-a", "ward-b"} <= served:
                break
            time.sleep(0.5)
        for label, pick in mixes.items():
            out["appliance"][label] = clients_mod.run_clients(url, n, args.requests, args.tokens, KEY,
                                                              extra=lambda i, pick=pick: {"model": pick(i)})
            print("appliance", label, round(out["appliance"][label]["aggregate_tokens_per_s"], 1), flush=True)
    lora_sets = {"plain": lambda i: [], "one adapter": lambda i: [{"id": 0, "scale": 1.0}],
                 "two adapters, 2 + 2": lambda i: [{"id": i % 2, "scale": 1.0}]}
    if args.llama_server.is_file():
        port = clients_mod.free_port()
        with clients_mod.llama_server(args.llama_server, base, port, args.threads, n, args.ctx,
                                      "--lora", str(files["ward-a"]), "--lora", str(files["ward-b"]),
                                      "--lora-init-without-apply") as url:
            for label, loras in lora_sets.items():
                out["llama_server"][label] = clients_mod.run_clients(url, n, args.requests, args.tokens, None,
                                                                     extra=lambda i, lo=loras: {"lora": lo(i)})
                print("llama-server", label, round(out["llama_server"][label]["aggregate_tokens_per_s"], 1),
                      flush=True)
    ratios = {label: round(out["appliance"][label]["aggregate_tokens_per_s"]
                           / out["llama_server"][label]["aggregate_tokens_per_s"], 2)
              for label in mixes if label in out["llama_server"]}
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, threads {args.threads}; load average "
                         f"{load0:.1f} at start, {os.getloadavg()[0]:.1f} at end",
              "model": f"{base.name} (adapters: rank 8, f16, every linear layer)", "clients": n,
              "tokens_per_answer": args.tokens, "results": out, "appliance_vs_llama_server_tokens_per_s": ratios}
    (HERE / "results" / "adapters.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(ratios))


if __name__ == "__main__":
    main()
