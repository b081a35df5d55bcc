"""Import a LLaMA-Factory data folder (`dataset_info.json` and the files it names): each selected
entry becomes one appliance dataset, named after the entry, recorded all or nothing.

Order: every selected entry is checked (lf_config), then every file is read and every row checked
(lf_rows); only when all of that passed is anything written (record.record_datasets: files, then
all rows in one transaction). So one refused key or row leaves the appliance as it was.

Files are read as LLaMA-Factory reads them, with the appliance's readers: JSON, JSON Lines, CSV or
Parquet (by content); `file_name` may name a folder, whose files (all of one type) are read in name
order. Nothing outside the imported folder is read: a `file_name` or a link leading out is refused.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sqlalchemy.engine import Engine

from appliance import fsutil
from appliance.datasets import archive, lf_rows, readers
from appliance.datasets.fields import RowError
from appliance.datasets.intake import display_name
from appliance.datasets.lf_config import INFO_FILE, LfEntry, parse_info
from appliance.datasets.record import NewDataset, record_datasets
from appliance.datasets.shapes import Message
from appliance.db.tables import Dataset
from appliance.errors import InputProblem, InvalidInputError, Problems, TooLargeInputError
from appliance.paths import Paths
from appliance.settings import Settings

SAMPLE_SEED = 0  # num_samples picks rows at random, but the same rows on every import (same dataset id)


@dataclass(frozen=True)
class Imported:
    """One imported entry: its name in dataset_info.json, the dataset, and whether it is new
    (False: the same content was already a dataset, which is returned)."""

    lf_name: str
    dataset: Dataset
    created: bool


def import_folder(
    *,
    engine: Engine,
    paths: Paths,
    settings: Settings,
    folder: Path,
    names: list[str] | None = None,
    base_model_id: str | None = None,
    cutoff_len: int | None = None,
) -> list[Imported]:
    """Import the entries `names` (default: all) of `folder`/dataset_info.json, in that order.

    Errors (nothing recorded on any): InvalidInputError for a missing or invalid dataset_info.json, a
    refused key (field `<dataset>.<key>`), a missing file or a bad row (source `<file> (dataset
    '<name>')`, with line and field); TooLargeInputError for a file over APPLIANCE_MAX_UPLOAD_BYTES;
    NoSpaceError on a full disk.
    """
    root = folder.resolve()
    entries = parse_info(_load_info(root), split_names(names))
    # Every entry's file_name first, so all the ones that name no usable file are told at once.
    problems: list[InputProblem] = []
    for entry in entries:
        try:
            _data_files(root, entry)
        except InvalidInputError as exc:
            problems.extend(exc.problems)
    if problems:
        raise InvalidInputError(INFO_FILE, problems)
    items = [_read_entry(root, entry, settings) for entry in entries]
    paths.ensure()
    recorded = record_datasets(engine=engine, paths=paths, items=items, base_model_id=base_model_id,
                               cutoff_len=cutoff_len or settings.default_cutoff_len)
    return [Imported(e.name, d, created) for e, (d, created) in zip(entries, recorded, strict=True)]


def import_archive(
    *,
    engine: Engine,
    paths: Paths,
    settings: Settings,
    stream: BinaryIO,
    filename: str,
    names: list[str] | None = None,
    base_model_id: str | None = None,
    cutoff_len: int | None = None,
) -> list[Imported]:
    """The same as import_folder, for the folder uploaded as a zip or tar archive (`filename` only
    names it in errors). It is unpacked under the data directory's tmp/ and removed afterwards;
    no path in it reaches outside (archive.unpack). More errors: InvalidInputError for an archive
    that is not one or is unsafe, TooLargeInputError over APPLIANCE_MAX_UPLOAD_BYTES (packed or not).
    """
    source = display_name(filename)
    paths.ensure()
    with fsutil.refuse_when_full(paths.tmp), fsutil.temp_path(paths.tmp, ".upload") as raw, \
            fsutil.temp_path(paths.tmp, ".lf") as folder:
        try:
            fsutil.copy_stream(stream, raw, settings.max_upload_bytes)
        except fsutil.TooLargeError as exc:
            raise TooLargeInputError(f"{source}: larger than the upload limit of {exc.limit} bytes "
                                     "(APPLIANCE_MAX_UPLOAD_BYTES)") from exc
        folder.mkdir()
        archive.unpack(raw, source, folder, settings.max_upload_bytes)
        raw.unlink()
        return import_folder(engine=engine, paths=paths, settings=settings,
                             folder=archive.find_info(folder, source, INFO_FILE), names=names,
                             base_model_id=base_model_id, cutoff_len=cutoff_len)


def _load_info(root: Path) -> object:
    path = root / INFO_FILE
    if not path.is_file():
        raise InvalidInputError(INFO_FILE, [InputProblem(None, None, f"no {INFO_FILE} in the folder: a LLaMA-Factory "
                                                                     "data folder has one (e.g. LLaMA-Factory/data)")])
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise InvalidInputError(INFO_FILE, [InputProblem(None, None, f"not UTF-8 text ({exc.reason})")]) from exc
    except json.JSONDecodeError as exc:
        what = exc.msg.removesuffix(" at")  # "Invalid control character at": the column follows
        raise InvalidInputError(INFO_FILE, [InputProblem(exc.lineno, None, f"invalid JSON ({what} at column "
                                                                           f"{exc.colno})")]) from exc
    except RecursionError as exc:
        raise InvalidInputError(INFO_FILE, [InputProblem(None, None, "JSON nested too deeply")]) from exc


def _refuse(entry: LfEntry, key: str, message: str) -> InvalidInputError:
    return InvalidInputError(INFO_FILE, [InputProblem(None, f"{entry.name}.{key}", message)])


def _inside(root: Path, path: Path, entry: LfEntry) -> Path:
    resolved = path.resolve()
    if not resolved.is_relative_to(root):
        raise _refuse(entry, "file_name", f"{path.relative_to(root)} leads outside the imported folder (a link): "
                                          "put the file itself in the folder")
    return resolved


def _data_files(root: Path, entry: LfEntry) -> list[Path]:
    path = _inside(root, root / entry.file_name, entry)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise _refuse(entry, "file_name", f"{entry.file_name!r} is not in the folder")
    files = []
    for child in sorted(path.iterdir()):
        if not child.is_file():
            raise _refuse(entry, "file_name", f"{entry.file_name}/{child.name} is not a file; LLaMA-Factory reads "
                                              "only files from a file_name folder")
        files.append(_inside(root, child, entry))
    if not files:
        raise _refuse(entry, "file_name", f"the folder {entry.file_name!r} is empty")
    return files


def _read_entry(root: Path, entry: LfEntry, settings: Settings) -> NewDataset:
    files = _data_files(root, entry)
    if entry.file_sha1 is not None:
        if len(files) != 1:
            raise _refuse(entry, "file_sha1", "file_sha1 checks one file, but file_name names a folder: remove it")
        found = hashlib.sha1(files[0].read_bytes(), usedforsecurity=False).hexdigest()
        if found != entry.file_sha1:
            raise _refuse(entry, "file_sha1", f"{entry.file_name} has SHA-1 {found}, not {entry.file_sha1}: the file "
                                              "changed since dataset_info.json was written (or fix file_sha1)")
    conversations: list[list[Message]] = []
    types: set[str] = set()
    for file in files:
        source_type, rows = _read_file(root, file, entry, settings)
        types.add(source_type)
        if len(types) > 1:
            raise _refuse(entry, "file_name", f"the folder {entry.file_name!r} mixes file types {sorted(types)}; "
                                              "LLaMA-Factory reads one type per dataset")
        conversations.extend(rows)
    if entry.num_samples is not None:
        conversations = sample(conversations, entry.num_samples)
    if len(conversations) > settings.max_dataset_rows:
        raise _refuse(entry, "num_samples" if entry.num_samples else "file_name",
                      f"{len(conversations)} rows, more than {settings.max_dataset_rows} (the limit in settings)")
    return NewDataset(
        name=entry.name, source_filename=display_name(entry.file_name), format=entry.formatting,
        source_type=types.pop(), conversations=conversations,
        origin=f"from LLaMA-Factory {INFO_FILE} entry {entry.name!r}",
    )


def split_names(names: list[str] | None) -> list[str] | None:
    """Entry names as given: repeated, or comma-separated as in LLaMA-Factory's `dataset: a,b`."""
    if not names:
        return None
    return [part.strip() for name in names for part in name.split(",") if part.strip()] or None


def sample(rows: list[list[Message]], n: int) -> list[list[Message]]:
    """LLaMA-Factory's num_samples with a fixed seed: n rows in random order, each row at most once
    while n <= len(rows); beyond that every row once, then random repeats."""
    rng = random.Random(SAMPLE_SEED)
    order = list(range(len(rows)))
    rng.shuffle(order)
    picked = order[:n] + rng.choices(range(len(rows)), k=max(0, n - len(rows)))
    return [rows[i] for i in picked]


def _read_file(root: Path, path: Path, entry: LfEntry, settings: Settings) -> tuple[str, list[list[Message]]]:
    rel = path.relative_to(root).as_posix()
    source = f"{rel} (dataset {entry.name!r})"
    size = path.stat().st_size
    if size > settings.max_upload_bytes:
        raise TooLargeInputError(f"{source}: {size} bytes, larger than the upload limit of {settings.max_upload_bytes} "
                                 "bytes (APPLIANCE_MAX_UPLOAD_BYTES)")
    problems = Problems()
    source_type = readers.detect_type(path, path.name) if size else None
    if source_type != "parquet" and size:
        readers.check_text(path, problems)
    if source_type is None and not problems:
        problems.add(None, None, "file is empty" if not size else
                     "unrecognized file: expected a JSON array, JSON Lines, CSV with a header row, or Parquet")
    if problems or source_type is None:
        raise InvalidInputError(source, problems.items, problems.total)
    conversations: list[list[Message]] = []
    for record in readers.read_records(path, source_type, problems, known_columns=False):
        try:
            conversations.append(lf_rows.convert(record.value, entry))
        except RowError as exc:
            problems.add(record.line, exc.field, exc.message, record.unit)
        if len(conversations) > settings.max_dataset_rows:
            problems.add(record.line, None, f"more than {settings.max_dataset_rows} rows (the limit in settings)",
                         record.unit)
            break
    if not problems and not conversations:
        problems.add(None, None, "file holds no rows")
    if problems:
        raise InvalidInputError(source, problems.items, problems.total)
    return source_type, conversations
