"""`polarpack materialize` through the CLI: the file it writes, determinism and bad input."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from polarpack_cli.main import cli
from safetensors.torch import load_file

from polarpack.sources.presets import get_preset
from polarpack.training.materialization import materialize


def _invoke(*args):
    return CliRunner().invoke(cli, ["materialize", *args])


def test_writes_weights_and_targets_equal_to_the_python_api(tmp_path):
    out = tmp_path / "init.safetensors"
    result = _invoke(
        "paper:alexnet", "--model", "zfnet", "--seed", "7", "--out", str(out), "--json"
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [r["layer"] for r in report["layers"]] == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    assert report["layers"][1]["p0"] == 0.5
    saved = load_file(str(out))
    api = materialize(get_preset("paper:alexnet").distribution, "zfnet", seed=7)
    for name in api.targets:
        assert torch.equal(saved[f"{name}.weight"], api.weights[name])
        assert torch.equal(saved[f"{name}.polarity"], api.targets[name])
        assert saved[f"{name}.polarity"].dtype == torch.int8


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        assert (
            _invoke(
                "paper:table1-exp3",
                "--model",
                "alexnet",
                "--seed",
                seed,
                "--out",
                str(tmp_path / f"{name}.safetensors"),
            ).exit_code
            == 0
        )
    a, b, c = ((tmp_path / f"{n}.safetensors").read_bytes() for n in "abc")
    assert a == b and a != c


def test_a_polar_file_and_iid_sampling_and_explicit_map(tmp_path):
    from polarpack.format import save

    dist_path = tmp_path / "d.polar.safetensors"
    save(get_preset("paper:alexnet").distribution, dist_path)
    out = tmp_path / "m.safetensors"
    result = _invoke(
        str(dist_path),
        "--model",
        "mobilenet_v2",
        "--seed",
        "0",
        "--out",
        str(out),
        "--sampling",
        "iid",
        "--map",
        "features.0.0=conv1,features.18.0=conv5",
    )
    assert result.exit_code == 0, result.output
    assert sorted(k for k in load_file(str(out)) if k.endswith(".polarity")) == [
        "features.0.0.polarity",
        "features.18.0.polarity",
    ]


@pytest.mark.parametrize(
    "args, message, code",
    [
        (["paper:alexnet", "--model", "not_a_net"], "unknown model", 1),
        (["paper:alexnet", "--model", "mobilenet_v2"], "--map", 1),
        (["nowhere.polar", "--model", "alexnet"], "nowhere.polar", 1),
        (
            ["paper:alexnet", "--model", "alexnet", "--map", "conv1"],
            "TARGET=LAYER",
            2,
        ),  # click's usage error
    ],
)
def test_bad_input_is_one_line_and_leaves_no_file(tmp_path, cli_error, args, message, code):
    cli_error(
        ["materialize", *args, "--seed", "0", "--out", str(tmp_path / "x.safetensors")],
        message,
        code=code,
    )
    assert list(tmp_path.iterdir()) == []


def test_a_missing_output_folder_is_named(tmp_path, cli_error):
    out = tmp_path / "no" / "dir" / "x.safetensors"
    cli_error(
        ["materialize", "paper:alexnet", "--model", "alexnet", "--seed", "0", "--out", str(out)],
        "does not exist",
    )
    assert list(tmp_path.iterdir()) == []
