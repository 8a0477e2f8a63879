"""Atomic file writes: a crash or a bad input never leaves a partial output file behind."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import PolarpackError


def check_output_path(path: str | os.PathLike) -> Path:
    """Fail early, before any work, if `path` cannot be written (missing parent directory)."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise PolarpackError(f"{path}: output directory {parent} does not exist; create it first (mkdir -p {parent})")
    if path.is_dir():
        raise PolarpackError(f"{path}: is a directory; pass a file path for the output")
    return path


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path in `path`'s directory to write to; on success fsync it and rename it over
    `path`, on any failure remove it. Writers that stream to a path (safetensors' save_file) use
    this directly and skip building the whole file in memory."""
    path = check_output_path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file the project wrote; damage (a torn or edited file) is a one-line error naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PolarpackError(f"{path}: not valid JSON ({exc}); the file is damaged: restore it or delete it") from None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
