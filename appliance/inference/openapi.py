"""What the kiosk port's OpenAPI document promises about its answers: OpenAI's response shapes for
chat and text completions (JSON, or Server-Sent Events with stream=true), OpenAI's error shape for
every refusal, and the kiosk key as a bearer scheme. Fuzzing holds the server to it
(tests/test_fuzz_api.py): every status it answers is documented, every JSON body matches.

The routes read their bodies themselves (protocol.openapi_body documents the requests), so these
models are documentation only: nothing is validated against them at run time.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error or server_error")
    param: str | None = Field(description="The request parameter at fault, e.g. messages[0].content")
    code: str | None = Field(description="e.g. context_length_exceeded, invalid_api_key, unsupported_parameter")


class ErrorResponse(BaseModel):
    """Every error on this port, 401 and 404 included (OpenAI clients read `error.message`)."""

    error: ErrorDetail


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatMessage(BaseModel):
    role: str
    content: str | None


class ChatChoice(BaseModel):
    index: int
    message: ChatMessage
    finish_reason: str | None


class ChatCompletion(BaseModel):
    id: str
    object: str = Field(description="chat.completion")
    created: int
    model: str = Field(description="The name of the model that answered (the active deployment)")
    choices: list[ChatChoice]
    usage: Usage


class TextChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None


class TextCompletion(BaseModel):
    id: str
    object: str = Field(description="text_completion")
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage


class Readiness(BaseModel):
    ready: bool
    model: str | None = None
    deployment_id: str | None = None
    queue_depth: int | None = None
    swapping: bool | None = Field(None, description="A swap that cannot overlap is in progress (503)")
    last_error: str | None = Field(None, description="Why the last deployment was refused, if it was")


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


STREAM = {"text/event-stream": {"schema": {"type": "string",
                                           "description": "`data: {chunk}` events, then `data: [DONE]`"}}}
COMPLETION_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error("Refused before generation, naming `param`: an unknown or unsupported parameter, a value out of "
                "range, bad messages, a prompt over the context (`code: context_length_exceeded`), a body that "
                "is not JSON or is nested too deeply"),
    401: _error("Missing or wrong kiosk key (`code: invalid_api_key`)"),
    413: _error("Body over APPLIANCE_INFERENCE_MAX_REQUEST_BYTES (`code: request_too_large`)"),
    503: _error("No model loaded yet, a swap in progress, or the queue full: retry after `Retry-After` seconds"),
}


def completion_responses(model: type[BaseModel], what: str) -> dict[int | str, dict[str, Any]]:
    return {200: {"model": model, "description": f"The {what} (JSON), or its chunks as Server-Sent Events "
                                                 "with stream=true", "content": STREAM},
            **COMPLETION_ERRORS}


MODELS_RESPONSES: dict[int | str, dict[str, Any]] = {401: COMPLETION_ERRORS[401]}
READY_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": Readiness, "description": "A model is loaded and answering"},
    503: {"model": Readiness, "description": "Not ready (loading, or a swap that cannot overlap)"},
}


TEXT_PART = {"type": "object", "required": ["type", "text"], "additionalProperties": False,
             "properties": {"type": {"type": "string", "enum": ["text"]}, "text": {"type": "string"}}}
MESSAGE = {
    "type": "object", "required": ["role", "content"], "additionalProperties": False,
    "properties": {
        "role": {"type": "string", "enum": ["system", "developer", "user", "assistant"]},
        "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": TEXT_PART}],
                    "description": "Text, or text parts (joined); image and audio parts are refused"},
        "name": {"type": "string"},
    },
}


def with_messages(body: dict[str, Any]) -> dict[str, Any]:
    """The chat request body with the messages it accepts spelled out: ChatRequest takes `messages`
    as a list of anything, so that messages.py can refuse each bad one naming it (`param`)."""
    schema = body["requestBody"]["content"]["application/json"]["schema"]
    schema["properties"]["messages"] = {**schema["properties"]["messages"], "type": "array", "minItems": 1,
                                        "items": MESSAGE}
    return body


def add_security(doc: dict[str, Any]) -> dict[str, Any]:
    """The kiosk key as a bearer scheme on `/v1/*` (the KioskAuth middleware checks it, not a
    dependency, so FastAPI does not know of it)."""
    doc.setdefault("components", {}).setdefault("securitySchemes", {})["KioskKey"] = {
        "type": "http", "scheme": "bearer", "description": "The kiosk key (APPLIANCE_KIOSK_KEY or secrets/kiosk_key)"}
    for path, ops in doc.get("paths", {}).items():
        if path.startswith("/v1/"):
            for op in ops.values():
                op["security"] = [{"KioskKey": []}]
    return doc
