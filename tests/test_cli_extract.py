"""`polarpack extract` and `polarpack inspect` through click's CliRunner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from polarpack_cli.main import cli
from safetensors.torch import save_file

from polarpack import format as fmt
from polarpack.sources.extraction import extract as extract_distribution

ESCAPES = "\x1b[2J\x1b]0;owned\x07\x9b"  # clear screen, set the window title, a C1 CSI


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A small checkpoint: a dense conv, a 2-group conv (AlexNet conv2-like) and a linear head."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3),
        torch.nn.Conv2d(8, 16, 3, groups=2),
        torch.nn.Flatten(),
        torch.nn.Linear(16, 4),
    )
    path = tmp_path_factory.mktemp("w") / "small.safetensors"
    save_file(model.state_dict(), str(path))
    return path


def one_line_error(result) -> str:
    """The command failed with exactly one non-empty line on stderr, click's 'Error: ...'."""
    assert result.exit_code != 0, result.output
    lines = [layer for layer in result.stderr.splitlines() if layer.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def test_extract_writes_a_loadable_file(runner, weights, tmp_path, polar_schema_validator):
    out = tmp_path / "small.polar"
    result = runner.invoke(cli, ["extract", str(weights), "--out", str(out)])
    assert result.exit_code == 0, result.output
    polar_schema_validator.validate(json.loads(out.read_text()))
    assert result.stdout == ""  # the summary goes to stderr
    assert "extracted 2 conv layers" in result.stderr and "float32 weights" in result.stderr
    dist = fmt.load(out)
    assert dist.layers == extract_distribution(weights).layers and dist.names == ["0", "1"]


def test_extract_json_groups_and_safetensors_encoding(
    runner, weights, tmp_path, polar_schema_validator
):
    out = tmp_path / "small.polar.safetensors"
    args = [
        "extract",
        str(weights),
        "-o",
        str(out),
        "--groups",
        "1=2",
        "--include-linear",
        "--json",
        "--no-hash",
    ]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    obj = json.loads(result.stdout)
    computed = obj.pop("computed")
    polar_schema_validator.validate(obj)
    dist = fmt.Distribution.from_dict(obj)  # without "computed" it is a valid .polar object
    assert dist == fmt.load(out) and fmt.detect_encoding(out.read_bytes()) == "safetensors"
    assert dist["1"].p0 == 0.5 and dist["1"].shape == (16, 8, 3, 3)
    assert dist.names == ["0", "1", "3"] and dist["3"].kind == "linear"
    assert dist.extraction["expand_groups"] is True and dist.extraction["groups"] == {"1": 2}
    assert "sha256" not in dist.source
    assert computed["sizes"]["polar_bytes"] == out.stat().st_size
    assert computed["sizes"]["weights"] == 8 * 3 * 9 + 16 * 8 * 9 + 4 * 16


def test_extract_options_layers_zero_tol_layout(runner, weights, tmp_path):
    args = [
        "extract",
        str(weights),
        "-o",
        str(tmp_path / "x.polar"),
        "--layers",
        "1",
        "--zero-tol",
        "0.5",
        "--layout",
        "oihw",
        "--json",
    ]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    obj = json.loads(result.stdout)
    assert [layer["name"] for layer in obj["layers"]] == ["1"]
    assert obj["extraction"]["zero_tol"] == 0.5 and obj["extraction"]["layers"] == ["1"]
    assert obj["extraction"]["source_layout"] == "oihw"


def test_extract_to_missing_directory_fails_before_work(runner, weights, tmp_path):
    out = tmp_path / "nodir" / "x.polar"
    line = one_line_error(runner.invoke(cli, ["extract", str(weights), "--out", str(out)]))
    assert "does not exist" in line and "mkdir -p" in line and not out.parent.exists()
    line = one_line_error(
        runner.invoke(cli, ["extract", "no-such-model-file.pth", "--out", str(out)])
    )
    assert "does not exist" in line  # checked before the source is even opened


@pytest.mark.parametrize(
    "source, args, needle",
    [
        ("{w}", ["--out", "{tmp}/x.pth"], "must end with .polar"),
        ("{w}", ["--out", "{tmp}/x.polar", "--layers", "nomatch*"], "matches no layer"),
        ("{w}", ["--out", "{w}"], "is the source file itself"),  # never overwrite the weights
        (
            "{w}",
            ["--out", "{tmp}/x.polar", "--granularity", "pattern"],
            "only stored as safetensors",
        ),
        (
            "nothing.pth",
            ["--out", "{tmp}/x.polar.json", "--granularity", "pattern"],
            "only stored as safetensors",
        ),
        (
            "{w}",
            ["--out", "{tmp}/x.polar", "--granularity", "scaled"],
            "only stored as safetensors",
        ),
        ("{w}", ["--out", "{tmp}/x.polar", "--norms"], "--norms keeps float32 tensors"),
        (
            "nothing.pth",
            ["--out", "{tmp}/x.polar.json", "--granularity", "channel", "--norms"],
            "name the output NAME.polar.safetensors",
        ),
    ],
)
def test_extract_bad_options(runner, weights, tmp_path, source, args, needle):
    args = [a.format(tmp=tmp_path, w=weights) for a in [source, *args]]
    assert needle in one_line_error(runner.invoke(cli, ["extract", *args]))
    assert not list(tmp_path.iterdir())  # no output file


@pytest.mark.parametrize("value", ["conv2", "conv2=x", "conv2=0", "=2"])
def test_extract_bad_groups_is_a_usage_error(runner, weights, tmp_path, value):
    result = runner.invoke(
        cli, ["extract", str(weights), "-o", str(tmp_path / "x.polar"), "--groups", value]
    )
    assert result.exit_code == 2 and "is not NAME=G" in result.stderr


def test_extract_bad_inputs(runner, weights, tmp_path):
    out = tmp_path / "out.polar"
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(weights.read_bytes()[:100])
    line = one_line_error(runner.invoke(cli, ["extract", str(trunc), "-o", str(out)]))
    assert "not a readable safetensors file" in line
    mlp = tmp_path / "mlp.pt"
    torch.save({"fc.weight": torch.randn(3, 2), "fc.bias": torch.randn(3)}, mlp)
    line = one_line_error(runner.invoke(cli, ["extract", str(mlp), "-o", str(out)]))
    assert "mlp.pt: no conv kernels" in line and "--include-linear" in line
    assert "no such file" in one_line_error(
        runner.invoke(cli, ["extract", str(tmp_path / "gone.pth"), "-o", str(out)])
    )
    assert not out.exists()


def caffe_npy(path: Path) -> Path:
    obj = np.empty((), dtype=object)
    obj[()] = {"conv1": [np.ones((3, 3, 2, 4), np.float32), np.zeros(4, np.float32)]}
    np.save(path, obj, allow_pickle=True)
    return path


def test_pickled_npy_needs_the_unsafe_flag(runner, tmp_path):
    npy = caffe_npy(tmp_path / "caffe.npy")
    out = tmp_path / "c.polar"
    line = one_line_error(runner.invoke(cli, ["extract", str(npy), "-o", str(out)]))
    assert "pickled object array" in line and "--unsafe-allow-pickle" in line and not out.exists()
    renamed = tmp_path / "caffe.pth"
    renamed.write_bytes(npy.read_bytes())
    line = one_line_error(
        runner.invoke(cli, ["extract", str(renamed), "-o", str(out), "--unsafe-allow-pickle"])
    )
    assert (
        "caffe.pth: the name says PyTorch checkpoint (.pth) but the content is a .npy array file"
        in line
    )
    result = runner.invoke(cli, ["extract", str(npy), "-o", str(out), "--unsafe-allow-pickle"])
    assert result.exit_code == 0, result.output
    assert fmt.load(out)["conv1"].shape == (4, 2, 3, 3)  # HWIO read as OIHW


@pytest.mark.parametrize("granularity", ["channel", "pattern", "scaled"])
def test_extract_and_inspect_granularity(runner, weights, tmp_path, granularity):
    out = tmp_path / "s.polar.safetensors"
    args = [
        "extract",
        str(weights),
        "-o",
        str(out),
        "--granularity",
        granularity,
        "--groups",
        "1=2",
    ]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    dist = fmt.load(out)
    assert dist == extract_distribution(
        weights, granularity=granularity, groups={"1": 2}, expand_groups=True
    )
    assert [layer.counts for layer in dist.layers] == [
        layer.counts
        for layer in extract_distribution(weights, groups={"1": 2}, expand_groups=True).layers
    ]
    text = runner.invoke(cli, ["inspect", str(out)]).stdout
    assert f"granularity {granularity}: 2 layers" in text and "float32 weights" in text
    sizes = fmt.size_report(dist, polar_bytes=out.stat().st_size)
    if granularity != "channel":
        assert f"{sizes['pattern_bits_per_weight']:.3f} bits per weight" in text
        assert f"entropy bound {sizes['entropy_bits_per_weight']:.3f} bits per weight" in text
        assert f"{sizes['float32_bytes']:,} B" in text
    else:
        assert "24 output channels" in text  # 8 + 16
    # information and size side by side: the file's bits per weight, both bounds, the ratio
    assert f"{sizes['file_bits_per_weight']:.3f} bits per weight" in text
    assert f"order-0 {sizes['order0_bits_per_weight']:.3f}" in text
    assert f"channel-conditional {sizes['channel_bits_per_weight']:.3f} bits per weight" in text
    assert f"{sizes['information_bytes']:,} B" in text
    assert f"({sizes['float32_ratio']:,.0f}x the .polar file)" in text
    obj = json.loads(runner.invoke(cli, ["inspect", str(out), "--json"]).stdout)
    assert (
        obj["granularity"] == granularity
        and obj["computed"]["sizes"]["polar_bytes"] == out.stat().st_size
    )


def bn_checkpoint(path: Path) -> Path:
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))
    with torch.no_grad():
        model[1].running_mean.normal_()
        model[1].running_var.uniform_(0.5, 2.0)
    save_file(model.state_dict(), str(path))
    return path


def test_extract_scaled_with_norms(runner, tmp_path):
    weights = bn_checkpoint(tmp_path / "bn.safetensors")
    out = tmp_path / "one-bit.polar.safetensors"
    args = ["extract", str(weights), "--granularity", "scaled", "--norms", "--out", str(out)]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    dist = fmt.load(out)
    assert list(dist.norms) == ["1.weight", "1.bias", "1.running_mean", "1.running_var"]
    assert dist[0].scales.shape == (8,) and dist.extraction["norms"] is True
    assert dist == extract_distribution(weights, granularity="scaled", norms=True)
    assert "4 float32 tensors" in result.stderr and "normalisation" in result.stderr


def test_convert_rewrites_any_version_and_encoding(runner, weights, tmp_path):
    """A version-1 file (the JSON layout differs only in the version number) and presets."""
    channel = extract_distribution(weights, granularity="channel")
    old = tmp_path / "old.polar"
    old.write_bytes(
        fmt.encode_json(channel).replace(b'"format_version": 3', b'"format_version": 1', 1)
    )
    assert fmt.load(old).format_version == 1
    new = tmp_path / "new.polar.safetensors"
    result = runner.invoke(cli, ["convert", str(old), "--out", str(new)])
    assert result.exit_code == 0, result.output
    assert "format_version 1" in result.stderr and "format_version 3" in result.stderr
    assert fmt.load(new) == channel and new.stat().st_size < old.stat().st_size
    back = tmp_path / "back.polar"
    result = runner.invoke(cli, ["convert", str(new), "--out", str(back), "--json"])
    assert result.exit_code == 0, result.output
    assert back.read_bytes() == fmt.encode_json(channel)
    assert json.loads(result.stdout)["format_version"] == [3, 3]
    preset = tmp_path / "alexnet.polar.safetensors"
    assert runner.invoke(cli, ["convert", "paper:alexnet", "-o", str(preset)]).exit_code == 0
    assert fmt.load(preset) == fmt.load(fmt.save(fmt.load(preset), tmp_path / "a.polar"))


def test_convert_refuses_what_the_output_cannot_hold_and_damaged_input(runner, weights, tmp_path):
    pattern = fmt.save(
        extract_distribution(weights, granularity="pattern"), tmp_path / "p.polar.safetensors"
    )
    line = one_line_error(
        runner.invoke(cli, ["convert", str(pattern), "-o", str(tmp_path / "p.polar")])
    )
    assert "p.polar" in line and "only stored as safetensors" in line
    data = bytearray(pattern.read_bytes())
    data[-10] ^= 0xFF  # the payload's end: a raw sign map or a coded part
    damaged = tmp_path / "damaged.polar.safetensors"
    damaged.write_bytes(bytes(data))
    for command in ("convert", "inspect"):
        args = [command, str(damaged)] + (
            ["-o", str(tmp_path / "c.polar.safetensors")] if command == "convert" else []
        )
        line = one_line_error(runner.invoke(cli, args))
        assert "damaged.polar.safetensors: layer" in line, line
    assert not (tmp_path / "c.polar.safetensors").exists()


def test_inspect_refuses_hostile_files_in_one_line(runner, tmp_path):
    huge = tmp_path / "huge.polar"
    huge.write_text(
        json.dumps(
            {
                "format_version": 2,
                "layers": [
                    {"name": "a", "shape": [2**62] * 17, "p0": 0, "p_neg": 0.5, "p_pos": 0.5}
                ],
            }
        )
    )
    assert "2**63 - 1" in one_line_error(runner.invoke(cli, ["inspect", str(huge)]))
    fifo = tmp_path / "pipe.polar"
    os.mkfifo(fifo)
    assert "is a FIFO" in one_line_error(runner.invoke(cli, ["inspect", str(fifo)]))


def test_inspect_preset_table_and_json(runner):
    result = runner.invoke(cli, ["inspect", "paper:alexnet"])
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert all(name in text for name in ("conv1", "conv2", "conv3", "conv4", "conv5"))
    assert "256x96x5x5" in text and "0.5000" in text and "granularity layer" in text
    assert "10 numbers" in text and "full sign pattern" in text and "float32 weights" in text
    assert "3,745,824" in text  # conv weights of the (dense-expanded) AlexNet shapes
    result = runner.invoke(cli, ["inspect", "paper:alexnet", "--json"])
    assert result.exit_code == 0, result.output
    obj = json.loads(result.stdout)
    assert obj["format_version"] == 3 and [layer["name"] for layer in obj["layers"]] == [
        f"conv{i}" for i in range(1, 6)
    ]
    sizes = obj.pop("computed")["sizes"]
    assert sizes["weights"] == 3_745_824 and sizes["sign_pattern_bytes"] == 936_456
    assert sizes["float32_bytes"] == 4 * 3_745_824
    assert sizes["polar_bytes"] == len(fmt.encode_json(fmt.Distribution.from_dict(obj)))


def test_inspect_file(runner, weights, tmp_path):
    out = fmt.save(extract_distribution(weights), tmp_path / "s.polar")
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
    good = fmt.save(extract_distribution(weights), tmp_path / "g.polar.safetensors")
    trunc = tmp_path / "t.polar.safetensors"
    trunc.write_bytes(good.read_bytes()[:50])
    line = one_line_error(runner.invoke(cli, ["inspect", str(trunc)]))
    assert "t.polar.safetensors" in line and "weights checkpoint" not in line
    assert "paper:alexnet" in one_line_error(
        runner.invoke(cli, ["inspect", str(tmp_path / "missing.polar")])
    )
    assert "extract one first" in one_line_error(runner.invoke(cli, ["inspect", str(weights)]))
    assert "unknown preset" in one_line_error(runner.invoke(cli, ["inspect", "paper:nope"]))


# -- control characters from files never reach the terminal ---------------------------------


def assert_no_controls(text: str) -> None:
    assert not any(ord(c) < 32 and c != "\n" or 0x7F <= ord(c) <= 0x9F for c in text), repr(text)


def test_extract_and_inspect_escape_control_characters(runner, tmp_path):
    src = tmp_path / "evil.safetensors"
    save_file({f"conv{ESCAPES}.weight": torch.randn(4, 2, 3, 3)}, str(src))
    out = tmp_path / "evil.polar"
    result = runner.invoke(cli, ["extract", str(src), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert_no_controls(result.stderr)
    assert r"conv\x1b[2J\x1b]0;owned\x07\x9b" in result.stderr
    dist = fmt.load(out)
    meta = fmt.Distribution(
        dist.layers,
        source={"type": "manual", "id": f"title{ESCAPES}"},
        extraction={"zero_tol": 0.0, "include_linear": False, "expand_groups": False},
    )
    fmt.save(meta, out)
    result = runner.invoke(cli, ["inspect", str(out)])
    assert result.exit_code == 0, result.output
    assert_no_controls(result.stdout)
    assert r"title\x1b[2J" in result.stdout and r"conv\x1b[2J" in result.stdout


def test_error_lines_escape_control_characters(runner, tmp_path):
    src = tmp_path / "evil.safetensors"
    save_file({f"conv{ESCAPES}.weight": torch.randn(4, 2, 3, 3).to(torch.int8)}, str(src))
    line = one_line_error(
        runner.invoke(cli, ["extract", str(src), "-o", str(tmp_path / "x.polar")])
    )
    assert_no_controls(line)
    assert "has dtype I8" in line
    line = one_line_error(runner.invoke(cli, ["inspect", str(tmp_path / f"gone{ESCAPES}.polar")]))
    assert_no_controls(line)
    assert r"gone\x1b[2J" in line


@pytest.mark.parametrize(
    "args",
    [
        ["inspect", "paper:alexnet"],
        ["inspect", "paper:alexnet", "--json"],
        ["experiment", "examples/tiny.toml", "--results", "{tmp}", "--dry-run", "--json"],
    ],
)
def test_a_closed_pipe_ends_quietly(args, tmp_path):
    """`polarpack inspect ... | head -1`: the reader leaves before polarpack writes; a Unix tool
    then ends without a word, not with an error about a broken pipe."""
    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "polarpack", *(a.format(tmp=tmp_path) for a in args)]
    proc = subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # long before the interpreter has imported torch and written anything
    stderr = proc.communicate(timeout=120)[1].decode()
    assert "Error" not in stderr and "Traceback" not in stderr and "Broken pipe" not in stderr
    assert proc.returncode in (0, 1), stderr
