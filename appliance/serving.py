"""Kiosks first: serving has priority on the box; training, export and evaluation use what it leaves.

Two mechanisms, both needed (measured in bench/coexist.py; the profile behind them is in its docstring):

- **CPU priority.** Worker children (trainer, export, evaluation) run under Linux's `SCHED_IDLE`
  policy (falling back to nice 19 where it is refused): the scheduler gives them a core only when no
  normal thread wants it, and a waking llama.cpp thread preempts them at once. llama.cpp's threads meet
  at a barrier after every operation of every token; one of them descheduled by a training thread
  leaves the other spinning for a whole time slice, which is what turned a 0.9 s kiosk answer into 47 s.
- **Yield between steps.** The inference process holds a shared lock on `<data_dir>/run/serving.lock`
  while at least one kiosk request is queued or generating (`ServingSignal`); a child checks it between
  micro-batches / tensors (`ServingGate.wait`) and waits while it is held. This also covers a GPU (a
  Jetson shares one GPU and its memory between the two), which no CPU policy reaches.

The lock is an open-file-description lock (`F_OFD_SETLK`): the kernel drops it when the serving process
dies (kill -9, out of memory), so a crashed server never stalls training; it works across containers
sharing the data volume; a check is one `F_OFD_GETLK` system call, which tests without taking the
lock, so a kiosk request never waits on a low-priority child (no priority inversion).

No starvation: under continuous kiosk traffic a child still runs at least `min_share` of wall-clock
time, measured over a sliding window (exponentially decayed sums, time constant `window_s`).
"""

from __future__ import annotations

import fcntl
import math
import os
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# struct flock on LP64 Linux (x86_64, aarch64): short l_type, short l_whence, off_t l_start, off_t l_len,
# pid_t l_pid, padded to 32 bytes. OFD locks require l_pid == 0; start 0 / len 0 cover the whole file.
_FLOCK = "hhqqi4x"


def _flock(kind: int) -> bytes:
    return struct.pack(_FLOCK, kind, os.SEEK_SET, 0, 0, 0)


def lower_priority() -> str:
    """Put the calling process (and the threads it will start) below serving; returns the policy used.
    Call it in a child before it starts threads (e.g. in `subprocess.Popen(preexec_fn=...)`)."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return "SCHED_IDLE"
    except (OSError, AttributeError):  # refused by a seccomp profile, or not Linux
        os.setpriority(os.PRIO_PROCESS, 0, 19)
        return "nice 19"


class ServingSignal:
    """Held by the inference process: `enter()` when a kiosk request is accepted, `leave()` when it has
    ended (answered, failed or cancelled). Thread-safe; never blocks (nobody takes a write lock)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._count = 0
        self._lock = threading.Lock()

    @property
    def in_flight(self) -> int:
        return self._count

    def enter(self) -> None:
        with self._lock:
            self._count += 1
            if self._count == 1:
                fcntl.fcntl(self._fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_RDLCK))

    def leave(self) -> None:
        with self._lock:
            self._count = max(0, self._count - 1)
            if self._count == 0:
                fcntl.fcntl(self._fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_UNLCK))

    def close(self) -> None:
        with self._lock:
            os.close(self._fd)  # releases the lock


def kiosks_active(path: Path) -> bool:
    """Whether any serving process holds the signal now (one system call; False when no file exists)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        answer = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _flock(fcntl.F_WRLCK))
        return struct.unpack(_FLOCK, answer)[0] != fcntl.F_UNLCK
    finally:
        os.close(fd)


class ServingGate:
    """Used by a worker child between its steps. `wait()` returns the seconds it waited for kiosks.

    `min_share` (0-1]: the least share of recent wall-clock time the child keeps running under
    continuous kiosk traffic; 1 means never wait. `window_s`: how far back "recent" reaches."""

    def __init__(self, path: Path | None, *, enabled: bool = True, min_share: float = 0.2, window_s: float = 60.0,
                 poll_s: float = 0.02, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, active: Callable[[], bool] | None = None) -> None:
        if not 0 < min_share <= 1:
            raise ValueError(f"min_share must be in (0, 1], got {min_share}")
        self.enabled = enabled and path is not None and min_share < 1
        self.min_share, self.window_s, self.poll_s = min_share, window_s, poll_s
        self._clock, self._sleep = clock, sleep
        self._active = active or (lambda: path is not None and kiosks_active(path))
        self.paused_s = 0.0  # total, for the run's record
        self._ran = self._waited = 0.0  # decayed sums over the window
        self._last = clock()

    @classmethod
    def from_spec(cls, spec: dict[str, Any] | None) -> ServingGate:
        """From the `serving` part of a child's spec (the worker's `serving_spec()`); none: never waits."""
        if not spec:
            return cls(None, enabled=False)
        return cls(Path(spec["lock"]), enabled=bool(spec["enabled"]), min_share=float(spec["min_share"]))

    def _decay(self, now: float) -> float:
        dt = max(0.0, now - self._last)
        factor = math.exp(-dt / self.window_s)
        self._ran *= factor
        self._waited *= factor
        self._last = now
        return dt

    def _may_wait(self) -> bool:
        # Waiting is allowed while the running share over the window stays at or above min_share.
        return self._ran >= self.min_share * (self._ran + self._waited + self.poll_s)

    def wait(self) -> float:
        if not self.enabled:
            return 0.0
        ran = self._decay(self._clock())  # decays both sums first, then the new time is added
        self._ran += ran
        start = self._last
        while self._may_wait() and self._active():
            self._sleep(self.poll_s)
            waited = self._decay(self._clock())
            self._waited += waited
        waited = self._last - start
        self.paused_s += waited
        return waited
