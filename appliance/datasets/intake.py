"""Dataset intake: upload -> temp file -> parse and check every row -> normalized JSONL,
content-addressed by sha256 -> recorded. A bad file leaves nothing behind: no row, no file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sqlalchemy.engine import Engine

from appliance import fsutil
from appliance.datasets import readers
from appliance.datasets.record import NewDataset, record_datasets
from appliance.datasets.shapes import FORMATS, Message, normalize_rows
from appliance.db.tables import Dataset
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
    purpose: str = "train",
) -> tuple[Dataset, bool]:
    """Returns (dataset, created). The same content uploaded twice is the same dataset; uploaded again
    with purpose "eval", it becomes an eval set (a dataset is never turned back into "train" this way)."""
    if purpose not in ("train", "eval"):
        raise InvalidInputError(source=display_name(filename), problems=[
            InputProblem(line=None, field="purpose", message=f"unknown purpose {purpose!r}: train or eval")])
    if fmt is not None and fmt not in FORMATS:
        raise _bad_format(display_name(filename), fmt)
    if cutoff_len is not None and cutoff_len < 1:
        raise InvalidInputError(source=display_name(filename), problems=[
            InputProblem(line=None, field="cutoff_len", message=f"must be 1 or more tokens, not {cutoff_len}")])
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
    item = NewDataset(
        name=name.strip() if name and name.strip() else display_name(filename),
        source_filename=display_name(filename),
        format=parsed.format,
        source_type=parsed.source_type,
        conversations=parsed.conversations,
        purpose=purpose,
    )
    [(dataset, created)] = record_datasets(
        engine=engine, paths=paths, items=[item], base_model_id=base_model_id,
        cutoff_len=cutoff_len or settings.default_cutoff_len,
    )
    if purpose == "eval" and dataset.purpose != "eval":
        from appliance.db.engine import write_session

        with write_session(engine) as session:
            row = session.get(Dataset, dataset.id)
            if row is not None:
                row.purpose = dataset.purpose = "eval"
                session.add(row)
    return dataset, created
