"""polarpack.training.data through its public API: layouts, errors, the decode cache, the paper's
protocol, batching."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets
from PIL import Image
from safetensors.torch import load_file

from polarpack.errors import ConfigError, DataError
from polarpack.training import data
from polarpack.training.data import (
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    FASHION_MNIST_CLASSES,
    balanced_subset,
    batch_indices,
    load_splits,
    prepare_batch,
)

WHOLE = {"train_size": None, "val_size": None}


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Results depend only on tmp_path: a private decode cache, no $POLARPACK_DATA_DIR."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("POLARPACK_DATA_DIR", raising=False)


def cache_entries(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "cache" / "polarpack" / "decoded").glob("*.safetensors"))


def digest(*tensors: torch.Tensor) -> str:
    return hashlib.sha256(b"".join(t.contiguous().numpy().tobytes() for t in tensors)).hexdigest()[
        :16
    ]


def jpeg_pixels(path: Path) -> torch.Tensor:
    """libjpeg-turbo's pixels, which the pipeline must keep (PIL differs for some files)."""
    from torchvision.io import decode_jpeg, read_file

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_jpeg(read_file(str(path)))


# --------------------------------------------------------------------------- writers


def write_idx(path: Path, arr: np.ndarray, gz: bool) -> Path:
    raw = (
        bytes([0, 0, 0x08, arr.ndim])
        + np.asarray(arr.shape, dtype=">u4").tobytes()
        + arr.astype(np.uint8).tobytes()
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    out = Path(f"{path}.gz") if gz else path
    out.write_bytes(gzip.compress(raw) if gz else raw)
    return out


def write_fashion(data_dir: Path, gz: bool = True, n_train: int = 30, n_test: int = 20) -> dict:
    """torchvision's layout, DIR/FashionMNIST/raw/, as the shared data has it (gzipped)."""
    rng = np.random.default_rng(1)
    out = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(data_dir / "FashionMNIST" / "raw" / f"{prefix}-images-idx3-ubyte", images, gz)
        write_idx(data_dir / "FashionMNIST" / "raw" / f"{prefix}-labels-idx1-ubyte", labels, gz)
        out[split] = (images, labels)
    return out


def write_imagefolder(
    root: Path, classes, per_class: int, *, size=(8, 8), grey=False, ext="png"
) -> dict:
    rng = np.random.default_rng(0)
    arrays = {}
    for split in ("train", "test"):
        for cls in classes:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                arr = rng.integers(0, 256, size if grey else (*size, 3), dtype=np.uint8)
                path = root / split / cls / f"{i:04d}.{ext}"
                Image.fromarray(arr).save(path)
                arrays[path] = arr
    return arrays


def write_cifar_batches(folder: Path, per_batch: int = 4, payload=None) -> dict:
    """torchvision's cifar-10-batches-py layout; `payload` replaces every pickle's contents."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        out[name] = {
            "labels": [int(v) for v in rng.integers(0, 10, per_batch)],
            "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
        }
        (folder / name).write_bytes(pickle.dumps(payload or out[name], protocol=2))
    (folder / "batches.meta").write_bytes(
        pickle.dumps(payload or {"label_names": list(CIFAR10_CLASSES)}, protocol=2)
    )
    return out


class TouchOnUnpickle:
    """Unpickling this creates a file: proof that a pickle was (or was not) executed."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


# --------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("split", [0, 1], ids=["train", "test"])
@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "plain"])
def test_fashion_mnist_from_torchvision_layout(tmp_path, gz, split):
    images, labels = write_fashion(tmp_path, gz)[("train", "test")[split]]
    ds = load_splits("fashion-mnist", data_dir=tmp_path, **WHOLE)[split]
    assert ds.images.dtype == torch.uint8 and ds.images.shape == (len(images), 1, 28, 28)
    assert torch.equal(ds.images[:, 0], torch.from_numpy(images))
    assert ds.labels.dtype == torch.int64 and ds.labels.tolist() == labels.tolist()
    assert ds.classes == list(FASHION_MNIST_CLASSES) and ds.mean == (72.94,) and ds.std == (90.02,)


def test_fashion_mnist_plain_file_wins_over_gz(tmp_path):
    write_fashion(tmp_path, gz=True)
    write_idx(
        tmp_path / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte",
        np.full(20, 7, np.uint8),
        gz=False,
    )
    _, test = load_splits("fashion-mnist", data_dir=tmp_path, **WHOLE)
    assert test.labels.tolist() == [7] * 20


def test_cifar10_python_batches_with_official_md5_are_read(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-10-batches-py"
    batches = write_cifar_batches(folder)
    md5 = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    cls = torchvision.datasets.CIFAR10
    monkeypatch.setattr(cls, "train_list", [[n, md5[n]] for n, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[n, md5[n]] for n, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5["batches.meta"]})
    train, test = load_splits("cifar10", data_dir=tmp_path, **WHOLE)
    want = np.concatenate([batches[f"data_batch_{i}"]["data"] for i in range(1, 6)]).reshape(
        -1, 3, 32, 32
    )
    assert train.images.shape == (20, 3, 32, 32) and torch.equal(
        train.images, torch.from_numpy(want)
    )
    assert train.labels.tolist() == sum(
        (batches[f"data_batch_{i}"]["labels"] for i in range(1, 6)), []
    )
    assert (
        test.labels.dtype == torch.int64 and test.labels.tolist() == batches["test_batch"]["labels"]
    )
    assert train.classes == list(CIFAR10_CLASSES) and (train.mean, train.std) == (
        CIFAR10_MEAN,
        CIFAR10_STD,
    )


def test_cifar10_python_batches_with_wrong_md5_are_refused_not_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    write_cifar_batches(tmp_path / "cifar-10-batches-py", payload=TouchOnUnpickle(marker))
    write_imagefolder(
        tmp_path / "cifar10-jpeg", CIFAR10_CLASSES, per_class=1, size=(32, 32), ext="jpg"
    )
    with pytest.raises(DataError, match="cifar-10-batches-py: refused, not unpickled .*md5"):
        load_splits("cifar10", data_dir=tmp_path)
    assert not marker.exists()


def test_cifar10_jpeg_copy_keeps_libjpeg_turbo_pixels(tmp_path):
    write_imagefolder(
        tmp_path / "cifar10-jpeg", CIFAR10_CLASSES, per_class=2, size=(32, 32), ext="jpg"
    )
    train, test = load_splits("cifar10", data_dir=tmp_path, **WHOLE)
    assert train.images.shape == (20, 3, 32, 32) and train.labels.tolist() == [
        i // 2 for i in range(20)
    ]
    assert train.classes == list(CIFAR10_CLASSES) and (test.mean, test.std) == (
        CIFAR10_MEAN,
        CIFAR10_STD,
    )
    assert torch.equal(
        test.images[5], jpeg_pixels(tmp_path / "cifar10-jpeg" / "test" / "bird" / "0001.jpg")
    )


def test_cifar10_jpeg_copy_needs_the_ten_class_folders(tmp_path):
    write_imagefolder(
        tmp_path / "cifar10-jpeg", CIFAR10_CLASSES[:9], per_class=1, size=(32, 32), ext="jpg"
    )
    with pytest.raises(DataError, match="class folders .* differ"):
        load_splits("cifar10", data_dir=tmp_path)


def test_imagefolder_png_is_exact_with_train_statistics(tmp_path):
    arrays = write_imagefolder(tmp_path / "f", ["b_dog", "a_cat"], per_class=3)
    train, test = load_splits(f"imagefolder:{tmp_path / 'f'}", **WHOLE)
    assert train.classes == ["a_cat", "b_dog"] and train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    first = arrays[tmp_path / "f" / "train" / "a_cat" / "0000.png"]
    assert torch.equal(train.images[0], torch.from_numpy(first).permute(2, 0, 1))
    pixels = train.images.double()
    assert np.allclose(train.mean, pixels.mean(dim=(0, 2, 3)).tolist(), atol=1e-4)
    assert np.allclose(train.std, pixels.std(dim=(0, 2, 3), unbiased=False).tolist(), atol=1e-4)
    assert (test.mean, test.std) == (
        train.mean,
        train.std,
    )  # the test split is normalised like train


def test_imagefolder_relative_to_data_dir_grey(tmp_path):
    write_imagefolder(tmp_path / "d" / "digits", ["0", "1", "2"], per_class=2, grey=True)
    _, test = load_splits("imagefolder:digits", data_dir=tmp_path / "d", **WHOLE)
    assert (
        test.images.shape == (6, 1, 8, 8)
        and len(test.mean) == 1
        and test.classes == ["0", "1", "2"]
    )


def test_imagefolder_mixing_grey_and_rgb_gives_rgb(tmp_path):
    write_imagefolder(tmp_path / "f", ["a", "b"], per_class=1)
    Image.fromarray(np.full((8, 8), 9, np.uint8)).save(tmp_path / "f" / "train" / "b" / "0000.png")
    train, _ = load_splits(f"imagefolder:{tmp_path / 'f'}", **WHOLE)
    assert train.images.shape == (2, 3, 8, 8) and bool((train.images[1] == 9).all())


def mixed_sizes(root: Path) -> None:
    Image.fromarray(np.zeros((9, 8, 3), np.uint8)).save(root / "train" / "b" / "0001.png")


def bad_jpeg(root: Path) -> None:
    (root / "train" / "b" / "0001.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")


def bad_png(root: Path) -> None:
    (root / "train" / "b" / "0001.png").write_bytes(b"\x89PNG truncated")


def empty_class(root: Path) -> None:
    (root / "train" / "c").mkdir()


def extra_test_class(root: Path) -> None:
    (root / "test" / "c").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "test" / "c" / "0000.png")


def no_splits(root: Path) -> None:
    os.rename(root / "test", root / "val")


@pytest.mark.parametrize(
    "damage, match",
    [
        (mixed_sizes, r"b/0001.png: image is \(9, 8\) but .*resize"),
        (bad_jpeg, "b/0001.jpg: cannot decode image"),
        (bad_png, "b/0001.png: cannot decode image"),
        (empty_class, "train: Found no valid file for the classes c"),
        (extra_test_class, r"test: class folders \['a', 'b', 'c'\] differ"),
        (no_splits, "no train/ and test/ subfolders"),
    ],
)
def test_imagefolder_problems_are_one_line_errors_naming_the_file(tmp_path, damage, match):
    write_imagefolder(tmp_path / "f", ["a", "b"], per_class=2)
    damage(tmp_path / "f")
    with pytest.raises(DataError, match=match) as err:
        load_splits(f"imagefolder:{tmp_path / 'f'}")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "name, places",
    [
        ("cifar10", ["cifar-10-batches-py/", "cifar10-jpeg/"]),
        ("fashion-mnist", ["FashionMNIST/raw/"]),
    ],
)
def test_missing_data_lists_where_it_looked_and_the_fix(tmp_path, name, places):
    with pytest.raises(DataError) as err:
        load_splits(name, data_dir=tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and all(f"{tmp_path}/{p}" in msg for p in places)
    assert "--data-dir" in msg and "--download" in msg


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "plain"])
def test_truncated_idx_file_is_named(tmp_path, gz):
    write_fashion(tmp_path, gz=gz)
    path = tmp_path / "FashionMNIST" / "raw" / ("t10k-images-idx3-ubyte" + (".gz" if gz else ""))
    raw = gzip.decompress(path.read_bytes()) if gz else path.read_bytes()
    path.write_bytes(gzip.compress(raw[:-5]) if gz else raw[:-5])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.*truncated"):
        load_splits("fashion-mnist", data_dir=tmp_path)


def test_unknown_dataset_lists_the_names():
    with pytest.raises(DataError, match="unknown dataset 'mnist'; use cifar10, .*imagefolder:PATH"):
        load_splits("mnist")


@pytest.mark.parametrize("where", ["env", "xdg"])
def test_default_data_dir(tmp_path, monkeypatch, where):
    data_dir = tmp_path / "mine" if where == "env" else tmp_path / "cache" / "polarpack" / "data"
    if where == "env":
        monkeypatch.setenv("POLARPACK_DATA_DIR", str(data_dir))
    write_fashion(data_dir)
    train, _ = load_splits("fashion-mnist", **WHOLE)
    assert len(train.labels) == 30


def test_download_goes_through_torchvision(tmp_path, monkeypatch):
    calls = []

    class FakeFashionMNIST:
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            write_fashion(Path(root))

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", FakeFashionMNIST)
    train, _ = load_splits("fashion-mnist", data_dir=tmp_path / "new", download=True, **WHOLE)
    assert len(train.labels) == 30 and calls == [(str(tmp_path / "new"), True, True)]
    load_splits("fashion-mnist", data_dir=tmp_path / "new", download=True)
    assert len(calls) == 1  # present now: not fetched again


def test_failed_download_is_a_data_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(
        DataError, match="cifar10: download into .* failed .*no network.*--data-dir"
    ):
        load_splits("cifar10", data_dir=tmp_path, download=True)


def test_mini_dataset_loads_offline_and_uncached(tmp_path, monkeypatch):
    monkeypatch.setenv("POLARPACK_DATA_DIR", str(tmp_path / "does-not-exist"))
    train, test = load_splits("fashion-mnist-mini", **WHOLE)
    assert train.images.shape == (2000, 1, 28, 28) and test.images.shape == (500, 1, 28, 28)
    assert (
        torch.bincount(train.labels).tolist() == [200] * 10
        and torch.bincount(test.labels).tolist() == [50] * 10
    )
    assert train.classes == list(FASHION_MNIST_CLASSES) and train.mean == (72.94,)
    assert not (tmp_path / "cache").exists()


def test_mini_seed_protocol_is_pinned():
    """The bytes the numerics fingerprint trains on: a change here means the experiment grid must
    restart."""
    train, val = load_splits("fashion-mnist-mini", train_size=300, val_size=100, seed=0)
    assert digest(train.images, train.labels, val.images, val.labels) == "7e02587525773b2d"


# --------------------------------------------------------------------------- decode cache


@pytest.mark.parametrize("name", ["imagefolder", "fashion-mnist"])
def test_second_load_comes_from_the_safetensors_cache(tmp_path, monkeypatch, name):
    write_imagefolder(tmp_path / "f", ["a", "b"], per_class=2)
    write_fashion(tmp_path)
    dataset = f"imagefolder:{tmp_path / 'f'}" if name == "imagefolder" else name
    first, _ = load_splits(dataset, data_dir=tmp_path, **WHOLE)
    entries = cache_entries(tmp_path)
    assert len(entries) == 2 and all(set(load_file(e)) == {"images", "labels"} for e in entries)

    def no_decoding(*args):
        raise AssertionError("decoded again although the source did not change")

    monkeypatch.setattr(data, "_decode_files", no_decoding)
    monkeypatch.setattr(data, "read_idx", no_decoding)
    again, _ = load_splits(dataset, data_dir=tmp_path, **WHOLE)
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    assert (again.classes, again.mean, again.std) == (first.classes, first.mean, first.std)


def edit_image(path: Path) -> None:
    Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(path)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def remove_image(path: Path) -> None:
    path.unlink()


@pytest.mark.parametrize(
    "change, name, count, sevens",
    [
        (edit_image, "0000.png", 4, [2]),
        (edit_image, "0009.png", 5, [4]),
        (remove_image, "0001.png", 3, []),
    ],
    ids=["edited", "added", "removed"],
)
def test_cache_notices_an_edited_added_or_removed_file(tmp_path, change, name, count, sevens):
    write_imagefolder(tmp_path / "f", ["a", "b"], per_class=2)
    dataset = f"imagefolder:{tmp_path / 'f'}"
    load_splits(dataset, **WHOLE)
    change(tmp_path / "f" / "train" / "b" / name)
    train, _ = load_splits(dataset, **WHOLE)
    assert (
        len(train.labels) == count and len(cache_entries(tmp_path)) == 2
    )  # the stale entry is gone
    assert [i for i in range(count) if bool((train.images[i] == 7).all())] == sevens


def test_cache_notices_a_same_size_change_by_its_mtime(tmp_path):
    write_fashion(tmp_path, gz=False)
    assert load_splits("fashion-mnist", data_dir=tmp_path, **WHOLE)[1].labels[0] == 0
    path = write_idx(
        tmp_path / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte",
        np.full(20, 9, np.uint8),
        gz=False,
    )
    os.utime(path, ns=(0, 10**18))
    assert load_splits("fashion-mnist", data_dir=tmp_path, **WHOLE)[1].labels.tolist() == [9] * 20


def test_corrupt_cache_entry_is_decoded_again(tmp_path):
    write_fashion(tmp_path)
    want, _ = load_splits("fashion-mnist", data_dir=tmp_path, **WHOLE)
    for entry in cache_entries(tmp_path):
        entry.write_bytes(entry.read_bytes()[:100])
    with pytest.warns(UserWarning, match="unreadable decode cache"):
        again, _ = load_splits("fashion-mnist", data_dir=tmp_path, **WHOLE)
    assert torch.equal(again.images, want.images)


def test_unwritable_cache_only_costs_a_redecode(tmp_path, monkeypatch):
    write_fashion(tmp_path)
    (tmp_path / "not-a-dir").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "not-a-dir"))
    with pytest.warns(UserWarning, match="cannot write decode cache"):
        train, _ = load_splits("fashion-mnist", data_dir=tmp_path, **WHOLE)
    assert len(train.labels) == 30


# --------------------------------------------------------------------------- the paper's protocol


def test_balanced_subset_gives_short_classes_all_they_have():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 4 + [3] * 16)
    pick = balanced_subset(labels, 30, torch.Generator().manual_seed(3))
    assert torch.bincount(labels[pick], minlength=4).tolist() == [9, 9, 4, 8]
    assert torch.equal(pick, pick.sort().values) and len(pick.unique()) == 30


@pytest.mark.parametrize("size", [1, 25, 99])
def test_balanced_subset_counts_differ_by_at_most_one(size):
    labels = torch.arange(100) % 10
    counts = torch.bincount(
        labels[balanced_subset(labels, size, torch.Generator().manual_seed(0))], minlength=10
    )
    assert counts.sum() == size and counts.max() - counts.min() <= 1


def test_balanced_subset_is_seed_reproducible_and_pinned():
    labels = torch.arange(100) % 10
    pick = balanced_subset(labels, 25, torch.Generator().manual_seed(0))
    assert pick.tolist() == [
        8,
        19,
        26,
        35,
        37,
        42,
        44,
        53,
        56,
        57,
        69,
        71,
        74,
        76,
        78,
        80,
        82,
        85,
        89,
        90,
        91,
        93,
        95,
        97,
        98,
    ]
    assert not torch.equal(pick, balanced_subset(labels, 25, torch.Generator().manual_seed(1)))


def test_balanced_subset_rejects_a_size_beyond_the_split():
    with pytest.raises(ConfigError, match="outside 0..100"):
        balanced_subset(torch.arange(100) % 10, 101)


def test_load_splits_draws_balanced_seeded_subsets():
    train, val = load_splits("fashion-mnist-mini", train_size=100, val_size=200, seed=5)
    assert (
        torch.bincount(train.labels).tolist() == [10] * 10
        and torch.bincount(val.labels).tolist() == [20] * 10
    )
    again, _ = load_splits("fashion-mnist-mini", train_size=100, val_size=200, seed=5)
    other, _ = load_splits("fashion-mnist-mini", train_size=100, val_size=200, seed=6)
    assert torch.equal(train.images, again.images) and not torch.equal(train.images, other.images)


def test_validation_subset_does_not_depend_on_train_size():
    _, val_a = load_splits("fashion-mnist-mini", train_size=50, val_size=200, seed=5)
    _, val_b = load_splits("fashion-mnist-mini", train_size=None, val_size=200, seed=5)
    assert torch.equal(val_a.images, val_b.images) and torch.equal(val_a.labels, val_b.labels)


@pytest.mark.parametrize("size", [None, 2000, 10**6])
def test_whole_split_in_order_for_none_or_a_size_beyond_it(size):
    train, _ = load_splits("fashion-mnist-mini", train_size=size, val_size=None)
    whole, _ = load_splits("fashion-mnist-mini", **WHOLE)
    assert len(train.labels) == 2000 and torch.equal(train.labels, whole.labels)


@pytest.mark.parametrize("sizes", [{"train_size": 0}, {"val_size": -1}])
def test_subset_size_below_one_is_refused(sizes):
    with pytest.raises(ConfigError, match="must be at least 1"):
        load_splits("fashion-mnist-mini", **sizes)


# --------------------------------------------------------------------------- batching


def test_batch_indices_split_one_permutation():
    batches = batch_indices(10, 4, torch.Generator().manual_seed(0))
    assert [b.tolist() for b in batches] == [[4, 1, 7, 5], [3, 9, 0, 8], [6, 2]]
    assert torch.equal(
        torch.cat(batches), torch.randperm(10, generator=torch.Generator().manual_seed(0))
    )


@pytest.mark.parametrize("n, batch_size, sizes", [(10, 5, [5, 5]), (3, 8, [3]), (0, 4, [])])
def test_batch_indices_sizes(n, batch_size, sizes):
    assert [len(b) for b in batch_indices(n, batch_size)] == sizes


@pytest.mark.parametrize("n, batch_size", [(10, 0), (-1, 4)])
def test_batch_indices_rejects_bad_arguments(n, batch_size):
    with pytest.raises(ConfigError):
        batch_indices(n, batch_size)


def test_prepare_batch_normalises_per_channel():
    images = torch.arange(2 * 3 * 4 * 4).reshape(2, 3, 4, 4).to(torch.uint8)
    out = prepare_batch(images, (10.0, 20.0, 30.0), (2.0, 4.0, 5.0))
    want = (images.float() - torch.tensor([10.0, 20.0, 30.0]).view(1, 3, 1, 1)) / torch.tensor(
        [2.0, 4.0, 5.0]
    ).view(1, 3, 1, 1)
    assert out.dtype == torch.float32 and torch.equal(out, want)
    assert images.dtype == torch.uint8  # the stored images are untouched


def test_prepare_batch_resizes_grey_then_expands_to_three_channels():
    import torchvision.transforms.v2.functional as TF

    grey = torch.randint(
        0, 256, (5, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    out = prepare_batch(grey, (72.94,), (90.02,), size=227)
    assert (
        out.shape == (5, 3, 227, 227) and out.is_contiguous() and torch.equal(out[:, 0], out[:, 2])
    )
    want = TF.resize((grey.float() - 72.94) / 90.02, [227, 227], antialias=True)
    assert torch.allclose(out[:, :1], want, atol=1e-5)


@pytest.mark.parametrize(
    "size, channels, shape",
    [(28, 1, (5, 1, 28, 28)), (None, 1, (5, 1, 28, 28)), (14, 3, (5, 3, 14, 14))],
)
def test_prepare_batch_shapes(size, channels, shape):
    grey = torch.zeros(5, 1, 28, 28, dtype=torch.uint8)
    assert prepare_batch(grey, (72.94,), (90.02,), size=size, channels=channels).shape == shape


@pytest.mark.parametrize(
    "images, mean, channels, match",
    [
        (torch.zeros(1, 3, 4, 4, dtype=torch.uint8), CIFAR10_MEAN, 1, "only grey -> 3"),
        (torch.zeros(1, 3, 4, 4), CIFAR10_MEAN, 3, "uint8"),
        (torch.zeros(1, 3, 4, 4, dtype=torch.uint8), (1.0, 2.0), 3, "mean/std"),
    ],
)
def test_prepare_batch_errors(images, mean, channels, match):
    with pytest.raises(DataError, match=match):
        prepare_batch(images, mean, CIFAR10_STD[: len(mean)], channels=channels)


# --------------------------------------------------------------------------- real data


def test_real_fashion_mnist_seed_protocol_is_pinned(shared_data_dir):
    """The `fashion-mnist data` line of benchmarks/numerics_fingerprint.py."""
    train, val = load_splits("fashion-mnist", data_dir=shared_data_dir, seed=0)
    assert digest(train.images, train.labels, val.images, val.labels) == "d00637a7664c5fb5"
    assert torch.bincount(train.labels).tolist() == [1000] * 10


def test_real_cifar10_jpeg_slice_is_pinned(shared_data_dir, tmp_path):
    """Three real files per class through the cifar10 path (symlinks: no 60,000 decodes)."""
    source = shared_data_dir / "cifar10-jpeg"
    for split in ("train", "test"):
        for cls in CIFAR10_CLASSES:
            (tmp_path / "cifar10-jpeg" / split / cls).mkdir(parents=True)
            for name in sorted(os.listdir(source / split / cls))[:3]:
                os.symlink(
                    source / split / cls / name, tmp_path / "cifar10-jpeg" / split / cls / name
                )
    train, test = load_splits("cifar10", data_dir=tmp_path, **WHOLE)
    assert digest(train.images, test.images) == "afebde464b1ee634"
    assert torch.bincount(test.labels).tolist() == [3] * 10
    assert torch.equal(test.images[9], jpeg_pixels(source / "test" / "cat" / "0000.jpg"))
