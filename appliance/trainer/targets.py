"""`lora_target` checked against the model's own modules before a run is queued. Torch-free (it runs
in the API): module names come from the safetensors headers, tied embeddings from config.json.

Refused, each with what to do instead:
- a name no module of the model has (a typo such as `q_prj`): peft would fail in the worker, after
  the run was queued, or (with another library) match nothing and train nothing;
- a module that is not a linear layer (a norm): LoRA has nothing to add to it;
- `lm_head` when it is tied to `embed_tokens` (tie_word_embeddings): the fused loss reads the shared
  weight, so its LoRA would never train, and a merged delta would change the input embeddings too
  (hiyouga/LlamaFactory#6749, huggingface/peft#2018);
- the embeddings (`embed_tokens`): a GGUF LoRA adapter cannot carry an embedding LoRA, so the run's
  `--adapter` export would fail.
`lm_head` of an untied model is honoured: trained (trainer/loss.py), merged and exported.
"""

from __future__ import annotations

import json
from pathlib import Path

from appliance.errors import InputProblem, InvalidInputError
from appliance.models.inspect import safetensors_header
from appliance.trainer.config import TrainConfig

EMBEDDINGS = ("embed_tokens", "wte", "word_embeddings", "embed_in")


def module_weights(hf_dir: Path) -> dict[str, int]:
    """Full module path -> number of dimensions of its weight, for every module with a weight."""
    modules: dict[str, int] = {}
    for file in sorted(hf_dir.glob("*.safetensors")):
        for name, meta in safetensors_header(file).items():
            if name.endswith(".weight"):
                modules[name.removesuffix(".weight")] = len(meta.get("shape", []))  # type: ignore[arg-type]
    config = json.loads((hf_dir / "config.json").read_text())
    if config.get("tie_word_embeddings") and "lm_head" not in modules:
        modules["lm_head"] = 2  # saved once, as the embeddings; a module all the same
    return modules


def _matches(path: str, target: str) -> bool:
    return path == target or path.endswith("." + target)  # peft's rule for a list of names


def _linear_names(modules: dict[str, int]) -> list[str]:
    leaves = {p.rsplit(".", 1)[-1] for p, ndim in modules.items() if ndim == 2}
    return sorted(n for n in leaves if n not in EMBEDDINGS and n != "lm_head")


def check_targets(hf_dir: Path, model_id: str, cfg: TrainConfig) -> None:
    """Raises a 422 naming `lora_target` for a target that would not be honoured through train, merge
    and export."""
    targets = cfg.targets
    if targets == "all-linear":  # peft's all-linear leaves lm_head out
        return
    modules = module_weights(hf_dir)
    tied = bool(json.loads((hf_dir / "config.json").read_text()).get("tie_word_embeddings"))
    linear = ", ".join(_linear_names(modules))
    problems = []
    for target in targets:
        found = [p for p in modules if _matches(p, target)]
        leaf = target.rsplit(".", 1)[-1]
        if leaf == "lm_head" and tied:
            message = (f"lm_head of {model_id} is tied to embed_tokens (tie_word_embeddings: true): one weight "
                       "serves both, so a LoRA on it would not train and merging it would change the input "
                       f"embeddings. Leave lm_head out: `lora_target: all`, or some of {linear}")
        elif leaf in EMBEDDINGS and found:
            message = (f"LoRA on the embeddings ({target}) is not supported: a GGUF adapter cannot carry it"
                       + (" (and they are tied to lm_head)" if tied else "") + f". Choose among {linear}")
        elif not found:
            message = f"{model_id} has no module named {target!r}; its linear layers: {linear} (or `all`)"
        elif any(modules[p] != 2 for p in found):
            message = f"{target!r} is not a linear layer, so LoRA cannot adapt it; its linear layers: {linear}"
        else:
            continue
        problems.append(InputProblem(None, "config.lora_target", message))
    if problems:
        raise InvalidInputError("request", problems)
