"""The worker loop. One job at a time: claim, spawn the child, relay its progress into SQLite,
heartbeat, stop it when cancelled, record how it ended. `run_once()` does one round and returns
what it did, so tests can drive it step by step.

The child dies with the worker (PR_SET_PDEATHSIG): after a `kill -9` of the worker no orphan
keeps training, and the next worker resumes the run from its last recorded checkpoint.

Runs and exports differ only in what worker/children.py says about them; their queues share one
contract (appliance/jobs/queue.py) and their children one protocol (appliance/child_protocol.py), each
line parsed once here: a line that is not a message the child may send fails the job, naming it.
"""

from __future__ import annotations

import ctypes
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from typing import IO, Any

from appliance.bootstrap import Runtime
from appliance.child_protocol import (
    EvalDone,
    ExportDone,
    Failed,
    Progress,
    ProtocolError,
    ServingSpec,
    TrainDone,
    parse_message,
)
from appliance.jobs.queue import Beat
from appliance.serving import Signal, is_held, lower_priority
from appliance.worker.children import ChildKind, Job, kinds

HEARTBEAT_S = 2.0

__all__ = ["HEARTBEAT_S", "Job", "Worker"]


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _below_serving() -> None:
    """preexec_fn of a child when serving has priority: it dies with the worker and runs at idle priority
    (appliance/serving.py); set before exec, so every thread the child starts inherits the policy."""
    _die_with_parent()
    lower_priority()


def _pump(stream: IO[str], sink: queue.Queue[str | None]) -> None:
    for line in stream:
        sink.put(line)
    sink.put(None)


def _say(line: str) -> None:
    print(f"[worker] {line}", file=sys.stderr, flush=True)


class Worker:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self._job: Job | None = None
        self.kinds: list[ChildKind] = kinds(runtime, self.serving_spec())
        # Held while a child lives, from before its first instruction (imports included): the inference
        # server then leaves it its minimum share under continuous kiosk traffic (appliance/serving.py).
        self.background = Signal(runtime.paths.background_lock) if runtime.settings.serving_priority else None

    @property
    def job(self) -> Job | None:
        return self._job

    @job.setter
    def job(self, job: Job | None) -> None:
        if self.background is not None and job is None and self._job is not None:
            self.background.leave()
        elif self.background is not None and job is not None and self._job is None:
            self.background.enter()
        self._job = job

    def run_once(self) -> list[str]:
        if self.job is not None:
            return self._watch(self.job)
        did: list[str] = []
        for kind in self.kinds:
            for job_id in kind.queue.reclaim_stale(engine=self.rt.engine,
                                                   stale_after_s=self.rt.settings.worker_stale_after_s):
                kind.discard(job_id)
                did.append(kind.reclaimed.format(id=job_id))
            row = kind.queue.claim(engine=self.rt.engine, pid=os.getpid())
            if row is None:
                continue
            try:
                self.job = self._start(kind, row)
            except Exception as exc:  # a job that cannot even start must not be retried forever
                kind.fail(row.id, f"{kind.start_failed}: {exc}")
                did.append(f"{kind.noun}{row.id} failed to start: {exc}")
                return did
            did.append(f"started {kind.noun}{row.id} (child pid {self.job.proc.pid})")
            return did
        return did

    def serving_spec(self) -> ServingSpec:
        """What a child needs to wait for kiosks between its steps (appliance/serving.py)."""
        s = self.rt.settings
        return ServingSpec(lock=self.rt.paths.serving_lock, enabled=s.serving_priority, min_share=s.training_min_share)

    def _start(self, kind: ChildKind, row: Any) -> Job:
        launch = kind.prepare(row)
        log_file = kind.log_file(row.id)
        log_file.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_file, "a")  # noqa: SIM115  (the child owns it until it exits)
        log.write(launch.header)
        log.flush()
        below = self.rt.settings.serving_priority
        proc = subprocess.Popen([sys.executable, "-m", kind.module, str(launch.spec_file)], stdout=subprocess.PIPE,
                                stderr=log, text=True, preexec_fn=_below_serving if below else _die_with_parent,
                                env=launch.env)
        log.close()
        job = Job(row.id, kind, proc, launch.spec)
        assert proc.stdout is not None
        threading.Thread(target=_pump, args=(proc.stdout, job.lines), daemon=True).start()
        return job

    def _relay(self, job: Job) -> bool:
        """Record what the child said; True once its output has ended (and on every call after: the end
        can be read before the process has exited, and the next call must still know it)."""
        while not job.output_ended:
            try:
                line = job.lines.get_nowait()
            except queue.Empty:
                return False
            if line is None:
                job.output_ended = True
                break
            if not line.lstrip().startswith("{"):  # a library's print(): not a message, kept for the log
                _say(f"{job.job_id}: the child printed: {line.rstrip()[:300]}")
                continue
            try:
                msg = parse_message(line, job.kind.child)
            except ProtocolError as exc:  # the two ends disagree: a bug, failed loudly rather than dropped
                _say(f"{job.job_id}: {exc}")
                job.error = job.error or str(exc)
                continue
            if isinstance(msg, Progress):
                job.stage, job.progress = msg.stage, msg.progress
            elif isinstance(msg, TrainDone | ExportDone | EvalDone):
                job.done = msg
            elif isinstance(msg, Failed):
                job.failed, job.error = msg, msg.message
            else:
                job.kind.record(job, msg)
        return True

    def _watch(self, job: Job) -> list[str]:
        ended = self._relay(job)
        now = time.monotonic()
        # Time behind kiosks: while a kiosk request generates, the child waits at its next step and its
        # idle-priority threads get no core (appliance/serving.py), so that time is the job's wait.
        if job.seen_at and is_held(self.rt.paths.serving_lock):
            job.paused_s += now - job.seen_at
        job.seen_at = now
        if now - job.last_beat >= HEARTBEAT_S and job.proc.poll() is None:
            job.last_beat = now
            paused, job.paused_s = job.paused_s, 0.0
            beat = Beat(paused_s=paused, stage=job.stage, progress=job.progress)
            if job.kind.queue.heartbeat(engine=self.rt.engine, job_id=job.job_id, beat=beat) != "running":
                self._stop_child(job)
                return [f"stopped {job.kind.noun}{job.job_id}: no longer running (cancelled)"]
        if job.proc.poll() is None or not ended:
            return []
        return [self._finish(job)]

    def _stop_child(self, job: Job) -> None:
        job.proc.terminate()
        try:
            job.proc.wait(10)
        except subprocess.TimeoutExpired:
            job.proc.kill()
            job.proc.wait()
        self._relay(job)
        self.job = None

    def _finish(self, job: Job) -> str:
        code = job.proc.wait()
        self.job = None
        reason = job.error or self._crash_reason(job, code)
        status = job.kind.finish(job, code, reason)
        return f"{job.kind.noun}{job.job_id} ended: {status} (exit {code})"

    def _crash_reason(self, job: Job, code: int) -> str:
        what = job.kind.what
        if code == -signal.SIGKILL:
            return f"the {what} process was killed (SIGKILL); most often the system ran out of memory"
        log = job.kind.log_file(job.job_id)
        tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
        return f"the {what} process exited with {code}: " + " | ".join(tail)

    def run_forever(self) -> None:
        stopping = False

        def _stop(_signum: int, _frame: object) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        while not stopping:
            for line in self.run_once():
                _say(line)
            time.sleep(0.2 if self.job else self.rt.settings.worker_poll_s)
        if self.job is not None:
            job = self.job
            self._stop_child(job)
            job.kind.queue.requeue(engine=self.rt.engine, job_id=job.job_id, reason=job.kind.stopped)
