"""Every rule of the spec in one place (`validate`), and the checks the readers share.

A FormatError names the layer and the field; coded streams get the checks that need no decoding.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from polarpack._version import __version__
from polarpack.errors import FormatError
from polarpack.format import coding
from polarpack.format.fields import (
    GRANULARITIES,
    INT64_MAX,
    LAYER_KINDS,
    OBJECT_KEYS,
    READ_VERSIONS,
    SOURCE_TYPES,
    SUM_TOLERANCE,
    _is_int,
    _is_number,
    _plain,
)
from polarpack.format.layer import LayerDistribution, _ChannelStream, _per_channel
from polarpack.redact import redact_urls

if TYPE_CHECKING:  # validate reads a Distribution; distribution.py imports this module
    from polarpack.format.distribution import Distribution

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


def _plain_json(value: Any, path: str, parts: tuple[str | int, ...] = ()) -> Any:
    """A deep copy of `value` as plain JSON, URLs without their credentials; anything else (NaN,
    inf, sets, lone surrogates) is an error naming the path. The path below `path` is kept as its
    parts and spelled out only in an error: building it for every value would copy a long key
    once per value beneath it."""
    if len(parts) > 100:
        raise FormatError(f"'{_spelled(path, parts)}' is nested more than 100 levels deep")
    value = _plain(value) if not isinstance(value, (Mapping, list, tuple)) else value
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise FormatError(
                f"'{_spelled(path, parts)}' contains a lone surrogate; strings must be valid "
                "Unicode"
            ) from None
        return redact_urls(value)  # a file is published: credentials in a URL stay behind
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise FormatError(
                f"'{_spelled(path, parts)}' is {value!r}; JSON numbers must be finite (no NaN/inf)"
            )
        return value
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise FormatError(
                f"'{_spelled(path, parts)}' has a non-string key; JSON object keys are strings"
            )
        return {
            _plain_json(k, path, parts): _plain_json(v, path, (*parts, k)) for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_plain_json(v, path, (*parts, i)) for i, v in enumerate(value)]
    raise FormatError(
        f"'{_spelled(path, parts)}' is a {type(value).__name__}; only plain JSON values are allowed"
    )


def _spelled(path: str, parts: tuple[str | int, ...]) -> str:
    return path + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)


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
    weights = 1
    for size in shape:  # stops at the bound: a product of huge sizes grows for ever
        weights *= size
        if weights > INT64_MAX:
            break
    if weights > INT64_MAX:
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
