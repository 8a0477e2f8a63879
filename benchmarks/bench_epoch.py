"""Seconds per seed-protocol epoch (10,000 CIFAR-10 training images at batch 1000, then 10,000
validation images; small geometry, 32 px) for each model on this machine's threads, with the paths
the trainer chooses between measured side by side in the same run, as ratios:

* memory format, fp32: channels_last (what `train` uses) vs contiguous, one training step of 1000
  images plus one validation batch of 1000;
* precision: bf16 autocast vs fp32. Where the CPU computes bf16 natively (avx512_bf16/AMX) both are
  full epochs; where it does not, bf16 is emulated and an epoch would take the better part of an
  hour, so both are timed on one training step of 100 images instead.

    python benchmarks/bench_epoch.py --data-dir ../shared/data [--models zfnet alexnet mobilenet_v2]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
import torch.nn.functional as F

from polarpack.models import build_model
from polarpack.training.loop import TrainConfig, cpu_has_native_bf16, train


def epoch(model: str, data_dir: str, precision: str) -> dict:
    method, dist = (
        ("freeze-spin", "paper:alexnet") if model in ("alexnet", "zfnet") else ("scratch", None)
    )
    config = TrainConfig(
        method=method,
        dist=dist,
        model=model,
        dataset="cifar10",
        data_dir=data_dir,
        epochs=1,
        precision=precision,
    )
    with tempfile.TemporaryDirectory() as tmp:
        return train(config, out=tmp, progress=False).metrics[-1]


def step_seconds(
    name: str, batch: int, memory_format, precision: str, repeat: int = 3
) -> tuple[float, float]:
    """Best-of-`repeat` seconds of one Adam training step and of one evaluation pass of `batch`
    images."""
    model = build_model(name).to(memory_format=memory_format)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=memory_format)
    y = torch.randint(0, 10, (batch,))
    train_s, eval_s = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(x)
        loss = F.cross_entropy(out.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        t1 = time.perf_counter()
        with (
            torch.no_grad(),
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"),
        ):
            model.eval()(x)
        model.train()
        train_s.append(t1 - t0)
        eval_s.append(time.perf_counter() - t1)
    return min(train_s), min(eval_s)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--models", nargs="+", default=["zfnet", "alexnet", "mobilenet_v2"])
    args = parser.parse_args()
    native = cpu_has_native_bf16()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{torch.backends.cpu.get_cpu_capability()}, "
        f"native bf16: {native}"
    )
    for model in args.models:
        row = epoch(model, args.data_dir, "fp32")
        print(
            f"\n{model}: fp32 seed-protocol epoch {row['epoch_seconds']:.1f} s "
            f"({row['train_seconds']:.1f} train + "
            f"{row['epoch_seconds'] - row['train_seconds']:.1f} validation); 20 epochs ~ "
            f"{20 * row['epoch_seconds'] / 60:.1f} min"
        )
        (cl_t, cl_e), (c_t, c_e) = (
            step_seconds(model, 1000, f, "fp32")
            for f in (torch.channels_last, torch.contiguous_format)
        )
        print(
            f"  fp32 step / eval batch: channels_last {cl_t:.2f} / {cl_e:.2f} s, contiguous "
            f"{c_t:.2f} / {c_e:.2f} s: {c_t / cl_t:.2f}x / {c_e / cl_e:.2f}x faster in "
            "channels_last"
        )
        if native:
            bf = epoch(model, args.data_dir, "bf16")
            print(
                f"  bf16 epoch {bf['epoch_seconds']:.1f} s: "
                f"{row['epoch_seconds'] / bf['epoch_seconds']:.2f}x faster than fp32"
            )
        else:
            (f_t, _), (b_t, _) = (
                step_seconds(model, 100, torch.channels_last, p, repeat=1) for p in ("fp32", "bf16")
            )
            print(
                f"  one step of 100 images: fp32 {f_t:.2f} s, bf16 (emulated) {b_t:.2f} s: bf16 is "
                f"{b_t / f_t:.0f}x slower here, so precision auto picks fp32"
            )


if __name__ == "__main__":
    main()
