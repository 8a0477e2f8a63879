"""polarpack.sources.extraction / polarpack.sources.weights: counts, signs and refusals checked
against independent numpy.

Real weights: torchvision's ImageNet MobileNetV2 checkpoint from the shared data folder (see
tests/conftest.py: shared_data_dir). Everything else is built in tmp_path.
"""

from __future__ import annotations

import pickle
import shutil
import socket
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import save_file

from polarpack import format as fmt
from polarpack._io import sha256_file
from polarpack.errors import ConfigError, FormatError, SourceError
from polarpack.sources.extraction import count_signs, extract
from polarpack.sources.weights import (
    TensorInfo,
    load_distribution,
    load_state_dict,
    looks_hwio,
    open_weights,
)

MNV2_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"


@pytest.fixture(scope="module")
def mnv2_path(shared_data_dir: Path) -> Path:
    path = shared_data_dir / "weights" / "mobilenet_v2-b0353104.pth"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path


@pytest.fixture(scope="module")
def mnv2_sd(mnv2_path: Path) -> dict[str, torch.Tensor]:
    return torch.load(mnv2_path, weights_only=True, map_location="cpu")


def numpy_counts(
    sd, *, tol: float = 0.0, linear: bool = False
) -> dict[str, tuple[tuple[int, int, int], tuple]]:
    """The reference: layer -> ((n0, n_neg, n_pos), shape), in float64 numpy (the tolerance
    exactly)."""
    out = {}
    for key, t in sd.items():
        if key.endswith(".weight") and t.dim() in ((2, 3, 4, 5) if linear else (3, 4, 5)):
            a = t.double().numpy()
            out[key.removesuffix(".weight")] = (
                (int((np.abs(a) <= tol).sum()), int((a < -tol).sum()), int((a > tol).sum())),
                a.shape,
            )
    return out


def as_table(dist: fmt.Distribution) -> dict[str, tuple[tuple[int, int, int], tuple]]:
    return {layer.name: (layer.counts, layer.shape) for layer in dist.layers}


def round_trip(dist: fmt.Distribution) -> fmt.Distribution:
    """Validated, encoded and decoded again (safetensors: the one encoding of every granularity)."""
    back = fmt.decode(fmt.encode_safetensors(dist))
    assert back == dist
    return back


def grouped_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 12, 3, groups=2),  # like AlexNet conv2: stored (12, 4, 3, 3)
        torch.nn.Conv2d(12, 12, 3, groups=3, bias=False),
    )


def dense_signs(weight: torch.Tensor, groups: int) -> np.ndarray:
    """Independent reference: np.sign of the dense block-diagonal kernel of a grouped conv."""
    w = weight.detach().numpy()
    o, i = w.shape[:2]
    dense = np.zeros((o, i * groups, *w.shape[2:]), dtype=np.int8)
    for j in range(groups):
        rows = slice(j * o // groups, (j + 1) * o // groups)
        dense[rows, j * i : (j + 1) * i] = np.sign(w[rows])
    return dense


# -- the real checkpoint ---------------------------------------------------------------------


def test_mobilenet_pth_matches_numpy(mnv2_path, mnv2_sd):
    dist = extract(mnv2_path)
    ref = numpy_counts(mnv2_sd)
    assert len(ref) == 52 and dist.names == list(ref)  # model order
    assert as_table(dist) == ref and all(layer.kind == "conv" for layer in dist.layers)
    assert dist.source == {
        "type": "file",
        "id": mnv2_path.name,
        "file": mnv2_path.name,
        "format": "pytorch",
        "sha256": MNV2_SHA256,
    }
    assert dist.extraction == {
        "zero_tol": 0.0,
        "expand_groups": False,
        "groups": {},
        "include_linear": False,
        "layers": None,
        "layout": "OIHW",
        "norms": False,
        "source_layout": "auto",
        "source_layout_detected": "OIHW",
    }
    assert dist.granularity == "layer" and fmt.decode(fmt.encode_json(dist)) == dist


def test_mobilenet_is_a_legacy_pickle_and_a_flipped_byte_is_refused(tmp_path, mnv2_path):
    """The real file is torch's pre-1.6 pickle (no zip CRCs): a flipped byte would load silently."""
    assert mnv2_path.read_bytes()[:2] == b"\x80\x02"
    data = bytearray(mnv2_path.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside a tensor's storage
    copy = tmp_path / mnv2_path.name
    copy.write_bytes(bytes(data))
    with pytest.raises(
        SourceError,
        match=r"mobilenet_v2-b0353104\.pth: the file is corrupt: its name carries "
        r"sha256 prefix b0353104",
    ):
        extract(copy)
    (tmp_path / "renamed.pth").write_bytes(
        bytes(data)
    )  # without the hash in the name nothing can tell
    assert len(extract(tmp_path / "renamed.pth", hash_file=False)) == 52


def test_safetensors_copy_and_checkpoint_dicts_are_identical(tmp_path, mnv2_path, mnv2_sd):
    base = extract(mnv2_path, hash_file=False)
    st = tmp_path / "mnv2.safetensors"
    save_file(mnv2_sd, str(st))
    d_st = extract(st)
    assert d_st.layers == base.layers
    assert d_st.source["format"] == "safetensors" and d_st.source["sha256"] == sha256_file(st)
    torch.save({"state_dict": mnv2_sd, "epoch": 3, "optimizer": {}}, tmp_path / "ckpt.pth")
    assert extract(tmp_path / "ckpt.pth").layers == base.layers
    torch.save(
        {"model": {f"module.{k}": v for k, v in mnv2_sd.items()}}, tmp_path / "ckpt2.pt"
    )  # DataParallel
    assert extract(tmp_path / "ckpt2.pt").layers == base.layers
    assert "sha256" not in extract(tmp_path / "ckpt2.pt", hash_file=False).source


def test_include_linear_and_globs(mnv2_path, mnv2_sd):
    dist = extract(mnv2_path, include_linear=True, hash_file=False)
    assert as_table(dist) == numpy_counts(mnv2_sd, linear=True) and dist.names[-1] == "classifier.1"
    assert dist["classifier.1"].kind == "linear" and dist["classifier.1"].shape == (1000, 1280)
    sub = extract(mnv2_path, layers=["features.1?.conv.1.0", "features.0.*"], hash_file=False)
    assert sub.names == ["features.0.0"] + [f"features.{i}.conv.1.0" for i in range(10, 18)]
    assert sub.extraction["layers"] == ["features.1?.conv.1.0", "features.0.*"]
    with pytest.raises(SourceError, match=r"'nope\*' matches no layer; layers are features\.0\.0"):
        extract(mnv2_path, layers=["nope*"], hash_file=False)
    with pytest.raises(SourceError, match="classifier.1: add --include-linear"):
        extract(mnv2_path, layers=["classifier.*"], hash_file=False)


def test_zero_tol_matches_numpy(mnv2_path, mnv2_sd):
    dist = extract(mnv2_path, zero_tol=1e-3, hash_file=False)
    assert as_table(dist) == numpy_counts(mnv2_sd, tol=1e-3) and dist.extraction["zero_tol"] == 1e-3
    assert sum(layer.counts[0] for layer in dist.layers) > 0
    with pytest.raises(ConfigError, match="zero_tol"):
        extract(mnv2_path, zero_tol=-1.0)


def channel_table(signs: np.ndarray) -> np.ndarray:
    """Independent reference: [n0, n_neg, n_pos] per output channel."""
    rows = signs.reshape(len(signs), -1)
    return np.stack([(rows == 0).sum(1), (rows < 0).sum(1), (rows > 0).sum(1)], axis=1)


def mean_abs(weight: np.ndarray, groups: int = 1) -> np.ndarray:
    """Independent reference of the scales: float64 mean |w| per output channel over the dense
    kernel (a grouped conv's off-block zeros included), as float32."""
    rows = np.abs(weight.astype(np.float64)).reshape(len(weight), -1)
    return (rows.sum(1) / (rows.shape[1] * groups)).astype(np.float32)


@pytest.mark.parametrize("granularity", ["channel", "pattern", "scaled"])
def test_mobilenet_granularity_round_trips(mnv2_path, mnv2_sd, granularity):
    per_layer = extract(mnv2_path, zero_tol=1e-3, hash_file=False)
    dist = round_trip(extract(mnv2_path, zero_tol=1e-3, hash_file=False, granularity=granularity))
    assert [layer.counts for layer in dist.layers] == [layer.counts for layer in per_layer.layers]
    for layer in dist.layers:
        w = mnv2_sd[f"{layer.name}.weight"].numpy()
        expected = np.where(np.abs(w) <= 1e-3, 0, np.sign(w)).astype(np.int8)
        if granularity == "channel":
            assert np.array_equal(layer.channel_counts, channel_table(expected)), layer.name
            continue
        assert np.array_equal(layer.signs().numpy(), expected), layer.name
        if granularity == "scaled":
            assert np.array_equal(layer.scales, mean_abs(w)), layer.name
            weights = layer.scaled_weights().numpy()
            assert np.array_equal(weights, expected * layer.scales.reshape(-1, 1, 1, 1))


def test_scaled_and_norms_from_both_real_checkpoints(shared_data_dir, mnv2_sd, tmp_path):
    """Norms: every module with running_mean and running_var, its weight and bias, float32
    exactly; num_batches_tracked is not kept. The safetensors file holds them; JSON refuses."""
    from safetensors.torch import load_file

    effnet = shared_data_dir / "weights" / "tf_efficientnet_lite0.in1k.safetensors"
    if not effnet.is_file():
        pytest.skip(f"{effnet} not found")
    for sd in (mnv2_sd, load_file(str(effnet))):
        dist = round_trip(extract(sd, granularity="scaled", norms=True))
        stats = [k for k in sd if k.endswith(("running_mean", "running_var"))]
        prefixes = {k.rpartition(".")[0] for k in stats}
        expected = [
            k
            for k in sd
            if k.rpartition(".")[0] in prefixes and not k.endswith("num_batches_tracked")
        ]
        assert sorted(dist.norms) == sorted(expected) and len(stats) == 2 * len(prefixes)
        for name, value in dist.norms.items():
            assert value.dtype == np.float32 and not value.flags.writeable
            assert np.array_equal(value, sd[name].float().numpy()), name
        assert dist.extraction["norms"] is True
        state = dist.norm_state_dict()
        assert all(torch.equal(state[k], sd[k].float()) for k in expected)
        with pytest.raises(FormatError, match="safetensors"):
            fmt.save(dist, tmp_path / "x.polar")
        path = fmt.save(dist, tmp_path / "x.polar.safetensors")
        assert fmt.load(path) == dist


def test_norms_take_weight_and_bias_only_when_present():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.BatchNorm2d(4, affine=False),
        torch.nn.Conv2d(4, 5, 1),
        torch.nn.BatchNorm2d(5),
        torch.nn.LayerNorm(5),  # no running statistics: not a normalisation module here
    )
    with torch.no_grad():
        model[3].running_var.uniform_(0.5, 2.0)
    dist = extract(model, granularity="pattern", norms=True)
    assert list(dist.norms) == [
        "1.running_mean",
        "1.running_var",
        "3.weight",
        "3.bias",
        "3.running_mean",
        "3.running_var",
    ]
    assert np.array_equal(dist.norms["3.running_var"], model[3].running_var.numpy())
    assert extract(model).norms == {}
    bad = {
        "c.weight": torch.randn(2, 1, 3, 3),
        "bn.running_mean": torch.zeros(2, dtype=torch.int64),
    }
    bad["bn.running_var"] = torch.ones(2)
    with pytest.raises(SourceError, match="bn.running_mean"):
        extract(bad, norms=True)


def test_depthwise_expansion_from_torchvision_model(mnv2_sd):
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(mnv2_sd)
    plain, dense = extract(model), extract(model, expand_groups=True)
    assert dense.source == {"type": "manual", "id": "MobileNetV2"}
    dw = "features.1.conv.0.0"  # depthwise 3x3, 32 groups
    assert dense.extraction["groups"][dw] == 32
    assert plain[dw].shape == (32, 1, 3, 3) and dense[dw].shape == (32, 32, 3, 3)
    n0, n_neg, n_pos = plain[dw].counts
    assert dense[dw].counts == (n0 + 31 * 288, n_neg, n_pos)
    assert dense["features.0.0"] == plain["features.0.0"]  # dense convs unchanged
    pattern = round_trip(extract(model, expand_groups=True, granularity="pattern", layers=[dw]))
    assert np.array_equal(
        pattern[dw].signs().numpy(), dense_signs(model.features[1].conv[0][0].weight, 32)
    )


# -- grouped convs and granularity on a small model ------------------------------------------


def test_grouped_conv_expansion_gives_p0_one_half(tmp_path):
    model = grouped_model()
    dist = extract(model, expand_groups=True)
    assert dist.names == ["0", "2", "3"] and dist["0"].p0 == 0.0
    assert (
        dist["2"].shape == (12, 8, 3, 3)
        and dist["2"].p0 == 0.5
        and dist["2"].counts[0] == 12 * 4 * 9
    )
    assert dist["3"].shape == (12, 12, 3, 3) and dist["3"].p0 == pytest.approx(2 / 3)
    assert dist.extraction["expand_groups"] is True and dist.extraction["groups"] == {
        "2": 2,
        "3": 3,
    }
    path = tmp_path / "grouped.pt"  # a checkpoint file does not know its groups: pass them
    torch.save(model.state_dict(), path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert extract(path, expand_groups=True)["2"].p0 == 0.0
    assert any("groups=" in str(w.message) for w in caught)
    assert (
        extract(path, expand_groups=True, groups={"2": 2, "3": 3}, hash_file=False).layers
        == dist.layers
    )


@pytest.mark.parametrize(
    "groups, message",
    [({"conv9": 2}, r"\['conv9'\] not among"), ({"2": 5}, "not divisible by groups=5")],
)
def test_bad_groups(tmp_path, groups, message):
    path = tmp_path / "grouped.pt"
    torch.save(grouped_model().state_dict(), path)
    with pytest.raises(ConfigError, match=message):
        extract(path, expand_groups=True, groups=groups)


@pytest.mark.parametrize("expand", [False, True])
@pytest.mark.parametrize("granularity", ["channel", "pattern", "scaled"])
def test_small_model_granularity_matches_layer_counts_and_signs(granularity, expand):
    model = grouped_model()
    layer = extract(model, expand_groups=expand)
    dist = round_trip(extract(model, expand_groups=expand, granularity=granularity))
    assert dist.granularity == granularity and [layer.shape for layer in dist.layers] == [
        layer.shape for layer in layer.layers
    ]
    assert [layer.counts for layer in dist.layers] == [layer.counts for layer in layer.layers]
    for layer, module in zip(dist.layers, (model[0], model[2], model[3]), strict=True):
        groups = module.groups if expand else 1
        expected = dense_signs(module.weight, groups)
        if granularity == "channel":
            assert np.array_equal(layer.channel_counts, channel_table(expected))
        else:
            assert np.array_equal(layer.signs().numpy(), expected)
        if granularity == "scaled":
            assert np.array_equal(layer.scales, mean_abs(module.weight.detach().numpy(), groups))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_pattern_uses_the_counting_rule_in_native_dtype(dtype):
    w = torch.tensor([[0.1, -0.1, 0.05, 0.0], [-0.0, 2.0, -3.0, 1e-3]], dtype=dtype)
    dist = extract({"c.weight": w.reshape(2, 2, 2, 1)}, zero_tol=0.1, granularity="pattern")
    assert dist["c"].counts == count_signs(w, 0.1)
    above = float(torch.tensor(0.1, dtype=dtype)) > 0.1  # then the stored 0.1 is not <= 0.1
    assert dist["c"].signs().flatten().tolist() == [int(above), -int(above), 0, 0, 0, 1, -1, 0]


# -- numpy files and layouts -----------------------------------------------------------------


def caffe_like() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A tiny Caffe-converted AlexNet: HWIO kernels, [kernel, bias] per layer, an exact zero."""
    rng = np.random.default_rng(0)
    layers = {
        "conv1": rng.standard_normal((11, 11, 3, 8)).astype(np.float32),
        "conv2": rng.standard_normal((5, 5, 4, 16)).astype(np.float32),  # grouped: in 8 / 2
        "conv3": rng.standard_normal((3, 3, 16, 16)).astype(
            np.float32
        ),  # ambiguous alone: follows the file
        "conv10": rng.standard_normal((3, 3, 16, 6)).astype(
            np.float32
        ),  # natural order: after conv3
        "fc6": rng.standard_normal((54, 10)).astype(np.float32),  # (in, out) like TensorFlow
    }
    layers["conv1"][0, 0, 0, :3] = 0.0
    return {k: (v, rng.standard_normal(v.shape[-1]).astype(np.float32)) for k, v in layers.items()}


def save_caffe_npy(path: Path) -> Path:
    obj = np.empty((), dtype=object)
    obj[()] = {
        k: [w, b] for k, (w, b) in reversed(list(caffe_like().items()))
    }  # Python-2-like jumbled order
    np.save(path, obj, allow_pickle=True)
    return path


def test_npz_and_npy_hwio_equal_the_oihw_result(tmp_path):
    caffe = caffe_like()
    oihw = {}
    for name, (w, b) in caffe.items():
        oihw[f"{name}.weight"] = torch.from_numpy(
            w.transpose(3, 2, 0, 1).copy() if w.ndim == 4 else w.T.copy()
        )
        oihw[f"{name}.bias"] = torch.from_numpy(b)
    torch.save(oihw, tmp_path / "oihw.pth")
    expected = extract(tmp_path / "oihw.pth", include_linear=True)
    assert (
        expected.names == ["conv1", "conv2", "conv3", "conv10", "fc6"]
        and expected["conv1"].counts[0] == 3
    )
    assert expected["fc6"].shape == (10, 54)
    npz = tmp_path / "caffe.npz"
    np.savez(
        npz,
        **{f"{k}/weights": w for k, (w, _) in caffe.items()},
        **{f"{k}/biases": b for k, (_, b) in caffe.items()},
    )
    npy = save_caffe_npy(tmp_path / "bvlc_like.npy")
    for path in (npz, npy):
        dist = extract(path, include_linear=True, unsafe_allow_pickle=True)
        assert dist.layers == expected.layers, path.name
        assert (
            dist.extraction["source_layout_detected"] == "HWIO"
            and dist.source["format"] == path.suffix[1:]
        )
    assert extract(npz, layout="oihw")["conv1"].shape == (11, 11, 3, 8)
    assert extract(npz, layout="hwio", include_linear=True).layers == expected.layers
    np.savez(
        tmp_path / "square.npz", **{"c.weight": caffe["conv3"][0]}
    )  # only ambiguous kernels: OIHW unless told
    assert extract(tmp_path / "square.npz")["c"].shape == (3, 3, 16, 16)
    assert extract(tmp_path / "square.npz", layout="hwio")["c"].shape == (16, 16, 3, 3)
    g = extract(npy, groups={"conv2": 2}, expand_groups=True, unsafe_allow_pickle=True)
    assert g["conv2"].shape == (16, 8, 5, 5) and g["conv2"].p0 == 0.5
    sd = load_state_dict(npz)
    assert sorted(sd) == sorted(oihw) and all(
        sd[k].is_contiguous() and torch.equal(sd[k], oihw[k]) for k in sd
    )


def test_layout_rule():
    assert (
        looks_hwio((11, 11, 3, 96)) and looks_hwio((3, 3, 192, 384)) and looks_hwio((5, 5, 48, 256))
    )
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
    assert count_signs(w, 0.1) == ((3, 2, 2) if above else (5, 1, 1))
    assert count_signs(w) == (2, 2, 3)
    big = torch.randn(1_000_003).to(dtype)  # several counting blocks
    a = big.double().numpy()
    assert count_signs(big) == (int((a == 0).sum()), int((a < 0).sum()), int((a > 0).sum()))
    assert count_signs(big[::3]) == count_signs(big[::3].contiguous())


def test_bfloat16_safetensors(tmp_path):
    torch.manual_seed(0)
    w = torch.randn(16, 8, 3, 3)
    w[0, 0] = 0.0
    save_file(
        {"c.weight": w.to(torch.bfloat16), "c.bias": torch.zeros(16)},
        str(tmp_path / "bf.safetensors"),
    )
    a = w.to(torch.bfloat16).double().numpy()
    assert extract(tmp_path / "bf.safetensors")["c"].counts == (
        int((a == 0).sum()),
        int((a < 0).sum()),
        int((a > 0).sum()),
    )


@pytest.mark.parametrize("granularity", ["layer", "pattern"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "bad, message",
    [
        ([float("nan")], "1 of 1152 weights are NaN"),
        ([float("inf"), -float("inf")], "2 of 1152 weights are infinite"),
        ([float("nan"), float("inf")], "1 of 1152 weights are NaN and 1 of 1152"),
    ],
)
def test_nan_and_inf_are_refused_with_layer_and_count(tmp_path, bad, message, dtype, granularity):
    w = torch.randn(16, 8, 3, 3)
    w.view(-1)[[5, 700][: len(bad)]] = torch.tensor(bad)
    save_file({"c.weight": w.to(dtype)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(SourceError, match=f"bad.safetensors: layer 'c': {message}"):
        extract(tmp_path / "bad.safetensors", granularity=granularity)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
@pytest.mark.parametrize(
    "dtype, names",
    [
        (torch.int8, ("I8", "int8")),
        (torch.float8_e4m3fn, ("F8_E4M3", "float8_e4m3fn")),
        (torch.complex64, ("C64", "complex64")),
    ],
)
def test_non_float_kernels_are_refused_naming_the_dtype(tmp_path, dtype, names, suffix):
    path = tmp_path / f"q{suffix}"
    sd = {"a.weight": torch.randn(4, 2, 3, 3), "c.weight": torch.ones(4, 2, 3, 3).to(dtype)}
    save_file(sd, str(path)) if suffix == ".safetensors" else torch.save(sd, path)
    name = names[0] if suffix == ".safetensors" else names[1]
    with pytest.raises(
        SourceError, match=f"q{suffix}: layer 'c' has dtype {name}; polarpack counts floating-point"
    ):
        extract(path)
    assert extract(path, layers=["a"]).names == ["a"]


# -- refusals: pickles, suffixes, corrupt files ----------------------------------------------


class Payload:
    """Unpickling it writes the marker file: the test fails if any code path unpickles it."""

    marker: Path

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def plant(path: Path, kind: str, marker: Path) -> Path:
    """A payload of `kind` in `path` (whatever the suffix): an .npy or .npz object array, a bare
    pickle, or a torch zip checkpoint holding the object."""
    payload = Payload()
    payload.marker = marker
    array = np.array([payload, None], dtype=object)
    with open(path, "wb") as fh:
        if kind == "npy":
            np.save(fh, array, allow_pickle=True)
        elif kind == "npz":
            np.savez(fh, **{"conv.weight": array})
        elif kind == "pickle":
            pickle.dump({"conv.weight": payload}, fh, protocol=2)
        else:
            torch.save({"conv.weight": payload}, fh)
    assert not marker.exists()
    return path


PLANTED = [
    (
        "npy",
        ".npy",
        r"holds a pickled object array, and unpickling can run arbitrary "
        r"code.*unsafe_allow_pickle=True",
    ),
    (
        "npy",
        ".pth",
        r"the name says PyTorch checkpoint \(\.pth\) but the content is a \.npy array file",
    ),
    (
        "npy",
        ".pt",
        r"the name says PyTorch checkpoint \(\.pt\) but the content is a \.npy array file",
    ),
    ("npy", ".bin", r"\(\.bin\) but the content is a \.npy array file"),
    ("npy", ".ckpt", r"\(\.ckpt\) but the content is a \.npy array file"),
    (
        "npy",
        ".safetensors",
        r"the name says safetensors file \(\.safetensors\) but the content is a \.npy array file",
    ),
    ("npy", ".npz", r"the name says \.npz archive \(\.npz\) but the content is a \.npy array file"),
    (
        "npy",
        ".polar",
        "holds a pickled object array",
    ),  # no weights suffix: the content decides, still refused
    ("npz", ".npz", "holds a pickled object array"),
    ("npz", ".pth", r"\(\.pth\) but the content is a \.npz archive"),
    ("npz", ".safetensors", r"\(\.safetensors\) but the content is a \.npz archive"),
    ("npz", ".npy", r"\(\.npy\) but the content is a \.npz archive"),
    ("pickle", ".pth", "holds pickled Python objects.*weights_only=True"),
    ("pickle", ".ckpt", "holds pickled Python objects.*weights_only=True"),
    ("pickle", ".npy", r"\(\.npy\) but the content is a PyTorch checkpoint"),
    ("pickle", ".safetensors", r"\(\.safetensors\) but the content is a PyTorch checkpoint"),
    ("torchzip", ".pt", "holds pickled Python objects.*weights_only=True"),
    ("torchzip", ".npz", r"\(\.npz\) but the content is a PyTorch checkpoint"),
    ("torchzip", ".safetensors", r"\(\.safetensors\) but the content is a PyTorch checkpoint"),
]


@pytest.mark.parametrize("kind, suffix, message", PLANTED)
def test_planted_payload_never_runs(tmp_path, kind, suffix, message):
    marker = tmp_path / "marker"
    path = plant(tmp_path / f"model{suffix}", kind, marker)
    with pytest.raises(SourceError, match=f"^{path}: .*{message}") as exc:
        extract(path)
    assert "\n" not in str(exc.value)
    with pytest.raises(SourceError):
        load_state_dict(path, layout="auto")  # the way `train --weights` reads it
    with pytest.raises(FormatError):
        load_distribution(path)  # the way inspect, materialize and train --dist read it
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_allowing_pickle_does_not_excuse_a_wrong_suffix(tmp_path, suffix):
    marker = tmp_path / "marker"
    path = plant(tmp_path / f"model{suffix}", "npy", marker)
    with pytest.raises(SourceError, match=r"but the content is a \.npy array file"):
        extract(path, unsafe_allow_pickle=True)
    assert not marker.exists()


def test_allowing_pickle_reads_a_trusted_npy(tmp_path):
    marker = tmp_path / "marker"
    plant(tmp_path / "model.npy", "npy", marker)
    with pytest.raises(SourceError, match="not a dict of layers"):
        extract(tmp_path / "model.npy", unsafe_allow_pickle=True)
    assert (
        marker.exists()
    )  # the caller asked for it: that is what the name of the option warns about


@pytest.mark.parametrize("legacy", [True, False])
def test_a_name_carrying_a_hash_prefix_must_match_the_file(tmp_path, legacy):
    sd = {"c.weight": torch.randn(8, 4, 3, 3)}
    draft = tmp_path / "draft.pth"
    torch.save(sd, draft, _use_new_zipfile_serialization=not legacy)
    good = tmp_path / f"tiny-{sha256_file(draft)[:8]}.pth"
    shutil.copy(draft, good)
    assert extract(good).source["sha256"] == sha256_file(good)
    bad = tmp_path / "tiny-00000000.pth"
    shutil.copy(draft, bad)
    with pytest.raises(
        SourceError,
        match=r"tiny-00000000\.pth: the file is corrupt: its name carries sha256 prefix "
        r"00000000 but its sha256 is",
    ):
        extract(bad, hash_file=False)


@pytest.mark.parametrize("name", ["resnet-50.pth", "model-abc.pth", "model.pth"])
def test_names_without_a_hash_prefix_are_not_checked(tmp_path, name):
    torch.save({"c.weight": torch.randn(8, 4, 3, 3)}, tmp_path / name)
    assert extract(tmp_path / name).names == ["c"]


def test_only_pytorch_files_follow_the_hash_prefix_convention(tmp_path):
    """torch.hub names its pickles `name-<sha256 prefix>.pth`; a date in a safetensors name is a
    date."""
    path = tmp_path / "model-20240315.safetensors"
    save_file({"c.weight": torch.randn(8, 4, 3, 3)}, str(path))
    assert extract(path).names == ["c"]


def test_no_conv_weights(tmp_path):
    path = tmp_path / "mlp.pth"
    torch.save(
        {
            "fc1.weight": torch.randn(4, 3),
            "fc1.bias": torch.randn(4),
            "fc2.weight": torch.randn(2, 4),
            "fc2.bias": torch.randn(2),
        },
        path,
    )
    with pytest.raises(
        SourceError,
        match=r"mlp\.pth: no conv kernels .* among 4 tensors \(found 2-D x2, 1-D x2\); "
        "pass --include-linear",
    ):
        extract(path)
    assert extract(path, include_linear=True).names == ["fc1", "fc2"]


def saved(path: Path, obj: object, *, cut: int | None = None) -> Path:
    """`obj` written to `path` the way its suffix says (bytes as they are), then cut to `cut`
    bytes."""
    if isinstance(obj, bytes):
        path.write_bytes(obj)
    elif path.suffix == ".safetensors":
        save_file(obj, str(path), metadata={"polar": "{"} if "counts" in obj else None)
    elif path.suffix == ".npy":
        np.save(path, obj)
    elif path.suffix == ".npz":
        np.savez(path, **obj)
    else:
        torch.save(obj, path)
    path.write_bytes(path.read_bytes()[:cut])
    return path


CONV = {"c.weight": torch.ones(8, 3, 3, 3)}


@pytest.mark.parametrize(
    "name, obj, cut, message",
    [
        ("trunc.safetensors", CONV, 200, r"trunc\.safetensors: not a readable safetensors file"),
        ("trunc.pth", CONV, 200, r"trunc\.pth: not a readable PyTorch checkpoint"),
        (
            "junk.bin",
            b"hello world, not weights",
            None,
            r"junk\.bin: not a readable PyTorch checkpoint \(it is none of",
        ),
        ("empty.pt", b"", None, r"empty\.pt: .*it is empty"),
        ("pickled.pt", {"model": torch.nn.Linear(2, 2)}, None, "weights_only=True"),
        (
            "single.npy",
            np.zeros((3, 3)),
            None,
            r"single\.npy: holds a single float64 array of shape \(3, 3\), not a dict",
        ),
        ("noweights.pt", {"epoch": 3}, None, "not a state_dict"),
    ],
)
def test_bad_files(tmp_path, name, obj, cut, message):
    with pytest.raises(SourceError, match=message) as exc:
        extract(saved(tmp_path / name, obj, cut=cut))
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize(
    "name, message",
    [("nope.safetensors", r"nope\.safetensors: no such file"), (".", "is a directory")],
)
def test_missing_files_and_directories(tmp_path, name, message):
    with pytest.raises(SourceError, match=message):
        extract(tmp_path / name)


def test_unknown_torchvision_name():
    with pytest.raises(
        SourceError, match="not a file and not a torchvision model name; did you mean alexnet"
    ):
        open_weights("alexnett")


def test_torchvision_offline_names_a_local_file(tmp_path, monkeypatch):
    """No network: the download must fail fast (a proxy on a closed local port refuses at once)
    and the error must say how to pass a local file instead."""
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
    assert "needs network" in str(
        exc.value
    ) and "polarpack extract ./mobilenet_v2-7ebf99e0.pth" in str(exc.value)
    assert not (tmp_path / "torch" / "hub" / "checkpoints" / "mobilenet_v2-7ebf99e0.pth").exists()


def test_torchvision_name_reads_torch_cache(tmp_path, monkeypatch, mnv2_path):
    """The DEFAULT weights pointed at V1 (the shared file), found in torch's hub cache: no
    network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    v1 = types.SimpleNamespace(DEFAULT=torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1)
    monkeypatch.setattr(torchvision.models, "get_model_weights", lambda name: v1)
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / mnv2_path.name).symlink_to(mnv2_path)
    with open_weights("mobilenet_v2") as ws:
        assert ws.source["type"] == "torchvision" and ws.source["id"] == "mobilenet_v2"
        assert (
            ws.groups["features.1.conv.0.0"] == 32 and next(iter(ws.infos)) == "features.0.0.weight"
        )
    dist = extract("mobilenet_v2", expand_groups=True)
    assert (
        dist["features.1.conv.0.0"].shape == (32, 32, 3, 3) and dist.source["sha256"] == MNV2_SHA256
    )
    assert dist.source["weights"] == "MobileNet_V2_Weights.IMAGENET1K_V1"


def test_torchvision_cache_with_wrong_bytes_is_corrupt(tmp_path, monkeypatch, mnv2_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / "mobilenet_v2-7ebf99e0.pth").symlink_to(mnv2_path)  # V1's bytes under V2's name
    with pytest.raises(SourceError, match="mobilenet_v2-7ebf99e0.pth: the file is corrupt"):
        extract("mobilenet_v2")


# -- sources ---------------------------------------------------------------------------------


def test_open_weights_is_lazy_and_ordered(tmp_path, mnv2_sd):
    st = tmp_path / "m.safetensors"
    save_file(mnv2_sd, str(st))
    with open_weights(st) as ws:
        assert sorted(ws.infos) == sorted(mnv2_sd)
        # safetensors keeps no order: natural name order with the classifier head last
        assert [k for k, i in ws.infos.items() if len(i.shape) >= 2] == [
            k for k, v in mnv2_sd.items() if v.dim() >= 2
        ]
        assert ws.infos["features.18.0.weight"] == TensorInfo((1280, 320, 1, 1), "float32")
        assert [name for name, _ in ws] == list(ws.infos)
        assert "sha256" not in ws.describe(sha256=False) and ws.describe()["sha256"] == sha256_file(
            st
        )
    sd = load_state_dict(st)
    assert sorted(sd) == sorted(mnv2_sd) and all(torch.equal(sd[k], mnv2_sd[k]) for k in sd)


def test_load_distribution_kinds(tmp_path):
    preset = load_distribution("paper:alexnet")
    assert (
        preset.names == ["conv1", "conv2", "conv3", "conv4", "conv5"]
        and load_distribution(preset) is preset
    )
    assert load_distribution(fmt.save(preset, tmp_path / "a.polar.safetensors")) == preset
    with pytest.raises(FormatError, match="unknown preset"):
        load_distribution("paper:nope")
    with pytest.raises(FormatError, match="no such file.*paper:alexnet"):
        load_distribution(tmp_path / "nope.polar")


ALEXNET = load_distribution("paper:alexnet")


@pytest.mark.parametrize(
    "name, obj, cut, hint",
    [
        (
            "t.polar.safetensors",
            fmt.encode(ALEXNET, "safetensors"),
            300,
            False,
        ),  # a damaged .polar is no checkpoint
        ("t.polar", fmt.encode(ALEXNET, "json"), 300, False),
        (
            "p.polar.safetensors",
            {"counts": torch.zeros(1, 3)},
            None,
            False,
        ),  # intact safetensors, broken .polar
        ("w.safetensors", CONV, None, True),
        ("w.pth", CONV, None, True),
        ("w.npz", {"a": np.ones(3)}, None, True),
    ],
)
def test_checkpoint_hint_only_for_real_weights(tmp_path, name, obj, cut, hint):
    with pytest.raises(FormatError) as exc:
        load_distribution(saved(tmp_path / name, obj, cut=cut))
    assert ("looks like a weights checkpoint" in str(exc.value)) is hint
    assert ("extract one first" in str(exc.value)) is hint


def test_hub_references_are_downloaded_then_read(tmp_path, hub):
    st = tmp_path / "blob.safetensors"
    save_file({"c.weight": torch.randn(4, 2, 3, 3)}, str(st))
    hub.add_repo("me/weights", {"model.safetensors": st.read_bytes()})
    hub.add_repo("me/dists", {"a.polar": fmt.encode(load_distribution("paper:alexnet"), "json")})
    dist = extract("hf://me/weights/model.safetensors", endpoint=hub.url)
    assert dist.source["hub"] == "hf://me/weights/model.safetensors" and dist.source[
        "sha256"
    ] == sha256_file(st)
    assert dist.names == ["c"] and dist[0].counts is not None
    assert load_distribution("hf://me/dists/a.polar", endpoint=hub.url) == load_distribution(
        "paper:alexnet"
    )
