"""The paper's Table 1 presets: valid, faithful to the paper, with provenance."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import jsonschema
import pytest

from polarpack.errors import FormatError
from polarpack.format import (
    decode,
    encode_json,
    encode_safetensors,
    json_schema,
    size_report,
    validate,
)
from polarpack.sources.presets import ALEXNET_CONV_SHAPES, PRESETS, get_preset, list_presets
from polarpack.sources.references import is_preset

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = jsonschema.Draft202012Validator(json_schema())
NAMES = ["paper:alexnet"] + [f"paper:table1-exp{i}" for i in range(1, 8)]

# Table 1 of the paper (ZFNet, CIFAR-10, Freeze SPIN-Polarity, 20 epochs), as printed.
ALEXNET = {
    "conv1": (0, 0.5, 0.5),
    "conv2": (0.5, 0.27, 0.23),
    "conv3": (0, 0.54, 0.46),
    "conv4": (0.5, 0.28, 0.22),
    "conv5": (0.5, 0.30, 0.20),
}
TABLE1 = {  # name: (layers set -> values, converged, accuracy %)
    "paper:alexnet": (ALEXNET, True, 57),
    "paper:table1-exp1": ({k: (0, 0, 1) for k in ALEXNET}, False, 10),
    "paper:table1-exp2": ({k: (0, 1, 0) for k in ALEXNET}, False, 10),
    "paper:table1-exp3": ({k: (0.1, 0.45, 0.45) for k in ("conv2", "conv4", "conv5")}, True, 55),
    "paper:table1-exp4": ({k: (0.01, 0.45, 0.45) for k in ("conv2", "conv4", "conv5")}, False, 10),
    "paper:table1-exp5": (
        {"conv2": (0.6, 0.22, 0.18), "conv4": (0.6, 0.23, 0.17), "conv5": (0.6, 0.24, 0.16)},
        True,
        49,
    ),
    "paper:table1-exp6": (
        {"conv2": (0.7, 0.16, 0.14), "conv4": (0.7, 0.17, 0.13), "conv5": (0.7, 0.18, 0.12)},
        True,
        50,
    ),
    "paper:table1-exp7": (
        {"conv2": (0.8, 0.11, 0.09), "conv4": (0.8, 0.11, 0.09), "conv5": (0.8, 0.12, 0.08)},
        False,
        10,
    ),
}
# The BVLC/Caffe ImageNet AlexNet conv kernels [out, in/groups, kh, kw] and their groups.
CAFFE_ALEXNET = {
    "conv1": ((96, 3, 11, 11), 1),
    "conv2": ((256, 48, 5, 5), 2),
    "conv3": ((384, 256, 3, 3), 1),
    "conv4": ((384, 192, 3, 3), 2),
    "conv5": ((256, 192, 3, 3), 2),
}


def test_preset_names():
    assert list_presets() == [*NAMES, "paper:rand"] == list(PRESETS)
    assert all(is_preset(n) for n in NAMES) and not is_preset("alexnet.polar")


@pytest.mark.parametrize("name", NAMES)
def test_every_preset_is_valid_and_round_trips(name):
    dist = get_preset(name).distribution
    validate(dist)
    data = encode_json(dist)
    SCHEMA.validate(json.loads(data))
    assert decode(data) == dist == decode(encode_safetensors(dist))
    assert dist.names == list(ALEXNET) and all(
        layer.kind == "conv" and layer.counts is None for layer in dist
    )
    for layer in dist:
        assert abs(math.fsum(layer.proportions) - 1.0) <= 1e-9


@pytest.mark.parametrize("name", NAMES)
def test_presets_have_the_papers_numbers(name):
    values, converged, accuracy = TABLE1[name]
    dist = get_preset(name).distribution
    for layer in dist:
        expected = values.get(layer.name, ALEXNET[layer.name])  # unset layers keep paper:alexnet's
        if name == "paper:table1-exp4" and layer.name in values:
            # printed [0.01, 0.45, 0.45] sums to 0.91: p0 kept, the remaining 0.99 split equally
            assert layer.proportions == (0.01, 0.495, 0.495)
            assert dist.metadata["paper_printed"][layer.name] == list(expected)
        else:
            assert layer.proportions == pytest.approx(expected, abs=1e-12), layer.name
    result = dist.metadata["paper_result"]
    assert (result["converged"], result["val_accuracy"]) == (converged, accuracy)
    assert (result["model"], result["dataset"], result["epochs"], result["method"]) == (
        "zfnet",
        "cifar10",
        20,
        "freeze-spin",
    )
    assert dist.metadata["layers_set"] == sorted(values)


def test_a_few_numbers_straight_from_the_papers_table(shared_data_dir):
    """The paper's text sits beside the shared data folder ($POLARPACK_SHARED_DATA/../paper)."""
    texts = sorted((shared_data_dir.parent / "paper").glob("*.txt"))
    if not texts:
        pytest.skip(f"the paper's text is not in {shared_data_dir.parent / 'paper'}")
    text = texts[0].read_text("utf-8")
    table = text[text.index("Freeze\tconv2") - 200 : text.index("Table 1:")]
    printed = {
        tuple(float(x) for x in m.groups())
        for m in re.finditer(r"\[([\d.]+), ([\d.]+), ([\d.]+)\]", table)
    }
    assert (
        (0.5, 0.27, 0.23) in printed
        and (0.01, 0.45, 0.45) in printed
        and (0.8, 0.12, 0.08) in printed
    )
    for name, preset in PRESETS.items():
        for layer in preset.distribution:
            row = layer.proportions
            if name == "paper:table1-exp4" and layer.name != "conv1" and layer.name != "conv3":
                row = tuple(preset.paper_printed[layer.name])
            assert row in printed, (name, layer.name, row)
    assert "Yes\t57" in table and "Yes\t55" in table and "Yes\t49" in table and "Yes\t50" in table


def test_shapes_are_the_caffe_alexnet_conv_shapes_with_groups_expanded():
    for name, ((out, in_per_group, kh, kw), groups) in CAFFE_ALEXNET.items():
        assert ALEXNET_CONV_SHAPES[name] == (out, in_per_group * groups, kh, kw)
    alexnet = get_preset("paper:alexnet").distribution
    for layer in alexnet:
        groups = CAFFE_ALEXNET[layer.name][1]
        # expanded grouped kernels are zero off their diagonal blocks: p0 = 1 - 1/groups exactly
        assert layer.p0 == 1 - 1 / groups
    for name in NAMES:
        assert {layer.name: layer.shape for layer in get_preset(name).distribution} == dict(
            ALEXNET_CONV_SHAPES
        )


@pytest.mark.parametrize("name", NAMES)
def test_provenance_names_the_paper(name):
    source = get_preset(name).distribution.source
    assert source["type"] == "paper" and source["id"] == name
    for fragment in (
        "Igoe",
        "Biswas",
        "Basu",
        "A Study on Polarity Distributions for Network Learning",
        "ICLR 2024",
        "Table 1",
    ):
        assert fragment in source["citation"]
    assert source["description"].startswith("Table 1") or name == "paper:alexnet"


def test_unknown_preset_lists_the_presets():
    with pytest.raises(FormatError) as info:
        get_preset("paper:table1-exp9")
    message = str(info.value)
    assert "paper:table1-exp9" in message
    for name in NAMES:
        assert name in message


def test_rand_control_is_fifty_fifty_everywhere_and_cites_the_prior_work():
    dist = get_preset("paper:rand").distribution
    assert [layer.proportions for layer in dist] == [(0.0, 0.5, 0.5)] * 5 and dist.names == list(
        ALEXNET
    )
    assert "Wang" in dist.source["citation"] and "paper_result" not in dist.metadata


def test_alexnet_size_figures_match_the_spec():
    dist = get_preset("paper:alexnet").distribution
    report = size_report(dist)
    assert report["layers"] == 5 and report["numbers"] == 10  # the paper's "10 numbers (2n)"
    assert report["weights"] == 3_745_824
    assert sum(math.prod(s) for s, _ in CAFFE_ALEXNET.values()) == 2_332_704
    assert report["sign_pattern_bytes"] == 936_456 and report["float32_bytes"] == 14_983_296
    assert report["polar_bytes"] == len(encode_json(dist))
    spec = (ROOT / "spec" / "polar-format.md").read_text("utf-8")
    for figure in ("3,745,824", "2,332,704", "936,456", "14,983,296"):
        assert figure in spec
    # the byte sizes quoted in the spec hold for producer version strings of 5 characters
    if len(dist.producer["version"]) == 5:
        assert f"{len(encode_json(dist)):,} bytes of JSON" in spec
        assert f"({len(encode_safetensors(dist)):,} as safetensors)" in spec
