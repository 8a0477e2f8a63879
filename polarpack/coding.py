"""Entropy coding of the `.polar` version-2 streams (spec/polar-format.md, "Coded streams").

A sign pattern is two bitmaps, as in version 1: which weights are zero, and which of the others
are negative. Each bitmap is stored raw or ANS-coded one byte per symbol under the i.i.d. model its
counts give (`encode_bitmaps` says which). Per-channel counts are residuals from the layer's mean,
each split into an exponent bucket (coded with the bucket histogram the stream carries) and its
mantissa bits (coded at one bit each).

The coder is constriction's ANS (`constriction.stream.stack.AnsCoder`: 32-bit words, 64-bit state,
24-bit probabilities). Every model is a `Categorical` whose integer weights out of 2**24 come from
integer frequencies by one exact rule (`model_weights`); constriction receives `weights - 1` as
floats, from which its fast quantisation (`perfect=False`) rebuilds exactly those weights. Files
therefore decode identically everywhere, and the spec is enough to write another decoder.
"""

from __future__ import annotations

from collections.abc import Sequence

import constriction
import numpy as np

from .errors import FormatError

Categorical = constriction.stream.model.Categorical
AnsCoder = constriction.stream.stack.AnsCoder

PRECISION = 24
TOTAL = 1 << PRECISION
RAW_HAIR = 256  # a bitmap stays raw unless coding it saves more than 1/256 of the coded size
CHUNK = 1 << 20  # symbols per coder call: bounds the int32 temporaries
BLOCK = 1 << 20  # weights per expansion block (a multiple of 8)
CHANNEL_BLOCK = 1 << 16  # channels per mantissa block
_POPCOUNT = np.array([bin(b).count("1") for b in range(256)], dtype=np.uint8)
_ONES_IN_BYTE = _POPCOUNT.tolist()


def model_weights(frequencies: Sequence[int]) -> list[int]:
    """Integer weights summing to 2**24 for symbols with these frequencies (integers >= 0, some
    positive): each gets 1 + floor((2**24 - K) * f / sum(f)), and what is left over goes to the
    first symbol of the largest frequency. Every symbol stays codable."""
    k, total = len(frequencies), sum(frequencies)
    weights = [1 + (TOTAL - k) * f // total for f in frequencies]
    top = max(range(k), key=lambda i: (frequencies[i], -i))
    weights[top] += TOTAL - sum(weights)
    return weights


def categorical(weights: Sequence[int]) -> Categorical:
    """constriction's model with exactly these integer weights (see the module docstring)."""
    return Categorical(np.asarray(weights, dtype=np.float64) - 1.0, perfect=False)


def bitmap_model(ones: int, bits: int) -> Categorical:
    """The byte model of a bitmap with `ones` set bits among `bits`: byte b has frequency
    ones**j * (bits - ones)**(8 - j), j being b's set bits (i.i.d. bits with p = ones / bits)."""
    per_count = [ones**j * (bits - ones) ** (8 - j) for j in range(9)]
    return categorical(model_weights([per_count[j] for j in _ONES_IN_BYTE]))


_FAIR_BIT = categorical(model_weights([1, 1]))


def _push(coder: AnsCoder, symbols: np.ndarray, model: Categorical) -> None:
    """Push `symbols` so that they decode in their order after whatever is pushed next."""
    for stop in range(len(symbols), 0, -CHUNK):
        chunk = symbols[max(0, stop - CHUNK) : stop]
        coder.encode_reverse(np.asarray(chunk, dtype=np.int32), model)


def _words(coder: AnsCoder) -> bytes:
    return coder.get_compressed().astype("<u4").tobytes()


class AnsReader:
    """Decodes one ANS stream part by part, each part in chunks; `finish` checks nothing is left."""

    def __init__(self, data: bytes | memoryview, where: str):
        self.where = where
        if len(data) % 4:
            raise FormatError(
                f"{where}: its coded part is {len(data)} bytes, not whole 32-bit words; the file "
                "is corrupt"
            )
        words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
        try:
            self.coder = AnsCoder(words)
        except (ValueError, TypeError) as exc:
            raise FormatError(
                f"{where}: not a valid ANS stream ({exc}); the file is corrupt"
            ) from None

    def read(self, model: Categorical, count: int, dtype: type = np.uint8) -> np.ndarray:
        out = np.empty(count, dtype=dtype)
        for start in range(0, count, CHUNK):
            stop = min(start + CHUNK, count)
            out[start:stop] = self.coder.decode(model, stop - start)
        return out

    def finish(self) -> None:
        if not self.coder.is_empty():
            raise FormatError(
                f"{self.where}: the coded stream holds data past its last symbol; the file is "
                "corrupt"
            )


# -- sign patterns -------------------------------------------------------------------------------


def bitmap_bytes(bits: int) -> int:
    return (bits + 7) // 8


def present_bitmaps(
    n: int, counts: Sequence[int]
) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
    """(bits, set bits) of the zero map and of the sign map; None where the counts leave no choice
    (no zeros or only zeros; a single sign among the non-zero weights)."""
    n0, n_neg = counts[0], counts[1]
    zero = (n, n0) if 0 < n0 < n else None
    sign = (n - n0, n_neg) if 0 < n_neg < n - n0 else None
    return zero, sign


def popcount(bitmap: np.ndarray) -> int:
    """Set bits of a uint8 array, a chunk at a time (numpy >= 2 counts them natively)."""
    count = getattr(np, "bitwise_count", _POPCOUNT.__getitem__)
    total = 0
    for start in range(0, len(bitmap), CHUNK):
        total += int(count(bitmap[start : start + CHUNK]).sum(dtype=np.int64))
    return total


def check_bitmap(bitmap: np.ndarray, bits: int, ones: int, what: str, where: str) -> None:
    """The bitmap has exactly `ones` set bits and zero padding: checked without unpacking it."""
    pad = -bits % 8
    if popcount(bitmap) != ones or (pad and int(bitmap[-1]) & ((1 << pad) - 1)):
        raise FormatError(
            f"{where}: the {what} bits do not match the counts ({ones} of {bits} set) or its "
            "padding bits are set; the file is corrupt"
        )


def encode_pattern(signs: np.ndarray) -> bytes:
    """The pattern stream of ternary signs (row-major, int8 -1/0/1)."""
    s = np.ascontiguousarray(signs, dtype=np.int8).reshape(-1)
    zero = s == 0
    n0 = int(np.count_nonzero(zero))
    negative = (s if n0 == 0 else s[~zero]) < 0
    n_neg = int(np.count_nonzero(negative))
    zero_map, sign_map = present_bitmaps(s.size, (n0, n_neg))
    return encode_bitmaps(
        np.packbits(zero) if zero_map else None,
        np.packbits(negative) if sign_map else None,
        s.size,
        (n0, n_neg),
    )


def encode_bitmaps(
    zero_map: np.ndarray | None, sign_map: np.ndarray | None, n: int, counts: Sequence[int]
) -> bytes:
    """Flags byte + body. A bitmap is ANS-coded (its flag bit set: 1 zero map, 2 sign map) when its
    stream coded alone, c bytes, satisfies c + c // 256 < its raw size; else it is stored raw,
    which decodes fastest. Body: raw zero map, then the coded part (one ANS stream: the coded zero
    map's bytes, then the coded sign map's), then raw sign map."""
    specs = present_bitmaps(n, counts)
    if specs == (None, None):
        return b""
    maps, models, alone, flags = (zero_map, sign_map), [None, None], [b"", b""], 0
    for i, spec in enumerate(specs):
        if spec is not None:
            models[i] = bitmap_model(spec[1], spec[0])
            coder = AnsCoder()
            _push(coder, maps[i], models[i])
            alone[i] = _words(coder)
            if len(alone[i]) + len(alone[i]) // RAW_HAIR < len(maps[i]):
                flags |= 1 << i
    if flags == 3:
        coder = AnsCoder()
        _push(coder, sign_map, models[1])
        _push(coder, zero_map, models[0])
        middle = _words(coder)
    else:
        middle = alone[flags - 1] if flags else b""
    head = zero_map.tobytes() if specs[0] and not flags & 1 else b""
    tail = sign_map.tobytes() if specs[1] and not flags & 2 else b""
    return bytes([flags]) + head + middle + tail


def _split_pattern(stream: bytes | memoryview, n: int, counts: Sequence[int], where: str):
    """(specs, flags, raw zero map, coded part, raw sign map) with the raw maps checked; None for a
    layer of one symbol, whose stream must be empty."""
    specs = present_bitmaps(n, counts)
    if specs == (None, None):
        if len(stream):
            raise FormatError(
                f"{where}: pattern is {len(stream)} bytes but counts {list(counts)} leave one "
                "symbol, which needs 0"
            )
        return None
    allowed = (1 if specs[0] else 0) | (2 if specs[1] else 0)
    flags = stream[0] if len(stream) else -1
    if flags < 0 or flags & ~allowed:
        raise FormatError(
            f"{where}: pattern flags byte is {flags if flags >= 0 else 'missing'}; counts "
            f"{list(counts)} allow bits {allowed} only; the file is corrupt"
        )
    head = bitmap_bytes(specs[0][0]) if specs[0] and not flags & 1 else 0
    tail = bitmap_bytes(specs[1][0]) if specs[1] and not flags & 2 else 0
    middle = len(stream) - 1 - head - tail
    if middle < 0 or (middle and not flags):
        raise FormatError(
            f"{where}: pattern is {len(stream)} bytes but counts {list(counts)} with flags "
            f"{flags} need {1 + head + tail}{' plus the coded part' if flags else ''}"
        )
    zero_map = np.frombuffer(stream, np.uint8, head, 1) if head else None
    sign_map = np.frombuffer(stream, np.uint8, tail, len(stream) - tail) if tail else None
    for bitmap, spec, what in ((zero_map, specs[0], "zero map"), (sign_map, specs[1], "sign map")):
        if bitmap is not None:
            check_bitmap(bitmap, spec[0], spec[1], what, where)
    return specs, flags, zero_map, stream[1 + head : 1 + head + middle], sign_map


def check_pattern(stream: bytes | memoryview, n: int, counts: Sequence[int], where: str) -> None:
    """What can be checked without decoding: lengths, flags, raw bitmaps (linear in the stream)."""
    parts = _split_pattern(stream, n, counts, where)
    if parts is not None and parts[1] and len(parts[3]) % 4:
        raise FormatError(
            f"{where}: pattern's coded part is {len(parts[3])} bytes, not whole 32-bit words"
        )


def decode_bitmaps(
    stream: bytes | memoryview, n: int, counts: Sequence[int], where: str
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The zero and sign maps of a pattern stream, each checked against the counts."""
    parts = _split_pattern(stream, n, counts, where)
    if parts is None:
        return None, None
    specs, flags, zero_map, coded, sign_map = parts
    if flags:
        reader = AnsReader(coded, where)
        maps = [zero_map, sign_map]
        for i, what in ((0, "zero map"), (1, "sign map")):
            if flags & (1 << i):
                bits, ones = specs[i]
                maps[i] = reader.read(bitmap_model(ones, bits), bitmap_bytes(bits))
                check_bitmap(maps[i], bits, ones, what, where)
        reader.finish()
        zero_map, sign_map = maps
    return zero_map, sign_map


def decode_pattern(
    stream: bytes | memoryview, n: int, counts: Sequence[int], where: str
) -> np.ndarray:
    """The n int8 signs of a pattern stream (flat, row-major)."""
    zero_map, sign_map = decode_bitmaps(stream, n, counts, where)
    return expand_signs(zero_map, sign_map, n, counts)


def _flip_to_signs(bits: np.ndarray) -> np.ndarray:
    """uint8 0/1 (1 = negative) -> int8 +1/-1, in place."""
    np.multiply(bits, 2, out=bits)
    np.subtract(1, bits, out=bits)
    return bits.view(np.int8)


def expand_signs(
    zero_map: np.ndarray | None, sign_map: np.ndarray | None, n: int, counts: Sequence[int]
) -> np.ndarray:
    """int8 signs from the two bitmaps, in blocks: at most the output plus a block at a time."""
    n0, n_neg = counts[0], counts[1]
    if zero_map is None:
        if n0 == n:
            return np.zeros(n, np.int8)
        if sign_map is None:
            return np.full(n, -1 if n_neg else 1, np.int8)
        return _flip_to_signs(np.unpackbits(sign_map, count=n))
    if sign_map is None:
        nonzero = np.unpackbits(zero_map, count=n)
        nonzero ^= 1
        signs = nonzero.view(np.int8)
        return np.negative(signs, out=signs) if n_neg else signs
    out, taken = np.empty(n, np.int8), 0
    for start in range(0, n, BLOCK):
        stop = min(start + BLOCK, n)
        nonzero = np.unpackbits(zero_map[start // 8 : bitmap_bytes(stop)], count=stop - start)
        nonzero ^= 1
        nonzero = nonzero.view(bool)
        k = int(np.count_nonzero(nonzero))
        first = taken // 8
        bits = np.unpackbits(sign_map[first : bitmap_bytes(taken + k)])
        block = out[start:stop]
        block[:] = 0
        block[nonzero] = _flip_to_signs(bits[taken - 8 * first : taken - 8 * first + k])
        taken += k
    return out


# -- channel counts ------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    """Unsigned LEB128: 7 bits a byte, least significant first, high bit = more follow."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varint(data: bytes | memoryview, pos: int, where: str) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise FormatError(f"{where}: channel stream header is truncated; the file is corrupt")
        byte = data[pos]
        value, shift, pos = value | (byte & 0x7F) << shift, shift + 7, pos + 1
        if not byte & 0x80:
            return value, pos


def _wide(m: int, counts: Sequence[int]) -> bool:
    """Whether products of counts can leave int64: then the arithmetic runs on Python ints."""
    return m >= 1 << 61 or m * max(counts[0], counts[1]) >= 1 << 62


def _bit_length(z: np.ndarray) -> np.ndarray:
    if z.dtype == object:
        return np.array([int(v).bit_length() for v in z], dtype=np.int64)
    out, x = np.zeros(z.shape, np.int64), z.copy()
    for s in (32, 16, 8, 4, 2, 1):
        big = x >= 1 << s
        out[big] += s
        x[big] >>= s
    return out + (x > 0)


def _mantissa_bits(z: np.ndarray, buckets: np.ndarray) -> np.ndarray:
    """The bits of each z below its top bit, most significant first, all values in order."""
    lengths = np.maximum(buckets - 1, 0)
    total = int(lengths.sum())
    owner = np.repeat(np.arange(len(z)), lengths)
    position = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    shift = (lengths[owner] - 1 - position).astype(z.dtype)
    return ((z[owner] >> shift) & 1).astype(np.int32)


def _with_mantissas(buckets: np.ndarray, bits: np.ndarray, dtype: type) -> np.ndarray:
    lengths = np.maximum(buckets - 1, 0)
    z = np.zeros(len(buckets), dtype=dtype)
    top = buckets > 0
    z[top] = np.left_shift(np.ones(int(top.sum()), dtype=dtype), (buckets[top] - 1).astype(dtype))
    owner = np.repeat(np.arange(len(z)), lengths)
    position = np.arange(len(bits)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    shift = (lengths[owner] - 1 - position).astype(dtype)
    np.add.at(z, owner, bits.astype(dtype) << shift)
    return z


def _value_set_b(a: np.ndarray, m: int, counts: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Centres and upper limits of the negative counts, given the zero counts `a`."""
    limit = m - a
    nonzero = counts[1] + counts[2]
    return (limit * counts[1] // nonzero if nonzero else limit * 0), limit


def encode_channels(table: np.ndarray, m: int, counts: Sequence[int]) -> bytes:
    """The channel stream of a (C, 3) table of [n0, n_neg, n_pos] rows of m weights each."""
    n0, n_neg, _ = counts
    n = len(table) * m
    wide = _wide(m, counts)
    table = table.astype(object) if wide else np.asarray(table, dtype=np.int64)
    a, sets = table[:, 0], []
    if 0 < n0 < n:
        sets.append((a, m * n0 // n))
    if 0 < n_neg < n - n0:
        sets.append((table[:, 1], _value_set_b(a, m, counts)[0]))
    header, pushes = bytearray(), []
    for values, centre in sets:
        r = values - centre
        z = np.where(r >= 0, 2 * r, -2 * r - 1)
        buckets = _bit_length(z)
        hist = np.bincount(buckets).tolist()
        header += _varint(len(hist)) + b"".join(_varint(h) for h in hist)
        pushes.append((z, buckets, categorical(model_weights(hist)) if len(hist) > 1 else None))
    if not header:
        return b""
    coder = AnsCoder()
    for z, buckets, model in reversed(pushes):
        for start in reversed(range(0, len(z), CHANNEL_BLOCK)):
            block = slice(start, start + CHANNEL_BLOCK)
            _push(coder, _mantissa_bits(z[block], buckets[block]), _FAIR_BIT)
        if model is not None:
            _push(coder, buckets, model)
    return bytes(header) + _words(coder)


def _read_histogram(
    data: bytes | memoryview, pos: int, channels: int, m: int, where: str
) -> tuple[list[int], int]:
    k, pos = _read_varint(data, pos, where)
    if not 1 <= k <= (2 * m).bit_length() + 1:
        raise FormatError(f"{where}: channel stream has {k} buckets; the file is corrupt")
    hist = []
    for _ in range(k):
        h, pos = _read_varint(data, pos, where)
        hist.append(h)
    if sum(hist) != channels:
        raise FormatError(
            f"{where}: channel stream's bucket histogram counts {sum(hist)} channels, not "
            f"{channels}; the file is corrupt"
        )
    return hist, pos


def _channel_header(
    data: bytes | memoryview, channels: int, m: int, counts: Sequence[int], where: str
) -> tuple[list[int] | None, list[int] | None, int]:
    n0, n_neg, _ = counts
    n, pos, hists = channels * m, 0, []
    for coded in (0 < n0 < n, 0 < n_neg < n - n0):
        hist = None
        if coded:
            hist, pos = _read_histogram(data, pos, channels, m, where)
        hists.append(hist)
    if pos == 0 and len(data):
        raise FormatError(
            f"{where}: channel stream is {len(data)} bytes but counts {list(counts)} leave every "
            "channel's counts fixed, which needs 0"
        )
    return hists[0], hists[1], pos


def check_channels(
    data: bytes | memoryview, channels: int, m: int, counts: Sequence[int], where: str
) -> None:
    """What can be checked without decoding: the histograms and the coded part's length."""
    pos = _channel_header(data, channels, m, counts, where)[2]
    if (len(data) - pos) % 4:
        raise FormatError(f"{where}: channel stream's coded part is not whole 32-bit words")


def _read_values(
    reader: AnsReader, hist: list[int], centre, limit, channels: int, dtype: type
) -> np.ndarray:
    buckets = (
        reader.read(categorical(model_weights(hist)), channels, np.int64)
        if len(hist) > 1
        else np.zeros(channels, np.int64)
    )
    if np.bincount(buckets, minlength=len(hist)).tolist() != hist:
        raise FormatError(
            f"{reader.where}: the decoded buckets do not match the stream's histogram; the file "
            "is corrupt"
        )
    z = np.zeros(channels, dtype=dtype)
    for start in range(0, channels, CHANNEL_BLOCK):
        block = buckets[start : start + CHANNEL_BLOCK]
        bits = reader.read(_FAIR_BIT, int(np.maximum(block - 1, 0).sum()), np.int64)
        z[start : start + CHANNEL_BLOCK] = _with_mantissas(block, bits, dtype)
    values = centre + np.where(z % 2 == 0, z // 2, -(z // 2) - 1)
    if (values < 0).any() or (values > limit).any():
        raise FormatError(
            f"{reader.where}: a decoded channel count is outside [0, weights]; the file is corrupt"
        )
    return values


def decode_channels(
    data: bytes | memoryview, channels: int, m: int, counts: Sequence[int], where: str
) -> np.ndarray:
    """The (C, 3) int64 table of a channel stream, checked against the layer's counts."""
    n0, n_neg, _ = counts
    hist_a, hist_b, pos = _channel_header(data, channels, m, counts, where)
    dtype = object if _wide(m, counts) else np.int64
    reader = AnsReader(data[pos:], where)
    if hist_a is None:
        a = np.full(channels, 0 if n0 == 0 else m, dtype=dtype)
    else:
        a = _read_values(reader, hist_a, m * n0 // (channels * m), m, channels, dtype)
    centre, limit = _value_set_b(a, m, counts)
    if hist_b is None:
        b = limit * 0 if n_neg == 0 else limit
    else:
        b = _read_values(reader, hist_b, centre, limit, channels, dtype)
    reader.finish()
    if a.sum() != n0 or b.sum() != n_neg:
        raise FormatError(
            f"{where}: decoded channel counts add up to [{a.sum()}, {b.sum()}, ...], not the "
            f"layer's counts {list(counts)}; the file is corrupt"
        )
    table = np.stack([a, b, m - a - b], axis=1).astype(np.int64)
    table.flags.writeable = False
    return table
