"""Settings: one pydantic schema read from APPLIANCE_* environment variables (and a .env file)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every field is documented: `appliance config` prints them, a test refuses an undocumented one."""

    model_config = SettingsConfigDict(env_prefix="APPLIANCE_", env_file=".env", extra="ignore")

    data_dir: Path = Field(
        Path("./data"),
        description="Directory holding the database, datasets, models, secrets and every file the "
        "appliance writes. Nothing is written outside it.",
    )
    host: str = Field(
        "127.0.0.1",
        description="Address the API and inference servers bind to. Use 0.0.0.0 to serve the local "
        "network (kiosks).",
    )
    api_port: int = Field(8000, ge=1, le=65535, description="Port of the control plane (REST API, web page).")
    inference_port: int = Field(
        8080, ge=1, le=65535, description="Port of the OpenAI-compatible inference server for kiosks."
    )
    admin_token: SecretStr | None = Field(
        None,
        description="Bearer token for the control plane. When unset, one is generated at first start "
        "into <data_dir>/secrets/admin_token (mode 0600) and reused.",
    )
    kiosk_key: SecretStr | None = Field(
        None,
        description="API key kiosks send to the inference server. When unset, one is generated at "
        "first start into <data_dir>/secrets/kiosk_key (mode 0600) and reused.",
    )
    max_upload_bytes: int = Field(
        256 * 1024 * 1024,
        gt=0,
        description="Largest dataset upload accepted, in bytes; larger uploads are refused with 413.",
    )
    max_dataset_rows: int = Field(
        1_000_000, gt=0, description="Most rows one dataset may hold; more is refused with 422."
    )
    default_cutoff_len: int = Field(
        1024,
        gt=0,
        description="Token length used for dataset statistics (rows longer than this are counted as "
        "over the cutoff) when an upload does not name one.",
    )
    import_bundled_model: bool = Field(
        True,
        description="Import the bundled SmolLM2-135M-Instruct base model at start when it is missing.",
    )
    worker_poll_s: float = Field(1.0, gt=0, description="How often the worker looks for queued runs, in seconds.")
    worker_stale_after_s: float = Field(
        30.0,
        gt=0,
        description="A running run whose worker sent no heartbeat for this long is taken back and resumed "
        "from its last complete checkpoint.",
    )
    llama_cpp_converter: Path | None = Field(
        None,
        description="Folder holding llama.cpp's convert_hf_to_gguf.py (with its conversion/ and gguf-py/), used "
        "to export model families the appliance's own GGUF writer does not cover. Default: the copy shipped with "
        "the appliance, from the llama.cpp source llama-cpp-python is built from.",
    )
    trainer_allocator: Literal["auto", "system"] = Field(
        "auto",
        description="Memory allocator of training processes: 'auto' preloads jemalloc when installed "
        "(Debian/Ubuntu package libjemalloc2; about 20% lower peak memory than glibc's malloc, measured), "
        "'system' keeps the C library's.",
    )
    serving_priority: bool = Field(
        True,
        description="Kiosks first: training, export and evaluation processes run at idle CPU priority "
        "(Linux SCHED_IDLE) and wait between their steps while kiosk requests are in flight, so kiosks "
        "answer at full speed while the box trains. Off: both compete for the cores as equals.",
    )
    training_min_share: float = Field(
        0.2,
        gt=0,
        le=1,
        description="Under continuous kiosk traffic, the least share of wall-clock time (over the last "
        "~10 s) a training, export or evaluation process still runs, so it is never starved. 1 = never "
        "wait for kiosks.",
    )
    eval_max_tokens: int = Field(
        128, ge=1, le=4096, description="Evaluations: most tokens generated per eval question (greedy).",
    )
    eval_parallel: int = Field(
        4, ge=1, le=64, description="Evaluations: questions answered together on the kiosk server's continuous "
        "batching (the answers do not depend on it, only the time; 8 was no faster than 4 on 2 cores; the KV "
        "cache holds this many times 4096 tokens, ~0.4 GB for the bundled 135M model at 4). 1 = one at a time.",
    )
    eval_retention_probe: bool = Field(
        True, description="Evaluations also ask the shipped general-knowledge probe (~50 questions, English and "
        "Chinese) so a fine-tune that forgets ordinary answers is seen (the retention metric).",
    )
    gate_max_nll_increase: float = Field(
        0.05, ge=0, description="Deployment gate: the largest rise of the reference answers' mean negative "
        "log-likelihood (nats per token) on the site's eval set that is not counted as worse. A candidate is "
        "refused when its paired 95% interval shows a rise and the rise is larger than this.",
    )
    gate_max_overlap_drop: float = Field(
        0.02, ge=0, description="Deployment gate: the largest drop of ROUGE-L F1, token F1 and exact match "
        "(fractions, 0-1) on the site's eval set that is not counted as worse.",
    )
    gate_max_retention_drop: float = Field(
        0.05, ge=0, description="Deployment gate: the largest drop of the general-knowledge probe's score "
        "(fraction of its ~50 questions answered) that is not counted as worse.",
    )
    inference_threads: int = Field(
        0, ge=0, description="CPU threads llama.cpp uses per generation; 0 = all cores."
    )
    inference_ctx: int = Field(
        4096, ge=256, description="Context window (tokens) the inference server gives a loaded model."
    )
    inference_parallel: int = Field(
        0,
        ge=0,
        description="Requests decoded together in one batch (continuous batching: a new request joins between "
        "two decode steps). 0 = what memory allows, 4 to 8; 1 = serial serving, one request at a time.",
    )
    inference_queue: int = Field(
        8,
        ge=1,
        description="Requests that may wait for a seat in the batch (APPLIANCE_INFERENCE_PARALLEL). When full, "
        "kiosks get 503 with Retry-After instead of waiting without end.",
    )
    inference_gpu_layers: int = Field(
        -1, description="Layers offloaded to the GPU when llama.cpp was built with one (-1 = all, 0 = none)."
    )
    inference_memory_mb: int = Field(
        0,
        ge=0,
        description="Memory the inference server may use for models, in MB; 0 = what the system has available. "
        "A swap loads the new model beside the old one only when both fit; otherwise it drains, swaps, "
        "and answers 503 with Retry-After during the gap.",
    )
    inference_reconcile_s: float = Field(
        0.5, gt=0, description="How often the inference server checks the database for a new deployment, in s."
    )
    inference_max_request_bytes: int = Field(
        4 * 1024 * 1024,
        gt=0,
        description="Largest request body the inference server reads, in bytes; larger ones get 413 before "
        "they are read to the end or tokenized (a 20 MB prompt stalled every kiosk for 18 s).",
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Origins allowed to call the inference server from a browser (CORS). Empty: CORS off.",
    )
    kiosk_title: str = Field(
        "Ask us", max_length=120, description="Kiosk page (GET / on the inference port): the title shown at the top."
    )
    kiosk_welcome: str = Field(
        "Hello! Type your question below and I will answer it.",
        max_length=1000,
        description="Kiosk page: the welcome text shown at the start of every conversation.",
    )
    kiosk_idle_reset_s: float = Field(
        120.0, ge=0, description="Kiosk page: seconds without a touch or key after which the conversation is "
        "cleared for the next customer; 0 = never.",
    )
    kiosk_url: str | None = Field(
        None, description="Address kiosks open (shown with its QR code on the console's System page). Default: "
        "http://<the host the console was opened on>:<inference_port>/.",
    )
    inference_url: str | None = Field(
        None, description="Where the control plane reaches the inference server for the console's Playground. "
        "Default: http://127.0.0.1:<inference_port> (compose.yaml sets http://inference:<inference_port>).",
    )
    log_level: str = Field("info", description="Log level of the appliance's processes (debug, info, warning).")

    @property
    def kiosk_min_share(self) -> float | None:
        """The share training keeps under continuous kiosk traffic; None when serving priority is off."""
        return self.training_min_share if self.serving_priority else None

    @property
    def gate_margins(self) -> dict[str, float]:
        """Tolerated loss per metric of the deployment gate (appliance/evaluation/compare.py verdict)."""
        overlap = self.gate_max_overlap_drop
        return {"nll": self.gate_max_nll_increase, "rouge_l": overlap, "token_f1": overlap,
                "exact_match": overlap, "retention": self.gate_max_retention_drop}
