"""Benchmark: `polarpack.extract` on a >= 500 MB checkpoint versus the naive way and the I/O floor.

Builds a randomly initialised torchvision vgg16 (138 M float32 parameters, ~553 MB; only ~59 MB of
it are conv kernels, the rest are the fully connected layers), saves it as safetensors and as a .pth
state_dict in a temporary directory, then times in one run:

  polarpack/safetensors   extract(file.safetensors, hash_file=False): lazy, reads only conv tensors
  polarpack/pth           extract(file.pth, hash_file=False): torch.load(mmap=True), same counting
  polarpack/+sha256       the defaults (also hashes the whole file for `source.sha256`)
  polarpack/st pattern    extract(file.safetensors, granularity="pattern"): the exact sign pattern
  naive/pth               torch.load of the whole .pth without mmap, then per-tensor numpy counts
                          ((a == 0).sum(), (a < 0).sum(), (a > 0).sum() after .numpy())
  naive/safetensors       safetensors.torch.load_file of the whole file, then the same numpy counts
  floor                   one read of just the conv tensors' bytes (their byte ranges in the
                          safetensors file), nothing else

Warm cache: every file is read once before timing, and each variant runs --repeats times (min and
median reported). Cold cache: before each run the two files' pages are evicted from the page cache
with posix_fadvise(DONTNEED) (only these files; --drop-caches instead drops the whole machine's page
cache, needs root and slows everyone else on the machine). Either way only this machine's cache is
dropped: a virtual disk's host may still cache the data, so "cold" is a lower bound on disk time.

naive/safetensors is shown for context: safetensors' own load_file memory-maps the file, so it is
already lazy and reads only the pages the counting touches; the naive baseline of the targets is
naive/pth.

    python benchmarks/bench_extract.py                # ~1 min, needs ~1.2 GB of temp disk
    python benchmarks/bench_extract.py --repeats 9 --dir /some/fast/disk
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path


def build_checkpoints(directory: Path) -> tuple[Path, Path]:
    import torch
    import torchvision
    from safetensors.torch import save_file

    st, pth = directory / "vgg16.safetensors", directory / "vgg16.pth"
    if not (st.exists() and pth.exists()):
        torch.manual_seed(0)
        sd = torchvision.models.vgg16().state_dict()
        save_file(sd, str(st))
        torch.save(sd, pth)
        del sd
    return st, pth


def conv_ranges(st: Path) -> list[tuple[str, int, int]]:
    """(name, absolute offset, nbytes) of the 4-D '.weight' tensors in a safetensors file."""
    with open(st, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    base = 8 + n
    out = []
    for name, meta in header.items():
        if name != "__metadata__" and name.endswith(".weight") and len(meta["shape"]) == 4:
            a, b = meta["data_offsets"]
            out.append((name, base + a, b - a))
    return sorted(out, key=lambda r: r[1])


def read_floor(st: Path, ranges: list[tuple[str, int, int]]) -> int:
    total = 0
    with open(st, "rb", buffering=0) as fh:
        for _, offset, nbytes in ranges:
            fh.seek(offset)
            total += len(fh.read(nbytes))
    return total


def naive_counts(sd) -> dict[str, tuple[int, int, int]]:
    out = {}
    for key, t in sd.items():
        if key.endswith(".weight") and t.dim() == 4:
            a = t.numpy()
            out[key[: -len(".weight")]] = (
                int((a == 0).sum()),
                int((a < 0).sum()),
                int((a > 0).sum()),
            )
    return out


def naive_pth(pth: Path):
    import torch

    return naive_counts(torch.load(pth, map_location="cpu", weights_only=True))


def naive_safetensors(st: Path):
    from safetensors.torch import load_file

    return naive_counts(load_file(str(st)))


def evict(*paths: Path) -> bool:
    ok = True
    for p in paths:
        try:
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        except (OSError, AttributeError):
            ok = False
    return ok


def try_drop_caches(enabled: bool) -> str:
    if not enabled:
        return "evicting the two files with posix_fadvise(DONTNEED) before each run"
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("1\n")
        return (
            "whole page cache dropped via /proc/sys/vm/drop_caches, files evicted before each run"
        )
    except OSError as exc:
        return (
            f"cannot drop the whole page cache ({exc.strerror}: needs root); using "
            "posix_fadvise(DONTNEED) per file"
        )


def timed(fn, repeats: int, before=None) -> list[float]:
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def report(title: str, res: dict[str, list[float]], n: int) -> None:
    naive_pth_t = min(res["naive/pth"])
    naive_st_t = min(res["naive/safetensors (mmap)"])
    floor_t = min(res["floor (read conv bytes)"])
    print(f"\n{title} (min and median of {n} runs, seconds)")
    print(
        f"  {'variant':30s} {'min':>8s} {'median':>8s} {'vs naive/pth':>13s} {'vs naive/st':>12s} "
        f"{'vs floor':>9s}"
    )
    for name, ts in res.items():
        best = min(ts)
        print(
            f"  {name:30s} {best:8.4f} {statistics.median(ts):8.4f} "
            f"{naive_pth_t / best:12.1f}x {naive_st_t / best:11.1f}x {best / floor_t:8.2f}x"
        )
    best_st = min(res["polarpack/safetensors"])
    speedup, vs_floor = naive_pth_t / best_st, best_st / floor_t
    print(
        "  target 1: polarpack/safetensors vs naive (torch.load without mmap + numpy): "
        f"{speedup:.1f}x faster (target >= 20x: {'met' if speedup >= 20 else 'NOT met'})"
    )
    print(
        f"  target 2: polarpack/safetensors vs one read of the conv bytes: {vs_floor:.2f}x the "
        f"floor's time (target <= 2x: {'met' if vs_floor <= 2 else 'NOT met'})"
    )
    print(
        "  context: vs safetensors.load_file + numpy counts (mmap, itself lazy): "
        f"{naive_st_t / best_st:.1f}x "
        "faster"
    )


def run(args: argparse.Namespace, directory: Path) -> None:
    import numpy as np
    import torch

    from polarpack.sources.extraction import extract

    t0 = time.perf_counter()
    st, pth = build_checkpoints(directory)
    ranges = conv_ranges(st)
    conv_bytes = sum(r[2] for r in ranges)
    print(
        f"polarpack extract benchmark: torch {torch.__version__}, numpy {np.__version__}, "
        f"{os.cpu_count()} CPUs visible, torch threads {torch.get_num_threads()}, "
        f"python {sys.version.split()[0]}"
    )
    print(f"checkpoint: random-init torchvision vgg16, built in {time.perf_counter() - t0:.1f} s")
    print(
        f"  {st.name}: {st.stat().st_size / 1e6:.1f} MB   {pth.name}: "
        f"{pth.stat().st_size / 1e6:.1f} MB   "
        f"conv kernels: {len(ranges)} tensors, {conv_bytes / 1e6:.1f} MB "
        f"({100 * conv_bytes / st.stat().st_size:.1f}% of the file)"
    )

    variants = {
        "polarpack/safetensors": lambda: extract(st, hash_file=False),
        "polarpack/pth": lambda: extract(pth, hash_file=False),
        "polarpack/safetensors+sha256": lambda: extract(st),
        "polarpack/st pattern": lambda: extract(st, hash_file=False, granularity="pattern"),
        "naive/pth": lambda: naive_pth(pth),
        "naive/safetensors (mmap)": lambda: naive_safetensors(st),
        "floor (read conv bytes)": lambda: read_floor(st, ranges),
    }

    # correctness: every method gives the same counts
    ref = naive_pth(pth)
    for name in ("polarpack/safetensors", "polarpack/pth", "polarpack/st pattern"):
        got = {layer.name: layer.counts for layer in variants[name]()}
        assert got == ref, f"{name} disagrees with the naive counts"
    assert naive_safetensors(st) == ref
    assert read_floor(st, ranges) == conv_bytes
    print(
        f"counts agree across methods ({len(ref)} conv layers, "
        f"{sum(sum(c) for c in ref.values()):,} weights)"
    )

    # warm cache: read every file once, then time
    for p in (st, pth):
        with open(p, "rb") as fh:
            while fh.read(1 << 24):
                pass
    report(
        "warm page cache (each file read once before timing)",
        {name: timed(fn, args.repeats) for name, fn in variants.items()},
        args.repeats,
    )
    if args.cold_repeats > 0:
        note = try_drop_caches(args.drop_caches)
        if evict(st, pth):
            cold = {
                name: timed(fn, args.cold_repeats, before=lambda: evict(st, pth))
                for name, fn in variants.items()
            }
            report(f"cold page cache ({note})", cold, args.cold_repeats)
        else:
            print(f"\ncold page cache: not measured ({note}; posix_fadvise failed)")
    print(
        "\nnotes: 'vs naive' = naive time / variant time (speed-up); 'vs floor' = variant time / "
        "floor time. +sha256 hashes the whole file for source.sha256 (CLI default; --no-hash "
        "skips it); 'st pattern' keeps the exact sign pattern (--granularity pattern)."
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where to write the checkpoints (default: a temp dir, removed)",
    )
    ap.add_argument(
        "--repeats", type=int, default=5, help="timed runs per variant, warm cache (default 5)"
    )
    ap.add_argument(
        "--cold-repeats",
        type=int,
        default=3,
        help="timed runs per variant, cold cache (default 3; 0 skips)",
    )
    ap.add_argument(
        "--drop-caches",
        action="store_true",
        help="also drop the whole page cache once (root only; affects the machine)",
    )
    args = ap.parse_args(argv)
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
        run(args, args.dir)
        return 0
    with tempfile.TemporaryDirectory(prefix="polarpack-bench-") as tmp:
        run(args, Path(tmp))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
