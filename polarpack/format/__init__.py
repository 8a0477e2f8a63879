"""The `.polar` format: polarity distributions in a JSON and a safetensors encoding.

The exact specification is `spec/polar-format.md` (format_version 3; files of versions 1 and 2
still read); the JSON Schema of the JSON encoding ships in the package
(`polarpack/polar.schema.json`, see `json_schema()`). Four granularities climb from a few numbers
to a 1-bit checkpoint: ``layer`` (p0, p-, p+ per layer: the seed paper's P), ``channel`` (the
counts of each output channel), ``pattern`` (the exact ternary signs) and ``scaled`` (the signs and
one magnitude per output channel). Any of them may carry the network's normalisation tensors
(`Distribution.norms`).

The JSON encoding holds the human-readable rungs (layer, channel); the safetensors encoding holds
every rung, entropy-coded (`polarpack.format.coding`): it is the compact one. `Distribution` is the
in-memory form and `validate` holds every rule once. Coded streams stay coded in memory: a layer's
signs or channel counts are decoded when asked for, one layer at a time.
"""

from __future__ import annotations

import itertools
import json
import math
import numbers
import os
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from polarpack._io import atomic_write_bytes, check_regular_file, read_bytes
from polarpack._version import __version__
from polarpack.errors import FormatError, PolarpackError
from polarpack.format import coding
from polarpack.redact import redact_urls

FORMAT_VERSION = 3
READ_VERSIONS = (1, 2, 3)
GRANULARITIES = ("layer", "channel", "pattern", "scaled")
JSON_GRANULARITIES = ("layer", "channel")  # the others hold binary signs: safetensors only
LAYER_KINDS = ("conv", "linear")
SOURCE_TYPES = ("torchvision", "file", "hub", "paper", "manual")
NORM_MEMBERS = ("weight", "bias", "running_mean", "running_var")
SUM_TOLERANCE = 1e-9
INT64_MAX = 2**63 - 1
METADATA_KEY = "polar"
MAX_SHARED = 99  # characters a header name may share with the previous one
JSON_LIMIT, SAFETENSORS_LIMIT = 16 << 20, 1 << 30  # bytes; $POLARPACK_MAX_POLAR_BYTES overrides
TOP_KEYS = (
    "format_version",
    "granularity",
    "layers",
    "source",
    "extraction",
    "producer",
    "metadata",
)
LAYER_KEYS = ("name", "kind", "shape", "p0", "p_neg", "p_pos", "counts", "channel_counts")
OBJECT_KEYS = ("source", "extraction", "producer", "metadata")
HEADER_KEYS = ("format_version", "granularity", "layers", "shapes", "linear", *OBJECT_KEYS)
_PAYLOADS = {  # what each granularity stores per layer beyond its counts
    "layer": (),
    "channel": ("channel_counts",),
    "pattern": ("pattern",),
    "scaled": ("pattern", "scales"),
}
_SHA256 = re.compile(r"[0-9a-f]{64}")
# Recommended keys of the free-form objects: when present and not null they must pass the check.
_RECOMMENDED = {
    ("source", "type"): (lambda v: v in SOURCE_TYPES, f"one of {list(SOURCE_TYPES)}"),
    ("source", "sha256"): (
        lambda v: isinstance(v, str) and _SHA256.fullmatch(v) is not None,
        "64 lowercase hex digits",
    ),
    **{
        ("source", k): (lambda v: isinstance(v, str), "a string")
        for k in ("id", "file", "hub", "citation")
    },
    ("extraction", "zero_tol"): (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    **{
        ("extraction", k): (lambda v: isinstance(v, bool), "a boolean")
        for k in ("expand_groups", "include_linear")
    },
    ("extraction", "layers"): (
        lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v),
        "a list of strings",
    ),
    **{
        (o, k): (lambda v: isinstance(v, str), "a string")
        for o, k in (("extraction", "layout"), ("producer", "name"), ("producer", "version"))
    },
}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= INT64_MAX


def _plain(value: Any) -> Any:
    """numpy/torch scalars and sequences -> Python numbers and tuples; -0.0 -> 0.0; else
    unchanged."""
    if type(value) is int or value is None:  # the common cases, without the slow ABC checks
        return value
    if type(value) is float:
        return value + 0.0
    if isinstance(value, (list, tuple)):
        if all(type(v) is int for v in value):
            return tuple(value)
        return tuple(_plain(v) for v in value)
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, int)):
        return float(value) + 0.0
    return value


def _proportion(value: Any) -> Any:
    value = _plain(value)
    return float(value) if _is_number(value) and abs(value) < 1e300 else value  # huge ints stay


def _readonly(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def _channel_table(value: Any) -> Any:
    """Channel counts as a read-only (C, 3) int64 array; anything else is kept for `validate` to
    name. Python lists are checked to hold integers only (JSON true/false or 1.0 are refused)."""
    if value is None or isinstance(value, _ChannelStream):
        return value
    if isinstance(value, np.ndarray):
        ok = value.dtype.kind == "i" or (value.dtype.kind == "u" and value.max(initial=0) < 2**63)
        return _readonly(value.astype(np.int64)) if ok and value.ndim == 2 else value
    if isinstance(value, (list, tuple)) and all(
        isinstance(r, (list, tuple)) and len(r) == 3 for r in value
    ):
        kinds = {type(v) for v in itertools.chain.from_iterable(value)}
        if all(t is int or issubclass(t, np.integer) for t in kinds):
            try:
                return _readonly(np.array(value, dtype=np.int64).reshape(len(value), 3))
            except OverflowError:
                pass
    return value


def _float32_vector(value: Any) -> Any:
    """Scales as a read-only float32 copy; anything unconvertible is kept for `validate`."""
    if value is None:
        return None
    try:
        return _readonly(np.array(value, dtype=np.float32))
    except (TypeError, ValueError):
        return value


def _byte_stream(value: Any) -> Any:
    if isinstance(value, memoryview):
        return value.toreadonly().cast("B")
    if isinstance(value, (bytes, bytearray)):
        return memoryview(bytes(value))
    return value


class _ChannelStream:
    """A coded channel-count stream read from a file, decoded on access."""

    __slots__ = ("data",)

    def __init__(self, data: memoryview):
        self.data = data


class LayerDistribution:
    """One layer: fractions of zero, negative and positive weights, with what is known beyond them.

    `shape` is the counted kernel shape (after grouped-conv expansion) or None; `counts` the
    integer [n0, n_neg, n_pos]. Beyond them, by granularity: `channel_counts` (C, 3) int64
    (channel), `pattern` the coded ternary signs (pattern and scaled; `signs()` decodes them),
    `scales` one float32 magnitude per output channel (scaled). Immutable; arrays are read-only.
    """

    __slots__ = (
        "name",
        "p0",
        "p_neg",
        "p_pos",
        "kind",
        "shape",
        "counts",
        "scales",
        "_channels",
        "_pattern",
        "_channel_cache",
        "_origin",
    )

    def __init__(
        self,
        name: str,
        p0: float,
        p_neg: float,
        p_pos: float,
        kind: str = "conv",
        shape: Sequence[int] | None = None,
        counts: Sequence[int] | None = None,
        channel_counts: Any = None,
        pattern: bytes | memoryview | None = None,
        scales: Any = None,
    ):
        init = object.__setattr__
        for key, value in (("name", name), ("kind", kind)):
            init(self, key, value)
        for key, value in (("p0", p0), ("p_neg", p_neg), ("p_pos", p_pos)):
            init(self, key, _proportion(value))
        init(self, "shape", _plain(shape))
        init(self, "counts", _plain(counts))
        init(self, "_channels", _channel_table(channel_counts))
        init(self, "_pattern", _byte_stream(pattern))
        init(self, "scales", _float32_vector(scales))
        init(self, "_channel_cache", None)
        init(self, "_origin", "")

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(f"LayerDistribution is immutable; cannot set {key!r}")

    @property
    def proportions(self) -> tuple[float, float, float]:
        return (self.p0, self.p_neg, self.p_pos)

    @property
    def numel(self) -> int | None:
        if self.shape is not None:
            return math.prod(self.shape)
        return sum(self.counts) if self.counts else None

    @property
    def where(self) -> str:
        """How error messages name this layer (and the file it was read from)."""
        return f"{self._origin}: layer {self.name!r}" if self._origin else f"layer {self.name!r}"

    @property
    def channel_counts(self) -> np.ndarray | None:
        """(C, 3) read-only int64 [n0, n_neg, n_pos] per output channel; a layer read from a file
        decodes them on every access (nothing is kept)."""
        if isinstance(self._channels, _ChannelStream):
            return coding.decode_channels(
                self._channels.data,
                self.shape[0],
                _per_channel(self.shape),
                self.counts,
                self.where,
            )
        return self._channels

    @property
    def pattern(self) -> bytes | None:
        """The coded sign stream (spec: "Pattern streams"); `signs()` decodes it."""
        return None if self._pattern is None else bytes(self._pattern)

    def channel_stream(self) -> bytes | memoryview:
        """The coded channel-count stream (spec: "Channel streams"), encoded once when needed."""
        if isinstance(self._channels, _ChannelStream):
            return self._channels.data
        if self._channel_cache is None:
            stream = coding.encode_channels(self._channels, _per_channel(self.shape), self.counts)
            object.__setattr__(self, "_channel_cache", stream)
        return self._channel_cache

    def stream(self) -> bytes | memoryview:
        """This layer's entry in the safetensors payload: its channel or pattern stream."""
        return self._pattern if self._pattern is not None else self.channel_stream()

    @classmethod
    def from_counts(
        cls,
        name: str,
        counts: Sequence[int],
        *,
        kind: str = "conv",
        shape: Sequence[int] | None = None,
        channel_counts: Any = None,
        pattern: bytes | memoryview | None = None,
        scales: Any = None,
    ) -> LayerDistribution:
        n = sum(int(c) for c in counts)
        if n <= 0:
            raise FormatError(
                f"layer {name!r}: counts {list(counts)} sum to 0; a layer needs weights"
            )
        p = [int(c) / n for c in counts]  # correctly rounded, as readers derive them
        return cls(name, *p, kind, shape, counts, channel_counts, pattern, scales)

    @classmethod
    def from_signs(
        cls,
        name: str,
        signs: Any,
        *,
        kind: str = "conv",
        granularity: str = "pattern",
        scales: Any = None,
    ) -> LayerDistribution:
        """The layer of a ternary sign tensor (values -1, 0, 1; output channels first) at
        `granularity`; `scaled` also takes the per-channel `scales`."""
        if granularity not in GRANULARITIES:
            raise FormatError(f"granularity {granularity!r}; use one of {list(GRANULARITIES)}")
        if (granularity == "scaled") != (scales is not None):
            raise FormatError(f"layer {name!r}: scales are given exactly at granularity 'scaled'")
        s = np.asarray(signs, dtype=np.int8)
        if s.size == 0:
            raise FormatError(f"layer {name!r}: an empty tensor has no weights to count")
        rows = s.reshape(s.shape[0], -1) if s.ndim else s.reshape(1, 1)
        per_channel = np.stack(
            [np.count_nonzero(rows == v, axis=1) for v in (0, -1, 1)], axis=1
        ).astype(np.int64)
        return cls.from_counts(
            name,
            tuple(int(c) for c in per_channel.sum(0)),
            kind=kind,
            shape=s.shape,
            channel_counts=per_channel if granularity == "channel" else None,
            pattern=coding.encode_pattern(s) if granularity in ("pattern", "scaled") else None,
            scales=scales,
        )

    def signs(self):
        """The exact sign pattern as an int8 torch tensor of `shape` (pattern and scaled)."""
        import torch

        if self._pattern is None:
            raise FormatError(
                f"{self.where} holds no sign pattern; extract with --granularity pattern or scaled"
            )
        flat = coding.decode_pattern(self._pattern, self.numel, self.counts, self.where)
        return torch.from_numpy(flat.reshape(self.shape))

    def scaled_weights(self):
        """The 1-bit checkpoint of a scaled layer: float32 signs times their channel's scale."""
        import torch

        if self.scales is None:
            raise FormatError(f"{self.where} holds no scales; extract with --granularity scaled")
        signs = self.signs()
        scales = torch.from_numpy(self.scales.copy()).view(-1, *[1] * (signs.dim() - 1))
        return signs.to(torch.float32).mul_(scales)

    def to_dict(self) -> dict[str, Any]:
        """The JSON layer object (patterns and scales live in safetensors tensors only)."""
        d = {
            "name": self.name,
            "kind": self.kind,
            "shape": list(self.shape) if self.shape is not None else None,
            "p0": self.p0,
            "p_neg": self.p_neg,
            "p_pos": self.p_pos,
        }
        if self.counts is not None:
            d["counts"] = list(self.counts)
        if self._channels is not None:
            d["channel_counts"] = self.channel_counts.tolist()
        return d

    def _key(self) -> tuple:
        return (self.name, self.kind, self.shape, self.counts, self.proportions)

    def _held(self) -> tuple[bool, bool, bool]:
        """Which of channel counts, pattern and scales the layer holds."""
        return (self._channels is not None, self._pattern is not None, self.scales is not None)

    def __eq__(self, other: object) -> bool:
        """Equal fields; coded streams compare as bytes (writers code canonically)."""
        if not isinstance(other, LayerDistribution):
            return NotImplemented
        if self._key() != other._key() or self._held() != other._held():
            return False
        channels, pattern, scales = self._held()
        return (
            (not channels or _same_channels(self, other))
            and (not pattern or self._pattern == other._pattern)
            and (not scales or np.array_equal(self.scales, other.scales))
        )

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        names = ("channel_counts", "pattern", "scales")
        held = [k for k, h in zip(names, self._held(), strict=True) if h]
        return (
            f"LayerDistribution(name={self.name!r}, p0={self.p0!r}, p_neg={self.p_neg!r}, "
            f"p_pos={self.p_pos!r}, kind={self.kind!r}, shape={self.shape!r}, "
            f"counts={self.counts!r}{''.join(f', {k}=...' for k in held)})"
        )

    def __reduce__(self):
        channels = self._channels
        if isinstance(channels, _ChannelStream):
            channels = bytes(channels.data)
        return (_restore_layer, (self._key(), channels, self.pattern, self.scales, self._origin))


def _same_channels(a: LayerDistribution, b: LayerDistribution) -> bool:
    try:
        return a.channel_stream() == b.channel_stream()
    except (TypeError, ValueError):  # not valid enough to encode: compare what is there
        return np.array_equal(a.channel_counts, b.channel_counts)


def _restore_layer(key, channels, pattern, scales, origin) -> LayerDistribution:
    name, kind, shape, counts, (p0, p_neg, p_pos) = key
    if isinstance(channels, bytes):
        channels = _ChannelStream(memoryview(channels))
    layer = LayerDistribution(
        name, p0, p_neg, p_pos, kind, shape, counts, channels, pattern, scales
    )
    object.__setattr__(layer, "_origin", origin)
    return layer


def _per_channel(shape: Sequence[int]) -> int:
    return math.prod(shape[1:])


def pack_signs(signs: Any) -> bytes:
    """Version 1's packing of ternary signs: the zero map (only when the layer has both zeros and
    non-zeros), then the non-zeros' sign map (only when both signs occur), each `np.packbits`
    (most significant bit first, zero-padded). Version 2 stores each map raw like this or coded."""
    s = np.asarray(signs, dtype=np.int8).ravel()
    zero = s == 0
    parts = []
    if 0 < zero.sum() < s.size:
        parts.append(np.packbits(zero))
    negative = s[~zero] < 0
    if 0 < negative.sum() < negative.size:
        parts.append(np.packbits(negative))
    return b"".join(p.tobytes() for p in parts)


def _v1_bitmaps(
    data: bytes | memoryview, shape: Sequence[int], counts: Sequence[int], where: str = "layer"
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The zero and sign maps of a version-1 pattern, checked against the counts without unpacking
    them (a hostile file's shape cannot make this allocate more than the file holds)."""
    n = math.prod(shape)
    specs = coding.present_bitmaps(n, counts)
    sizes = [coding.bitmap_bytes(spec[0]) if spec else 0 for spec in specs]
    if len(data) != sum(sizes):
        raise FormatError(
            f"{where}: pattern is {len(data)} bytes but shape {list(shape)} with counts "
            f"{list(counts)} needs {sum(sizes)}"
        )
    maps = [
        np.frombuffer(data, np.uint8, size, offset) if size else None
        for size, offset in zip(sizes, (0, sizes[0]), strict=True)
    ]
    for bitmap, spec in zip(maps, specs, strict=True):
        if bitmap is not None:
            coding.check_bitmap(bitmap, spec[0], spec[1], "pattern", where)
    return maps[0], maps[1]


def unpack_signs(data: bytes, shape: Sequence[int], counts: Sequence[int]) -> np.ndarray:
    """Inverse of `pack_signs` (version 1); the counts say which maps are present and must agree."""
    zero_map, sign_map = _v1_bitmaps(data, shape, counts)
    return coding.expand_signs(zero_map, sign_map, math.prod(shape), counts).reshape(tuple(shape))


def _frozen_norms(norms: Any) -> Mapping[str, np.ndarray]:
    """Normalisation tensors as a read-only mapping of read-only float32 vectors, grouped by module
    (first appearance) with members in the order weight, bias, running_mean, running_var."""
    if not isinstance(norms, Mapping):
        raise FormatError(f"'norms' must be a mapping of tensor names to arrays, got {norms!r}")
    modules: dict[str, dict[str, np.ndarray]] = {}
    for name, value in norms.items():
        prefix, _, member = name.rpartition(".") if isinstance(name, str) else ("", "", "")
        if member not in NORM_MEMBERS:
            raise FormatError(
                f"norms: {name!r} is not a normalisation tensor; names end with one of "
                f"{list(NORM_MEMBERS)}"
            )
        modules.setdefault(prefix, {})[member] = _norm_vector(name, value)
    out = {}
    for prefix, members in modules.items():
        _check_norm_module(prefix, members)
        for member in NORM_MEMBERS:
            if member in members:
                out[f"{prefix}.{member}" if prefix else member] = members[member]
    return MappingProxyType(out)


def _norm_vector(name: str, value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor; bfloat16 has no numpy dtype
        value = value.detach().cpu()
        value = (value.float() if value.is_floating_point() else value).numpy()
    array = np.asarray(value)
    if array.dtype.kind != "f" or array.ndim != 1 or not array.size:
        raise FormatError(
            f"norms: {name!r} must be a non-empty 1-D float vector, got {array.dtype} of shape "
            f"{list(array.shape)}"
        )
    array = _readonly(np.array(array, dtype=np.float32))
    if not np.isfinite(array).all():
        raise FormatError(f"norms: {name!r} holds NaN or infinite values; the source is corrupt")
    return array


def _check_norm_module(prefix: str, members: Mapping[str, np.ndarray]) -> None:
    sizes = {len(v) for v in members.values()}
    if not {"running_mean", "running_var"} <= set(members) or len(sizes) != 1:
        raise FormatError(
            f"norms: module {prefix!r} has {sorted(members)} of lengths {sorted(sizes)}; a "
            "normalisation module has running_mean and running_var (weight and bias optional), "
            "all of one length"
        )


@dataclass(frozen=True, eq=False)
class Distribution:
    """Ordered layer distributions plus where they came from (`source`), how they were extracted
    (`extraction`), who wrote them (`producer`), free-form `metadata` and, optionally, the
    network's normalisation tensors (`norms`: state-dict name -> read-only float32 vector);
    validated on creation. `format_version` is the version of the file it was read from (writers
    always write the current one)."""

    layers: tuple[LayerDistribution, ...]
    source: Mapping[str, Any] = field(default_factory=dict)
    extraction: Mapping[str, Any] = field(default_factory=dict)
    producer: Mapping[str, Any] = field(
        default_factory=lambda: {"name": "polarpack", "version": __version__}
    )
    metadata: Mapping[str, Any] = field(default_factory=dict)
    granularity: str = "layer"
    format_version: int = FORMAT_VERSION
    norms: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        for key in OBJECT_KEYS:
            object.__setattr__(self, key, _plain_json(getattr(self, key), key))
        object.__setattr__(self, "norms", _frozen_norms(self.norms))
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

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Distribution):
            return NotImplemented
        return (
            self.granularity == other.granularity
            and self.layers == other.layers
            and all(getattr(self, k) == getattr(other, k) for k in OBJECT_KEYS)
            and list(self.norms) == list(other.norms)
            and all(np.array_equal(v, other.norms[k]) for k, v in self.norms.items())
        )

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self):
        fields = [getattr(self, k) for k in ("layers", *OBJECT_KEYS, "granularity")]
        return (Distribution, (*fields, self.format_version, dict(self.norms)))

    def proportions(self):
        """The (L, 3) float64 tensor [p0, p_neg, p_pos] per layer: the paper's P."""
        import torch

        return torch.tensor([layer.proportions for layer in self.layers], dtype=torch.float64)

    def norm_state_dict(self) -> dict[str, Any]:
        """The normalisation tensors as float32 torch tensors (copies), keyed as in the source."""
        import torch

        return {name: torch.from_numpy(array.copy()) for name, array in self.norms.items()}

    def verify(self) -> Distribution:
        """Decode every coded stream once, one layer at a time, and check it against its counts:
        reading checks only what needs no decoding. Returns self."""
        for layer in self.layers:
            if layer._pattern is not None:
                coding.decode_bitmaps(layer._pattern, layer.numel, layer.counts, layer.where)
            elif isinstance(layer._channels, _ChannelStream):
                layer.channel_counts  # noqa: B018 -- decoding is the check
        return self

    def to_dict(self) -> dict[str, Any]:
        """The JSON object (format_version as written: the current one)."""
        d: dict[str, Any] = {"format_version": FORMAT_VERSION}
        if self.granularity != "layer":  # layer files keep the layout of older readers
            d["granularity"] = self.granularity
        return d | {
            "layers": [layer.to_dict() for layer in self.layers],
            **{k: dict(getattr(self, k)) for k in OBJECT_KEYS},
        }

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "distribution") -> Distribution:
        """Build from the JSON object form; unknown or missing members are errors naming `where`."""
        if not isinstance(data, dict):
            raise FormatError(
                f"{where}: the top level must be a JSON object, got {type(data).__name__}"
            )
        _check_keys(
            data,
            TOP_KEYS,
            ("format_version", "layers"),
            where,
            "put extra information under 'metadata'",
        )
        _check_version(data["format_version"], where)
        if not isinstance(data["layers"], list) or not data["layers"]:
            raise FormatError(f"{where}: 'layers' must be a non-empty list of layer objects")
        layers = [_layer_from_dict(item, i, where) for i, item in enumerate(data["layers"])]
        extras = {k: data.get(k, {}) for k in OBJECT_KEYS}
        extras |= {"granularity": data["granularity"]} if "granularity" in data else {}
        try:
            return cls(layers=tuple(layers), format_version=data["format_version"], **extras)
        except FormatError as exc:
            raise FormatError(f"{where}: {exc}") from None


def _layer_from_dict(item: Any, i: int, where: str) -> LayerDistribution:
    if not isinstance(item, dict):
        raise FormatError(f"{where}: layers[{i}] must be a JSON object, got {type(item).__name__}")
    name = item.get("name")
    _check_keys(
        item,
        LAYER_KEYS,
        ("name", "p0", "p_neg", "p_pos"),
        f"{where}: layers[{i}]" + (f" ({name!r})" if isinstance(name, str) else ""),
        "see spec/polar-format.md",
    )
    return LayerDistribution(**item)


def _check_version(version: Any, where: str) -> None:
    if version not in READ_VERSIONS or not _is_int(version):
        raise FormatError(
            f"{where}: unknown format_version {version!r}; polarpack {__version__} reads "
            f"format_version {' and '.join(map(str, READ_VERSIONS))} (upgrade it to read newer "
            "files)"
        )


def _check_keys(
    obj: dict, allowed: Sequence[str], required: Sequence[str], where: str, hint: str
) -> None:
    unknown = [k for k in obj if k not in allowed]
    if unknown:
        raise FormatError(
            f"{where}: unknown field(s) {sorted(unknown)}; allowed are {list(allowed)} ({hint})"
        )
    missing = [k for k in required if k not in obj]
    if missing:
        raise FormatError(f"{where}: missing required field(s) {missing}")


def _plain_json(value: Any, path: str, depth: int = 0) -> Any:
    """A deep copy of `value` as plain JSON, URLs without their credentials; anything else (NaN,
    inf, sets, lone surrogates) is an error naming the path."""
    if depth > 100:
        raise FormatError(f"'{path}' is nested more than 100 levels deep")
    value = _plain(value) if not isinstance(value, (Mapping, list, tuple)) else value
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise FormatError(
                f"'{path}' contains a lone surrogate; strings must be valid Unicode"
            ) from None
        return redact_urls(value)  # a file is published: credentials in a URL stay behind
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise FormatError(f"'{path}' is {value!r}; JSON numbers must be finite (no NaN/inf)")
        return value
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise FormatError(f"'{path}' has a non-string key; JSON object keys are strings")
        return {
            _plain_json(k, path, depth + 1): _plain_json(v, f"{path}.{k}", depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_plain_json(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
    raise FormatError(f"'{path}' is a {type(value).__name__}; only plain JSON values are allowed")


# -- validation ----------------------------------------------------------------------------------


def validate(dist: Distribution) -> None:
    """Every rule of the spec, in one place; a FormatError names the layer and the field. Linear in
    the number of layers; coded streams get the checks that need no decoding (`verify` decodes)."""
    _validate_top(dist)
    seen: set[str] = set()
    for i, layer in enumerate(dist.layers):
        if not isinstance(layer, LayerDistribution):
            raise FormatError(
                f"layers[{i}] is a {type(layer).__name__}, expected LayerDistribution"
            )
        where = (
            f"layer {layer.name!r}"
            if isinstance(layer.name, str) and layer.name
            else f"layers[{i}]"
        )
        _validate_layer(layer, where, dist.granularity)
        if layer.name in seen:
            raise FormatError(f"{where}: the name appears twice; layer names must be unique")
        seen.add(layer.name)


def _validate_top(dist: Distribution) -> None:
    if dist.format_version not in READ_VERSIONS or not _is_int(dist.format_version):
        raise FormatError(
            f"unknown format_version {dist.format_version!r}; this polarpack reads "
            f"{list(READ_VERSIONS)}"
        )
    if dist.granularity not in GRANULARITIES:
        raise FormatError(
            f"'granularity' is {dist.granularity!r}; must be one of {list(GRANULARITIES)}"
        )
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


def _validate_layer(layer: LayerDistribution, where: str, granularity: str) -> None:
    if not isinstance(layer.name, str) or not layer.name:
        raise FormatError(f"{where}: 'name' must be a non-empty string")
    _plain_json(layer.name, f"{where}: name")
    if layer.kind not in LAYER_KINDS:
        raise FormatError(f"{where}: 'kind' is {layer.kind!r}; must be one of {list(LAYER_KINDS)}")
    _check_proportions(layer, where)
    _check_shape(layer.shape, where)
    if layer.counts is not None:
        _check_counts(layer, where)
    _check_payloads(layer, where, granularity)


def _check_proportions(layer: LayerDistribution, where: str) -> None:
    for key, value in zip(("p0", "p_neg", "p_pos"), layer.proportions, strict=True):
        if not isinstance(value, float) or not 0.0 <= value <= 1.0:
            raise FormatError(
                f"{where}: '{key}' is {value!r}; proportions must be finite numbers in [0, 1]"
            )
    total = math.fsum(layer.proportions)
    if abs(total - 1.0) > SUM_TOLERANCE:
        raise FormatError(
            f"{where}: p0 + p_neg + p_pos = {total!r}; they must sum to 1 within {SUM_TOLERANCE:g} "
            "(renormalise the three values)"
        )


def _check_shape(shape: Any, where: str) -> None:
    if shape is None:
        return
    if not (isinstance(shape, tuple) and shape and all(_is_int(s, 1) for s in shape)):
        raise FormatError(
            f"{where}: 'shape' {shape!r} must be a non-empty list of positive integers or null"
        )
    if math.prod(shape) > INT64_MAX:
        raise FormatError(
            f"{where}: 'shape' of {len(shape)} dimensions holds more than 2**63 - 1 weights; "
            "no layer is that large (the file is corrupt)"
        )


def _check_counts(layer: LayerDistribution, where: str) -> None:
    counts, shape = layer.counts, layer.shape
    if (
        not (isinstance(counts, tuple) and len(counts) == 3 and all(_is_int(c) for c in counts))
        or not 0 < sum(counts) <= INT64_MAX
    ):
        raise FormatError(
            f"{where}: 'counts' {counts!r} must be three non-negative integers [n0, n_neg, "
            "n_pos] with a positive sum (below 2**63)"
        )
    n = sum(counts)
    if shape is not None and n != math.prod(shape):
        raise FormatError(
            f"{where}: 'counts' {list(counts)} sum to {n} but shape {list(shape)} holds "
            f"{math.prod(shape)} weights; fix the counts or the shape"
        )
    for key, c, p in zip(("p0", "p_neg", "p_pos"), counts, layer.proportions, strict=True):
        if abs(c / n - p) > SUM_TOLERANCE:
            raise FormatError(
                f"{where}: '{key}' is {p!r} but 'counts' give {c}/{n}; "
                "fix the proportion or drop 'counts'"
            )


def _check_payloads(layer: LayerDistribution, where: str, granularity: str) -> None:
    needs = _PAYLOADS.get(granularity, ())
    for key, value in (
        ("channel_counts", layer._channels),
        ("pattern", layer._pattern),
        ("scales", layer.scales),
    ):
        if (value is not None) != (key in needs):
            what = "missing" if key in needs else "not allowed"
            raise FormatError(f"{where}: '{key}' is {what} at granularity {granularity!r}")
    if needs and (layer.shape is None or layer.counts is None):
        raise FormatError(
            f"{where}: granularity {granularity!r} needs the layer's 'shape' and 'counts'"
        )
    if layer._channels is not None:
        _check_channel_counts(layer, where)
    if layer._pattern is not None:
        if not isinstance(layer._pattern, memoryview):
            raise FormatError(f"{where}: 'pattern' must be bytes")
        coding.check_pattern(layer._pattern, layer.numel, layer.counts, where)
    if layer.scales is not None:
        _check_scales(layer, where)


def _check_channel_counts(layer: LayerDistribution, where: str) -> None:
    table, shape, counts = layer._channels, layer.shape, layer.counts
    m = _per_channel(shape)
    if isinstance(table, _ChannelStream):
        coding.check_channels(table.data, shape[0], m, counts, where)
        return
    if not (isinstance(table, np.ndarray) and table.shape == (shape[0], 3)):
        raise FormatError(
            f"{where}: 'channel_counts' must be {shape[0]} triples [n0, n_neg, n_pos], "
            "one per output channel"
        )
    zero, negative = table[:, 0], table[:, 1]
    if (
        (table < 0).any()
        or (table > m).any()
        or (negative > m - zero).any()
        or (table[:, 2] != m - zero - negative).any()
        or tuple(int(c) for c in table.sum(0)) != counts
    ):
        raise FormatError(f"{where}: 'channel_counts' must each sum to {m} and add up to 'counts'")


def _check_scales(layer: LayerDistribution, where: str) -> None:
    scales = layer.scales
    if not (isinstance(scales, np.ndarray) and scales.shape == (layer.shape[0],)):
        raise FormatError(
            f"{where}: 'scales' must be {layer.shape[0]} float32 values, one per output channel"
        )
    if not np.isfinite(scales).all() or np.signbit(scales).any():
        raise FormatError(f"{where}: 'scales' must be finite and >= +0 (mean |w| per channel)")


# -- JSON encoding -------------------------------------------------------------------------------


def _dumps(value: Any, **kwargs: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, **kwargs)


def encode_json(dist: Distribution) -> bytes:
    """UTF-8 JSON: one top-level member per line, one layer per line (`json.dumps` with its default
    separators; keys sorted inside source, extraction, producer and metadata), a final newline."""
    if dist.granularity not in JSON_GRANULARITIES:
        raise FormatError(
            f"a {dist.granularity} distribution has no JSON encoding (its signs are binary): "
            "save it as NAME.polar.safetensors"
        )
    if dist.norms:
        raise FormatError(
            "normalisation tensors have no JSON encoding: save the distribution as "
            "NAME.polar.safetensors"
        )
    d = dist.to_dict()
    layers = ",\n".join("    " + _dumps(layer) for layer in d.pop("layers"))
    members = [f"  {_dumps(k)}: {_dumps(v, sort_keys=True)}" for k, v in d.items()]
    members.insert(2 if "granularity" in d else 1, f'  "layers": [\n{layers}\n  ]')
    return ("{\n" + ",\n".join(members) + "\n}\n").encode("utf-8")


def _loads(text: str | bytes, where: str, what: str) -> Any:
    """json.loads that rejects duplicate keys; NaN/Infinity come back as floats for validate to
    name."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(items)
        if len(out) != len(items):
            raise FormatError(
                f"{where}: {what}: a JSON object has a duplicate key; each key may appear once"
            )
        return out

    try:
        return json.loads(text, object_pairs_hook=pairs, parse_constant=float)
    except json.JSONDecodeError as exc:
        raise FormatError(
            f"{where}: malformed {what} at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    except (ValueError, RecursionError) as exc:  # huge integers, deep nesting
        raise FormatError(f"{where}: malformed {what}: {exc}") from None


# -- safetensors encoding ------------------------------------------------------------------------


def _derived(layer: LayerDistribution) -> bool:
    """Whether the proportions are exactly the counts' quotients: then files do not store them."""
    if layer.counts is None:
        return False
    n = sum(layer.counts)
    return layer.proportions == tuple(c / n for c in layer.counts)


def _norms_record(norms: Mapping[str, np.ndarray]) -> tuple[dict[str, Any], np.ndarray]:
    """The header's `norms` member and the `norms` tensor (see the spec)."""
    modules: dict[str, list[str]] = {}
    for name in norms:
        prefix, _, member = name.rpartition(".")
        modules.setdefault(prefix, []).append(member)
    record = {
        "modules": _front_coded(list(modules)),
        "channels": [len(norms[_norm_name(p, members[0])]) for p, members in modules.items()],
        "affine": "".join(
            str(("weight" in members) + 2 * ("bias" in members)) for members in modules.values()
        ),
    }
    return record, np.concatenate(list(norms.values())).astype("<f4")


def _norm_name(prefix: str, member: str) -> str:
    return f"{prefix}.{member}" if prefix else member


def _front_coded(names: Sequence[str]) -> list[str]:
    """Each name as "k:rest", k (at most 99) the characters it shares with the previous name: real
    networks' names share long prefixes, and this keeps the header about half their size."""
    out, previous = [], ""
    for name in names:
        k = min(len(os.path.commonprefix([previous, name])), MAX_SHARED)
        out.append(f"{k}:{name[k:]}")
        previous = name
    return out


def _front_decoded(entries: Any, what: str, where: str) -> list[str]:
    """Inverse of `_front_coded`; linear in the header (k <= 99)."""
    if not isinstance(entries, list):
        raise FormatError(f"{where}: metadata '{what}' must be a list of 'k:rest' strings")
    out, previous = [], ""
    for i, entry in enumerate(entries):
        k, sep, rest = entry.partition(":") if isinstance(entry, str) else ("", "", "")
        if not (sep and k.isascii() and k.isdigit() and str(int(k)) == k) or not int(k) <= min(
            len(previous), MAX_SHARED
        ):
            raise FormatError(
                f"{where}: metadata '{what}'[{i}] is {entry!r}; entries are 'k:rest', k a decimal "
                "number of at most 99 characters shared with the previous name"
            )
        previous = previous[: int(k)] + rest
        out.append(previous)
    return out


def encode_safetensors(dist: Distribution) -> bytes:
    """Version 2: `counts` (L, 3) int64 (-1 rows where unknown), `proportions` (L, 3) float64 only
    where counts do not give them exactly; at channel, pattern and scaled granularity one `payload`
    of concatenated layer streams with their `offsets`; `scales` float32 (scaled); `norms` float32;
    everything else as canonical JSON in the one metadata key `polar` (one key keeps safetensors'
    bytes reproducible)."""
    from safetensors.numpy import save

    layers = dist.layers
    meta = {
        "format_version": FORMAT_VERSION,
        "granularity": dist.granularity,
        "layers": _front_coded([layer.name for layer in layers]),
        "shapes": [list(layer.shape) if layer.shape else None for layer in layers],
        "linear": [i for i, layer in enumerate(layers) if layer.kind == "linear"],
        **{k: dict(getattr(dist, k)) for k in OBJECT_KEYS},
    }
    tensors = {"counts": np.array([layer.counts or (-1, -1, -1) for layer in layers], "<i8")}
    if not all(_derived(layer) for layer in layers):
        tensors["proportions"] = np.array([layer.proportions for layer in layers], "<f8")
    if dist.granularity != "layer":
        streams = [layer.stream() for layer in layers]
        tensors["offsets"] = np.array([0, *itertools.accumulate(map(len, streams))], "<i8")
        tensors["payload"] = np.frombuffer(b"".join(streams), np.uint8)
    if dist.granularity == "scaled":
        tensors["scales"] = np.concatenate([layer.scales for layer in layers]).astype("<f4")
    if dist.norms:
        meta["norms"], tensors["norms"] = _norms_record(dist.norms)
    return save(
        tensors, metadata={METADATA_KEY: _dumps(meta, sort_keys=True, separators=(",", ":"))}
    )


class _Tensors:
    """The tensors of a safetensors file, each fetched once with its dtype and shape checked."""

    _NUMPY = {"I64": "<i8", "F64": "<f8", "F32": "<f4", "U8": "u1"}

    def __init__(self, raw: dict[str, dict], where: str):
        self.raw, self.where = raw, where

    def __contains__(self, name: str) -> bool:
        return name in self.raw

    def get(self, name: str, dtype: str, shape: list[int] | None = None) -> np.ndarray:
        t = self.raw[name]
        if t["dtype"] != dtype or (shape is not None and t["shape"] != shape):
            raise FormatError(
                f"{self.where}: tensor '{name}' must be "
                f"{dtype}{' of shape ' + str(shape) if shape else ''}, "
                f"got {t['dtype']} of shape {t['shape']}"
            )
        array = np.frombuffer(t["data"], dtype=self._NUMPY[dtype]).reshape(t["shape"])
        return _readonly(array)

    def bytes(self, name: str) -> memoryview:
        self.get(name, "U8")
        if len(self.raw[name]["shape"]) != 1:
            raise FormatError(f"{self.where}: tensor '{name}' must be 1-D")
        return memoryview(self.raw[name]["data"]).toreadonly()


def decode_safetensors(data: bytes, *, where: str = "<bytes>") -> Distribution:
    from safetensors import SafetensorError, deserialize

    try:
        raw = dict(deserialize(data))
    except (SafetensorError, ValueError) as exc:
        raise FormatError(
            f"{where}: not a valid safetensors file ({exc}); it is truncated or not a .polar file"
        ) from None
    (n,) = struct.unpack("<Q", data[:8])
    meta = _loads(data[8 : 8 + n], where, "safetensors header").get("__metadata__") or {}
    if set(meta) != {METADATA_KEY}:
        raise FormatError(
            f"{where}: a .polar safetensors file has exactly one metadata key '{METADATA_KEY}' "
            f"(found {sorted(meta)}); it is not a .polar file"
        )
    obj = _loads(meta[METADATA_KEY], where, f"'{METADATA_KEY}' metadata")
    if not isinstance(obj, dict) or not isinstance(obj.get("layers"), list):
        raise FormatError(f"{where}: metadata '{METADATA_KEY}' has no 'layers' list")
    _check_version(obj.get("format_version"), where)
    tensors = _Tensors(raw, where)
    decoder = _decode_v1 if obj["format_version"] == 1 else _decode_v2
    try:
        return decoder(obj, tensors, where)
    except FormatError as exc:
        message = str(exc)
        raise FormatError(message if message.startswith(where) else f"{where}: {message}") from None


def _decode_v2(obj: dict, tensors: _Tensors, where: str) -> Distribution:
    _check_keys(obj, (*HEADER_KEYS, "norms"), HEADER_KEYS, where, "see spec/polar-format.md")
    shapes, linear, granularity = (obj[k] for k in ("shapes", "linear", "granularity"))
    names = _front_decoded(obj["layers"], "layers", where)
    n_layers = len(names)
    if not (
        isinstance(shapes, list)
        and len(shapes) == n_layers
        and isinstance(linear, list)
        and all(_is_int(i) and i < n_layers for i in linear)
        and linear == sorted(set(linear))
    ):
        raise FormatError(
            f"{where}: metadata 'shapes' must list one shape per layer and 'linear' the linear "
            "layers' indices in increasing order"
        )
    if granularity not in GRANULARITIES:
        raise FormatError(
            f"{where}: 'granularity' is {granularity!r}; must be one of {list(GRANULARITIES)}"
        )
    _check_tensor_names(tensors, granularity, "norms" in obj, where)
    counts = tensors.get("counts", "I64", [n_layers, 3])
    props = tensors.get("proportions", "F64", [n_layers, 3]) if "proportions" in tensors else None
    streams = _layer_streams(tensors, n_layers, where) if granularity != "layer" else None
    scales = tensors.get("scales", "F32") if granularity == "scaled" else None
    layers, linear, scale_at = [], set(linear), 0
    for i, name in enumerate(names):
        shape = _plain(shapes[i]) if isinstance(shapes[i], list) else shapes[i]
        _check_shape(shape, f"layers[{i}]")
        layer_scales = None
        if scales is not None:
            layer_scales = scales[scale_at : scale_at + (shape[0] if shape else 0)]
            scale_at += len(layer_scales)
        row = [int(c) for c in counts[i]]
        stream = streams[i] if streams is not None else None
        if obj["format_version"] == 2 and granularity in ("pattern", "scaled"):
            stream = _canonical_v2_pattern(stream, shape, row, f"{where}: layers[{i}] {name!r}")
        layer = _v2_layer(
            name,
            "linear" if i in linear else "conv",
            shape,
            row,
            props[i] if props is not None else None,
            granularity,
            stream,
            layer_scales,
            where,
        )
        layers.append(layer)
    if scales is not None and scale_at != len(scales):
        raise FormatError(
            f"{where}: tensor 'scales' holds {len(scales)} values, the layers' "
            f"output channels number {scale_at}"
        )
    norms = _decode_norms(obj["norms"], tensors, where) if "norms" in obj else {}
    extras = {k: obj[k] for k in OBJECT_KEYS}
    return Distribution(
        tuple(layers),
        granularity=granularity,
        norms=norms,
        format_version=obj["format_version"],
        **extras,
    )


def _canonical_v2_pattern(stream: memoryview, shape: Any, row: list[int], where: str) -> bytes:
    """A version-2 pattern stream re-coded by today's writer (version 3 may gap-code its maps),
    so that a distribution has one byte form whichever version it was read from."""
    if coding.gap_coded(stream):
        raise FormatError(
            f"{where}: the pattern has a gap-coded map, which format_version 2 does not have "
            "(version 3 added it); the file is corrupt"
        )
    n = math.prod(shape) if shape else 0
    if not shape or sum(row) != n or min(row) < 0:
        return stream  # the layer's own checks name the problem
    zero_map, sign_map = coding.decode_bitmaps(stream, n, row, where)
    return coding.encode_bitmaps(zero_map, sign_map, n, row)


def _check_tensor_names(tensors: _Tensors, granularity: str, norms: bool, where: str) -> None:
    required = {"counts"}
    required |= {"offsets", "payload"} if granularity != "layer" else set()
    required |= {"scales"} if granularity == "scaled" else set()
    required |= {"norms"} if norms else set()
    found = set(tensors.raw)
    if not required <= found <= required | {"proportions"}:
        raise FormatError(
            f"{where}: tensors {sorted(found)}; a {granularity} .polar file has "
            f"{sorted(required)} and optionally 'proportions'"
        )


def _layer_streams(tensors: _Tensors, n_layers: int, where: str) -> list[memoryview]:
    offsets = tensors.get("offsets", "I64", [n_layers + 1]).tolist()
    payload = tensors.bytes("payload")
    if (
        offsets[0] != 0
        or offsets[-1] != len(payload)
        or any(a > b for a, b in itertools.pairwise(offsets))
    ):
        raise FormatError(
            f"{where}: tensor 'offsets' must rise from 0 to the payload's {len(payload)} bytes; "
            "the file is corrupt"
        )
    return [payload[a:b] for a, b in itertools.pairwise(offsets)]


def _v2_layer(
    name: str,
    kind: str,
    shape: Any,
    row: list[int],
    props: np.ndarray | None,
    granularity: str,
    stream: memoryview | None,
    scales: np.ndarray | None,
    where: str,
) -> LayerDistribution:
    """One layer of a version-2 or -3 file; its proportions derive from its counts unless stored."""
    known = row != [-1, -1, -1]
    counts = tuple(row) if known else None
    if props is not None:
        p = [float(v) for v in props]
    elif known and all(c >= 0 for c in row) and sum(row) > 0:
        p = [c / sum(row) for c in row]
    else:
        raise FormatError(
            f"{where}: layer {name!r} has counts {row} and the file no 'proportions'; the counts "
            "must be known and valid"
        )
    payload = dict.fromkeys(("channel_counts", "pattern", "scales"))
    if granularity == "channel":
        payload["channel_counts"] = _ChannelStream(stream)
    elif granularity in ("pattern", "scaled"):
        payload["pattern"] = stream
        payload["scales"] = scales
    layer = LayerDistribution(name, *p, kind, shape, counts, **payload)
    object.__setattr__(layer, "_origin", where)
    return layer


def _decode_norms(record: Any, tensors: _Tensors, where: str) -> dict[str, np.ndarray]:
    if not (
        isinstance(record, dict)
        and set(record) == {"modules", "channels", "affine"}
        and isinstance(record["channels"], list)
        and all(_is_int(c, 1) for c in record["channels"])
        and isinstance(record["affine"], str)
        and set(record["affine"]) <= set("0123")
    ):
        raise FormatError(
            f"{where}: metadata 'norms' must hold 'modules', 'channels' (positive integers) and "
            "'affine' (digits 0-3)"
        )
    modules = _front_decoded(record["modules"], "norms.modules", where)
    if not len(modules) == len(set(modules)) == len(record["channels"]) == len(record["affine"]):
        raise FormatError(
            f"{where}: metadata 'norms' must name distinct modules, one channel count and one "
            "affine digit each"
        )
    values, at, norms = tensors.get("norms", "F32"), 0, {}
    for prefix, channels, flag in zip(modules, record["channels"], record["affine"], strict=True):
        members = [m for i, m in enumerate(NORM_MEMBERS) if i >= 2 or int(flag) & (1 << i)]
        for member in members:
            norms[_norm_name(prefix, member)] = values[at : at + channels]
            at += channels
    if at != len(values):
        raise FormatError(
            f"{where}: tensor 'norms' holds {len(values)} values but the modules need {at}"
        )
    return norms


def _decode_v1(obj: dict, tensors: _Tensors, where: str) -> Distribution:
    """Version 1: per-layer `channel_counts.i` and bitmap `pattern.i` tensors; patterns are
    re-coded to the current streams (their maps as they are, no int8 expansion)."""
    _check_keys(obj, TOP_KEYS, ("format_version", "layers"), where, "see spec/polar-format.md")
    n_layers = len(obj["layers"])
    allowed = {"counts", "proportions"} | {
        f"{k}.{i}" for k in ("channel_counts", "pattern") for i in range(n_layers)
    }
    if not set(tensors.raw) <= allowed or not {"counts", "proportions"} <= set(tensors.raw):
        raise FormatError(
            f"{where}: tensors {sorted(tensors.raw)}; a .polar file has 'counts', 'proportions' "
            "and per layer i optionally 'channel_counts.i' or 'pattern.i'"
        )
    counts = tensors.get("counts", "I64", [n_layers, 3])
    props = tensors.get("proportions", "F64", [n_layers, 3])
    layers = []
    for i, info in enumerate(obj["layers"]):
        if not isinstance(info, dict) or not set(info) <= {"name", "kind", "shape"}:
            raise FormatError(
                f"{where}: layers[{i}] in the metadata holds only 'name', 'kind' and 'shape'"
            )
        row = [int(c) for c in counts[i]]
        layer = LayerDistribution(
            info.get("name"),
            *props[i],
            info.get("kind", "conv"),
            info.get("shape"),
            None if row == [-1, -1, -1] else row,
        )
        layers.append(_v1_payload(layer, tensors, i))
    extras = {k: obj.get(k, {}) for k in OBJECT_KEYS}
    extras |= {"granularity": obj["granularity"]} if "granularity" in obj else {}
    return Distribution(tuple(layers), format_version=1, **extras)


def _v1_payload(layer: LayerDistribution, tensors: _Tensors, i: int) -> LayerDistribution:
    channels, pattern = f"channel_counts.{i}", f"pattern.{i}"
    if channels not in tensors and pattern not in tensors:
        return layer
    where = f"layer {layer.name!r}" if isinstance(layer.name, str) else f"layers[{i}]"
    _validate_layer(layer, where, "layer")  # shape and counts, before they are used
    if layer.shape is None or layer.counts is None:
        raise FormatError(f"{where}: a channel or pattern layer needs its 'shape' and 'counts'")
    table = tensors.get(channels, "I64") if channels in tensors else None
    stream = None
    if pattern in tensors:
        zero_map, sign_map = _v1_bitmaps(tensors.bytes(pattern), layer.shape, layer.counts, where)
        stream = coding.encode_bitmaps(zero_map, sign_map, layer.numel, layer.counts)
    return LayerDistribution(
        layer.name, *layer.proportions, layer.kind, layer.shape, layer.counts, table, stream
    )


# -- reading and writing -------------------------------------------------------------------------


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
            raise FormatError(
                f"$POLARPACK_MAX_POLAR_BYTES must be a number of bytes, got {env!r}"
            ) from None
    return JSON_LIMIT if encoding == "json" else SAFETENSORS_LIMIT


def _check_size(n: int, encoding: str | None, where: str) -> None:
    limit = size_limit(encoding) if encoding else max(map(size_limit, ("json", "safetensors")))
    if n > limit:
        raise FormatError(
            f"{where}: {n:,} bytes is over the {limit:,}-byte limit for {encoding or ''}"
            f"{' ' if encoding else ''}.polar files; if you trust the file, raise it with "
            "POLARPACK_MAX_POLAR_BYTES"
        )


def _blank(data: bytes) -> bool:
    return not data[: 1 << 16].strip() and not data.strip()


def decode(data: bytes, *, where: str = "<bytes>") -> Distribution:
    """Decode either encoding, recognised by content."""
    if _blank(data):
        raise FormatError(f"{where}: the file is empty; it is not a .polar file")
    encoding = detect_encoding(data)
    _check_size(len(data), encoding, where)
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
    refused at once), within the size limit, checked before a byte is read."""
    path = Path(path)
    try:
        size = check_regular_file(path, what=".polar files")
        _check_size(size, None, str(path))
        # the stat'd size as the limit: read_bytes allocates limit + 1 bytes for its read
        data = read_bytes(path, limit=size, what=".polar files")
    except FormatError:
        raise
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


# -- sizes and information -----------------------------------------------------------------------


def entropy_bits(proportions: Sequence[float]) -> float:
    """Shannon entropy in bits per weight of a (p0, p-, p+) distribution: the bound on any encoding
    of a pattern drawn from it independently."""
    return -sum(p * math.log2(p) for p in proportions if p > 0)


def _pair_code_bits(m: int) -> float:
    """A uniform code of a (n0, n_neg) pair among m weights: log2((m + 1)(m + 2) / 2) bits."""
    return math.log2((m + 1) * (m + 2) / 2)


def _channel_entropy_bits(table: np.ndarray) -> float:
    """Sum over channels of m * H(channel's proportions), in bits."""
    c = np.asarray(table, dtype=np.float64)
    m = c.sum(1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(c > 0, c * np.log2(c / m), 0.0)
    return float(-terms.sum())


def _layer_table(layer: LayerDistribution) -> np.ndarray | None:
    """A layer's per-channel counts: stored, or counted from its decoded signs (a layer of one
    symbol needs no decoding)."""
    if layer._channels is not None:
        return layer.channel_counts
    if layer._pattern is None:
        return None
    c, m = layer.shape[0], _per_channel(layer.shape)
    if not len(layer._pattern):
        return np.array([[v // c for v in layer.counts]] * c)
    rows = coding.decode_pattern(layer._pattern, layer.numel, layer.counts, layer.where)
    rows = rows.reshape(c, m)
    return np.stack([np.count_nonzero(rows == v, axis=1) for v in (0, -1, 1)], axis=1)


def _information_bits(dist: Distribution, sizes: list[int | None]) -> float | None:
    """The bound of the spec's "Information" section for the distribution's granularity."""
    if None in sizes:
        return None
    if dist.granularity == "layer":
        return sum(_pair_code_bits(n) for n in sizes)
    if dist.granularity == "channel":
        return sum(lay.shape[0] * _pair_code_bits(_per_channel(lay.shape)) for lay in dist.layers)
    order0 = sum(
        n * entropy_bits(lay.proportions) for n, lay in zip(sizes, dist.layers, strict=True)
    )
    scales = sum(32 * lay.shape[0] for lay in dist.layers) if dist.granularity == "scaled" else 0
    return order0 + scales


def coded_bytes(dist: Distribution) -> dict[str, int]:
    """Bytes of the compact encoding's payload by part: `counts` (and `proportions` where stored),
    `streams` (channel or pattern streams), `scales` and `norms`."""
    layers = dist.layers
    derived = all(_derived(layer) for layer in layers)
    return {
        "counts": 24 * len(layers) * (1 if derived else 2),
        "streams": sum(len(layer.stream()) for layer in layers)
        if dist.granularity != "layer"
        else 0,
        "scales": 4 * sum(layer.shape[0] for layer in layers)
        if dist.granularity == "scaled"
        else 0,
        "norms": 4 * sum(len(v) for v in dist.norms.values()),
    }


def size_report(dist: Distribution, polar_bytes: int | None = None) -> dict[str, Any]:
    """What the file holds against what it could: its bytes and bits per weight beside the
    information bound of its granularity, the order-0 and channel-conditional bounds of the sign
    pattern, a 2-bit pattern and the float32 weights. Unknown sizes are None. Pattern layers are
    decoded one at a time for the channel-conditional bound."""
    sizes = [layer.numel for layer in dist.layers]
    weights = sum(sizes) if None not in sizes else None
    compact = dist.granularity not in JSON_GRANULARITIES or bool(dist.norms)
    polar = (
        polar_bytes
        if polar_bytes is not None
        else len(encode(dist, "safetensors" if compact else "json"))
    )
    order0 = (
        sum(
            n * entropy_bits(layer.proportions) for n, layer in zip(sizes, dist.layers, strict=True)
        )
        if weights
        else None
    )
    tables = [_layer_table(layer) for layer in dist.layers] if weights else [None]
    known = all(table is not None for table in tables)
    channel = sum(map(_channel_entropy_bits, tables)) if known else None
    parts, information = coded_bytes(dist), _information_bits(dist, sizes)
    coded_patterns = dist.granularity in ("pattern", "scaled")

    def per_weight(bits: float | None) -> float | None:
        return bits / weights if bits is not None and weights else None

    return {
        "granularity": dist.granularity,
        "layers": len(dist.layers),
        "numbers": _numbers(dist),
        "weights": weights,
        "polar_bytes": polar,
        "coded_bytes": sum(parts.values()),
        "norm_bytes": parts["norms"],
        "information_bytes": math.ceil(information / 8) if information is not None else None,
        "information_bits_per_weight": per_weight(information),
        "file_bits_per_weight": per_weight(8 * polar),
        "order0_bits_per_weight": per_weight(order0),
        "channel_bits_per_weight": per_weight(channel),
        "pattern_bits_per_weight": per_weight(8 * parts["streams"]) if coded_patterns else None,
        "entropy_bits_per_weight": per_weight(order0),
        "entropy_bytes": math.ceil(order0 / 8) if order0 is not None else None,
        "sign_pattern_bytes": (2 * weights + 7) // 8 if weights is not None else None,
        "float32_bytes": 4 * weights if weights is not None else None,
        "float32_ratio": 4 * weights / polar if weights is not None and polar else None,
    }


def _numbers(dist: Distribution) -> int:
    """The numbers that matter: 2 per layer (the paper's "2n"), 2 per channel at channel
    granularity, plus one scale per channel at scaled granularity."""
    if dist.granularity == "channel":
        return sum(2 * layer.shape[0] for layer in dist.layers)
    scales = sum(layer.shape[0] for layer in dist.layers) if dist.granularity == "scaled" else 0
    return 2 * len(dist.layers) + scales
