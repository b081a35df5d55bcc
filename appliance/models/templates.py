"""Which chat template a run trains with, chosen explicitly and recorded with the run.

A model that ships a template is trained with it unless the config names another (`template`). A
model with none (a *base* model) is refused until the config names one: training on a guessed
format and serving in the GGUF's (absent) one is how a fine-tune ends up answering nothing
(hiyouga/LlamaFactory#6320, ollama/ollama#6823). The chosen template's text travels with the run
into the trainer, the merged folder, the GGUF (`tokenizer.chat_template`) and the Ollama Modelfile.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from appliance.errors import InputProblem, InvalidInputError
from appliance.models.inspect import read_chat_template

# ChatML as LLaMA-Factory's `chatml` template renders it: no default system prompt.
CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Templates the appliance can apply by name (LLaMA-Factory's names). Any other name is refused:
# accepting it and training with something else would change the result without a word.
NAMED: dict[str, str] = {"chatml": CHATML}


@dataclass(frozen=True)
class TemplateChoice:
    name: str  # a key of NAMED, or "model" (the model's own template)
    source: str  # the Jinja text


def _refuse(message: str) -> InvalidInputError:
    return InvalidInputError("request", [InputProblem(None, "config.template", message)])


def choose_template(hf_dir: Path, model_id: str, requested: str | None) -> TemplateChoice:
    """The template a run on this model trains (and is served) with; raises a 422 naming `template`."""
    if requested is not None:
        name = requested.strip().lower()
        if name not in NAMED:
            raise _refuse(
                f"template {requested!r} is not one the appliance can apply; known: {', '.join(sorted(NAMED))}. "
                "Leave `template` out to train with the model's own chat template"
            )
        return TemplateChoice(name, NAMED[name])
    own = read_chat_template(hf_dir)
    if own is None:
        raise _refuse(
            f"model {model_id!r} has no chat template (a base model), so there is no prompt format to train and "
            f"serve with; set `template` to one of: {', '.join(sorted(NAMED))} (e.g. `template: chatml`); "
            "it is recorded with the run and written into every export"
        )
    return TemplateChoice("model", own)
