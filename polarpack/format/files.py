"""Reading and writing `.polar` files: the encoding chosen by name when writing and recognised by
content when reading, atomic writes, and the reader's limits checked before a byte is decoded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from polarpack._io import atomic_write_bytes, check_regular_file, read_bytes
from polarpack.errors import FormatError, PolarpackError
from polarpack.format.container import decode_safetensors, encode_safetensors
from polarpack.format.distribution import Distribution
from polarpack.format.json_codec import _loads, encode_json
from polarpack.format.limits import (
    FILE_VARIABLE,
    LAYER_VARIABLE,
    check_file_size,
    decoded_bytes,
    layer_limit,
    size_limit,
)
from polarpack.format.rules import validate


def encoding_for_path(path: str | os.PathLike) -> str:
    """Writers pick the encoding by name: '.safetensors' at the end means safetensors, else JSON."""
    return "safetensors" if str(path).endswith(".safetensors") else "json"


def encode(dist: Distribution, encoding: str = "json") -> bytes:
    """The file's bytes, refused unless this polarpack's reader would read them back: every layer
    within the decoded-size limit (safetensors) and the whole within the file-size limit."""
    if encoding not in ("json", "safetensors"):
        raise FormatError(f"unknown encoding {encoding!r}; use 'json' or 'safetensors'")
    validate(dist)  # a distribution changed after it was made is checked again
    if encoding == "safetensors":  # the JSON encoding holds nothing coded
        for layer in dist.layers:
            n = decoded_bytes(dist.granularity, layer.shape or (0,))
            _check_writable(n, layer_limit(), f"{layer.where}: it decodes to", LAYER_VARIABLE)
    data = encode_json(dist) if encoding == "json" else encode_safetensors(dist)
    _check_writable(len(data), size_limit(encoding), f"the {encoding} file is", FILE_VARIABLE)
    return data


def _check_writable(n: int, limit: int, what: str, variable: str) -> None:
    """A reader's limit applied to what is about to be written: what polarpack writes, it reads."""
    if n > limit:
        raise FormatError(
            f"{what} {n:,} bytes, over the {limit:,}-byte limit of readers (${variable}); not "
            f"written, as it would not read back: use a coarser granularity, or raise {variable} "
            "for the writer and every reader"
        )


def detect_encoding(data: bytes) -> str:
    """Readers look at the content: JSON text never holds 0x00, while a safetensors file starts with
    its header length as a little-endian u64 whose high bytes are 0x00."""
    return "safetensors" if b"\x00" in data[:8] else "json"


def _blank(data: bytes) -> bool:
    return not data[: 1 << 16].strip() and not data.strip()


def decode(data: bytes, *, where: str = "<bytes>") -> Distribution:
    """Decode either encoding, recognised by content."""
    if _blank(data):
        raise FormatError(f"{where}: the file is empty; it is not a .polar file")
    encoding = detect_encoding(data)
    check_file_size(len(data), encoding, where)
    if encoding == "safetensors":
        return decode_safetensors(data, where=where)
    if data.startswith(b"\xef\xbb\xbf"):
        raise FormatError(
            f"{where}: starts with a UTF-8 byte-order mark; .polar JSON must not have one (remove "
            "it)"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(
            f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start}); not a .polar file"
        ) from None
    return Distribution.from_dict(_loads(text, where, "JSON"), where=where)


def save(dist: Distribution, path: str | os.PathLike, *, encoding: str | None = None) -> Path:
    """Write atomically; the encoding follows the name unless given. Nothing is written on error."""
    return atomic_write_bytes(path, encode(dist, encoding or encoding_for_path(path)))


def load(path: str | os.PathLike) -> Distribution:
    """Read a .polar file of any version and encoding: regular files only (a FIFO or a device is
    refused at once), within its encoding's size limit, checked on its first 8 bytes before the
    rest is read."""
    path = Path(path)
    try:
        size = check_regular_file(path, what=".polar files")
        with open(path, "rb") as fh:  # the first bytes tell the encoding, and so its limit
            check_file_size(size, detect_encoding(fh.read(8)), str(path))
        # the stat'd size as the limit: read_bytes allocates limit + 1 bytes for its read
        data = read_bytes(path, limit=size, what=".polar files")
    except FormatError:
        raise
    except OSError as exc:  # unreadable: permissions, an I/O error
        raise FormatError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except PolarpackError as exc:
        if not os.path.lexists(path):
            raise FormatError(
                f"{path}: no such file; check the path, or use a preset such as paper:alexnet"
            ) from None
        raise FormatError(str(exc)) from None
    return decode(data, where=str(path))


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the JSON encoding."""
    from importlib.resources import files

    return json.loads(
        files("polarpack.format").joinpath("polar.schema.json").read_text(encoding="utf-8")
    )
