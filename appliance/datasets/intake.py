"""Dataset intake: upload -> temp file -> parse and check every row -> normalized JSONL,
content-addressed by sha256 -> recorded. A bad file leaves nothing behind: no row, no file."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from appliance import fsutil
from appliance.datasets import readers
from appliance.datasets.shapes import FORMATS, Message, normalize_rows
from appliance.datasets.stats import token_stats
from appliance.db import events
from appliance.db.engine import write_session
from appliance.db.tables import Dataset, DatasetTokenStats
from appliance.errors import InputProblem, InvalidInputError, Problems, TooLargeInputError
from appliance.paths import Paths
from appliance.settings import Settings

MAX_NAME_CHARS = 200  # a display name; a 100,000-character one was accepted and filled every listing


@dataclass(frozen=True)
class Parsed:
    source_type: str
    format: str
    conversations: list[list[Message]]


def display_name(filename: str) -> str:
    """The upload's name, for display only: the last path component, no directories."""
    name = filename.replace("\\", "/").rsplit("/", 1)[-1].strip()
    return name or "dataset"


def parse_file(path: Path, filename: str, fmt: str | None, max_rows: int) -> Parsed:
    """Every row checked; raises InvalidInputError naming file, line and field of the first errors."""
    source = display_name(filename)
    if fmt is not None and fmt not in FORMATS:
        raise _bad_format(source, fmt)
    problems = Problems()
    if path.stat().st_size == 0:
        problems.add(None, None, "file is empty")
        raise InvalidInputError(source, problems.items, problems.total)
    source_type = readers.detect_type(path, filename)
    if source_type != "parquet":
        readers.check_text(path, problems)
        if problems:
            raise InvalidInputError(source, problems.items, problems.total)
    if source_type is None:
        with open(path, "rb") as f:
            empty = not f.read(readers.SNIFF_BYTES).decode("utf-8-sig").strip()
        message = "file is empty" if empty else (
            "unrecognized file: expected a JSON array, JSON Lines, CSV with a header row, or Parquet"
        )
        problems.add(None if empty else 1, None, message)
        raise InvalidInputError(source, problems.items, problems.total)
    found, conversations = normalize_rows(
        readers.read_records(path, source_type, problems), fmt, problems, max_rows
    )
    if not problems and not conversations:
        problems.add(None, None, "file holds no rows")
    if problems or found is None:
        raise InvalidInputError(source, [*_joined_hint(path), *problems.items], problems.total)
    return Parsed(source_type, found, conversations)


def _joined_hint(path: Path) -> list[InputProblem]:
    """A refused file with a byte-order mark past its start was almost always two files joined:
    say so, since the problem listed may be a second header or a second JSON array."""
    lines = readers.joined_at(path)
    if not lines:
        return []
    where = ", ".join(str(n) for n in lines[:5])
    return [InputProblem(lines[0], None, f"a byte-order mark (U+FEFF) starts line(s) {where}: two files were "
                                         "probably joined there (the mark itself is accepted)")]


def check_name(name: str | None, filename: str) -> None:
    for field, value in (("name", name), ("file", display_name(filename))):
        if value is not None and len(value) > MAX_NAME_CHARS:
            raise InvalidInputError(display_name(filename)[:MAX_NAME_CHARS], [InputProblem(
                None, field, f"{len(value)} characters; a dataset {'name' if field == 'name' else 'file name'} "
                             f"may have at most {MAX_NAME_CHARS}")])


def _bad_format(source: str, fmt: str) -> InvalidInputError:
    problem = InputProblem(None, "format", f"unknown format {fmt!r}; use one of {list(FORMATS)}")
    return InvalidInputError(source, [problem])


def serialize(conversations: list[list[Message]]) -> bytes:
    """Canonical JSONL: one {"messages": [...]} per line; the sha256 of these bytes is the id."""
    lines = (json.dumps({"messages": c}, ensure_ascii=False, separators=(",", ":")) for c in conversations)
    return ("\n".join(lines) + "\n").encode("utf-8")


def add_dataset(
    *,
    engine: Engine,
    paths: Paths,
    settings: Settings,
    stream: BinaryIO,
    filename: str,
    name: str | None = None,
    fmt: str | None = None,
    base_model_id: str | None = None,
    cutoff_len: int | None = None,
) -> tuple[Dataset, bool]:
    """Returns (dataset, created). The same content uploaded twice is the same dataset."""
    if fmt is not None and fmt not in FORMATS:
        raise _bad_format(display_name(filename), fmt)
    check_name(name.strip() if name else None, filename)
    paths.ensure()
    # A full disk is a 507 naming the folder and its free space; temp_path has removed the part written.
    with fsutil.refuse_when_full(paths.tmp), fsutil.temp_path(paths.tmp, ".upload") as raw:
        try:
            size, _ = fsutil.copy_stream(stream, raw, settings.max_upload_bytes)
        except fsutil.TooLargeError as exc:
            raise TooLargeInputError(
                f"{display_name(filename)}: larger than the upload limit of {exc.limit} bytes "
                "(APPLIANCE_MAX_UPLOAD_BYTES)"
            ) from exc
        parsed = parse_file(raw, filename, fmt, settings.max_dataset_rows)
    body = serialize(parsed.conversations)
    sha = hashlib.sha256(body).hexdigest()
    with Session(engine) as session:
        existing = session.exec(select(Dataset).where(Dataset.sha256 == sha)).first()
        if existing is not None:
            return existing, False
    stats = token_stats(
        engine=engine, paths=paths, conversations=parsed.conversations, base_model_id=base_model_id,
        cutoff_len=cutoff_len or settings.default_cutoff_len,
    )
    final = paths.dataset_file(sha)
    with fsutil.refuse_when_full(paths.tmp), fsutil.temp_path(paths.tmp, ".jsonl") as tmp:
        tmp.write_bytes(body)
        fsutil.publish(tmp, final)
    dataset = Dataset(
        id=f"ds_{sha[:16]}",
        name=name.strip() if name and name.strip() else display_name(filename),
        format=parsed.format,
        source_type=parsed.source_type,
        source_filename=display_name(filename),
        sha256=sha,
        path=paths.rel(final),
        rows=len(parsed.conversations),
        turns=sum(1 for c in parsed.conversations for m in c if m["role"] == "assistant"),
        characters=sum(len(m["content"]) for c in parsed.conversations for m in c),
        size_bytes=len(body),
    )
    try:
        with write_session(engine) as session:
            session.add(dataset)
            session.flush()
            if stats is not None:
                session.add(DatasetTokenStats(dataset_id=dataset.id, **stats))
            events.record(
                session, kind="dataset.added", entity_type="dataset", entity_id=dataset.id,
                message=f"dataset {dataset.name}: {dataset.rows} rows ({dataset.format}, {dataset.source_type})",
            )
    except IntegrityError:
        # The same content, uploaded concurrently, won the race: that one is ours too.
        with Session(engine) as session:
            winner = session.exec(select(Dataset).where(Dataset.sha256 == sha)).first()
        if winner is None:
            final.unlink(missing_ok=True)
            raise
        return winner, False
    except BaseException:
        final.unlink(missing_ok=True)
        raise
    with Session(engine) as session:
        stored = session.get(Dataset, dataset.id)
        assert stored is not None
        return stored, True
