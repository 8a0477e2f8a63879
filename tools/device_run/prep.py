"""Pack what a GPU run of the evidence grids needs into .gpu/ (git-ignored), small enough to travel with
the working tree to a lent accelerator (this workplace carries at most 64 MiB, the repo included).

The seed protocol trains on a class-balanced 10,000-image subset per seed, so the CIFAR-10 JPEGs and the
Fashion-MNIST images that seeds 0-2 never pick are left out: on the device `drive.py` rebuilds the folders
with placeholders in their place (same files, same labels, so the same subsets are picked) and checks, with
the device's torch, that every picked image is a real one. Also packed: the MobileNetV2 checkpoint the
ladder fine-tunes, and the commit the runs record (the device's copy has no .git).

    python tools/device_run/prep.py [--data ../shared/data]      # from the repo root; ~60 MB in .gpu/
"""

from __future__ import annotations

import argparse
import gzip
import json
import lzma
import shutil
import subprocess
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from polarpack.data import balanced_subset, read_idx

SEEDS, TRAIN_SIZE = (0, 1, 2), 10_000


def picked(labels: torch.Tensor) -> list[int]:
    return sorted({i for s in SEEDS for i in balanced_subset(labels, TRAIN_SIZE, torch.Generator().manual_seed(s))
                   .tolist()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=Path(".gpu"))
    args = parser.parse_args()
    src, out = args.data, args.out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    manifest: dict = {"seeds": SEEDS, "train_size": TRAIN_SIZE}
    blob, lengths = bytearray(), []
    for split in ("train", "test"):  # CIFAR-10: the JPEG bytes of the kept files, back to back
        root = src / "cifar10-jpeg" / split
        samples = make_dataset(str(root), {c: i for i, c in enumerate(find_classes(root)[0])}, IMG_EXTENSIONS)
        labels = torch.tensor([t for _, t in samples])
        keep = picked(labels) if split == "train" else list(range(len(samples)))
        for i in keep:
            data = Path(samples[i][0]).read_bytes()
            blob += data
            lengths.append(len(data))
        manifest[f"cifar_{split}"] = {"files": [str(Path(p).relative_to(root.parent)) for p, _ in samples],
                                      "keep": keep}
    (out / "cifar.bin").write_bytes(bytes(blob))
    manifest["cifar_lengths"] = lengths
    raw = src / "FashionMNIST" / "raw"  # Fashion-MNIST: images no seed picks are zeroed, then xz
    keep = picked(torch.from_numpy(read_idx(raw / "train-labels-idx1-ubyte.gz").astype(np.int64)))
    data = gzip.open(raw / "train-images-idx3-ubyte.gz").read()
    images = np.frombuffer(data, np.uint8, offset=16).reshape(-1, 784).copy()
    mask = np.zeros(len(images), bool)
    mask[keep] = True
    images[~mask] = 0
    (out / "fmnist-train-images.xz").write_bytes(lzma.compress(data[:16] + images.tobytes(), preset=9))
    manifest["fmnist_train_keep"] = keep
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        shutil.copy(raw / name, out / name)
    shutil.copy(src / "weights" / "mobilenet_v2-b0353104.pth", out)
    (out / "manifest.json.gz").write_bytes(gzip.compress(json.dumps(manifest).encode(), 9))
    commit = subprocess.run(["git", "describe", "--always", "--abbrev=40", "--exclude=*", "--dirty=+dirty"],
                            capture_output=True, text=True, check=True).stdout.strip()
    (out / "commit").write_text(commit + "\n")
    total = sum(p.stat().st_size for p in out.iterdir())
    print(f"{out}: {total / 2**20:.1f} MiB for commit {commit}; carry it: run(carry=['.gpu'], "
          "command='python3 tools/device_run/drive.py')")


if __name__ == "__main__":
    main()
