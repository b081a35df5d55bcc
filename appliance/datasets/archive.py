"""Unpack an uploaded folder (a zip or tar archive) into a fresh folder under the data directory's
tmp/, refusing whatever could land outside it or fill the disk.

Members are copied one by one (never `extractall`): only plain files and folders are accepted; an
absolute name, a `..` part, a link or a device is refused by name; the unpacked bytes (counted as
read, not as the archive claims) may total at most the upload limit, so a small archive cannot
expand into a full disk.
"""

from __future__ import annotations

import lzma
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Generator
from functools import partial
from pathlib import Path, PurePosixPath
from typing import IO

from appliance.errors import InputProblem, InvalidInputError, TooLargeInputError

MAX_MEMBERS = 10_000
SKIPPED = ("__MACOSX",)  # macOS Archive Utility's resource forks: never data


def _refuse(source: str, message: str) -> InvalidInputError:
    return InvalidInputError(source, [InputProblem(None, None, message)])


def unpack(archive: Path, source: str, dest: Path, limit: int) -> None:
    """Unpack the zip or tar (gz, bz2, xz) file `archive` into the existing empty folder `dest`.

    Raises InvalidInputError (source: the upload's name) for another file type, a corrupt archive or
    an unsafe member; TooLargeInputError when the unpacked bytes exceed `limit`.
    """
    if zipfile.is_zipfile(archive):
        members = _zip_members(archive, source)
    elif tarfile.is_tarfile(archive):
        members = _tar_members(archive, source)
    else:
        raise _refuse(source, "not a zip or tar archive: upload the LLaMA-Factory data folder (dataset_info.json "
                              "and its files) as .zip, .tar or .tar.gz")
    total = 0
    count = 0
    try:
        for name, opened in members:
            count += 1
            if count > MAX_MEMBERS:
                raise _refuse(source, f"more than {MAX_MEMBERS} files in the archive")
            target = dest / _safe_name(name, source)
            target.parent.mkdir(parents=True, exist_ok=True)
            with opened() as src, open(target, "xb") as out:
                while chunk := src.read(1 << 20):
                    total += len(chunk)
                    if total > limit:
                        raise TooLargeInputError(f"{source}: unpacks to more than the upload limit of {limit} bytes "
                                                 "(APPLIANCE_MAX_UPLOAD_BYTES)")
                    out.write(chunk)
    except (FileExistsError, NotADirectoryError, IsADirectoryError) as exc:
        raise _refuse(source, f"{Path(exc.filename).relative_to(dest)} is in the archive twice (as a file and "
                              "as a file or folder)") from exc
    except (zipfile.BadZipFile, tarfile.TarError, zlib.error, lzma.LZMAError, EOFError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise  # a real I/O error (a full disk is mapped by the caller), not a corrupt archive
        raise _refuse(source, f"corrupt archive: {exc}") from exc
    finally:
        members.close()  # closes the archive, also when a member was refused


def _safe_name(name: str, source: str) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or not path.parts or ":" in path.parts[0]:
        raise _refuse(source, f"{name!r}: a member outside the archive's folder (absolute or with '..')")
    return path


Member = tuple[str, Callable[[], IO[bytes]]]  # a member's name, and how to open it


def _skipped(name: str) -> bool:
    return PurePosixPath(name).parts[:1] in [(s,) for s in SKIPPED]


def _zip_members(archive: Path, source: str) -> Generator[Member, None, None]:
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            if info.is_dir() or _skipped(info.filename):
                continue
            mode = info.external_attr >> 16
            if mode and not stat.S_ISREG(mode):
                raise _refuse(source, f"{info.filename!r} is not a plain file (a link?): only files are accepted")
            yield info.filename, partial(zf.open, info)


def _tar_members(archive: Path, source: str) -> Generator[Member, None, None]:
    with tarfile.open(archive, mode="r:*") as tf:
        for member in tf:
            if member.isdir() or _skipped(member.name):
                continue
            if not member.isfile():
                raise _refuse(source, f"{member.name!r} is not a plain file (a link or device): only files are "
                                      "accepted")
            yield member.name, partial(_opened, tf, member)


def _opened(tf: tarfile.TarFile, member: tarfile.TarInfo) -> IO[bytes]:
    f = tf.extractfile(member)
    assert f is not None  # a regular file always has content
    return f


def find_info(dest: Path, source: str, info_name: str) -> Path:
    """The folder holding `info_name`: the archive's top, or its one top folder (a zipped folder)."""
    found = sorted(dest.rglob(info_name), key=lambda p: len(p.relative_to(dest).parts))
    if not found:
        raise _refuse(source, f"the archive holds no {info_name}: archive the LLaMA-Factory data folder itself")
    shallowest = [p for p in found if len(p.parts) == len(found[0].parts)]
    if len(shallowest) > 1:
        where = ", ".join(str(p.relative_to(dest)) for p in shallowest[:5])
        raise _refuse(source, f"more than one {info_name} ({where}): archive one data folder")
    return found[0].parent
