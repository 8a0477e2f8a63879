"""The .polar format (spec/polar-format.md): round trips, byte reproducibility, schema, errors."""

from __future__ import annotations

import json
import math
import os
import re
import stat
import string
import struct
import tempfile
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import polarpack._io
import polarpack.format as fmt
import polarpack.format.files
from polarpack.errors import FormatError, PolarpackError
from polarpack.format import (
    SOURCE_TYPES,
    Distribution,
    LayerDistribution,
    coding,
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
NAME_CHARS = string.ascii_letters + string.digits + '._-[], "\\/é中\u2028'
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
    return LayerDistribution(
        name=name, kind=draw(kinds), shape=draw(st.none() | shapes), p0=a, p_neg=p_neg, p_pos=p_pos
    )


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
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
        kwargs["producer"] = draw(
            st.fixed_dictionaries({"name": st.text(max_size=6), "version": st.text(max_size=6)})
        )
    return Distribution(
        layers=layers,
        source=draw(sources),
        extraction=draw(extractions),
        metadata=draw(json_objects),
        **kwargs,
    )


# ternary tensors with the edge cases the pattern encoding special-cases: all zero, one sign only
ternary = st.tuples(
    st.lists(st.integers(1, 5), min_size=2, max_size=4),
    st.sampled_from(["mixed", "zero", "neg", "pos", "nonzero"]),
    st.integers(0, 2**31),
).map(lambda args: _ternary(*args))


def _ternary(shape, kind, seed):
    values = np.random.default_rng(seed).integers(-1, 2, size=shape).astype(np.int8)
    return {
        "mixed": values,
        "zero": np.zeros(shape, np.int8),
        "neg": -np.ones(shape, np.int8),
        "pos": np.ones(shape, np.int8),
        "nonzero": np.where(values == 0, 1, values).astype(np.int8),
    }[kind]


@st.composite
def granular_distributions(draw):
    granularity = draw(st.sampled_from(["channel", "pattern"]))
    tensors = draw(st.lists(ternary, min_size=1, max_size=4))
    layers = [
        LayerDistribution.from_signs(f"l{i}", t, granularity=granularity)
        for i, t in enumerate(tensors)
    ]
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
        extraction={
            "zero_tol": 0.0,
            "expand_groups": True,
            "groups": {"features.3": 2},
            "layers": ["*"],
        },
        metadata={
            "note": "[1,2] and [3,  4] stay as written",
            "nested": [[1, 2], [], {"b": 1, "a": [0.5]}],
        },
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
        for layer, t in zip(decode(s).layers, tensors, strict=True):
            assert np.array_equal(layer.signs().numpy(), t)
        with pytest.raises(FormatError, match="safetensors"):
            encode_json(dist)
    else:
        j = encode_json(dist)
        assert decode(j) == dist and encode_json(decode(j)) == j
        schema_ok(j)
        for layer, t in zip(dist.layers, tensors, strict=True):
            rows = t.reshape(t.shape[0], -1)
            assert [list(c) for c in layer.channel_counts] == [
                [int((r == 0).sum()), int((r < 0).sum()), int((r > 0).sum())] for r in rows
            ]


@SETTINGS
@given(st.lists(st.integers(0, 2), max_size=40).map(lambda v: np.array(v, np.int8) - 1))
def test_pack_signs_stays_within_its_bits_and_inverts(signs):
    counts = [int((signs == 0).sum()), int((signs < 0).sum()), int((signs > 0).sum())]
    data = pack_signs(signs)
    n, n0 = len(signs), counts[0]
    assert len(data) == (0 < n0 < n) * -(-n // 8) + (0 < counts[1] < n - n0) * -(-(n - n0) // 8)
    assert np.array_equal(unpack_signs(data, (n,), counts), signs)


@pytest.mark.parametrize(
    "data, counts, message",
    [
        (b"\x00", (0, 2, 0), "needs 0"),  # a single sign needs no bits, so extra bytes are refused
        (b"\xff", (4, 0, 4), "do not match"),  # 8 zero bits but counts say 4 zeros
        (b"\xc1", (2, 0, 2), "padding"),  # 2 zeros in the first 4 bits, but a padding bit is set
    ],
)
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
        Distribution(
            [LayerDistribution.from_counts("a", [1, 2, 1], shape=[2, 2])], granularity="channel"
        )
    with pytest.raises(FormatError, match="one per output channel"):
        Distribution(
            [
                LayerDistribution.from_counts(
                    "a", [1, 2, 1], shape=[2, 2], channel_counts=[[1, 2, 1]]
                )
            ],
            granularity="channel",
        )
    with pytest.raises(FormatError, match="add up"):
        Distribution(
            [
                LayerDistribution.from_counts(
                    "a", [1, 2, 1], shape=[2, 2], channel_counts=[[0, 1, 1], [0, 1, 1]]
                )
            ],
            granularity="channel",
        )
    with pytest.raises(FormatError, match="granularity"):
        Distribution([channel], granularity="voxel")
    with pytest.raises(FormatError, match="no weights"):
        LayerDistribution.from_signs("a", np.zeros((0, 3), np.int8))
    table = Distribution([channel], granularity="channel")[0].channel_counts
    assert table.tolist() == [[0, 1, 1], [1, 0, 1]] and table.dtype == np.int64
    assert not table.flags.writeable


def test_layer_files_keep_the_layout_older_readers_know():
    """granularity is written only when it is not 'layer', so layer files read in readers that
    predate it."""
    text = encode_json(example()).decode()
    assert (
        '"granularity"' not in text
        and "granularity" not in decode_safetensors(encode_safetensors(example())).to_dict()
    )


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
        assert sorted(os.listdir(tmp)) == sorted(
            f"{x}{s}" for x in "ab" for s in (".polar", ".polar.json", ".polar.safetensors")
        )


def test_equal_distributions_encode_identically_regardless_of_key_order():
    layers = [LayerDistribution("a", 0.0, 0.5, 0.5)]
    d1 = Distribution(
        layers, metadata={"b": 1, "a": {"y": 1, "x": 2}}, source={"id": "m", "type": "manual"}
    )
    d2 = Distribution(
        layers, metadata={"a": {"x": 2, "y": 1}, "b": 1}, source={"type": "manual", "id": "m"}
    )
    assert (
        d1 == d2
        and encode_json(d1) == encode_json(d2)
        and encode_safetensors(d1) == encode_safetensors(d2)
    )


def test_json_layout_is_exact():
    """json.dumps does the writing: one top-level member per line, one layer per line."""
    dist = example()
    lines = encode_json(dist).decode().splitlines()
    assert lines[:3] == ["{", '  "format_version": 3,', '  "layers": [']
    assert lines[3:6] == [
        "    " + json.dumps(layer.to_dict(), ensure_ascii=False) + ("," if i < 2 else "")
        for i, layer in enumerate(dist.layers)
    ]
    assert lines[6] == "  ],"
    assert (
        lines[7]
        == '  "source": ' + json.dumps(dict(dist.source), sort_keys=True, ensure_ascii=False) + ","
    )
    assert lines[-1] == "}" and len(lines) == 12 and decode(encode_json(dist)) == dist
    tiny = LayerDistribution("x", 1e-05, 0.5, 0.49999)
    assert '"p0": 1e-05,' in encode_json(Distribution([tiny])).decode()


def test_constructor_normalises_numbers_and_containers():
    layer = LayerDistribution(
        "a", np.float32(0.5), 0, -0.0 + 0.5, shape=[np.int64(2), 2], counts=[2, 0, 2]
    )
    assert layer.proportions == (0.5, 0.0, 0.5) and all(type(p) is float for p in layer.proportions)
    assert layer.shape == (2, 2) and type(layer.shape[0]) is int and layer.counts == (2, 0, 2)
    neg_zero = LayerDistribution("b", -0.0, 0.5, 0.5)
    assert math.copysign(1, neg_zero.p0) == 1.0
    d = Distribution(
        [layer],
        metadata={"t": (1, 2), "n": np.int64(3)},
        extraction={"layers": ("conv*",), "zero_tol": np.float32(0.5)},
    )
    assert (
        d.metadata == {"t": [1, 2], "n": 3}
        and type(d.metadata["n"]) is int
        and type(d.extraction["zero_tol"]) is float
    )
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
        decode(
            b'{"format_version": 1, "layers": '
            b'[{"name": "\\ud800", "p0": 1, "p_neg": 0, "p_pos": 0}]}'
        )
    with pytest.raises(FormatError, match="surrogate"):
        Distribution([layer], metadata={"\ud800": 1})


def test_minimal_hand_written_file_gets_defaults():
    d = decode(
        b' \n{"format_version": 1, "layers": '
        b'[{"name": "conv1", "p0": 0, "p_neg": 0.5, "p_pos": 0.5}]}'
    )
    assert d[0] == LayerDistribution("conv1", 0.0, 0.5, 0.5, kind="conv", shape=None, counts=None)
    assert d.granularity == "layer"
    assert d.source == d.extraction == d.producer == d.metadata == {}


# -- encoding detection ----------------------------------------------------------------------


def test_load_detects_encoding_by_content_not_suffix(tmp_path):
    dist = example()
    for name, encoding in [
        ("j.safetensors", "json"),
        ("s.polar", "safetensors"),
        ("s.json", "safetensors"),
        ("j.bin", "json"),
        ("s", "safetensors"),
    ]:
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
    layer = {
        "name": "conv1",
        "kind": "conv",
        "shape": [2, 2],
        "p0": 0.25,
        "p_neg": 0.25,
        "p_pos": 0.5,
        "counts": [1, 1, 2],
    }
    layer.update(layer_overrides)
    layer = {k: v for k, v in layer.items() if v is not ...}
    return {
        "format_version": 1,
        "layers": [layer],
        "source": {},
        "extraction": {},
        "producer": {},
        "metadata": {},
    }


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
        (
            {"counts": [0, 0, 0], "shape": None, "p0": 0.0, "p_neg": 0.5},
            ["'conv1'", "positive sum"],
        ),
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
    expect_error(
        tmp_path, "inf.polar", text.replace("NaN", "Infinity"), "'conv1'", "'p0'", "finite"
    )
    expect_error(tmp_path, "big.polar", text.replace("NaN", "1e400"), "'conv1'", "'p0'", "finite")
    expect_error(
        tmp_path,
        "nanmeta.polar",
        json.dumps(doc()).replace('"metadata": {}', '"metadata": {"x": NaN}'),
        "metadata.x",
    )


@pytest.mark.parametrize(
    "data, fragments",
    [
        ('{"format_version": 1, "layers": [', ["malformed JSON", "line 1"]),
        ("{}", ["format_version"]),
        (json.dumps({**doc(), "format_version": 4}), ["unknown format_version 4"]),
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


@pytest.mark.parametrize(
    "bad",
    [
        {**doc(), "format_version": 4},
        {**doc(), "extra": 1},
        {**doc(), "layers": []},
        doc(weight=1),
        doc(kind="pool"),
        doc(p0=1.5),
        doc(counts=[1, 1]),
        doc(shape=[]),
        doc(name=""),
    ],
)
def test_unknown_version_and_fields_are_also_rejected_by_the_schema(bad):
    assert not VALIDATOR.is_valid(bad)


@pytest.mark.parametrize("cut", [3, 8, 20, 0.5, -1])
def test_truncated_safetensors_are_rejected(tmp_path, cut):
    data = encode_safetensors(example())
    expect_error(
        tmp_path,
        "cut.polar.safetensors",
        data[: int(len(data) * cut) if cut == 0.5 else cut],
        "safetensors",
    )


def test_foreign_safetensors_are_rejected(tmp_path):
    from safetensors.numpy import save as np_save

    props = np.array([[0.0, 0.5, 0.5]])
    counts = np.array([[-1, -1, -1]], dtype=np.int64)
    polar = json.dumps(
        {"format_version": 1, "layers": [{"name": "a", "kind": "conv", "shape": None}]}
    )
    expect_error(
        tmp_path,
        "nometa.safetensors",
        np_save({"proportions": props, "counts": counts}),
        "metadata key 'polar'",
    )
    expect_error(
        tmp_path,
        "other.safetensors",
        np_save({"w": props}, metadata={"format": "pt"}),
        "metadata key 'polar'",
    )
    assert (
        decode(np_save({"proportions": props, "counts": counts}, metadata={"polar": polar}))[0].name
        == "a"
    )
    expect_error(
        tmp_path,
        "extrakey.safetensors",
        np_save(
            {"proportions": props, "counts": counts}, metadata={"polar": polar, "format": "pt"}
        ),
        "'format'",
    )
    expect_error(
        tmp_path,
        "extratensor.safetensors",
        np_save({"proportions": props, "counts": counts, "x": props}, metadata={"polar": polar}),
        "'x'",
    )
    expect_error(
        tmp_path,
        "f32.safetensors",
        np_save(
            {"proportions": props.astype(np.float32), "counts": counts}, metadata={"polar": polar}
        ),
        "'proportions'",
        "F64",
    )
    expect_error(
        tmp_path,
        "shape.safetensors",
        np_save(
            {"proportions": props, "counts": np.zeros((2, 3), np.int64) - 1},
            metadata={"polar": polar},
        ),
        "'counts'",
    )
    layered = json.dumps({"format_version": 1, "layers": [{"name": "a", "p0": 0.0}]})
    expect_error(
        tmp_path,
        "layerkeys.safetensors",
        np_save({"proportions": props, "counts": counts}, metadata={"polar": layered}),
        "layers[0]",
        "'shape'",
    )
    bad_props = np.array([[0.0, 0.5, 0.6]])
    expect_error(
        tmp_path,
        "sum.safetensors",
        np_save({"proportions": bad_props, "counts": counts}, metadata={"polar": polar}),
        "layer 'a'",
        "sum to 1",
    )
    nan_props = np.array([[np.nan, 0.5, 0.5]])
    expect_error(
        tmp_path,
        "nan.safetensors",
        np_save({"proportions": nan_props, "counts": counts}, metadata={"polar": polar}),
        "layer 'a'",
        "'p0'",
    )
    part = np.array([[-1, 1, 1]], dtype=np.int64)
    expect_error(
        tmp_path,
        "part.safetensors",
        np_save({"proportions": props, "counts": part}, metadata={"polar": polar}),
        "layer 'a'",
        "'counts'",
    )


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
        m.setattr(polarpack.format.files, "encode_json", boom)
        m.setattr(polarpack.format.files, "encode_safetensors", boom)
        with pytest.raises(RuntimeError):
            save(example(), target)
    unchanged()
    # the disk failing between temp file and rename
    for name in ("fsync", "replace"):
        with monkeypatch.context() as m:
            m.setattr(
                polarpack._io.os,
                name,
                lambda *a: (_ for _ in ()).throw(OSError(28, "No space left on device")),
            )
            with pytest.raises(OSError):
                save(example(), target)
        unchanged()
    save(example(), target)
    assert load(target) == example()
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_saved_files_get_the_umask_permissions_without_the_umask_being_touched(
    tmp_path, monkeypatch
):
    """A new file gets what the user's umask allows, as any file would; the umask is process-wide,
    so reading it by setting it would race the user's other threads."""
    before = os.umask(0o027)
    try:
        monkeypatch.setattr(os, "umask", lambda mask: pytest.fail("the umask was changed"))
        save(example(), tmp_path / "d.polar")
    finally:
        monkeypatch.undo()
        os.umask(before)
    assert stat.S_IMODE((tmp_path / "d.polar").stat().st_mode) == 0o640


# -- schema and spec -------------------------------------------------------------------------


def test_shipped_schema_is_a_valid_schema_that_matches_the_code():
    schema = fmt.json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert (
        schema["additionalProperties"] is False
        and schema["$defs"]["layer"]["additionalProperties"] is False
    )
    assert schema["properties"]["format_version"]["enum"] == list(fmt.READ_VERSIONS)
    assert fmt.FORMAT_VERSION == max(fmt.READ_VERSIONS)
    # pattern and scaled: safetensors only
    assert schema["properties"]["granularity"]["enum"] == list(fmt.JSON_GRANULARITIES)
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
    assert f"N` = {n}" in SPEC.read_text("utf-8") and f"{len(st_bytes)} bytes" in SPEC.read_text(
        "utf-8"
    )
    path = save(dist, tmp_path / "tiny.polar")
    assert path.read_bytes() == example_json
    assert {k: v for k, v in dist.extraction.items()} == {
        "expand_groups": True,
        "groups": {"features.3": 2},
        "include_linear": True,
        "layers": ["*"],
        "layout": "OIHW",
        "zero_tol": 0.0,
    }


def test_size_report():
    report = fmt.size_report(example())
    n = 432 + 4608 + 5120
    assert {
        k: report[k]
        for k in (
            "granularity",
            "layers",
            "numbers",
            "weights",
            "polar_bytes",
            "sign_pattern_bytes",
            "float32_bytes",
            "pattern_bits_per_weight",
        )
    } == {
        "granularity": "layer",
        "layers": 3,
        "numbers": 6,
        "weights": n,
        "polar_bytes": len(encode_json(example())),
        "sign_pattern_bytes": (2 * n + 7) // 8,
        "float32_bytes": 4 * n,
        "pattern_bits_per_weight": None,
    }
    assert 0 < report["entropy_bits_per_weight"] < math.log2(3)
    unknown = Distribution([LayerDistribution("a", 0.0, 0.5, 0.5)])
    assert (
        fmt.size_report(unknown, polar_bytes=7)["weights"] is None
        and fmt.size_report(unknown, polar_bytes=7)["polar_bytes"] == 7
    )
    half = LayerDistribution.from_signs(
        "h", np.array([[0, 0, 1, -1]] * 64, np.int8)
    )  # p0 = 0.5, p- = p+ = 0.25
    report = fmt.size_report(Distribution([half], granularity="pattern"))
    # both maps raw (balanced): 1.5 bits per weight, the bound here, plus the flags byte
    assert report["entropy_bits_per_weight"] == 1.5
    assert report["pattern_bits_per_weight"] == 8 * (1 + 32 + 16) / 256
    assert report["channel_bits_per_weight"] == 1.5  # every channel is [0, 0, 1, -1]


def test_every_polar_file_the_project_ships_validates(polar_schema_validator):
    """The example distributions committed under examples/ are written by polarpack: they must
    pass the schema and load."""
    import pathlib

    files = sorted((pathlib.Path(__file__).resolve().parents[1] / "examples").glob("*.polar*"))
    assert files
    for path in files:
        dist = fmt.load(path).verify()
        now, then = fmt.FORMAT_VERSION, dist.format_version
        if path.suffix == ".polar":  # an older version's JSON differs only in the version number
            polar_schema_validator.validate(json.loads(path.read_text()))
            written = encode_json(dist).replace(
                b'"format_version": %d' % now, b'"format_version": %d' % then, 1
            )
            assert path.read_bytes() == written
        elif then == now:
            assert path.read_bytes() == encode_safetensors(dist)
        else:  # re-coded on reading (version 3 may gap-code a map): the same distribution
            assert decode(encode_safetensors(dist)) == dist


# -- version 2: coded streams, scales, normalisation tensors ---------------------------------

EDGE_KINDS = [
    "mixed",
    "zero",
    "neg",
    "pos",
    "nonzero",
    "sparse",  # p0 near 1
    "dense",  # p0 near 0
    "skewed",  # nearly all negative
    "one-zero",
    "zeros-and-negatives",
]


def edge_signs(shape, kind, seed) -> np.ndarray:
    """Ternary tensors with the cases the coding special-cases or finds hard."""
    rng = np.random.default_rng(seed)
    n = math.prod(shape)
    u = rng.random(n)
    signs = np.where(rng.random(n) < 0.5, -1, 1)
    flat = {
        "mixed": rng.integers(-1, 2, n),
        "zero": np.zeros(n),
        "neg": -np.ones(n),
        "pos": np.ones(n),
        "nonzero": signs,
        "sparse": np.where(u < 0.99, 0, signs),
        "dense": np.where(u < 0.01, 0, signs),
        "skewed": np.where(u < 0.97, -1, signs),
        "one-zero": np.where(np.arange(n) == n // 2, 0, signs),
        "zeros-and-negatives": np.where(u < 0.5, 0, -1),
    }[kind]
    return flat.astype(np.int8).reshape(shape)


# shapes from one weight per channel ([C] and [C, 1]) to a few hundred weights per channel
layer_shapes = st.one_of(
    st.lists(st.integers(1, 7), min_size=1, max_size=4),
    st.tuples(st.integers(1, 40), st.just(1)).map(list),
    st.tuples(st.integers(1, 3), st.integers(50, 400)).map(list),
).map(tuple)
edge_tensors = st.builds(edge_signs, layer_shapes, st.sampled_from(EDGE_KINDS), st.integers(0, 99))


def norm_tensors(seed: int, modules: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(modules):
        c = int(rng.integers(1, 9))
        members = NORM_MEMBERS if i % 2 == 0 else NORM_MEMBERS[2:]  # affine and not
        for member in members:
            out[f"bn{i}.{member}"] = rng.standard_normal(c).astype(np.float32)
    return out


NORM_MEMBERS = fmt.NORM_MEMBERS


@st.composite
def coded_distributions(draw):
    """Distributions of every coded granularity, with their source tensors."""
    granularity = draw(st.sampled_from(["channel", "pattern", "scaled"]))
    tensors = draw(st.lists(edge_tensors, min_size=1, max_size=4))
    layers = []
    for i, t in enumerate(tensors):
        scales = None
        if granularity == "scaled":
            scales = np.abs(np.random.default_rng(i).standard_normal(t.shape[0]))
            scales[::3] = 0.0
        layers.append(
            LayerDistribution.from_signs(f"l{i}", t, granularity=granularity, scales=scales)
        )
    norms = norm_tensors(draw(st.integers(0, 9)), draw(st.integers(0, 3)))
    return Distribution(layers, granularity=granularity, norms=norms), tensors


def channel_reference(t: np.ndarray) -> list[list[int]]:
    rows = t.reshape(t.shape[0], -1)
    return [[int((r == 0).sum()), int((r < 0).sum()), int((r > 0).sum())] for r in rows]


@SETTINGS
@given(coded_distributions())
def test_every_granularity_round_trips_exactly_through_each_encoding(drawn):
    dist, tensors = drawn
    data = encode_safetensors(dist)
    back = decode(data)
    assert back == dist and encode_safetensors(back) == data and back.format_version == 3
    assert back.verify() is back
    for layer, t in zip(back.layers, tensors, strict=True):
        if dist.granularity == "channel":
            assert layer.channel_counts.tolist() == channel_reference(t)
        else:
            assert np.array_equal(layer.signs().numpy(), t) and layer.signs().dtype == torch.int8
    if dist.granularity == "scaled":
        for layer, original in zip(back.layers, dist.layers, strict=True):
            assert layer.scales.dtype == np.float32
            assert np.array_equal(layer.scales, original.scales)
            expected = layer.signs().numpy() * layer.scales.reshape(
                -1, *[1] * (layer.signs().dim() - 1)
            )
            assert np.array_equal(layer.scaled_weights().numpy(), expected)
    assert list(back.norms) == list(dist.norms)
    assert all(np.array_equal(back.norms[k], v) for k, v in dist.norms.items())
    if dist.granularity == "channel" and not dist.norms:
        j = encode_json(dist)
        assert decode(j) == dist and encode_json(decode(j)) == j
        schema_ok(j)
    else:
        with pytest.raises(FormatError, match="safetensors"):
            encode_json(dist)


@pytest.mark.parametrize("kind", EDGE_KINDS)
def test_large_layers_round_trip_and_code_near_their_information(kind, monkeypatch):
    """A 3 x 100,000 layer, decoded in small chunks and blocks (every loop of the coder runs)."""
    from polarpack.format import coding

    t = edge_signs((3, 100_000), kind, 1)
    layer = LayerDistribution.from_signs("big", t)
    n, (n0, n_neg, n_pos) = t.size, layer.counts
    info = n * fmt.entropy_bits(layer.proportions) / 8
    assert len(layer.pattern) <= 1.002 * info + 16  # within a hair of the order-0 bound
    for name, value in (("CHUNK", 1000), ("BLOCK", 4096), ("CHANNEL_BLOCK", 2)):
        monkeypatch.setattr(coding, name, value)
    dist = decode(encode_safetensors(Distribution([layer], granularity="pattern")))
    assert np.array_equal(dist[0].signs().numpy(), t)
    channel = LayerDistribution.from_signs("big", t, granularity="channel")
    back = decode(encode_safetensors(Distribution([channel], granularity="channel")))
    assert back[0].channel_counts.tolist() == channel_reference(t)
    assert (n0, n_neg, n_pos) == tuple(int(c) for c in back[0].channel_counts.sum(0))


def test_channel_counts_of_huge_channels_are_exact():
    """Channels of 2**61 weights: the coder's arithmetic leaves int64 and stays exact."""
    m = 2**61
    table = [[1, 2**60, m - 1 - 2**60], [5, 7, m - 12], [m, 0, 0]]
    counts = [sum(col) for col in zip(*table, strict=True)]
    layer = LayerDistribution.from_counts("wide", counts, shape=[3, m], channel_counts=table)
    dist = Distribution([layer], granularity="channel")
    back = decode(encode_safetensors(dist))
    assert back == dist and back[0].channel_counts.tolist() == table


def test_a_channel_stream_codes_structured_counts_compactly():
    """Depthwise-like layers (9 weights a channel) and wide ones: well under the uniform code."""
    rng = np.random.default_rng(0)
    for shape in ((960, 1, 3, 3), (320, 960)):
        t = np.where(rng.random(shape) < 0.5, -1, 1).astype(np.int8)
        layer = LayerDistribution.from_signs("c", t, granularity="channel")
        m = math.prod(shape[1:])
        uniform = shape[0] * math.log2((m + 1) * (m + 2) / 2) / 8
        assert len(layer.channel_stream()) < 0.6 * uniform


def test_layer_objects_are_immutable_read_only_and_picklable():
    import pickle

    t = edge_signs((4, 6), "mixed", 0)
    for granularity in ("channel", "pattern", "scaled"):
        scales = np.ones(4, np.float32) if granularity == "scaled" else None
        dist = Distribution(
            [LayerDistribution.from_signs("a", t, granularity=granularity, scales=scales)],
            granularity=granularity,
            norms=norm_tensors(0, 1),
        )
        for d in (dist, decode(encode_safetensors(dist))):
            assert pickle.loads(pickle.dumps(d)) == d
            with pytest.raises(AttributeError):
                d[0].p0 = 0.5
            arrays = [d[0].channel_counts, d[0].scales, *d.norms.values()]
            assert all(not a.flags.writeable for a in arrays if a is not None)
            with pytest.raises(TypeError):
                d.norms["x.running_mean"] = np.zeros(1, np.float32)


@pytest.mark.parametrize(
    "norms, message",
    [
        ({"bn.running_mean": np.zeros(2, np.float32)}, "running_var"),
        ({"bn.scale": np.zeros(2, np.float32)}, "not a normalisation tensor"),
        (
            {"bn.running_mean": np.zeros(2, np.float32), "bn.running_var": np.ones(3, np.float32)},
            "one length",
        ),
        ({"bn.running_mean": np.zeros((2, 2)), "bn.running_var": np.ones(2)}, "1-D"),
        ({"bn.running_mean": np.array([np.nan]), "bn.running_var": np.ones(1)}, "NaN"),
        ({"bn.running_mean": np.array([1, 2]), "bn.running_var": np.ones(2)}, "float"),
    ],
)
def test_bad_normalisation_tensors_are_rejected(norms, message):
    with pytest.raises(FormatError, match=message):
        Distribution([LayerDistribution("a", 0.0, 0.5, 0.5)], norms=norms)


def test_scales_rules():
    t = edge_signs((3, 4), "mixed", 0)
    with pytest.raises(FormatError, match="exactly at granularity 'scaled'"):
        LayerDistribution.from_signs("a", t, granularity="scaled")
    for bad in ([1.0, 2.0], [1.0, np.inf, 2.0], [1.0, -0.0, 2.0], [1.0, -1.0, 2.0]):
        layer = LayerDistribution.from_signs("a", t, granularity="scaled", scales=bad)
        with pytest.raises(FormatError, match="'scales'"):
            Distribution([layer], granularity="scaled")
    pattern = LayerDistribution.from_signs("a", t, granularity="pattern")
    with pytest.raises(FormatError, match="'scales' is missing"):
        Distribution([pattern], granularity="scaled")
    with pytest.raises(FormatError, match="holds no scales"):
        pattern.scaled_weights()
    with pytest.raises(FormatError, match="holds no sign pattern"):
        LayerDistribution.from_signs("a", t, granularity="channel").signs()


def test_constriction_quantises_the_spec_models_to_their_integer_weights():
    """The spec's claim: Categorical(w - 1, perfect=False) gives symbol i exactly w_i of 2**24.
    Probed at every boundary: a decoder whose state's low 24 bits are q decodes the symbol i with
    W_i <= q < W_(i+1), W the cumulative weights."""
    from polarpack.format import coding

    rng = np.random.default_rng(0)
    models = [
        coding.model_weights([int(f) for f in rng.integers(0, 10**6, k)]) for k in (2, 3, 17, 65)
    ]
    models.append(coding.bitmap_weights(3, 256).tolist())
    for weights in models:
        assert sum(weights) == 2**24 and min(weights) >= 1
        cumulative = np.concatenate([[0], np.cumsum(weights)])
        model = coding.categorical(weights)
        for i in range(len(weights)):
            for q in (cumulative[i], cumulative[i + 1] - 1):
                coder = coding.AnsCoder(np.array([q, 1], dtype=np.uint32))
                assert coder.decode(model) == i


def test_bitmap_model_is_the_rule_applied_to_the_byte_frequencies():
    """The per-j shortcut gives the weights of the spec's rule over all 256 byte frequencies,
    ties and very skewed maps included."""
    from polarpack.format import coding

    ones_in_byte = [bin(b).count("1") for b in range(256)]
    for ones, bits in [(1, 2), (3, 256), (1, 10**7), (10**7 - 1, 10**7), (5, 9), (2, 8)]:
        frequencies = [ones**j * (bits - ones) ** (8 - j) for j in ones_in_byte]
        expected = coding.model_weights(frequencies)
        assert coding.bitmap_weights(ones, bits).tolist() == expected, (ones, bits)


def test_model_weights_rule():
    from polarpack.format import coding

    assert coding.model_weights([0, 3, 1, 0]) == [1, 12582910, 4194304, 1]
    assert coding.model_weights([1, 1]) == [2**23, 2**23]
    assert coding.model_weights([5, 5, 5]) == [5592406, 5592405, 5592405]  # remainder to the first


def test_spec_test_vectors_are_what_the_code_writes():
    text = SPEC.read_text("utf-8")
    start = text.index("### Test vectors")
    blocks = re.compile(r"```text\n(.*?)\n```", re.S).findall(text, start)[:3]
    i = np.arange(256)
    signs = np.where(np.isin(i, (5, 77, 200)), 0, np.where(i % 2 == 0, -1, 1)).astype(np.int8)
    signs = signs.reshape(4, 64)
    pattern = LayerDistribution.from_signs("example", signs)
    channel = LayerDistribution.from_signs("example", signs, granularity="channel")
    assert pattern.counts == (3, 127, 126)
    assert [blocks[0], blocks[2]] == [pattern.pattern.hex(), bytes(channel.channel_stream()).hex()]
    ans_coded = bytes.fromhex(blocks[1])
    assert ans_coded[0] == 1
    assert np.array_equal(coding.decode_pattern(ans_coded, 256, (3, 127, 126), "v"), signs.ravel())
    assert channel.channel_counts.tolist() == [[1, 32, 31], [1, 32, 31], [0, 32, 32], [1, 31, 32]]


# -- version 1 files still read ---------------------------------------------------------------

# The version-1 example of the previous spec, byte for byte: its header, then counts, proportions.
V1_EXAMPLE_HEADER = (
    '{"__metadata__":{"polar":"{\\"extraction\\":{\\"expand_groups\\"'
    ':true,\\"groups\\":{\\"features.3\\":2},\\"include_linear\\":true,'
    '\\"layers\\":[\\"*\\"],\\"layout\\":\\"OIHW\\",\\"zero_tol\\":0.0},\\"f'
    'ormat_version\\":1,\\"layers\\":[{\\"kind\\":\\"conv\\",\\"name\\":\\"'
    'conv1\\",\\"shape\\":[16,3,3,3]},{\\"kind\\":\\"conv\\",\\"name\\":\\"'
    'features.3\\",\\"shape\\":[32,16,3,3]},{\\"kind\\":\\"linear\\",\\"n'
    'ame\\":\\"fc\\",\\"shape\\":[10,512]}],\\"metadata\\":{\\"note\\":\\"e'
    'xample from spec/polar-format.md\\"},\\"producer\\":{\\"name\\":\\'
    '"polarpack\\",\\"version\\":\\"0.1.0\\"},\\"source\\":{\\"file\\":\\"c'
    'heckpoints/tiny-cnn.pt\\",\\"sha256\\":\\"9f86d081884c7d659a2fea'
    'a0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\\",\\"type\\":\\"file'
    '\\"}}"},"counts":{"dtype":"I64","shape":[3,3],"data_offsets":'
    '[0,72]},"proportions":{"dtype":"F64","shape":[3,3],"data_off'
    'sets":[72,144]}}    '
)


def spec_example() -> Distribution:
    return decode(_spec_block("json", "## Example").encode("utf-8"))


def test_the_version_1_spec_example_still_reads():
    dist = spec_example()
    header = V1_EXAMPLE_HEADER.encode()
    counts = np.array([layer.counts for layer in dist.layers], "<i8").tobytes()
    props = np.array([layer.proportions for layer in dist.layers], "<f8").tobytes()
    data = struct.pack("<Q", len(header)) + header + counts + props
    assert len(data) == 952  # as the version-1 spec said
    old = decode(data)
    assert old == dist and old.format_version == 1 and dist.format_version == 3
    text = encode_json(dist).replace(b'"format_version": 3', b'"format_version": 1')
    assert decode(text) == dist and decode(text).format_version == 1


def v1_safetensors(dist: Distribution) -> bytes:
    """A version-1 file as version-1 writers made it: per-layer tensors, bitmap patterns."""
    from safetensors.numpy import save as np_save

    meta = {
        "format_version": 1,
        **({"granularity": dist.granularity} if dist.granularity != "layer" else {}),
        "layers": [
            {"name": layer.name, "kind": layer.kind, "shape": list(layer.shape or []) or None}
            for layer in dist.layers
        ],
        **{k: dict(getattr(dist, k)) for k in fmt.OBJECT_KEYS},
    }
    tensors = {
        "counts": np.array([layer.counts or (-1, -1, -1) for layer in dist.layers], "<i8"),
        "proportions": np.array([layer.proportions for layer in dist.layers], "<f8"),
    }
    for i, layer in enumerate(dist.layers):
        if dist.granularity == "channel":
            tensors[f"channel_counts.{i}"] = np.array(layer.channel_counts, "<i8")
        if dist.granularity == "pattern":
            tensors[f"pattern.{i}"] = np.frombuffer(pack_signs(layer.signs().numpy()), np.uint8)
    return np_save(tensors, metadata={"polar": json.dumps(meta, sort_keys=True)})


@SETTINGS
@given(st.lists(edge_tensors, min_size=1, max_size=3), st.sampled_from(["channel", "pattern"]))
def test_version_1_safetensors_read_and_convert(tensors, granularity):
    layers = [
        LayerDistribution.from_signs(f"l{i}", t, granularity=granularity)
        for i, t in enumerate(tensors)
    ]
    dist = Distribution(layers, granularity=granularity)
    old = decode(v1_safetensors(dist))
    assert old == dist and old.format_version == 1
    assert encode_safetensors(old) == encode_safetensors(dist)  # rewritten in version 2
    if granularity == "pattern":
        for layer, t in zip(old.layers, tensors, strict=True):
            assert np.array_equal(layer.signs().numpy(), t)


def test_version_1_pattern_bitmaps_are_checked_without_unpacking(tmp_path):
    t = edge_signs((8, 16), "mixed", 3)
    dist = Distribution([LayerDistribution.from_signs("a", t)], granularity="pattern")
    data = bytearray(v1_safetensors(dist))
    data[-1] ^= 0x01  # the last padding-free bit of the sign map
    expect_error(tmp_path, "v1.polar.safetensors", bytes(data), "layer 'a'", "do not match")


# -- corrupt version-2 streams ----------------------------------------------------------------


def retensor(data: bytes, **changes) -> bytes:
    """The file with some tensors replaced (or removed with None), metadata kept."""
    from safetensors.numpy import load as np_load
    from safetensors.numpy import save as np_save

    (n,) = struct.unpack("<Q", data[:8])
    meta = json.loads(data[8 : 8 + n])["__metadata__"]
    tensors = {**np_load(data), **changes}
    return np_save({k: v for k, v in tensors.items() if v is not None}, metadata=meta)


def coded_example() -> Distribution:
    """Two pattern layers, both with both maps ANS-coded (p0 = 0.4, p- = 0.2), and a channel-free
    raw one."""
    rng = np.random.default_rng(5)
    layers = []
    for i in range(2):
        u = rng.random((16, 200))
        t = np.where(u < 0.4, 0, np.where(u < 0.6, -1, 1)).astype(np.int8)
        layers.append(LayerDistribution.from_signs(f"c{i}", t))
    layers.append(LayerDistribution.from_signs("raw", edge_signs((4, 32), "nonzero", 1)))
    dist = Distribution(layers, granularity="pattern")
    assert [layer.pattern[0] for layer in dist.layers] == [3, 3, 0]
    return dist


def gap_example() -> Distribution:
    """Layers whose maps are gap-coded: both (rare zeros, rare negatives), the sign map only, and
    the zero map of a mostly-zero layer (decoded by placing the non-zero signs)."""
    rng = np.random.default_rng(5)
    layers = []
    for i, (p0, cut) in enumerate([(0.1, 0.3), (0.6, 0.7), (0.9, 0.95)]):
        u = rng.random((16, 200))
        t = np.where(u < p0, 0, np.where(u < cut, -1, 1)).astype(np.int8)
        layers.append(LayerDistribution.from_signs(f"g{i}", t))
    dist = Distribution(layers, granularity="pattern")
    assert [layer.pattern[0] for layer in dist.layers] == [4 | 8, 1 | 8, 4]
    return dist


def payload_of(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    from safetensors.numpy import load as np_load

    tensors = np_load(data)
    return tensors["offsets"], tensors["payload"]


def test_corrupt_offsets_and_truncated_streams_are_one_line_errors(tmp_path):
    data = encode_safetensors(coded_example())
    offsets, payload = payload_of(data)
    bad = {
        "cut-payload": dict(payload=payload[:-4]),
        "offsets-past-end": dict(offsets=offsets + np.array([0, 0, 0, 4])),
        "offsets-backwards": dict(offsets=offsets[[0, 2, 1, 3]]),
        "offsets-not-at-zero": dict(offsets=offsets + 1),
        "offsets-shape": dict(offsets=offsets[:-1]),
        "no-offsets": dict(offsets=None),
    }
    for name, change in bad.items():
        message = expect_error(tmp_path, f"{name}.polar.safetensors", retensor(data, **change))
        assert "\n" not in message and ("offsets" in message or "tensors" in message), message
    # a layer's stream cut short (the offsets agree): its coded part ends inside a word
    cut = offsets.copy()
    cut[1:] -= 1
    shortened = np.delete(payload, offsets[1] - 1)
    expect_error(
        tmp_path,
        "short.polar.safetensors",
        retensor(data, offsets=cut, payload=shortened),
        "layer 'c0'",
        "32-bit words",
    )
    # a whole word gone: the structure holds, decoding finds the damage
    cut[1:] -= 3
    shortened = np.delete(payload, np.arange(offsets[1] - 4, offsets[1]))
    dist = decode(retensor(data, offsets=cut, payload=shortened), where="short")
    with pytest.raises(FormatError, match=r"^short: layer 'c0': .*corrupt") as info:
        dist.verify()
    assert "\n" not in str(info.value)
    with pytest.raises(FormatError, match="layer 'c0'"):
        dist[0].signs()
    assert np.array_equal(dist[2].signs().numpy(), coded_example()[2].signs().numpy())


def test_counts_that_disagree_with_the_decoded_symbols_are_refused(tmp_path):
    data = encode_safetensors(coded_example())
    from safetensors.numpy import load as np_load

    counts = np_load(data)["counts"].copy()
    counts[1] += [1, -1, 0]  # still summing to the shape, proportions derived from them
    dist = decode(retensor(data, counts=counts), where="recount")
    with pytest.raises(FormatError, match="recount: layer 'c1': the zero map bits do not match"):
        dist[1].signs()
    with pytest.raises(FormatError, match="layer 'c1'"):
        dist.verify()
    counts[1] -= [1, -1, 0]
    counts[2] += [0, 1, -1]  # the raw layer: checked on reading, without decoding
    expect_error(
        tmp_path,
        "raw.polar.safetensors",
        retensor(data, counts=counts),
        "layer 'raw'",
        "sign map bits do not match",
    )


@SETTINGS
@given(
    st.lists(st.booleans(), min_size=1, max_size=300),
    st.integers(0, 5),
    st.one_of(st.none(), st.integers(1, 300)),
)
def test_gap_streams_round_trip_for_any_map_and_any_golomb_parameter(bits, rare_runs, m):
    """Any map with both bit values (including a single rare bit, and runs past a byte), under
    the writer's M or any other that fits the map."""
    bits = bits + [True] * rare_runs * 9
    ones, n = sum(bits), len(bits)
    if not 0 < ones < n:
        bits, ones, n = bits + [not bits[0]], ones + (not bits[0]), n + 1
    m = None if m is None else min(m, n)
    bitmap = np.packbits(np.array(bits, bool))
    stream = coding.encode_gaps(bitmap, n, ones, m)
    assert np.array_equal(coding.decode_gaps(stream, n, ones, "g"), bitmap)
    with pytest.raises(FormatError, match="^g: gap-coded map"):
        coding.decode_gaps(stream + b"\0", n, ones, "g")


def test_gap_streams_whose_unary_part_spans_many_windows():
    """Runs longer than a decoding window (windows with no one bit), and windows full of runs."""
    rng = np.random.default_rng(3)
    few = np.zeros(600_000, bool)
    few[[7, 300_001, 599_999]] = True
    many = rng.random(300_000) < 0.3
    for bits, m in ((few, 1), (few, None), (many, 1), (many, None)):
        bitmap, ones = np.packbits(bits), int(bits.sum())
        stream = coding.encode_gaps(bitmap, len(bits), ones, m)
        assert np.array_equal(coding.decode_gaps(stream, len(bits), ones, "g"), bitmap)
    # a run far past the map's end (a quotient of 2.4 million times M = 2**20) is damage
    damaged = coding._varint(2**20) + coding._varint(0) + bytes(300_000) + b"\x01"
    with pytest.raises(FormatError, match="^g: gap-coded map does not decode"):
        coding.decode_gaps(damaged, 2**20, 1, "g")


def reference_gaps(bitmap: np.ndarray, bits: int, ones: int, m: int | None) -> bytes:
    """The gap stream as spec/polar-format.md ("Gap-coded maps") words it, one run at a time."""

    def leb128(value: int) -> list[int]:
        out = [value & 0x7F | 0x80]
        while value >> 7:
            value >>= 7
            out.append(value & 0x7F | 0x80)
        out[-1] &= 0x7F
        return out

    def packed(bit_list: list[int]) -> bytes:
        return np.packbits(np.array(bit_list, np.uint8)).tobytes()

    rare = 1 if 2 * ones <= bits else 0
    positions = np.flatnonzero(np.unpackbits(bitmap, count=bits) == rare).tolist()
    runs = [x - previous - 1 for previous, x in zip([-1, *positions], positions, strict=False)]

    def stream(m: int) -> bytes:
        b = (m - 1).bit_length()
        cut, w = 2**b - m, max(b - 1, 0)
        heads, extra, unary = [], [], []
        for g in runs:
            q, r = divmod(g, m)
            head = r if r < cut else (r + cut) >> 1
            if b and r >= cut:
                extra.append((r + cut) & 1)
            heads += [head >> (w - 1 - i) & 1 for i in range(w)]
            unary += [0] * q + [1]
        return bytes(leb128(m) + leb128(len(extra))) + b"".join(map(packed, (heads, extra, unary)))

    if m is None:
        s = 1 - len(positions) / bits
        optimum = math.ceil(math.log(1 + s) / -math.log(s))
        m = min(range(max(1, optimum - 1), optimum + 2), key=lambda c: (len(stream(c)), c))
    return stream(m)


@SETTINGS
@given(
    st.integers(2, 700),
    st.floats(0, 1),
    st.integers(0, 2**32 - 1),
    st.one_of(st.none(), st.integers(1, 700)),
    st.sampled_from([8, 64, coding.GAP_BLOCK]),
)
def test_gap_streams_match_the_spec_in_blocks_of_any_size(n, density, seed, m, block):
    """The block-wise writer gives the bytes of the spec's run-by-run rule for any map, density
    and M, whatever blocks (of 8 bits up) the map's length crosses; padding bits are ignored."""
    rng = np.random.default_rng(seed)
    bits = rng.random(n) < density
    bits[rng.choice(n, 2, replace=False)] = True, False  # both bit values present
    ones = int(bits.sum())
    bitmap = np.packbits(bits)
    bitmap[-1] |= rng.integers(256) & ((1 << (-n % 8)) - 1)  # padding is not the map's
    m = None if m is None else min(m, n)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(coding, "GAP_BLOCK", block)
        assert coding.encode_gaps(bitmap, n, ones, m) == reference_gaps(bitmap, n, ones, m)


def test_gap_coding_a_map_holds_a_block_not_the_whole_map():
    """Gap-coding a 2**22-bit map with 30% rare bits took 78 MiB when it built int64 arrays over
    every rare bit (20 bytes a bit); a block at a time it takes about 5 MiB, output included
    (numpy's arrays are traced)."""
    import tracemalloc

    n = 1 << 22
    bits = np.random.default_rng(0).random(n) < 0.3
    bitmap, ones = np.packbits(bits), int(bits.sum())
    del bits
    tracemalloc.start()
    try:
        stream = coding.encode_gaps(bitmap, n, ones)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert np.array_equal(coding.decode_gaps(stream, n, ones, "g"), bitmap)
    assert peak < 16 * 2**20, peak


def test_gap_coded_maps_decode_exactly_and_refuse_damage(tmp_path):
    dist = gap_example()
    rng = np.random.default_rng(5)
    for layer, (p0, cut) in zip(dist.layers, [(0.1, 0.3), (0.6, 0.7), (0.9, 0.95)], strict=True):
        u = rng.random((16, 200))
        expected = np.where(u < p0, 0, np.where(u < cut, -1, 1))
        assert np.array_equal(decode(encode_safetensors(dist))[layer.name].signs(), expected)
    data = encode_safetensors(dist)
    offsets, payload = payload_of(data)
    # the first layer one byte short: its lengths no longer add up, which reading sees
    cut = offsets.copy()
    cut[1:] -= 1
    shortened = np.delete(payload, offsets[1] - 1)
    expect_error(
        tmp_path, "cut.polar.safetensors", retensor(data, offsets=cut, payload=shortened), "need"
    )
    # a bit flipped at the end of its sign map's unary part: decoding sees it
    flipped = payload.copy()
    flipped[offsets[1] - 1] ^= 0x01
    flipped_dist = decode(retensor(data, payload=flipped), where="flip")
    with pytest.raises(FormatError, match=r"^flip: layer 'g0' \(sign map\): gap-coded map"):
        flipped_dist[0].signs()
    # counts that disagree with the runs the stream holds
    from safetensors.numpy import load as np_load

    counts = np_load(data)["counts"].copy()
    counts[0] += [1, -1, 0]
    with pytest.raises(FormatError, match=r"recount: layer 'g0' \(zero map\).*does not decode to"):
        decode(retensor(data, counts=counts), where="recount")[0].signs()


def as_version_2(data: bytes, streams: list[bytes] | None = None) -> bytes:
    """A file as version 2 wrote it: the version number, and optionally other layer streams."""
    data = data.replace(b'\\"format_version\\":3', b'\\"format_version\\":2', 1)
    if streams is None:
        return data
    offsets = np.cumsum([0] + [len(x) for x in streams]).astype("<i8")
    return retensor(data, offsets=offsets, payload=np.frombuffer(b"".join(streams), np.uint8))


def v2_pattern(layer: LayerDistribution) -> bytes:
    """The pattern stream version 2's writer made: each map ANS-coded (one stream, the zero
    map's bytes first) when that saves more than 1/256, else raw."""
    maps = coding.decode_bitmaps(layer.pattern, layer.numel, layer.counts, "v2")
    specs = coding.present_bitmaps(layer.numel, layer.counts)
    coded = []
    for bitmap, spec in zip(maps, specs, strict=True):
        if spec is not None:
            ans = coding.AnsCoder()
            ans.encode_reverse(bitmap.astype(np.int32), coding.bitmap_model(spec[1], spec[0]))
            size = 4 * ans.num_words()
            coded.append(size + size // 256 < len(bitmap))
        else:
            coded.append(False)
    ans = coding.AnsCoder()
    for i in (1, 0):
        if coded[i]:
            ans.encode_reverse(
                maps[i].astype(np.int32), coding.bitmap_model(specs[i][1], specs[i][0])
            )
    raw = [maps[i].tobytes() if specs[i] and not coded[i] else b"" for i in (0, 1)]
    flags = bytes([coded[0] | coded[1] << 1])
    return flags + raw[0] + ans.get_compressed().astype("<u4").tobytes() + raw[1]


def test_version_2_patterns_read_in_todays_byte_form_and_gap_flags_are_refused():
    dist = gap_example()  # every map gap-coded today was ANS-coded or raw in version 2
    data = encode_safetensors(dist)
    old = decode(as_version_2(data, [v2_pattern(layer) for layer in dist.layers]), where="v2")
    assert old.format_version == 2 and old == dist and encode_safetensors(old) == data
    with pytest.raises(FormatError, match=r"^v2: layers\[0\] 'g0': .*format_version 2 does not"):
        decode(as_version_2(data), where="v2")


def test_corrupt_channel_streams_are_refused(tmp_path):
    t = edge_signs((30, 20), "dense", 2)
    dist = Distribution(
        [LayerDistribution.from_signs("c", t, granularity="channel")], granularity="channel"
    )
    data = encode_safetensors(dist)
    offsets, payload = payload_of(data)
    wrong = payload.copy()
    wrong[1] += 1  # the first bucket count: the histogram no longer counts 30 channels
    expect_error(
        tmp_path, "hist.polar.safetensors", retensor(data, payload=wrong), "layer 'c'", "histogram"
    )
    flipped = payload.copy()
    flipped[-3] ^= 0x40  # inside the coded part
    dist = decode(retensor(data, payload=flipped), where="flip")
    with pytest.raises(FormatError, match="^flip: layer 'c': .*corrupt"):
        dist.verify()


@settings(max_examples=120, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 255), st.sampled_from([coded_example, gap_example]))
def test_damaged_payloads_give_a_distribution_or_a_format_error(position, mask, example):
    data = encode_safetensors(example())
    offsets, payload = payload_of(data)
    damaged = payload.copy()
    damaged[position % len(payload)] ^= mask
    try:
        dist = decode(retensor(data, payload=damaged), where="fuzz").verify()
    except FormatError as exc:
        assert str(exc).startswith("fuzz") and "\n" not in str(exc)
    else:
        for layer in dist.layers:  # damage that decodes still obeys the counts
            signs = layer.signs().numpy()
            assert [int((signs == v).sum()) for v in (0, -1, 1)] == list(layer.counts)


# -- hostile input ----------------------------------------------------------------------------


@pytest.fixture()
def hang_guard():
    """Fails a test that runs past a minute instead of hanging the suite (quadratic code would
    take hours here); not a speed measurement."""
    import signal

    def fail(signum, frame):
        raise TimeoutError("still running after 60 s: not linear in the file size")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def many_layers_json(n: int) -> bytes:
    row = (
        '    {{"name": "l{}", "kind": "conv", "shape": [1, 1, 1, 1], "p0": 0.0, "p_neg": 1.0, '
        '"p_pos": 0.0, "counts": [0, 1, 0]}}'
    )
    layers = ",\n".join(row.format(i) for i in range(n))
    return ('{\n  "format_version": 2,\n  "layers": [\n' + layers + "\n  ]\n}\n").encode()


def test_a_hundred_thousand_layers_read_in_linear_time(hang_guard):
    dist = decode(many_layers_json(100_000))
    assert len(dist) == 100_000 and dist[99_999].name == "l99999"
    assert fmt.size_report(dist, polar_bytes=1)["weights"] == 100_000
    dupe = many_layers_json(100_000).replace(b'"l99999"', b'"l3"')
    with pytest.raises(FormatError, match="'l3': the name appears twice"):
        decode(dupe)


@pytest.mark.parametrize("p0", [0.2, 0.45, 0.9])  # zero map gap-coded, ANS-coded, gap-coded
def test_decoding_stays_within_twice_the_signs_it_yields(tmp_path, p0):
    """A 4-million-weight layer with zeros (both maps present): peak traced memory while loading
    and decoding stays within twice the int8 signs, not counting the file's bytes."""
    import tracemalloc

    rng = np.random.default_rng(0)
    u = rng.random((64, 65_536))
    t = np.where(u < p0, 0, np.where(u < (1 + p0) / 2, -1, 1)).astype(np.int8)
    path = save(
        Distribution([LayerDistribution.from_signs("big", t)], granularity="pattern"),
        tmp_path / "big.polar.safetensors",
    )
    expected = t.copy()
    del t, u
    tracemalloc.start()
    try:
        signs = load(path)[0].signs()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    file_bytes = path.stat().st_size
    assert np.array_equal(signs.numpy(), expected)
    assert peak - 2 * file_bytes <= 2 * expected.size, (peak, file_bytes, expected.size)


def test_channel_counts_stay_numpy_arrays_of_bounded_size(tmp_path):
    """200,000 channels: int64 arrays (24 bytes a channel), never tuples of Python ints."""
    import tracemalloc

    c = 200_000
    t = edge_signs((c, 9), "mixed", 0)
    dist = Distribution(
        [LayerDistribution.from_signs("dw", t, granularity="channel")], granularity="channel"
    )
    path = save(dist, tmp_path / "wide.polar.safetensors")
    del dist
    tracemalloc.start()
    try:
        table = load(path)[0].channel_counts
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(table, np.ndarray) and table.dtype == np.int64 and table.shape == (c, 3)
    assert table.tolist() == channel_reference(t)
    assert peak < 12 * table.nbytes, (peak, table.nbytes)


@pytest.mark.parametrize("suffix", ["polar", "polar.safetensors"])
def test_shapes_beyond_int64_are_a_format_error(tmp_path, suffix):
    obj = doc(shape=[2**62] * 17, counts=...)
    if suffix == "polar":
        expect_error(tmp_path, "huge.polar", json.dumps(obj), "'conv1'", "2**63 - 1")
        return
    from safetensors.numpy import save as np_save

    meta = {
        "format_version": 2,
        "granularity": "layer",
        "layers": ["0:conv1"],
        "shapes": [[2**62] * 17],
        "linear": [],
        "source": {},
        "extraction": {},
        "producer": {},
        "metadata": {},
    }
    data = np_save(
        {"counts": -np.ones((1, 3), np.int64), "proportions": np.array([[0.25, 0.25, 0.5]])},
        metadata={"polar": json.dumps(meta)},
    )
    expect_error(tmp_path, "huge.polar.safetensors", data, "layers[0]", "2**63 - 1")


def test_fifos_and_devices_are_refused_at_once(tmp_path):
    fifo = tmp_path / "x.polar"
    os.mkfifo(fifo)
    with pytest.raises(FormatError, match="x.polar: is a FIFO"):
        load(fifo)
    device = tmp_path / "zero.polar"
    device.symlink_to("/dev/zero")
    with pytest.raises(FormatError, match="zero.polar: is a character device"):
        load(device)


def test_header_names_are_front_coded_and_checked(tmp_path):
    names = ["features.0.0", "features.1.conv.0.0", "features.1.conv.1", "x", "x:y", "x:y:z"]
    layers = [LayerDistribution.from_counts(n, [0, 1, 1], shape=[2]) for n in names]
    data = encode_safetensors(Distribution(layers))
    (n,) = struct.unpack("<Q", data[:8])
    meta = json.loads(json.loads(data[8 : 8 + n])["__metadata__"]["polar"])
    assert meta["layers"] == ["0:features.0.0", "9:1.conv.0.0", "16:1", "0:x", "1::y", "3::z"]
    assert decode(data).names == names
    for entry in ("99:a", "x", "01:a", "-1:a", "1e1:a", 5):
        meta["layers"][1] = entry
        text = json.dumps(json.dumps(meta, sort_keys=True, separators=(",", ":")))
        forged = (
            data[8 : 8 + n]
            .decode()
            .replace(json.dumps(json.loads(data[8 : 8 + n])["__metadata__"]["polar"]), text)
        )
        body = forged.encode() + b" " * (-len(forged) % 8)
        bad = struct.pack("<Q", len(body)) + body + data[8 + n :]
        expect_error(tmp_path, "names.polar.safetensors", bad, "'layers'[1]")
