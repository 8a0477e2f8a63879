"""Local response normalisation in the paper's 224-px ZFNet (LRN after conv1 and conv2), on 2 CPU
threads, with three LRNs swapped into the same network and timed interleaved (medians of the
times, and of the per-repeat ratios):

* torch:     `torch.nn.LocalResponseNorm` (a 3-D average pool over the squared activations)
* polarpack: `polarpack.models.LocalResponseNorm` (a banded 1x1 convolution, written-out backward)
* identity:  no LRN at all, the floor                     target: polarpack/identity <= 1.3x

1. a training step (forward, backward, Adam; channels_last; bf16 autocast where the CPU computes
   bf16 natively, else fp32) and a validation pass (eval mode, no grad) per 100 images, with the
   paper's protocol's epoch (10,000 training + 10,000 validation images) and 20-epoch run estimated
   from the per-image times; malloc keeps freed memory as `polarpack` sets it
   (`polarpack.training.loop.keep_freed_memory`; `--malloc-default` measures without it);
2. the LRN alone on conv1's activation (forward + backward), against two rewrites that lose:
   a cumulative sum over channels, and the banded convolution with autograd's own backward.

    python benchmarks/bench_lrn.py [--precision auto|fp32|bf16] [--batch 50] [--repeat 7]
                                   [--malloc-default]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from polarpack.models import LocalResponseNorm, build_model, local_response_norm
from polarpack.training.loop import cpu_has_native_bf16, keep_freed_memory

PAPER = dict(size=5, alpha=1e-4, beta=0.75, k=2.0)
CL = torch.channels_last
TRAIN_IMAGES = VAL_IMAGES = 10_000


def lrn_cumsum(x: torch.Tensor) -> torch.Tensor:
    """The window as a difference of cumulative sums over channels, in fp32."""
    size, alpha, beta, k = PAPER.values()
    cums = F.pad((x.float() * x.float()).cumsum(1), (0, 0, 0, 0, 1, 0))  # cums[:, c] = sum x^2 < c
    channels = x.shape[1]
    hi = (torch.arange(channels) + (size - 1) // 2 + 1).clamp(max=channels)
    lo = (torch.arange(channels) - size // 2).clamp(min=0)
    window = cums[:, hi] - cums[:, lo]
    return (x / (k + alpha / size * window).pow(beta)).to(x.dtype)


def lrn_conv_autograd(x: torch.Tensor) -> torch.Tensor:
    """The banded 1x1 convolution, differentiated by autograd."""
    size, alpha, beta, k = PAPER.values()
    c = x.shape[1]
    band = torch.ones(c, c, dtype=x.dtype).triu(-(size // 2)).tril((size - 1) // 2)
    d = F.conv2d(
        x * x, (band * (alpha / size))[:, :, None, None], torch.full((c,), k, dtype=x.dtype)
    )
    return x * d.pow(-beta)


def interleaved(fns: dict, repeat: int) -> dict[str, list[float]]:
    """Seconds of each fn per repeat, alternating between them so they share the machine's noise."""
    for fn in fns.values():
        fn()  # warm-up: oneDNN primitives, allocator
    times = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def ratio(times: dict[str, list[float]], a: str, b: str) -> float:
    """Median of the per-repeat ratios a/b: neighbours in time, so slow drifts cancel."""
    return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))


def network(args, bf16: bool) -> None:
    torch.manual_seed(0)
    model = build_model("zfnet", geometry="imagenet").to(memory_format=CL)
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    x = torch.randn(args.batch, 3, 224, 224).contiguous(memory_format=CL)
    y = torch.randint(0, 10, (args.batch,))
    x_val = torch.randn(100, 3, 224, 224).contiguous(memory_format=CL)
    lrns = {
        "torch": nn.LocalResponseNorm(**PAPER),
        "polarpack": LocalResponseNorm(**PAPER),
        "identity": nn.Identity(),
    }

    def train_step(lrn):
        def run():
            model.lrn = lrn
            model.train()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return run

    def validate(lrn):
        def run():
            model.lrn = lrn
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                model.eval()(x_val)

        return run

    step = interleaved({n: train_step(lrn) for n, lrn in lrns.items()}, args.repeat)
    val = interleaved({n: validate(lrn) for n, lrn in lrns.items()}, args.repeat)
    print(
        f"\n1. 224-px ZFNet, {'bf16 autocast' if bf16 else 'fp32'}, channels_last "
        f"(medians of {args.repeat} interleaved repeats)"
    )
    print("   LRN        train step  val / 100 img  epoch (est.)  20 epochs (est.)")
    for name in lrns:
        train_s, val_s = statistics.median(step[name]), statistics.median(val[name])
        epoch = TRAIN_IMAGES * train_s / args.batch + VAL_IMAGES * val_s / 100
        print(
            f"   {name:<10} {train_s:8.2f} s  {val_s:10.2f} s  {epoch / 60:8.1f} min  "
            f"{20 * epoch / 3600:10.2f} h"
        )
    for what, t, target in (("train step", step, " (target <= 1.3x)"), ("validation", val, "")):
        print(
            f"   {what}: polarpack / identity {ratio(t, 'polarpack', 'identity'):.2f}x{target}, "
            f"torch / polarpack {ratio(t, 'torch', 'polarpack'):.2f}x"
        )


def lrn_alone(args, bf16: bool) -> None:
    dtype = torch.bfloat16 if bf16 else torch.float32
    x0 = (torch.randn(args.batch, 96, 110, 110) * 4).relu().to(dtype).contiguous(memory_format=CL)
    grad = torch.randn_like(x0)
    candidates = {
        "torch": lambda t: F.local_response_norm(t, **PAPER),
        "cumsum fp32": lrn_cumsum,
        "conv, autograd bwd": lrn_conv_autograd,
        "polarpack": lambda t: local_response_norm(t, **PAPER),
    }

    def forward_backward(fn):
        def run():
            x = x0.detach().requires_grad_()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = fn(x)
            out.backward(grad.to(out.dtype))

        return run

    t = interleaved({n: forward_backward(fn) for n, fn in candidates.items()}, args.repeat)
    print(f"\n2. LRN alone on conv1's activation {tuple(x0.shape)}, forward + backward")
    for name in candidates:
        print(
            f"   {name:<20} {statistics.median(t[name]) * 1e3:7.0f} ms  "
            f"({ratio(t, name, 'polarpack'):.2f}x polarpack)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--batch", type=int, default=50, help="training batch (validation: 100)")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--parts", default="12", help="which parts to run, e.g. 1")
    parser.add_argument(
        "--malloc-default",
        action="store_true",
        help="leave glibc's malloc as it is (polarpack's command line keeps freed memory)",
    )
    args = parser.parse_args()
    kept = not args.malloc_default and keep_freed_memory()
    torch.set_num_threads(2)
    native = cpu_has_native_bf16()
    bf16 = args.precision == "bf16" or (args.precision == "auto" and native)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {native}, batch {args.batch}, "
        f"malloc keeps freed memory: {kept}"
    )
    if "1" in args.parts:
        network(args, bf16)
    if "2" in args.parts:
        lrn_alone(args, bf16)


if __name__ == "__main__":
    main()
