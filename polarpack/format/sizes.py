"""What a distribution's file holds against what it could: its bytes beside the information
bounds of its granularity (spec: "Information").
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from polarpack.format import coding
from polarpack.format.container import _derived
from polarpack.format.distribution import Distribution
from polarpack.format.fields import JSON_GRANULARITIES
from polarpack.format.files import encode
from polarpack.format.layer import LayerDistribution, _per_channel


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


def _channel_bits(layer: LayerDistribution) -> float | None:
    """A layer's channel-conditional bound in bits: from its stored channel counts, or counted from
    its pattern a block of weights at a time (`_pattern_channel_counts`); None when unknown."""
    if layer._channels is not None:
        return _channel_entropy_bits(layer.channel_counts)
    if layer._pattern is None:
        return None
    return sum(map(_channel_entropy_bits, _pattern_channel_counts(layer)), 0.0)


def _pattern_channel_counts(layer: LayerDistribution) -> Iterator[np.ndarray]:
    """The per-channel counts of a pattern layer, consecutive channels at a time, read from its two
    maps (at most a quarter of a byte per weight) a block of weights at a time: measuring never
    builds the int8 signs. A layer of one symbol yields nothing: its channels cost no bits."""
    n, counts = layer.numel, layer.counts
    if coding.present_bitmaps(n, counts) == (None, None):
        return
    zero_map, sign_map = coding.decode_bitmaps(layer._pattern, n, counts, layer.where)
    c, m = layer.shape[0], _per_channel(layer.shape)
    rows = max(1, coding.BLOCK // m)  # whole rows per block; a longer row is read in blocks
    taken = 0  # sign-map bits before the block: the non-zero weights so far
    for first in range(0, c, rows):
        r = min(rows, c - first)
        zeros, negative = np.zeros(r, np.int64), np.zeros(r, np.int64)
        for start in range(first * m, (first + r) * m, coding.BLOCK if r == 1 else r * m):
            count = min(coding.BLOCK if r == 1 else r * m, (first + r) * m - start)
            if zero_map is None:  # counts without zeros
                nonzero = np.full(r, count // r, np.int64)
            else:
                bits = coding._read_bits(zero_map, start, count).reshape(r, -1)
                nonzero = count // r - bits.sum(1, dtype=np.int64)
            zeros += count // r - nonzero
            if sign_map is not None:
                signs = coding._read_bits(sign_map, taken, int(nonzero.sum()))
                ones = np.concatenate(([0], np.cumsum(signs, dtype=np.int64)))
                edges = np.concatenate(([0], np.cumsum(nonzero)))
                negative += ones[edges[1:]] - ones[edges[:-1]]
            elif counts[1]:  # every non-zero weight is negative
                negative += nonzero
            taken += int(nonzero.sum())
        yield np.column_stack([zeros, negative, m - zeros - negative])


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
    bits = [_channel_bits(layer) for layer in dist.layers] if weights else [None]
    channel = sum(bits) if None not in bits else None
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
