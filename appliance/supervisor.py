"""`appliance up`: start each service as a child process and restart one that dies, with backoff.

A crash (or an out-of-memory kill) of one service never takes the others down; the database is
the only thing they share, so a restarted service converges again from it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

MAX_BACKOFF_S = 30.0


@dataclass
class Service:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = 0.0
    log: list[str] = field(default_factory=list)


class Supervisor:
    def __init__(self, services: list[Service]) -> None:
        self.services = services
        self.stopping = False

    def run_once(self, now: float) -> list[str]:
        """Start what should run, notice what died; returns what it did (for logs and tests)."""
        did: list[str] = []
        for svc in self.services:
            if svc.proc is not None and svc.proc.poll() is not None:
                code = svc.proc.returncode
                # Back off only when it dies young; a service that ran a while restarts at once.
                young = now - svc.started_at < 10
                svc.restarts += 1
                delay = min(MAX_BACKOFF_S, 2 ** min(svc.restarts, 5) / 2) if young else 0.0
                svc.next_start = now + delay
                svc.proc = None
                did.append(f"{svc.name} exited with {code}; restarting in {delay:.0f}s")
            if svc.proc is None and not self.stopping and now >= svc.next_start:
                svc.proc = subprocess.Popen(svc.argv)
                svc.started_at = now
                did.append(f"started {svc.name} (pid {svc.proc.pid})")
        return did

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping = True
        for svc in self.services:
            if svc.proc is not None and svc.proc.poll() is None:
                svc.proc.terminate()
        deadline = time.monotonic() + timeout
        for svc in self.services:
            if svc.proc is not None:
                try:
                    svc.proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    svc.proc.kill()

    def run_forever(self, poll_s: float = 0.5) -> None:
        def _stop(_signum: int, _frame: object) -> None:
            self.stopping = True

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        try:
            while not self.stopping:
                for line in self.run_once(time.monotonic()):
                    print(f"[appliance up] {line}", file=sys.stderr, flush=True)
                time.sleep(poll_s)
        finally:
            self.stop()
