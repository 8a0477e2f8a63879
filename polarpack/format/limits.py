"""The limits that bound a reader's work on untrusted files, and how a user raises them."""

from __future__ import annotations

import os

from polarpack.errors import FormatError

JSON_LIMIT, SAFETENSORS_LIMIT = 16 << 20, 1 << 30  # bytes; $POLARPACK_MAX_POLAR_BYTES overrides


def size_limit(encoding: str) -> int:
    """The largest .polar file read, in bytes: bounded work on untrusted files."""
    env = os.environ.get("POLARPACK_MAX_POLAR_BYTES")
    if env:
        try:
            return int(env)
        except ValueError:
            raise FormatError(
                f"$POLARPACK_MAX_POLAR_BYTES must be a number of bytes, got {env!r}"
            ) from None
    return JSON_LIMIT if encoding == "json" else SAFETENSORS_LIMIT


def check_file_size(n: int, encoding: str | None, where: str) -> None:
    limit = size_limit(encoding) if encoding else max(map(size_limit, ("json", "safetensors")))
    if n > limit:
        raise FormatError(
            f"{where}: {n:,} bytes is over the {limit:,}-byte limit for {encoding or ''}"
            f"{' ' if encoding else ''}.polar files; if you trust the file, raise it with "
            "POLARPACK_MAX_POLAR_BYTES"
        )
