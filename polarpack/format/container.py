"""The safetensors encoding: every granularity, entropy-coded (spec: "Safetensors encoding").

The writer writes the current version; the reader reads versions 1 to 3, re-coding older pattern
streams so that a distribution has one byte form whichever version it came from.
"""

from __future__ import annotations

import itertools
import math
import os
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from polarpack.errors import FormatError
from polarpack.format import coding
from polarpack.format.distribution import Distribution
from polarpack.format.fields import (
    FORMAT_VERSION,
    GRANULARITIES,
    HEADER_KEYS,
    NORM_MEMBERS,
    OBJECT_KEYS,
    TOP_KEYS,
    _is_int,
    _plain,
    _readonly,
)
from polarpack.format.json_codec import _dumps, _loads
from polarpack.format.layer import LayerDistribution, _ChannelStream, _v1_bitmaps
from polarpack.format.limits import check_layer_size
from polarpack.format.rules import (
    _check_keys,
    _check_shape,
    _check_version,
    _validate_layer,
)

METADATA_KEY = "polar"
MAX_SHARED = 99  # characters a header name may share with the previous one


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
    """The current version, in the layout version 2 introduced: `counts` (L, 3) int64 (-1 rows
    where unknown), `proportions` (L, 3) float64 only where counts do not give them exactly; at
    channel, pattern and scaled granularity one `payload` of concatenated layer streams with their
    `offsets`; `scales` float32 (scaled); `norms` float32; everything else as canonical JSON in the
    one metadata key `polar` (one key keeps safetensors' bytes reproducible)."""
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

    def vector(self, name: str, dtype: str) -> np.ndarray:
        """A 1-D tensor whose length the reader checks against the layers (payload, scales,
        norms)."""
        array = self.get(name, dtype)
        if array.ndim != 1:
            raise FormatError(
                f"{self.where}: tensor '{name}' must be 1-D, got shape {list(array.shape)}"
            )
        return array

    def bytes(self, name: str) -> memoryview:
        self.vector(name, "U8")
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
    scales = tensors.vector("scales", "F32") if granularity == "scaled" else None
    layers, linear, scale_at = [], set(linear), 0
    for i, name in enumerate(names):
        shape = _plain(shapes[i]) if isinstance(shapes[i], list) else shapes[i]
        _check_shape(shape, f"layers[{i}]")
        if shape and granularity != "layer":  # before a byte of its stream is decoded
            check_layer_size(granularity, shape, f"{where}: layer {name!r}")
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
    values, at, norms = tensors.vector("norms", "F32"), 0, {}
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
        check_layer_size("pattern", layer.shape, where)
        zero_map, sign_map = _v1_bitmaps(tensors.bytes(pattern), layer.shape, layer.counts, where)
        stream = coding.encode_bitmaps(zero_map, sign_map, layer.numel, layer.counts)
    return LayerDistribution(
        layer.name, *layer.proportions, layer.kind, layer.shape, layer.counts, table, stream
    )
