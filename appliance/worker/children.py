"""The kinds of child the worker supervises (training, export) behind one interface, so the worker's loop
(worker.py) has no branch on the kind: each says which queue it takes jobs from, how to prepare a child
(its spec, per appliance/child_protocol.py), what the child's progress messages record, and how its end is
recorded. Adding a kind (evaluation) is a class here and an entry in `kinds()`.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sqlmodel import Session

from appliance.bootstrap import Runtime
from appliance.child_protocol import (
    CheckpointSaved,
    ChildMessage,
    DataReport,
    EvalDone,
    EvalSpec,
    ExportDone,
    ExportSpec,
    Failed,
    HeldOut,
    Metric,
    Samples,
    ServingSpec,
    TrainDone,
    TrainSpec,
)
from appliance.db.tables import Artifact, Dataset, Evaluation, ModelRecord, Run
from appliance.jobs import evaluations, export_work, exports, gate, run_progress, runs
from appliance.jobs.queue import JobQueue
from appliance.trainer.allocator import training_env
from appliance.trainer.config import TrainConfig

OFFLINE_ENV = {"TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@dataclass
class Job:
    """A child being supervised: its job's id and kind, the process, and what it has said so far."""

    job_id: str
    kind: ChildKind
    proc: subprocess.Popen[str]
    spec: TrainSpec | ExportSpec | EvalSpec | None = None
    stage: str | None = None
    progress: float | None = None
    lines: queue.Queue[str | None] = field(default_factory=queue.Queue)
    done: TrainDone | ExportDone | EvalDone | None = None
    failed: Failed | None = None  # the child's own error message
    error: str | None = None  # why the job fails: the child's message, or one the worker could not read
    last_beat: float = 0.0
    paused_s: float = 0.0  # behind kiosk requests, not yet recorded
    output_ended: bool = False  # the child's stdout reached its end (it may not have exited yet)
    seen_at: float = 0.0


@dataclass(frozen=True)
class Launch:
    """How to start a prepared child: `python -m <module> <spec_file>`, its stderr appended to `log`."""

    spec: TrainSpec | ExportSpec | EvalSpec
    spec_file: Path
    env: dict[str, str]
    header: str  # the line written to the log before the attempt


class ChildKind(ABC):
    child: Literal["train", "export", "eval"]  # which messages it may send (child_protocol.parse_message)
    module: str  # python -m <module> SPEC.json
    what: str  # in messages: "the training process"
    noun: str  # prefix of the worker's log lines: "" for runs, "export " for exports
    reclaimed: str  # the worker's log line for a job taken back, with {id}
    stopped: str  # the event message when the worker stops with this kind's job running
    start_failed: str  # the job's error when its child cannot even start, before ": <why>"
    queue: JobQueue[Any]

    def __init__(self, rt: Runtime, serving: ServingSpec) -> None:
        self.rt, self.serving = rt, serving

    @abstractmethod
    def log_file(self, job_id: str) -> Path: ...

    @abstractmethod
    def discard(self, job_id: str) -> None:
        """Remove what a dead attempt left half-written (no child of this job is alive)."""

    @abstractmethod
    def prepare(self, row: Any) -> Launch:
        """Write the spec of a claimed row's child; raises when the job cannot even start."""

    def record(self, job: Job, msg: ChildMessage) -> None:  # noqa: B027  (most kinds record nothing more)
        """Record a progress message other than progress, done and error (the worker keeps those)."""

    @abstractmethod
    def fail(self, job_id: str, error: str) -> str:
        """Record that the job failed with `error`; returns its status."""

    @abstractmethod
    def finish(self, job: Job, code: int, reason: str) -> str:
        """Record how the child ended (exit `code`; `reason`: why, if it failed); returns the status."""


class Training(ChildKind):
    child, module, what, noun = "train", "appliance.trainer", "training", ""
    reclaimed, stopped = "reclaimed {id}", "worker stopped; will resume"
    start_failed = "could not start training"
    queue = runs.QUEUE

    def log_file(self, job_id: str) -> Path:
        return self.rt.paths.run(job_id).log

    def discard(self, job_id: str) -> None:
        shutil.rmtree(self.rt.paths.run(job_id).tmp, ignore_errors=True)

    def prepare(self, row: Run) -> Launch:
        rt, run_dir = self.rt, self.rt.paths.run(row.id)
        run_dir.root.mkdir(parents=True, exist_ok=True)
        self.discard(row.id)
        resume = run_progress.latest_checkpoint(engine=rt.engine, paths=rt.paths, run_id=row.id)
        run_progress.forget_after(engine=rt.engine, run_id=row.id, step=resume[0] if resume else 0)
        with Session(rt.engine) as session:
            dataset = session.get(Dataset, row.dataset_id)
            model = session.get(ModelRecord, row.base_model_id)
            assert dataset is not None and model is not None and model.hf_path is not None
        spec = TrainSpec(
            run_id=row.id, run_dir=run_dir.root, config=TrainConfig.model_validate_json(row.config_json),
            dataset_path=rt.paths.resolve(dataset.path), hf_dir=rt.paths.resolve(model.hf_path),
            resume_from=resume[1] if resume else None, serving=self.serving, chat_template=row.chat_template,
        )
        run_dir.config.write_text(spec.config.model_dump_json(indent=2))
        run_dir.spec.write_text(spec.model_dump_json(indent=2))
        env = training_env({**os.environ, **OFFLINE_ENV}, rt.settings.trainer_allocator)
        return Launch(spec, run_dir.spec, env, f"--- attempt {row.attempts}, resume from {spec.resume_from}\n")

    def record(self, job: Job, msg: ChildMessage) -> None:
        rt = self.rt
        if isinstance(msg, DataReport):
            run_progress.record_data(engine=rt.engine, run_id=job.job_id, report=msg)
        elif isinstance(msg, HeldOut):
            try:
                run_progress.record_holdout(engine=rt.engine, paths=rt.paths, run_id=job.job_id, rows=msg.rows)
            except Exception as exc:  # the run trains on; only its eval set goes unrecorded (said in the log)
                print(f"[worker] {job.job_id}: could not record the held-out rows as a dataset: {exc}",
                      file=sys.stderr, flush=True)
        elif isinstance(msg, Metric):
            run_progress.record_metric(engine=rt.engine, run_id=job.job_id, metric=msg)
        elif isinstance(msg, Samples):
            run_progress.record_samples(engine=rt.engine, run_id=job.job_id, step=msg.step, samples=msg.samples)
        elif isinstance(msg, CheckpointSaved):
            assert isinstance(job.spec, TrainSpec)
            run_progress.record_checkpoint(engine=rt.engine, paths=rt.paths, run_id=job.job_id, step=msg.step,
                                           path=msg.path, keep=job.spec.config.save_total_limit)

    def fail(self, job_id: str, error: str) -> str:
        return run_progress.finish_run(engine=self.rt.engine, paths=self.rt.paths, run_id=job_id, ok=False, error=error)

    def finish(self, job: Job, code: int, reason: str) -> str:
        rt = self.rt
        if code != 0 or not isinstance(job.done, TrainDone) or job.error is not None:
            return run_progress.finish_run(engine=rt.engine, paths=rt.paths, run_id=job.job_id, ok=False, error=reason,
                                   paused_s=job.paused_s)
        status = run_progress.finish_run(engine=rt.engine, paths=rt.paths, run_id=job.job_id, ok=True,
                                 result=job.done.model_dump(mode="json"), adapter=job.done.adapter,
                                 paused_s=job.paused_s)
        assert isinstance(job.spec, TrainSpec)
        self._queue_exports(job.job_id, job.spec.config.export_gguf)
        return status

    def _queue_exports(self, run_id: str, wanted: list[str]) -> None:
        """Exports the run's config asks for (`export_gguf`), queued behind it."""
        for out_type in wanted:
            try:
                exports.request_export(engine=self.rt.engine, paths=self.rt.paths, run_id=run_id, out_type=out_type)
            except Exception as exc:  # the run itself succeeded; say why the export was not queued
                print(f"[worker] {run_id}: could not queue the {out_type} export: {exc}", file=sys.stderr, flush=True)


class Export(ChildKind):
    child, module, what, noun = "export", "appliance.export", "export", "export "
    reclaimed, stopped = "re-queued export {id}", "worker stopped; will restart"
    start_failed = "could not start the export"
    queue = exports.QUEUE

    def log_file(self, job_id: str) -> Path:
        return self.rt.paths.export_log(job_id)

    def discard(self, job_id: str) -> None:
        shutil.rmtree(self.rt.paths.export_work_dir(job_id), ignore_errors=True)
        self.rt.paths.export_spec(job_id).unlink(missing_ok=True)

    def prepare(self, row: Artifact) -> Launch:
        paths = self.rt.paths
        spec = export_work.spec_for(engine=self.rt.engine, paths=paths, art=row, serving=self.serving)
        self.discard(row.id)
        spec.work_dir.mkdir(parents=True)
        paths.export_spec(row.id).write_text(spec.model_dump_json(indent=2))
        converter = self.rt.settings.llama_cpp_converter  # read by export/converter.py in the child
        extra = {"APPLIANCE_LLAMA_CPP_CONVERTER": str(converter)} if converter else {}
        return Launch(spec, paths.export_spec(row.id), {**os.environ, **OFFLINE_ENV, **extra},
                      f"--- attempt {row.attempts}: {row.kind} {row.type}\n")

    def fail(self, job_id: str, error: str) -> str:
        return export_work.finish(engine=self.rt.engine, paths=self.rt.paths, artifact_id=job_id, done=None,
                                  error=error)

    def finish(self, job: Job, code: int, reason: str) -> str:
        ok = code == 0 and isinstance(job.done, ExportDone) and job.error is None
        status = export_work.finish(engine=self.rt.engine, paths=self.rt.paths, artifact_id=job.job_id,
                                done=job.done if ok and isinstance(job.done, ExportDone) else None,
                                error=None if ok else reason,
                                verification=job.failed.verification if job.failed else None)
        self.rt.paths.export_spec(job.job_id).unlink(missing_ok=True)
        if status == "ready":
            self._promote(job.job_id)
        return status

    def _promote(self, artifact_id: str) -> None:
        """A run with `deploy: auto`: its first GGUF export goes through the deployment gate."""
        from appliance.db import events
        from appliance.db.engine import write_session
        from appliance.errors import ApplianceError

        rt = self.rt
        with Session(rt.engine) as session:
            art = session.get(Artifact, artifact_id)
            run = session.get(Run, art.run_id) if art is not None and art.run_id else None
            if art is None or run is None or art.kind != "gguf":
                return
            config = TrainConfig.model_validate_json(run.config_json)
            if config.deploy != "auto" or art.type != config.export_gguf[0]:
                return
            run_id = run.id
        try:
            dep = gate.request(engine=rt.engine, paths=rt.paths, margins=rt.settings.gate_margins,
                               artifact_id=artifact_id, who="auto-promotion")
            message = (f"auto-promotion: deployment {dep.id} of {art.name or artifact_id}: gate "
                       f"{json.loads(dep.gate_json or '{}').get('status', '?')}")
        except ApplianceError as exc:
            message = f"auto-promotion: not deployed: {exc}"
        with write_session(rt.engine) as session:
            events.record(session, kind="run.promotion", entity_type="run", entity_id=run_id, message=message)
        print(f"[worker] {run_id}: {message}", file=sys.stderr, flush=True)


class Evaluating(ChildKind):
    child, module, what, noun = "eval", "appliance.evaluation", "evaluation", "evaluation "
    reclaimed, stopped = "re-queued evaluation {id}", "worker stopped; will resume"
    start_failed = "could not start the evaluation"
    queue = evaluations.QUEUE

    def log_file(self, job_id: str) -> Path:
        return self.rt.paths.evaluation(job_id).log

    def discard(self, job_id: str) -> None:
        # questions.jsonl stays: a resumed attempt skips what it holds (a torn last line is cut there).
        self.rt.paths.evaluation(job_id).root.joinpath("result.json.partial").unlink(missing_ok=True)

    def prepare(self, row: Evaluation) -> Launch:
        from appliance.evaluation.job import eval_rows
        from appliance.evaluation.run import plan

        rt, where = self.rt, self.rt.paths.evaluation(row.id)
        where.root.mkdir(parents=True, exist_ok=True)
        self.discard(row.id)
        with Session(rt.engine) as session:
            values = evaluations.spec_values(session, rt.paths, row)
        spec = EvalSpec(evaluation_id=row.id, out_dir=where.root, serving=self.serving,
                        max_tokens=rt.settings.eval_max_tokens, parallel=rt.settings.eval_parallel,
                        retention=rt.settings.eval_retention_probe, **values)
        evaluations.set_total(engine=rt.engine, evaluation_id=row.id,
                              total=len(plan(eval_rows(spec.dataset_path), spec.retention)))
        where.spec.write_text(spec.model_dump_json(indent=2))
        return Launch(spec, where.spec, {**os.environ, **OFFLINE_ENV},
                      f"--- attempt {row.attempts}: {row.model_name} on {row.dataset_id}\n")

    def fail(self, job_id: str, error: str) -> str:
        status = evaluations.finish(engine=self.rt.engine, evaluation_id=job_id, done=None, error=error)
        gate.resolve(engine=self.rt.engine, paths=self.rt.paths, margins=self.rt.settings.gate_margins)
        return status

    def finish(self, job: Job, code: int, reason: str) -> str:
        ok = code == 0 and isinstance(job.done, EvalDone) and job.error is None
        status = evaluations.finish(engine=self.rt.engine, evaluation_id=job.job_id,
                                    done=job.done if ok and isinstance(job.done, EvalDone) else None,
                                    error=None if ok else reason)
        for line in gate.resolve(engine=self.rt.engine, paths=self.rt.paths, margins=self.rt.settings.gate_margins):
            print(f"[worker] {line}", file=sys.stderr, flush=True)
        return status


def kinds(rt: Runtime, serving: ServingSpec) -> list[ChildKind]:
    """In the order the worker looks for work: runs, exports, then evaluations."""
    return [Training(rt, serving), Export(rt, serving), Evaluating(rt, serving)]
