"""OpenMP settings for the inference process, applied before llama.cpp (and so libgomp) loads.

Every loaded model decodes on its own thread with its own OpenMP team (appliance/inference/engine.py),
so a box serving the default model beside a named deployment, or adapters on a shared base beside
them, has more OpenMP threads than cores even though only one team computes at a time (the compute
lock). libgomp then "throttles" the spin at every barrier of every operation to 100 iterations
before sleeping on a futex (libgomp/env.c: gomp_throttled_spin_count_var), and each of the hundreds
of barriers of a decode step pays a futex wake. Measured here (2 cores, bundled model's Q8_0, 4
sequences): with two idle models loaded beside the active one, a decode step took 35-40 ms instead
of 27 (a LoRA adapter's 65 instead of 32); `OMP_WAIT_POLICY=active` raises the throttled spin to
1000 iterations and restored 28 ms (32 ms with the adapter). `GOMP_SPINCOUNT=300000` keeps the
unthrottled spin at libgomp's default (active alone would spin 5 minutes after each decode): an idle
server measured 0% CPU, so training beside it keeps its cores. Explicit settings in the environment win.
"""

from __future__ import annotations

import os

SETTINGS = {"OMP_WAIT_POLICY": "active", "GOMP_SPINCOUNT": "300000"}


def tune() -> None:
    """Set the defaults above unless the environment says otherwise. Call before importing llama_cpp."""
    for key, value in SETTINGS.items():
        os.environ.setdefault(key, value)
