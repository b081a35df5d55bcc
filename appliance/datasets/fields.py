"""Field-level rules shared by every row shape: what counts as absent, how text is cleaned, which
keys are accepted, and what a message's `content` and `weight` may be.

Every key of a row is either used or refused with the key's path: a key we silently dropped (a
`weight: 0`, a tool call) would train something other than what the user wrote.
"""

from __future__ import annotations

import json
from typing import Any

ROLES = ("system", "user", "assistant")
ROLE_ALIASES = {"developer": "system"}  # OpenAI's newer name for the system message
TOOL_KEYS = ("tools", "functions", "parallel_tool_calls", "tool_calls", "tool_call_id", "function_call")
TOOL_ROLES = ("tool", "function", "function_call", "observation", "ipython")
IMAGE_PARTS = ("image_url", "image", "input_image", "input_audio", "audio", "file")
NO_TOOLS = "tool and function calling cannot be trained here"
MAX_NESTING_MESSAGE = "JSON nested too deeply to read (a dataset row needs only a few levels)"

Message = dict[str, Any]  # {"role", "content", "name"?, "weight"?: 0}


class RowError(Exception):
    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def present(value: Any) -> bool:
    """Excel and exporters write an absent optional field as a blank cell, '', '   ', null or []:
    all of them mean 'not given', never an empty system prompt or a trailing '\\n   '."""
    if value is None:
        return False
    if isinstance(value, str):
        return bool(value.strip())
    if isinstance(value, list | dict):
        return bool(value)
    return True


def clean(text: str) -> str:
    """Encoding noise out of stored text: byte-order marks anywhere and CR line ends (Windows, Excel)."""
    return text.replace("\ufeff", "").replace("\r\n", "\n").replace("\r", "\n")


def roles_text() -> str:
    return f"supported roles: {', '.join(ROLES)} (developer is read as system)"


def check_keys(obj: dict[str, Any], accepted: tuple[str, ...], prefix: str, what: str) -> None:
    """Refuse the first key that is given (not blank) but not accepted, naming it and saying what is."""
    for key, value in obj.items():
        if key in accepted or key == "__csv__" or not present(value):
            continue
        field = f"{prefix}{key}"
        accepts = f"accepted keys of {what}: {list(accepted)}"
        if key in TOOL_KEYS:
            raise RowError(field, f"{key!r} is not supported: {NO_TOOLS}; {accepts}")
        raise RowError(field, f"unknown key {key!r} (it would not be trained); {accepts}")


def text(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise RowError(field, f"expected a string, got {type(value).__name__}")
    return clean(value)


def content_text(value: Any, field: str) -> str:
    """A message's content: a string, or OpenAI's list of text parts (joined, as OpenAI does)."""
    if isinstance(value, str):
        return clean(value)
    if value is None:
        raise RowError(field, "content is null: every message needs text")
    if not isinstance(value, list):
        raise RowError(field, f"expected a string or a list of text parts, got {type(value).__name__}")
    texts: list[str] = []
    for j, part in enumerate(value):
        where = f"{field}[{j}]"
        if not isinstance(part, dict):
            raise RowError(where, f"expected a content part {{'type': 'text', 'text': ...}}, got {type(part).__name__}")
        kind = part.get("type")
        if kind in IMAGE_PARTS:
            raise RowError(where, f"{kind!r} parts are not supported: images and audio cannot be trained (the "
                                  "model reads text only); use text parts {'type': 'text', 'text': ...}")
        if kind != "text":
            raise RowError(f"{where}.type", f"unsupported content part type {kind!r}: only 'text' parts are accepted")
        check_keys(part, ("type", "text"), f"{where}.", "a text part")
        texts.append(text(part.get("text"), f"{where}.text"))
    return clean("".join(texts))


def weight(value: Any, field: str, role: str) -> int:
    """OpenAI fine-tuning's per-message weight: 1 trains the response, 0 keeps it as context only."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value not in (0, 1):
        raise RowError(field, f"weight must be 0 or 1 (0: the response is context, not trained; 1: trained), "
                              f"got {value!r}")
    if role != "assistant":
        raise RowError(field, "weight is only allowed on assistant messages (it says whether a response is trained)")
    return int(value)


def json_cell(row: dict[str, Any], key: str) -> Any:
    """A CSV cell holding JSON (history, messages, conversations); other files hold the value itself."""
    value = row.get(key)
    if row.get("__csv__") and isinstance(value, str):
        if not value.strip():
            return None
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise RowError(key, f"CSV cell is not valid JSON ({exc.msg})") from exc
        except RecursionError as exc:
            raise RowError(key, MAX_NESTING_MESSAGE) from exc
    return value
