"""The `.polar` format: a per-layer polarity distribution, in a JSON and a safetensors encoding.

The exact specification is `spec/polar-format.md` (schema: `spec/polar.schema.json`, shipped in
the package as `polarpack/spec/polar.schema.json`, see `json_schema()`). This module is its
reference implementation: `Distribution` is the in-memory form, `encode_*`/`decode_*` are the two
byte encodings (lossless both ways, byte-reproducible), and `save`/`load` add atomic file I/O and
encoding detection. Everything read is validated; errors name the file, layer and field.

Both encodings are written and read in pure Python (no torch import): the safetensors bytes are
exactly those `safetensors.torch.save` produces for the same tensors and metadata.
"""

from __future__ import annotations

import json
import math
import numbers
import operator
import os
import re
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from ._io import atomic_write_bytes
from ._version import __version__
from .errors import FormatError

FORMAT_VERSION = 1
SUM_TOLERANCE = 1e-9
INT64_MAX = 2**63 - 1
LAYER_KINDS = ("conv", "linear")
SOURCE_TYPES = ("torchvision", "file", "hub", "paper", "manual")
SAFETENSORS_METADATA_KEY = "polar"
SAFETENSORS_SUFFIXES = (".polar.safetensors", ".safetensors")
JSON_SUFFIXES = (".polar", ".polar.json", ".json")
SCHEMA_RESOURCE = "spec/polar.schema.json"
_LAYER_KEYS = ("name", "kind", "shape", "p0", "p_neg", "p_pos", "counts")
_TOP_KEYS = ("format_version", "layers", "source", "extraction", "producer", "metadata")
_OBJECT_KEYS = ("source", "extraction", "producer", "metadata")
_ST_LAYER_KEYS = ("name", "kind", "shape")
_JSON_WS = b" \t\r\n"  # JSON whitespace (RFC 8259)
_SHA256 = re.compile(r"[0-9a-f]{64}")

# Recommended keys of the free-form objects: when present and not null they must have this type.
_RECOMMENDED: dict[str, dict[str, str]] = {
    "source": {"type": "source-type", "id": "string", "file": "string", "hub": "string",
               "sha256": "sha256", "citation": "string"},
    "extraction": {"zero_tol": "non-negative number", "expand_groups": "boolean",
                   "include_linear": "boolean", "layers": "list of strings", "layout": "string"},
    "producer": {"name": "string", "version": "string"},
}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _as_int(value: Any) -> Any:
    """numpy/torch integer scalars -> int; anything else (bool, float, str) is left for validate."""
    if isinstance(value, bool) or isinstance(value, int):
        return value
    if isinstance(value, numbers.Integral):
        return operator.index(value)
    return value


def _as_float(value: Any) -> Any:
    """ints and numpy floats -> float, -0.0 -> 0.0; anything else is left for validate."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return value
    try:
        return float(value) + 0.0  # `+ 0.0` turns -0.0 into 0.0, so equal values encode equally
    except (OverflowError, ValueError):
        return value


@dataclass(frozen=True)
class LayerDistribution:
    """Fractions of zero, negative and positive weights in one layer's kernel.

    `shape` is the shape that was counted (after grouped-conv expansion), or None when unknown;
    `counts` are the integer [n0, n_neg, n_pos] behind the fractions, when known. Numbers are
    normalised on construction (ints/numpy scalars -> float proportions, -0.0 -> 0.0, lists ->
    tuples); the invariants are checked when the layer is put into a `Distribution`.
    """

    name: str
    p0: float
    p_neg: float
    p_pos: float
    kind: str = "conv"
    shape: tuple[int, ...] | None = None
    counts: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        for key in ("p0", "p_neg", "p_pos"):
            object.__setattr__(self, key, _as_float(getattr(self, key)))
        for key in ("shape", "counts"):
            value = getattr(self, key)
            if isinstance(value, (list, tuple)):
                object.__setattr__(self, key, tuple(_as_int(v) for v in value))

    @property
    def proportions(self) -> tuple[float, float, float]:
        return (self.p0, self.p_neg, self.p_pos)

    @property
    def numel(self) -> int | None:
        if self.shape is not None:
            return math.prod(self.shape)
        if self.counts is not None:
            return sum(self.counts)
        return None

    @classmethod
    def from_counts(
        cls, name: str, counts: Sequence[int], *, kind: str = "conv", shape: Sequence[int] | None = None
    ) -> "LayerDistribution":
        n0, nn, np_ = (int(c) for c in counts)
        total = n0 + nn + np_
        if total <= 0:
            raise FormatError(f"layer {name!r}: counts {list(counts)} sum to 0; a layer needs weights")
        return cls(
            name=name,
            kind=kind,
            shape=tuple(int(s) for s in shape) if shape is not None else None,
            p0=n0 / total,
            p_neg=nn / total,
            p_pos=np_ / total,
            counts=(n0, nn, np_),
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "shape": list(self.shape) if self.shape is not None else None,
            "p0": self.p0,
            "p_neg": self.p_neg,
            "p_pos": self.p_pos,
        }
        if self.counts is not None:
            d["counts"] = list(self.counts)
        return d


@dataclass(frozen=True)
class Distribution:
    """An ordered list of layer distributions plus where they came from.

    `source` says what was extracted (model id, file, hub reference, sha256 of the weights file);
    `extraction` holds the settings used (zero tolerance, grouped-conv expansion, ...);
    `metadata` is free-form JSON for the user. All four objects are deep-copied into plain JSON
    (dict/list/str/int/float/bool/None) on construction, so a round trip compares equal.
    """

    layers: tuple[LayerDistribution, ...]
    source: Mapping[str, Any] = field(default_factory=dict)
    extraction: Mapping[str, Any] = field(default_factory=dict)
    producer: Mapping[str, Any] = field(default_factory=lambda: {"name": "polarpack", "version": __version__})
    metadata: Mapping[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        for key in _OBJECT_KEYS:
            value = getattr(self, key)
            if isinstance(value, Mapping):
                object.__setattr__(self, key, _plain_json(value, key))
        validate(self)

    # -- convenience -------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def __getitem__(self, key: int | str) -> LayerDistribution:
        if isinstance(key, str):
            for layer in self.layers:
                if layer.name == key:
                    return layer
            raise KeyError(f"no layer named {key!r}; layers are {self.names}")
        return self.layers[key]

    def proportions(self):
        """The (L, 3) float64 tensor [p0, p_neg, p_pos] per layer, the paper's P."""
        import torch

        return torch.tensor([l.proportions for l in self.layers], dtype=torch.float64)

    def with_metadata(self, **items: Any) -> "Distribution":
        return replace(self, metadata={**self.metadata, **items})

    # -- dict form ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "layers": [layer.to_dict() for layer in self.layers],
            "source": dict(self.source),
            "extraction": dict(self.extraction),
            "producer": dict(self.producer),
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "distribution") -> "Distribution":
        if not isinstance(data, dict):
            raise FormatError(f"{where}: top level must be a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(_TOP_KEYS))
        if unknown:
            raise FormatError(
                f"{where}: unknown field(s) {unknown}; allowed fields are {list(_TOP_KEYS)} "
                f"(format_version {FORMAT_VERSION}; put extra information under 'metadata')"
            )
        if "format_version" not in data:
            raise FormatError(f"{where}: missing 'format_version'; add \"format_version\": {FORMAT_VERSION}")
        version = data["format_version"]
        if isinstance(version, bool) or not isinstance(version, int) or version != FORMAT_VERSION:
            raise FormatError(
                f"{where}: unknown format_version {version!r}; this polarpack {__version__} reads "
                f"format_version {FORMAT_VERSION} only (upgrade polarpack to read newer files)"
            )
        layers_data = data.get("layers")
        if not isinstance(layers_data, list) or not layers_data:
            raise FormatError(f"{where}: 'layers' must be a non-empty list of layer objects, got {layers_data!r}")
        layers = [_layer_from_dict(item, where=f"{where}: layers[{i}]") for i, item in enumerate(layers_data)]
        extras = {}
        for key in _OBJECT_KEYS:
            value = data.get(key, {})
            if not isinstance(value, dict):
                raise FormatError(f"{where}: '{key}' must be a JSON object, got {type(value).__name__}")
            extras[key] = value
        try:
            return cls(layers=tuple(layers), format_version=version, **extras)
        except FormatError as exc:
            raise FormatError(f"{where}: {exc}") from None


def _layer_from_dict(item: Any, *, where: str) -> LayerDistribution:
    if not isinstance(item, dict):
        raise FormatError(f"{where}: each layer must be a JSON object, got {type(item).__name__}")
    name = item.get("name")
    if isinstance(name, str):
        where = f"{where} ({name!r})"
    unknown = sorted(set(item) - set(_LAYER_KEYS))
    if unknown:
        raise FormatError(f"{where}: unknown field(s) {unknown}; allowed layer fields are {list(_LAYER_KEYS)}")
    for key in ("name", "p0", "p_neg", "p_pos"):
        if key not in item:
            raise FormatError(f"{where}: missing required field '{key}'")
    probs = {}
    for key in ("p0", "p_neg", "p_pos"):
        value = item[key]
        if not _is_number(value):
            raise FormatError(f"{where}: '{key}' must be a number, got {value!r}")
        try:
            probs[key] = float(value)
        except OverflowError:
            raise FormatError(f"{where}: '{key}' is {value!r}; proportions must lie in [0, 1]") from None
    shape = item.get("shape")
    if shape is not None:
        if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape):
            raise FormatError(f"{where}: 'shape' must be a list of integers or null, got {shape!r}")
        shape = tuple(shape)
    counts = item.get("counts")
    if counts is not None:
        if (
            not isinstance(counts, list)
            or len(counts) != 3
            or not all(isinstance(c, int) and not isinstance(c, bool) for c in counts)
        ):
            raise FormatError(f"{where}: 'counts' must be three integers [n0, n_neg, n_pos], got {counts!r}")
        counts = tuple(counts)
    return LayerDistribution(name=name, kind=item.get("kind", "conv"), shape=shape, counts=counts, **probs)


def _plain_json(value: Any, path: str, depth: int = 0) -> Any:
    """A deep copy of `value` as plain JSON (dict with str keys, list, str, int, float, bool,
    None); raises FormatError naming the path for anything else (NaN/inf included)."""
    if depth > 200:
        raise FormatError(f"'{path}' is nested more than 200 levels deep")
    if value is None or isinstance(value, (bool, str)):
        if isinstance(value, str):
            _check_utf8(value, path)
        return value
    if isinstance(value, numbers.Integral):  # int, numpy integers
        return int(value)
    if isinstance(value, numbers.Real):  # float, numpy floats
        value = float(value)
        if not math.isfinite(value):
            raise FormatError(f"'{path}' is {value!r}; JSON numbers must be finite (no NaN/inf)")
        return value
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise FormatError(f"'{path}' has a non-string key {k!r}; JSON object keys are strings")
            _check_utf8(k, path)
            out[k] = _plain_json(v, f"{path}.{k}", depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [_plain_json(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
    raise FormatError(f"'{path}' is a {type(value).__name__}; only plain JSON values are allowed")


def _check_utf8(text: str, path: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise FormatError(f"'{path}' contains a lone surrogate; strings must be valid Unicode") from None


def validate(dist: Distribution) -> None:
    """Check every invariant of the spec; raise FormatError naming the layer and field."""
    version = dist.format_version
    if isinstance(version, bool) or not isinstance(version, int) or version != FORMAT_VERSION:
        raise FormatError(f"unknown format_version {version!r}; this polarpack reads {FORMAT_VERSION}")
    if not dist.layers:
        raise FormatError("a distribution needs at least one layer")
    seen: set[str] = set()
    for i, layer in enumerate(dist.layers):
        if not isinstance(layer, LayerDistribution):
            raise FormatError(f"layers[{i}] is a {type(layer).__name__}, expected LayerDistribution")
        _validate_layer(layer, f"layer {layer.name!r}" if isinstance(layer.name, str) and layer.name else f"layers[{i}]")
        if layer.name in seen:
            raise FormatError(f"layer {layer.name!r}: name appears twice; layer names must be unique")
        seen.add(layer.name)
    for key in _OBJECT_KEYS:
        value = getattr(dist, key)
        if not isinstance(value, Mapping):
            raise FormatError(f"'{key}' must be a mapping (a JSON object), got {type(value).__name__}")
        _plain_json(value, key)
        for sub, kind in _RECOMMENDED.get(key, {}).items():
            v = value.get(sub)
            if v is not None and not _has_kind(v, kind):
                raise FormatError(f"'{key}.{sub}' is {v!r}; it must be a {_describe_kind(kind)} (or null)")


def _has_kind(value: Any, kind: str) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "non-negative number":
        return _is_number(value) and value >= 0
    if kind == "list of strings":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind == "sha256":
        return isinstance(value, str) and _SHA256.fullmatch(value) is not None
    if kind == "source-type":
        return value in SOURCE_TYPES
    raise AssertionError(kind)


def _describe_kind(kind: str) -> str:
    if kind == "sha256":
        return "string of 64 lowercase hex digits (the SHA-256 of the weights file)"
    if kind == "source-type":
        return f"one of {list(SOURCE_TYPES)}"
    return kind


def _validate_layer(layer: LayerDistribution, where: str) -> None:
    if not isinstance(layer.name, str) or not layer.name:
        raise FormatError(f"{where}: 'name' must be a non-empty string, got {layer.name!r}")
    _check_utf8(layer.name, f"{where}: name")
    if not isinstance(layer.kind, str) or layer.kind not in LAYER_KINDS:
        raise FormatError(f"{where}: 'kind' is {layer.kind!r}; must be one of {list(LAYER_KINDS)}")
    probs = layer.proportions
    for key, value in zip(("p0", "p_neg", "p_pos"), probs):
        if not isinstance(value, float) or not math.isfinite(value):
            raise FormatError(f"{where}: '{key}' is {value!r}; proportions must be finite numbers (no NaN/inf)")
        if not 0.0 <= value <= 1.0:
            raise FormatError(f"{where}: '{key}' is {value!r}; proportions must lie in [0, 1]")
    total = math.fsum(probs)
    if abs(total - 1.0) > SUM_TOLERANCE:
        raise FormatError(
            f"{where}: p0 + p_neg + p_pos = {total!r}; they must sum to 1 within {SUM_TOLERANCE:g} "
            "(renormalise the three values)"
        )
    if layer.shape is not None:
        shape = layer.shape
        if (
            not isinstance(shape, tuple)
            or not shape
            or any(isinstance(s, bool) or not isinstance(s, int) or s <= 0 for s in shape)
        ):
            raise FormatError(f"{where}: 'shape' {shape!r} must be a non-empty list of positive integers or null")
    if layer.counts is not None:
        counts = layer.counts
        if (
            not isinstance(counts, tuple)
            or len(counts) != 3
            or any(isinstance(c, bool) or not isinstance(c, int) or not 0 <= c <= INT64_MAX for c in counts)
        ):
            raise FormatError(
                f"{where}: 'counts' {counts!r} must be three non-negative integers [n0, n_neg, n_pos] "
                "(each below 2**63)"
            )
        n = sum(counts)
        if n == 0:
            raise FormatError(f"{where}: 'counts' sum to 0; a layer needs weights")
        if layer.shape is not None and n != math.prod(layer.shape):
            raise FormatError(
                f"{where}: 'counts' {list(counts)} sum to {n} but shape {list(layer.shape)} holds "
                f"{math.prod(layer.shape)} weights; fix the counts or the shape"
            )
        for key, c, p in zip(("p0", "p_neg", "p_pos"), counts, probs):
            if abs(c / n - p) > SUM_TOLERANCE:
                raise FormatError(
                    f"{where}: '{key}' is {p!r} but 'counts' give {c}/{n} = {c / n!r}; "
                    "fix the proportion or drop 'counts'"
                )


# -- JSON encoding ---------------------------------------------------------------------------


def _dump_str(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _dump(value: Any, indent: str) -> str:
    """One JSON value in the .polar layout: objects one member per line with keys sorted, lists
    of numbers on one line, other non-empty lists one element per line."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return _dump_str(value)
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise FormatError(f"cannot encode {value!r}; JSON numbers must be finite")
        return float.__repr__(value)
    if isinstance(value, Mapping):
        return _dump_members(sorted(value.items()), indent)
    if isinstance(value, (list, tuple)):
        if not value:
            return "[]"
        if all(_is_number(v) for v in value):
            return "[" + ", ".join(_dump(v, indent) for v in value) + "]"
        inner = indent + "  "
        return "[\n" + ",\n".join(inner + _dump(v, inner) for v in value) + "\n" + indent + "]"
    raise FormatError(f"cannot encode a {type(value).__name__} as JSON")


def _dump_members(items: Sequence[tuple[str, Any]], indent: str) -> str:
    if not items:
        return "{}"
    inner = indent + "  "
    body = ",\n".join(f"{inner}{_dump_str(k)}: {_dump(v, inner)}" for k, v in items)
    return "{\n" + body + "\n" + indent + "}"


def encode_json(dist: Distribution) -> bytes:
    """The JSON encoding: UTF-8, 2-space indent, fixed member order for the top level and the
    layers, sorted keys elsewhere, number lists on one line, trailing newline (spec: "JSON
    encoding"). Deterministic, so the same distribution always gives the same bytes."""
    validate(dist)
    d = dist.to_dict()
    layers = ",\n".join("    " + _dump_members(list(layer.items()), "    ") for layer in d["layers"])
    members = [f'  "format_version": {d["format_version"]}', f'  "layers": [\n{layers}\n  ]']
    members += [f"  {_dump_str(key)}: {_dump(d[key], '  ')}" for key in _OBJECT_KEYS]
    return ("{\n" + ",\n".join(members) + "\n}\n").encode("utf-8")


def _object_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise FormatError(f"duplicate key {key!r} in a JSON object; each key may appear once")
        out[key] = value
    return out


def _loads(text: str | bytes, where: str, what: str) -> Any:
    """json.loads that rejects duplicate keys; NaN/Infinity become floats so that validation
    reports them with the layer and field they sit in."""
    try:
        return json.loads(text, object_pairs_hook=_object_pairs, parse_constant=float)
    except FormatError as exc:
        raise FormatError(f"{where}: {what}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise FormatError(f"{where}: malformed {what} at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except (ValueError, RecursionError) as exc:  # e.g. integers over 4300 digits, deep nesting
        raise FormatError(f"{where}: malformed {what}: {exc}") from None


def decode_json(data: bytes, *, where: str = "<bytes>") -> Distribution:
    if data.startswith(b"\xef\xbb\xbf"):
        raise FormatError(f"{where}: starts with a UTF-8 byte-order mark; .polar JSON must not have one (remove it)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start}); is it a safetensors file?") from None
    return Distribution.from_dict(_loads(text, where, "JSON"), where=where)


def _canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


# -- safetensors encoding --------------------------------------------------------------------

_DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "F64": 8, "I64": 8, "U64": 8,
}


def encode_safetensors(dist: Distribution) -> bytes:
    """The safetensors encoding: `counts` (L, 3) int64 (-1 rows where unknown), `proportions`
    (L, 3) float64, and everything else as canonical JSON in the single metadata key `polar`.
    Byte-identical to `safetensors.torch.save` of the same tensors and metadata."""
    validate(dist)
    L = len(dist.layers)
    counts = [c for l in dist.layers for c in (l.counts if l.counts is not None else (-1, -1, -1))]
    props = [p for l in dist.layers for p in l.proportions]
    meta = dist.to_dict()
    meta["layers"] = [{"name": l.name, "kind": l.kind, "shape": list(l.shape) if l.shape is not None else None}
                      for l in dist.layers]
    nbytes = 8 * 3 * L
    header = {
        "__metadata__": {SAFETENSORS_METADATA_KEY: _canonical_json(meta)},
        "counts": {"dtype": "I64", "shape": [L, 3], "data_offsets": [0, nbytes]},
        "proportions": {"dtype": "F64", "shape": [L, 3], "data_offsets": [nbytes, 2 * nbytes]},
    }
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + struct.pack(f"<{3 * L}q", *counts) + struct.pack(f"<{3 * L}d", *props)


def _read_safetensors(data: bytes, where: str) -> tuple[dict[str, str] | None, dict[str, tuple[str, list[int], bytes]]]:
    """Parse and check the safetensors container: (metadata, {name: (dtype, shape, raw bytes)})."""
    if len(data) < 8:
        raise FormatError(f"{where}: {len(data)} bytes is too short for a safetensors file (truncated?)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise FormatError(
            f"{where}: not a valid safetensors file: header length {n} but the file has {len(data)} bytes; "
            "the file is truncated or is not a .polar.safetensors file"
        )
    try:
        header_text = data[8 : 8 + n].decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError(f"{where}: not a valid safetensors file: the header is not UTF-8") from None
    header = _loads(header_text, where, "safetensors header")
    if not isinstance(header, dict):
        raise FormatError(f"{where}: not a valid safetensors file: the header is not a JSON object")
    buffer = data[8 + n :]
    metadata = header.pop("__metadata__", None)
    if metadata is not None and (
        not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values())
    ):
        raise FormatError(f"{where}: not a valid safetensors file: '__metadata__' must map strings to strings")
    tensors: dict[str, tuple[str, list[int], bytes]] = {}
    spans = []
    for name, info in header.items():
        bad = FormatError(f"{where}: not a valid safetensors file: bad entry for tensor {name!r}: {info!r}")
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise bad
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if (
            dtype not in _DTYPE_SIZES
            or not isinstance(shape, list)
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)
            or not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
            or offsets[1] - offsets[0] != math.prod(shape) * _DTYPE_SIZES[dtype]
        ):
            raise bad
        spans.append((offsets[0], offsets[1]))
        tensors[name] = (dtype, shape, buffer[offsets[0] : offsets[1]])
    end = 0
    for begin, stop in sorted(spans):
        if begin != end:
            break
        end = stop
    if end != len(buffer):
        raise FormatError(
            f"{where}: not a valid safetensors file: the tensor data ({len(buffer)} bytes) does not match "
            "the header's data_offsets; the file is truncated or corrupt"
        )
    return metadata, tensors


def decode_safetensors(data: bytes, *, where: str = "<bytes>") -> Distribution:
    metadata, tensors = _read_safetensors(data, where)
    if not metadata or SAFETENSORS_METADATA_KEY not in metadata:
        raise FormatError(
            f"{where}: safetensors file has no '{SAFETENSORS_METADATA_KEY}' metadata; it is not a .polar file"
        )
    extra = sorted(set(metadata) - {SAFETENSORS_METADATA_KEY})
    if extra:
        raise FormatError(f"{where}: unknown safetensors metadata key(s) {extra}; a .polar file has only "
                          f"'{SAFETENSORS_METADATA_KEY}'")
    extra = sorted(set(tensors) - {"proportions", "counts"})
    if extra:
        raise FormatError(f"{where}: unknown tensor(s) {extra}; a .polar file has only 'proportions' and 'counts'")
    meta = _loads(metadata[SAFETENSORS_METADATA_KEY], where, f"'{SAFETENSORS_METADATA_KEY}' metadata JSON")
    if not isinstance(meta, dict) or not isinstance(meta.get("layers"), list):
        raise FormatError(f"{where}: metadata '{SAFETENSORS_METADATA_KEY}' has no 'layers' list")
    n = len(meta["layers"])
    expected = {"proportions": "F64", "counts": "I64"}
    for name, dtype in expected.items():
        if name not in tensors or tensors[name][0] != dtype or tensors[name][1] != [n, 3]:
            got = tensors.get(name)
            raise FormatError(
                f"{where}: tensor '{name}' must be {dtype} of shape [{n}, 3] for {n} layers, "
                f"got {'nothing' if got is None else f'{got[0]} of shape {got[1]}'}"
            )
    props = struct.unpack(f"<{3 * n}d", tensors["proportions"][2])
    counts = struct.unpack(f"<{3 * n}q", tensors["counts"][2])
    layers = []
    for i, info in enumerate(meta["layers"]):
        if not isinstance(info, dict):
            raise FormatError(f"{where}: layers[{i}]: each metadata layer must be a JSON object")
        unknown = sorted(set(info) - set(_ST_LAYER_KEYS))
        if unknown:
            raise FormatError(
                f"{where}: layers[{i}]: unknown field(s) {unknown} in the '{SAFETENSORS_METADATA_KEY}' metadata; "
                f"allowed there are {list(_ST_LAYER_KEYS)} (proportions and counts live in the tensors)"
            )
        item = dict(info, p0=props[3 * i], p_neg=props[3 * i + 1], p_pos=props[3 * i + 2])
        c = list(counts[3 * i : 3 * i + 3])
        if c != [-1, -1, -1]:
            item["counts"] = c
        layers.append(item)
    meta["layers"] = layers
    return Distribution.from_dict(meta, where=where)


# -- files -----------------------------------------------------------------------------------


def encoding_for_path(path: str | os.PathLike) -> str:
    """'safetensors' for names ending in .safetensors, otherwise 'json' (the .polar default)."""
    return "safetensors" if str(path).endswith(".safetensors") else "json"


def encode(dist: Distribution, encoding: str = "json") -> bytes:
    if encoding == "json":
        return encode_json(dist)
    if encoding == "safetensors":
        return encode_safetensors(dist)
    raise FormatError(f"unknown encoding {encoding!r}; use 'json' or 'safetensors'")


def detect_encoding(data: bytes) -> str:
    """'safetensors' when the first 8 bytes hold a 0x00 byte, else 'json'. JSON text never
    contains 0x00; a safetensors file starts with its header length as a little-endian u64,
    whose top byte is 0x00 for any header under 2**56 bytes."""
    return "safetensors" if b"\x00" in data[:8] else "json"


def decode(data: bytes, *, where: str = "<bytes>") -> Distribution:
    """Decode either encoding, recognised by content (see `detect_encoding`)."""
    if not data.strip(_JSON_WS):
        raise FormatError(f"{where}: the file is empty; it is not a .polar file")
    if detect_encoding(data) == "json":
        return decode_json(data, where=where)
    return decode_safetensors(data, where=where)


def save(dist: Distribution, path: str | os.PathLike, *, encoding: str | None = None) -> Path:
    """Write `dist` atomically (temp file + rename); the encoding follows the suffix unless given.
    Nothing is written when validation or encoding fails."""
    validate(dist)
    return atomic_write_bytes(path, encode(dist, encoding or encoding_for_path(path)))


def load(path: str | os.PathLike) -> Distribution:
    path = Path(path)
    if not path.exists():
        raise FormatError(f"{path}: no such file; check the path, or use a preset such as 'paper:alexnet'")
    if path.is_dir():
        raise FormatError(f"{path}: is a directory, not a .polar file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FormatError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
    return decode(data, where=str(path))


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the JSON encoding, as shipped in the package."""
    from importlib.resources import files

    return json.loads(files("polarpack").joinpath(SCHEMA_RESOURCE).read_text(encoding="utf-8"))


def size_report(dist: Distribution, polar_bytes: int | None = None) -> dict[str, Any]:
    """The sizes that make the seed's point: this file versus the full sign pattern (2 bits per
    weight) versus the float32 weights it summarises. Unknown sizes are None."""
    n = [l.numel for l in dist.layers]
    weights = sum(n) if all(v is not None for v in n) else None
    polar = polar_bytes if polar_bytes is not None else len(encode_json(dist))
    return {
        "layers": len(dist.layers),
        "numbers": 2 * len(dist.layers),
        "weights": weights,
        "polar_bytes": polar,
        "sign_pattern_bytes": (2 * weights + 7) // 8 if weights is not None else None,
        "float32_bytes": 4 * weights if weights is not None else None,
    }
