"""The control plane under the faults found by probing it as a hostile or unlucky client would: JSON
nested a thousand deep on every JSON route, a full disk (the upload's files, the spooled request, the
database), a listing racing deletions, error bodies against the documented schema, an endless name."""

from __future__ import annotations

import json
import resource
import signal
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import api_server
from fastapi.testclient import TestClient
from samples import ALPACA, jsonl
from sqlalchemy import event

from appliance.api.app import create_app
from appliance.api.errors import ErrorBody
from appliance.bootstrap import Runtime
from appliance.db import events
from appliance.db.engine import write_session
from appliance.errors import NoSpaceError
from appliance.models.registry import BUNDLED_ID

DEPTHS = [900, 1000, 5000, 100_000]


def error_body(res: httpx.Response) -> ErrorBody:
    """The answer's body, held to the documented ErrorBody: no key it does not declare."""
    body = res.json()
    assert set(body) <= set(ErrorBody.model_fields), body
    return ErrorBody.model_validate(body)


def json_routes(runtime: Runtime) -> list[tuple[str, str, list[str]]]:
    """(method, path, body properties) of every operation that takes a JSON body, from the OpenAPI
    document."""
    doc = create_app(runtime=runtime).openapi()
    out = []
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            content = op.get("requestBody", {}).get("content", {})
            if "application/json" in content:
                ref = content["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
                out.append((method.upper(), path, list(doc["components"]["schemas"][ref]["properties"])))
    return out


def deep(depth: int, shape: str) -> str:
    return "[" * depth + "]" * depth if shape == "list" else '{"a": ' * depth + "1" + "}" * depth


@pytest.mark.parametrize("shape", ["list", "object"])
def test_json_nested_a_thousand_deep_is_refused_on_every_json_route(client: TestClient, runtime: Runtime,
                                                                     shape: str) -> None:
    routes = json_routes(runtime)
    assert {path for _, path, _ in routes} >= {"/api/runs", "/api/artifacts/export", "/api/deployments"}
    for method, path, fields in routes:
        for depth in DEPTHS:
            nested = deep(depth, shape)
            for body in [nested, *(f'{{"{field}": {nested}}}' for field in fields)]:
                res = client.request(method, path, content=body, headers={"Content-Type": "application/json"})
                assert res.status_code in (400, 422), (method, path, depth, body[:30], res.status_code, res.text[:300])
                assert error_body(res).detail
    res = client.post("/api/runs", content=deep(100_000, shape), headers={"Content-Type": "application/json"})
    assert res.status_code == 400 and error_body(res).detail == "the request body is JSON nested too deeply"
    assert client.get("/api/runs").json() == []


def test_error_answers_match_the_documented_schema(client: TestClient, anon: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    upload = doc["paths"]["/api/datasets"]["post"]["responses"]
    for code in ("400", "401", "413", "422", "507"):
        assert upload[code]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
    assert "HTTPValidationError" not in doc["components"]["schemas"]  # the shape FastAPI would have promised
    answers = {
        401: anon.get("/api/runs"),
        404: client.get("/api/runs/run_nothere"),
        422: client.post("/api/runs", json={"config": {}}),  # no dataset_id: request validation
        400: client.post("/api/datasets", content=b"--x\r\nbroken", headers={"Content-Type": "multipart/form-data"}),
    }
    domain = client.post("/api/datasets", files={"file": ("bad.jsonl", b'{"instruction": "a", "output": ""}\n')})
    for status, res in [*answers.items(), (422, domain)]:
        assert res.status_code == status, (status, res.text)
        assert error_body(res).detail
    assert error_body(answers[422]).errors[0].field == "dataset_id"  # type: ignore[index]
    assert error_body(domain).errors[0].line == 1 and error_body(domain).file == "bad.jsonl"  # type: ignore[index]


def test_a_run_name_of_100000_characters_is_refused(client: TestClient) -> None:
    ds = client.post("/api/datasets", files={"file": ("faq.jsonl", jsonl(ALPACA))}).json()["id"]
    res = client.post("/api/runs", json={"dataset_id": ds, "base_model_id": BUNDLED_ID, "name": "x" * 100_000,
                                         "config": {"max_steps": 2}})
    assert res.status_code == 422 and error_body(res).errors[0].field == "name"  # type: ignore[index]
    assert client.get("/api/runs").json() == []


# --- a full disk --------------------------------------------------------------------------------------

FILE_LIMIT = 1536 * 1024


def limit_file_size() -> None:
    # Runs in the server's process before exec: writes past FILE_LIMIT bytes fail (EFBIG) as writes on a
    # full disk fail (ENOSPC); the signal that would kill the process instead is ignored (kept across exec).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))


def test_uploads_on_a_full_disk_are_507_naming_the_path_and_keep_nothing(data_dir: Path, tmp_path: Path) -> None:
    spool = tmp_path / "spool"  # where the server's multipart parser spools an upload over 1 MiB
    spool.mkdir()
    # Backslashes double in JSON: the stored dataset outgrows the file-size limit, the upload does not.
    slashes = "\\" * 900
    rows = "".join(f'"Where is room {i}? {slashes}","Floor {i % 4}."\n' for i in range(1000))
    csv = ("instruction,output\n" + rows).encode()
    assert len(csv) < FILE_LIMIT < 2 * len(csv)
    with api_server(data_dir, "tok", limit_file_size, TMPDIR=str(spool)) as base:
        headers = {"Authorization": "Bearer tok"}
        stored = httpx.post(f"{base}/api/datasets", headers=headers, files={"file": ("rooms.csv", csv)}, timeout=120)
        assert stored.status_code == 507, stored.text
        message = error_body(stored).detail
        assert message.startswith(f"no space left on the device writing {data_dir.resolve() / 'tmp'}"), message
        assert " free there); nothing was kept" in message and "File too large" in message
        big = jsonl(ALPACA) * (2 * FILE_LIMIT // len(jsonl(ALPACA)))  # over the limit while it is spooled
        spooled = httpx.post(f"{base}/api/datasets", headers=headers, files={"file": ("big.jsonl", big)}, timeout=120)
        assert spooled.status_code == 507, spooled.text
        assert f"writing {spool}" in error_body(spooled).detail
        assert httpx.get(f"{base}/api/datasets", headers=headers).json() == []
        small = httpx.post(f"{base}/api/datasets", headers=headers, files={"file": ("faq.jsonl", jsonl(ALPACA))})
        assert small.status_code == 201, small.text  # what fits is still stored
    assert [p.name for p in (data_dir / "datasets").iterdir()] == [f"{small.json()['sha256']}.jsonl"]
    assert list((data_dir / "tmp").iterdir()) == [] and list(spool.iterdir()) == []


def cap_database(runtime: Runtime) -> None:
    """The database as on a disk that is full: it may not grow by one page (SQLite's max_page_count, on
    every connection), so a write that needs a new page gets SQLITE_FULL, "database or disk is full",
    the error SQLite gives on a full disk. Big filler events first take most of the room left."""
    engine = runtime.engine
    with engine.connect() as conn:
        pages = conn.exec_driver_sql("PRAGMA page_count").scalar()

    @event.listens_for(engine, "connect")
    def _cap(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute(f"PRAGMA max_page_count={pages}")

    engine.dispose()
    for _ in range(100_000):
        try:
            with write_session(engine) as session:
                events.record(session, kind="test.filler", entity_type="test", entity_id="f", message="x" * 4000)
        except NoSpaceError:
            return


def until_507(post: Any, attempts: int = 500) -> tuple[httpx.Response, int]:
    """Requests until the database is full; returns the 507 and how many were accepted before it."""
    for accepted in range(attempts):
        res = post(accepted)
        if res.status_code != 201:
            return res, accepted
    raise AssertionError(f"{attempts} requests and the database is still not full")


def test_run_creation_and_uploads_with_the_database_full_are_507_and_keep_nothing(
    client: TestClient, runtime: Runtime
) -> None:
    ds = client.post("/api/datasets", files={"file": ("faq.jsonl", jsonl(ALPACA))}).json()
    cap_database(runtime)
    run, created = until_507(lambda _i: client.post("/api/runs", json={
        "dataset_id": ds["id"], "base_model_id": BUNDLED_ID, "config": {"max_steps": 2}}))
    assert run.status_code == 507, run.text
    message = error_body(run).detail
    assert message.startswith(f"no space left on the device writing {runtime.paths.db}"), message
    assert "database or disk is full" in message and "nothing was kept" in message
    assert len(client.get("/api/runs").json()) == created  # the refused run left no row

    def upload(i: int) -> httpx.Response:
        rows = [{"instruction": f"Where is room {i}? " + "x" * 2000, "output": f"Floor {i % 4}."}]
        return client.post("/api/datasets", files={"file": (f"r{i}.jsonl", jsonl(rows))})

    refused, stored = until_507(upload)
    assert refused.status_code == 507 and "database or disk is full" in error_body(refused).detail
    listed = client.get("/api/datasets").json()
    assert len(listed) == stored + 1
    assert sorted(p.name for p in runtime.paths.datasets.iterdir()) == sorted(f"{d['sha256']}.jsonl" for d in listed)
    assert list(runtime.paths.tmp.iterdir()) == []
    assert not (runtime.paths.root / "runs").exists() or list((runtime.paths.root / "runs").iterdir()) == []


# --- a listing racing deletions -------------------------------------------------------------------------


def test_listing_datasets_never_fails_while_another_client_deletes_them(data_dir: Path) -> None:
    with api_server(data_dir, "tok") as base:
        headers = {"Authorization": "Bearer tok"}
        ids = []
        for i in range(30):
            rows = [{"instruction": f"Where is room {i}?", "output": f"Floor {i % 4}."}]
            res = httpx.post(f"{base}/api/datasets", headers=headers, files={"file": (f"r{i}.jsonl", jsonl(rows))},
                             timeout=60)
            assert res.status_code == 201, res.text
            ids.append(res.json()["id"])
        listings: list[tuple[int, int]] = []  # (status, datasets listed)
        deleting, stop = threading.Event(), threading.Event()
        during: list[int] = []

        def lister() -> None:
            with httpx.Client(base_url=base, headers=headers, timeout=60) as c:
                while not stop.is_set():
                    res = c.get("/api/datasets")
                    listed = res.json() if res.status_code == 200 else []
                    assert all(d["rows"] == 1 and d["id"] in ids for d in listed), listed
                    listings.append((res.status_code, len(listed)))
                    if deleting.is_set():
                        during.append(len(listed))

        def deleter(chunk: list[str]) -> None:
            with httpx.Client(base_url=base, headers=headers, timeout=60) as c:
                for ds in chunk:
                    assert c.delete(f"/api/datasets/{ds}").status_code == 204

        listers = [threading.Thread(target=lister) for _ in range(3)]
        for t in listers:
            t.start()
        deleters = [threading.Thread(target=deleter, args=(ids[k::2],)) for k in range(2)]
        deleting.set()
        for t in deleters:
            t.start()
        for t in deleters:
            t.join(300)
        deleting.clear()
        stop.set()
        for t in listers:
            t.join(300)
    assert listings and {status for status, _ in listings} == {200}, json.dumps(listings)
    assert any(0 < n < len(ids) for n in during), during  # listings really ran while datasets were going


def test_rollback_while_a_deployment_is_underway_says_so(client: TestClient) -> None:
    # No inference server runs here, so the deployment stays pending: a rollback now would return to
    # the model before the active one instead of undoing the newcomer; it is refused with the reason.
    first = client.post("/api/deployments/rollback")
    assert first.status_code == 409
    assert error_body(first).detail == "nothing to roll back to: no earlier deployment was ever active"
    dep = client.post("/api/deployments", json={"base_model_id": BUNDLED_ID})
    assert dep.status_code == 202, dep.text
    res = client.post("/api/deployments/rollback")
    assert res.status_code == 409
    detail = f"deployment {dep.json()['id']} is pending; roll back once it is active or has failed"
    assert error_body(res).detail == detail
    assert [d["status"] for d in client.get("/api/deployments").json()] == ["pending"]
