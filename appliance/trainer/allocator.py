"""The memory allocator of the training child.

glibc's malloc keeps freed activation buffers in its heap, so a training process's resident memory
creeps up step after step; jemalloc returns them. Measured here (SmolLM2-135M, LoRA, batch 4, cutoff
256, 2 cores): peak RSS 2022 MB with glibc, 1657 MB with jemalloc, at 3% less speed. Trimming
glibc's heap every step instead cost 3-20% speed for a smaller gain.
"""

from __future__ import annotations

import platform
from pathlib import Path

CANDIDATES = ("/usr/lib/{arch}-linux-gnu/libjemalloc.so.2", "/usr/lib64/libjemalloc.so.2", "/usr/lib/libjemalloc.so.2")


def jemalloc_path() -> str | None:
    arch = platform.machine()
    for pattern in CANDIDATES:
        path = Path(pattern.format(arch=arch))
        if path.is_file():
            return str(path)
    return None


def training_env(base: dict[str, str], allocator: str) -> dict[str, str]:
    """Environment for a training child: jemalloc preloaded when asked for ('auto') and installed."""
    env = dict(base)
    lib = jemalloc_path() if allocator == "auto" else None
    if lib is not None:
        env["LD_PRELOAD"] = f"{lib} {env['LD_PRELOAD']}".strip() if env.get("LD_PRELOAD") else lib
    return env
