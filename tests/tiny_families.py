"""A tiny, randomly initialised model of each supported family, built from the family's real config shape
(its traits kept: tied embeddings, attention biases, q/k norms, explicit head_dim, sliding windows,
soft-capping, NoPE layers, llama3 RoPE scaling), shrunk to hidden 64 and 2 layers. No hub: the
bundled SmolLM2 tokenizer, with the family's own chat template (tests/family_templates/, the files
llama.cpp keeps of each model's template) written into the tokenizer config."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from appliance.child_protocol import ExportSpec, TrainSpec
from appliance.trainer.config import TrainConfig

QUESTIONS = [("Where is the pharmacy?", "The pharmacy is on floor 2, room 104."),
             ("When does the lab open?", "The lab opens at seven in the morning."),
             ("Who runs the front desk?", "Maria runs the front desk on weekdays."),
             ("Is parking free?", "Parking is free for the first two hours.")]
TEMPLATES = Path(__file__).parent / "family_templates"
COMMON: dict[str, Any] = dict(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                              initializer_range=0.1, bos_token_id=1, eos_token_id=2, pad_token_id=2)

# family key -> (config class, extra config, template file); the shapes are each family's own traits.
SPECS: dict[str, tuple[str, dict[str, Any], str | None]] = {
    "smollm2": ("LlamaConfig", dict(tie_word_embeddings=True, rope_theta=100000.0), None),
    "llama": ("LlamaConfig", dict(tie_word_embeddings=True, rope_parameters={
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 256}),
        "meta-llama-Llama-3.2-3B-Instruct.jinja"),
    "qwen2": ("Qwen2Config", dict(tie_word_embeddings=True, rope_theta=1000000.0), "Qwen-Qwen2.5-7B-Instruct.jinja"),
    "qwen3": ("Qwen3Config", dict(tie_word_embeddings=True, head_dim=32, rope_theta=1000000.0),
              "Qwen-Qwen3-0.6B.jinja"),
    "mistral": ("MistralConfig", dict(tie_word_embeddings=False, head_dim=16, sliding_window=None,
                                      rope_theta=1000000.0), "mistralai-Mistral-Nemo-Instruct-2407.jinja"),
    "gemma2": ("Gemma2Config", dict(head_dim=16, query_pre_attn_scalar=16, sliding_window=24,
                                    attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                                    hidden_activation="gelu_pytorch_tanh"), "google-gemma-2-2b-it.jinja"),
    "gemma3": ("Gemma3TextConfig", dict(head_dim=16, query_pre_attn_scalar=16, sliding_window=24),
               "google-gemma-3-it.jinja"),
    "phi3": ("Phi3Config", dict(tie_word_embeddings=False, rope_theta=10000.0, original_max_position_embeddings=2048),
             "microsoft-Phi-3.5-mini-instruct.jinja"),
    "smollm3": ("SmolLM3Config", dict(tie_word_embeddings=True, rope_theta=2000000.0, num_hidden_layers=4,
                                      use_sliding_window=False), "HuggingFaceTB-SmolLM3-3B.jinja"),
}
ARCHITECTURE = {"gemma3": "Gemma3ForCausalLM"}  # the text-only class, not the multimodal one


def template(family: str, tokenizer_from: Path) -> str:
    name = SPECS[family][2]
    return (TEMPLATES / name).read_text() if name else (tokenizer_from / "chat_template.jinja").read_text()


def model_of(family: str, seed: int = 0, **overrides: Any) -> Any:
    """The tiny `family` model in memory (fp32, random weights; norms and biases random too)."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    cls_name, extra, _ = SPECS[family]
    config = getattr(transformers, cls_name)(**{**COMMON, **extra, **overrides})
    if family in ARCHITECTURE:
        config.architectures = [ARCHITECTURE[family]]
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # norms start at 1 (Gemma: at 0); random ones make q/k norms and biases count
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.normal_(1.0 if "norm" in name and not family.startswith("gemma") else 0.0, 0.1)
    return model


def build(family: str, out: Path, tokenizer_from: Path, seed: int = 0) -> Path:
    """Write a tiny `family` model (safetensors, config, tokenizer, its chat template) into `out`."""
    model = model_of(family, seed)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    shutil.copy2(tokenizer_from / "tokenizer.json", out / "tokenizer.json")
    tok_config = json.loads((tokenizer_from / "tokenizer_config.json").read_text())
    chat = template(family, tokenizer_from)
    tok_config["chat_template"] = chat
    if family == "phi3":
        tok_config["tokenizer_class"] = "GPT2Tokenizer"  # Phi-4-mini's BPE tokenizer (no tokenizer.model)
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2))
    (out / "chat_template.jinja").write_text(chat)
    return out


def messages(question: str, answer: str | None = None) -> list[dict[str, str]]:
    out = [{"role": "user", "content": question}]
    return [*out, {"role": "assistant", "content": answer}] if answer is not None else out


def train(hf: Path, work: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, list[float]]:
    from appliance.trainer.loop import train as train_run

    dataset = work / "faq.jsonl"
    dataset.write_text("".join(json.dumps({"messages": messages(q, a)}) + "\n" for q, a in QUESTIONS))
    config = TrainConfig(max_steps=8, learning_rate=1e-2, lora_rank=8, cutoff_len=256, per_device_train_batch_size=4,
                         warmup_ratio=0.0, save_steps=100, lr_scheduler_type="constant")
    capsys.readouterr()
    train_run(TrainSpec(run_id="run_family", run_dir=work / "run", config=config, dataset_path=dataset, hf_dir=hf))
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    losses = [m["loss"] for m in lines if m["type"] == "metric" and m["kind"] == "train"]
    return work / "run" / "adapter", losses


def export(hf: Path, work: Path, out_type: str, name: str, adapter: Path | None,
            merged: Path | None) -> dict[str, Any]:
    from appliance.export.job import run

    folder = work / f"export-{out_type}"
    folder.mkdir()
    spec = ExportSpec(artifact_id=f"art_{out_type}", kind="gguf", type=out_type, name=name, work_dir=folder,
                      base_hf_dir=hf, adapter_dir=adapter, merged_dir=merged)
    result = run(spec)
    assert result["failure"] is None, result
    result["path"] = folder / result["main"]
    result["merged_path"] = folder / "merged" if result.get("merged") else merged
    return result
