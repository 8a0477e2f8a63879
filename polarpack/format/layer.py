"""One layer's distribution (`LayerDistribution`) and version 1's sign packing.

A layer read from a file keeps its coded streams as they are and decodes them when asked, one
layer at a time.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from polarpack.errors import FormatError
from polarpack.format import coding
from polarpack.format.fields import (
    GRANULARITIES,
    _plain,
    _proportion,
    _readonly,
)


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
