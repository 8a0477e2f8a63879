"""The limits that bound a reader's work on untrusted files, and how a user raises them.

Two ceilings, each in bytes and each raised by an environment variable for files one trusts:

- a whole file: 16 MiB of JSON or 1 GiB of safetensors (`POLARPACK_MAX_POLAR_BYTES`);
- one layer's decoded form: 256 MiB (`POLARPACK_MAX_LAYER_BYTES`), the int8 signs of a pattern or
  scaled layer (one byte per weight) or the int64 table of a channel layer (24 bytes per channel).
  A coded stream can describe far more than it holds (a gap-coded map of one zero among 2^36
  weights takes a few bytes), so the file's size alone does not bound what a layer decodes to.

Writers apply the same limits (`polarpack.format.files.encode`): what polarpack writes, it reads
back.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

from polarpack.errors import FormatError

JSON_LIMIT, SAFETENSORS_LIMIT = 16 << 20, 1 << 30  # bytes; $POLARPACK_MAX_POLAR_BYTES overrides
LAYER_LIMIT = 1 << 28  # bytes one layer decodes to; $POLARPACK_MAX_LAYER_BYTES overrides
FILE_VARIABLE, LAYER_VARIABLE = "POLARPACK_MAX_POLAR_BYTES", "POLARPACK_MAX_LAYER_BYTES"
CHANNEL_ROW_BYTES = 24  # one channel's [n0, n_neg, n_pos] as int64


def _bytes_from_env(variable: str, default: int) -> int:
    env = os.environ.get(variable)
    if not env:
        return default
    try:
        return int(env)
    except ValueError:
        raise FormatError(f"${variable} must be a number of bytes, got {env!r}") from None


def size_limit(encoding: str) -> int:
    """The largest .polar file read, in bytes: bounded work on untrusted files."""
    return _bytes_from_env(FILE_VARIABLE, JSON_LIMIT if encoding == "json" else SAFETENSORS_LIMIT)


def layer_limit() -> int:
    """The most bytes one layer of a file may decode to (its int8 signs or its channel table)."""
    return _bytes_from_env(LAYER_VARIABLE, LAYER_LIMIT)


def check_file_size(n: int, encoding: str | None, where: str) -> None:
    limit = size_limit(encoding) if encoding else max(map(size_limit, ("json", "safetensors")))
    if n > limit:
        raise FormatError(
            f"{where}: {n:,} bytes is over the {limit:,}-byte limit for {encoding or ''}"
            f"{' ' if encoding else ''}.polar files; if you trust the file, raise it with "
            f"{FILE_VARIABLE}"
        )


def decoded_bytes(granularity: str, shape: Sequence[int]) -> int:
    """What a coded layer decodes to, in bytes: its int8 signs (pattern, scaled) or its channel
    table (channel); 0 at layer granularity, which holds nothing coded."""
    if granularity in ("pattern", "scaled"):
        return math.prod(shape)
    return CHANNEL_ROW_BYTES * shape[0] if granularity == "channel" else 0


def check_layer_size(granularity: str, shape: Sequence[int], where: str) -> None:
    """Refuse a layer that would decode to more than `layer_limit()` bytes, before it is decoded."""
    n, limit = decoded_bytes(granularity, shape), layer_limit()
    if n > limit:
        what = "int8 signs" if granularity != "channel" else "channel counts"
        raise FormatError(
            f"{where}: shape {list(shape)} decodes to {n:,} bytes of {what}, over the "
            f"{limit:,}-byte limit for one layer; if you trust the file, raise it with "
            f"{LAYER_VARIABLE}"
        )
