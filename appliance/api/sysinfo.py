"""Machine use for the console's System page, read from /proc and the filesystem (no psutil: one
dependency less in the air-gapped wheelhouse), and GPUs from nvidia-smi when it is installed."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def _cpu_times() -> tuple[int, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields), idle


def cpu_percent(interval_s: float = 0.25) -> float | None:
    """Busy share of all cores over a short interval (the page polls every few seconds)."""
    try:
        total0, idle0 = _cpu_times()
        time.sleep(interval_s)
        total1, idle1 = _cpu_times()
    except (OSError, ValueError, IndexError):
        return None
    total = total1 - total0
    return round(100.0 * (1 - (idle1 - idle0) / total), 1) if total > 0 else 0.0


def memory() -> dict[str, int] | None:
    try:
        info = {k: int(v.split()[0]) * 1024 for k, v in
                (line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)}
    except (OSError, ValueError):
        return None
    total, available = info.get("MemTotal", 0), info.get("MemAvailable", 0)
    return {"total_bytes": total, "used_bytes": total - available}


def disk(path: Path) -> dict[str, int]:
    usage = shutil.disk_usage(path)
    return {"total_bytes": usage.total, "used_bytes": usage.used}


def gpus() -> list[dict[str, Any]]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "--query-gpu=name,utilization.gpu,memory.used,memory.total",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    found = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 4:
            name, util, used, total = parts
            found.append({"name": name, "percent": float(util) if util.replace(".", "").isdigit() else None,
                          "used_bytes": int(float(used) * 2**20), "total_bytes": int(float(total) * 2**20)})
    return found


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": ".".join(map(str, sys.version_info[:3]))}
    for dist in ("appliance", "fastapi", "llama-cpp-python", "torch", "transformers", "peft"):
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return found
