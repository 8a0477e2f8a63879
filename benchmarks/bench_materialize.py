"""Materialization speed: AlexNet's conv layers (3.7 M weights) from `paper:alexnet`, versus a naive
per-weight Python sampler on a slice (extrapolated), in one run.

Target: well under 100 ms for the whole of AlexNet's conv layers. Run:
    python benchmarks/bench_materialize.py
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from polarpack.models import build_model
from polarpack.sources.presets import get_preset
from polarpack.training.materialization import largest_remainder_counts, materialize


def naive_signs(n: int, proportions, seed: int) -> list[int]:
    """One Python draw per weight: what a straightforward port of rand([0,-1,+1], P) does."""
    n0, n_neg, _ = largest_remainder_counts(proportions, n)
    pattern = [0] * n0 + [-1] * n_neg + [1] * (n - n0 - n_neg)
    random.Random(seed).shuffle(pattern)
    return pattern


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    dist = get_preset("paper:alexnet").distribution
    # built once: the benchmark times sampling, not model construction
    model = build_model("alexnet")
    n = sum(m.weight.numel() for name, m in model.named_modules() if name.startswith("conv"))
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; AlexNet conv weights: {n:,}"
    )
    best = {}
    for sampling in ("exact", "iid"):
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            materialize(dist, model, seed=0, sampling=sampling)
            times.append(time.perf_counter() - t0)
        best[sampling] = min(times)
        print(
            f"  polarpack materialize ({sampling:<5}) min {min(times) * 1e3:7.1f} ms   median "
            f"{statistics.median(times) * 1e3:7.1f} ms"
        )
    slice_n = 200_000
    t0 = time.perf_counter()
    naive_signs(slice_n, dist["conv2"].proportions, 0)
    naive = (time.perf_counter() - t0) * n / slice_n
    exact = best["exact"]
    print(
        f"  naive Python sampler (signs only, extrapolated from {slice_n:,} weights): "
        f"{naive * 1e3:7.1f} ms"
    )
    print(
        "  speed-up of polarpack (signs and magnitudes) over naive signs alone: "
        f"{naive / exact:.1f}x"
    )
    print(f"  target: well under 100 ms -> {'met' if exact < 0.1 else 'NOT met'}")


if __name__ == "__main__":
    main()
