"""Recording checked datasets: normalized JSONL, content-addressed by sha256, then one row each.

Shared by a single upload (intake.add_dataset) and a LLaMA-Factory folder import (lf_import), which
records several datasets all or nothing: every file is written first, then every row in one
`BEGIN IMMEDIATE` transaction. Files come before rows, so a recorded dataset always has its file;
a failure removes the files it wrote, so nothing half-imported is left.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from appliance import fsutil
from appliance.datasets.shapes import Message
from appliance.datasets.stats import token_stats
from appliance.db import events
from appliance.db.engine import write_session
from appliance.db.tables import Dataset, DatasetTokenStats
from appliance.paths import Paths


@dataclass(frozen=True)
class NewDataset:
    """A checked dataset, not yet recorded. `conversations` are normalized (shapes.normalize)."""

    name: str
    source_filename: str
    format: str
    source_type: str
    conversations: list[list[Message]]
    origin: str = ""  # said in the `dataset.added` event, e.g. "from LLaMA-Factory dataset_info.json"
    purpose: str = "train"  # or "eval": golden questions with reference answers (the deployment gate's set)


def serialize(conversations: list[list[Message]]) -> bytes:
    """Canonical JSONL: one {"messages": [...]} per line; the sha256 of these bytes is the id."""
    lines = (json.dumps({"messages": c}, ensure_ascii=False, separators=(",", ":")) for c in conversations)
    return ("\n".join(lines) + "\n").encode("utf-8")


def _recorded(engine: Engine, shas: list[str]) -> dict[str, Dataset]:
    with Session(engine) as session:
        return {d.sha256: d for d in session.exec(select(Dataset).where(col(Dataset.sha256).in_(shas)))}


def record_datasets(
    *, engine: Engine, paths: Paths, items: list[NewDataset], base_model_id: str | None, cutoff_len: int
) -> list[tuple[Dataset, bool]]:
    """Record every item, all or nothing; returns (dataset, created) per item, in order.

    Content already recorded (before, concurrently, or by an earlier item of the same call) is that
    dataset, with created False. Errors: InvalidInputError for an unknown base_model_id, NoSpaceError
    on a full disk; either way no file and no row of this call is kept.
    """
    bodies = [serialize(item.conversations) for item in items]
    shas = [hashlib.sha256(body).hexdigest() for body in bodies]
    before = _recorded(engine, shas)
    todo: dict[str, int] = {}  # sha -> index of the first item with that content
    for i, sha in enumerate(shas):
        if sha not in before and sha not in todo:
            todo[sha] = i
    # Measured before anything is written: a bad base_model_id refuses the call with nothing kept.
    stats = {sha: token_stats(engine=engine, paths=paths, conversations=items[i].conversations,
                              base_model_id=base_model_id, cutoff_len=cutoff_len) for sha, i in todo.items()}
    written: list[Path] = []
    created: set[str] = set()
    try:
        for sha, i in todo.items():
            final = paths.dataset_file(sha)
            with fsutil.refuse_when_full(paths.tmp), fsutil.temp_path(paths.tmp, ".jsonl") as tmp:
                tmp.write_bytes(bodies[i])
                fsutil.publish(tmp, final)
            written.append(final)
        with write_session(engine) as session:  # BEGIN IMMEDIATE: no other writer between check and insert
            for sha, i in todo.items():
                if session.exec(select(Dataset.id).where(Dataset.sha256 == sha)).first() is not None:
                    continue  # the same content was recorded concurrently: that one is ours too
                session.add(_row(paths, items[i], sha, bodies[i]))
                session.flush()
                measured = stats[sha]
                if measured is not None:
                    session.add(DatasetTokenStats(dataset_id=f"ds_{sha[:16]}", **measured))
                item = items[i]
                events.record(
                    session, kind="dataset.added", entity_type="dataset", entity_id=f"ds_{sha[:16]}",
                    message=f"dataset {item.name}: {len(item.conversations)} rows ({item.format}, {item.source_type})"
                            + (f" {item.origin}" if item.origin else ""),
                )
                created.add(sha)
    except BaseException:
        _discard(engine, written)
        raise
    after = _recorded(engine, shas)
    out: list[tuple[Dataset, bool]] = []
    for i, sha in enumerate(shas):
        out.append((after[sha], sha in created and todo.get(sha) == i))
    return out


def _discard(engine: Engine, written: list[Path]) -> None:
    """Remove the files this call wrote, except one another writer recorded meanwhile (same content)."""
    try:
        keep = set(_recorded(engine, [p.stem for p in written]))
    except Exception:
        keep = set()  # the database cannot be read: a file without a row is the lesser harm
    for path in written:
        if path.stem not in keep:
            path.unlink(missing_ok=True)


def _row(paths: Paths, item: NewDataset, sha: str, body: bytes) -> Dataset:
    conversations = item.conversations
    return Dataset(
        id=f"ds_{sha[:16]}",
        name=item.name,
        format=item.format,
        source_type=item.source_type,
        source_filename=item.source_filename,
        sha256=sha,
        path=paths.rel(paths.dataset_file(sha)),
        rows=len(conversations),
        turns=sum(1 for c in conversations for m in c if m["role"] == "assistant"),
        characters=sum(len(m["content"]) for c in conversations for m in c),
        size_bytes=len(body),
        purpose=item.purpose,
    )
