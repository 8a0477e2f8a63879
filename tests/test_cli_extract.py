"""`polarpack extract` and `polarpack inspect` through click's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from polarpack import format as fmt
from polarpack.extract import extract as extract_distribution
from polarpack_cli.main import cli


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A small checkpoint: a dense conv, a 2-group conv (AlexNet conv2-like) and a linear head."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 16, 3, groups=2), torch.nn.Flatten(), torch.nn.Linear(16, 4)
    )
    path = tmp_path_factory.mktemp("w") / "small.safetensors"
    save_file(model.state_dict(), str(path))
    return path


def one_line_error(result) -> str:
    """The command failed with exactly one non-empty line on stderr, click's 'Error: ...'."""
    assert result.exit_code != 0, result.output
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


def test_extract_writes_a_loadable_file(runner, weights, tmp_path, polar_schema_validator):
    out = tmp_path / "small.polar"
    result = runner.invoke(cli, ["extract", str(weights), "--out", str(out)])
    assert result.exit_code == 0, result.output
    polar_schema_validator.validate(json.loads(out.read_text()))
    assert result.stdout == ""  # the summary goes to stderr
    assert "extracted 2 conv layers" in result.stderr and "float32 weights" in result.stderr
    dist = fmt.load(out)
    assert dist.layers == extract_distribution(weights).layers
    assert dist.names == ["0", "1"]


def test_extract_json_groups_and_safetensors_encoding(runner, weights, tmp_path, polar_schema_validator):
    out = tmp_path / "small.polar.safetensors"
    result = runner.invoke(
        cli, ["extract", str(weights), "-o", str(out), "--groups", "1=2", "--include-linear", "--json", "--no-hash"]
    )
    assert result.exit_code == 0, result.output
    obj = json.loads(result.stdout)
    computed = obj.pop("computed")
    polar_schema_validator.validate(obj)
    dist = fmt.Distribution.from_dict(obj)  # without "computed" it is a valid .polar object
    assert dist == fmt.load(out)
    assert fmt.detect_encoding(out.read_bytes()) == "safetensors"
    assert dist["1"].p0 == 0.5 and dist["1"].shape == (16, 8, 3, 3)
    assert dist.names == ["0", "1", "3"] and dist["3"].kind == "linear"
    assert dist.extraction["expand_groups"] is True and dist.extraction["groups"] == {"1": 2}
    assert "sha256" not in dist.source
    assert computed["sizes"]["polar_bytes"] == out.stat().st_size
    assert computed["sizes"]["weights"] == 8 * 3 * 9 + 16 * 8 * 9 + 4 * 16


def test_extract_options_layers_zero_tol_layout(runner, weights, tmp_path):
    out = tmp_path / "x.polar"
    result = runner.invoke(
        cli, ["extract", str(weights), "-o", str(out), "--layers", "1", "--zero-tol", "0.5", "--layout", "oihw", "--json"]
    )
    assert result.exit_code == 0, result.output
    obj = json.loads(result.stdout)
    assert [l["name"] for l in obj["layers"]] == ["1"]
    assert obj["extraction"]["zero_tol"] == 0.5 and obj["extraction"]["layers"] == ["1"]
    assert obj["extraction"]["source_layout"] == "oihw"


def test_extract_to_missing_directory_fails_before_work(runner, weights, tmp_path):
    out = tmp_path / "nodir" / "x.polar"
    line = one_line_error(runner.invoke(cli, ["extract", str(weights), "--out", str(out)]))
    assert "does not exist" in line and "mkdir -p" in line
    assert not out.parent.exists()
    # checked before the source is even opened: a bad source still reports the directory
    line = one_line_error(runner.invoke(cli, ["extract", "no-such-model-file.pth", "--out", str(out)]))
    assert "does not exist" in line


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--out", "{tmp}/x.pth"], "must end with .polar"),
        (["--out", "{tmp}/x.polar", "--layers", "nomatch*"], "matches no layer"),
        (["--out", "{w}"], "is the source file itself"),  # never overwrite the weights
    ],
)
def test_extract_bad_options(runner, weights, tmp_path, args, needle):
    args = [a.format(tmp=tmp_path, w=weights) for a in args]
    assert needle in one_line_error(runner.invoke(cli, ["extract", str(weights), *args]))
    assert not list(tmp_path.iterdir())  # no output file


def test_extract_bad_groups_is_a_usage_error(runner, weights, tmp_path):
    result = runner.invoke(cli, ["extract", str(weights), "-o", str(tmp_path / "x.polar"), "--groups", "conv2"])
    assert result.exit_code == 2 and "is not NAME=G" in result.stderr


def test_extract_bad_inputs(runner, weights, tmp_path):
    out = tmp_path / "out.polar"
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(weights.read_bytes()[:100])
    assert "not a readable safetensors file" in one_line_error(runner.invoke(cli, ["extract", str(trunc), "-o", str(out)]))
    mlp = tmp_path / "mlp.pt"
    torch.save({"fc.weight": torch.randn(3, 2), "fc.bias": torch.randn(3)}, mlp)
    line = one_line_error(runner.invoke(cli, ["extract", str(mlp), "-o", str(out)]))
    assert "mlp.pt: no conv kernels" in line and "--include-linear" in line
    assert "no such file" in one_line_error(runner.invoke(cli, ["extract", str(tmp_path / "gone.pth"), "-o", str(out)]))
    assert not out.exists()


def test_inspect_preset_table_and_json(runner):
    result = runner.invoke(cli, ["inspect", "paper:alexnet"])
    assert result.exit_code == 0, result.output
    text = result.stdout
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5"):
        assert name in text
    assert "256x96x5x5" in text and "0.5000" in text
    assert "10 numbers" in text and "full sign pattern" in text and "float32 weights" in text
    assert "3,745,824" in text  # conv weights of the (dense-expanded) AlexNet shapes

    result = runner.invoke(cli, ["inspect", "paper:alexnet", "--json"])
    assert result.exit_code == 0, result.output
    obj = json.loads(result.stdout)
    assert obj["format_version"] == 1
    assert [l["name"] for l in obj["layers"]] == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    assert {"p0", "p_neg", "p_pos"} <= set(obj["layers"][1])
    sizes = obj.pop("computed")["sizes"]
    assert sizes["weights"] == 3_745_824 and sizes["sign_pattern_bytes"] == 936_456
    assert sizes["float32_bytes"] == 4 * 3_745_824
    dist = fmt.Distribution.from_dict(obj)
    assert sizes["polar_bytes"] == len(fmt.encode_json(dist))


def test_inspect_file(runner, weights, tmp_path):
    out = tmp_path / "s.polar"
    fmt.save(extract_distribution(weights), out)
    result = runner.invoke(cli, ["inspect", str(out)])
    assert result.exit_code == 0, result.output
    assert "16x4x3x3" in result.stdout and f"({out.name})" in result.stdout
    obj = json.loads(runner.invoke(cli, ["inspect", str(out), "--json"]).stdout)
    assert obj.pop("computed")["sizes"]["polar_bytes"] == out.stat().st_size
    assert fmt.Distribution.from_dict(obj) == fmt.load(out)


def test_inspect_bad_files(runner, weights, tmp_path):
    bad = tmp_path / "bad.polar"
    bad.write_text('{"format_version": 1, "layers": [')
    assert "malformed JSON" in one_line_error(runner.invoke(cli, ["inspect", str(bad)]))
    good = fmt.save(fmt.load(fmt.save(extract_distribution(weights), tmp_path / "g.polar")), tmp_path / "g.polar.safetensors")
    trunc = tmp_path / "t.polar.safetensors"
    trunc.write_bytes(good.read_bytes()[:50])
    assert "t.polar.safetensors" in one_line_error(runner.invoke(cli, ["inspect", str(trunc)]))
    assert "paper:alexnet" in one_line_error(runner.invoke(cli, ["inspect", str(tmp_path / "missing.polar")]))
    assert "extract one first" in one_line_error(runner.invoke(cli, ["inspect", str(weights)]))
    assert "unknown preset" in one_line_error(runner.invoke(cli, ["inspect", "paper:nope"]))


def test_help_texts_teach(runner):
    text = runner.invoke(cli, ["extract", "--help"]).output
    assert "Examples:" in text and "--groups" in text and "[default:" in text and "HWIO" in text
    assert "polarpack extract ./mobilenet_v2-b0353104.pth" in text
    text = runner.invoke(cli, ["inspect", "--help"]).output
    assert "polarpack inspect paper:alexnet" in text
