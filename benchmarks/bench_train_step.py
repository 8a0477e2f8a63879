"""Training-step benchmarks for the small AlexNet (3.7 M conv weights), each against a baseline
measured in the same run, printed as a ratio.

1. the sign projection vs the naive way of the prior-work Keras code (per layer: weights to numpy,
   a mask, a random number for every weight, write back)            target: >= 5x faster
2. the projection vs the floor of reading the weights and targets once (a copy of the same bytes)
                                                                       target: within 2x
3. a whole constrained training step vs the same step unconstrained   target: <= 1% overhead
4. polarpack's training loop images/s vs a minimal hand-written loop  target: within 3%

The projection is timed on the state a real Adam step leaves (weights restored before each
repetition), so the violation count is realistic. Run: python benchmarks/bench_train_step.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from polarpack.constraints import SignConstraint
from polarpack.data import load_splits, prepare_batch
from polarpack.materialize import materialize
from polarpack.models import build_model
from polarpack.presets import get_preset
from polarpack.train import TrainConfig, train


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
        wn = w.detach().numpy().copy()
        tn = t.numpy().astype(np.float32)
        mask = wn * tn < 0
        reset = tn * rng.uniform(0, eps, size=wn.shape).astype(np.float32)
        w.data.copy_(torch.from_numpy(np.where(mask, reset, wn)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--steps", type=int, default=6, help="training steps per timing in part 3")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    dist = get_preset("paper:alexnet").distribution
    model = build_model("alexnet")
    mat = materialize(dist, model, seed=0)
    mat.apply_(model)
    x = torch.randn(1000, 3, 32, 32)
    y = torch.randint(0, 10, (1000,))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    F.cross_entropy(model(x), y).backward()
    opt.step()  # a real step: the projection below sees a realistic set of violations
    convs = [model.get_submodule(n).weight for n in mat.targets]
    snapshot = [w.detach().clone() for w in convs]

    def restore():
        with torch.no_grad():
            for w, s in zip(convs, snapshot):
                w.copy_(s)

    # 1 + 2: projection vs naive vs copy floor, both zero modes
    print("\n1-2. sign projection on 3.7 M conv weights (ms, best of %d)" % args.repeat)
    rng = np.random.default_rng(0)
    targets = list(mat.targets.values())
    floor = best_of(lambda: [(w.detach().clone(), t.clone()) for w, t in zip(convs, targets)], args.repeat)
    naive = best_of(lambda: naive_projection(list(zip(convs, targets)), 1e-3, rng), args.repeat, restore)
    for zeros in ("free", "pin"):
        c = SignConstraint(model, mat.targets, zeros=zeros)
        restore()
        violations = c.count_violations()
        ours = best_of(c.project_, args.repeat, restore)
        print(f"   zeros={zeros:<4}  violations {violations:>8}  polarpack {ours * 1e3:7.2f}   naive {naive * 1e3:7.2f}   "
              f"copy floor {floor * 1e3:6.2f}   speed-up vs naive {naive / ours:5.1f}x   vs floor {ours / floor:4.2f}x")

    # 3: whole step, constrained vs unconstrained (interleaved to share machine noise)
    print(f"\n3. training step, batch 1000 (s per step, median of {args.repeat // 2} x {args.steps} steps)")
    c = SignConstraint(model, mat.targets, zeros="pin")

    def steps(constrained: bool):
        def run():
            for _ in range(args.steps):
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(x), y).backward()
                opt.step()
                if constrained:
                    c.project_()
        return run

    plain, constrained = [], []
    for _ in range(max(args.repeat // 2, 3)):
        plain.append(best_of(steps(False), 1) / args.steps)
        constrained.append(best_of(steps(True), 1) / args.steps)
    p, q = statistics.median(plain), statistics.median(constrained)
    proj = best_of(c.project_, args.repeat)
    print(f"   unconstrained {p:.4f}   constrained {q:.4f}   overhead {100 * (q / p - 1):+.2f}% "
          f"(projection alone {proj * 1e3:.2f} ms = {100 * proj / p:.2f}% of a step)")

    # 4: the loop's images/s vs a minimal hand-written loop, same model, data and batch
    print("\n4. training loop throughput on fashion-mnist-mini (2000 images, batch 500, 3 epochs)")
    cfg = TrainConfig(method="scratch", dataset="fashion-mnist-mini", train_size=2000, val_size=100, batch_size=500, epochs=3)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        result = train(cfg, out=tmp, progress=False)
    ours = statistics.median(r["images_per_second"] for r in result.metrics)
    train_set, _ = load_splits("fashion-mnist-mini", train_size=2000, val_size=100, seed=0)
    net = build_model("alexnet")
    opt2 = torch.optim.Adam(net.parameters(), 1e-3)
    g = torch.Generator().manual_seed(0)
    rates = []
    for _ in range(3):
        t0 = time.perf_counter()
        for idx in torch.randperm(2000, generator=g).split(500):
            xb = prepare_batch(train_set.images[idx], train_set.mean, train_set.std)
            loss = F.cross_entropy(net(xb), train_set.labels[idx])
            opt2.zero_grad()
            loss.backward()
            opt2.step()
        rates.append(2000 / (time.perf_counter() - t0))
    minimal = statistics.median(rates)
    print(f"   polarpack loop {ours:7.1f} img/s   minimal loop {minimal:7.1f} img/s   ratio {ours / minimal:.3f}")


if __name__ == "__main__":
    main()
