"""Entropy coding of the `.polar` streams (spec/polar-format.md, "Coded streams").

A sign pattern is two bitmaps, as in version 1: which weights are zero, and which of the others
are negative. Each bitmap is stored raw, ANS-coded one byte per symbol under the i.i.d. model its
counts give, or gap-coded: the runs between its rarer bits as Golomb codes, split into fixed-width,
one-bit and unary parts that numpy decodes in bulk, many times faster than the ANS decoder
(`encode_bitmaps` says which). Per-channel counts are residuals from the layer's mean,
each split into an exponent bucket (coded with the bucket histogram the stream carries) and its
mantissa bits (coded at one bit each).

The coder is constriction's ANS (`constriction.stream.stack.AnsCoder`: 32-bit words, 64-bit state,
24-bit probabilities). Every model is a `Categorical` whose integer weights out of 2**24 come from
integer frequencies by one exact rule (`model_weights`); constriction receives `weights - 1` as
floats, from which its fast quantisation (`perfect=False`) rebuilds exactly those weights. Files
therefore decode identically everywhere, and the spec is enough to write another decoder.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import constriction
import numpy as np

from polarpack.errors import FormatError

Categorical = constriction.stream.model.Categorical
AnsCoder = constriction.stream.stack.AnsCoder

PRECISION = 24
TOTAL = 1 << PRECISION
RAW_HAIR = 256  # a bitmap stays raw unless coding it saves more than 1/256 of the coded size
GAP_HAIR, GAP_BYTES = 64, 16  # gap coding is preferred to ANS unless it costs 1/64 and 16 B more
WINDOW = 1 << 13  # bytes of a gap stream's unary part decoded at a time
CHUNK = 1 << 20  # symbols per coder call: bounds the int32 temporaries
BLOCK = 1 << 18  # weights per expansion block (a multiple of 8)
CHANNEL_BLOCK = 1 << 16  # channels per mantissa block
GAP_BLOCK = 1 << 18  # bits of a map the gap coder unpacks at a time (a multiple of 8)
_POPCOUNT = np.array([bin(b).count("1") for b in range(256)], dtype=np.uint8)


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


def bitmap_weights(ones: int, bits: int) -> np.ndarray:
    """`model_weights` of a bitmap's byte frequencies: byte b has frequency
    ones**j * (bits - ones)**(8 - j), j being b's set bits (i.i.d. bits with p = ones / bits).
    Computed per j: the frequencies sum to bits**8, and the remainder goes to byte 2**j - 1, the
    first of the most frequent j."""
    per_count = [ones**j * (bits - ones) ** (8 - j) for j in range(9)]
    weights = np.array([1 + (TOTAL - 256) * f // bits**8 for f in per_count], np.int64)[_POPCOUNT]
    top = max(range(9), key=lambda j: (per_count[j], -j))
    weights[(1 << top) - 1] += TOTAL - int(weights.sum())
    return weights


def bitmap_model(ones: int, bits: int) -> Categorical:
    """The byte model of a bitmap with `ones` set bits among `bits` (`bitmap_weights`)."""
    return categorical(bitmap_weights(ones, bits))


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


STATE_BITS = 64  # the coder's state: the most a stream can hold beyond the information it codes


def least_bits(weights: Sequence[int] | np.ndarray) -> float:
    """The fewest bits any one symbol of a model with these integer weights costs: -log2 of its
    largest probability. Every weight is at least 1 of 2**24, so no symbol is free."""
    return -math.log2(int(max(weights)) / TOTAL)


def check_capacity(coded: int, symbols: int, bits: float, what: str, where: str) -> None:
    """Refuse, before decoding, an ANS part of `coded` bytes that cannot hold `symbols` symbols
    needing at least `bits` bits: an ANS stream holds at most its own bits plus its state's
    (`STATE_BITS`), and one that codes anything is at least one word. constriction's decoder yields
    zeros once a stream runs out, so a stream that ends early would otherwise be decoded in full."""
    if symbols and (not coded or bits > 8 * coded + STATE_BITS):
        raise FormatError(
            f"{where}: the {what} ends early: {coded} coded bytes cannot hold {symbols:,} symbols "
            f"of at least {bits:,.0f} bits in all; the file is corrupt"
        )


# -- lengths -------------------------------------------------------------------------------------


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
            raise FormatError(f"{where}: a length field is truncated; the file is corrupt")
        byte = data[pos]
        value, shift, pos = value | (byte & 0x7F) << shift, shift + 7, pos + 1
        if not byte & 0x80:
            return value, pos


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


def _padding_set(data: np.ndarray, bits: int) -> bool:
    """Whether a packed array of `bits` bits has a set bit in its last byte's padding."""
    pad = -bits % 8
    return bool(pad and int(data[bitmap_bytes(bits) - 1]) & ((1 << pad) - 1))


def check_bitmap(bitmap: np.ndarray, bits: int, ones: int, what: str, where: str) -> None:
    """The bitmap has exactly `ones` set bits and zero padding: checked without unpacking it."""
    if popcount(bitmap) != ones or _padding_set(bitmap, bits):
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


# Gap coding (spec/polar-format.md, "Gap-coded maps"): the positions of a map's rarer bit value as
# Golomb codes of the runs before them. A run g = q * M + r is stored as q in unary (q zeros, then a
# one), and r in truncated binary: its first w = B - 1 bits in a fixed-width part, and for the
# long codes (head >= cut) one more bit in a one-bit part. With B = bit_length(M - 1) and
# cut = 2**B - M, r < cut has the B - 1 bit head r; else the B bits of r + cut are head and extra.


def _golomb_shape(m: int) -> tuple[int, int, int]:
    """(B, cut, head width) of Golomb parameter m."""
    b = (m - 1).bit_length()
    return b, (1 << b) - m, max(b - 1, 0)


def _golomb_parts(runs: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quotients, heads and the long codes' extra bits of these runs."""
    b, cut, _ = _golomb_shape(m)
    q, r = np.divmod(runs, m)
    if b == 0:
        return q, r, r[:0]
    long = r >= cut
    np.add(r, cut, out=r, where=long)  # the long codes' B bits, in place
    extra = r[long] & 1
    np.right_shift(r, 1, out=r, where=long)
    return q, r, extra


def _golomb_totals(runs: np.ndarray, m: int) -> tuple[int, int]:
    """The sum of these runs' quotients and their number of long codes: what the size of a gap
    stream depends on."""
    b, cut, _ = _golomb_shape(m)
    q, r = np.divmod(runs, m)
    return int(q.sum()), int(np.count_nonzero(r >= cut)) if b else 0


class _BitStream:
    """A bit stream packed as it is written: whole bytes go out, the < 8 bits left over wait for
    the next write, so it packs exactly as one `np.packbits` of all its bits would."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.carry = np.zeros(0, np.uint8)
        self.count = 0

    def write(self, bits: np.ndarray) -> None:
        self.count += len(bits)
        bits = np.concatenate([self.carry, bits.astype(np.uint8, copy=False)])
        whole = len(bits) & ~7
        self.parts.append(np.packbits(bits[:whole]).tobytes())
        self.carry = bits[whole:]

    def getvalue(self) -> bytes:
        return b"".join(self.parts) + np.packbits(self.carry).tobytes()


def _gap_runs(bitmap: np.ndarray, bits: int, rare: int) -> Iterator[np.ndarray]:
    """The runs before a map's `rare` bits (int64). The map is unpacked `GAP_BLOCK` bits at a
    time, and its runs come in batches of at least `GAP_BLOCK // 8` (but the last), so that a
    sparse map is not coded in many small calls."""
    last, batch, held = -1, [], 0  # the rare bit before the batch; the batch's positions
    for start in range(0, bits, GAP_BLOCK):
        block = bitmap[start // 8 : (start + GAP_BLOCK) // 8]
        found = np.unpackbits(block if rare else ~block, count=min(GAP_BLOCK, bits - start))
        batch.append(np.flatnonzero(found.view(bool)))
        batch[-1] += start
        held += len(batch[-1])
        if held >= GAP_BLOCK // 8 or (held and start + GAP_BLOCK >= bits):
            positions = np.concatenate([[last], *batch])
            runs = positions[1:] - positions[:-1]
            runs -= 1
            last, batch, held = int(positions[-1]), [], 0
            del found, positions  # not held while the runs are coded
            yield runs


def encode_gaps(bitmap: np.ndarray, bits: int, ones: int, m: int | None = None) -> bytes:
    """A map's gap-coded stream with Golomb parameter m; by default, of the values around the
    Golomb optimum for the rarer bit's frequency, the one that gives the fewest bytes (the
    smallest on a tie).

    It works through the map a block at a time (`_gap_runs`), carrying the last rare bit's
    position from block to block, so that beside its output it holds one block's bits and runs,
    not int64 arrays over every rare bit (about 20 bytes a weight with 30% rare bits). It reads
    the map twice: choosing M needs the whole map's totals (a candidate's size follows from its
    sum of quotients and number of long codes), then the three bit streams are written, each
    packed as it goes."""
    rare = 1 if 2 * ones <= bits else 0
    events = ones if rare else bits - ones
    if m is None:
        s = 1 - events / bits
        optimum = max(1, math.ceil(math.log(1 + s) / -math.log(s))) if s > 0 else 1
        candidates = range(max(1, optimum - 1), optimum + 2)
        totals = {c: [0, 0] for c in candidates}  # sum of quotients, long codes
        for runs in _gap_runs(bitmap, bits, rare):
            for c, total in totals.items():
                quotients, longs = _golomb_totals(runs, c)
                total[0] += quotients
                total[1] += longs

        def size(c: int) -> int:
            quotients, longs = totals[c]
            return (
                len(_varint(c) + _varint(longs))
                + bitmap_bytes(events * _golomb_shape(c)[2])
                + bitmap_bytes(longs)
                + bitmap_bytes(quotients + events)
            )

        m = min(candidates, key=lambda c: (size(c), c))
    width = _golomb_shape(m)[2]
    heads, extras, unary = _BitStream(), _BitStream(), _BitStream()
    for runs in _gap_runs(bitmap, bits, rare):
        quotients, head, extra = _golomb_parts(runs, m)
        head_bits = np.empty((len(runs), width), np.uint8)
        for column in range(width):  # most significant bit first
            head_bits[:, column] = head >> (width - 1 - column) & 1
        heads.write(head_bits.reshape(-1))
        extras.write(extra)
        quotients += 1  # each run's unary code: q zeros, then a one
        ends = np.cumsum(quotients, out=quotients)
        ends -= 1
        unary_bits = np.zeros(int(ends[-1]) + 1, np.uint8)
        unary_bits[ends] = 1
        unary.write(unary_bits)
    return b"".join(
        [_varint(m), _varint(extras.count), heads.getvalue(), extras.getvalue(), unary.getvalue()]
    )


def _read_bits(data: np.ndarray, start: int, count: int) -> np.ndarray:
    """`count` bits from bit `start` of a packed array, unpacked (uint8 0/1)."""
    first = start // 8
    unpacked = np.unpackbits(data[first : bitmap_bytes(start + count)])
    return unpacked[start - 8 * first : start - 8 * first + count]


def _set_bits(bitmap: np.ndarray, positions: np.ndarray) -> None:
    """Flip the bits at these sorted, distinct positions of a packed bitmap."""
    byte = positions >> 3
    masks = (0x80 >> (positions & 7)).astype(np.uint8)
    starts = np.flatnonzero(np.diff(byte, prepend=-1))
    bitmap[byte[starts]] ^= np.bitwise_or.reduceat(masks, starts)


def _gap_positions(data: bytes | memoryview, bits: int, ones: int, where: str) -> Iterator:
    """The sorted positions of a gap-coded map's rarer bit value, a window of its unary part at a
    time (so memory stays within a window's worth of runs); raises once exhausted unless the
    stream decodes exactly."""
    events = ones if 2 * ones <= bits else bits - ones
    m, pos = _read_varint(data, 0, where)
    n_extra, pos = _read_varint(data, pos, where)
    b, cut, width = _golomb_shape(max(m, 1))
    heads_at, extra_at = pos, pos + bitmap_bytes(events * width)
    unary_at = extra_at + bitmap_bytes(n_extra)
    if not 1 <= m <= bits or n_extra > events or unary_at > len(data):
        raise FormatError(
            f"{where}: gap-coded map has M = {m} and {n_extra} long codes for {events} runs in "
            f"{len(data)} bytes; the file is corrupt"
        )
    stream = np.frombuffer(data, np.uint8)
    heads_part, extra_part = stream[heads_at:extra_at], stream[extra_at:unary_at]
    done = longs = 0
    last_end = last_position = -1
    for window in range(unary_at, len(data), WINDOW):
        if done == events:
            break
        ones_at = np.unpackbits(stream[window : window + WINDOW]).view(bool)
        ends = ones_at.nonzero()[0][: events - done]  # bool: numpy's fast path
        if not len(ends):
            continue
        ends += 8 * (window - unary_at)
        runs = np.empty_like(ends)  # the quotients, times M
        runs[0] = ends[0] - last_end - 1
        np.subtract(ends[1:], ends[:-1], out=runs[1:])
        runs[1:] -= 1
        if int(runs.max()) * m >= bits:  # a run past the map's end: damage (and no overflow)
            break
        runs *= m
        last_end = int(ends[-1])
        head_bits = _read_bits(heads_part, done * width, len(ends) * width)
        heads = head_bits[::width].astype(np.int64) if width else np.zeros(len(ends), np.int64)
        for column in range(1, width):
            heads <<= 1
            heads |= head_bits[column::width]
        if b:
            long = heads >= cut
            k = int(np.count_nonzero(long))
            if longs + k > n_extra:
                break
            heads[long] = 2 * heads[long] + _read_bits(extra_part, longs, k) - cut
            longs += k
        runs += heads
        runs += 1
        positions = runs.cumsum(out=runs)
        positions += last_position
        last_position = int(positions[-1])
        if last_position >= bits:
            break
        done += len(ends)
        yield positions
    unary_bytes = bitmap_bytes(last_end + 1)
    if (
        done != events
        or longs != n_extra
        or unary_at + unary_bytes != len(data)
        or _padding_set(extra_part, n_extra)
        or _padding_set(heads_part, events * width)
        or _padding_set(stream[unary_at:], last_end + 1)
    ):
        raise FormatError(
            f"{where}: gap-coded map does not decode to {events} runs within {bits} bits that "
            f"use its {len(data)} bytes exactly; the file is corrupt"
        )


def decode_gaps(data: bytes | memoryview, bits: int, ones: int, where: str) -> np.ndarray:
    """The packed bitmap of a gap-coded stream."""
    bitmap = np.zeros(bitmap_bytes(bits), np.uint8)
    if 2 * ones > bits:  # the zeros were coded: start from ones, padding cleared
        bitmap[:] = 0xFF
        _set_bits(bitmap, np.arange(bits, 8 * len(bitmap)))
    for positions in _gap_positions(data, bits, ones, where):
        _set_bits(bitmap, positions)
    return bitmap


RAW, ANS, GAPS = 0, 1, 2


def encode_bitmaps(
    zero_map: np.ndarray | None, sign_map: np.ndarray | None, n: int, counts: Sequence[int]
) -> bytes:
    """Flags byte, the gap-coded maps' lengths, then the body: zero map (raw or gap-coded), the ANS
    part (one stream: the zero map's bytes, then the sign map's, for the maps coded so), sign map
    (raw or gap-coded). The writer's rule, which makes files reproducible: of a map's ANS stream
    coded alone (c bytes) and, where its rarer bit value is at most a third of its bits, its gap
    stream (g), the gap stream when g <= c + max(c // 64, 16) (it decodes many times faster); that
    coding when its size s satisfies s + s // 256 < the raw size, else raw, which decodes
    fastest."""
    specs = present_bitmaps(n, counts)
    if specs == (None, None):
        return b""
    maps, models, kinds, parts = (zero_map, sign_map), [None, None], [RAW, RAW], [b"", b""]
    for i, spec in enumerate(specs):
        if spec is None:
            continue
        models[i] = bitmap_model(spec[1], spec[0])
        coder = AnsCoder()
        _push(coder, maps[i], models[i])
        kind, coded = ANS, _words(coder)
        if min(spec[1], spec[0] - spec[1]) * 3 <= spec[0]:  # runs pay where one value is rare
            gaps = encode_gaps(maps[i], *spec)
            if len(gaps) <= len(coded) + max(len(coded) // GAP_HAIR, GAP_BYTES):
                kind, coded = GAPS, gaps
        if len(coded) + len(coded) // RAW_HAIR < len(maps[i]):
            kinds[i], parts[i] = kind, coded
    if kinds == [ANS, ANS]:
        coder = AnsCoder()
        _push(coder, sign_map, models[1])
        _push(coder, zero_map, models[0])
        middle = _words(coder)
    else:
        middle = b"".join(part for part, kind in zip(parts, kinds, strict=True) if kind == ANS)
    flags = sum(1 << i for i in (0, 1) if kinds[i] == ANS)
    flags |= sum(4 << i for i in (0, 1) if kinds[i] == GAPS)
    lengths = b"".join(_varint(len(parts[i])) for i in (0, 1) if kinds[i] == GAPS)
    head, tail = (
        parts[i] if kinds[i] == GAPS else maps[i].tobytes() if specs[i] and kinds[i] == RAW else b""
        for i in (0, 1)
    )
    return bytes([flags]) + lengths + head + middle + tail


def gap_coded(stream: bytes | memoryview) -> bool:
    """Whether a pattern stream holds a gap-coded map (format_version 3 and later)."""
    return bool(len(stream) and stream[0] & 12)


def _split_pattern(stream: bytes | memoryview, n: int, counts: Sequence[int], where: str):
    """(specs, kinds, zero map part, ANS part, sign map part), the raw maps checked; None for a
    layer of one symbol, whose stream must be empty."""
    specs = present_bitmaps(n, counts)
    if specs == (None, None):
        if len(stream):
            raise FormatError(
                f"{where}: pattern is {len(stream)} bytes but counts {list(counts)} leave one "
                "symbol, which needs 0"
            )
        return None
    present = (1 if specs[0] else 0) | (2 if specs[1] else 0)
    flags = stream[0] if len(stream) else -1
    if flags < 0 or flags & ~(present * 5) or flags & (flags >> 2):
        raise FormatError(
            f"{where}: pattern flags byte is {flags if flags >= 0 else 'missing'}; counts "
            f"{list(counts)} allow bits {present} and {present << 2}, not both for one map; the "
            "file is corrupt"
        )
    kinds = [ANS if flags >> i & 1 else GAPS if flags >> (i + 2) & 1 else RAW for i in (0, 1)]
    pos, sizes = 1, [0, 0]
    for i in (0, 1):
        if kinds[i] == GAPS:
            sizes[i], pos = _read_varint(stream, pos, where)
        elif kinds[i] == RAW and specs[i]:
            sizes[i] = bitmap_bytes(specs[i][0])
    middle = len(stream) - pos - sizes[0] - sizes[1]
    if middle < 0 or (middle and ANS not in kinds):
        raise FormatError(
            f"{where}: pattern is {len(stream)} bytes but counts {list(counts)} with flags "
            f"{flags} need {pos + sum(sizes)}{' plus the coded part' if ANS in kinds else ''}"
        )
    ans = [specs[i] for i in (0, 1) if kinds[i] == ANS]
    symbols = sum(bitmap_bytes(bits) for bits, _ in ans)
    least = sum(bitmap_bytes(bits) * least_bits(bitmap_weights(ones, bits)) for bits, ones in ans)
    check_capacity(middle, symbols, least, "pattern's coded part", where)
    zero_part = stream[pos : pos + sizes[0]]
    sign_part = stream[len(stream) - sizes[1] :]
    for i, part, what in ((0, zero_part, "zero map"), (1, sign_part, "sign map")):
        if kinds[i] == RAW and specs[i]:
            check_bitmap(np.frombuffer(part, np.uint8), *specs[i], what, where)
    return specs, kinds, zero_part, stream[pos + sizes[0] : pos + sizes[0] + middle], sign_part


def check_pattern(stream: bytes | memoryview, n: int, counts: Sequence[int], where: str) -> None:
    """What can be checked without decoding: lengths, flags, raw bitmaps (linear in the stream)."""
    parts = _split_pattern(stream, n, counts, where)
    if parts is not None and ANS in parts[1] and len(parts[3]) % 4:
        raise FormatError(
            f"{where}: pattern's coded part is {len(parts[3])} bytes, not whole 32-bit words"
        )


def _decode_maps(parts, where: str, skip_zero_map: bool = False) -> list[np.ndarray | None]:
    """The two maps of a split pattern stream as packed bitmaps, each checked against the counts
    (the zero map left undecoded if asked)."""
    specs, kinds, zero_part, coded, sign_part = parts
    maps = [
        np.frombuffer(part, np.uint8) if spec and kind == RAW else None
        for part, spec, kind in zip((zero_part, sign_part), specs, kinds, strict=True)
    ]
    reader = AnsReader(coded, where) if ANS in kinds else None
    for i, part, what in ((0, zero_part, "zero map"), (1, sign_part, "sign map")):
        bits, ones = specs[i] or (0, 0)
        if kinds[i] == ANS:
            maps[i] = reader.read(bitmap_model(ones, bits), bitmap_bytes(bits))
        elif kinds[i] == GAPS and not (i == 0 and skip_zero_map):
            maps[i] = decode_gaps(part, bits, ones, f"{where} ({what})")
        if kinds[i] != RAW and maps[i] is not None:
            check_bitmap(maps[i], bits, ones, what, where)
    if reader is not None:
        reader.finish()
    return maps


def decode_bitmaps(
    stream: bytes | memoryview, n: int, counts: Sequence[int], where: str
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The zero and sign maps of a pattern stream, each checked against the counts."""
    parts = _split_pattern(stream, n, counts, where)
    if parts is None:
        return None, None
    zero_map, sign_map = _decode_maps(parts, where)
    return zero_map, sign_map


def decode_pattern(
    stream: bytes | memoryview, n: int, counts: Sequence[int], where: str
) -> np.ndarray:
    """The n int8 signs of a pattern stream (flat, row-major). A mostly-zero layer whose zero map
    is gap-coded (a pruned network's) places its non-zero signs straight at their positions."""
    parts = _split_pattern(stream, n, counts, where)
    if parts is None:
        return expand_signs(None, None, n, counts)
    n0, n_neg = counts[0], counts[1]
    if parts[1][0] != GAPS or 2 * n0 <= n:
        return expand_signs(*_decode_maps(parts, where), n, counts)
    sign_map = _decode_maps(parts, where, skip_zero_map=True)[1]
    out, taken = np.zeros(n, np.int8), 0
    for positions in _gap_positions(parts[2], n, n0, f"{where} (zero map)"):
        if sign_map is None:
            out[positions] = -1 if n_neg else 1
        else:
            bits = _read_bits(sign_map, taken, len(positions)).copy()
            out[positions] = _flip_to_signs(bits)
        taken += len(positions)
    return out


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
        where = np.flatnonzero(nonzero.view(bool))  # indices: far faster than a boolean mask
        bits = _read_bits(sign_map, taken, len(where)).copy()
        block = out[start:stop]
        block[:] = 0
        block[where] = _flip_to_signs(bits)
        taken += len(where)
    return out


# -- channel counts ------------------------------------------------------------------------------


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
    symbols, least = 0, 0.0
    for hist in filter(None, hists):  # buckets (when more than one), then mantissas at 1 bit
        mantissas = sum(h * max(b - 1, 0) for b, h in enumerate(hist))
        buckets = channels if len(hist) > 1 else 0
        symbols += buckets + mantissas
        least += mantissas + (buckets * least_bits(model_weights(hist)) if buckets else 0.0)
    check_capacity(len(data) - pos, symbols, least, "channel stream's coded part", where)
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
