"""GPU check of the trainer's CUDA paths: QLoRA 4-bit (NF4, double quant) + bf16 + gradient
checkpointing, 8-bit, bf16 and fp32 LoRA, on a small random llama with SmolLM2's tokenizer. Each
run is then resumed from its step-20 checkpoint and must repeat steps 21-40 exactly.

    TOKENIZER_DIR=data/models/smollm2-135m-instruct/hf OUT=bench/results python bench/gpu_trainer_check.py

Needs a CUDA machine with torch, transformers, peft and bitsandbytes. Writes $OUT/gpucheck.json;
bench/results/gpu_trainer_check.json is its output on an H100 (2026-11-28).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import bitsandbytes
import peft
import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

from appliance.trainer.preflight import gpu_free_mb

VARIANTS: dict[str, dict[str, Any]] = {
    "qlora4_bf16_gc": {"quantization_bit": 4, "bf16": True, "gradient_checkpointing": True},
    "lora8": {"quantization_bit": 8, "bf16": True},
    "lora_bf16": {"bf16": True},
    "lora_fp32": {},
}
PLACES = ["pharmacy", "lab", "x-ray room", "cafeteria", "parking", "front desk", "billing", "chapel"]


def make_model(work: Path) -> None:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=512, intermediate_size=1536, num_hidden_layers=6,
                      num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=2048,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    LlamaForCausalLM(cfg).save_pretrained(work / "hf")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(Path(os.environ.get("TOKENIZER_DIR", ".gpucheck")) / name, work / "hf" / name)
    rows = [{"messages": [{"role": "user", "content": f"Where is the {p}?"},
                          {"role": "assistant", "content": f"The {p} is on floor {i % 4 + 1}, room {100 + i}."}]}
            for i, p in enumerate(PLACES * 4)]
    (work / "ds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def train(spec_file: Path) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    proc = subprocess.run([sys.executable, "-m", "appliance.trainer", str(spec_file)],
                          capture_output=True, text=True, timeout=240)
    messages = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc, messages


def check(work: Path, name: str, extra: dict[str, Any]) -> dict[str, Any]:
    run_dir = work / name
    run_dir.mkdir()
    spec = {"run_id": name, "run_dir": str(run_dir), "hf_dir": str(work / "hf"), "dataset_path": str(work / "ds.jsonl"),
            "config": {"max_steps": 40, "save_steps": 20, "cutoff_len": 128, "per_device_train_batch_size": 8,
                       "learning_rate": 2e-3, "lora_rank": 16, "seed": 1, **extra}}
    (run_dir / "spec.json").write_text(json.dumps(spec))
    t0 = time.time()
    proc, messages = train(run_dir / "spec.json")
    metrics = [m for m in messages if m["type"] == "metric"]
    result: dict[str, Any] = {
        "rc": proc.returncode, "seconds": round(time.time() - t0, 1), "steps": len(metrics),
        "first": metrics[0] if metrics else None, "last": metrics[-1] if metrics else None,
        "checkpoints": [m["step"] for m in messages if m["type"] == "checkpoint"],
        "done": any(m["type"] == "done" for m in messages),
        "error": [m for m in messages if m["type"] == "error"],
        "stderr_tail": proc.stderr[-1500:] if proc.returncode else "",
    }
    checkpoint = run_dir / "checkpoints" / "step-0000020"
    if proc.returncode == 0 and checkpoint.exists():
        (run_dir / "resume.json").write_text(json.dumps({**spec, "resume_from": str(checkpoint)}))
        _, again = train(run_dir / "resume.json")
        resumed = {m["step"]: m["loss"] for m in again if m["type"] == "metric"}
        first = {m["step"]: m["loss"] for m in metrics}
        result["resume_max_abs_diff"] = max(abs(resumed[s] - first[s]) for s in resumed) if resumed else None
    return result


def main() -> None:
    out = Path(os.environ.get("OUT", "/tmp/out"))
    work = Path("/tmp/gpu")
    shutil.rmtree(work, ignore_errors=True)
    (work / "hf").mkdir(parents=True)
    make_model(work)
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", "torch": torch.__version__,
        "bnb": bitsandbytes.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
        "nvidia_smi_free_mb": gpu_free_mb(),
    }
    only = os.environ.get("VARIANTS")
    for name, extra in VARIANTS.items():
        if only and name not in only.split(","):
            continue
        results[name] = check(work, name, extra)
        print(name, json.dumps(results[name])[:600], flush=True)
    (out / "gpucheck.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
