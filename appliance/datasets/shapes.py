"""The three row shapes we accept, and their normalization to one conversation form:

    alpaca    {"instruction", "input"?, "output", "system"?, "history"?: [[user, assistant], ...]}
    sharegpt  {"conversations": [{"from": "human"|"gpt"|"system", "value"}], "system"?}
    messages  {"messages": [{"role": "system"|"user"|"assistant", "content"}]}   (OpenAI chat)

Every row becomes {"messages": [...]}: an optional system message, then user/assistant turns
alternating, starting with user and ending with assistant, none empty.
"""

from __future__ import annotations

import json
from typing import Any

from appliance.errors import Problems

FORMATS = ("alpaca", "sharegpt", "messages")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
Message = dict[str, str]


class RowError(Exception):
    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def detect_shape(row: dict[str, Any]) -> str | None:
    if "messages" in row:
        return "messages"
    if "conversations" in row:
        return "sharegpt"
    if "instruction" in row and "output" in row:
        return "alpaca"
    return None


def describe_keys(row: dict[str, Any]) -> str:
    keys = sorted(k for k in row if k != "__csv__")
    return (
        f"unrecognized row with keys {keys}; expected alpaca (instruction, output), "
        "sharegpt (conversations) or messages (messages)"
    )


def _text(value: Any, field: str) -> str:
    if isinstance(value, list):  # OpenAI content parts: keep the text parts
        parts = [p.get("text") for p in value if isinstance(p, dict) and p.get("type") == "text"]
        if len(parts) == len(value) and all(isinstance(p, str) for p in parts):
            return "".join(parts)  # type: ignore[arg-type]
    if not isinstance(value, str):
        raise RowError(field, f"expected a string, got {type(value).__name__}")
    return value


def _json_cell(row: dict[str, Any], key: str) -> Any:
    value = row.get(key)
    if row.get("__csv__") and isinstance(value, str):
        if not value.strip():
            return None
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise RowError(key, f"CSV cell is not valid JSON ({exc.msg})") from exc
    return value


def _alpaca(row: dict[str, Any]) -> list[Message]:
    messages: list[Message] = []
    if system := row.get("system"):
        messages.append({"role": "system", "content": _text(system, "system")})
    history = _json_cell(row, "history") or []
    if not isinstance(history, list):
        raise RowError("history", "expected a list of [user, assistant] pairs")
    for i, pair in enumerate(history):
        if not (isinstance(pair, list | tuple) and len(pair) == 2):
            raise RowError(f"history[{i}]", "expected a [user, assistant] pair")
        messages.append({"role": "user", "content": _text(pair[0], f"history[{i}][0]")})
        messages.append({"role": "assistant", "content": _text(pair[1], f"history[{i}][1]")})
    instruction = _text(row.get("instruction"), "instruction")
    extra = row.get("input")
    extra = _text(extra, "input") if extra not in (None, "") else ""
    prompt = f"{instruction}\n{extra}" if instruction and extra else instruction or extra
    messages.append({"role": "user", "content": prompt})
    messages.append({"role": "assistant", "content": _text(row.get("output"), "output")})
    return messages


def _sharegpt(row: dict[str, Any]) -> list[Message]:
    turns = _json_cell(row, "conversations")
    if not isinstance(turns, list):
        raise RowError("conversations", "expected a list of {from, value} objects")
    messages: list[Message] = []
    if system := row.get("system"):
        messages.append({"role": "system", "content": _text(system, "system")})
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise RowError(f"conversations[{i}]", "expected an object with 'from' and 'value'")
        role = SHAREGPT_ROLES.get(turn["from"]) if isinstance(turn["from"], str) else None
        if role is None:
            raise RowError(f"conversations[{i}].from", f"unsupported role {turn['from']!r}")
        messages.append({"role": role, "content": _text(turn["value"], f"conversations[{i}].value")})
    return messages


def _messages(row: dict[str, Any]) -> list[Message]:
    turns = _json_cell(row, "messages")
    if not isinstance(turns, list):
        raise RowError("messages", "expected a list of {role, content} objects")
    messages: list[Message] = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or "role" not in turn or "content" not in turn:
            raise RowError(f"messages[{i}]", "expected an object with 'role' and 'content'")
        if turn["role"] not in ("system", "user", "assistant"):
            raise RowError(f"messages[{i}].role", f"unsupported role {turn['role']!r}")
        messages.append({"role": turn["role"], "content": _text(turn["content"], f"messages[{i}].content")})
    return messages


def _field(shape: str, index: int) -> str:
    return {"messages": f"messages[{index}]", "sharegpt": f"conversations[{index}]"}.get(shape, "")


def check_conversation(messages: list[Message], shape: str, offset: int) -> None:
    """Order and emptiness rules. `offset` maps an index back to the row's own list (system row)."""
    if not messages:
        raise RowError(shape if shape != "alpaca" else None, "empty conversation")
    body = messages[1:] if messages[0]["role"] == "system" else messages
    start = len(messages) - len(body)
    for i, message in enumerate(body):
        index = start + i - offset
        expected = "user" if i % 2 == 0 else "assistant"
        where = _field(shape, index)
        if message["role"] != expected:
            what = "system message is only allowed first" if message["role"] == "system" else (
                f"roles out of order: expected {expected}, got {message['role']}"
            )
            raise RowError(f"{where}.role" if where else None, what)
        if not message["content"].strip():
            field = f"{where}.content" if where else ("output" if expected == "assistant" else "instruction")
            raise RowError(field, f"empty {'assistant response' if expected == 'assistant' else 'user message'}")
    if not body or body[-1]["role"] != "assistant":
        raise RowError(None, "conversation must end with an assistant response")


def normalize(row: dict[str, Any], shape: str) -> list[Message]:
    """The row as a checked conversation, or RowError naming the field."""
    if shape == "alpaca":
        messages = _alpaca(row)
        check_conversation(messages, shape, 0)
    elif shape == "sharegpt":
        messages = _sharegpt(row)
        check_conversation(messages, shape, 1 if row.get("system") else 0)
    else:
        messages = _messages(row)
        check_conversation(messages, shape, 0)
    return messages


def normalize_rows(
    records: Any, fmt: str | None, problems: Problems, max_rows: int
) -> tuple[str | None, list[list[Message]]]:
    """Check every record; returns (format, conversations). One file, one shape."""
    conversations: list[list[Message]] = []
    file_shape, shape_line = fmt, None
    for record in records:
        row = record.value
        if not isinstance(row, dict):
            problems.add(record.line, None, f"expected an object, got {type(row).__name__}", record.unit)
            continue
        shape = detect_shape(row)
        if file_shape is None and shape is not None:
            file_shape, shape_line = shape, record.line
        if shape is None or (fmt is None and shape != file_shape):
            message = describe_keys(row) if shape is None else (
                f"row is {shape}-shaped but the file is {file_shape} (from {record.unit} {shape_line})"
            )
            problems.add(record.line, None, message, record.unit)
            continue
        if shape != file_shape:  # the format was named explicitly
            problems.add(record.line, None, f"row does not have the {fmt} shape: {describe_keys(row)}", record.unit)
            continue
        try:
            conversations.append(normalize(row, shape))
        except RowError as exc:
            problems.add(record.line, exc.field, exc.message, record.unit)
        if len(conversations) > max_rows:
            problems.add(record.line, None, f"more than {max_rows} rows (the limit in settings)", record.unit)
            break
    return file_shape, conversations
