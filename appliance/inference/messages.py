"""Chat messages and prompts as the model gets them, checked before any template or tokenizer
sees them: roles (developer -> system), text parts joined as OpenAI joins them, and anything we
cannot honour (images, tool calls, nulls) refused with its path as `param`."""

from __future__ import annotations

from typing import Any

from appliance.inference.protocol import NO_TOOLS, ChatRequest, CompletionRequest, RequestError

ROLES = ("system", "user", "assistant")
ROLE_ALIASES = {"developer": "system"}  # OpenAI's newer name for the system message
NON_TEXT_PARTS = ("image_url", "input_audio", "file", "image", "input_image", "audio")
MESSAGE_TOOL_KEYS = ("tool_calls", "tool_call_id", "function_call")


def messages_of(body: ChatRequest) -> list[dict[str, str]]:
    if not body.messages:
        raise RequestError("messages must not be empty", "messages")
    return [_message(item, f"messages[{i}]") for i, item in enumerate(body.messages)]


def _message(item: Any, where: str) -> dict[str, str]:
    if not isinstance(item, dict):
        raise RequestError(f"{where}: expected a message object, got {type(item).__name__}", where)
    if "role" not in item:
        raise RequestError(f"{where}.role: missing; every message needs a role", f"{where}.role")
    for key in item:
        if key in MESSAGE_TOOL_KEYS and item[key] is not None:
            raise RequestError(f"{where}.{key}: {NO_TOOLS}", f"{where}.{key}")
        if key not in ("role", "content", "name", *MESSAGE_TOOL_KEYS):
            raise RequestError(f"{where}.{key}: unknown message field (accepted: role, content, name)",
                               f"{where}.{key}")
    role = item["role"]
    role = ROLE_ALIASES.get(role, role) if isinstance(role, str) else role
    if role not in ROLES:
        why = f"{NO_TOOLS}; " if role in ("tool", "function") else ""
        raise RequestError(f"{where}.role: unsupported role {role!r}; {why}supported roles: system, developer, user, "
                           "assistant", f"{where}.role")
    message = {"role": role, "content": _content(item.get("content"), f"{where}.content")}
    name = item.get("name")
    if name is not None:
        if not isinstance(name, str):
            raise RequestError(f"{where}.name: expected a string", f"{where}.name")
        message["name"] = name
    return message


def _content(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        raise RequestError(f"{where}: content is missing or null (it may be null only beside tool calls, which "
                           "this server does not support)", where)
    if not isinstance(value, list):
        raise RequestError(f"{where}: expected a string or a list of text parts", where)
    texts = []
    for j, part in enumerate(value):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in NON_TEXT_PARTS:
            raise RequestError(f"{where}[{j}]: {kind!r} parts are not supported: the served model reads text "
                               "only; send text parts ({'type': 'text', 'text': ...})", where)
        if not isinstance(part, dict) or kind != "text" or not isinstance(part.get("text"), str):
            raise RequestError(f"{where}[{j}]: expected a text part {{'type': 'text', 'text': ...}}", where)
        extra = sorted(set(part) - {"type", "text"})
        if extra:
            raise RequestError(f"{where}[{j}].{extra[0]}: unknown content part field", where)
        texts.append(part["text"])
    return "".join(texts)


def prompt_of(body: CompletionRequest) -> str:
    if isinstance(body.prompt, str):
        return body.prompt
    if len(body.prompt) != 1:
        raise RequestError("one prompt per request (a string, or a list holding one string)", "prompt")
    return body.prompt[0]


def text_bytes(messages: list[dict[str, str]]) -> int:
    """UTF-8 size of all message text: the cheap length check, done before any tokenizing."""
    return sum(len(m["content"].encode()) for m in messages)

