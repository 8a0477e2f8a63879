"""The .polar format (spec/polar-format.md): round trips, byte reproducibility, schema, errors."""

from __future__ import annotations

import json
import math
import os
import random
import re
import string
import struct
import tempfile
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import polarpack._io
import polarpack.format as fmt
from polarpack.errors import FormatError, PolarpackError
from polarpack.format import (
    SOURCE_TYPES,
    Distribution,
    LayerDistribution,
    decode,
    decode_safetensors,
    encode,
    encode_json,
    encode_safetensors,
    load,
    pack_signs,
    save,
    unpack_signs,
)

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "spec" / "polar-format.md"
VALIDATOR = jsonschema.Draft202012Validator(fmt.json_schema())

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- strategies ------------------------------------------------------------------------------

# Names exercise quoting, brackets and commas (which must survive the JSON layout), non-ASCII.
NAME_CHARS = string.ascii_letters + string.digits + "._-[], \"\\/é中\u2028"
names = st.text(NAME_CHARS, min_size=1, max_size=10)
kinds = st.sampled_from(["conv", "linear"])
shapes = st.lists(st.integers(1, 6), min_size=1, max_size=4).map(tuple)


@st.composite
def counted_layers(draw, name):
    kind = draw(kinds)
    if draw(st.booleans()):
        shape = draw(shapes)
        n = math.prod(shape)
    else:
        shape = None
        n = draw(st.integers(1, 10**15))
    n0 = draw(st.integers(0, n))
    nn = draw(st.integers(0, n - n0))
    return LayerDistribution.from_counts(name, [n0, nn, n - n0 - nn], kind=kind, shape=shape)


@st.composite
def proportion_layers(draw, name):
    a = draw(st.one_of(st.floats(0, 1), st.sampled_from([0.0, 1.0, 0.5, 1e-300, 5e-324])))
    b = draw(st.floats(0, 1))
    p_neg = (1.0 - a) * b
    p_pos = max(0.0, 1.0 - a - p_neg)
    return LayerDistribution(name=name, kind=draw(kinds), shape=draw(st.none() | shapes), p0=a, p_neg=p_neg, p_pos=p_pos)


json_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=4)
hex64 = st.text("0123456789abcdef", min_size=64, max_size=64)
sources = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(SOURCE_TYPES),
        "id": st.text(max_size=10),
        "file": st.text(max_size=10),
        "sha256": hex64,
        "citation": st.text(max_size=10),
        "extra": json_values,
    },
)
extractions = st.fixed_dictionaries(
    {},
    optional={
        "zero_tol": st.floats(0, 1),
        "expand_groups": st.booleans(),
        "groups": json_values,
        "include_linear": st.booleans(),
        "layers": st.lists(st.text(max_size=6), max_size=3),
        "layout": st.text(max_size=5),
    },
)


@st.composite
def distributions(draw):
    layer_names = draw(st.lists(names, min_size=1, max_size=6, unique=True))
    layers = [draw(st.one_of(counted_layers(n), proportion_layers(n))) for n in layer_names]
    kwargs = {}
    if draw(st.booleans()):
        kwargs["producer"] = draw(st.fixed_dictionaries({"name": st.text(max_size=6), "version": st.text(max_size=6)}))
    return Distribution(
        layers=layers, source=draw(sources), extraction=draw(extractions), metadata=draw(json_objects), **kwargs
    )


# ternary tensors with the edge cases the pattern encoding special-cases: all zero, one sign only
ternary = st.tuples(st.lists(st.integers(1, 5), min_size=2, max_size=4), st.sampled_from(["mixed", "zero", "neg", "pos", "nonzero"]),
                    st.integers(0, 2**31)).map(lambda args: _ternary(*args))


def _ternary(shape, kind, seed):
    values = np.random.default_rng(seed).integers(-1, 2, size=shape).astype(np.int8)
    return {"mixed": values, "zero": np.zeros(shape, np.int8), "neg": -np.ones(shape, np.int8), "pos": np.ones(shape, np.int8),
            "nonzero": np.where(values == 0, 1, values).astype(np.int8)}[kind]


@st.composite
def granular_distributions(draw):
    granularity = draw(st.sampled_from(["channel", "pattern"]))
    tensors = draw(st.lists(ternary, min_size=1, max_size=4))
    layers = [LayerDistribution.from_signs(f"l{i}", t, granularity=granularity) for i, t in enumerate(tensors)]
    return Distribution(layers, metadata=draw(json_objects), granularity=granularity), tensors


def schema_ok(data: bytes) -> None:
    VALIDATOR.validate(json.loads(data))


def example() -> Distribution:
    L = LayerDistribution
    return Distribution(
        layers=[
            L.from_counts("conv1", [0, 219, 213], shape=[16, 3, 3, 3]),
            L.from_counts("features.3", [2304, 1190, 1114], shape=[32, 16, 3, 3]),
            L.from_counts("fc", [3, 2601, 2516], kind="linear", shape=[10, 512]),
        ],
        source={"type": "file", "file": "checkpoints/tiny-cnn.pt", "sha256": "ab" * 32},
        extraction={"zero_tol": 0.0, "expand_groups": True, "groups": {"features.3": 2}, "layers": ["*"]},
        metadata={"note": "[1,2] and [3,  4] stay as written", "nested": [[1, 2], [], {"b": 1, "a": [0.5]}]},
    )


# -- round trips and reproducibility ---------------------------------------------------------


@SETTINGS
@given(distributions())
def test_round_trips_are_lossless_and_bytes_reproducible(dist):
    j = encode_json(dist)
    s = encode_safetensors(dist)
    assert encode_json(dist) == j and encode_safetensors(dist) == s
    from_j, from_s = decode(j), decode(s)
    assert from_j == dist and from_s == dist
    assert decode_safetensors(s) == dist
    # JSON -> object -> safetensors -> object -> JSON gives the same bytes, and vice versa
    assert encode_safetensors(from_j) == s and encode_json(from_s) == j
    assert j.endswith(b"}\n")
    json.loads(j, parse_constant=lambda name: pytest.fail(f"{name} written"))
    schema_ok(j)


@SETTINGS
@given(granular_distributions())
def test_channel_and_pattern_round_trip_exactly(drawn):
    dist, tensors = drawn
    s = encode_safetensors(dist)
    assert encode_safetensors(dist) == s and decode(s) == dist
    if dist.granularity == "pattern":
        for layer, t in zip(decode(s).layers, tensors):
            assert np.array_equal(layer.signs().numpy(), t)
        with pytest.raises(FormatError, match="safetensors"):
            encode_json(dist)
    else:
        j = encode_json(dist)
        assert decode(j) == dist and encode_json(decode(j)) == j
        schema_ok(j)
        for layer, t in zip(dist.layers, tensors):
            rows = t.reshape(t.shape[0], -1)
            assert [list(c) for c in layer.channel_counts] == [[int((r == 0).sum()), int((r < 0).sum()), int((r > 0).sum())] for r in rows]


@SETTINGS
@given(st.lists(st.integers(0, 2), max_size=40).map(lambda v: np.array(v, np.int8) - 1))
def test_pack_signs_stays_within_its_bits_and_inverts(signs):
    counts = [int((signs == 0).sum()), int((signs < 0).sum()), int((signs > 0).sum())]
    data = pack_signs(signs)
    n, n0 = len(signs), counts[0]
    assert len(data) == (0 < n0 < n) * -(-n // 8) + (0 < counts[1] < n - n0) * -(-(n - n0) // 8)
    assert np.array_equal(unpack_signs(data, (n,), counts), signs)


@pytest.mark.parametrize("data, counts, message", [
    (b"\x00", (0, 2, 0), "needs 0"),  # a single sign needs no bits, so extra bytes are refused
    (b"\xff", (4, 0, 4), "do not match"),  # 8 zero bits but counts say 4 zeros
    (b"\xc1", (2, 0, 2), "padding"),  # 2 zeros in the first 4 bits, but a padding bit is set
])
def test_unpack_rejects_patterns_that_disagree_with_their_counts(data, counts, message):
    with pytest.raises(FormatError, match=message):
        unpack_signs(data, (sum(counts),), counts)


def test_granularity_rules_are_enforced():
    signs = np.array([[1, -1], [0, 1]], np.int8)
    pattern = LayerDistribution.from_signs("a", signs)
    channel = LayerDistribution.from_signs("a", signs, granularity="channel")
    with pytest.raises(FormatError, match="'pattern' is not allowed at granularity 'layer'"):
        Distribution([pattern])
    with pytest.raises(FormatError, match="'channel_counts' is missing"):
        Distribution([LayerDistribution.from_counts("a", [1, 2, 1], shape=[2, 2])], granularity="channel")
    with pytest.raises(FormatError, match="one per output channel"):
        Distribution([LayerDistribution.from_counts("a", [1, 2, 1], shape=[2, 2], channel_counts=[[1, 2, 1]])], granularity="channel")
    with pytest.raises(FormatError, match="add up"):
        Distribution([LayerDistribution.from_counts("a", [1, 2, 1], shape=[2, 2], channel_counts=[[0, 1, 1], [0, 1, 1]])],
                     granularity="channel")
    with pytest.raises(FormatError, match="granularity"):
        Distribution([channel], granularity="voxel")
    with pytest.raises(FormatError, match="no weights"):
        LayerDistribution.from_signs("a", np.zeros((0, 3), np.int8))
    assert Distribution([channel], granularity="channel")[0].channel_counts == ((0, 1, 1), (1, 0, 1))


def test_layer_files_keep_the_layout_older_readers_know():
    """granularity is written only when it is not 'layer', so layer files read in readers that
    predate it."""
    text = encode_json(example()).decode()
    assert '"granularity"' not in text and "granularity" not in decode_safetensors(encode_safetensors(example())).to_dict()


def test_size_limits(tmp_path, monkeypatch):
    path = save(example(), tmp_path / "a.polar")
    monkeypatch.setenv("POLARPACK_MAX_POLAR_BYTES", "100")
    with pytest.raises(FormatError, match="limit.*POLARPACK_MAX_POLAR_BYTES"):
        load(path)
    with pytest.raises(FormatError, match="limit"):
        decode(encode_safetensors(example()))
    monkeypatch.setenv("POLARPACK_MAX_POLAR_BYTES", "lots")
    with pytest.raises(FormatError, match="number of bytes"):
        load(path)
    monkeypatch.delenv("POLARPACK_MAX_POLAR_BYTES")
    assert fmt.size_limit("json") < fmt.size_limit("safetensors") and load(path) == example()


@settings(max_examples=10, deadline=None)
@given(distributions())
def test_save_twice_gives_identical_files_and_loads_back(dist):
    with tempfile.TemporaryDirectory() as tmp:
        for suffix in (".polar", ".polar.json", ".polar.safetensors"):
            a, b = Path(tmp) / f"a{suffix}", Path(tmp) / f"b{suffix}"
            save(dist, a)
            save(dist, b)
            assert a.read_bytes() == b.read_bytes() == encode(dist, fmt.encoding_for_path(a))
            assert load(a) == dist
            if suffix != ".polar.safetensors":
                schema_ok(a.read_bytes())
        assert sorted(os.listdir(tmp)) == sorted(f"{x}{s}" for x in "ab" for s in (".polar", ".polar.json", ".polar.safetensors"))


def test_equal_distributions_encode_identically_regardless_of_key_order():
    layers = [LayerDistribution("a", 0.0, 0.5, 0.5)]
    d1 = Distribution(layers, metadata={"b": 1, "a": {"y": 1, "x": 2}}, source={"id": "m", "type": "manual"})
    d2 = Distribution(layers, metadata={"a": {"x": 2, "y": 1}, "b": 1}, source={"type": "manual", "id": "m"})
    assert d1 == d2 and encode_json(d1) == encode_json(d2) and encode_safetensors(d1) == encode_safetensors(d2)


def test_json_layout_is_exact():
    """json.dumps does the writing: one top-level member per line, one layer per line."""
    dist = example()
    lines = encode_json(dist).decode().splitlines()
    assert lines[:3] == ["{", '  "format_version": 1,', '  "layers": [']
    assert lines[3:6] == ["    " + json.dumps(layer.to_dict(), ensure_ascii=False) + ("," if i < 2 else "")
                          for i, layer in enumerate(dist.layers)]
    assert lines[6] == "  ],"
    assert lines[7] == '  "source": ' + json.dumps(dict(dist.source), sort_keys=True, ensure_ascii=False) + ","
    assert lines[-1] == "}" and len(lines) == 12 and decode(encode_json(dist)) == dist
    tiny = LayerDistribution("x", 1e-05, 0.5, 0.49999)
    assert '"p0": 1e-05,' in encode_json(Distribution([tiny])).decode()


def test_constructor_normalises_numbers_and_containers():
    layer = LayerDistribution("a", np.float32(0.5), 0, -0.0 + 0.5, shape=[np.int64(2), 2], counts=[2, 0, 2])
    assert layer.proportions == (0.5, 0.0, 0.5) and all(type(p) is float for p in layer.proportions)
    assert layer.shape == (2, 2) and type(layer.shape[0]) is int and layer.counts == (2, 0, 2)
    neg_zero = LayerDistribution("b", -0.0, 0.5, 0.5)
    assert math.copysign(1, neg_zero.p0) == 1.0
    d = Distribution([layer], metadata={"t": (1, 2), "n": np.int64(3)}, extraction={"layers": ("conv*",), "zero_tol": np.float32(0.5)})
    assert d.metadata == {"t": [1, 2], "n": 3} and type(d.metadata["n"]) is int and type(d.extraction["zero_tol"]) is float
    assert decode(encode_json(d)) == d == decode(encode_safetensors(d))
    with pytest.raises(FormatError, match="non-string key"):
        Distribution([layer], metadata={1: "x"})
    with pytest.raises(FormatError, match=r"metadata\.x"):
        Distribution([layer], metadata={"x": float("nan")})
    with pytest.raises(FormatError, match="sha256"):
        Distribution([layer], source={"sha256": "ABC"})
    with pytest.raises(FormatError, match="source.type"):
        Distribution([layer], source={"type": "checkpoint"})
    with pytest.raises(FormatError, match="zero_tol"):
        Distribution([layer], extraction={"zero_tol": -1})
    with pytest.raises(FormatError, match="'shape'"):
        Distribution([LayerDistribution("a", 0.0, 0.5, 0.5, shape=(True, 2))])
    with pytest.raises(FormatError, match="format_version"):
        Distribution([layer], format_version=True)
    with pytest.raises(FormatError, match="surrogate"):
        decode(b'{"format_version": 1, "layers": [{"name": "\\ud800", "p0": 1, "p_neg": 0, "p_pos": 0}]}')
    with pytest.raises(FormatError, match="surrogate"):
        Distribution([layer], metadata={"\ud800": 1})


def test_minimal_hand_written_file_gets_defaults():
    d = decode(b' \n{"format_version": 1, "layers": [{"name": "conv1", "p0": 0, "p_neg": 0.5, "p_pos": 0.5}]}')
    assert d[0] == LayerDistribution("conv1", 0.0, 0.5, 0.5, kind="conv", shape=None, counts=None)
    assert d.granularity == "layer"
    assert d.source == d.extraction == d.producer == d.metadata == {}


# -- encoding detection ----------------------------------------------------------------------


def test_load_detects_encoding_by_content_not_suffix(tmp_path):
    dist = example()
    for name, encoding in [("j.safetensors", "json"), ("s.polar", "safetensors"), ("s.json", "safetensors"), ("j.bin", "json"), ("s", "safetensors")]:
        path = save(dist, tmp_path / name, encoding=encoding)
        assert path.read_bytes() == encode(dist, encoding)
        assert load(path) == dist
    assert fmt.encoding_for_path("x.polar.safetensors") == "safetensors"
    assert fmt.encoding_for_path("x.polar") == fmt.encoding_for_path("x.polar.json") == "json"


def test_safetensors_whose_length_bytes_look_like_json_whitespace_is_still_detected():
    data = encode_safetensors(example())
    (n,) = struct.unpack("<Q", data[:8])
    target = 32 + 256 * ord("{")  # first bytes 0x20 0x7b: " {" -- looks like JSON to a naive check
    assert target > n
    forged = struct.pack("<Q", target) + data[8 : 8 + n] + b" " * (target - n) + data[8 + n :]
    assert forged[:2] == b" {"
    assert fmt.detect_encoding(forged) == "safetensors"
    assert decode(forged) == example()


# -- bad input -------------------------------------------------------------------------------


def write(tmp_path, name, data) -> Path:
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def doc(**layer_overrides):
    layer = {"name": "conv1", "kind": "conv", "shape": [2, 2], "p0": 0.25, "p_neg": 0.25, "p_pos": 0.5, "counts": [1, 1, 2]}
    layer.update(layer_overrides)
    layer = {k: v for k, v in layer.items() if v is not ...}
    return {"format_version": 1, "layers": [layer], "source": {}, "extraction": {}, "producer": {}, "metadata": {}}


def expect_error(tmp_path, name, data, *fragments):
    path = write(tmp_path, name, data)
    with pytest.raises(FormatError) as info:
        load(path)
    message = str(info.value)
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def test_doc_helper_is_valid():
    assert decode(json.dumps(doc()).encode())[0].counts == (1, 1, 2)


@pytest.mark.parametrize(
    "overrides, fragments",
    [
        ({"p0": -0.25, "p_neg": 0.75, "counts": ...}, ["'conv1'", "'p0'", "[0, 1]"]),
        ({"p0": 0.01, "p_neg": 0.45, "p_pos": 0.45, "counts": ...}, ["'conv1'", "sum to 1"]),
        ({"p0": 1.5, "counts": ...}, ["'conv1'", "'p0'"]),
        ({"p0": "0.25"}, ["'conv1'", "'p0'", "finite numbers"]),
        ({"p0": 0.5, "p_neg": 0.0}, ["'conv1'", "'p0'", "give 1/4"]),
        ({"counts": [1, 1, 3]}, ["'conv1'", "'counts'", "shape [2, 2]"]),
        ({"counts": [1, 1]}, ["'conv1'", "'counts'"]),
        ({"counts": [-1, 2, 3], "shape": None}, ["'conv1'", "'counts'", "non-negative"]),
        ({"counts": [0, 0, 0], "shape": None, "p0": 0.0, "p_neg": 0.5}, ["'conv1'", "positive sum"]),
        ({"shape": [2.0, 2]}, ["'conv1'", "'shape'"]),
        ({"shape": [], "counts": ...}, ["'conv1'", "'shape'"]),
        ({"kind": "pool"}, ["'conv1'", "'kind'", "conv"]),
        ({"name": ""}, ["layers[0]", "'name'"]),
        ({"weight": 1}, ["layers[0]", "'conv1'", "unknown field", "weight"]),
    ],
)
def test_invalid_layers_are_rejected_naming_file_layer_and_field(tmp_path, overrides, fragments):
    expect_error(tmp_path, "bad.polar", json.dumps(doc(**overrides)), *fragments)


def test_nan_in_a_json_file_is_rejected(tmp_path):
    text = json.dumps(doc(counts=...)).replace('"p0": 0.25', '"p0": NaN')
    assert "NaN" in text
    expect_error(tmp_path, "nan.polar", text, "'conv1'", "'p0'", "nan", "finite")
    expect_error(tmp_path, "inf.polar", text.replace("NaN", "Infinity"), "'conv1'", "'p0'", "finite")
    expect_error(tmp_path, "big.polar", text.replace("NaN", "1e400"), "'conv1'", "'p0'", "finite")
    expect_error(tmp_path, "nanmeta.polar", json.dumps(doc()).replace('"metadata": {}', '"metadata": {"x": NaN}'), "metadata.x")


@pytest.mark.parametrize(
    "data, fragments",
    [
        ('{"format_version": 1, "layers": [', ["malformed JSON", "line 1"]),
        ("{}", ["format_version"]),
        (json.dumps({**doc(), "format_version": 2}), ["unknown format_version 2"]),
        (json.dumps({**doc(), "format_version": 1.0}), ["format_version"]),
        (json.dumps({**doc(), "format_version": "1"}), ["format_version"]),
        (json.dumps({**doc(), "extra": 1}), ["unknown field", "extra"]),
        (json.dumps({**doc(), "layers": []}), ["'layers'", "non-empty"]),
        (json.dumps({**doc(), "metadata": []}), ["'metadata'", "object"]),
        (json.dumps({**doc(), "source": {"sha256": "0" * 63}}), ["source.sha256"]),
        (json.dumps({**doc(), "layers": doc()["layers"] * 2}), ["'conv1'", "twice"]),
        ('{"format_version": 1, "format_version": 1, "layers": []}', ["duplicate key"]),
        (json.dumps({**doc(), "granularity": "pattern"}), ["'pattern' is missing"]),
        ("[1, 2]", ["top level must be a JSON object"]),
        (json.dumps(doc(p0=10**400, counts=...)), ["'p0'"]),
        ("   ", ["empty"]),
        ("\ufeff" + json.dumps(doc()), ["byte-order mark"]),
        (b'{"format_version": 1, "layers": [{"name": "\xff"}]}', ["not UTF-8"]),
        ("[" * 100000, ["malformed"]),
    ],
    ids=lambda value: repr(value)[:40] if isinstance(value, (str, bytes)) else None,
)
def test_invalid_files_are_rejected(tmp_path, data, fragments):
    expect_error(tmp_path, "bad.polar", data, *fragments)


@pytest.mark.parametrize("bad", [{**doc(), "format_version": 2}, {**doc(), "extra": 1}, {**doc(), "layers": []},
                                 doc(weight=1), doc(kind="pool"), doc(p0=1.5), doc(counts=[1, 1]), doc(shape=[]), doc(name="")])
def test_unknown_version_and_fields_are_also_rejected_by_the_schema(bad):
    assert not VALIDATOR.is_valid(bad)


@pytest.mark.parametrize("cut", [3, 8, 20, 0.5, -1])
def test_truncated_safetensors_are_rejected(tmp_path, cut):
    data = encode_safetensors(example())
    expect_error(tmp_path, "cut.polar.safetensors", data[: int(len(data) * cut) if cut == 0.5 else cut], "safetensors")


def test_foreign_safetensors_are_rejected(tmp_path):
    from safetensors.numpy import save as np_save

    props = np.array([[0.0, 0.5, 0.5]])
    counts = np.array([[-1, -1, -1]], dtype=np.int64)
    polar = json.dumps({"format_version": 1, "layers": [{"name": "a", "kind": "conv", "shape": None}]})
    expect_error(tmp_path, "nometa.safetensors", np_save({"proportions": props, "counts": counts}), "metadata key 'polar'")
    expect_error(tmp_path, "other.safetensors", np_save({"w": props}, metadata={"format": "pt"}), "metadata key 'polar'")
    assert decode(np_save({"proportions": props, "counts": counts}, metadata={"polar": polar}))[0].name == "a"
    expect_error(tmp_path, "extrakey.safetensors", np_save({"proportions": props, "counts": counts}, metadata={"polar": polar, "format": "pt"}), "'format'")
    expect_error(tmp_path, "extratensor.safetensors", np_save({"proportions": props, "counts": counts, "x": props}, metadata={"polar": polar}), "'x'")
    expect_error(tmp_path, "f32.safetensors", np_save({"proportions": props.astype(np.float32), "counts": counts}, metadata={"polar": polar}), "'proportions'", "F64")
    expect_error(tmp_path, "shape.safetensors", np_save({"proportions": props, "counts": np.zeros((2, 3), np.int64) - 1}, metadata={"polar": polar}), "'counts'")
    layered = json.dumps({"format_version": 1, "layers": [{"name": "a", "p0": 0.0}]})
    expect_error(tmp_path, "layerkeys.safetensors", np_save({"proportions": props, "counts": counts}, metadata={"polar": layered}), "layers[0]", "'shape'")
    bad_props = np.array([[0.0, 0.5, 0.6]])
    expect_error(tmp_path, "sum.safetensors", np_save({"proportions": bad_props, "counts": counts}, metadata={"polar": polar}), "layer 'a'", "sum to 1")
    nan_props = np.array([[np.nan, 0.5, 0.5]])
    expect_error(tmp_path, "nan.safetensors", np_save({"proportions": nan_props, "counts": counts}, metadata={"polar": polar}), "layer 'a'", "'p0'")
    part = np.array([[-1, 1, 1]], dtype=np.int64)
    expect_error(tmp_path, "part.safetensors", np_save({"proportions": props, "counts": part}, metadata={"polar": polar}), "layer 'a'", "'counts'")


def _mutated(encoder):
    def mutate(args):
        data = encoder(example())
        i, byte, cut = args
        i %= len(data)
        data = data[:i] + bytes([byte]) + data[i + 1 :]
        return data[: cut % (len(data) + 1)] if cut % 3 == 0 else data

    return st.tuples(st.integers(0, 5000), st.integers(0, 255), st.integers(0, 5000)).map(mutate)


@settings(max_examples=80, deadline=None)
@given(
    st.binary(max_size=300)
    | st.text(max_size=100).map(str.encode)
    | _mutated(encode_safetensors)
    | _mutated(encode_json)
)
def test_decoding_arbitrary_bytes_gives_a_distribution_or_a_format_error(data):
    try:
        result = decode(data, where="fuzz")
    except FormatError as exc:
        assert str(exc).startswith("fuzz")
    else:
        assert isinstance(result, Distribution)


def test_load_missing_or_directory(tmp_path):
    with pytest.raises(FormatError, match="no such file"):
        load(tmp_path / "missing.polar")
    with pytest.raises(FormatError, match="directory"):
        load(tmp_path)


# -- writing ---------------------------------------------------------------------------------


def test_save_to_a_missing_directory_raises_and_writes_nothing(tmp_path):
    target = tmp_path / "nope" / "d.polar"
    with pytest.raises(PolarpackError, match="does not exist"):
        save(example(), target)
    assert not target.parent.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".polar", ".polar.safetensors"])
def test_failing_writes_leave_the_target_untouched_and_no_temp_files(tmp_path, monkeypatch, suffix):
    target = tmp_path / f"d{suffix}"
    target.write_bytes(b"previous content")

    def unchanged():
        assert target.read_bytes() == b"previous content"
        assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]

    # an invalid distribution (mutated after construction)
    bad = example()
    bad.metadata["x"] = float("nan")
    with pytest.raises(FormatError, match="metadata.x"):
        save(bad, target)
    unchanged()
    # an unknown encoding
    with pytest.raises(FormatError, match="encoding"):
        save(example(), target, encoding="yaml")
    unchanged()

    # an encoder that fails
    def boom(dist):
        raise RuntimeError("encoder failed")

    with monkeypatch.context() as m:
        m.setattr(fmt, "encode_json", boom)
        m.setattr(fmt, "encode_safetensors", boom)
        with pytest.raises(RuntimeError):
            save(example(), target)
    unchanged()
    # the disk failing between temp file and rename
    for name in ("fsync", "replace"):
        with monkeypatch.context() as m:
            m.setattr(polarpack._io.os, name, lambda *a: (_ for _ in ()).throw(OSError(28, "No space left on device")))
            with pytest.raises(OSError):
                save(example(), target)
        unchanged()
    save(example(), target)
    assert load(target) == example()
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


# -- schema and spec -------------------------------------------------------------------------


def test_shipped_schema_is_a_valid_schema_that_matches_the_code():
    schema = fmt.json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["additionalProperties"] is False and schema["$defs"]["layer"]["additionalProperties"] is False
    assert schema["properties"]["format_version"]["const"] == fmt.FORMAT_VERSION
    assert schema["properties"]["granularity"]["enum"] == ["layer", "channel"]  # pattern: safetensors only
    assert schema["$defs"]["layer"]["properties"]["kind"]["enum"] == list(fmt.LAYER_KINDS)
    assert schema["$defs"]["source"]["properties"]["type"]["enum"][:-1] == list(fmt.SOURCE_TYPES)
    assert sorted(schema["properties"]) == sorted(fmt.TOP_KEYS)
    assert sorted(schema["$defs"]["layer"]["properties"]) == sorted(fmt.LAYER_KEYS)


def _spec_block(lang: str, after: str) -> str:
    text = SPEC.read_text("utf-8")
    start = text.index(after)
    match = re.compile(rf"```{lang}\n(.*?)```", re.S).search(text, start)
    return match.group(1)


def test_spec_example_is_exactly_what_the_code_writes(tmp_path):
    example_json = _spec_block("json", "## Example").encode("utf-8")
    dist = decode(example_json)
    assert encode_json(dist) == example_json
    schema_ok(example_json)
    st_bytes = encode_safetensors(dist)
    (n,) = struct.unpack("<Q", st_bytes[:8])
    header = _spec_block("text", "## Example").rstrip("\n")
    assert st_bytes[8 : 8 + n].decode("utf-8").rstrip(" ") == header.rstrip(" ")
    assert f"N` = {n}" in SPEC.read_text("utf-8") and f"{len(st_bytes)} bytes" in SPEC.read_text("utf-8")
    path = save(dist, tmp_path / "tiny.polar")
    assert path.read_bytes() == example_json
    assert {k: v for k, v in dist.extraction.items()} == {"expand_groups": True, "groups": {"features.3": 2}, "include_linear": True, "layers": ["*"], "layout": "OIHW", "zero_tol": 0.0}


def test_size_report():
    report = fmt.size_report(example())
    n = 432 + 4608 + 5120
    assert {k: report[k] for k in ("granularity", "layers", "numbers", "weights", "polar_bytes", "sign_pattern_bytes",
                                   "float32_bytes", "pattern_bits_per_weight")} == {
        "granularity": "layer", "layers": 3, "numbers": 6, "weights": n, "polar_bytes": len(encode_json(example())),
        "sign_pattern_bytes": (2 * n + 7) // 8, "float32_bytes": 4 * n, "pattern_bits_per_weight": None}
    assert 0 < report["entropy_bits_per_weight"] < math.log2(3)
    unknown = Distribution([LayerDistribution("a", 0.0, 0.5, 0.5)])
    assert fmt.size_report(unknown, polar_bytes=7)["weights"] is None and fmt.size_report(unknown, polar_bytes=7)["polar_bytes"] == 7
    half = LayerDistribution.from_signs("h", np.array([[0, 0, 1, -1]] * 64, np.int8))  # p0 = 0.5, p- = p+ = 0.25
    report = fmt.size_report(Distribution([half], granularity="pattern"))
    assert report["entropy_bits_per_weight"] == report["pattern_bits_per_weight"] == 1.5  # the encoding meets the bound here


def test_every_polar_file_the_project_ships_validates(polar_schema_validator):
    """The example distributions committed under examples/ are written by polarpack: they must
    pass the schema and load."""
    import pathlib

    files = sorted((pathlib.Path(__file__).resolve().parents[1] / "examples").glob("*.polar*"))
    assert files
    for path in files:
        dist = fmt.load(path)
        if path.suffix == ".polar":
            polar_schema_validator.validate(json.loads(path.read_text()))
            assert path.read_bytes() == encode_json(dist)  # written by this version
