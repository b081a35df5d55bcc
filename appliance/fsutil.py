"""Atomic files: write under a temporary name in <data_dir>/tmp, fsync, rename into place.

A reader (or a restart after a power cut) sees either the old state or the complete new file,
never a half-written one. Whatever is left in tmp/ after a crash is garbage and is swept at start.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from appliance.errors import NoSpaceError


def safe_name(name: str) -> str:
    """`name` as a file name: letters, digits, '-', '_' and '.' kept, anything else '-', no leading or
    trailing '.' or '-', at most 64 characters ("model" when nothing is left)."""
    cleaned = "".join(c if c.isalnum() or c in "-_." else "-" for c in name).strip(".-")
    return cleaned[:64] or "model"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def temp_path(tmp_dir: Path, suffix: str = "") -> Iterator[Path]:
    """A fresh path in tmp_dir that is removed on exit unless it was moved away."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    path = tmp_dir / f"{uuid.uuid4().hex}{suffix}"
    try:
        yield path
    finally:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def publish(tmp: Path, final: Path) -> None:
    """Move a finished file or folder into place atomically (fsync'd first)."""
    if tmp.is_dir():
        for p in tmp.rglob("*"):
            if p.is_file():
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
    else:
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, final)
    fsync_dir(final.parent)


def copy_stream(src: BinaryIO, dst: Path, limit: int) -> tuple[int, str]:
    """Copy src into dst, refusing more than `limit` bytes; returns (size, sha256)."""
    digest = hashlib.sha256()
    size = 0
    with open(dst, "wb") as out:
        while chunk := src.read(1 << 20):
            size += len(chunk)
            if size > limit:
                raise TooLargeError(size, limit)
            digest.update(chunk)
            out.write(chunk)
    return size, digest.hexdigest()


class TooLargeError(Exception):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"file is larger than the limit of {limit} bytes")
        self.size = size
        self.limit = limit


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def read_or_create_secret(path: Path) -> str:
    """A token kept in a 0600 file: created once (atomically, never overwritten), then reused."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
        f.flush()
        os.fsync(f.fileno())
    try:
        # link() fails if another process created the file first; then both use the winner's token.
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_text().strip()


def sweep_tmp(tmp_dir: Path) -> int:
    """Remove what a crash left in tmp/. Only call when no job of this data dir is running."""
    if not tmp_dir.exists():
        return 0
    count = 0
    for p in tmp_dir.iterdir():
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        count += 1
    return count


# What a full disk looks like to a writer: ENOSPC, a quota, or a file-size limit (RLIMIT_FSIZE or the
# filesystem's largest file), which stops a write the same way.
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def free_space(path: Path) -> str:
    """Free space on the filesystem holding `path` (or its nearest existing parent), for messages."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return "unknown free space"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if free >= size:
            return f"{free / size:.1f} {unit} free"
    return f"{free} bytes free"


def is_no_space(exc: BaseException) -> bool:
    # numpy's tofile reports a short write without an errno ("N requested and M written").
    short_write = isinstance(exc, OSError) and exc.errno is None and "requested and" in str(exc)
    return isinstance(exc, OSError) and (short_write or exc.errno in NO_SPACE_ERRNOS)


def no_space_message(path: Path, reason: str) -> str:
    """The one wording of a full disk, for uploads, runs, the database and exports alike."""
    return f"no space left on the device writing {path} ({reason}; {free_space(path)} there); nothing was kept"


def describe_no_space(exc: BaseException, path: Path) -> str | None:
    """The message for a write that failed on a full disk, or None for any other error. `path` is
    where the write went when the error does not name the file itself."""
    if not is_no_space(exc):
        return None
    assert isinstance(exc, OSError)
    where = Path(exc.filename) if isinstance(exc.filename, str) else path
    return no_space_message(where, exc.strerror or str(exc))


@contextlib.contextmanager
def refuse_when_full(path: Path) -> Iterator[None]:
    """Turn a full disk under `path` into NoSpaceError (HTTP 507). Use it outside the temp_path
    blocks it guards, so the half-written file is gone before the error is raised."""
    try:
        yield
    except OSError as exc:
        message = describe_no_space(exc, path)
        if message is None:
            raise
        raise NoSpaceError(message) from exc
