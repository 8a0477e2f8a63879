"""Build polarpack/assets/fashion_mnist_mini.npz, the offline default dataset, from the IDX files.

Why: `fashion-mnist-mini` lets every test, example and first run train without data or network.
It is a class-balanced subset (200 train and 50 test images per class) of the original
Fashion-MNIST (MIT licence, Zalando SE 2017), picked with
`polarpack.training.data.balanced_subset` and `torch.Generator().manual_seed(0)` (train) /
`manual_seed(1)` (test). The zip entries carry a fixed timestamp, so the same inputs give the same
bytes.

Inputs (md5 of the uncompressed IDX content, as in ../shared/data/README.md):
    train-images-idx3-ubyte f4a8712d7a061bf5bd6d2ca38dc4d50a
    train-labels-idx1-ubyte 9018921c3c673c538a1fc5bad174d6f9
    t10k-images-idx3-ubyte  8181f5470baa50b63fa0f6fddb340f0a
    t10k-labels-idx1-ubyte  15d484375f8d13e6eb1aabb0c3f46965

Run from the repository root (the md5s and the seeds are also stored in the file's `meta`):

    python tools/make_fashion_mnist_mini.py --source ../shared/data/FashionMNIST/raw

Output with torch 2.14.1 / numpy 2.4: 1,094,574 bytes, md5 5850d992345842afcad5f7361674b088.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import torch

from polarpack._io import atomic_write_bytes
from polarpack.training.data import FASHION_MNIST_CLASSES, balanced_subset, read_idx

REPO = Path(__file__).resolve().parents[1]
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SEEDS = {"train": 0, "test": 1}


def _find(folder: Path, stem: str) -> Path:
    for path in (folder / stem, folder / f"{stem}.gz"):
        if path.is_file():
            return path
    raise SystemExit(
        f"{folder}: {stem}[.gz] not found; pass --source DIR holding the Fashion-MNIST IDX files"
    )


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """np.savez_compressed, but with fixed zip timestamps so the output is reproducible."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            body = io.BytesIO()
            np.lib.format.write_array(body, np.ascontiguousarray(arr), allow_pickle=False)
            zf.writestr(info, body.getvalue(), compresslevel=9)
    return buf.getvalue()


def build(source: Path, out: Path, train_size: int, test_size: int) -> dict:
    arrays: dict[str, np.ndarray] = {}
    md5: dict[str, str] = {}
    for split, (img_stem, lab_stem) in FILES.items():
        images, labels = read_idx(_find(source, img_stem)), read_idx(_find(source, lab_stem))
        for stem, arr in ((img_stem, images), (lab_stem, labels)):
            # read_idx drops the header; rebuild it to hash exactly the uncompressed file.
            md5[stem] = hashlib.md5(_idx_bytes(arr)).hexdigest()
        size = train_size if split == "train" else test_size
        idx = balanced_subset(
            torch.from_numpy(labels.astype(np.int64)),
            size,
            torch.Generator().manual_seed(SEEDS[split]),
        )
        arrays[f"{split}_images"] = images[idx.numpy()]
        arrays[f"{split}_labels"] = labels[idx.numpy()].astype(np.uint8)
        arrays[f"{split}_source_index"] = idx.numpy().astype(np.int32)
    arrays["classes"] = np.array(FASHION_MNIST_CLASSES)
    meta = {
        "dataset": "Fashion-MNIST (Xiao, Rasul, Vollgraf 2017), class-balanced subset",
        "license": "MIT, Copyright (c) 2017 Zalando SE",
        "source_md5_uncompressed": md5,
        "seeds": SEEDS,
        "selection": "polarpack.training.data.balanced_subset(labels, size, "
        "torch.Generator().manual_seed(seed))",
        "builder": "tools/make_fashion_mnist_mini.py",
    }
    arrays["meta"] = np.array(json.dumps(meta, sort_keys=True))
    atomic_write_bytes(out, _npz_bytes(arrays))
    return meta


def _idx_bytes(arr: np.ndarray) -> bytes:
    """Re-serialise an IDX array (header + body) exactly as the original uncompressed file."""
    header = bytes([0, 0, 0x08, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    return header + arr.tobytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source", type=Path, default=REPO.parent / "shared" / "data" / "FashionMNIST" / "raw"
    )
    parser.add_argument(
        "--out", type=Path, default=REPO / "polarpack" / "assets" / "fashion_mnist_mini.npz"
    )
    parser.add_argument(
        "--train", type=int, default=2000, help="training images (balanced over the 10 classes)"
    )
    parser.add_argument(
        "--test", type=int, default=500, help="test images (balanced over the 10 classes)"
    )
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = build(args.source, args.out, args.train, args.test)
    data = args.out.read_bytes()
    print(f"wrote {args.out} ({len(data)} bytes, md5 {hashlib.md5(data).hexdigest()})")
    print(json.dumps(meta["source_md5_uncompressed"], indent=2))


if __name__ == "__main__":
    main()
