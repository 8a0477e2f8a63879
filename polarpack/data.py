"""Datasets as in-memory uint8 tensors, batched by index: no DataLoader, no worker processes.

The seed protocol trains on 10,000 small images for 20 epochs, so the whole set fits in memory as
one uint8 tensor; indexing it with a seeded permutation is faster than a DataLoader and makes
every batch reproducible from one `torch.Generator`. Images are normalised (and resized, for
the ImageNet geometry) per batch by `prepare_batch`, on whatever device the batch is on.

Names: ``cifar10``, ``fashion-mnist``, ``fashion-mnist-mini`` (2,000 train + 500 test
Fashion-MNIST images shipped inside the package: works with no data and no network) and
``imagefolder:PATH`` (``PATH/train/<class>/*`` and ``PATH/test/<class>/*``, as
`torchvision.datasets.ImageFolder` reads them).

Where data is looked for. The data directory is `data_dir` (CLI ``--data-dir``), else
``$POLARPACK_DATA_DIR``, else ``$XDG_CACHE_HOME/polarpack/data`` (``~/.cache/polarpack/data``).
Inside it, first match wins:

- ``cifar10``: (1) ``DIR/cifar-10-batches-py/`` (torchvision's python batches);
  (2) ``DIR`` itself holding ``data_batch_1..5``/``test_batch``; (3) an ImageFolder copy:
  ``DIR``, then each subfolder of ``DIR`` in name order, whose ``train/`` and ``test/`` hold the
  ten CIFAR-10 class folders (e.g. ``DIR/cifar10-jpeg``); (4) with ``download=True``,
  ``torchvision.datasets.CIFAR10(DIR, download=True)``, then (1).
- ``fashion-mnist``: the four IDX files (each plain or ``.gz``; plain wins) in
  (1) ``DIR/FashionMNIST/raw/`` (torchvision's layout); (2) ``DIR/fashion-mnist/``; (3) ``DIR``;
  (4) ``/usr/share/datasets/fashion-mnist/`` (Debian's ``dataset-fashion-mnist``); (5) with
  ``download=True``, ``torchvision.datasets.FashionMNIST(DIR, download=True)``, then (1).
- ``imagefolder:PATH``: ``PATH`` as given, then ``DIR/PATH`` for a relative ``PATH``.

Offline, a missing dataset is a `DataError` that lists every place looked at.

Decode cache. Decoding happens once per source: the tensors are saved with `torch.save`,
atomically, to ``$XDG_CACHE_HOME/polarpack/decoded/<dataset>-<split>-<root hash>-<key>.pt``
(never inside the data directory, which may be read-only). ``key`` hashes each source file's
path, size and mtime, so an edited, added or removed file is noticed and re-decoded (the stale
entry is deleted). Measured on 2 shared CPU cores, full CIFAR-10 (both splits) from the
60,000-file JPEG copy: first decode 6.7-7.7 s (torchvision's libjpeg-turbo; PIL takes ~6x
longer), cached load 1.05 s; full Fashion-MNIST from the .gz IDX files: 0.47 s, cached 0.04 s.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import logging
import os
import pickle
import warnings
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ._io import atomic_write_bytes
from .errors import ConfigError, DataError

__all__ = [
    "CIFAR10_CLASSES",
    "FASHION_MNIST_CLASSES",
    "DATASETS",
    "DatasetInfo",
    "ImageDataset",
    "balanced_subset",
    "batch_indices",
    "dataset_info",
    "decoded_cache_dir",
    "default_data_dir",
    "list_datasets",
    "load_dataset",
    "load_splits",
    "prepare_batch",
    "read_idx",
]

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
IMAGEFOLDER_PREFIX = "imagefolder:"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
# Prior work's normalisation constants (Wang et al. 2023), on the 0-255 scale.
CIFAR10_MEAN, CIFAR10_STD = (125.3, 123.0, 113.9), (63.0, 62.1, 66.7)
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (72.94,), (90.02,)

MINI_ASSET = "assets/fashion_mnist_mini.npz"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_JPEG_EXTENSIONS = (".jpg", ".jpeg")
_CACHE_VERSION = 1  # bump when the cached layout or decoding changes
_SYSTEM_FASHION_DIRS = (Path("/usr/share/datasets/fashion-mnist"),)
_CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_ALIASES = {"cifar-10": "cifar10", "fashionmnist": "fashion-mnist", "fashionmnist-mini": "fashion-mnist-mini"}


@dataclass(frozen=True)
class DatasetInfo:
    """What the trainer must know before building a model; `mean`/`std` None = computed at load."""

    name: str
    num_classes: int
    channels: int
    image_size: tuple[int, int]
    classes: tuple[str, ...]
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    train_size: int | None
    test_size: int | None
    description: str


DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo(
        "cifar10", 10, 3, (32, 32), CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, 50000, 10000,
        "CIFAR-10 (Krizhevsky 2009): python batches or an ImageFolder copy",
    ),
    "fashion-mnist": DatasetInfo(
        "fashion-mnist", 10, 1, (28, 28), FASHION_MNIST_CLASSES, FASHION_MNIST_MEAN, FASHION_MNIST_STD, 60000, 10000,
        "Fashion-MNIST (Xiao et al. 2017): the original IDX files",
    ),
    "fashion-mnist-mini": DatasetInfo(
        "fashion-mnist-mini", 10, 1, (28, 28), FASHION_MNIST_CLASSES, FASHION_MNIST_MEAN, FASHION_MNIST_STD, 2000, 500,
        "class-balanced Fashion-MNIST subset shipped with polarpack (offline smoke tests)",
    ),
}


@dataclass
class ImageDataset:
    """A whole split in memory: uint8 images N x C x H x W, int64 labels N.

    `mean`/`std` are per channel on the 0-255 scale and always those of the train split, so the
    test split is normalised exactly as the model saw its training data. `source` says where the
    pixels came from (e.g. the JPEG copy of CIFAR-10), for the record of a run.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    split: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[1] not in (1, 3):
            raise DataError(
                f"{self.name}: images must be a uint8 N x C x H x W tensor with C = 1 or 3, got "
                f"{self.images.dtype} {tuple(self.images.shape)}; decode them to uint8 first"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise DataError(
                f"{self.name}: labels must be an int64 tensor of length {self.images.shape[0]}, got "
                f"{self.labels.dtype} {tuple(self.labels.shape)}"
            )
        if len(self.mean) not in (1, self.channels) or len(self.std) != len(self.mean):
            raise DataError(f"{self.name}: mean/std need 1 or {self.channels} values, got {self.mean} / {self.std}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    def subset(self, indices: torch.Tensor) -> ImageDataset:
        """A copy holding only `indices` (same classes, mean, std)."""
        return replace(self, images=self.images[indices], labels=self.labels[indices])


# --------------------------------------------------------------------------- locations


def _cache_root() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "polarpack"


def default_data_dir() -> Path:
    """$POLARPACK_DATA_DIR, else $XDG_CACHE_HOME/polarpack/data (~/.cache/polarpack/data)."""
    env = os.environ.get("POLARPACK_DATA_DIR")
    return Path(env).expanduser() if env else _cache_root() / "data"


def decoded_cache_dir() -> Path:
    """Where decoded tensors are cached: $XDG_CACHE_HOME/polarpack/decoded."""
    return _cache_root() / "decoded"


def list_datasets() -> list[str]:
    """Registered names; any ``imagefolder:PATH`` is accepted as well."""
    return list(DATASETS)


def _canonical(name: str) -> tuple[str, str | None]:
    """(registry name or "imagefolder", path or None)."""
    text = name.strip()
    if text.lower().startswith(IMAGEFOLDER_PREFIX):
        path = text[len(IMAGEFOLDER_PREFIX):]
        if not path:
            raise DataError(f"{name!r}: imagefolder needs a path; write imagefolder:PATH with PATH holding train/ and test/")
        return "imagefolder", path
    key = text.lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise DataError(
            f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)} or imagefolder:PATH"
        )
    return key, None


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use 'train' or 'test' (the test split is the validation set)")
    return split


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class _Source:
    kind: str  # "cifar-batches" | "idx" | "imagefolder"
    root: Path
    description: str


def _is_cifar_batches(folder: Path) -> bool:
    return (folder / "batches.meta").is_file() and (folder / "test_batch").is_file() and all(
        (folder / f).is_file() for f in _CIFAR_TRAIN_FILES
    )


def _class_dirs(folder: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(folder) if e.is_dir())
    except OSError:
        return []


def _is_cifar_imagefolder(folder: Path) -> bool:
    want = sorted(CIFAR10_CLASSES)
    return all(_class_dirs(folder / s) == want for s in SPLITS)


def _find_cifar10(data_dir: Path, download: bool) -> _Source:
    looked: list[str] = []
    batches = data_dir / "cifar-10-batches-py"
    for folder in (batches, data_dir):
        looked.append(f"{folder}/ (python batches)")
        if _is_cifar_batches(folder):
            return _Source("cifar-batches", folder, f"{folder} (torchvision python batches)")
    candidates = [data_dir] + [data_dir / c for c in _class_dirs(data_dir)]
    looked.append(f"{data_dir}/ and its subfolders (ImageFolder copy with train/ and test/ of the 10 classes)")
    for folder in candidates:
        if _is_cifar_imagefolder(folder):
            return _Source("imagefolder", folder, f"{folder} (ImageFolder copy)")
    if download:
        from torchvision import datasets

        try:
            for train in (True, False):
                datasets.CIFAR10(root=str(data_dir), train=train, download=True)
        except Exception as exc:  # network, disk or checksum: all mean "not downloaded"
            raise DataError(
                f"cifar10: download into {data_dir} failed ({exc}); when offline pass --data-dir DIR "
                "holding cifar-10-batches-py/ or an ImageFolder copy"
            ) from exc
        if _is_cifar_batches(batches):
            return _Source("cifar-batches", batches, f"{batches} (torchvision python batches)")
    raise DataError(
        f"cifar10: not found; looked in {'; '.join(looked)}; fix: pass --data-dir DIR (data_dir=) holding "
        "cifar-10-batches-py/ or an ImageFolder copy, or --download (download=True) when online"
    )


def _idx_path(folder: Path, stem: str) -> Path | None:
    for path in (folder / stem, folder / f"{stem}.gz"):
        if path.is_file():
            return path
    return None


def _find_idx_folder(data_dir: Path, download: bool) -> Path:
    raw = data_dir / "FashionMNIST" / "raw"
    candidates = [raw, data_dir / "fashion-mnist", data_dir, *_SYSTEM_FASHION_DIRS]
    needed = [stem for pair in _IDX_FILES.values() for stem in pair]
    for folder in candidates:
        if all(_idx_path(folder, stem) for stem in needed):
            return folder
    if download:
        from torchvision import datasets

        try:
            datasets.FashionMNIST(root=str(data_dir), train=True, download=True)
        except Exception as exc:
            raise DataError(
                f"fashion-mnist: download into {data_dir} failed ({exc}); when offline pass --data-dir DIR "
                "holding FashionMNIST/raw/"
            ) from exc
        if all(_idx_path(raw, stem) for stem in needed):
            return raw
    looked = "; ".join(f"{c}/" for c in candidates)
    raise DataError(
        f"fashion-mnist: the four IDX files ({', '.join(needed)}, plain or .gz) not found; looked in {looked}; "
        "fix: pass --data-dir DIR (data_dir=) holding FashionMNIST/raw/, or --download (download=True) when online"
    )


def _find_imagefolder(path: str, data_dir: Path) -> Path:
    given = Path(path).expanduser()
    candidates = [given] if given.is_absolute() else [given, data_dir / given]
    for folder in candidates:
        if all((folder / s).is_dir() for s in SPLITS):
            return folder.resolve()
    raise DataError(
        f"imagefolder:{path}: no train/ and test/ subfolders in {' or '.join(str(c) for c in candidates)}; "
        "fix: point imagefolder:PATH at a folder holding train/<class>/* and test/<class>/*"
    )


# --------------------------------------------------------------------------- readers


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (plain or gzipped, told apart by content, not name) into a uint8 array."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot read IDX file ({exc}); re-download or re-extract it") from exc
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise DataError(f"{path}: not a uint8 IDX file (bad magic {raw[:4].hex()}); expected 0000 08 <ndim>")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path}: IDX header says {dims} ({int(np.prod(dims))} bytes) but holds {body.size}; the file is truncated")
    return body.reshape(dims)


def _read_idx_split(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor, list[Path]]:
    img_path, lab_path = (_idx_path(folder, stem) for stem in _IDX_FILES[split])
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{img_path}: {images.shape} images do not match {labels.shape} labels in {lab_path}; "
            "use the images and labels file of the same split"
        )
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)), [img_path, lab_path]


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """CIFAR batches are pickles: allow only what rebuilds numpy arrays, never arbitrary code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            obj = _NumpyOnlyUnpickler(fh, encoding="latin1").load()
    except Exception as exc:
        raise DataError(f"{path}: not a readable CIFAR-10 python batch ({exc}); re-download cifar-10-python.tar.gz") from exc
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(obj).__name__}; re-download it")
    return obj


def _cifar_files(folder: Path, split: str) -> list[Path]:
    names = _CIFAR_TRAIN_FILES if split == "train" else ("test_batch",)
    return [folder / "batches.meta", *(folder / n for n in names)]


def _read_cifar_batches(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    meta_path, *batch_paths = _cifar_files(folder, split)
    classes = [str(c) for c in _unpickle(meta_path).get("label_names", CIFAR10_CLASSES)]
    images, labels = [], []
    for path in batch_paths:
        batch = _unpickle(path)
        data = np.asarray(batch.get("data"))
        labs = np.asarray(batch.get("labels", batch.get("fine_labels")), dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labs.shape != (data.shape[0],):
            raise DataError(f"{path}: expected 'data' uint8 N x 3072 and N 'labels', got {data.dtype} {data.shape}; re-download it")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(labs)
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)), classes


def _scan_imagefolder(root: Path, split: str, classes: Sequence[str]) -> tuple[list[Path], list[int], list[tuple]]:
    """Files in torchvision's order (class, then path), with (relpath, size, mtime) for the cache key."""
    index = {c: i for i, c in enumerate(classes)}
    paths, labels, stats = [], [], []
    split_dir = root / split
    for cls in _class_dirs(split_dir):
        if cls not in index:
            raise DataError(
                f"{split_dir / cls}: class folder not in the train split's classes {list(classes)}; "
                "rename or remove it so train/ and test/ share one class list"
            )
        for dirpath, dirnames, filenames in os.walk(split_dir / cls, followlinks=True):
            dirnames.sort()
            for fname in sorted(filenames):
                if fname.lower().endswith(IMAGE_EXTENSIONS):
                    path = Path(dirpath) / fname
                    st = path.stat()
                    paths.append(path)
                    labels.append(index[cls])
                    stats.append((str(path.relative_to(root)), st.st_size, st.st_mtime_ns))
    if not paths:
        raise DataError(f"{split_dir}: no images ({', '.join(IMAGE_EXTENSIONS)}) in its class folders; add images or fix the path")
    return paths, labels, stats


def _decode_pil(path: Path) -> torch.Tensor:
    from PIL import Image

    try:
        with Image.open(path) as im:
            grey = im.mode in ("1", "L", "LA", "I", "I;16", "F")
            arr = np.asarray(im.convert("L" if grey else "RGB"))
    except Exception as exc:
        raise DataError(f"{path}: cannot decode image ({exc}); remove or replace the file") from exc
    t = torch.from_numpy(arr.copy())
    return t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1)


def _decode_jpegs(paths: Sequence[Path]) -> list[torch.Tensor]:
    """torchvision's libjpeg-turbo decoder, about 6x faster than PIL here; PIL if it is gone."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        return [_decode_pil(p) for p in paths]
    out: list[torch.Tensor] = []
    chunk = 8192
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its decoders in favour of torchcodec; they still work.
        warnings.simplefilter("ignore", DeprecationWarning)
        for start in range(0, len(paths), chunk):
            part = paths[start:start + chunk]
            blobs = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in part]
            try:
                decoded = decode_jpeg(blobs, mode=ImageReadMode.UNCHANGED)
            except RuntimeError:  # one bad file fails the batch: find it and name it
                decoded = [_decode_pil(p) for p in part]
            out.extend(t if t.shape[0] in (1, 3) else _decode_pil(p) for t, p in zip(decoded, part))
    return out


def _decode_files(paths: Sequence[Path]) -> torch.Tensor:
    """Decode and stack; grey images become RGB only when the set mixes both."""
    jpeg = [i for i, p in enumerate(paths) if p.suffix.lower() in _JPEG_EXTENSIONS]
    tensors: list[torch.Tensor | None] = [None] * len(paths)
    for i, t in zip(jpeg, _decode_jpegs([paths[i] for i in jpeg])):
        tensors[i] = t
    for i, p in enumerate(paths):
        if tensors[i] is None:
            tensors[i] = _decode_pil(p)
    size = tensors[0].shape[1:]
    for t, p in zip(tensors, paths):
        if t.shape[1:] != size:
            raise DataError(
                f"{p}: image is {tuple(t.shape[1:])} but {paths[0]} is {tuple(size)}; resize the folder to one size first"
            )
    if any(t.shape[0] == 3 for t in tensors):
        tensors = [t.expand(3, -1, -1) for t in tensors]
    return torch.stack(tensors)


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean/std (0-255 scale) from 256-bin histograms: no float copy of the set."""
    values = torch.arange(256, dtype=torch.float64)
    means, stds = [], []
    for c in range(images.shape[1]):
        hist = torch.bincount(images[:, c].reshape(-1), minlength=256).to(torch.float64)
        n = hist.sum()
        mean = (hist * values).sum() / n
        var = (hist * (values - mean) ** 2).sum() / n
        means.append(round(float(mean), 4))
        stds.append(round(float(var.sqrt()), 4))
    return tuple(means), tuple(stds)


# --------------------------------------------------------------------------- cache


def _file_stats(paths: Sequence[Path], root: Path) -> list[tuple]:
    out = []
    for p in paths:
        st = p.stat()
        out.append((str(p.relative_to(root)), st.st_size, st.st_mtime_ns))
    return out


def _cache_path(dataset: str, split: str, source: _Source, stats: list[tuple]) -> Path:
    root_hash = hashlib.sha256(str(source.root.resolve()).encode()).hexdigest()[:8]
    key = hashlib.sha256(json.dumps([_CACHE_VERSION, source.kind, split, stats]).encode()).hexdigest()[:16]
    return decoded_cache_dir() / f"{dataset}-{split}-{root_hash}-{key}.pt"


def _cache_load(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt entry is re-decoded, never fatal
        log.warning("ignoring unreadable cache entry %s (%s)", path, exc)
        return None


def _cache_store(path: Path, entry: dict) -> None:
    """Best effort: a read-only home only costs a re-decode next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save(entry, buf)
        atomic_write_bytes(path, buf.getvalue())
        prefix = path.name.rsplit("-", 1)[0] + "-"
        for stale in path.parent.glob(f"{prefix}*.pt"):
            if stale != path:
                stale.unlink(missing_ok=True)
    except OSError as exc:
        warnings.warn(f"polarpack: cannot write decode cache {path} ({exc}); decoding again next time", stacklevel=3)


def _load_cached(dataset: str, split: str, source: _Source, stats: list[tuple], decode) -> dict:
    path = _cache_path(dataset, split, source, stats)
    entry = _cache_load(path)
    if entry is None:
        log.info("decoding %s/%s from %s (once; cached at %s)", dataset, split, source.root, path)
        entry = decode()
        _cache_store(path, entry)
    return entry


# --------------------------------------------------------------------------- loading


def _load_mini(split: str) -> ImageDataset:
    res = resources.files("polarpack").joinpath(MINI_ASSET)
    try:
        with np.load(io.BytesIO(res.read_bytes()), allow_pickle=False) as npz:
            images = torch.from_numpy(npz[f"{split}_images"].copy()).unsqueeze(1)
            labels = torch.from_numpy(npz[f"{split}_labels"].astype(np.int64))
            classes = [str(c) for c in npz["classes"]]
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"{MINI_ASSET}: the packaged mini dataset is missing or damaged ({exc}); reinstall polarpack") from exc
    return ImageDataset(images, labels, classes, "fashion-mnist-mini", FASHION_MNIST_MEAN, FASHION_MNIST_STD, split, f"polarpack/{MINI_ASSET}")


def _load_imagefolder(name: str, root: Path, split: str, classes: Sequence[str] | None) -> dict:
    classes = list(classes) if classes is not None else _class_dirs(root / "train")
    if not classes:
        raise DataError(f"{root / 'train'}: no class folders; ImageFolder needs train/<class>/* and test/<class>/*")
    paths, labels, stats = _scan_imagefolder(root, split, classes)
    source = _Source("imagefolder", root, "")

    def decode() -> dict:
        images = _decode_files(paths)
        mean, std = _channel_stats(images)
        return {"images": images, "labels": torch.tensor(labels, dtype=torch.int64), "classes": classes,
                "mean": list(mean), "std": list(std)}

    return _load_cached(name, split, source, stats, decode)


def load_dataset(name: str, split: str = "train", *, data_dir: str | os.PathLike | None = None, download: bool = False) -> ImageDataset:
    """Load one whole split into memory, decoding once and caching the tensors.

    Args:
        name: ``cifar10``, ``fashion-mnist``, ``fashion-mnist-mini`` or ``imagefolder:PATH``.
        split: ``train`` or ``test``.
        data_dir: where the raw data lives (see the module docstring for the search order).
        download: fetch a missing cifar10/fashion-mnist with torchvision's downloaders.

    Raises:
        DataError: unknown name or split, data not found (the message lists where it looked),
            unreadable or inconsistent files.
    """
    key, folder = _canonical(name)
    _check_split(split)
    if key == "fashion-mnist-mini":
        return _load_mini(split)
    data_dir = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()

    if key == "imagefolder":
        root = _find_imagefolder(folder, data_dir)
        entry = _load_imagefolder("imagefolder", root, split, None)
        stats = entry if split == "train" else _load_imagefolder("imagefolder", root, "train", entry["classes"])
        return ImageDataset(entry["images"], entry["labels"], list(entry["classes"]), f"imagefolder:{root}",
                            tuple(stats["mean"]), tuple(stats["std"]), split, f"{root} (ImageFolder)")

    info = DATASETS[key]
    if key == "cifar10":
        source = _find_cifar10(data_dir, download)
        if source.kind == "imagefolder":
            entry = _load_imagefolder("cifar10", source.root, split, CIFAR10_CLASSES)
        else:
            files = _cifar_files(source.root, split)

            def decode() -> dict:
                images, labels, classes = _read_cifar_batches(source.root, split)
                return {"images": images, "labels": labels, "classes": classes}

            entry = _load_cached(key, split, source, _file_stats(files, source.root), decode)
    else:
        idx_folder = _find_idx_folder(data_dir, download)
        source = _Source("idx", idx_folder, f"{idx_folder} (IDX files)")
        files = [_idx_path(idx_folder, stem) for stem in _IDX_FILES[split]]

        def decode() -> dict:
            images, labels, _ = _read_idx_split(idx_folder, split)
            return {"images": images, "labels": labels, "classes": list(FASHION_MNIST_CLASSES)}

        entry = _load_cached(key, split, source, _file_stats(files, idx_folder), decode)
    return ImageDataset(entry["images"], entry["labels"], list(entry["classes"]), key, info.mean, info.std, split, source.description)


def dataset_info(name: str, *, data_dir: str | os.PathLike | None = None) -> DatasetInfo:
    """Shape facts without loading the data (for ``imagefolder:PATH``: class folders + one image)."""
    key, folder = _canonical(name)
    if key != "imagefolder":
        return DATASETS[key]
    root = _find_imagefolder(folder, Path(data_dir).expanduser() if data_dir is not None else default_data_dir())
    classes = tuple(_class_dirs(root / "train"))
    if not classes:
        raise DataError(f"{root / 'train'}: no class folders; ImageFolder needs train/<class>/* and test/<class>/*")
    first = None
    for dirpath, dirnames, filenames in os.walk(root / "train" / classes[0], followlinks=True):
        dirnames.sort()
        first = next((Path(dirpath) / f for f in sorted(filenames) if f.lower().endswith(IMAGE_EXTENSIONS)), None)
        if first is not None:
            break
    if first is None:
        raise DataError(f"{root / 'train' / classes[0]}: no images; add images or remove the empty class folder")
    image = _decode_files([first])
    return DatasetInfo(f"imagefolder:{root}", len(classes), image.shape[1], (image.shape[2], image.shape[3]), classes,
                       None, None, None, None, f"ImageFolder at {root}")


# --------------------------------------------------------------------------- seed protocol


def _fair_quota(counts: torch.Tensor, size: int) -> torch.Tensor:
    """Per-class quota summing to `size`: equal shares, capped by what a class has (water-filling)."""
    quota = torch.zeros_like(counts)
    remaining = size
    order = [int(c) for c in torch.argsort(counts, stable=True) if counts[c] > 0]
    for i, c in enumerate(order):
        take = min(int(counts[c]), remaining // (len(order) - i))
        quota[c] = take
        remaining -= take
    for c in sorted(order):  # leftover (< classes with room): one more each, lowest class index first
        if remaining == 0:
            break
        if quota[c] < counts[c]:
            quota[c] += 1
            remaining -= 1
    return quota


def balanced_subset(labels: torch.Tensor, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sorted indices of a seeded class-balanced subset: class counts differ by at most one.

    One `torch.randperm` orders the images; each class keeps its first images in that order, so
    the same generator state always picks the same images. Classes with too few images give all
    they have and the rest is shared among the others.
    """
    n = int(labels.shape[0])
    if not 0 <= size <= n:
        raise ConfigError(f"subset size {size} is outside 0..{n}; pick a size no larger than the split")
    counts = torch.bincount(labels, minlength=int(labels.max()) + 1 if n else 0)
    quota = _fair_quota(counts, size)
    perm = torch.randperm(n, generator=generator)
    order = torch.argsort(labels[perm], stable=True)
    picked, picked_labels = perm[order], labels[perm][order]
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n) - starts[picked_labels]
    return torch.sort(picked[rank < quota[picked_labels]]).values


def _take(ds: ImageDataset, size: int | None, seed: int) -> ImageDataset:
    if size is None or size >= len(ds):
        return ds
    if size < 1:
        raise ConfigError(f"{ds.name}/{ds.split}: subset size must be at least 1 (or None for all), got {size}")
    return ds.subset(balanced_subset(ds.labels, size, torch.Generator().manual_seed(seed)))


def load_splits(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    train_size: int | None = 10000,
    val_size: int | None = 10000,
    seed: int = 0,
    download: bool = False,
) -> tuple[ImageDataset, ImageDataset]:
    """The seed paper's protocol: (train, val) = a balanced subset of train, and of test.

    Both subsets are class-balanced and drawn with a `torch.Generator` seeded with `seed` (each
    split its own, so `train_size` never changes which validation images are used). The test
    split is ordered by class in ImageFolder copies, hence a balanced subset, not its first
    `val_size` images. A size of None, or at least the split's size, means the whole split in
    its original order.
    """
    train = load_dataset(name, "train", data_dir=data_dir, download=download)
    val = load_dataset(name, "test", data_dir=data_dir, download=download)
    return _take(train, train_size, seed), _take(val, val_size, seed)


# --------------------------------------------------------------------------- batching


def batch_indices(
    n: int, batch_size: int, generator: torch.Generator | None = None, *, shuffle: bool = True, drop_last: bool = False
) -> list[torch.Tensor]:
    """Index tensors for one epoch, from one `torch.randperm` (no per-sample weights)."""
    if batch_size < 1 or n < 0:
        raise ConfigError(f"batch_size must be >= 1 and n >= 0, got batch_size={batch_size}, n={n}")
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    batches = list(order.split(batch_size)) if n else []
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


@functools.lru_cache(maxsize=32)
def _stat_tensor(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device).reshape(1, -1, 1, 1)


def _as_stat(values: Sequence[float] | torch.Tensor, device: torch.device) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values.to(device=device, dtype=torch.float32).reshape(1, -1, 1, 1)
    return _stat_tensor(tuple(float(v) for v in values), device)


def prepare_batch(
    images: torch.Tensor,
    mean: Sequence[float] | torch.Tensor,
    std: Sequence[float] | torch.Tensor,
    *,
    size: int | None = None,
    channels: int = 3,
) -> torch.Tensor:
    """uint8 N x C x H x W -> normalised float32 N x `channels` x H' x W', on the input's device.

    Cheap by design (called every step): normalise in place, resize (bilinear, antialias, as
    torchvision's Resize) only when `size` differs from the image size, and make grey images
    three-channel last, after the resize, so the resize touches one channel. Move the uint8
    batch to the GPU before calling: four times fewer bytes to copy.
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise DataError(f"prepare_batch needs a uint8 N x C x H x W batch, got {images.dtype} {tuple(images.shape)}")
    c = images.shape[1]
    mean_t, std_t = _as_stat(mean, images.device), _as_stat(std, images.device)
    if mean_t.shape[1] not in (1, c) or std_t.shape[1] != mean_t.shape[1]:
        raise DataError(f"mean/std have {mean_t.shape[1]}/{std_t.shape[1]} values for {c}-channel images; give 1 or {c}")
    x = images.to(torch.float32).sub_(mean_t).div_(std_t)
    if size is not None and tuple(x.shape[2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    if channels != c:
        if c == 1 and channels == 3:
            x = x.expand(-1, 3, -1, -1).contiguous()
        else:
            raise DataError(f"cannot turn {c}-channel images into {channels} channels; only grey -> 3 channels is supported")
    return x
