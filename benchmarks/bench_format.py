"""Benchmark: what each rung of a `.polar` file (format version 3) costs against its information.

For both real ImageNet checkpoints in the shared data folder (torchvision MobileNetV2, timm-named
EfficientNet-Lite0) and for magnitude-pruned copies of each (50% and 90% of the conv weights set
to 0 by one global magnitude threshold over all conv weights, made here in memory), prints per
checkpoint and rung, in one run:

  file B        the .polar.safetensors file's bytes
  info B        the information bound of the rung (spec/polar-format.md, "Information"): a uniform
                code of (n0, n-) per layer / per output channel; the order-0 entropy of the signs
                (pattern); plus 32 bits per scale (scaled)
  file/info     their ratio; goal: pattern <= 1.01 x info + 4 KiB, channel <= 1.25 x info + 4 KiB
  xz/zstd       pattern rungs: the best of xz -9 and zstd -19 over the int8 sign bytes, and over
                version 1's bitmap packing of the same signs (all layers as one stream each);
                goal: the file is smaller than both
  header B      every byte that is not payload (the safetensors header and the offsets array);
                goal: <= 4 KiB for these 50-70-layer networks

and the speed, each side measured in the same run (best of --repeats):

  encode        MobileNetV2's signs -> pattern file bytes, against torch.load of the .pth it comes
                from (ratio = load time / encode time; goal >= 1)
  decode        every layer's pattern stream -> its int8 signs, against version 1's decoder
                (np.unpackbits of the bitmaps, as polarpack 0.1.0 shipped it, copied below; ratio
                = its time / ours; goal >= 1); and whole files, container parsed and checked
                (ours: polarpack.format.decode; version 1: safetensors alone), then decoded

Also printed: the bound a pattern given per-channel counts would need (the channel-conditional
entropy plus the channel stream), which is why pattern streams use the layer's counts.

    pip install -e ".[bench]"                       # zstandard, for the zstd -19 column
    python benchmarks/bench_format.py               # ~1 min
    python benchmarks/bench_format.py --repeats 9
"""

from __future__ import annotations

import argparse
import lzma
import math
import os
import struct
import sys
import time
from pathlib import Path

import numpy as np
import torch
import zstandard

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from polarpack import format as fmt  # noqa: E402
from polarpack.sources.extraction import extract  # noqa: E402

WEIGHTS = Path(os.environ.get("POLARPACK_SHARED_DATA") or ROOT.parent / "shared" / "data")
CHECKPOINTS = {
    "MobileNetV2": "weights/mobilenet_v2-b0353104.pth",
    "EfficientNet-Lite0": "weights/tf_efficientnet_lite0.in1k.safetensors",
}
RUNGS = ("layer", "channel", "pattern", "scaled")


# -- version 1's decoder, as shipped: the baseline of the decode ratio ---------------------------


def v1_bitmaps(data: bytes, shape, counts):
    n, (n0, n_neg, _) = math.prod(shape), counts
    zero_bytes = -(-n // 8) if 0 < n0 < n else 0
    sign_bytes = -(-(n - n0) // 8) if 0 < n_neg < n - n0 else 0
    if len(data) != zero_bytes + sign_bytes:
        raise ValueError("pattern length")
    buf = np.frombuffer(data, dtype=np.uint8)
    zero, sign = buf[:zero_bytes], buf[zero_bytes:]
    popcount = [int(np.unpackbits(b).sum()) for b in (zero, sign)]
    if popcount != [n0 if zero_bytes else 0, n_neg if sign_bytes else 0]:
        raise ValueError("pattern bits")
    return (zero if zero_bytes else None), (sign if sign_bytes else None)


def v1_unpack_signs(data: bytes, shape, counts) -> np.ndarray:
    zero_bits, sign_bits = v1_bitmaps(data, shape, counts)
    n, (n0, n_neg, _) = math.prod(shape), counts
    zero = (
        np.full(n, n0 == n) if zero_bits is None else np.unpackbits(zero_bits, count=n).astype(bool)
    )
    negative = (
        np.full(n - n0, n_neg > 0)
        if sign_bits is None
        else np.unpackbits(sign_bits, count=n - n0).astype(bool)
    )
    out = np.zeros(n, dtype=np.int8)
    out[~zero] = np.where(negative, -1, 1)
    return out.reshape(tuple(shape))


def v1_file(dist: fmt.Distribution) -> bytes:
    """The pattern as version 1 stored it: per-layer bitmap tensors."""
    from safetensors.numpy import save

    tensors = {
        f"pattern.{i}": np.frombuffer(fmt.pack_signs(layer.signs().numpy()), np.uint8)
        for i, layer in enumerate(dist.layers)
    }
    return save(tensors)


def v1_decode(data: bytes, dist: fmt.Distribution) -> list[np.ndarray]:
    from safetensors import deserialize

    tensors = dict(deserialize(data))
    return [
        v1_unpack_signs(bytes(tensors[f"pattern.{i}"]["data"]), layer.shape, layer.counts)
        for i, layer in enumerate(dist.layers)
    ]


def v2_decode(data: bytes) -> list[np.ndarray]:
    return [layer.signs().numpy() for layer in fmt.decode(data).layers]


# -- checkpoints ---------------------------------------------------------------------------------


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, weights_only=True, map_location="cpu")


def is_conv(name: str, t: torch.Tensor) -> bool:
    return name.endswith(".weight") and t.dim() in (3, 4, 5)


def pruned(sd: dict[str, torch.Tensor], fraction: float) -> tuple[dict, float]:
    """One global magnitude threshold over all conv weights; the fraction actually zeroed."""
    magnitudes = np.concatenate([t.abs().flatten().numpy() for k, t in sd.items() if is_conv(k, t)])
    k = int(fraction * magnitudes.size)
    threshold = np.partition(magnitudes, k)[k]
    out = {
        name: torch.where(t.abs() < threshold, torch.zeros_like(t), t) if is_conv(name, t) else t
        for name, t in sd.items()
    }
    zeros = sum(int((t == 0).sum()) for name, t in out.items() if is_conv(name, t))
    return out, zeros / magnitudes.size


def best_of(repeats: int, *fns) -> list[float]:
    """Each function's best time, the functions taking turns so that both sides of a ratio see
    the same machine load."""
    best = [math.inf] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def general_compressors(dist: fmt.Distribution) -> tuple[int, int]:
    """Best of xz -9 and zstd -19 over the int8 signs, and over version 1's bitmap packing (each
    layer's maps as version 1 stored them), each as one stream of all layers in order."""
    signs = [layer.signs().numpy() for layer in dist.layers]
    blobs = [b"".join(s.tobytes() for s in signs), b"".join(map(fmt.pack_signs, signs))]
    zstd = zstandard.ZstdCompressor(level=19)
    return tuple(min(len(lzma.compress(b, preset=9)), len(zstd.compress(b))) for b in blobs)


def header_bytes(data: bytes, dist: fmt.Distribution) -> int:
    """Everything that is not payload: the safetensors header and the offsets array."""
    return len(data) - sum(fmt.coded_bytes(dist).values())


# -- the run -------------------------------------------------------------------------------------


def missed_goals(
    rung: str, size: int, info: int, general: tuple[int, int] | None, header: int
) -> list[str]:
    missed = ["header <= 4 KiB"] if header > 4096 else []
    if rung == "pattern" and size > 1.01 * info + 4096:
        missed.append("<= 1.01 x info + 4 KiB")
    if rung == "pattern" and size >= min(general):
        missed.append("< xz/zstd")
    if rung == "channel" and size > 1.25 * info + 4096:
        missed.append("<= 1.25 x info + 4 KiB")
    return missed


def rung_rows(name: str, source, args) -> list[str]:
    rows, failures = [], []
    for rung in RUNGS:
        dist = extract(source, granularity=rung, hash_file=False)
        data = fmt.encode(dist, "safetensors")
        assert fmt.decode(data) == dist
        sizes = fmt.size_report(dist, polar_bytes=len(data))
        info = sizes["information_bytes"]
        general = general_compressors(dist) if rung in ("pattern", "scaled") else None
        header = header_bytes(data, dist)
        missed = missed_goals(rung, len(data), info, general, header)
        failures += [f"{rung}: {m}" for m in missed]
        rows.append(
            f"{name:<26} {rung:<8} {len(data):>10,} {info:>10,} {len(data) / info:>9.4f} "
            f"{'|'.join(f'{g:,}' for g in general) if general else '-':>17} {header:>8,}  "
            f"{sizes['file_bits_per_weight']:.3f} b/w {'ok' if not missed else 'MISSED'}"
        )
        if rung == "pattern":
            channel = extract(source, granularity="channel", hash_file=False)
            needs = math.ceil(sizes["channel_bits_per_weight"] * sizes["weights"] / 8)
            streams = fmt.coded_bytes(channel)["streams"]
            rows.append(
                f"{'':<26} {'':<8} per-channel models would need >= {needs + streams:,} B "
                f"({needs:,} channel-conditional + {streams:,} channel streams)"
            )
            decode, fast_enough = decode_rows(dist, data, args)
            rows.append(decode)
            failures += [] if fast_enough else ["pattern: decode speed"]
    return rows + ([f"{'':<26} MISSED goals: {failures}"] if failures else [])


def decode_rows(dist: fmt.Distribution, data: bytes, args) -> tuple[str, bool]:
    """Two ratios: the streams alone (each layer's coded pattern -> int8 signs, against
    np.unpackbits of its version-1 bitmaps: the goal), and whole files (container parsed and
    checked, then every layer decoded: what a reader of the file waits for)."""
    old = v1_file(dist)
    expected = [layer.signs().numpy() for layer in dist.layers]
    assert all(np.array_equal(a, b) for a, b in zip(v1_decode(old, dist), expected, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(v2_decode(data), expected, strict=True))
    parsed = fmt.decode(data)
    bitmaps = [fmt.pack_signs(signs) for signs in expected]

    def ours() -> list:
        return [layer.signs() for layer in parsed.layers]

    def theirs() -> list:
        return [
            v1_unpack_signs(bitmap, layer.shape, layer.counts)
            for bitmap, layer in zip(bitmaps, dist.layers, strict=True)
        ]

    streams = best_of(args.repeats, ours, theirs)
    files = best_of(args.repeats, lambda: v2_decode(data), lambda: v1_decode(old, dist))
    row = (
        f"{'':<26} {'':<8} decode: streams {streams[0] * 1e3:.1f} ms, version 1 (np.unpackbits) "
        f"{streams[1] * 1e3:.1f} ms: ratio {streams[1] / streams[0]:.2f} (goal >= 1); whole "
        f"files {files[0] * 1e3:.1f} / {files[1] * 1e3:.1f} ms: {files[1] / files[0]:.2f}"
    )
    return row, streams[1] >= streams[0]


def encode_row(path: Path, args) -> str:
    dist = extract(path, granularity="pattern", hash_file=False)
    signs = [(layer.name, layer.signs().numpy()) for layer in dist.layers]

    def encode() -> bytes:
        layers = [fmt.LayerDistribution.from_signs(n, s) for n, s in signs]
        return fmt.encode_safetensors(fmt.Distribution(layers, granularity="pattern"))

    assert fmt.decode(encode()).layers == dist.layers
    ours, load = best_of(
        args.repeats, encode, lambda: torch.load(path, weights_only=True, map_location="cpu")
    )
    return (
        f"encode MobileNetV2's pattern: {ours * 1e3:.1f} ms; torch.load of the .pth "
        f"{load * 1e3:.1f} ms: ratio {load / ours:.2f} (goal >= 1)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    paths = {name: WEIGHTS / rel for name, rel in CHECKPOINTS.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        sys.exit(f"checkpoints not found: {missing}; set POLARPACK_SHARED_DATA")
    print(
        f"{'checkpoint':<26} {'rung':<8} {'file B':>10} {'info B':>10} {'file/info':>9} "
        f"{'xz/zstd: int8|bits':>17} {'header B':>8}  bits/weight, goals"
    )
    for name, path in paths.items():
        sd = load_state_dict(path)
        for fraction in (0.0, 0.5, 0.9):
            source, zeroed = (sd, 0.0) if not fraction else pruned(sd, fraction)
            label = name if not fraction else f"{name} {zeroed:.0%} pruned"
            for row in rung_rows(label, source, args):
                print(row, flush=True)
    print(encode_row(paths["MobileNetV2"], args))
    dist = extract(paths["MobileNetV2"], granularity="scaled", norms=True, hash_file=False)
    data = fmt.encode(dist, "safetensors")
    (n,) = struct.unpack("<Q", data[:8])
    print(
        f"MobileNetV2 scaled + norms: {len(data):,} B, of which norms "
        f"{fmt.coded_bytes(dist)['norms']:,} B; header {header_bytes(data, dist):,} B "
        f"(safetensors header {8 + n:,} B)"
    )


if __name__ == "__main__":
    main()
