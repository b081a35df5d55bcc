"""A folder artifact (a LoRA adapter as peft reads it, a merged model) downloaded as one uncompressed
tar, streamed from the files as they are: nothing is copied into a temporary file first (a merged
model is hundreds of MB) and the length is known before the first byte (Content-Length).

The tar is POSIX (pax) as Python's tarfile writes it: one header block per member, its bytes padded to
512, two zero blocks at the end. GNU tar, bsdtar, Windows' tar and Python's tarfile read it.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import Path

BLOCK = 512
CHUNK = 1 << 20


def members(folder: Path, top: str) -> list[tuple[bytes, Path, int]]:
    """(header, file, size) for each regular file directly in `folder`, under `top/` in the tar, by name."""
    out = []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.is_symlink()):
        info = tarfile.TarInfo(f"{top}/{path.name}")
        stat = path.stat()
        info.size, info.mtime, info.mode = stat.st_size, int(stat.st_mtime), 0o644
        out.append((info.tobuf(format=tarfile.PAX_FORMAT), path, stat.st_size))
    return out


def length(parts: list[tuple[bytes, Path, int]]) -> int:
    """The tar's size in bytes."""
    return sum(len(header) + size + (-size % BLOCK) for header, _, size in parts) + 2 * BLOCK


def stream(parts: list[tuple[bytes, Path, int]]) -> Iterator[bytes]:
    """The tar's bytes, a header and the file's bytes in 1 MiB chunks at a time. Raises OSError when a
    file changed size meanwhile (the Content-Length sent would be wrong)."""
    for header, path, size in parts:
        yield header
        sent = 0
        with path.open("rb") as f:
            while sent < size and (chunk := f.read(min(CHUNK, size - sent))):
                sent += len(chunk)
                yield chunk
        if sent != size:
            raise OSError(f"{path} changed while it was being sent")
        if size % BLOCK:
            yield b"\0" * (-size % BLOCK)
    yield b"\0" * (2 * BLOCK)
