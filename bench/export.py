"""GGUF export: the appliance's own writer versus llama.cpp's convert_hf_to_gguf.py on the same
merged model, in one run. Reports wall time and peak RSS of each (whole process: start, imports,
conversion), and whether the tensors of the two files are byte-identical.

    .venv/bin/python bench/export.py [--repeats 3]

llama.cpp's script is taken at bench time from the llama-cpp-python source distribution of the
installed version (`pip download --no-binary :all: --no-deps`, `vendor/llama.cpp/`) into
bench/.work/; its extra dependency (sentencepiece) goes into bench/.work/convert-deps. Nothing of it
is copied into the repository. The merged model: the bundled SmolLM2-135M-Instruct (fp32 HF folder)
with a random rank-16 LoRA on all linear layers merged in. Writes bench/results/export.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / ".work" / "export"


def llama_cpp_source() -> Path:
    ver = version("llama-cpp-python")
    src = WORK / f"llama_cpp_python-{ver}" / "vendor" / "llama.cpp"
    if (src / "convert_hf_to_gguf.py").is_file():
        return src
    WORK.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
                    f"llama-cpp-python=={ver}", "-d", str(WORK)], check=True)
    with tarfile.open(WORK / f"llama_cpp_python-{ver}.tar.gz") as tar:
        tar.extractall(WORK, filter="data")
    return src


def convert_deps() -> Path:
    target = WORK / "convert-deps"
    if not (target / "sentencepiece").is_dir():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(target), "sentencepiece"],
                       check=True)
    return target


def merged_model() -> Path:
    """Made in a child process: a forked child inherits this process's peak RSS in ru_maxrss, so
    this process stays small while it measures."""
    out = WORK / "merged"
    if not (out / "model.safetensors").is_file():
        subprocess.run([sys.executable, __file__, "--make-merged"], check=True)
    return out


def make_merged() -> None:
    out = WORK / "merged"
    import torch
    from peft import LoraConfig, get_peft_model

    from appliance.export.merge import load_base, save_merged
    from appliance.settings import Settings

    base = Settings().data_dir / "models" / "smollm2-135m-instruct" / "hf"
    if not (base / "config.json").is_file():
        raise SystemExit(f"{base} is missing: start the appliance once (make run) to import the bundled model")
    torch.manual_seed(0)
    model = get_peft_model(load_base(base), LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                                       init_lora_weights=False))
    save_merged(model.merge_and_unload(), base, out)


def measure(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if status != 0:
        raise SystemExit(f"{cmd[:3]} failed:\n{err[-2000:]}")
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024}


def compare(a: Path, b: Path) -> dict[str, Any]:
    import gguf
    import numpy as np

    ta = {t.name: t for t in gguf.GGUFReader(a).tensors}
    tb = {t.name: t for t in gguf.GGUFReader(b).tensors}
    differing = [n for n in ta.keys() & tb.keys()
                 if ta[n].tensor_type != tb[n].tensor_type or list(ta[n].shape) != list(tb[n].shape)
                 or not np.array_equal(np.asarray(ta[n].data).view(np.uint8), np.asarray(tb[n].data).view(np.uint8))]
    return {"tensors": len(ta), "only_appliance": sorted(ta.keys() - tb.keys()),
            "only_llama_cpp": sorted(tb.keys() - ta.keys()), "differing": sorted(differing),
            "identical": not differing and ta.keys() == tb.keys()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--types", default="f16,q8_0")
    parser.add_argument("--make-merged", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make_merged:
        make_merged()
        return
    src, deps, merged = llama_cpp_source(), convert_deps(), merged_model()
    env = {**os.environ, "PYTHONPATH": f"{src / 'gguf-py'}:{deps}", "HF_HUB_OFFLINE": "1"}
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "model": "SmolLM2-135M-Instruct + random r16 LoRA merged (fp32 safetensors)",
        "llama_cpp_python": version("llama-cpp-python"), "gguf": version("gguf"), "types": {},
    }
    measured = {}
    for out_type in args.types.split(","):
        ours, theirs = WORK / f"appliance.{out_type}.gguf", WORK / f"llama_cpp.{out_type}.gguf"
        runs: dict[str, list[dict[str, float]]] = {"appliance": [], "llama_cpp": []}
        for i in range(args.repeats):
            order = ["appliance", "llama_cpp"] if i % 2 == 0 else ["llama_cpp", "appliance"]
            for who in order:
                if who == "appliance":
                    cmd = [sys.executable, "-c", "import sys; from pathlib import Path; "
                           "from appliance.export.gguf_write import write_gguf; "
                           "write_gguf(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], name='bench')",
                           str(merged), str(ours), out_type]
                    runs[who].append(measure(cmd))
                else:
                    cmd = [sys.executable, str(src / "convert_hf_to_gguf.py"), str(merged), "--outfile", str(theirs),
                           "--outtype", out_type]
                    runs[who].append(measure(cmd, env))
        measured[out_type] = runs
    # Compared only after every measurement: reading the files grows this process.
    for out_type, runs in measured.items():
        ours, theirs = WORK / f"appliance.{out_type}.gguf", WORK / f"llama_cpp.{out_type}.gguf"
        summary: dict[str, Any] = {who: {"wall_s_median": statistics.median(r["wall_s"] for r in rs),
                                         "peak_rss_mb_max": max(r["peak_rss_mb"] for r in rs), "runs": rs}
                                   for who, rs in runs.items()}
        summary["speedup"] = summary["llama_cpp"]["wall_s_median"] / summary["appliance"]["wall_s_median"]
        summary["tensors"] = compare(ours, theirs)
        summary["file_bytes"] = {"appliance": ours.stat().st_size, "llama_cpp": theirs.stat().st_size}
        results["types"][out_type] = summary
        a, b = summary["appliance"], summary["llama_cpp"]
        print(f"{out_type}: appliance {a['wall_s_median']:.2f} s / {a['peak_rss_mb_max']:.0f} MB; "
              f"llama.cpp {b['wall_s_median']:.2f} s / {b['peak_rss_mb_max']:.0f} MB; "
              f"{summary['speedup']:.2f}x; tensors identical: {summary['tensors']['identical']}")
    out = HERE / "results" / "export.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
