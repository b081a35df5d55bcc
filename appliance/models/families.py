"""The model families the appliance imports, trains, exports and serves, and what differs between them.

One row per family: the Hugging Face architecture names that identify it (config.json
`architectures[0]`), the GGUF architecture llama.cpp gives it, which exporter writes its GGUF, whether
the trainer's fused kernels (appliance/trainer/kernels.py) match its layers, the traits the trainer and
exporter must honour, and the chat-template keywords kiosks are served with. Anything else is refused
at import, naming what is supported: a model that imports but cannot be exported or served is a trap.

Exporters: "writer" is the appliance's own GGUF writer (appliance/export/gguf_write.py, about twice as
fast as llama.cpp's converter); "llama.cpp" is llama.cpp's own `convert_hf_to_gguf.py` from the pinned
llama.cpp source llama-cpp-python is built from (appliance/export/converter.py). Either way the
verification against torch logits decides.

Qwen3's template has a thinking switch (`enable_thinking`, on when undefined): kiosks get answers
without a `<think>` preamble unless a deployment asks for it. `serving_template` writes that default
into the template text itself (so the GGUF's `tokenizer.chat_template` renders answers without
reasoning in any llama.cpp client), and `template_kwargs` is what a server passes to turn it back on.
Torch-free: the API imports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from appliance.errors import ModelImportError

Exporter = Literal["writer", "llama.cpp"]


@dataclass(frozen=True)
class Family:
    key: str
    name: str  # what a person calls it
    architectures: tuple[str, ...]  # HF `architectures[0]` values
    gguf_arch: str  # llama.cpp's architecture name (general.architecture)
    exporter: Exporter
    fused_mlp: bool  # SiLU-gated gate_proj/up_proj/down_proj MLP: trainer SiluMul applies
    fused_norm: bool  # x * rsqrt(mean(x^2) + eps) * weight: trainer RMSNorm applies (not Gemma's 1 + weight)
    traits: frozenset[str] = field(default_factory=frozenset)
    # Chat-template switches kiosks are served with unless a deployment asks otherwise.
    template_defaults: dict[str, bool] = field(default_factory=dict)
    # GPU memory model: extra bytes per token and layer of activations relative to a llama layer
    # (Gemma's wider MLP and attention soft-capping keep more; trainer/memory.py).
    activation_factor: float = 1.0


FAMILIES: tuple[Family, ...] = (
    Family("llama", "Llama 3.x / SmolLM2", ("LlamaForCausalLM",), "llama", "writer", True, True,
           frozenset({"tied-embeddings-optional", "llama3-rope-scaling"})),
    Family("qwen2", "Qwen2.5", ("Qwen2ForCausalLM",), "qwen2", "writer", True, True,
           frozenset({"attention-bias", "tied-embeddings-optional"})),
    Family("qwen3", "Qwen3 (dense)", ("Qwen3ForCausalLM",), "qwen3", "writer", True, True,
           frozenset({"qk-norm", "tied-embeddings-optional", "thinking-switch"}),
           template_defaults={"enable_thinking": False}),
    Family("mistral", "Mistral / Ministral", ("MistralForCausalLM",), "llama", "writer", True, True,
           frozenset({"sliding-window-optional"})),
    Family("gemma2", "Gemma 2", ("Gemma2ForCausalLM",), "gemma2", "writer", False, False,
           frozenset({"tied-embeddings", "sliding-window", "softcap", "gelu-mlp", "norm-plus-one"}),
           activation_factor=1.5),
    Family("gemma3", "Gemma 3 (text)", ("Gemma3ForCausalLM",), "gemma3", "llama.cpp", False, False,
           frozenset({"tied-embeddings", "sliding-window", "qk-norm", "gelu-mlp", "norm-plus-one"}),
           activation_factor=1.5),
    Family("phi3", "Phi-3 / Phi-4-mini", ("Phi3ForCausalLM",), "phi3", "llama.cpp", False, True,
           frozenset({"fused-qkv", "fused-gate-up", "tied-embeddings-optional"})),
    Family("smollm3", "SmolLM3", ("SmolLM3ForCausalLM",), "smollm3", "llama.cpp", True, True,
           frozenset({"nope-layers", "tied-embeddings", "thinking-switch"}),
           template_defaults={"enable_thinking": False}),
)

BY_ARCHITECTURE: dict[str, Family] = {arch: f for f in FAMILIES for arch in f.architectures}
# GGUF general.architecture -> family, for GGUF imports (llama also covers Mistral's GGUFs).
BY_GGUF_ARCH: dict[str, Family] = {f.gguf_arch: f for f in reversed(FAMILIES)}


def supported() -> str:
    """'Llama 3.x / SmolLM2 (LlamaForCausalLM), ...' for messages."""
    return "; ".join(f"{f.name} ({', '.join(f.architectures)})" for f in FAMILIES)


def family_of(architecture: str) -> Family:
    """The family of an HF architecture name (or a GGUF architecture name). Raises ModelImportError (422)
    naming every supported family when there is none."""
    family = BY_ARCHITECTURE.get(architecture) or BY_GGUF_ARCH.get(architecture)
    if family is None:
        raise ModelImportError(
            f"architecture {architecture!r} is not a model family the appliance can train, export and serve; "
            f"supported: {supported()}"
        )
    return family


def find(architecture: str) -> Family | None:
    """The family, or None (no error) for models registered before the family table existed."""
    return BY_ARCHITECTURE.get(architecture) or BY_GGUF_ARCH.get(architecture)


def template_kwargs(architecture: str, *, thinking: bool = False) -> dict[str, Any]:
    """Keyword arguments a chat-template renderer gets for this family: Qwen3's `enable_thinking`
    (False for kiosks; True when a deployment asks for the reasoning). Empty for families without switches.
    Where a server renders with extra kwargs (llama-cpp-python's Jinja2ChatFormatter does not take any),
    this is what to pass; the GGUF's own template already defaults to the kiosk setting (serving_template)."""
    family = find(architecture)
    if family is None or not family.template_defaults:
        return {}
    return {key: thinking for key in family.template_defaults}


def serving_template(template: str, architecture: str) -> str:
    """The template with this family's serving defaults set where the caller leaves them undefined:
    for Qwen3, `enable_thinking` false, so a renderer that passes nothing (llama.cpp, Ollama,
    llama-cpp-python) answers without a reasoning preamble. Idempotent; other families unchanged."""
    family = find(architecture)
    if family is None or not family.template_defaults:
        return template
    header = "".join(
        f"{{%- if {key} is not defined %}}{{%- set {key} = {str(value).lower()} %}}{{%- endif %}}"
        for key, value in family.template_defaults.items()
    )
    return template if template.startswith(header) else header + template
