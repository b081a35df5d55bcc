"""What crosses the boundary between the worker and its children (trainer, export): the spec a child
is started with (one JSON file, its only argument) and the messages it prints back (one JSON object per
line on stdout, keyed by "type"). Both ends parse with these models, once: the child its spec at start,
the worker each line as it arrives. Every model refuses unknown keys, so a key added at one end and not
the other fails in a test, not at a site.

    worker --spec.json--> child          TrainSpec | ExportSpec | EvalSpec
    child  --stdout lines--> worker      TrainMessage: plan, data, holdout, metric, samples, checkpoint, done,
                                         error
                                         ExportMessage: progress, done, error
                                         EvalMessage: progress, done, error

Paths in specs and messages are absolute (the child has no data directory of its own). This module
imports no torch: the worker and the API import it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from appliance.trainer.config import TrainConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServingSpec(_Strict):
    """How a child yields to kiosk requests between its steps (appliance/serving.py ServingGate)."""

    lock: Path = Field(description="The inference server's serving.lock")
    enabled: bool = Field(description="APPLIANCE_SERVING_PRIORITY")
    min_share: float = Field(gt=0, le=1, description="Least share of wall-clock time the child keeps running")


# --- specs ------------------------------------------------------------------------------------


class TrainSpec(_Strict):
    """`python -m appliance.trainer SPEC.json`: train `config` on `dataset_path` from `hf_dir` into
    `run_dir` (layout: appliance/paths.py RunDir), resuming from a checkpoint folder when given."""

    run_id: str
    run_dir: Path
    config: TrainConfig = Field(description="The run's config, validated when the run was created")
    dataset_path: Path = Field(description="Normalized dataset, one {'messages': [...]} object per line")
    hf_dir: Path = Field(description="The base model's Hugging Face folder")
    resume_from: Path | None = Field(None, description="A complete checkpoint folder")
    serving: ServingSpec | None = Field(None, description="None: never wait for kiosks")
    chat_template: str | None = Field(None, description="Jinja text the run trains with; None: the model's own")


class ExportSpec(_Strict):
    """`python -m appliance.export SPEC.json`: write a `kind` file of `type` into `work_dir`."""

    artifact_id: str
    kind: Literal["gguf", "gguf-adapter"]
    type: str = Field(description="GGUF type: f32, f16, q8_0, q4_k_m, ... (f32 | f16 for an adapter)")
    name: str = Field(description="File-name-safe model name, at most 64 characters")
    work_dir: Path = Field(description="Empty folder the child writes into, and only into")
    base_hf_dir: Path
    adapter_dir: Path | None = Field(None, description="A run's peft adapter folder; None: the base model")
    merged_dir: Path | None = Field(None, description="A merged folder already exported for the run, reused")
    chat_template: str | None = Field(None, description="The run's template; None: the folder's own")
    serving: ServingSpec | None = None


class EvalSpec(_Strict):
    """`python -m appliance.evaluation SPEC.json`: evaluate the GGUF `model_path` on the eval rows of
    `dataset_path` (plus the retention probe) into `out_dir` (layout: appliance/paths.py EvaluationDir),
    skipping the questions an earlier attempt already scored there."""

    evaluation_id: str
    model_path: Path
    lora_path: Path | None = Field(None, description="A GGUF LoRA adapter applied on model_path (an adapter artifact)")
    model_name: str
    dataset_path: Path = Field(description="Normalized dataset, one {'messages': [...]} object per line")
    out_dir: Path
    max_tokens: int = Field(128, ge=1, description="Most tokens generated per eval question")
    parallel: int = Field(4, ge=1, description="Questions answered together (continuous batching)")
    retention: bool = Field(True, description="Also ask the shipped general-knowledge probe")
    serving: ServingSpec | None = None


# --- messages ---------------------------------------------------------------------------------


class Plan(_Strict):
    """Sent once the data is tokenized: how long the run will be."""

    type: Literal["plan"] = "plan"
    max_steps: int
    examples: int
    val_examples: int


class RowNote(_Strict):
    row: int = Field(description="1-based, in the dataset's order")
    tokens: int = Field(description="The whole row, as the chat template renders it")
    detail: str
    kept: int | None = Field(None, description="Tokens kept, for a truncated row")


class DataReport(_Strict):
    """Rows truncated or dropped at cutoff_len (appliance/trainer/rows.py); the lists name at most 200."""

    type: Literal["data"] = "data"
    cutoff_len: int
    rows: int
    used: int
    truncated_count: int
    dropped_count: int
    truncated: list[RowNote]
    dropped: list[RowNote]


class HeldOut(_Strict):
    """The rows held out as the run's eval set (val_size): exactly the rows its eval loss is computed on.
    The worker records them as an eval dataset (purpose "eval") and names it on the run."""

    type: Literal["holdout"] = "holdout"
    rows: list[int] = Field(min_length=1, description="1-based, in the dataset's order, ascending")


class Sample(_Strict):
    row: int = Field(description="The held-out row, 1-based in the dataset")
    question: str = Field(description="The last user message before the reference answer")
    reference: str
    answer: str = Field(description="Greedy, at most a few dozen tokens; cut at the time budget (trainer/samples.py)")


class Samples(_Strict):
    """Answers the model gives at an eval step to a few held-out questions."""

    type: Literal["samples"] = "samples"
    step: int
    samples: list[Sample]


class Metric(_Strict):
    """One logged step (kind train) or evaluation (kind eval: loss only). loss: mean per label token."""

    type: Literal["metric"] = "metric"
    kind: Literal["train", "eval"]
    step: int
    loss: float
    learning_rate: float | None = None
    grad_norm: float | None = None
    tokens_per_s: float | None = None
    tokens: int | None = None
    memory_mb: float | None = Field(None, description="Peak memory of the child, MiB")
    epoch: float | None = None


class CheckpointSaved(_Strict):
    """A complete checkpoint folder, renamed into place before this is sent."""

    type: Literal["checkpoint"] = "checkpoint"
    step: int
    path: Path


class TrainDone(_Strict):
    type: Literal["done"] = "done"
    adapter: Path = Field(description="The finished adapter folder")
    steps: int
    best_eval: float | None = None


class Progress(_Strict):
    """Progress of an export over all its stages, 0..1."""

    type: Literal["progress"] = "progress"
    stage: str
    progress: float = Field(ge=0, le=1)
    detail: str = ""


class ExportDone(_Strict):
    """The export's files are complete in work_dir: `main` (a file name) and `files` (all to publish);
    `merged`: the name of a merged model folder in work_dir to register too."""

    type: Literal["done"] = "done"
    main: str
    files: list[str]
    merged: str | None = None
    summary: dict[str, Any] | None = Field(None, description="What a GGUF adapter holds")
    verification: dict[str, Any] = Field(description="Logit agreement with torch (export/verify.py compare)")
    failure: str | None = None


class EvalDone(_Strict):
    """The evaluation is complete: its result file is in out_dir; `metrics`: {metric: {mean, low, high, n}}."""

    type: Literal["done"] = "done"
    eval_set: str
    questions: int
    metrics: dict[str, dict[str, float]]
    seconds: float


class Failed(_Strict):
    """The child stopped; `message` is for the user. An export that failed verification sends its figures."""

    type: Literal["error"] = "error"
    message: str
    verification: dict[str, Any] | None = None


TrainMessage = Annotated[Plan | DataReport | HeldOut | Metric | Samples | CheckpointSaved | TrainDone | Failed,
                         Field(discriminator="type")]
ExportMessage = Annotated[Progress | ExportDone | Failed, Field(discriminator="type")]
EvalMessage = Annotated[Progress | EvalDone | Failed, Field(discriminator="type")]
ChildMessage = (Plan | DataReport | HeldOut | Metric | Samples | CheckpointSaved | TrainDone | Progress | ExportDone
                | EvalDone | Failed)

_TRAIN: TypeAdapter[Any] = TypeAdapter(TrainMessage)
_EXPORT: TypeAdapter[Any] = TypeAdapter(ExportMessage)
_EVAL: TypeAdapter[Any] = TypeAdapter(EvalMessage)
_ADAPTERS: dict[str, TypeAdapter[Any]] = {"train": _TRAIN, "export": _EXPORT, "eval": _EVAL}


class ProtocolError(ValueError):
    """A line from a child that is not a message it may send (unknown type, unknown or missing key)."""


def parse_message(line: str, child: Literal["train", "export", "eval"]) -> ChildMessage:
    """One stdout line of a `child` -> its message. Raises ProtocolError naming what is wrong."""
    try:
        msg: ChildMessage = _ADAPTERS[child].validate_json(line)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'message'}: {e['msg']}" for e in exc.errors())
        raise ProtocolError(f"the {child} child sent a message the worker does not understand ({problems}): "
                            f"{line.strip()[:300]}") from exc
    return msg


def emit(message: ChildMessage) -> None:
    """The child's side: print one message as one line on stdout, flushed."""
    print(message.model_dump_json(), flush=True)


S = TypeVar("S", TrainSpec, ExportSpec, EvalSpec)


def read_spec(path: Path, model: type[S]) -> S:
    """A child's spec file -> its model; pydantic's ValidationError names every bad key."""
    return model.model_validate_json(path.read_text())
