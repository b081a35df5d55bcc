"""Turn an uploaded file into records, each with the line (or row) it came from.

The file type is decided by content, not by name: Parquet by its magic, JSON by a leading '[',
JSON Lines by a leading '{', CSV by a header row. Problems are collected with their line numbers.

Byte-order marks are read as noise wherever they are: Windows tools write one at the start of each
file, so two files joined with `cat` carry one mid-file (datasets' JSON reader refused that line
with Python's "decode using utf-8-sig"). CR line ends are read as LF (text mode); CRs inside values
are cleaned with the values (fields.clean).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.datasets.fields import MAX_NESTING_MESSAGE
from appliance.errors import Problems

SNIFF_BYTES = 64 * 1024
BOM = "\ufeff"


@dataclass(frozen=True)
class Record:
    line: int
    value: Any
    unit: str = "line"


def check_text(path: Path, problems: Problems) -> None:
    """Refuse binary junk and invalid UTF-8, naming the first bad lines."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if b"\x00" in raw:
                problems.add(number, None, "binary data (NUL byte): not a text file")
                return
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                problems.add(number, None, f"invalid UTF-8 at byte {exc.start} of the line")


def detect_type(path: Path, filename: str) -> str | None:
    """'parquet', 'json', 'jsonl', 'csv', or None when it is none of them (or empty)."""
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
    if head.startswith(b"PAR1"):
        return "parquet"
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    if not text:
        return None
    if text[0] == "[":
        return "json"
    if text[0] == "{":
        return "jsonl"
    first_line = text.splitlines()[0]
    if filename.lower().endswith((".csv", ".tsv")) or "," in first_line or "\t" in first_line:
        return "csv"
    return None


def joined_at(path: Path) -> list[int]:
    """Lines that start with a byte-order mark past the file's start: where two files were joined."""
    found = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if b"\xef\xbb\xbf" in raw and number > 1:
                found.append(number)
    return found


def read_jsonl(path: Path, problems: Problems) -> Iterator[Record]:
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            line = line.replace(BOM, "")
            if not line.strip():
                continue
            try:
                yield Record(number, json.loads(line))
            except json.JSONDecodeError as exc:
                problems.add(number, None, f"invalid JSON ({exc.msg.removesuffix(' at')} at column {exc.colno})")
            except RecursionError:
                problems.add(number, None, MAX_NESTING_MESSAGE)


def read_json_array(path: Path, problems: Problems) -> Iterator[Record]:
    """Elements of a top-level JSON array, each with the line it starts on."""
    text = path.read_text(encoding="utf-8").replace(BOM, "")
    decoder = json.JSONDecoder()
    ws = " \t\r\n"
    i = len(text) - len(text.lstrip(ws))
    line, counted_to = 1, 0

    def line_at(pos: int) -> int:
        nonlocal line, counted_to
        line += text.count("\n", counted_to, pos)
        counted_to = pos
        return line

    def skip_ws(pos: int) -> int:
        while pos < len(text) and text[pos] in ws:
            pos += 1
        return pos

    i = skip_ws(i + 1)  # past the '['
    if i < len(text) and text[i] == "]":
        return
    while True:
        try:
            value, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as exc:
            problems.add(exc.lineno, None, f"invalid JSON ({exc.msg.removesuffix(' at')} at column {exc.colno})")
            return
        except RecursionError:
            problems.add(line_at(i), None, MAX_NESTING_MESSAGE)
            return
        yield Record(line_at(i), value)
        i = skip_ws(end)
        if i < len(text) and text[i] == ",":
            i = skip_ws(i + 1)
            continue
        if i < len(text) and text[i] == "]":
            if text[i + 1 :].strip(ws):
                problems.add(line_at(i), None, "invalid JSON (extra data after the array)")
            return
        problems.add(line_at(min(i, len(text))), None, "invalid JSON (expected ',' or ']' after an element)")
        return


def read_csv(path: Path, problems: Problems, known_columns: bool = True) -> Iterator[Record]:
    """Rows as {header: cell} plus "__csv__": True. With known_columns, the header must hold the
    columns of a shape we detect (a LLaMA-Factory import names its own columns instead)."""
    with open(path, encoding="utf-8", newline="") as f:
        sample = f.read(SNIFF_BYTES).replace(BOM, "")
        f.seek(0)
        delimiter = "\t" if sample.split("\n", 1)[0].count("\t") > sample.split("\n", 1)[0].count(",") else ","
        reader = csv.reader((line.replace(BOM, "") for line in f), delimiter=delimiter)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            return
        if known_columns and not _csv_header_ok(header):
            missing = [c for c in ("instruction", "output") if c not in header]
            problems.add(
                1, None,
                f"CSV header is missing column(s) {missing}: needs 'instruction' and 'output' (alpaca), "
                f"or a 'messages' or 'conversations' column holding JSON; found {header}",
            )
            return
        start = reader.line_num + 1
        try:
            for row in reader:
                if not any(cell.strip() for cell in row):
                    start = reader.line_num + 1
                    continue
                if [cell.strip() for cell in row] == header:
                    problems.add(start, None, "this row repeats the header row: two files were probably joined; "
                                              "remove the second header")
                elif len(row) != len(header):
                    problems.add(start, None, f"expected {len(header)} fields (as in the header), got {len(row)}")
                else:
                    yield Record(start, {"__csv__": True, **dict(zip(header, row, strict=True))})
                start = reader.line_num + 1
        except csv.Error as exc:
            problems.add(reader.line_num, None, f"malformed CSV: {exc}")


def _csv_header_ok(header: list[str]) -> bool:
    return "messages" in header or "conversations" in header or {"instruction", "output"} <= set(header)


def read_parquet(path: Path, problems: Problems) -> Iterator[Record]:
    import pyarrow.parquet as pq  # heavy; only when a Parquet file arrives

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        problems.add(None, None, f"unreadable Parquet file: {exc}")
        return
    try:
        rows = table.to_pylist()
    except RecursionError:
        problems.add(None, None, "Parquet columns nested too deeply to read")
        return
    for number, row in enumerate(rows, start=1):
        yield Record(number, row, unit="row")


def read_records(path: Path, source_type: str, problems: Problems, known_columns: bool = True) -> Iterator[Record]:
    """Records of a file of `source_type` (detect_type); problems are collected, not raised."""
    if source_type == "csv":
        return read_csv(path, problems, known_columns)
    readers = {"jsonl": read_jsonl, "json": read_json_array, "parquet": read_parquet}
    return readers[source_type](path, problems)
