"""polarpack.data through its public API: layouts, search order, cache, seed protocol, batching."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from polarpack import data
from polarpack.data import (
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    FASHION_MNIST_CLASSES,
    ImageDataset,
    balanced_subset,
    batch_indices,
    dataset_info,
    default_data_dir,
    list_datasets,
    load_dataset,
    load_splits,
    prepare_batch,
)
from polarpack.errors import ConfigError, DataError


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Never touch ~/.cache or a system-wide Fashion-MNIST: results depend only on tmp_path."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("POLARPACK_DATA_DIR", raising=False)
    monkeypatch.setattr(data, "_SYSTEM_FASHION_DIRS", ())


def cached_files(tmp_path: Path) -> list[str]:
    folder = tmp_path / "cache" / "polarpack" / "decoded"
    return sorted(p.name for p in folder.glob("*.pt")) if folder.is_dir() else []


# --------------------------------------------------------------------------- writers


def write_cifar_batches(folder: Path, per_batch: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    """torchvision's cifar-10-batches-py layout: pickled dicts, data uint8 N x 3072, labels list."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            "batch_label": name,
            "labels": [int(v) for v in rng.integers(0, 10, per_batch)],
            "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            "filenames": [f"img_{i}.png" for i in range(per_batch)],
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        out[name] = batch
    meta = {"num_cases_per_batch": per_batch, "label_names": list(CIFAR10_CLASSES), "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return out


def write_idx(path: Path, arr: np.ndarray, gz: bool) -> None:
    raw = bytes([0, 0, 0x08, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes() + arr.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        Path(f"{path}.gz").write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)


def write_fashion(folder: Path, gz: bool, n_train: int = 30, n_test: int = 20) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(1)
    out = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images, gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, gz)
        out[split] = (images, labels)
    return out


def write_imagefolder(root: Path, classes, per_class: int, *, size=(8, 8), grey=False, ext="png", seed=0) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {}
    for split in ("train", "test"):
        for cls in classes:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                shape = size if grey else (*size, 3)
                arr = rng.integers(0, 256, shape, dtype=np.uint8)
                path = root / split / cls / f"{i:04d}.{ext}"
                Image.fromarray(arr).save(path)
                arrays[path] = arr
    return arrays


# --------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("inside", ["cifar-10-batches-py", "."])
def test_cifar_python_batches(tmp_path, inside):
    batches = write_cifar_batches(tmp_path / "d" / inside)
    train = load_dataset("cifar10", "train", data_dir=tmp_path / "d")
    test = load_dataset("cifar10", "test", data_dir=tmp_path / "d")
    assert train.images.shape == (100, 3, 32, 32) and test.images.shape == (20, 3, 32, 32)
    want = np.concatenate([batches[f"data_batch_{i}"]["data"] for i in range(1, 6)]).reshape(-1, 3, 32, 32)
    assert torch.equal(train.images, torch.from_numpy(want))
    assert train.labels.tolist() == sum((batches[f"data_batch_{i}"]["labels"] for i in range(1, 6)), [])
    assert test.labels.dtype == torch.int64 and test.labels.tolist() == batches["test_batch"]["labels"]
    assert train.classes == list(CIFAR10_CLASSES) and train.name == "cifar10" and train.split == "train"
    assert train.mean == CIFAR10_MEAN and train.std == CIFAR10_STD
    assert "python batches" in train.source


def test_cifar_batch_with_foreign_pickle_global_is_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_batches(folder)
    (folder / "test_batch").write_bytes(pickle.dumps({"data": os.getcwd, "labels": []}, protocol=2))
    with pytest.raises(DataError, match="test_batch.*not allowed"):
        load_dataset("cifar10", "test", data_dir=tmp_path)


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "plain"])
@pytest.mark.parametrize("layout", ["FashionMNIST/raw", "fashion-mnist", "."])
def test_fashion_mnist_idx(tmp_path, gz, layout):
    written = write_fashion(tmp_path / "d" / layout, gz)
    for split in ("train", "test"):
        ds = load_dataset("fashion-mnist", split, data_dir=tmp_path / "d")
        images, labels = written[split]
        assert ds.images.shape == (len(images), 1, 28, 28) and ds.images.dtype == torch.uint8
        assert torch.equal(ds.images[:, 0], torch.from_numpy(images))
        assert ds.labels.tolist() == labels.tolist()
        assert ds.classes == list(FASHION_MNIST_CLASSES) and ds.mean == (72.94,) and ds.std == (90.02,)


def test_idx_truncated_file_names_the_file(tmp_path):
    write_fashion(tmp_path / "FashionMNIST" / "raw", gz=False)
    path = tmp_path / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.*truncated"):
        load_dataset("fashion-mnist", "test", data_dir=tmp_path)


def test_imagefolder_rgb_png_is_exact_with_train_statistics(tmp_path):
    arrays = write_imagefolder(tmp_path / "folder", ["b_dog", "a_cat"], per_class=3)
    train = load_dataset(f"imagefolder:{tmp_path / 'folder'}", "train")
    test = load_dataset(f"imagefolder:{tmp_path / 'folder'}", "test")
    assert train.classes == ["a_cat", "b_dog"]  # sorted, as torchvision's ImageFolder
    assert train.images.shape == (6, 3, 8, 8) and train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    first = arrays[tmp_path / "folder" / "train" / "a_cat" / "0000.png"]
    assert torch.equal(train.images[0], torch.from_numpy(first).permute(2, 0, 1))
    pixels = train.images.double()
    assert np.allclose(train.mean, pixels.mean(dim=(0, 2, 3)).tolist(), atol=1e-3)
    assert np.allclose(train.std, pixels.std(dim=(0, 2, 3), unbiased=False).tolist(), atol=1e-3)
    assert test.mean == train.mean and test.std == train.std  # the test split is normalised like train


def test_imagefolder_relative_to_data_dir_grey_and_jpeg(tmp_path):
    write_imagefolder(tmp_path / "d" / "mnistish", ["0", "1", "2"], per_class=2, grey=True, ext="jpg")
    ds = load_dataset("imagefolder:mnistish", "test", data_dir=tmp_path / "d")
    assert ds.images.shape == (6, 1, 8, 8) and len(ds.mean) == 1 and ds.num_classes == 3
    info = dataset_info("imagefolder:mnistish", data_dir=tmp_path / "d")
    assert (info.num_classes, info.channels, info.image_size) == (3, 1, (8, 8))


def test_imagefolder_mixed_sizes_name_the_file(tmp_path):
    write_imagefolder(tmp_path / "f", ["a", "b"], per_class=2)
    Image.fromarray(np.zeros((9, 8, 3), np.uint8)).save(tmp_path / "f" / "train" / "b" / "0001.png")
    with pytest.raises(DataError, match=r"b/0001.png: image is \(9, 8\).*resize"):
        load_dataset(f"imagefolder:{tmp_path / 'f'}", "train")


def test_imagefolder_without_splits_says_what_it_needs(tmp_path):
    with pytest.raises(DataError, match="no train/ and test/"):
        load_dataset(f"imagefolder:{tmp_path}", "train")


def test_cifar10_found_as_imagefolder_copy_inside_data_dir(tmp_path):
    write_imagefolder(tmp_path / "d" / "some-cifar-copy", CIFAR10_CLASSES, per_class=1, size=(32, 32), ext="jpg")
    (tmp_path / "d" / "unrelated" / "train").mkdir(parents=True)
    ds = load_dataset("cifar10", "train", data_dir=tmp_path / "d")
    assert ds.images.shape == (10, 3, 32, 32) and ds.labels.tolist() == list(range(10))
    assert ds.classes == list(CIFAR10_CLASSES) and ds.mean == CIFAR10_MEAN
    assert "some-cifar-copy" in ds.source
    with Image.open(tmp_path / "d" / "some-cifar-copy" / "train" / "bird" / "0000.jpg") as im:
        pil = torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)
    assert (ds.images[2].int() - pil.int()).abs().max() <= 2  # same JPEG, two decoders


def test_missing_dataset_lists_every_place_and_the_fix(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", "train", data_dir=empty)
    msg = str(err.value)
    assert "\n" not in msg and f"{empty}/cifar-10-batches-py/" in msg and "subfolders" in msg
    assert "--data-dir" in msg and "--download" in msg
    with pytest.raises(DataError) as err:
        load_dataset("fashion-mnist", "test", data_dir=empty)
    msg = str(err.value)
    for place in (f"{empty}/FashionMNIST/raw/", f"{empty}/fashion-mnist/", f"{empty}/"):
        assert place in msg
    assert "--data-dir" in msg and "--download" in msg


def test_default_data_dir_env_then_xdg(tmp_path, monkeypatch):
    assert default_data_dir() == tmp_path / "cache" / "polarpack" / "data"
    monkeypatch.setenv("POLARPACK_DATA_DIR", str(tmp_path / "mine"))
    assert default_data_dir() == tmp_path / "mine"
    write_fashion(tmp_path / "mine" / "FashionMNIST" / "raw", gz=True)
    assert len(load_dataset("fashion-mnist", "train")) == 30


def test_download_goes_through_torchvision(tmp_path, monkeypatch):
    import torchvision.datasets

    calls = []

    class FakeCIFAR10:
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            write_cifar_batches(Path(root) / "cifar-10-batches-py")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    ds = load_dataset("cifar10", "test", data_dir=tmp_path / "new", download=True)
    assert len(ds) == 20 and calls[0] == (str(tmp_path / "new"), True, True)

    class Offline:
        def __init__(self, *args, **kwargs):
            raise OSError("no network")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", Offline)
    with pytest.raises(DataError, match="download into .* failed .*no network.*--data-dir"):
        load_dataset("fashion-mnist", "train", data_dir=tmp_path / "other", download=True)


# --------------------------------------------------------------------------- cache


def test_decoded_once_then_loaded_from_cache(tmp_path, monkeypatch):
    write_imagefolder(tmp_path / "f", ["a", "b"], per_class=2)
    first = load_dataset(f"imagefolder:{tmp_path / 'f'}", "train")
    assert len(cached_files(tmp_path)) == 1

    def no_decoding(paths):
        raise AssertionError("decoded again although the source did not change")

    monkeypatch.setattr(data, "_decode_files", no_decoding)
    again = load_dataset(f"imagefolder:{tmp_path / 'f'}", "train")
    assert torch.equal(first.images, again.images) and first.mean == again.mean


def test_cache_notices_a_changed_image(tmp_path):
    write_imagefolder(tmp_path / "f", ["a", "b"], per_class=2)
    name = f"imagefolder:{tmp_path / 'f'}"
    before = load_dataset(name, "train")
    path = tmp_path / "f" / "train" / "b" / "0000.png"
    Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(path)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    after = load_dataset(name, "train")
    assert not torch.equal(before.images[2], after.images[2]) and bool((after.images[2] == 7).all())
    assert len(cached_files(tmp_path)) == 1  # the stale entry is gone


def test_cache_notices_a_changed_idx_file(tmp_path):
    folder = tmp_path / "FashionMNIST" / "raw"
    write_fashion(folder, gz=True)
    assert load_dataset("fashion-mnist", "test", data_dir=tmp_path).labels[0] == 0
    write_idx(folder / "t10k-labels-idx1-ubyte", np.full(20, 9, np.uint8), gz=True)
    os.utime(folder / "t10k-labels-idx1-ubyte.gz", ns=(0, 10**18))
    assert load_dataset("fashion-mnist", "test", data_dir=tmp_path).labels.tolist() == [9] * 20


def test_corrupt_cache_entry_is_decoded_again(tmp_path):
    write_fashion(tmp_path / "FashionMNIST" / "raw", gz=False)
    want = load_dataset("fashion-mnist", "train", data_dir=tmp_path)
    (entry,) = (tmp_path / "cache" / "polarpack" / "decoded").glob("*.pt")
    entry.write_bytes(b"not a torch file")
    assert torch.equal(load_dataset("fashion-mnist", "train", data_dir=tmp_path).images, want.images)


# --------------------------------------------------------------------------- seed protocol


def test_balanced_subset_is_balanced_and_seed_reproducible():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 4 + [3] * 16)
    pick = balanced_subset(labels, 30, torch.Generator().manual_seed(3))
    assert torch.bincount(labels[pick], minlength=4).tolist() == [9, 9, 4, 8]  # class 2 gives all it has
    assert torch.equal(pick, pick.sort().values) and len(pick.unique()) == 30
    assert torch.equal(pick, balanced_subset(labels, 30, torch.Generator().manual_seed(3)))
    assert not torch.equal(pick, balanced_subset(labels, 30, torch.Generator().manual_seed(4)))
    even = balanced_subset(torch.arange(100) % 10, 25, torch.Generator().manual_seed(0))
    counts = torch.bincount((torch.arange(100) % 10)[even])
    assert counts.sum() == 25 and counts.max() - counts.min() <= 1
    with pytest.raises(ConfigError, match="outside 0..100"):
        balanced_subset(torch.arange(100) % 10, 101)


def test_load_splits_follows_the_seed_protocol(monkeypatch):
    train, val = load_splits("fashion-mnist-mini", train_size=100, val_size=None, seed=5)
    assert len(train) == 100 and torch.bincount(train.labels).tolist() == [10] * 10
    assert len(val) == 500 and val.split == "test"
    again, _ = load_splits("fashion-mnist-mini", train_size=100, val_size=None, seed=5)
    other, _ = load_splits("fashion-mnist-mini", train_size=100, val_size=None, seed=6)
    assert torch.equal(train.images, again.images) and not torch.equal(train.images, other.images)
    _, val_a = load_splits("fashion-mnist-mini", train_size=50, val_size=200, seed=5)
    _, val_b = load_splits("fashion-mnist-mini", train_size=None, val_size=200, seed=5)
    assert torch.equal(val_a.labels, val_b.labels) and torch.bincount(val_a.labels).tolist() == [20] * 10
    everything, _ = load_splits("fashion-mnist-mini", train_size=10**6, val_size=1)
    assert len(everything) == 2000
    with pytest.raises(ConfigError, match="at least 1"):
        load_splits("fashion-mnist-mini", train_size=0)


# --------------------------------------------------------------------------- batching


def test_batch_indices_one_permutation_per_epoch():
    batches = batch_indices(10, 4, torch.Generator().manual_seed(0))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(torch.cat(batches).tolist()) == list(range(10))
    same = batch_indices(10, 4, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(batches, same))
    assert [len(b) for b in batch_indices(10, 4, drop_last=True)] == [4, 4]
    assert torch.cat(batch_indices(10, 3, shuffle=False)).tolist() == list(range(10))
    assert batch_indices(0, 4) == []
    with pytest.raises(ConfigError):
        batch_indices(10, 0)


def test_prepare_batch_normalises_per_channel():
    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.int64).reshape(2, 3, 4, 4).to(torch.uint8)
    out = prepare_batch(images, (10.0, 20.0, 30.0), (2.0, 4.0, 5.0))
    assert out.dtype == torch.float32 and out.shape == (2, 3, 4, 4)
    want = (images.float() - torch.tensor([10.0, 20.0, 30.0]).view(1, 3, 1, 1)) / torch.tensor([2.0, 4.0, 5.0]).view(1, 3, 1, 1)
    assert torch.allclose(out, want)
    assert torch.allclose(prepare_batch(images, torch.tensor([10.0, 20.0, 30.0]), [2.0, 4.0, 5.0]), want)
    assert images.dtype == torch.uint8  # the stored images are untouched


def test_prepare_batch_grey_to_three_channels_and_resize():
    import torchvision.transforms.v2.functional as TF

    grey = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = prepare_batch(grey, (72.94,), (90.02,), size=227)
    assert out.shape == (5, 3, 227, 227) and out.is_contiguous()
    assert torch.equal(out[:, 0], out[:, 2])
    want = TF.resize((grey.float() - 72.94) / 90.02, [227, 227], antialias=True)
    assert torch.allclose(out[:, :1], want, atol=1e-5)
    small = prepare_batch(grey, (72.94,), (90.02,), size=28, channels=1)
    assert small.shape == (5, 1, 28, 28)
    down = prepare_batch(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), CIFAR10_MEAN, CIFAR10_STD, size=16)
    assert down.shape == (2, 3, 16, 16)
    with pytest.raises(DataError, match="only grey -> 3 channels"):
        prepare_batch(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), CIFAR10_MEAN, CIFAR10_STD, channels=1)
    with pytest.raises(DataError, match="uint8"):
        prepare_batch(torch.zeros(1, 3, 4, 4), CIFAR10_MEAN, CIFAR10_STD)
    with pytest.raises(DataError, match="mean/std"):
        prepare_batch(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), (1.0, 2.0), (1.0, 2.0))


# --------------------------------------------------------------------------- registry, mini


def test_registry_and_info():
    assert list_datasets() == ["cifar10", "fashion-mnist", "fashion-mnist-mini"]
    info = dataset_info("CIFAR-10")
    assert (info.name, info.num_classes, info.channels, info.image_size) == ("cifar10", 10, 3, (32, 32))
    assert dataset_info("fashion_mnist").channels == 1
    with pytest.raises(DataError, match="unknown dataset 'mnist'; choose one of cifar10, .*imagefolder:PATH"):
        dataset_info("mnist")
    with pytest.raises(DataError, match="unknown split 'val'"):
        load_dataset("fashion-mnist-mini", "val")


def test_mini_dataset_loads_offline_without_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("POLARPACK_DATA_DIR", str(tmp_path / "does-not-exist"))
    train = load_dataset("fashion-mnist-mini", "train")
    test = load_dataset("fashion-mnist-mini", "test")
    assert train.images.shape == (2000, 1, 28, 28) and test.images.shape == (500, 1, 28, 28)
    assert torch.bincount(train.labels).tolist() == [200] * 10 and torch.bincount(test.labels).tolist() == [50] * 10
    assert train.classes == list(FASHION_MNIST_CLASSES) and train.mean == (72.94,)
    assert 20 < train.images.float().mean() < 120  # real clothes, not noise or zeros
    assert not (tmp_path / "cache").exists()  # nothing decoded, nothing cached


def test_image_dataset_rejects_bad_tensors():
    with pytest.raises(DataError, match="uint8 N x C x H x W"):
        ImageDataset(torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.int64), ["a"], "x", (0.0,), (1.0,))
    with pytest.raises(DataError, match="labels must be an int64 tensor of length 2"):
        ImageDataset(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64), ["a"], "x", (0.0,), (1.0,))


# --------------------------------------------------------------------------- real data


def test_real_fashion_mnist(shared_data_dir):
    if not (shared_data_dir / "FashionMNIST" / "raw").is_dir():
        pytest.skip(f"no FashionMNIST/raw in {shared_data_dir}")
    train = load_dataset("fashion-mnist", "train", data_dir=shared_data_dir)
    test = load_dataset("fashion-mnist", "test", data_dir=shared_data_dir)
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert abs(train.images.float().mean().item() - 72.94) < 0.05  # the prior-work constant


def test_real_cifar10_jpeg_slice(shared_data_dir, tmp_path):
    """A few real files per class through the cifar10 ImageFolder path (symlinks, not 60k decodes)."""
    source = shared_data_dir / "cifar10-jpeg"
    if not source.is_dir():
        pytest.skip(f"no cifar10-jpeg in {shared_data_dir}")
    for split in ("train", "test"):
        for cls in CIFAR10_CLASSES:
            (tmp_path / "d" / "cifar10-jpeg" / split / cls).mkdir(parents=True)
            for name in sorted(os.listdir(source / split / cls))[:3]:
                os.symlink(source / split / cls / name, tmp_path / "d" / "cifar10-jpeg" / split / cls / name)
    test = load_dataset("cifar10", "test", data_dir=tmp_path / "d")
    assert test.images.shape == (30, 3, 32, 32) and torch.bincount(test.labels).tolist() == [3] * 10
    with Image.open(source / "test" / "cat" / "0000.jpg") as im:
        pil = torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)
    assert (test.images[9].int() - pil.int()).abs().max() <= 2


def test_undecodable_jpeg_names_the_file(tmp_path):
    write_imagefolder(tmp_path / "f", ["a", "b"], per_class=2, ext="jpg")
    (tmp_path / "f" / "test" / "b" / "0001.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(DataError, match="b/0001.jpg: cannot decode image"):
        load_dataset(f"imagefolder:{tmp_path / 'f'}", "test")
