"""API fuzzing of both servers from their own OpenAPI documents (schemathesis): requests that fit
each documented operation and requests that break it (wrong types, missing fields, out-of-range
values, unknown keys), on the control plane in-process and on a real inference server serving the
bundled model. Every answer must be: not a 5xx, a status the operation documents, a content type it
documents, and a JSON body matching the documented schema.

Before the fixes this found: 211 of 465 fuzzed kiosk requests answered 500; control-plane 422 bodies
that did not match the documented schema; 401, 404 and 400 answered but not documented.

Bounded for `make test` on 2 cores: EXAMPLES requests per operation and mode, the same every run.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import hypothesis.errors
import pytest
import schemathesis
from conftest import clone_data_dir
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from test_inference import KEY, Server

from appliance.api.app import create_app
from appliance.bootstrap import Runtime

EXAMPLES = 30
KIOSK_EXAMPLES = 50  # on its two POST routes: about two thirds of the fitting requests generate (8 tokens)
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
MAX_TOKENS = 8  # generation is what costs time on the kiosk port; the answer's length is not under test


def config(headers: dict[str, str]) -> schemathesis.Config:
    return schemathesis.Config.from_dict({
        "headers": headers,
        # the right key is sent on every request; auth itself: test_auth_openapi.py, test_inference.py
        "generation": {"with-security-parameters": False},
    })


def fuzz(schema: Any, examples: int = EXAMPLES, **call: Any) -> int:
    """Every operation of `schema`, `examples` requests that fit it and `examples` that break it, each
    answer checked; every operation's first failure is reported, all together. Driven by Hypothesis
    directly: schemathesis' own pytest plugin reads a node attribute pytest 9 no longer has. The
    generation is derandomized (the same requests every run) and failures are not shrunk."""
    failures: list[str] = []
    sent = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @hypothesis.settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                                 phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
                                 suppress_health_check=list(hypothesis.HealthCheck))
            @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
            def check(case: Any) -> None:
                nonlocal sent
                sent += 1
                case.call_and_validate(checks=CHECKS, **call)

            try:
                check()
            except hypothesis.errors.Unsatisfiable:
                assert mode == GenerationMode.NEGATIVE, operation.label  # nothing to break: no parameters,
                # or only string path parameters, which every value fits
            except (Exception, FailureGroup) as exc:  # noqa: BLE001  (collect, report every operation's failure)
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert not failures, "\n\n".join(failures)
    return sent


@pytest.fixture(scope="module")
def kiosk_server(template_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("fuzz") / "data"
    clone_data_dir(template_dir, data)
    server = Server(data).start()
    yield server
    server.stop()


def test_control_plane_answers_as_its_openapi_documents(runtime: Runtime) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(runtime=runtime),
                                            config=config({"Authorization": "Bearer test-admin-token"}))
    # The Playground's chat and model list relay to an inference server, which this test does not start
    # (503 each time): what they relay is the kiosk port's answer, fuzzed by the next test on a real server.
    schema = schema.exclude(path_regex="^/api/playground/(chat|models)$")
    assert fuzz(schema) > 20 * EXAMPLES


def test_kiosk_port_answers_as_its_openapi_documents(kiosk_server: Server) -> None:
    schema = schemathesis.openapi.from_url(f"{kiosk_server.base}/openapi.json",
                                           config=config({"Authorization": f"Bearer {KEY}"}))

    @schema.hook
    def map_body(_ctx: Any, body: Any) -> Any:
        # Short answers: cap a valid max_tokens and give one where none is asked for (default 512).
        if isinstance(body, dict):
            for key in ("max_tokens", "max_completion_tokens"):
                value = body.get(key)
                if isinstance(value, int) and not isinstance(value, bool) and value > MAX_TOKENS:
                    body[key] = MAX_TOKENS
            body.setdefault("max_tokens", MAX_TOKENS)
        return body

    assert fuzz(schema, KIOSK_EXAMPLES, timeout=120) > 4 * KIOSK_EXAMPLES
