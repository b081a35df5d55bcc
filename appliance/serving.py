"""Kiosks first: serving has priority on the box; training, export and evaluation use what it leaves.

Three parts, each needed (measured in bench/coexist.py; the profile behind them is in its docstring):

- **CPU priority.** Worker children (trainer, export, evaluation) run under Linux's `SCHED_IDLE`
  policy (falling back to nice 19 where it is refused): the scheduler gives them a core only when no
  normal thread wants it, and a waking llama.cpp thread preempts them at once. llama.cpp's threads meet
  at a barrier after every operation of every token; one of them descheduled by a training thread
  leaves the other spinning for a whole time slice, which is what turned a 0.9 s kiosk answer into 47 s.
- **Yield between steps.** The inference process holds a shared lock on `<data_dir>/serving.lock`
  while a kiosk request generates (`Signal`); a child checks it between micro-batches / tensors
  (`ServingGate.wait`) and waits while it is held. This also covers a GPU (a Jetson shares one GPU and
  its memory between the two), which no CPU policy reaches.

The lock is an open-file-description lock (`F_OFD_SETLK`): the kernel drops it when the serving process
dies (kill -9, out of memory), so a crashed server never stalls training; it works across containers
sharing the data volume; a check is one `F_OFD_GETLK` system call, which tests without taking the
lock, so a kiosk request never waits on a low-priority child (no priority inversion).

- **No starvation.** Under continuous kiosk traffic background work still runs at least `min_share` of the
wall-clock time, measured over a sliding window (exponentially decayed sums, time constant `window_s`).
On a CPU the inference server keeps that promise (`KioskPriority`): the worker holds
`<data_dir>/background.lock` while a child lives, and when it does and kiosks have had more than
`1 - min_share` of the recent time, the server holds the next request back briefly. Measured here: with
SCHED_IDLE alone, continuous kiosk traffic left a training run at 0 tokens/s; the idle priority means a
child cannot take CPU from kiosks, so only kiosks leaving a gap can give it some. A child's own gate never
waits below its share either (a serving process that never lets go, a GPU).
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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from appliance.child_protocol import ServingSpec

# How far back "recent" reaches for the minimum share. Short enough that continuous kiosk traffic gives
# training its share within seconds (with 60 s, a run measured here starved for over a minute at the onset
# of continuous traffic), long enough that one long answer does not make the next one wait.
WINDOW_S = 10.0

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


class Signal:
    """A lock file held (shared) while something is active: `enter()` / `leave()` count activities and hold
    the lock while there is at least one; `is_held(path)` asks from any process. Thread-safe; never blocks
    (nobody takes a write lock). The inference server's kiosk requests, and worker children, each hold one."""

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


def is_held(path: Path) -> bool:
    """Whether any process holds the signal at `path` now (one system call; False when no file exists)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        answer = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _flock(fcntl.F_WRLCK))
        return struct.unpack(_FLOCK, answer)[0] != fcntl.F_UNLCK
    finally:
        os.close(fd)


class ShareClock:
    """Recent time split into "ran" and "waited": two exponentially decayed sums (time constant `window_s`),
    so the share reflects about the last `window_s` seconds. Not thread-safe; one owner."""

    def __init__(self, window_s: float, clock: Callable[[], float]) -> None:
        self.window_s, self._clock = window_s, clock
        self.ran = self.waited = 0.0
        self._last = clock()

    def tick(self, ran: bool) -> float:
        """Decay both sums to now, then count the time since the last tick as ran or waited; returns it."""
        now = self._clock()
        dt = max(0.0, now - self._last)
        factor = math.exp(-dt / self.window_s)
        self.ran, self.waited = self.ran * factor, self.waited * factor
        if ran:
            self.ran += dt
        else:
            self.waited += dt
        self._last = now
        return dt

    def share_after_waiting(self, more: float) -> float:
        """The running share if it waited `more` seconds now."""
        total = self.ran + self.waited + more
        return self.ran / total if total > 0 else 1.0


class ServingGate:
    """Used by a worker child between its steps. `wait()` returns the seconds it waited for kiosks.

    `min_share` (0-1]: the least share of recent wall-clock time the child keeps running under
    continuous kiosk traffic; 1 means never wait. `window_s`: how far back "recent" reaches."""

    def __init__(self, path: Path | None, *, enabled: bool = True, min_share: float = 0.2, window_s: float = WINDOW_S,
                 poll_s: float = 0.02, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, active: Callable[[], bool] | None = None) -> None:
        if not 0 < min_share <= 1:
            raise ValueError(f"min_share must be in (0, 1], got {min_share}")
        self.enabled = enabled and path is not None and min_share < 1
        self.min_share, self.poll_s = min_share, poll_s
        self._sleep = sleep
        self._active = active or (lambda: path is not None and is_held(path))
        self._share = ShareClock(window_s, clock)
        self.paused_s = 0.0  # total, for the run's record

    @classmethod
    def from_spec(cls, spec: ServingSpec | None) -> ServingGate:
        """From the `serving` part of a child's spec (the worker's `serving_spec()`); none: never waits."""
        if spec is None:
            return cls(None, enabled=False)
        return cls(spec.lock, enabled=spec.enabled, min_share=spec.min_share)

    def wait(self) -> float:
        if not self.enabled:
            return 0.0
        self._share.tick(ran=True)
        waited = 0.0
        while self._share.share_after_waiting(self.poll_s) >= self.min_share and self._active():
            self._sleep(self.poll_s)
            waited += self._share.tick(ran=False)
        self.paused_s += waited
        return waited


class KioskPriority:
    """The inference server's side: `begin()` before a request generates, `end()` after it.

    It holds the serving signal (children wait while it is held). When background work is waiting (its
    signal is held) and kiosks have had more than `1 - min_share` of the recent time, `begin()` first
    holds the request back, in steps of `poll_s`, until the share is back: those gaps are the only time an
    idle-priority child runs under continuous kiosk traffic. Without background work it never waits.
    Thread-safe (a retiring and a new model's thread may both call it; the compute lock orders them)."""

    def __init__(self, serving_lock: Path, background_lock: Path, *, min_share: float = 0.2,
                 window_s: float = WINDOW_S, poll_s: float = 0.02, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.signal = Signal(serving_lock)
        self.background_lock, self.min_share, self.poll_s = background_lock, min_share, poll_s
        self._sleep = sleep
        self._share = ShareClock(window_s, clock)  # "ran" = kiosks generating
        self._lock = threading.Lock()
        self.held_back_s = 0.0

    def begin(self) -> float:
        """Returns the seconds this request was held back for background work."""
        held, first = 0.0, True
        while True:
            with self._lock:
                dt = self._share.tick(ran=self.signal.in_flight > 0)
                held += 0.0 if first else dt  # the first tick covers the time before the request came
                first = False
                if not self._hold_back():
                    self.held_back_s += held
                    self.signal.enter()
                    return held
            self._sleep(self.poll_s)

    def _hold_back(self) -> bool:
        return (self.min_share < 1 and self._share.share_after_waiting(0.0) > 1 - self.min_share
                and is_held(self.background_lock))

    def end(self) -> None:
        with self._lock:
            self._share.tick(ran=True)
            self.signal.leave()

    def close(self) -> None:
        self.signal.close()
