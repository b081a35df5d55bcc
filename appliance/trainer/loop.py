"""The training recipe, run in a child process of the worker: setup, train, checkpoint, finish.

    python -m appliance.trainer SPEC.json

It talks to the worker with one JSON object per line on stdout (plan, data, holdout, metric, samples,
checkpoint, done, error); human-readable logs go to stderr. It never touches the database: the worker records.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import resource
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch

from appliance import fsutil
from appliance.child_protocol import (
    CheckpointSaved,
    DataReport,
    Failed,
    HeldOut,
    Metric,
    Plan,
    Samples,
    TrainDone,
    TrainSpec,
    emit,
    read_spec,
)
from appliance.models.chat import ChatTokenizer
from appliance.paths import CheckpointDir, RunDir
from appliance.serving import ServingGate
from appliance.trainer import data, rows, samples
from appliance.trainer.loss import CHUNK_ROWS, label_loss
from appliance.trainer.model import load, parts, pick_device
from appliance.trainer.parallel import ShardPool, can_shard


class TrainingError(Exception):
    """A run that must stop, with a message for the user."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def token_loss(decoder: Any, head: Any, batch: dict[str, torch.Tensor], chunk_rows: int = CHUNK_ROWS) -> torch.Tensor:
    """Summed cross-entropy over label positions only (see trainer/loss.py)."""
    hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    return label_loss(hidden, head, batch["labels"], data.IGNORE, chunk_rows)


class ShardedPass:
    """Forward and backward of a batch's examples, sharded over the CPU's cores (trainer/parallel.py)."""

    def __init__(self, decoder: Any, head: Any, params: list[torch.nn.Parameter], pool: ShardPool, pad_id: int,
                 device: torch.device) -> None:
        self.decoder, self.head, self.params, self.pool = decoder, head, params, pool
        self.pad_id, self.device = pad_id, device
        self.chunk_rows = max(16, CHUNK_ROWS // pool.shards)  # one logits buffer per shard thread

    def _loss(self, examples: list[data.Example]) -> torch.Tensor:
        batch = {k: v.to(self.device) for k, v in data.collate(examples, self.pad_id).items()}
        return token_loss(self.decoder, self.head, batch, self.chunk_rows)

    def accumulate(self, examples: list[data.Example], n_labels: int) -> float:
        """Adds d(summed loss / n_labels)/dparams of `examples` to the parameters' .grad; returns that loss."""

        def shard(part: list[data.Example]) -> tuple[float, tuple[torch.Tensor | None, ...]]:
            loss = self._loss(part) / n_labels
            return loss.item(), torch.autograd.grad(loss, self.params, allow_unused=True)

        value = 0.0
        for shard_loss, grads in self.pool.map(shard, examples):  # in shard order: a deterministic sum
            value += shard_loss
            for p, g in zip(self.params, grads, strict=True):
                if g is not None:
                    p.grad = g if p.grad is None else p.grad.add_(g)
        return value

    def summed_loss(self, examples: list[data.Example]) -> float:
        def shard(part: list[data.Example]) -> float:
            with torch.no_grad():  # grad mode is per thread
                return float(self._loss(part).item())

        return sum(self.pool.map(shard, examples))


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: RunDir, step: int, model: Any, opt: Any, sched: Any, extra: dict[str, Any]) -> Path:
    """Adapter, optimizer, scheduler, RNG and position, written aside and renamed in when complete."""
    final = run_dir.checkpoint(step).root
    with fsutil.temp_path(run_dir.tmp) as tmp_root:
        tmp_root.mkdir()
        tmp = CheckpointDir(tmp_root)
        model.save_pretrained(str(tmp.adapter), save_embedding_layers=False)
        torch.save(opt.state_dict(), tmp.optimizer)
        torch.save(sched.state_dict(), tmp.scheduler)
        torch.save(_rng_state(pick_device()), tmp.rng)
        if os.environ.get("APPLIANCE_FAULT_POWER_CUT_IN_CHECKPOINT") == str(step):
            # Fault injection for the crash tests: a power cut in the middle of a checkpoint write.
            os.kill(os.getppid(), signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)
        tmp.state.write_text(json.dumps({"step": step, **extra}))
        if final.exists():  # an earlier attempt's, never recorded (it died before the worker saw it)
            shutil.rmtree(final)
        fsutil.publish(tmp_root, final)
    return final


def load_checkpoint(path: Path, model: Any, opt: Any, sched: Any) -> dict[str, Any]:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    ckpt = CheckpointDir(path)
    state = json.loads(ckpt.state.read_text())
    weights = load_file(str(ckpt.adapter / "adapter_model.safetensors"))
    set_peft_model_state_dict(model, weights)
    opt.load_state_dict(torch.load(ckpt.optimizer, weights_only=False))
    sched.load_state_dict(torch.load(ckpt.scheduler, weights_only=False))
    _set_rng_state(torch.load(ckpt.rng, weights_only=False))
    return dict(state)


def check_health(step: int, loss: float, grad_norm: float, history: list[float]) -> None:
    if not math.isfinite(loss):
        raise TrainingError(f"loss became {loss} at step {step}; lower learning_rate or check the data")
    if step == 1 and grad_norm == 0.0:
        raise TrainingError(
            "the gradient norm at step 1 is exactly zero: the adapter cannot learn. With 4-bit "
            "quantization on CPU this happens when the weights were repacked by an inference pass "
            "before training; use quantization_bit: null on CPU"
        )
    if len(history) == 10 and max(history) - min(history) <= 1e-7 * max(1.0, abs(history[0])):
        raise TrainingError(f"the loss has not moved in the first 10 steps (stuck at {history[0]:.6f})")


def report_data(report: rows.DataReport) -> None:
    """Rows cut or left out at cutoff_len: named in train.log and sent to the worker for the run's record."""
    log(report.summary())
    for kind, notes in (("truncated", report.truncated), ("dropped", report.dropped)):
        for note in notes:
            log(f"row {note.row} {kind} ({note.tokens} tokens > cutoff_len {report.cutoff_len}): {note.detail}")
    emit(DataReport.model_validate(report.as_dict()))


def yield_to_kiosks(gate: ServingGate) -> None:
    """Between micro-batches: wait while a kiosk request generates (appliance/serving.py; the worker
    records the time). Pausing changes when a step runs, never what it computes: no random draw or data
    position depends on it."""
    gate.wait()


def evaluate(sharded: ShardedPass, examples: list[data.Example], batch_size: int, gate: ServingGate) -> float:
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        yield_to_kiosks(gate)
        chunk = examples[i : i + batch_size]
        total += sharded.summed_loss(chunk)
        count += sum(e.label_count for e in chunk)
    return total / max(count, 1)


def train(spec: TrainSpec) -> None:
    from transformers import get_scheduler

    cfg = spec.config
    gate = ServingGate.from_spec(spec.serving)  # waits between micro-batches while kiosks generate
    run_dir = RunDir(spec.run_dir)
    device = pick_device()
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    # The template recorded with the run (models/templates.py); runs queued before it was recorded use
    # the model's own.
    tok = ChatTokenizer(spec.hf_dir, template=spec.chat_template)
    if not tok.has_template:  # never train on a guessed format (a run queued before templates were recorded)
        raise TrainingError("the model has no chat template and the run names none; create the run again with "
                            "`template: chatml`")
    examples, report = rows.load_examples(spec.dataset_path, tok, cfg.cutoff_len, cfg.max_samples)
    report_data(report)
    train_set, val_set = data.split(examples, cfg.val_size, cfg.seed)
    if not train_set:
        raise TrainingError(f"no usable training example: {report.summary()}")
    plan = data.BatchPlan(train_set, cfg.per_device_train_batch_size, cfg.seed, cfg.packing)
    ga = cfg.gradient_accumulation_steps
    total = cfg.max_steps or max(1, math.ceil(cfg.num_train_epochs * math.ceil(plan.per_epoch / ga)))
    emit(Plan(max_steps=total, examples=len(train_set), val_examples=len(val_set)))
    held_out = sorted(e.row for e in val_set)
    if held_out:  # the worker records them as the run's eval dataset
        emit(HeldOut(rows=held_out))
    probes = samples.probes(spec.dataset_path, held_out, tok, cfg.cutoff_len) if held_out else []
    stops = samples.stop_ids(tok)
    pad_id = tok.tokenizer.token_to_id(tok.special.get("pad_token") or tok.special.get("eos_token") or "") or 0

    model = load(spec.hf_dir, cfg, device)
    decoder, head = parts(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    warmup = cfg.warmup_steps or math.ceil(total * cfg.warmup_ratio)
    sched = get_scheduler(cfg.lr_scheduler_type, opt, num_warmup_steps=warmup, num_training_steps=total)

    pool = ShardPool(device, cfg.per_device_train_batch_size, enabled=can_shard(model))
    sharded = ShardedPass(decoder, head, params, pool, pad_id, device)
    log(f"{pool.shards} shard(s) per batch, {pool.threads_per_shard} thread(s) each")
    state: dict[str, Any] = {"best_eval": None, "evals_since_best": 0}
    start = 0
    if spec.resume_from is not None:
        state = load_checkpoint(spec.resume_from, model, opt, sched)
        start = int(state.pop("step"))
        log(f"resumed from step {start}")
    model.train()
    history: list[float] = []
    eval_every = cfg.eval_steps or cfg.save_steps
    trained_s = 0.0  # since the last eval step: the held-out questions' time budget (trainer/samples.py)
    for step in range(start + 1, total + 1):
        t0 = time.perf_counter()
        micro = [plan.micro_batch((step - 1) * ga + j) for j in range(ga)]
        n_labels = sum(e.label_count for b in micro for e in b)
        loss_value, real_tokens = 0.0, 0
        for batch in micro:
            # Each part's summed loss over the step's label count: the same gradient as one pass.
            for part in data.split_for_memory(batch, cfg.forward_token_budget):
                yield_to_kiosks(gate)
                loss_value += sharded.accumulate(part, n_labels)
            real_tokens += sum(len(e.input_ids) for e in batch)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
        if start == 0 and len(history) < 10:
            history.append(loss_value)
        check_health(step, loss_value, grad_norm, history if start == 0 else [])
        lr = sched.get_last_lr()[0]
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - t0
        trained_s += elapsed
        if step % cfg.logging_steps == 0 or step == total:
            emit(Metric(kind="train", step=step, loss=loss_value, learning_rate=lr, grad_norm=grad_norm,
                        tokens_per_s=real_tokens / elapsed, tokens=real_tokens, memory_mb=peak_memory_mb(device),
                        epoch=(step * ga) / plan.per_epoch))
        stop = False
        if val_set and (step % eval_every == 0 or step == total):
            model.eval()
            eval_loss = evaluate(sharded, val_set, cfg.per_device_train_batch_size, gate)
            emit(Metric(kind="eval", step=step, loss=eval_loss))
            if probes:
                t_samples, budget_s = time.perf_counter(), samples.budget(trained_s)
                answers = samples.answer(model, tok, probes, device, gate, stops, budget_s)
                log(f"step {step}: answered {len(answers)} of {len(probes)} held-out question(s) in "
                    f"{time.perf_counter() - t_samples:.1f} s (budget {budget_s:.1f} s)")
                emit(Samples(step=step, samples=answers))
            model.train()
            if state["best_eval"] is None or eval_loss < state["best_eval"]:
                state["best_eval"], state["evals_since_best"] = eval_loss, 0
            else:
                state["evals_since_best"] += 1
            trained_s = 0.0
            stop = cfg.early_stopping_steps is not None and state["evals_since_best"] >= cfg.early_stopping_steps
        if step % cfg.save_steps == 0 and step < total and not stop:
            path = save_checkpoint(run_dir, step, model, opt, sched, state)
            emit(CheckpointSaved(step=step, path=path))
        if stop:
            log(f"early stop at step {step}: eval loss has not improved in {cfg.early_stopping_steps} evals")
            break
    pool.close()
    with fsutil.temp_path(run_dir.tmp) as tmp:
        # peft would add the whole frozen lm_head to an adapter with a LoRA on it ("auto"); it is the base's.
        model.save_pretrained(str(tmp), save_embedding_layers=False)
        if run_dir.adapter.exists():  # left by a crash after publishing, before recording
            shutil.rmtree(run_dir.adapter)
        fsutil.publish(tmp, run_dir.adapter)
    log(f"waited {gate.paused_s:.1f} s between steps for kiosk requests in this attempt")
    emit(TrainDone(adapter=run_dir.adapter, steps=step, best_eval=state["best_eval"]))


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        log("usage: python -m appliance.trainer SPEC.json")
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # On a CPU with AVX512-BF16, bitsandbytes tries at import to fetch a kernel from the Hugging Face hub and
    # logs "please pip install kernels" when it cannot; it then runs its own CPU code, as it must offline.
    # Not a problem of the run: kept out of the run's log.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    try:
        spec = read_spec(Path(argv[0]), TrainSpec)
    except (OSError, ValueError) as exc:  # pydantic's ValidationError is a ValueError naming every bad key
        emit(Failed(message=f"the training spec {argv[0]} cannot be read: {exc}"))
        return 2
    try:
        train(spec)
    except TrainingError as exc:
        emit(Failed(message=str(exc)))
        return 3
    return 0
