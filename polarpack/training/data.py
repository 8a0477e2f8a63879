"""Datasets as in-memory uint8 tensors, batched by index: a split of small images fits in memory,
and indexing it with a seeded permutation is faster than a DataLoader and reproducible from one
`torch.Generator`.

Names: ``cifar10``, ``fashion-mnist``, ``fashion-mnist-mini`` (2,000 train + 500 test Fashion-MNIST
images in the package: no data or network needed) and ``imagefolder:PATH``
(``PATH/{train,test}/<class>/*``).

Where data is looked for: DIR is `data_dir` (CLI ``--data-dir``), else ``$POLARPACK_DATA_DIR``, else
``$XDG_CACHE_HOME/polarpack/data`` (``~/.cache/polarpack/data``); first match wins:

- ``cifar10``: ``DIR/cifar-10-batches-py/`` (read by `torchvision.datasets.CIFAR10`, which checks
  the official md5 sums before unpickling), then ``DIR/cifar10-jpeg/`` (an ImageFolder copy of the
  ten classes).
- ``fashion-mnist``: ``DIR/FashionMNIST/raw/`` (torchvision's layout; each IDX file plain or
  ``.gz``).
- ``imagefolder:PATH``: ``PATH``, then ``DIR/PATH`` for a relative ``PATH``.

``download=True`` fetches a missing cifar10/fashion-mnist into DIR with torchvision. Each split is
decoded once, to ``$XDG_CACHE_HOME/polarpack/decoded/*.safetensors`` (DIR may be read-only), keyed
on each source file's path, size and mtime. Full CIFAR-10 from the JPEG copy: ~7 s to decode
(torchvision's libjpeg-turbo, whose pixels the experiments use; PIL is ~6x slower), ~1 s from the
cache.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save
from torchvision import datasets as tv_datasets
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor
from torchvision.datasets.utils import extract_archive
from torchvision.io import ImageReadMode, decode_jpeg, read_file

from polarpack._io import atomic_write_bytes
from polarpack.errors import ConfigError, DataError

SPLITS = ("train", "test")
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# Prior work's normalisation constants (Wang et al. 2023), on the 0-255 scale.
CIFAR10_MEAN, CIFAR10_STD = (125.3, 123.0, 113.9), (63.0, 62.1, 66.7)
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (72.94,), (90.02,)
MINI_ASSET = "assets/fashion_mnist_mini.npz"
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_CACHE_VERSION = 2  # bump when the cached layout or decoding changes


@dataclass
class ImageDataset:
    """A split in memory: uint8 images N x C x H x W, int64 labels N. `mean`/`std` (per channel,
    0-255 scale) are always the train split's, so the test split is normalised as the model saw its
    training data."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]


def _cache_root() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "polarpack"


def _cached(
    dataset: str, split: str, root: Path, files: Sequence[Path], decode: Callable[[], ImageDataset]
) -> ImageDataset:
    """Decode at most once per version of the source files; a damaged entry is decoded again."""
    stats = [
        (str(p.relative_to(root)), st.st_size, st.st_mtime_ns) for p in files for st in (p.stat(),)
    ]
    prefix = f"{dataset}-{split}-{hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:8]}-"
    key = hashlib.sha256(json.dumps([_CACHE_VERSION, split, stats]).encode()).hexdigest()[:16]
    path = _cache_root() / "decoded" / f"{prefix}{key}.safetensors"
    if path.is_file():
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = json.loads(fh.metadata()["polarpack"])
                return ImageDataset(
                    fh.get_tensor("images"),
                    fh.get_tensor("labels"),
                    meta["classes"],
                    tuple(meta["mean"]),
                    tuple(meta["std"]),
                )
        except Exception as exc:  # torn, edited or foreign file
            warnings.warn(
                f"polarpack: ignoring unreadable decode cache {path} ({exc}); decoding again",
                stacklevel=4,
            )
    ds = decode()
    meta = json.dumps({"classes": list(ds.classes), "mean": list(ds.mean), "std": list(ds.std)})
    try:  # best effort: an unwritable cache only costs a re-decode next time
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(
            path, save({"images": ds.images, "labels": ds.labels}, metadata={"polarpack": meta})
        )
        for stale in path.parent.glob(f"{prefix}*.safetensors"):
            if stale != path:
                stale.unlink(missing_ok=True)
    except OSError as exc:
        warnings.warn(
            f"polarpack: cannot write decode cache {path} ({exc}); decoding again next time",
            stacklevel=4,
        )
    return ds


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """One uint8 IDX file, plain or ``.gz``, parsed by torchvision (which reads only plain files,
    hence the unzip)."""
    path = Path(path)
    try:
        with tempfile.TemporaryDirectory(prefix="polarpack-idx-") as tmp:
            plain = extract_archive(path, tmp) if path.suffix == ".gz" else path
            arr = read_sn3_pascalvincent_tensor(str(plain), strict=True).numpy()
    except (OSError, EOFError, RuntimeError, AssertionError, ValueError) as exc:
        raise DataError(
            f"{path}: not a complete IDX file ({exc!r}): truncated or damaged; fetch it again"
        ) from exc
    if arr.dtype != np.uint8:
        raise DataError(
            f"{path}: the IDX file holds {arr.dtype}, not uint8; use the original Fashion-MNIST "
            "files"
        )
    return arr


def _read_fashion(files: Sequence[Path]) -> ImageDataset:
    images, labels = (torch.from_numpy(read_idx(p)) for p in files)
    if images.dim() != 3 or labels.dim() != 1 or len(images) != len(labels):
        raise DataError(
            f"{files[0]}: images {tuple(images.shape)} do not match labels {tuple(labels.shape)} "
            f"in {files[1]}; use the images and labels file of the same split"
        )
    return ImageDataset(
        images.unsqueeze(1),
        labels.long(),
        list(FASHION_MNIST_CLASSES),
        FASHION_MNIST_MEAN,
        FASHION_MNIST_STD,
    )


def _read_cifar(data_dir: Path, split: str) -> ImageDataset:
    """torchvision unpickles the batches only once their md5 sums match the official ones."""
    try:
        ds = tv_datasets.CIFAR10(str(data_dir), train=split == "train")
    except RuntimeError as exc:
        raise DataError(
            f"{data_dir / 'cifar-10-batches-py'}: refused, not unpickled ({exc}): md5 sums differ "
            "from the official python batches; fix: delete it and --download, or use cifar10-jpeg/"
        ) from exc
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    return ImageDataset(
        images,
        torch.tensor(ds.targets, dtype=torch.int64),
        list(ds.classes),
        CIFAR10_MEAN,
        CIFAR10_STD,
    )


def _decode_pil(path: Path) -> torch.Tensor:
    try:
        with Image.open(path) as im:
            arr = np.asarray(
                im.convert("L" if im.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB")
            )
    except Exception as exc:
        raise DataError(f"{path}: cannot decode image ({exc}); remove or replace the file") from exc
    t = torch.from_numpy(arr.copy())
    return t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1)


def _decode_files(paths: Sequence[Path]) -> torch.Tensor:
    """JPEGs through libjpeg-turbo in batches (~6x faster than PIL), the rest through PIL; grey
    images become RGB only when the set mixes both. A failing batch goes through PIL, which names
    the bad file."""
    jpegs = [p for p in paths if p.suffix.lower() in (".jpg", ".jpeg")]
    decoded: dict[Path, torch.Tensor] = {}
    with warnings.catch_warnings():
        # torchvision 0.29 points to torchcodec; its own decoder still works
        warnings.simplefilter("ignore", DeprecationWarning)
        for start in range(0, len(jpegs), 8192):  # chunks bound the memory held by encoded bytes
            part = jpegs[start : start + 8192]
            try:
                out = decode_jpeg([read_file(str(p)) for p in part], mode=ImageReadMode.UNCHANGED)
            except RuntimeError:
                out = [_decode_pil(p) for p in part]
            decoded.update(
                (p, t if t.shape[0] in (1, 3) else _decode_pil(p))
                for t, p in zip(out, part, strict=True)
            )
    tensors = [decoded[p] if p in decoded else _decode_pil(p) for p in paths]
    for t, p in zip(tensors, paths, strict=True):
        if t.shape[1:] != tensors[0].shape[1:]:
            raise DataError(
                f"{p}: image is {tuple(t.shape[1:])} but {paths[0]} is "
                f"{tuple(tensors[0].shape[1:])}; "
                "resize the folder to one size first"
            )
    if any(t.shape[0] == 3 for t in tensors):
        tensors = [t.expand(3, -1, -1) for t in tensors]
    return torch.stack(tensors)


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean/std (0-255 scale) from 256-bin histograms: no float copy of the
    set."""
    values = torch.arange(256, dtype=torch.float64)
    stats = []
    for c in range(images.shape[1]):
        hist = torch.bincount(images[:, c].reshape(-1), minlength=256).to(torch.float64)
        mean = (hist * values).sum() / hist.sum()
        std = ((hist * (values - mean) ** 2).sum() / hist.sum()).sqrt()
        stats.append((round(float(mean), 4), round(float(std), 4)))
    return tuple(m for m, _ in stats), tuple(s for _, s in stats)


def _read_folder(
    dataset: str, root: Path, split: str, classes: Sequence[str] | None = None
) -> ImageDataset:
    """One ImageFolder split in torchvision's file order, with its own exact per-channel stats."""
    try:
        found = find_classes(root / split)[0]
        samples = make_dataset(
            str(root / split), {c: i for i, c in enumerate(found)}, IMG_EXTENSIONS
        )
    except FileNotFoundError as exc:
        raise DataError(
            f"{root / split}: {exc} ImageFolder needs train/<class>/* and test/<class>/*"
        ) from exc
    if classes is not None and found != list(classes):
        raise DataError(
            f"{root / split}: class folders {found} differ from {list(classes)}; rename them to "
            "match"
        )
    paths = [Path(p) for p, _ in samples]

    def decode() -> ImageDataset:
        images = _decode_files(paths)
        labels = torch.tensor([t for _, t in samples], dtype=torch.int64)
        return ImageDataset(images, labels, found, *_channel_stats(images))

    return _cached(dataset, split, root, paths, decode)


def _download(dataset_cls: str, name: str, data_dir: Path, needs: str) -> None:
    try:
        getattr(tv_datasets, dataset_cls)(str(data_dir), train=True, download=True)
    except Exception as exc:  # network, disk or checksum: all mean "not downloaded"
        raise DataError(
            f"{name}: download into {data_dir} failed ({exc}); when offline pass --data-dir DIR "
            f"holding {needs}"
        ) from exc


def _cifar10(data_dir: Path, download: bool) -> list[ImageDataset]:
    batches, jpeg = data_dir / "cifar-10-batches-py", data_dir / "cifar10-jpeg"
    needs = "cifar-10-batches-py/ or cifar10-jpeg/"
    if download and not batches.is_dir() and not jpeg.is_dir():
        _download("CIFAR10", "cifar10", data_dir, needs)
    if batches.is_dir():
        files = sorted(p for p in batches.iterdir() if p.is_file())
        return [
            _cached("cifar10", s, batches, files, functools.partial(_read_cifar, data_dir, s))
            for s in SPLITS
        ]
    if (
        jpeg.is_dir()
    ):  # the copy's own stats are ignored: prior work's constants, as for the python batches
        return [
            replace(
                _read_folder("cifar10", jpeg, s, CIFAR10_CLASSES),
                mean=CIFAR10_MEAN,
                std=CIFAR10_STD,
            )
            for s in SPLITS
        ]
    raise DataError(
        f"cifar10: not found; looked in {batches}/ (python batches) and {jpeg}/ (ImageFolder "
        f"copy); fix: pass --data-dir DIR (data_dir=) holding {needs}, or --download "
        "(download=True) when online"
    )


def _fashion_mnist(data_dir: Path, download: bool) -> list[ImageDataset]:
    raw = data_dir / "FashionMNIST" / "raw"

    def find(stem: str) -> Path | None:  # plain wins: torchvision's download leaves both
        return next((p for p in (raw / stem, raw / f"{stem}.gz") if p.is_file()), None)

    if download and not all(find(stem) for s in SPLITS for stem in _IDX_FILES[s]):
        _download("FashionMNIST", "fashion-mnist", data_dir, "FashionMNIST/raw/")
    files = {s: [find(stem) for stem in _IDX_FILES[s]] for s in SPLITS}
    if not all(all(f) for f in files.values()):
        raise DataError(
            f"fashion-mnist: not found; looked in {raw}/ for the four IDX files (plain or .gz); "
            "fix: pass --data-dir DIR (data_dir=) holding FashionMNIST/raw/, or --download "
            "(download=True) online"
        )
    return [
        _cached("fashion-mnist", s, raw, files[s], functools.partial(_read_fashion, files[s]))
        for s in SPLITS
    ]


def _imagefolder(path: str, data_dir: Path) -> list[ImageDataset]:
    given = Path(path).expanduser()
    candidates = [given] if given.is_absolute() else [given, data_dir / given]
    root = next(
        (c.resolve() for c in candidates if path and all((c / s).is_dir() for s in SPLITS)), None
    )
    if root is None:
        raise DataError(
            f"imagefolder:{path}: no train/ and test/ subfolders in "
            f"{' or '.join(map(str, candidates))}; "
            "fix: point imagefolder:PATH at a folder holding train/<class>/* and test/<class>/*"
        )
    train = _read_folder("imagefolder", root, "train")
    test = _read_folder("imagefolder", root, "test", train.classes)
    return [train, replace(test, mean=train.mean, std=train.std)]


def _mini() -> list[ImageDataset]:
    try:
        with np.load(
            io.BytesIO(resources.files("polarpack").joinpath(MINI_ASSET).read_bytes()),
            allow_pickle=False,
        ) as npz:
            return [
                ImageDataset(
                    torch.from_numpy(npz[f"{s}_images"].copy()).unsqueeze(1),
                    torch.from_numpy(npz[f"{s}_labels"].astype(np.int64)),
                    [str(c) for c in npz["classes"]],
                    FASHION_MNIST_MEAN,
                    FASHION_MNIST_STD,
                )
                for s in SPLITS
            ]
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(
            f"{MINI_ASSET}: packaged mini dataset missing or damaged ({exc}); reinstall polarpack"
        ) from exc


def load_splits(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    train_size: int | None = 10000,
    val_size: int | None = 10000,
    seed: int = 0,
    download: bool = False,
) -> tuple[ImageDataset, ImageDataset]:
    """The paper's protocol: (train, val) = balanced subsets of the train and test splits, each from
    its own generator seeded with `seed` (so `train_size` never changes the validation images);
    balanced because ImageFolder copies are ordered by class. A size of None (or at least the
    split's) keeps the whole split, in order."""
    data_dir = Path(
        data_dir or os.environ.get("POLARPACK_DATA_DIR") or _cache_root() / "data"
    ).expanduser()
    if name == "fashion-mnist-mini":
        splits = _mini()
    elif name in ("cifar10", "fashion-mnist"):
        splits = (_cifar10 if name == "cifar10" else _fashion_mnist)(data_dir, download)
    elif name.startswith("imagefolder:"):
        splits = _imagefolder(name[len("imagefolder:") :], data_dir)
    else:
        raise DataError(
            f"unknown dataset {name!r}; use cifar10, fashion-mnist, fashion-mnist-mini or "
            "imagefolder:PATH"
        )
    out = []
    for ds, size, what in zip(
        splits, (train_size, val_size), ("train_size", "val_size"), strict=True
    ):
        if size is not None and size < 1:
            raise ConfigError(
                f"{what} must be at least 1 (or None for the whole split), got {size}"
            )
        if size is not None and size < len(ds.labels):
            idx = balanced_subset(ds.labels, size, torch.Generator().manual_seed(seed))
            ds = replace(ds, images=ds.images[idx], labels=ds.labels[idx])
        out.append(ds)
    return out[0], out[1]


def balanced_subset(
    labels: torch.Tensor, size: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Sorted indices of a class-balanced subset (counts differ by at most one): one
    `torch.randperm` orders the images and each class keeps its first ones, so a generator state
    always picks the same images."""
    n = int(labels.shape[0])
    if not 0 <= size <= n:
        raise ConfigError(
            f"subset size {size} is outside 0..{n}; pick a size no larger than the split"
        )
    counts = torch.bincount(labels, minlength=int(labels.max()) + 1 if n else 0)
    # equal shares, capped by what a class has (water-filling)
    quota, remaining = torch.zeros_like(counts), size
    order = [int(c) for c in torch.argsort(counts, stable=True) if counts[c] > 0]
    for i, c in enumerate(order):
        quota[c] = min(int(counts[c]), remaining // (len(order) - i))
        remaining -= int(quota[c])
    for c in sorted(
        order
    ):  # leftover (< classes with room): one more each, lowest class index first
        if remaining and quota[c] < counts[c]:
            quota[c] += 1
            remaining -= 1
    perm = torch.randperm(n, generator=generator)
    order_t = torch.argsort(labels[perm], stable=True)
    picked, picked_labels = perm[order_t], labels[perm][order_t]
    rank = torch.arange(n) - (torch.cumsum(counts, 0) - counts)[picked_labels]
    return torch.sort(picked[rank < quota[picked_labels]]).values


def batch_indices(
    n: int, batch_size: int, generator: torch.Generator | None = None
) -> list[torch.Tensor]:
    """One epoch's batches from one `torch.randperm`: the order is reproducible from the generator
    alone."""
    if batch_size < 1 or n < 0:
        raise ConfigError(f"batch_size must be >= 1 and n >= 0, got batch_size={batch_size}, n={n}")
    return list(torch.randperm(n, generator=generator).split(batch_size)) if n else []


@functools.lru_cache(maxsize=32)  # no host-to-device copy per step
def _stat(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device).reshape(1, -1, 1, 1)


def prepare_batch(
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    size: int | None = None,
    channels: int = 3,
) -> torch.Tensor:
    """uint8 N x C x H x W -> normalised float32, on the input's device; called every step, so:
    normalise in place, resize (bilinear, antialias, as torchvision's Resize) only when `size`
    differs, and expand grey to 3 channels last so the resize touches one. Move the uint8 batch to
    the GPU first: four times fewer bytes to copy."""
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise DataError(
            f"prepare_batch needs a uint8 N x C x H x W batch, got {images.dtype} "
            f"{tuple(images.shape)}"
        )
    c = images.shape[1]
    mean_t, std_t = (_stat(tuple(float(v) for v in s), images.device) for s in (mean, std))
    if mean_t.shape[1] not in (1, c) or std_t.shape[1] != mean_t.shape[1]:
        raise DataError(
            f"mean/std have {mean_t.shape[1]}/{std_t.shape[1]} values for {c}-channel images; "
            f"give 1 or {c}"
        )
    x = images.to(torch.float32).sub_(mean_t).div_(std_t)
    if size is not None and tuple(x.shape[2:]) != (size, size):
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
    if channels != c:
        if c != 1 or channels != 3:
            raise DataError(
                f"cannot turn {c}-channel images into {channels} channels; only grey -> 3 is "
                "supported"
            )
        x = x.expand(-1, 3, -1, -1).contiguous()
    return x
