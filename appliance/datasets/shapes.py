"""The three row shapes we accept, and their normalization to one conversation form:

    alpaca    {"instruction", "input"?, "output", "system"?, "history"?: [[user, assistant], ...]}
    sharegpt  {"conversations": [{"from": "human"|"gpt"|"system", "value"}], "system"?}
    messages  {"messages": [{"role": "system"|"developer"|"user"|"assistant", "content", "name"?,
                             "weight"?: 0|1}]}   (OpenAI chat and fine-tuning files)

Every row becomes {"messages": [...]}: an optional system message, then user/assistant turns
alternating, starting with user and ending with assistant, none empty. A message keeps `name` when
given, and `weight: 0` on an assistant response that is context only (the trainer puts no label
on it). Blank optional fields are absent; any other key is refused (fields.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from appliance.datasets.fields import (
    NO_TOOLS,
    ROLE_ALIASES,
    ROLES,
    TOOL_ROLES,
    Message,
    RowError,
    check_keys,
    content_text,
    json_cell,
    present,
    roles_text,
    text,
    weight,
)
from appliance.errors import Problems

__all__ = ["FORMATS", "Message", "RowError", "detect_shape", "normalize", "normalize_rows"]

FORMATS = ("alpaca", "sharegpt", "messages")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
ALPACA_KEYS = ("instruction", "input", "output", "system", "history")
SHAREGPT_KEYS = ("conversations", "system")
MESSAGES_KEYS = ("messages",)
MESSAGE_KEYS = ("role", "content", "name", "weight")


@dataclass(frozen=True)
class Turn:
    """A normalized message and where it came from in the row, so a problem names the user's field."""

    message: Message
    role_field: str | None
    content_field: str | None


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


def _system(row: dict[str, Any]) -> list[Turn]:
    if not present(row.get("system")):
        return []
    return [Turn({"role": "system", "content": text(row["system"], "system")}, None, "system")]


def _alpaca(row: dict[str, Any]) -> list[Turn]:
    check_keys(row, ALPACA_KEYS, "", "an alpaca row")
    turns = _system(row)
    history = json_cell(row, "history")
    if present(history):
        if not isinstance(history, list):
            raise RowError("history", "expected a list of [user, assistant] pairs")
        for i, pair in enumerate(history):
            if not (isinstance(pair, list | tuple) and len(pair) == 2):
                raise RowError(f"history[{i}]", "expected a [user, assistant] pair")
            for j, role in enumerate(("user", "assistant")):
                where = f"history[{i}][{j}]"
                turns.append(Turn({"role": role, "content": text(pair[j], where)}, None, where))
    instruction = text(row["instruction"], "instruction") if present(row.get("instruction")) else ""
    extra = text(row["input"], "input") if present(row.get("input")) else ""
    prompt = f"{instruction}\n{extra}" if instruction and extra else instruction or extra
    turns.append(Turn({"role": "user", "content": prompt}, None, "instruction"))
    output = row.get("output")
    turns.append(Turn({"role": "assistant", "content": text("" if output is None else output, "output")}, None,
                      "output"))
    return turns


def _sharegpt(row: dict[str, Any]) -> list[Turn]:
    check_keys(row, SHAREGPT_KEYS, "", "a sharegpt row")
    conversation = json_cell(row, "conversations")
    if not isinstance(conversation, list):
        raise RowError("conversations", "expected a list of {from, value} objects")
    turns = _system(row)
    for i, item in enumerate(conversation):
        where = f"conversations[{i}]"
        if not isinstance(item, dict) or "from" not in item or "value" not in item:
            raise RowError(where, "expected an object with 'from' and 'value'")
        check_keys(item, ("from", "value"), f"{where}.", "a sharegpt turn")
        role = SHAREGPT_ROLES.get(item["from"]) if isinstance(item["from"], str) else None
        if role is None:
            why = f"{NO_TOOLS}; " if item["from"] in TOOL_ROLES else ""
            raise RowError(f"{where}.from", f"unsupported role {item['from']!r}: {why}supported roles: "
                                            f"{', '.join(SHAREGPT_ROLES)}")
        turns.append(Turn({"role": role, "content": content_text(item["value"], f"{where}.value")}, f"{where}.from",
                          f"{where}.value"))
    return turns


def _message(item: Any, where: str) -> Turn:
    if not isinstance(item, dict) or "role" not in item:
        raise RowError(where, "expected an object with 'role' and 'content'")
    check_keys(item, MESSAGE_KEYS, f"{where}.", "a message")
    role = ROLE_ALIASES.get(item["role"], item["role"]) if isinstance(item["role"], str) else item["role"]
    if role not in ROLES:
        why = f"{NO_TOOLS}; " if role in TOOL_ROLES else ""
        raise RowError(f"{where}.role", f"unsupported role {role!r}: {why}{roles_text()}")
    if "content" not in item:
        raise RowError(f"{where}.content", "missing: every message needs text content")
    message: Message = {"role": role, "content": content_text(item["content"], f"{where}.content")}
    if present(item.get("name")):
        message["name"] = text(item["name"], f"{where}.name").strip()
    if item.get("weight") is not None and weight(item["weight"], f"{where}.weight", role) == 0:
        message["weight"] = 0  # weight 1 is the default: left out, so both spellings are one dataset
    return Turn(message, f"{where}.role", f"{where}.content")


def _messages(row: dict[str, Any]) -> list[Turn]:
    check_keys(row, MESSAGES_KEYS, "", "a messages row")
    items = json_cell(row, "messages")
    if not isinstance(items, list):
        raise RowError("messages", "expected a list of {role, content} objects")
    return [_message(item, f"messages[{i}]") for i, item in enumerate(items)]


def check_conversation(turns: list[Turn], shape: str) -> None:
    """Order and emptiness rules, naming the field the problem came from."""
    if not turns:
        raise RowError(shape if shape != "alpaca" else None, "empty conversation")
    body = turns[1:] if turns[0].message["role"] == "system" else turns
    for i, turn in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        role = turn.message["role"]
        if role != expected:
            what = "system message is only allowed first" if role == "system" else (
                f"roles out of order: expected {expected}, got {role}"
            )
            raise RowError(turn.role_field, what)
        if not turn.message["content"].strip():
            kind = "assistant response" if expected == "assistant" else "user message"
            raise RowError(turn.content_field, f"empty {kind}")
    if not body or body[-1].message["role"] != "assistant":
        raise RowError(None, "conversation must end with an assistant response")
    if all(t.message.get("weight") == 0 for t in body if t.message["role"] == "assistant"):
        raise RowError(None, "every assistant response has weight 0, so nothing in this row would be trained; "
                             "give at least one weight 1 (or leave weight out)")


def normalize(row: dict[str, Any], shape: str) -> list[Message]:
    """The row as a checked conversation, or RowError naming the field."""
    turns = {"alpaca": _alpaca, "sharegpt": _sharegpt, "messages": _messages}[shape](row)
    if turns and turns[0].message["role"] == "system" and not turns[0].message["content"].strip():
        turns = turns[1:]  # a blank system prompt is an absent one, as in the other shapes
    check_conversation(turns, shape)
    return [t.message for t in turns]


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
