"""A fingerprint of the training numerics: hashes of what short runs of every method produce, and
of the data subsets of the paper's protocol. Two commits that print the same lines train
identically, so a grid may continue across them; a changed line means the runs it touches must be
redone.

    python tools/numerics_fingerprint.py --data-dir ../shared/data > before.txt
    ... change the code ...
    python tools/numerics_fingerprint.py --data-dir ../shared/data | diff before.txt -

Not a benchmark of speed: it runs in about two minutes on two cores. Results depend on the torch
build and the CPU (oneDNN picks kernels by instruction set), so compare on one machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from polarpack.models import build_model
from polarpack.training.data import load_splits
from polarpack.training.loop import train

TINY = dict(
    dataset="fashion-mnist-mini", train_size=300, val_size=100, batch_size=100, epochs=2, threads=1
)
RUNS = {
    "freeze-spin pin alexnet": dict(method="freeze-spin", dist="paper:alexnet"),
    "freeze-spin free zfnet": dict(
        method="freeze-spin", dist="paper:table1-exp5", model="zfnet", zeros="free"
    ),
    "fluid-spin flip": dict(method="fluid-spin", dist="paper:alexnet"),
    "fluid-spin permute": dict(
        method="fluid-spin", dist="paper:alexnet", fluid_mode="permute", fluid_fraction=0.1
    ),
    "fluid-spin reset": dict(
        method="fluid-spin", dist="paper:alexnet", fluid_mode="reset", fluid_fraction=0.02
    ),
    "scratch zfnet": dict(method="scratch", model="zfnet"),
    "freeze-in": dict(method="freeze-in"),
    "fluid-in sgd": dict(method="fluid-in", optimizer="sgd", momentum=0.9),
}


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data-dir", default=None, help="the shared data; without it the data lines are skipped"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(123)
        weights = (
            Path(tmp) / "alexnet.safetensors"
        )  # a stand-in "pretrained" checkpoint, the same every time
        save_file(
            {
                k: v.contiguous()
                for k, v in build_model("alexnet", num_classes=1000).state_dict().items()
            },
            str(weights),
        )
        for name, options in RUNS.items():
            extra = {"weights": str(weights)} if options["method"].endswith("-in") else {}
            result = train(
                **TINY, **options, **extra, out=Path(tmp) / name.replace(" ", "_"), progress=False
            )
            metrics = [
                {k: v for k, v in r.items() if "seconds" not in k and k != "images_per_second"}
                for r in result.metrics
            ]
            state = load_file(
                str(result.run_dir / "model.safetensors")
            )  # tensors: the file's header order may vary
            model = b"".join(
                k.encode() + state[k].contiguous().view(torch.uint8).numpy().tobytes()
                for k in sorted(state)
            )
            print(
                f"{name:<26} model {digest(model)}  metrics {digest(json.dumps(metrics).encode())}",
                flush=True,
            )
    if args.data_dir:
        for dataset in ("cifar10", "fashion-mnist"):
            train_set, val_set = load_splits(dataset, data_dir=args.data_dir, seed=0)
            parts = [train_set.images, train_set.labels, val_set.images, val_set.labels]
            print(
                f"{dataset + ' data':<26} "
                + digest(b"".join(t.contiguous().numpy().tobytes() for t in parts)),
                flush=True,
            )


if __name__ == "__main__":
    main()
