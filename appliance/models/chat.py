"""A model's tokenizer and chat template without torch or transformers: the `tokenizers` library
and a Jinja sandbox configured the way transformers renders chat templates, so the API process can
count tokens exactly as training will see them."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from appliance.models.inspect import read_chat_template
from appliance.models.templates import CHATML

# Token counts (dataset stats, export verification prompts) of a model that ships no template are
# measured as ChatML. Training never falls back: a run records the template it uses
# (models/templates.py) and passes it here explicitly.
COUNTING_FALLBACK = CHATML


class TemplateError(Exception):
    pass


def _raise(message: str) -> None:
    raise TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, **_: Any) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent)


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


class ChatTokenizer:
    """`template`: the Jinja text to render with (a run's recorded template); default: the model's own."""

    def __init__(self, hf_dir: Path, template: str | None = None) -> None:
        self.tokenizer = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
        config_path = hf_dir / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        self.special = {
            key: _token_text(config.get(key))
            for key in ("bos_token", "eos_token", "unk_token", "pad_token")
        }
        source = template if template is not None else read_chat_template(hf_dir)
        self.has_template = source is not None
        self.source = source
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self.template = env.from_string(source or COUNTING_FALLBACK)

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = False) -> str:
        return self.template.render(
            messages=messages, add_generation_prompt=add_generation_prompt, **self.special
        )

    def count_tokens(self, conversations: list[list[dict[str, Any]]]) -> list[int]:
        """Tokens per conversation as the chat template renders it (special tokens are in the text)."""
        texts = [self.render(c) for c in conversations]
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=False)
        return [len(e.ids) for e in encodings]
