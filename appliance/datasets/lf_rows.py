"""One row of a LLaMA-Factory dataset, read through its entry's column and tag mapping, as a checked
conversation (the same rules as every upload: shapes.check_conversation).

A problem names the file's own field (`dialog[2].speaker`, not `conversations[2].from`). Where
LLaMA-Factory would silently skip a broken row or drop a column it was not told to read, the row is
refused here with the reason: nothing is dropped without a word.

    alpaca    prompt + "\\n" + query -> user, response -> assistant, history pairs before them,
              system column -> system prompt (each only when the entry's columns name it)
    sharegpt  the messages column: role_tag / content_tag of each message; user_tag, assistant_tag
              and system_tag (first message only) are the roles; a first system message wins over
              the system column, as in LLaMA-Factory (both, differing, is refused)
"""

from __future__ import annotations

from typing import Any

from appliance.datasets.fields import (
    NO_TOOLS,
    TOOL_KEYS,
    Message,
    RowError,
    content_text,
    json_cell,
    present,
    text,
)
from appliance.datasets.lf_config import LfEntry
from appliance.datasets.shapes import Turn, check_conversation, normalize

# LLaMA-Factory's alpaca column keys -> the appliance's alpaca keys (shapes.py)
ALPACA_KEYS = {"prompt": "instruction", "query": "input", "response": "output", "history": "history",
               "system": "system"}


def convert(row: Any, entry: LfEntry) -> list[Message]:
    """The row as a conversation, or RowError naming the file's field."""
    if not isinstance(row, dict):
        raise RowError(None, f"expected an object, got {type(row).__name__}")
    _check_unmapped(row, entry)
    return _alpaca(row, entry) if entry.formatting == "alpaca" else _sharegpt(row, entry)


def _check_unmapped(row: dict[str, Any], entry: LfEntry) -> None:
    read = set(entry.columns.values())
    for key, value in row.items():
        if key == "__csv__" or key in read or not present(value):
            continue
        why = f"{NO_TOOLS}; " if key in TOOL_KEYS else ""
        raise RowError(key, f"column {key!r} is not read: {why}entry {entry.name!r} of dataset_info.json reads "
                            f"{sorted(read)} (LLaMA-Factory would drop it silently): name it under the entry's "
                            "columns, or remove it from the file")


def _alpaca(row: dict[str, Any], entry: LfEntry) -> list[Message]:
    ours: dict[str, Any] = {"__csv__": True} if row.get("__csv__") else {}
    theirs: dict[str, str] = {}
    for key, column in entry.columns.items():
        theirs[ALPACA_KEYS[key]] = column
        if column in row:
            ours[ALPACA_KEYS[key]] = row[column]
    try:
        return normalize(ours, "alpaca")
    except RowError as exc:
        raise RowError(_their_field(exc.field, theirs), exc.message) from exc


def _their_field(field: str | None, theirs: dict[str, str]) -> str | None:
    """`history[0][1]` -> `turns[0][1]` when the history column is named turns."""
    if field is None:
        return None
    head = field.split("[", 1)[0].split(".", 1)[0]
    return theirs.get(head, head) + field[len(head):]


def _sharegpt(row: dict[str, Any], entry: LfEntry) -> list[Message]:
    column, tags = entry.columns["messages"], entry.tags
    role_tag, content_tag = str(tags["role_tag"]), str(tags["content_tag"])
    roles = {tags["user_tag"]: "user", tags["assistant_tag"]: "assistant"}
    if tags["system_tag"] is not None:
        roles[tags["system_tag"]] = "system"
    tools = {tags["observation_tag"]: "observation_tag", tags["function_tag"]: "function_tag"}
    items = json_cell(row, column)
    if not isinstance(items, list):
        got = "missing" if items is None else f"got {type(items).__name__}"
        raise RowError(column, f"expected a list of {{{role_tag!r}, {content_tag!r}}} messages, {got}")
    turns: list[Turn] = []
    for i, item in enumerate(items):
        where = f"{column}[{i}]"
        if not isinstance(item, dict) or role_tag not in item or content_tag not in item:
            raise RowError(where, f"expected an object with {role_tag!r} and {content_tag!r} (the entry's "
                                  "role_tag and content_tag)")
        for key, value in item.items():
            if key not in (role_tag, content_tag) and present(value):
                why = NO_TOOLS if key in TOOL_KEYS else "it would not be trained"
                raise RowError(f"{where}.{key}", f"unknown key {key!r} ({why}); a message has {role_tag!r} and "
                                                 f"{content_tag!r}")
        tag = item[role_tag]
        role = roles.get(tag) if isinstance(tag, str) else None
        if role is None:
            if isinstance(tag, str) and tag in tools:
                raise RowError(f"{where}.{role_tag}", f"{tag!r} is the {tools[tag]} role: {NO_TOOLS}")
            named = ", ".join(f"{r} {t!r}" for t, r in roles.items())
            raise RowError(f"{where}.{role_tag}", f"unknown role {tag!r}: the entry's tags name {named}")
        content = content_text(item[content_tag], f"{where}.{content_tag}")
        turns.append(Turn({"role": role, "content": content}, f"{where}.{role_tag}", f"{where}.{content_tag}"))
    _system_column(row, entry, turns)
    if turns and turns[0].message["role"] == "system" and not turns[0].message["content"].strip():
        turns = turns[1:]  # a blank system prompt is an absent one, as in every shape
    check_conversation(turns, column)
    return [t.message for t in turns]


def _system_column(row: dict[str, Any], entry: LfEntry, turns: list[Turn]) -> None:
    column = entry.columns.get("system")
    if column is None or not present(row.get(column)):
        return
    system = text(row[column], column)
    if turns and turns[0].message["role"] == "system":
        if turns[0].message["content"].strip() != system.strip():
            raise RowError(column, "the row has a system message and a different system column; LLaMA-Factory "
                                   "would use the message and drop the column: keep one")
        return
    turns.insert(0, Turn({"role": "system", "content": system}, None, column))
