"""polarpack.extract / polarpack.sources: counts checked against independent numpy counts.

Real weights: torchvision's ImageNet MobileNetV2 checkpoint from the shared data folder
(see tests/conftest.py: shared_data_dir). Everything else is built in tmp_path.
"""

from __future__ import annotations

import json
import socket
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from polarpack import format as fmt
from polarpack._io import sha256_file
from polarpack.errors import ConfigError, FormatError, SourceError
from polarpack.extract import count_signs, extract
from polarpack.sources import load_distribution, load_state_dict, looks_hwio, open_weights

MNV2_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnv2_path(shared_data_dir: Path) -> Path:
    path = shared_data_dir / "weights" / "mobilenet_v2-b0353104.pth"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path


@pytest.fixture(scope="module")
def mnv2_sd(mnv2_path: Path) -> dict[str, torch.Tensor]:
    return torch.load(mnv2_path, weights_only=True, map_location="cpu")


def numpy_counts(sd, *, tol: float = 0.0, linear: bool = False) -> dict[str, tuple[tuple[int, int, int], tuple]]:
    """The reference: layer -> ((n0, n_neg, n_pos), shape), computed independently with numpy
    (float64 comparisons, so the tolerance is applied exactly)."""
    out = {}
    for key, t in sd.items():
        if not key.endswith(".weight") or t.dim() not in ((2, 3, 4, 5) if linear else (3, 4, 5)):
            continue
        a = t.double().numpy()
        out[key[: -len(".weight")]] = (
            (int((np.abs(a) <= tol).sum()), int((a < -tol).sum()), int((a > tol).sum())),
            tuple(a.shape),
        )
    return out


def as_table(dist: fmt.Distribution) -> dict[str, tuple[tuple[int, int, int], tuple]]:
    return {l.name: (l.counts, l.shape) for l in dist.layers}


def assert_valid(dist: fmt.Distribution) -> None:
    """Round-trips through both encodings and validates."""
    fmt.validate(dist)
    assert fmt.decode(fmt.encode_json(dist)) == dist
    assert fmt.decode(fmt.encode_safetensors(dist)) == dist


# -- real checkpoint -------------------------------------------------------------------------


def test_mobilenet_pth_matches_numpy(mnv2_path, mnv2_sd):
    dist = extract(mnv2_path)
    ref = numpy_counts(mnv2_sd)
    assert len(ref) == 52
    assert dist.names == list(ref)  # model order
    assert as_table(dist) == ref
    assert all(l.kind == "conv" for l in dist.layers)
    assert dist.source["type"] == "file"
    assert dist.source["file"] == mnv2_path.name
    assert dist.source["sha256"] == MNV2_SHA256
    ex = dist.extraction
    assert ex["zero_tol"] == 0.0 and ex["expand_groups"] is False and ex["include_linear"] is False
    assert ex["layers"] is None and ex["layout"] == "OIHW" and ex["source_layout"] == "auto"
    assert_valid(dist)


def test_safetensors_copy_and_checkpoint_dicts_are_identical(tmp_path, mnv2_path, mnv2_sd):
    base = extract(mnv2_path, hash_file=False)
    st = tmp_path / "mnv2.safetensors"
    save_file(mnv2_sd, str(st))
    d_st = extract(st)
    assert d_st.layers == base.layers  # same names, order, shapes and counts
    assert d_st.source["format"] == "safetensors" and d_st.source["sha256"] == sha256_file(st)

    ck = tmp_path / "ckpt.pth"
    torch.save({"state_dict": mnv2_sd, "epoch": 3, "optimizer": {}}, ck)
    assert extract(ck).layers == base.layers
    ck2 = tmp_path / "ckpt2.pt"  # DataParallel-style 'module.' keys under 'model'
    torch.save({"model": {f"module.{k}": v for k, v in mnv2_sd.items()}}, ck2)
    assert extract(ck2).layers == base.layers
    assert "sha256" not in extract(ck2, hash_file=False).source


def test_include_linear_and_globs(mnv2_path, mnv2_sd):
    ref = numpy_counts(mnv2_sd, linear=True)
    dist = extract(mnv2_path, include_linear=True, hash_file=False)
    assert as_table(dist) == ref and dist.names[-1] == "classifier.1"
    assert dist["classifier.1"].kind == "linear" and dist["classifier.1"].shape == (1000, 1280)

    sub = extract(mnv2_path, layers=["features.1?.conv.1.0", "features.0.*"], hash_file=False)
    assert sub.names == ["features.0.0"] + [f"features.{i}.conv.1.0" for i in range(10, 18)]
    assert sub.extraction["layers"] == ["features.1?.conv.1.0", "features.0.*"]
    with pytest.raises(SourceError, match=r"'nope\*' matches no layer; layers are features\.0\.0"):
        extract(mnv2_path, layers=["nope*"], hash_file=False)
    with pytest.raises(SourceError, match="classifier.1: add --include-linear"):
        extract(mnv2_path, layers=["classifier.*"], hash_file=False)


def test_zero_tol_matches_numpy(mnv2_path, mnv2_sd):
    tol = 1e-3
    dist = extract(mnv2_path, zero_tol=tol, hash_file=False)
    assert as_table(dist) == numpy_counts(mnv2_sd, tol=tol)
    assert dist.extraction["zero_tol"] == tol
    assert sum(l.counts[0] for l in dist.layers) > 0
    with pytest.raises(ConfigError, match="zero_tol"):
        extract(mnv2_path, zero_tol=-1.0)


def test_depthwise_expansion_from_torchvision_model(mnv2_sd):
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(mnv2_sd)
    plain = extract(model)
    dense = extract(model, expand_groups=True)
    assert dense.source == {"type": "manual", "id": "MobileNetV2"}
    dw = "features.1.conv.0.0"  # depthwise 3x3, 32 groups
    assert dense.extraction["groups"][dw] == 32
    assert plain[dw].shape == (32, 1, 3, 3) and dense[dw].shape == (32, 32, 3, 3)
    n0, nn, np_ = plain[dw].counts
    assert dense[dw].counts == (n0 + 31 * 288, nn, np_)
    assert dense[dw].p0 == pytest.approx(31 / 32 + n0 / (32 * 288))
    assert dense["features.0.0"] == plain["features.0.0"]  # dense convs unchanged


# -- grouped convs ---------------------------------------------------------------------------


def _grouped_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 12, 3, groups=2),  # like AlexNet conv2: stored (12, 4, 3, 3)
        torch.nn.Conv2d(12, 12, 3, groups=3, bias=False),
    )


def test_grouped_conv_expansion_gives_p0_one_half(tmp_path):
    model = _grouped_model()
    dist = extract(model, expand_groups=True)
    assert dist.names == ["0", "2", "3"]
    assert dist["2"].shape == (12, 8, 3, 3) and dist["2"].p0 == 0.5  # exactly: no zeros in weights
    assert dist["2"].counts[0] == 12 * 4 * 9
    assert dist["3"].shape == (12, 12, 3, 3) and dist["3"].p0 == pytest.approx(2 / 3)
    assert dist["0"].p0 == 0.0
    assert dist.extraction["expand_groups"] is True and dist.extraction["groups"] == {"2": 2, "3": 3}
    assert_valid(dist)

    # a checkpoint file does not know its groups: pass them
    path = tmp_path / "grouped.pt"
    torch.save(model.state_dict(), path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert extract(path, expand_groups=True)["2"].p0 == 0.0
    assert any("groups=" in str(w.message) for w in caught)
    from_file = extract(path, expand_groups=True, groups={"2": 2, "3": 3}, hash_file=False)
    assert from_file.layers == dist.layers
    with pytest.raises(ConfigError, match=r"\['conv9'\] not among"):
        extract(path, expand_groups=True, groups={"conv9": 2})
    with pytest.raises(ConfigError, match="not divisible by groups=5"):
        extract(path, expand_groups=True, groups={"2": 5})


# -- numpy files and layouts -----------------------------------------------------------------


def _caffe_like() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A tiny Caffe-converted AlexNet: HWIO kernels, [kernel, bias] per layer, an exact zero."""
    rng = np.random.default_rng(0)
    layers = {
        "conv1": rng.standard_normal((11, 11, 3, 8)).astype(np.float32),
        "conv2": rng.standard_normal((5, 5, 4, 16)).astype(np.float32),  # grouped: in 8 / 2
        "conv3": rng.standard_normal((3, 3, 16, 16)).astype(np.float32),  # ambiguous alone: follows the file
        "conv10": rng.standard_normal((3, 3, 16, 6)).astype(np.float32),  # natural order: after conv3
        "fc6": rng.standard_normal((54, 10)).astype(np.float32),  # (in, out) like TensorFlow
    }
    layers["conv1"][0, 0, 0, :3] = 0.0
    return {k: (v, rng.standard_normal(v.shape[-1]).astype(np.float32)) for k, v in layers.items()}


def test_npz_and_npy_hwio_equal_the_oihw_result(tmp_path):
    caffe = _caffe_like()
    oihw = {}
    for name, (w, b) in caffe.items():
        oihw[f"{name}.weight"] = torch.from_numpy(w.transpose(3, 2, 0, 1).copy() if w.ndim == 4 else w.T.copy())
        oihw[f"{name}.bias"] = torch.from_numpy(b)
    pth = tmp_path / "oihw.pth"
    torch.save(oihw, pth)
    expected = extract(pth, include_linear=True)
    assert expected.names == ["conv1", "conv2", "conv3", "conv10", "fc6"] and expected["conv1"].counts[0] == 3
    assert expected["fc6"].shape == (10, 54)

    npz = tmp_path / "caffe.npz"
    np.savez(npz, **{f"{k}/weights": w for k, (w, _) in caffe.items()}, **{f"{k}/biases": b for k, (_, b) in caffe.items()})
    npy = tmp_path / "bvlc_like.npy"
    obj = np.empty((), dtype=object)
    obj[()] = {k: [w, b] for k, (w, b) in reversed(list(caffe.items()))}  # Python-2-like jumbled order
    np.save(npy, obj, allow_pickle=True)
    for path in (npz, npy):
        dist = extract(path, include_linear=True)
        assert dist.layers == expected.layers, path.name
        assert dist.extraction["source_layout_detected"] == "HWIO"
        assert dist.source["format"] == path.suffix[1:]
    # forced layouts
    assert extract(npz, layout="oihw")["conv1"].shape == (11, 11, 3, 8)
    assert extract(npz, layout="hwio", include_linear=True).layers == expected.layers
    # a file with only ambiguous kernels stays OIHW unless told
    np.savez(tmp_path / "square.npz", **{"c.weight": caffe["conv3"][0]})
    assert extract(tmp_path / "square.npz")["c"].shape == (3, 3, 16, 16)
    assert extract(tmp_path / "square.npz", layout="hwio")["c"].shape == (16, 16, 3, 3)
    # grouped like the paper's AlexNet conv2
    g = extract(npy, groups={"conv2": 2}, expand_groups=True)
    assert g["conv2"].shape == (16, 8, 5, 5) and g["conv2"].p0 == 0.5
    # load_state_dict: materialised, contiguous OIHW
    sd = load_state_dict(npz)
    assert sorted(sd) == sorted(oihw)
    assert all(sd[k].is_contiguous() and torch.equal(sd[k], oihw[k]) for k in sd)


def test_layout_rule():
    assert looks_hwio((11, 11, 3, 96)) and looks_hwio((3, 3, 192, 384)) and looks_hwio((5, 5, 48, 256))
    assert not looks_hwio((96, 3, 11, 11))  # OIHW
    assert not looks_hwio((3, 3, 64, 64))  # ambiguous square: OIHW unless forced
    assert not looks_hwio((13, 13, 3, 8))  # too big for a kernel
    assert not looks_hwio((3, 3, 3))


# -- counting --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_count_signs_exact_tolerance_in_native_dtype(dtype):
    # the dtype's nearest value to 0.1 lies above 0.1 for float32/float16/bfloat16, so |w| <= 0.1
    # is false for it; a naive comparison against the rounded tolerance would call it zero
    w = torch.tensor([0.1, -0.1, 0.05, 0.0, -0.0, 2.0, -3.0], dtype=dtype)
    above = float(torch.tensor(0.1, dtype=dtype)) > 0.1
    expected = (3, 2, 2) if above else (5, 1, 1)
    assert count_signs(w, 0.1) == expected
    assert count_signs(w) == (2, 2, 3)
    big = torch.randn(1_000_003).to(dtype)  # several counting blocks
    a = big.double().numpy()
    assert count_signs(big) == (int((a == 0).sum()), int((a < 0).sum()), int((a > 0).sum()))
    assert count_signs(big[::3]) == count_signs(big[::3].contiguous())


def test_bfloat16_safetensors_and_nan(tmp_path):
    torch.manual_seed(0)
    w = torch.randn(16, 8, 3, 3)
    w[0, 0] = 0.0
    save_file({"c.weight": w.to(torch.bfloat16), "c.bias": torch.zeros(16)}, str(tmp_path / "bf.safetensors"))
    d = extract(tmp_path / "bf.safetensors")
    a = w.to(torch.bfloat16).double().numpy()
    assert d["c"].counts == (int((a == 0).sum()), int((a < 0).sum()), int((a > 0).sum()))
    w[1, 1, 1, 1] = float("nan")
    save_file({"c.weight": w}, str(tmp_path / "nan.safetensors"))
    with pytest.raises(SourceError, match="layer 'c': 1 of 1152 weights are NaN"):
        extract(tmp_path / "nan.safetensors")


# -- errors ----------------------------------------------------------------------------------


def test_no_conv_weights(tmp_path):
    path = tmp_path / "mlp.pth"
    torch.save({"fc1.weight": torch.randn(4, 3), "fc1.bias": torch.randn(4), "fc2.weight": torch.randn(2, 4), "fc2.bias": torch.randn(2)}, path)
    with pytest.raises(SourceError) as exc:
        extract(path)
    msg = str(exc.value)
    assert "mlp.pth" in msg and "no conv kernels" in msg and "among 4 tensors" in msg
    assert "2-D x2, 1-D x2" in msg and "--include-linear" in msg
    assert extract(path, include_linear=True).names == ["fc1", "fc2"]


def test_bad_files(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(SourceError, match="nope.safetensors: no such file"):
        extract(missing)
    with pytest.raises(FormatError, match="no such file.*paper:alexnet"):
        load_distribution(tmp_path / "nope.polar")
    st = tmp_path / "w.safetensors"
    save_file({"c.weight": torch.randn(8, 3, 3, 3)}, str(st))
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(st.read_bytes()[:200])
    with pytest.raises(SourceError, match="trunc.safetensors: not a readable safetensors file"):
        extract(trunc)
    pth = tmp_path / "w.pth"
    torch.save({"c.weight": torch.randn(8, 3, 3, 3)}, pth)
    (tmp_path / "trunc.pth").write_bytes(pth.read_bytes()[:300])
    with pytest.raises(SourceError, match="trunc.pth: not a readable PyTorch checkpoint"):
        extract(tmp_path / "trunc.pth")
    (tmp_path / "junk.bin").write_bytes(b"hello world, not weights")
    with pytest.raises(SourceError, match="junk.bin"):
        extract(tmp_path / "junk.bin")
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "pickled.pt")  # a pickled module
    with pytest.raises(SourceError, match="weights_only=True"):
        extract(tmp_path / "pickled.pt")
    np.save(tmp_path / "single.npy", np.zeros((3, 3)))
    with pytest.raises(SourceError, match="not a dict of layers"):
        extract(tmp_path / "single.npy")
    # a weights file where a distribution is expected
    with pytest.raises(FormatError, match="extract one first"):
        load_distribution(st)


def test_unknown_torchvision_name():
    with pytest.raises(SourceError, match="not a file and not a torchvision model name; did you mean alexnet"):
        open_weights("alexnett")


def test_torchvision_offline_names_a_local_file(tmp_path, monkeypatch):
    """No network: the download must fail fast (a proxy on a closed local port refuses at once)
    and the error must say how to pass a local file instead."""
    pytest.importorskip("torchvision")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # nothing cached
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(5)
    try:
        with pytest.raises(SourceError) as exc:
            extract("mobilenet_v2")
    finally:
        socket.setdefaulttimeout(old)
    msg = str(exc.value)
    assert "needs network" in msg and "local file" in msg
    assert "polarpack extract ./mobilenet_v2-7ebf99e0.pth" in msg
    assert not (tmp_path / "torch" / "hub" / "checkpoints" / "mobilenet_v2-7ebf99e0.pth").exists()


def test_torchvision_from_cache_reports_groups(tmp_path, monkeypatch, mnv2_path):
    """A torchvision name reads torch's hub cache: place the real file under the name torchvision
    expects (the bytes of V1 under the V2 file name: only the lookup is tested here)."""
    pytest.importorskip("torchvision")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / "mobilenet_v2-7ebf99e0.pth").symlink_to(mnv2_path)
    with open_weights("mobilenet_v2") as ws:
        assert ws.source_info["type"] == "torchvision" and ws.source_info["id"] == "mobilenet_v2"
        assert ws.groups["features.1.conv.0.0"] == 32
        assert ws.keys()[0] == "features.0.0.weight"
    dist = extract("mobilenet_v2", expand_groups=True, hash_file=False)
    assert dist["features.1.conv.0.0"].shape == (32, 32, 3, 3)
    assert dist.source["weights"] == "MobileNet_V2_Weights.IMAGENET1K_V2"


# -- sources ---------------------------------------------------------------------------------


def test_open_weights_is_lazy_and_ordered(tmp_path, mnv2_sd):
    st = tmp_path / "m.safetensors"
    save_file(mnv2_sd, str(st))
    layers = [k for k, v in mnv2_sd.items() if v.dim() >= 2]  # conv kernels and the classifier
    with open_weights(st) as ws:
        assert sorted(ws.keys()) == sorted(mnv2_sd)
        # safetensors keeps no order: natural name order with the classifier head last
        assert [k for k in ws.keys() if ws.info(k).numel > 1 and len(ws.info(k).shape) >= 2] == layers
        info = ws.info("features.18.0.weight")
        assert info.shape == (1280, 320, 1, 1) and info.dtype == "float32"
        assert [name for name, _ in ws] == ws.keys()
        assert "sha256" not in ws.describe(sha256=False)
        assert ws.source_info["sha256"] == sha256_file(st)
    sd = load_state_dict(st)
    assert sorted(sd) == sorted(mnv2_sd) and all(torch.equal(sd[k], mnv2_sd[k]) for k in sd)
    assert extract(st, include_linear=True).names[-1] == "classifier.1"


def test_load_distribution_kinds(tmp_path):
    preset = load_distribution("paper:alexnet")
    assert preset.names == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    assert load_distribution(preset) is preset
    path = fmt.save(preset, tmp_path / "a.polar.safetensors")
    assert load_distribution(path) == preset
    with pytest.raises(FormatError, match="unknown preset"):
        load_distribution("paper:nope")


def test_hub_reference_is_downloaded_then_read(tmp_path, monkeypatch):
    st = tmp_path / "blob.safetensors"
    save_file({"c.weight": torch.randn(4, 2, 3, 3)}, str(st))
    polar = fmt.save(load_distribution("paper:alexnet"), tmp_path / "a.polar")
    calls = []

    def download(ref, *, endpoint=None, token=None, revision=None):
        calls.append((ref, endpoint, token, revision))
        return polar if ref.endswith(".polar") else st

    fake = types.ModuleType("polarpack.hub")
    fake.is_hub_reference = lambda ref: isinstance(ref, str) and ref.startswith("hf://")
    fake.download = download
    monkeypatch.setitem(sys.modules, "polarpack.hub", fake)
    dist = extract("hf://me/weights@v1/model.safetensors", token="secret", endpoint="http://hub.test")
    assert calls[-1] == ("hf://me/weights@v1/model.safetensors", "http://hub.test", "secret", None)
    src = dist.source
    assert src["type"] == "hub" and src["hub"] == "hf://me/weights@v1/model.safetensors"
    assert src["sha256"] == sha256_file(st) and src["format"] == "safetensors"
    assert "secret" not in json.dumps(src)
    assert load_distribution("hf://me/dists/a.polar", revision="main") == load_distribution("paper:alexnet")
    assert calls[-1][3] == "main"
