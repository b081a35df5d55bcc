"""The worker loop. One job at a time: claim, spawn the child, relay its progress into SQLite,
heartbeat, stop it when cancelled, record how it ended. `run_once()` does one round and returns
what it did, so tests can drive it step by step.

The child dies with the worker (PR_SET_PDEATHSIG): after a `kill -9` of the worker no orphan
keeps training, and the next worker resumes the run from its last recorded checkpoint.
"""

from __future__ import annotations

import ctypes
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from sqlmodel import Session

from appliance.bootstrap import Runtime
from appliance.db.tables import Artifact, Run
from appliance.jobs import exports, runs
from appliance.serving import Signal, is_held, lower_priority
from appliance.trainer.allocator import training_env
from appliance.trainer.config import TrainConfig

HEARTBEAT_S = 2.0


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _below_serving() -> None:
    """preexec_fn of a child when serving has priority: it dies with the worker and runs at idle priority
    (appliance/serving.py); set before exec, so every thread the child starts inherits the policy."""
    _die_with_parent()
    lower_priority()


@dataclass
class Job:
    run_id: str  # the run's id, or the artifact's for an export
    proc: subprocess.Popen[str]
    keep: int
    kind: str = "run"  # run | export
    stage: str | None = None
    progress: float | None = None
    lines: queue.Queue[str | None] = field(default_factory=queue.Queue)
    done: dict[str, Any] | None = None
    error: str | None = None
    last_beat: float = 0.0
    paused_s: float = 0.0  # behind kiosk requests, not yet recorded
    output_ended: bool = False  # the child's stdout reached its end (it may not have exited yet)
    seen_at: float = 0.0


def _pump(stream: IO[str], sink: queue.Queue[str | None]) -> None:
    for line in stream:
        sink.put(line)
    sink.put(None)


class Worker:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self._job: Job | None = None
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
        if self.job is None:
            did = [f"reclaimed {r}" for r in runs.reclaim_stale(
                engine=self.rt.engine, stale_after_s=self.rt.settings.worker_stale_after_s)]
            run = runs.claim_next(engine=self.rt.engine, pid=os.getpid())
            if run is not None:
                try:
                    self.job = self._start(run)
                except Exception as exc:  # a run that cannot even start must not be retried forever
                    runs.finish_run(engine=self.rt.engine, paths=self.rt.paths, run_id=run.id, ok=False,
                                    error=f"could not start training: {exc}")
                    did.append(f"{run.id} failed to start: {exc}")
                    return did
                did.append(f"started {run.id} (child pid {self.job.proc.pid})")
                return did
            did += [f"re-queued export {a}" for a in exports.reclaim_stale(
                engine=self.rt.engine, paths=self.rt.paths, stale_after_s=self.rt.settings.worker_stale_after_s)]
            art = exports.claim_next(engine=self.rt.engine, pid=os.getpid())
            if art is not None:
                try:
                    self.job = self._start_export(art)
                except Exception as exc:
                    exports.finish(engine=self.rt.engine, paths=self.rt.paths, artifact_id=art.id, ok=False,
                                   error=f"could not start the export: {exc}")
                    did.append(f"export {art.id} failed to start: {exc}")
                    return did
                did.append(f"started export {art.id} (child pid {self.job.proc.pid})")
            return did
        return self._watch(self.job)

    def _spawn(self, argv: list[str], log: IO[str], env: dict[str, str]) -> subprocess.Popen[str]:
        below = self.rt.settings.serving_priority
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True,
                                preexec_fn=_below_serving if below else _die_with_parent, env=env)

    def serving_spec(self) -> dict[str, Any]:
        """What a child needs to wait for kiosks between its steps (appliance/serving.py)."""
        s = self.rt.settings
        return {"lock": str(self.rt.paths.serving_lock), "enabled": s.serving_priority,
                "min_share": s.training_min_share}

    def _start_export(self, art: Artifact) -> Job:
        rt = self.rt
        spec = {**exports.spec_for(engine=rt.engine, paths=rt.paths, art=art), "serving": self.serving_spec()}
        work = Path(spec["work_dir"])
        shutil.rmtree(work, ignore_errors=True)  # a killed attempt's leftovers
        work.mkdir(parents=True)
        logs = rt.paths.root / "logs"
        logs.mkdir(exist_ok=True)
        spec_file = rt.paths.tmp / f"export-{art.id}.json"
        spec_file.write_text(json.dumps(spec, indent=2))
        log = open(logs / f"export-{art.id}.log", "a")  # noqa: SIM115  (the child owns it until it exits)
        log.write(f"--- attempt {art.attempts}: {art.kind} {art.type}\n")
        log.flush()
        proc = self._spawn([sys.executable, "-m", "appliance.export", str(spec_file)], log,
                           {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
        log.close()
        job = Job(art.id, proc, 0, kind="export")
        assert proc.stdout is not None
        threading.Thread(target=_pump, args=(proc.stdout, job.lines), daemon=True).start()
        return job

    def _start(self, run: Run) -> Job:
        rt = self.rt
        run_dir = rt.paths.run_dir(run.id)
        run_dir.mkdir(parents=True, exist_ok=True)
        # No child of this run is alive now: whatever a killed one left half-written goes.
        shutil.rmtree(run_dir / "tmp", ignore_errors=True)
        cfg = TrainConfig.model_validate_json(run.config_json)
        resume = runs.latest_checkpoint(engine=rt.engine, paths=rt.paths, run_id=run.id)
        runs.forget_after(engine=rt.engine, run_id=run.id, step=resume[0] if resume else 0)
        with Session(rt.engine) as session:
            from appliance.db.tables import Dataset, ModelRecord

            dataset = session.get(Dataset, run.dataset_id)
            model = session.get(ModelRecord, run.base_model_id)
            assert dataset is not None and model is not None and model.hf_path is not None
        spec = {
            "run_id": run.id, "run_dir": str(run_dir), "config": json.loads(run.config_json),
            "dataset_path": str(rt.paths.resolve(dataset.path)), "hf_dir": str(rt.paths.resolve(model.hf_path)),
            "resume_from": str(resume[1]) if resume else None, "serving": self.serving_spec(),
            "chat_template": run.chat_template,
        }
        (run_dir / "config.json").write_text(json.dumps(spec["config"], indent=2))
        (run_dir / "spec.json").write_text(json.dumps(spec, indent=2))
        log = open(run_dir / "train.log", "a")  # noqa: SIM115  (the child owns it until it exits)
        log.write(f"--- attempt {run.attempts}, resume from {spec['resume_from']}\n")
        log.flush()
        proc = self._spawn(
            [sys.executable, "-m", "appliance.trainer", str(run_dir / "spec.json")], log,
            training_env({**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
                         rt.settings.trainer_allocator),
        )
        log.close()
        job = Job(run.id, proc, cfg.save_total_limit)
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
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                continue
            kind = msg.get("type")
            if kind == "progress":
                job.stage, job.progress = msg.get("stage"), msg.get("progress")
            elif kind == "data":
                runs.record_data(engine=self.rt.engine, run_id=job.run_id, report=msg)
            elif kind == "metric":
                runs.record_metric(engine=self.rt.engine, run_id=job.run_id, metric=msg)
            elif kind == "checkpoint":
                runs.record_checkpoint(engine=self.rt.engine, paths=self.rt.paths, run_id=job.run_id,
                                       step=msg["step"], path=Path(msg["path"]), keep=job.keep)
            elif kind == "done":
                job.done = msg
            elif kind == "error":
                job.error = msg["message"]
                job.done = msg if job.kind == "export" and msg.get("verification") else job.done
        return True

    def _watch(self, job: Job) -> list[str]:
        ended = self._relay(job)
        now = time.monotonic()
        # Time behind kiosks: while a kiosk request generates, the child waits at its next step and its
        # idle-priority threads get no core (appliance/serving.py), so that time is the run's wait.
        if job.seen_at and is_held(self.rt.paths.serving_lock):
            job.paused_s += now - job.seen_at
        job.seen_at = now
        if now - job.last_beat >= HEARTBEAT_S and job.proc.poll() is None:
            job.last_beat = now
            paused, job.paused_s = job.paused_s, 0.0
            if job.kind == "export":
                exports.heartbeat(engine=self.rt.engine, artifact_id=job.run_id, stage=job.stage, progress=job.progress)
            elif runs.heartbeat(engine=self.rt.engine, run_id=job.run_id, paused_s=paused) != "running":
                self._stop_child(job)
                return [f"stopped {job.run_id}: no longer running (cancelled)"]
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
        if job.kind == "export":
            ok = code == 0 and job.done is not None and job.error is None
            reason = job.error or (self._crash_reason(job.run_id, code) if not ok else None)
            status = exports.finish(engine=self.rt.engine, paths=self.rt.paths, artifact_id=job.run_id, ok=ok,
                                    result=job.done, error=reason)
            (self.rt.paths.tmp / f"export-{job.run_id}.json").unlink(missing_ok=True)
            return f"export {job.run_id} ended: {status} (exit {code})"
        if code == 0 and job.done is not None:
            status = runs.finish_run(engine=self.rt.engine, paths=self.rt.paths, run_id=job.run_id, ok=True,
                                     result=job.done, adapter=Path(job.done["adapter"]), paused_s=job.paused_s)
            self._queue_exports(job.run_id)
        else:
            reason = job.error or self._crash_reason(job.run_id, code)
            status = runs.finish_run(engine=self.rt.engine, paths=self.rt.paths, run_id=job.run_id, ok=False,
                                     error=reason, paused_s=job.paused_s)
        return f"{job.run_id} ended: {status} (exit {code})"

    def _queue_exports(self, run_id: str) -> None:
        """Exports the run's config asks for (`export_gguf`), queued behind it."""
        with Session(self.rt.engine) as session:
            run = session.get(Run, run_id)
            wanted = TrainConfig.model_validate_json(run.config_json).export_gguf if run is not None else []
        for out_type in wanted:
            try:
                exports.request_export(engine=self.rt.engine, paths=self.rt.paths, run_id=run_id, out_type=out_type)
            except Exception as exc:  # the run itself succeeded; say why the export was not queued
                print(f"[worker] {run_id}: could not queue the {out_type} export: {exc}", file=sys.stderr, flush=True)

    def _crash_reason(self, run_id: str, code: int) -> str:
        what = "export" if run_id.startswith("art_") else "training"
        if code == -signal.SIGKILL:
            return f"the {what} process was killed (SIGKILL); most often the system ran out of memory"
        log = (self.rt.paths.root / "logs" / f"export-{run_id}.log" if what == "export"
               else self.rt.paths.run_dir(run_id) / "train.log")
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
                print(f"[worker] {line}", file=sys.stderr, flush=True)
            time.sleep(0.2 if self.job else self.rt.settings.worker_poll_s)
        if self.job is not None:
            job = self.job
            self._stop_child(job)
            if job.kind == "export":
                exports.requeue(engine=self.rt.engine, artifact_id=job.run_id, reason="worker stopped; will restart")
            else:
                runs.requeue(engine=self.rt.engine, run_id=job.run_id, reason="worker stopped; will resume")
