"""Seconds per epoch of the seed protocol (10,000 training images, batch 1000, then validation on
10,000 test images) for each model in the small geometry, on this machine's CPU threads.

    python benchmarks/bench_epoch.py --data-dir ../shared/data [--epochs 1] [--models alexnet zfnet]
"""

from __future__ import annotations

import argparse
import tempfile

import torch

from polarpack.train import TrainConfig, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--models", nargs="+", default=["alexnet", "zfnet"])
    parser.add_argument("--datasets", nargs="+", default=["cifar10", "fashion-mnist"])
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'model':<14}{'dataset':<15}{'method':<13}{'epoch s':>8}{'train s':>8}{'val s':>7}{'train img/s':>12}")
    for dataset in args.datasets:
        for model in args.models:
            method, dist = ("freeze-spin", "paper:alexnet") if model in ("alexnet", "zfnet") else ("scratch", None)
            config = TrainConfig(method=method, dist=dist, model=model, dataset=dataset, data_dir=args.data_dir, epochs=args.epochs)
            with tempfile.TemporaryDirectory() as tmp:
                rows = train(config, out=tmp, progress=False).metrics
            last = rows[-1]
            print(f"{model:<14}{dataset:<15}{method:<13}{last['epoch_seconds']:>8.1f}{last['train_seconds']:>8.1f}"
                  f"{last['epoch_seconds'] - last['train_seconds']:>7.1f}{last['images_per_second']:>12.0f}")


if __name__ == "__main__":
    main()
