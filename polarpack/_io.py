"""Files in and out. Writes are atomic: a crash or a bad input never leaves a partial output file
behind. Reads take regular files only, with their size checked before a byte is read: a path that
names a FIFO, a device (/dev/zero) or a directory would otherwise hang or exhaust memory."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from polarpack.errors import PolarpackError


def check_output_path(path: str | os.PathLike) -> Path:
    """Fail early, before any work, if `path` cannot be written (missing parent directory)."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise PolarpackError(
            f"{path}: output directory {parent} does not exist; create it first (mkdir -p {parent})"
        )
    if path.is_dir():
        raise PolarpackError(f"{path}: is a directory; pass a file path for the output")
    return path


def temporary_path(path: Path) -> Path:
    """A fresh hidden name beside `path`, for what is written there before it is moved into
    place. The name is cut short: one of up to 255 bytes must leave room for the 22 added."""
    return path.with_name(f".{path.name[:200]}.{secrets.token_hex(8)}.tmp")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path in `path`'s directory to write to; on success fsync it and rename it over
    `path`, on any failure remove it. Writers that stream to a path (safetensors' save_file) use
    this directly and skip building the whole file in memory."""
    path = check_output_path(path)
    tmp = temporary_path(path)
    # Created exclusively with mode 0666, which the kernel narrows by the process's umask: the
    # permissions any new file gets, read without changing the umask of the user's process.
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


JSON_LIMIT = 64 << 20  # bytes: far above any config, summary or metrics file polarpack writes


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _refuse(path: str | os.PathLike, st: os.stat_result, limit: int | None, what: str) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise PolarpackError(
            f"{path}: is {_kind(st.st_mode)}; polarpack reads {what} only from regular files"
        )
    if limit is not None and st.st_size > limit:
        raise PolarpackError(
            f"{path}: {st.st_size:,} bytes is over the {limit:,}-byte limit for "
            f"{what}; is it the right file?"
        )


def check_regular_file(
    path: str | os.PathLike, *, limit: int | None = None, what: str = "data"
) -> int:
    """The size of `path` (symlinks followed) when it is a regular file within `limit`, else a
    one-line error. For readers that take a path (torch.load, safe_open) rather than bytes."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise PolarpackError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    _refuse(path, st, limit, what)
    return st.st_size


def read_bytes(path: str | os.PathLike, *, limit: int | None, what: str = "data") -> bytes:
    """The bytes of a regular file of at most `limit` bytes. Opened without blocking, so a FIFO is
    refused instead of waiting for a writer; the checks apply to the file actually opened."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise PolarpackError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    try:
        _refuse(path, os.fstat(fd), limit, what)
    except PolarpackError:
        os.close(fd)
        raise
    size = os.fstat(fd).st_size  # read no more than the file holds (and one byte to see growth)
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(size + 1 if limit is not None else -1)
    if limit is not None and len(data) > size:
        raise PolarpackError(
            f"{path}: the file grew while it was read; read it again once it is complete"
        )
    return data


def read_json(path: str | os.PathLike, *, limit: int = JSON_LIMIT) -> Any:
    """A JSON file the project wrote; damage (a torn or edited file) is a one-line error naming
    it."""
    data = read_bytes(path, limit=limit, what="JSON files")
    try:
        return json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # ValueError: huge ints too
        raise PolarpackError(
            f"{path}: not valid JSON ({exc}); the file is damaged: restore it or delete it"
        ) from None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def printable(text: str) -> str:
    """Control characters (ESC, newlines and the other C0/C1 codes) shown as escapes, so text from
    a file can neither drive a terminal nor fake a line of output."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
