"""Training config with LLaMA-Factory's key names where the meaning is the same, so an SFT YAML
written for LLaMA-Factory runs unchanged when it uses supported keys. Unknown keys are refused."""

from __future__ import annotations

from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from appliance.errors import InputProblem, InvalidInputError
from appliance.resources import presets_dir

PRESETS_DIR = presets_dir()

# LLaMA-Factory keys whose job the appliance does another way; accepted so its YAMLs run unchanged.
IGNORED_KEYS = {
    "dataset": "the dataset is the run's dataset_id",
    "dataset_dir": "the dataset is the run's dataset_id",
    "output_dir": "output goes to the run's folder in the data directory",
    "overwrite_output_dir": "output goes to the run's folder",
    "overwrite_cache": "no cache is kept",
    "plot_loss": "metrics are recorded per step",
    "report_to": "metrics are recorded in the appliance's database",
    "logging_dir": "logs go to the run's folder",
    "ddp_timeout": "single-device training",
    "preprocessing_num_workers": "tokenization runs in the training process",
    "dataloader_num_workers": "batches are built in the training process",
    "trust_remote_code": "remote code is never run",
    "do_train": "runs always train",
    "stage": "only sft is supported",
}


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_name_or_path: str | None = Field(None, description="A registered base model id (or use base_model_id)")
    finetuning_type: Literal["lora"] = "lora"
    lora_target: str = Field("all", description="'all' linear layers, or a comma list such as q_proj,v_proj")
    lora_rank: int = Field(16, ge=1, le=512)
    lora_alpha: int | None = Field(None, gt=0, description="Default: 2 x lora_rank")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    quantization_bit: Literal[4, 8] | None = Field(None, description="4: QLoRA (NF4, double quant); 8: int8")
    cutoff_len: int = Field(1024, ge=16, le=131072)
    max_samples: int | None = Field(None, ge=1)
    per_device_train_batch_size: int = Field(4, ge=1, le=1024)
    gradient_accumulation_steps: int = Field(1, ge=1, le=1024)
    learning_rate: float = Field(1e-3, gt=0, lt=1)
    num_train_epochs: float = Field(2.0, gt=0)
    max_steps: int | None = Field(None, description="Overrides num_train_epochs when set (> 0)")
    lr_scheduler_type: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    save_steps: int = Field(50, ge=1)
    save_total_limit: int = Field(2, ge=1, description="Complete checkpoints kept (the last K)")
    logging_steps: int = Field(1, ge=1)
    val_size: float = Field(0.0, ge=0, lt=1)
    eval_steps: int | None = Field(None, ge=1)
    early_stopping_steps: int | None = Field(None, ge=1, description="Stop after N evals without improvement")
    seed: int = 42
    packing: bool = Field(True, description="Group sequences by length so batches carry no padding waste")
    bf16: bool = False
    fp16: bool = False
    gradient_checkpointing: bool = False
    forward_token_budget: int | None = Field(
        None, ge=16,
        description="Appliance extension: split each batch into forward passes of at most this many (padded) "
        "tokens. The gradient is the same; peak memory falls, at some cost in speed",
    )
    export_gguf: list[str] = Field(
        default_factory=list,
        description="Appliance extension: GGUF types to export when the run succeeds, e.g. [q8_0, q4_k_m]",
    )
    deploy: Literal["auto"] | None = Field(
        None, description="Appliance extension: `auto` promotes the run when it succeeds: its first GGUF export "
        "(export_gguf's first type, q8_0 when none is named) goes through the deployment gate and is deployed "
        "only if it answers no worse than the model serving now; the run's events say which happened and why",
    )
    template: str | None = Field(
        None, description="Chat template to train and serve with: `chatml`; default: the model's own. Required "
        "for a model without one. Recorded with the run and written into every export",
    )
    stage: Literal["sft"] = "sft"
    do_train: Literal[True] = True
    # Accepted, ignored (see IGNORED_KEYS).
    dataset: str | None = None
    dataset_dir: str | None = None
    output_dir: str | None = None
    overwrite_output_dir: bool | None = None
    overwrite_cache: bool | None = None
    plot_loss: bool | None = None
    report_to: str | list[str] | None = None
    logging_dir: str | None = None
    ddp_timeout: int | None = None
    preprocessing_num_workers: int | None = None
    dataloader_num_workers: int | None = None
    trust_remote_code: bool | None = None

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.bf16 and self.fp16:
            raise ValueError("bf16 and fp16 are exclusive")
        from appliance.export.quantize import ALL_TYPES

        unknown = [t for t in self.export_gguf if t.lower() not in ALL_TYPES]
        if unknown:
            raise ValueError(f"export_gguf: unknown GGUF type(s) {unknown}; choose from {', '.join(ALL_TYPES)}")
        self.export_gguf = [t.lower() for t in self.export_gguf]
        if self.deploy == "auto" and not self.export_gguf:
            self.export_gguf = ["q8_0"]  # what auto-promotion deploys
        if self.max_steps == -1:
            self.max_steps = None  # LLaMA-Factory's (transformers') -1: train by num_train_epochs
        elif self.max_steps is not None and self.max_steps <= 0:
            raise ValueError(f"max_steps: {self.max_steps}; a positive number of steps, or -1 to train by "
                             "num_train_epochs")
        return self

    @property
    def alpha(self) -> int:
        return self.lora_alpha if self.lora_alpha is not None else 2 * self.lora_rank

    @property
    def targets(self) -> list[str] | str:
        names = [t.strip() for t in self.lora_target.split(",") if t.strip()]
        return "all-linear" if names == ["all"] else names


def load_preset(name: str) -> dict[str, Any]:
    path = PRESETS_DIR / f"{name}.yaml"
    if "/" in name or not path.is_file():
        known = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))
        raise InvalidInputError("request", [InputProblem(None, "preset", f"unknown preset {name!r}; known: {known}")])
    data = yaml.safe_load(path.read_text()) or {}
    assert isinstance(data, dict)
    return data


def list_presets() -> dict[str, dict[str, Any]]:
    return {p.stem: yaml.safe_load(p.read_text()) or {} for p in sorted(PRESETS_DIR.glob("*.yaml"))}


def parse_config(raw: dict[str, Any], source: str = "config") -> TrainConfig:
    """Validate, naming each bad key: unknown keys, wrong types, out-of-range values."""
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or None
            message = f"unknown or unsupported key {key!r}" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(InputProblem(None, f"config.{key}" if key else "config", message))
        raise InvalidInputError(source, problems) from exc
