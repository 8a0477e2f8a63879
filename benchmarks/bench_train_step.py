"""Training-step benchmarks for the small AlexNet (3.7 M conv weights, channels_last as in
training), each against a baseline measured in the same run and printed as a ratio.

1. the sign projection vs the prior-work Keras way (per layer: weights to numpy, a mask, a random
   number for every weight, write back)                                  target: >= 5x faster
2. the projection vs the floor of reading the weights and targets once (a copy of the same bytes)
                                                                        target: within 5x
3. a whole constrained training step vs the same step unconstrained, both zero modes (fp32, or bf16
   autocast with --precision bf16), and the optimizer's share of the step
                                                              target: projection <= 1% of a step
4. polarpack's training loop images/s vs a minimal hand-written loop   target: within 3%

The projection is timed on the state a real Adam step leaves (weights restored before each
repetition), so the violation count is realistic. Run: python benchmarks/bench_train_step.py
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from polarpack.models import build_model
from polarpack.sources.presets import get_preset
from polarpack.training.constraints import SignConstraint
from polarpack.training.data import load_splits, prepare_batch
from polarpack.training.loop import TrainConfig, train
from polarpack.training.materialization import materialize

CL = torch.channels_last


def best_of(fn, repeat: int, setup=None) -> float:
    times = []
    for _ in range(repeat):
        if setup:
            setup()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def naive_projection(layers, eps: float, rng: np.random.Generator) -> None:
    """The prior-work way: numpy round trip, random numbers for every weight."""
    for w, t in layers:
        wn = w.detach().permute(0, 2, 3, 1).numpy().copy()
        tn = t.permute(0, 2, 3, 1).numpy().astype(np.float32)
        reset = tn * rng.uniform(0, eps, size=wn.shape).astype(np.float32)
        w.data.copy_(torch.from_numpy(np.where(wn * tn < 0, reset, wn)).permute(0, 3, 1, 2))


def constrained_model(zeros: str):
    """A fresh channels_last AlexNet-small after one real Adam step, with its constraint."""
    model = build_model("alexnet")
    mat = materialize(get_preset("paper:alexnet").distribution, model, seed=0)
    mat.apply_(model)
    model.to(memory_format=CL)
    constraint = SignConstraint(model, mat.targets, zeros=zeros)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x, y = torch.randn(1000, 3, 32, 32).contiguous(memory_format=CL), torch.randint(0, 10, (1000,))
    F.cross_entropy(model(x), y).backward()
    opt.step()
    return model, constraint, opt, x, y


def projection(args) -> None:
    print(f"\n1-2. sign projection on 3.7 M conv weights (ms, best of {args.repeat})")
    rng = np.random.default_rng(0)
    for zeros in ("free", "pin"):
        projection_times(zeros, args, rng)


def projection_times(zeros: str, args, rng) -> None:
    model, c, *_ = constrained_model(zeros)
    convs = [layer.weight for layer in c.layers]
    snapshot = [w.detach().clone() for w in convs]

    def restore():
        with torch.no_grad():
            for w, s in zip(convs, snapshot, strict=True):
                w.copy_(s)

    targets = [layer.target for layer in c.layers]
    floor = best_of(
        lambda: [(w.detach().clone(), t.clone()) for w, t in zip(convs, targets, strict=True)],
        args.repeat,
    )
    naive = best_of(
        lambda: naive_projection(list(zip(convs, targets, strict=True)), 1e-3, rng),
        args.repeat,
        restore,
    )
    restore()
    violations = c.count_violations()
    ours = best_of(lambda: c.project_(torch.Generator()), args.repeat, restore)
    print(
        f"   zeros={zeros:<4} violations {violations:>7}  polarpack {ours * 1e3:6.2f}  naive "
        f"{naive * 1e3:7.2f}  copy floor {floor * 1e3:5.2f}  speed-up vs naive "
        f"{naive / ours:5.1f}x  vs floor {ours / floor:4.2f}x"
    )


def step(args) -> None:
    print(
        f"\n3. training step, batch 1000, {args.precision} (s per step, median of "
        f"{args.repeat // 2} x {args.steps} steps)"
    )
    for zeros in ("free", "pin"):
        step_times(zeros, args)


def step_times(zeros: str, args) -> None:
    bf16 = args.precision == "bf16"
    model, c, opt, x, y = constrained_model(zeros)

    def steps(constrained: bool):
        def run():
            generator = torch.Generator()
            for _ in range(args.steps):
                opt.zero_grad(set_to_none=True)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    loss = F.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                if constrained:
                    c.project_(generator)

        return run

    plain, constrained = [], []
    for _ in range(max(args.repeat // 2, 3)):  # interleaved, so both share the machine's noise
        plain.append(best_of(steps(False), 1) / args.steps)
        constrained.append(best_of(steps(True), 1) / args.steps)
    p, q = statistics.median(plain), statistics.median(constrained)
    proj = best_of(lambda: c.project_(torch.Generator()), args.repeat)
    adam = best_of(opt.step, args.repeat)  # the optimizer's share: what a fused Adam could take
    print(
        f"   zeros={zeros:<4} unconstrained {p:.4f}  constrained {q:.4f}  overhead "
        f"{100 * (q / p - 1):+.2f}%  "
        f"(projection alone {proj * 1e3:.2f} ms = {100 * proj / p:.2f}% of a step, "
        f"Adam alone {adam * 1e3:.0f} ms = {100 * adam / p:.1f}%)"
    )


def loop(args) -> None:
    print("\n4. training loop throughput on fashion-mnist-mini (2000 images, batch 500, 3 epochs)")
    cfg = TrainConfig(
        method="scratch",
        dataset="fashion-mnist-mini",
        train_size=2000,
        val_size=100,
        batch_size=500,
        epochs=3,
    )
    with tempfile.TemporaryDirectory() as tmp:
        ours = statistics.median(
            r["images_per_second"] for r in train(cfg, out=tmp, progress=False).metrics
        )
    train_set, _ = load_splits("fashion-mnist-mini", train_size=2000, val_size=100, seed=0)
    net = build_model("alexnet").to(memory_format=CL)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    g, rates = torch.Generator().manual_seed(0), []
    for _ in range(3):
        t0 = time.perf_counter()
        for idx in torch.randperm(2000, generator=g).split(500):
            xb = prepare_batch(train_set.images[idx], train_set.mean, train_set.std).contiguous(
                memory_format=CL
            )
            loss = F.cross_entropy(net(xb), train_set.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        rates.append(2000 / (time.perf_counter() - t0))
    minimal = statistics.median(rates)
    print(
        f"   polarpack loop {ours:7.1f} img/s   minimal loop {minimal:7.1f} img/s   ratio "
        f"{ours / minimal:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--steps", type=int, default=3, help="training steps per timing in part 3")
    parser.add_argument("--parts", default="1234", help="which parts to run, e.g. 12")
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=("fp32", "bf16"),
        help="part 3: bf16 autocast as `--precision bf16` trains (native on avx512_bf16/AMX CPUs)",
    )
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{torch.backends.cpu.get_cpu_capability()}"
    )
    if "1" in args.parts or "2" in args.parts:
        projection(args)
    if "3" in args.parts:
        step(args)
    if "4" in args.parts:
        loop(args)


if __name__ == "__main__":
    main()
