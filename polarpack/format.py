"""The `.polar` format: polarity distributions in a JSON and a safetensors encoding.

The exact specification is `spec/polar-format.md`; its JSON Schema ships in the package
(`polarpack/polar.schema.json`, see `json_schema()`). Three granularities climb from a few numbers
to the whole sign pattern: ``layer`` (p0, p-, p+ per layer: the seed paper's P), ``channel`` (the
counts of each output channel) and ``pattern`` (the exact ternary signs, packed near their entropy;
safetensors only). `Distribution` is the in-memory form and `validate` holds every rule once; the
encodings are lossless both ways and byte-reproducible.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ._io import atomic_write_bytes
from ._version import __version__
from .errors import FormatError

FORMAT_VERSION = 1
GRANULARITIES = ("layer", "channel", "pattern")
LAYER_KINDS = ("conv", "linear")
SOURCE_TYPES = ("torchvision", "file", "hub", "paper", "manual")
SUM_TOLERANCE = 1e-9
INT64_MAX = 2**63 - 1
METADATA_KEY = "polar"
JSON_LIMIT, SAFETENSORS_LIMIT = 16 << 20, 1 << 30  # bytes; $POLARPACK_MAX_POLAR_BYTES overrides both
TOP_KEYS = ("format_version", "granularity", "layers", "source", "extraction", "producer", "metadata")
LAYER_KEYS = ("name", "kind", "shape", "p0", "p_neg", "p_pos", "counts", "channel_counts")
OBJECT_KEYS = ("source", "extraction", "producer", "metadata")
_SHA256 = re.compile(r"[0-9a-f]{64}")
# Recommended keys of the free-form objects: when present and not null they must pass the check.
_RECOMMENDED = {
    ("source", "type"): (lambda v: v in SOURCE_TYPES, f"one of {list(SOURCE_TYPES)}"),
    ("source", "sha256"): (lambda v: isinstance(v, str) and _SHA256.fullmatch(v) is not None,
                           "64 lowercase hex digits"),
    **{("source", k): (lambda v: isinstance(v, str), "a string") for k in ("id", "file", "hub", "citation")},
    ("extraction", "zero_tol"): (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    **{("extraction", k): (lambda v: isinstance(v, bool), "a boolean") for k in ("expand_groups", "include_linear")},
    ("extraction", "layers"): (lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v),
                               "a list of strings"),
    **{(o, k): (lambda v: isinstance(v, str), "a string") for o, k in (("extraction", "layout"), ("producer", "name"),
                                                                        ("producer", "version"))},
}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= INT64_MAX


def _plain(value: Any) -> Any:
    """numpy/torch scalars and sequences -> Python numbers and tuples; -0.0 -> 0.0; else unchanged."""
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, int)):
        return float(value) + 0.0
    return value


@dataclass(frozen=True)
class LayerDistribution:
    """One layer: fractions of zero, negative and positive weights, with what is known beyond them.

    `shape` is the counted kernel shape (after grouped-conv expansion) or None; `counts` the integer
    [n0, n_neg, n_pos]; `channel_counts` those counts per output channel (channel granularity);
    `pattern` the packed ternary signs (pattern granularity, see `pack_signs`).
    """

    name: str
    p0: float
    p_neg: float
    p_pos: float
    kind: str = "conv"
    shape: tuple[int, ...] | None = None
    counts: tuple[int, int, int] | None = None
    channel_counts: tuple[tuple[int, int, int], ...] | None = None
    pattern: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for key in ("p0", "p_neg", "p_pos", "shape", "counts", "channel_counts"):
            value = _plain(getattr(self, key))
            if key[0] == "p" and _is_number(value) and abs(value) < 1e300:  # huge ints stay, for validate to name
                value = float(value)
            object.__setattr__(self, key, value)

    @property
    def proportions(self) -> tuple[float, float, float]:
        return (self.p0, self.p_neg, self.p_pos)

    @property
    def numel(self) -> int | None:
        return math.prod(self.shape) if self.shape is not None else (sum(self.counts) if self.counts else None)

    @classmethod
    def from_counts(cls, name: str, counts: Sequence[int], *, kind: str = "conv", shape: Sequence[int] | None = None,
                    channel_counts: Sequence[Sequence[int]] | None = None,
                    pattern: bytes | None = None) -> LayerDistribution:
        n = sum(int(c) for c in counts)
        if n <= 0:
            raise FormatError(f"layer {name!r}: counts {list(counts)} sum to 0; a layer needs weights")
        return cls(name, counts[0] / n, counts[1] / n, counts[2] / n, kind, shape, counts, channel_counts, pattern)

    @classmethod
    def from_signs(cls, name: str, signs: Any, *, kind: str = "conv",
                   granularity: str = "pattern") -> LayerDistribution:
        """The layer of a ternary sign tensor (values -1, 0, 1; output channels first) at `granularity`."""
        s = np.asarray(signs, dtype=np.int8)
        if s.size == 0:
            raise FormatError(f"layer {name!r}: an empty tensor has no weights to count")
        rows = s.reshape(s.shape[0], -1) if s.ndim else s.reshape(1, 1)
        per_channel = np.stack([(rows == 0).sum(1), (rows < 0).sum(1), (rows > 0).sum(1)], axis=1)
        counts = tuple(int(c) for c in per_channel.sum(0))
        channels = tuple(map(tuple, per_channel.tolist())) if granularity == "channel" else None
        return cls.from_counts(name, counts, kind=kind, shape=s.shape, channel_counts=channels,
                               pattern=pack_signs(s) if granularity == "pattern" else None)

    def signs(self):
        """The exact sign pattern as an int8 torch tensor of `shape` (pattern granularity)."""
        import torch

        if self.pattern is None:
            raise FormatError(f"layer {self.name!r} holds no sign pattern; extract with --granularity pattern")
        return torch.from_numpy(unpack_signs(self.pattern, self.shape, self.counts))

    def to_dict(self) -> dict[str, Any]:
        """The JSON layer object (the pattern lives in safetensors tensors only)."""
        d = {"name": self.name, "kind": self.kind, "shape": list(self.shape) if self.shape is not None else None,
             "p0": self.p0, "p_neg": self.p_neg, "p_pos": self.p_pos}
        if self.counts is not None:
            d["counts"] = list(self.counts)
        if self.channel_counts is not None:
            d["channel_counts"] = [list(c) for c in self.channel_counts]
        return d


def pack_signs(signs: Any) -> bytes:
    """Ternary signs, row-major, as bytes: a bitmap of the zeros (1 = zero; only when the layer has
    both zeros and non-zeros), then a bitmap of the non-zeros' signs (1 = negative; only when both
    signs occur), each `np.packbits` (most significant bit first, zero-padded to a byte)."""
    s = np.asarray(signs, dtype=np.int8).ravel()
    zero = s == 0
    parts = []
    if 0 < zero.sum() < s.size:
        parts.append(np.packbits(zero))
    negative = s[~zero] < 0
    if 0 < negative.sum() < negative.size:
        parts.append(np.packbits(negative))
    return b"".join(p.tobytes() for p in parts)


def _bitmaps(data: bytes, shape: Sequence[int], counts: Sequence[int]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The zero and sign bitmaps of a packed pattern, checked against the counts without expanding
    them (a hostile file's shape cannot make this allocate more than the file holds)."""
    n, (n0, n_neg, _) = math.prod(shape), counts
    zero_bytes = -(-n // 8) if 0 < n0 < n else 0
    sign_bytes = -(-(n - n0) // 8) if 0 < n_neg < n - n0 else 0
    if len(data) != zero_bytes + sign_bytes:
        raise FormatError(f"pattern is {len(data)} bytes but shape {list(shape)} with counts {list(counts)} "
                          f"needs {zero_bytes + sign_bytes}")
    buf = np.frombuffer(data, dtype=np.uint8)
    zero, sign = buf[:zero_bytes], buf[zero_bytes:]
    popcount = [int(np.unpackbits(b).sum()) for b in (zero, sign)]  # padding bits set show up here too
    if popcount != [n0 if zero_bytes else 0, n_neg if sign_bytes else 0]:
        raise FormatError(f"pattern bits do not match counts {list(counts)} (or padding bits are set)")
    return (zero if zero_bytes else None), (sign if sign_bytes else None)


def unpack_signs(data: bytes, shape: Sequence[int], counts: Sequence[int]) -> np.ndarray:
    """Inverse of `pack_signs`; the counts say which bitmaps are present and must agree with them."""
    zero_bits, sign_bits = _bitmaps(data, shape, counts)
    n, (n0, n_neg, _) = math.prod(shape), counts
    zero = np.full(n, n0 == n) if zero_bits is None else np.unpackbits(zero_bits, count=n).astype(bool)
    negative = np.full(n - n0, n_neg > 0) if sign_bits is None else np.unpackbits(sign_bits, count=n - n0).astype(bool)
    out = np.zeros(n, dtype=np.int8)
    out[~zero] = np.where(negative, -1, 1)
    return out.reshape(tuple(shape))


@dataclass(frozen=True)
class Distribution:
    """Ordered layer distributions plus where they came from (`source`), how they were extracted
    (`extraction`), who wrote them (`producer`) and free-form `metadata`; validated on creation."""

    layers: tuple[LayerDistribution, ...]
    source: Mapping[str, Any] = field(default_factory=dict)
    extraction: Mapping[str, Any] = field(default_factory=dict)
    producer: Mapping[str, Any] = field(default_factory=lambda: {"name": "polarpack", "version": __version__})
    metadata: Mapping[str, Any] = field(default_factory=dict)
    granularity: str = "layer"
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        for key in OBJECT_KEYS:
            object.__setattr__(self, key, _plain_json(getattr(self, key), key))
        validate(self)

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def __getitem__(self, key: int | str) -> LayerDistribution:
        if isinstance(key, str):
            found = [layer for layer in self.layers if layer.name == key]
            if not found:
                raise KeyError(f"no layer named {key!r}; layers are {self.names}")
            return found[0]
        return self.layers[key]

    def proportions(self):
        """The (L, 3) float64 tensor [p0, p_neg, p_pos] per layer: the paper's P."""
        import torch

        return torch.tensor([layer.proportions for layer in self.layers], dtype=torch.float64)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"format_version": self.format_version}
        if self.granularity != "layer":  # layer files read the same in readers that predate granularity
            d["granularity"] = self.granularity
        return d | {"layers": [layer.to_dict() for layer in self.layers],
                    **{k: dict(getattr(self, k)) for k in OBJECT_KEYS}}

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "distribution",
                  patterns: Sequence[bytes] | None = None) -> Distribution:
        """Build from the JSON object form; unknown or missing members are errors naming `where`."""
        if not isinstance(data, dict):
            raise FormatError(f"{where}: the top level must be a JSON object, got {type(data).__name__}")
        _check_keys(data, TOP_KEYS, ("format_version", "layers"), where, "put extra information under 'metadata'")
        if data["format_version"] != FORMAT_VERSION or not _is_int(data["format_version"]):
            raise FormatError(f"{where}: unknown format_version {data['format_version']!r}; polarpack "
                              f"{__version__} reads format_version {FORMAT_VERSION} (upgrade it to read newer files)")
        if not isinstance(data["layers"], list) or not data["layers"]:
            raise FormatError(f"{where}: 'layers' must be a non-empty list of layer objects")
        layers = []
        for i, item in enumerate(data["layers"]):
            if not isinstance(item, dict):
                raise FormatError(f"{where}: layers[{i}] must be a JSON object, got {type(item).__name__}")
            name = item.get("name")
            _check_keys(item, LAYER_KEYS, ("name", "p0", "p_neg", "p_pos"), f"{where}: layers[{i}]"
                        + (f" ({name!r})" if isinstance(name, str) else ""), "see spec/polar-format.md")
            layers.append(LayerDistribution(**{**item, "pattern": patterns[i] if patterns else None}))
        extras = {k: data.get(k, {}) for k in OBJECT_KEYS}
        extras |= {"granularity": data["granularity"]} if "granularity" in data else {}
        try:
            return cls(layers=tuple(layers), **extras)
        except FormatError as exc:
            raise FormatError(f"{where}: {exc}") from None


def _check_keys(obj: dict, allowed: Sequence[str], required: Sequence[str], where: str, hint: str) -> None:
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        raise FormatError(f"{where}: unknown field(s) {unknown}; allowed are {list(allowed)} ({hint})")
    missing = [k for k in required if k not in obj]
    if missing:
        raise FormatError(f"{where}: missing required field(s) {missing}")


def _plain_json(value: Any, path: str, depth: int = 0) -> Any:
    """A deep copy of `value` as plain JSON; anything else (NaN, inf, sets, lone surrogates) is an
    error naming the path."""
    if depth > 100:
        raise FormatError(f"'{path}' is nested more than 100 levels deep")
    value = _plain(value) if not isinstance(value, (Mapping, list, tuple)) else value
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise FormatError(f"'{path}' contains a lone surrogate; strings must be valid Unicode") from None
        return value
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise FormatError(f"'{path}' is {value!r}; JSON numbers must be finite (no NaN/inf)")
        return value
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise FormatError(f"'{path}' has a non-string key; JSON object keys are strings")
        return {_plain_json(k, path, depth + 1): _plain_json(v, f"{path}.{k}", depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_json(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
    raise FormatError(f"'{path}' is a {type(value).__name__}; only plain JSON values are allowed")


def validate(dist: Distribution) -> None:
    """Every rule of the spec, in one place; a FormatError names the layer and the field."""
    if dist.format_version != FORMAT_VERSION or not _is_int(dist.format_version):
        raise FormatError(f"unknown format_version {dist.format_version!r}; this polarpack reads {FORMAT_VERSION}")
    if dist.granularity not in GRANULARITIES:
        raise FormatError(f"'granularity' is {dist.granularity!r}; must be one of {list(GRANULARITIES)}")
    if not dist.layers:
        raise FormatError("a distribution needs at least one layer")
    for key in OBJECT_KEYS:
        if not isinstance(getattr(dist, key), Mapping):
            raise FormatError(f"'{key}' must be a JSON object")
        _plain_json(getattr(dist, key), key)
    for (obj, key), (check, what) in _RECOMMENDED.items():
        value = getattr(dist, obj).get(key)
        if value is not None and not check(value):
            raise FormatError(f"'{obj}.{key}' is {value!r}; it must be {what} (or null)")
    names = [getattr(layer, "name", None) for layer in dist.layers]
    for i, layer in enumerate(dist.layers):
        if not isinstance(layer, LayerDistribution):
            raise FormatError(f"layers[{i}] is a {type(layer).__name__}, expected LayerDistribution")
        where = f"layer {layer.name!r}" if isinstance(layer.name, str) and layer.name else f"layers[{i}]"
        _validate_layer(layer, where, dist.granularity)
        if names.count(layer.name) > 1:
            raise FormatError(f"{where}: the name appears twice; layer names must be unique")


def _validate_layer(layer: LayerDistribution, where: str, granularity: str) -> None:
    if not isinstance(layer.name, str) or not layer.name:
        raise FormatError(f"{where}: 'name' must be a non-empty string")
    _plain_json(layer.name, f"{where}: name")
    if layer.kind not in LAYER_KINDS:
        raise FormatError(f"{where}: 'kind' is {layer.kind!r}; must be one of {list(LAYER_KINDS)}")
    for key, value in zip(("p0", "p_neg", "p_pos"), layer.proportions):
        if not isinstance(value, float) or not 0.0 <= value <= 1.0:
            raise FormatError(f"{where}: '{key}' is {value!r}; proportions must be finite numbers in [0, 1]")
    total = math.fsum(layer.proportions)
    if abs(total - 1.0) > SUM_TOLERANCE:
        raise FormatError(f"{where}: p0 + p_neg + p_pos = {total!r}; they must sum to 1 within {SUM_TOLERANCE:g} "
                          "(renormalise the three values)")
    shape, counts = layer.shape, layer.counts
    if shape is not None and not (isinstance(shape, tuple) and shape and all(_is_int(s, 1) for s in shape)):
        raise FormatError(f"{where}: 'shape' {shape!r} must be a non-empty list of positive integers or null")
    if counts is not None:
        if not (isinstance(counts, tuple) and len(counts) == 3 and all(_is_int(c) for c in counts)) or not sum(counts):
            raise FormatError(f"{where}: 'counts' {counts!r} must be three non-negative integers [n0, n_neg, n_pos] "
                              "with a positive sum (each below 2**63)")
        n = sum(counts)
        if shape is not None and n != math.prod(shape):
            raise FormatError(f"{where}: 'counts' {list(counts)} sum to {n} but shape {list(shape)} holds "
                              f"{math.prod(shape)} weights; fix the counts or the shape")
        for key, c, p in zip(("p0", "p_neg", "p_pos"), counts, layer.proportions):
            if abs(c / n - p) > SUM_TOLERANCE:
                raise FormatError(f"{where}: '{key}' is {p!r} but 'counts' give {c}/{n}; "
                                  "fix the proportion or drop 'counts'")
    needs = {"channel": "channel_counts", "pattern": "pattern"}.get(granularity)
    for key in ("channel_counts", "pattern"):
        if (getattr(layer, key) is not None) != (key == needs):
            what = "missing" if key == needs else "not allowed"
            raise FormatError(f"{where}: '{key}' is {what} at granularity {granularity!r}")
    if needs and (shape is None or counts is None):
        raise FormatError(f"{where}: granularity {granularity!r} needs the layer's 'shape' and 'counts'")
    if layer.channel_counts is not None:
        rows = layer.channel_counts
        if not (isinstance(rows, tuple) and len(rows) == shape[0] and all(
                isinstance(r, tuple) and len(r) == 3 and all(_is_int(c) for c in r) for r in rows)):
            raise FormatError(f"{where}: 'channel_counts' must be {shape[0]} triples [n0, n_neg, n_pos], "
                              "one per output channel")
        if any(sum(r) != math.prod(shape[1:]) for r in rows) or tuple(map(sum, zip(*rows))) != counts:
            raise FormatError(f"{where}: 'channel_counts' must each sum to {math.prod(shape[1:])} "
                              "and add up to 'counts'")
    if layer.pattern is not None:
        if not isinstance(layer.pattern, bytes):
            raise FormatError(f"{where}: 'pattern' must be bytes")
        try:
            _bitmaps(layer.pattern, shape, counts)
        except FormatError as exc:
            raise FormatError(f"{where}: {exc}") from None


# -- encodings -----------------------------------------------------------------------------------


def _dumps(value: Any, **kwargs: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, **kwargs)


def encode_json(dist: Distribution) -> bytes:
    """UTF-8 JSON: one top-level member per line, one layer per line (`json.dumps` with its default
    separators; keys sorted inside source, extraction, producer and metadata), a final newline."""
    if dist.granularity == "pattern":
        raise FormatError("a pattern distribution has no JSON encoding (its signs are binary): "
                          "save it as NAME.polar.safetensors")
    d = dist.to_dict()
    layers = ",\n".join("    " + _dumps(layer) for layer in d.pop("layers"))
    members = [f"  {_dumps(k)}: {_dumps(v, sort_keys=True)}" for k, v in d.items()]
    members.insert(2 if "granularity" in d else 1, f'  "layers": [\n{layers}\n  ]')
    return ("{\n" + ",\n".join(members) + "\n}\n").encode("utf-8")


def _loads(text: str | bytes, where: str, what: str) -> Any:
    """json.loads that rejects duplicate keys; NaN/Infinity come back as floats for validate to name."""
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(items)
        if len(out) != len(items):
            raise FormatError(f"{where}: {what}: a JSON object has a duplicate key; each key may appear once")
        return out

    try:
        return json.loads(text, object_pairs_hook=pairs, parse_constant=float)
    except json.JSONDecodeError as exc:
        raise FormatError(f"{where}: malformed {what} at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except (ValueError, RecursionError) as exc:  # huge integers, deep nesting
        raise FormatError(f"{where}: malformed {what}: {exc}") from None


def encode_safetensors(dist: Distribution) -> bytes:
    """`counts` (L, 3) int64 (-1 rows where unknown) and `proportions` (L, 3) float64; per layer i
    `channel_counts.i` (C, 3) int64 or `pattern.i` uint8; everything else as canonical JSON in the one
    metadata key `polar` (one key keeps safetensors' bytes reproducible)."""
    from safetensors.numpy import save

    meta = dist.to_dict()
    meta["layers"] = [{"name": layer.name, "kind": layer.kind, "shape": list(layer.shape) if layer.shape else None}
                      for layer in dist.layers]
    tensors = {"counts": np.array([layer.counts or (-1, -1, -1) for layer in dist.layers], dtype="<i8"),
               "proportions": np.array([layer.proportions for layer in dist.layers], dtype="<f8")}
    for i, layer in enumerate(dist.layers):
        if layer.channel_counts is not None:
            tensors[f"channel_counts.{i}"] = np.array(layer.channel_counts, dtype="<i8")
        if layer.pattern is not None:
            tensors[f"pattern.{i}"] = np.frombuffer(layer.pattern, dtype=np.uint8)
    return save(tensors, metadata={METADATA_KEY: _dumps(meta, sort_keys=True, separators=(",", ":"))})


def decode_safetensors(data: bytes, *, where: str = "<bytes>") -> Distribution:
    from safetensors import SafetensorError, deserialize

    try:
        tensors = {name: t for name, t in deserialize(data)}
    except (SafetensorError, ValueError) as exc:
        raise FormatError(f"{where}: not a valid safetensors file ({exc}); it is truncated or not a .polar "
                          "file") from None
    (n,) = struct.unpack("<Q", data[:8])
    meta = _loads(data[8 : 8 + n], where, "safetensors header").get("__metadata__") or {}
    if set(meta) != {METADATA_KEY}:
        raise FormatError(f"{where}: a .polar safetensors file has exactly one metadata key '{METADATA_KEY}' "
                          f"(found {sorted(meta)}); it is not a .polar file")
    obj = _loads(meta[METADATA_KEY], where, f"'{METADATA_KEY}' metadata")
    if not isinstance(obj, dict) or not isinstance(obj.get("layers"), list):
        raise FormatError(f"{where}: metadata '{METADATA_KEY}' has no 'layers' list")
    n_layers = len(obj["layers"])
    allowed = {"counts", "proportions"} | {f"{k}.{i}" for k in ("channel_counts", "pattern") for i in range(n_layers)}
    if not set(tensors) <= allowed or not {"counts", "proportions"} <= set(tensors):
        raise FormatError(f"{where}: tensors {sorted(tensors)}; a .polar file has 'counts', 'proportions' and per "
                          "layer i optionally 'channel_counts.i' or 'pattern.i'")

    def array(name: str, dtype: str, shape: list[int] | None) -> np.ndarray:
        t = tensors[name]
        if t["dtype"] != dtype or (shape is not None and t["shape"] != shape):
            raise FormatError(f"{where}: tensor '{name}' must be {dtype}{' of shape ' + str(shape) if shape else ''}, "
                              f"got {t['dtype']} of shape {t['shape']}")
        return np.frombuffer(bytes(t["data"]), dtype={"I64": "<i8", "F64": "<f8",
                                                      "U8": "u1"}[dtype]).reshape(t["shape"])

    counts, props = array("counts", "I64", [n_layers, 3]), array("proportions", "F64", [n_layers, 3])
    patterns = []
    for i, info in enumerate(obj["layers"]):
        if not isinstance(info, dict) or not set(info) <= {"name", "kind", "shape"}:
            raise FormatError(f"{where}: layers[{i}] in the metadata holds only 'name', 'kind' and 'shape'")
        info.update(p0=float(props[i, 0]), p_neg=float(props[i, 1]), p_pos=float(props[i, 2]))
        if list(counts[i]) != [-1, -1, -1]:
            info["counts"] = [int(c) for c in counts[i]]
        if f"channel_counts.{i}" in tensors:
            info["channel_counts"] = array(f"channel_counts.{i}", "I64", None).tolist()
        patterns.append(array(f"pattern.{i}", "U8", None).tobytes() if f"pattern.{i}" in tensors else None)
    return Distribution.from_dict(obj, where=where, patterns=patterns if any(p is not None for p in patterns) else None)


def encoding_for_path(path: str | os.PathLike) -> str:
    """Writers pick the encoding by name: '.safetensors' at the end means safetensors, else JSON."""
    return "safetensors" if str(path).endswith(".safetensors") else "json"


def encode(dist: Distribution, encoding: str = "json") -> bytes:
    if encoding not in ("json", "safetensors"):
        raise FormatError(f"unknown encoding {encoding!r}; use 'json' or 'safetensors'")
    validate(dist)  # a distribution changed after it was made is checked again
    return encode_json(dist) if encoding == "json" else encode_safetensors(dist)


def detect_encoding(data: bytes) -> str:
    """Readers look at the content: JSON text never holds 0x00, while a safetensors file starts with
    its header length as a little-endian u64 whose high bytes are 0x00."""
    return "safetensors" if b"\x00" in data[:8] else "json"


def size_limit(encoding: str) -> int:
    """The largest .polar file read, in bytes: bounded work on untrusted files."""
    env = os.environ.get("POLARPACK_MAX_POLAR_BYTES")
    if env:
        try:
            return int(env)
        except ValueError:
            raise FormatError(f"$POLARPACK_MAX_POLAR_BYTES must be a number of bytes, got {env!r}") from None
    return JSON_LIMIT if encoding == "json" else SAFETENSORS_LIMIT


def _check_size(n: int, encoding: str, where: str) -> None:
    if n > size_limit(encoding):
        raise FormatError(f"{where}: {n:,} bytes is over the {size_limit(encoding):,}-byte limit for {encoding} .polar "
                          "files; if you trust the file, raise it with POLARPACK_MAX_POLAR_BYTES")


def decode(data: bytes, *, where: str = "<bytes>") -> Distribution:
    """Decode either encoding, recognised by content."""
    if not data.strip():
        raise FormatError(f"{where}: the file is empty; it is not a .polar file")
    encoding = detect_encoding(data)
    _check_size(len(data), encoding, where)
    if encoding == "safetensors":
        return decode_safetensors(data, where=where)
    if data.startswith(b"\xef\xbb\xbf"):
        raise FormatError(f"{where}: starts with a UTF-8 byte-order mark; .polar JSON must not have one (remove it)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start}); not a .polar file") from None
    return Distribution.from_dict(_loads(text, where, "JSON"), where=where)


def save(dist: Distribution, path: str | os.PathLike, *, encoding: str | None = None) -> Path:
    """Write atomically; the encoding follows the name unless given. Nothing is written on error."""
    return atomic_write_bytes(path, encode(dist, encoding or encoding_for_path(path)))


def load(path: str | os.PathLike) -> Distribution:
    path = Path(path)
    if not path.is_file():
        what = "no such file; check the path, or use a preset such as paper:alexnet"
        raise FormatError(f"{path}: {'is a directory, not a .polar file' if path.is_dir() else what}")
    try:
        with open(path, "rb") as fh:
            _check_size(os.fstat(fh.fileno()).st_size, detect_encoding(fh.read(8)), str(path))
            fh.seek(0)
            return decode(fh.read(), where=str(path))
    except OSError as exc:
        raise FormatError(f"{path}: cannot read the file ({exc.strerror or exc})") from None


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the JSON encoding."""
    from importlib.resources import files

    return json.loads(files("polarpack").joinpath("polar.schema.json").read_text(encoding="utf-8"))


def entropy_bits(proportions: Sequence[float]) -> float:
    """Shannon entropy in bits per weight of a (p0, p-, p+) distribution: the bound on any encoding
    of a pattern drawn from it independently."""
    return -sum(p * math.log2(p) for p in proportions if p > 0)


def size_report(dist: Distribution, polar_bytes: int | None = None) -> dict[str, Any]:
    """What the file replaces: its bytes against the entropy bound of the sign pattern, a 2-bit
    pattern and the float32 weights. Unknown sizes are None."""
    sizes = [layer.numel for layer in dist.layers]
    weights = sum(sizes) if None not in sizes else None
    encoding = "safetensors" if dist.granularity == "pattern" else "json"
    entropy = sum(n * entropy_bits(layer.proportions) for n, layer in zip(sizes, dist.layers)) if weights else None
    pattern = sum(8 * len(layer.pattern) for layer in dist.layers) if dist.granularity == "pattern" else None
    return {
        "granularity": dist.granularity,
        "layers": len(dist.layers),
        "numbers": sum(2 * len(layer.channel_counts or (0,)) for layer in dist.layers),
        "weights": weights,
        "polar_bytes": polar_bytes if polar_bytes is not None else len(encode(dist, encoding)),
        "pattern_bits_per_weight": pattern / weights if pattern is not None and weights else None,
        "entropy_bits_per_weight": entropy / weights if entropy is not None else None,
        "entropy_bytes": math.ceil(entropy / 8) if entropy is not None else None,
        "sign_pattern_bytes": (2 * weights + 7) // 8 if weights is not None else None,
        "float32_bytes": 4 * weights if weights is not None else None,
    }
