"""Turn an uploaded file into records, each with the line (or row) it came from.

The file type is decided by content, not by name: Parquet by its magic, JSON by a leading '[',
JSON Lines by a leading '{', CSV by a header row. Problems are collected with their line numbers.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.errors import Problems

SNIFF_BYTES = 64 * 1024


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


def read_jsonl(path: Path, problems: Problems) -> Iterator[Record]:
    with open(path, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield Record(number, json.loads(line))
            except json.JSONDecodeError as exc:
                problems.add(number, None, f"invalid JSON ({exc.msg} at column {exc.colno})")


def read_json_array(path: Path, problems: Problems) -> Iterator[Record]:
    """Elements of a top-level JSON array, each with the line it starts on."""
    text = path.read_text(encoding="utf-8-sig")
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
            problems.add(exc.lineno, None, f"invalid JSON ({exc.msg} at column {exc.colno})")
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


def read_csv(path: Path, problems: Problems) -> Iterator[Record]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        sample = f.read(SNIFF_BYTES)
        f.seek(0)
        delimiter = "\t" if sample.split("\n", 1)[0].count("\t") > sample.split("\n", 1)[0].count(",") else ","
        reader = csv.reader(f, delimiter=delimiter)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            return
        if not _csv_header_ok(header):
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
                if len(row) != len(header):
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
    for number, row in enumerate(table.to_pylist(), start=1):
        yield Record(number, row, unit="row")


def read_records(path: Path, source_type: str, problems: Problems) -> Iterator[Record]:
    readers = {"jsonl": read_jsonl, "json": read_json_array, "csv": read_csv, "parquet": read_parquet}
    return readers[source_type](path, problems)
