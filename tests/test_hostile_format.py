""".polar files that claim more than they hold, and the limits that bound a reader's work.

A coded stream can describe far more than it holds: a gap-coded zero map of one zero among 2**36
weights takes a few bytes, a layer of one symbol none, a channel stream of identical channels a
histogram. Readers refuse, before decoding, a layer whose decoded form is over the layer limit
(POLARPACK_MAX_LAYER_BYTES) and an ANS part too short for the symbols its counts need; writers
refuse what their readers would; every limit holds at its exact boundary. Each file here is built
byte by byte, as a hostile writer would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from polarpack_cli.main import cli
from safetensors.numpy import load as load_tensors
from safetensors.numpy import save as save_tensors

from polarpack import extract
from polarpack.errors import FormatError
from polarpack.format import (
    JSON_LIMIT,
    SAFETENSORS_LIMIT,
    Distribution,
    LayerDistribution,
    decode,
    encode,
    load,
    save,
    size_limit,
    size_report,
)
from polarpack.format.limits import LAYER_LIMIT

LAYER_VARIABLE, FILE_VARIABLE = "POLARPACK_MAX_LAYER_BYTES", "POLARPACK_MAX_POLAR_BYTES"


def polar_file(
    path: Path,
    granularity: str,
    shape: list[int],
    counts: list[int],
    stream: bytes,
    version: int = 3,
) -> Path:
    """A one-layer safetensors .polar file with exactly this header, counts and stream."""
    header = {
        "format_version": version,
        "granularity": granularity,
        "layers": ["0:w"],
        "shapes": [shape],
        "linear": [],
        **{k: {} for k in ("source", "extraction", "producer", "metadata")},
    }
    tensors = {"counts": np.array([counts], "<i8")}
    if granularity != "layer":
        tensors["offsets"] = np.array([0, len(stream)], "<i8")
        tensors["payload"] = np.frombuffer(stream, np.uint8).copy()
    data = save_tensors(
        tensors, metadata={"polar": json.dumps(header, sort_keys=True, separators=(",", ":"))}
    )
    path.write_bytes(data)
    return path


def gap_coded_zero(n: int) -> tuple[list[int], bytes]:
    """Counts and pattern stream of n weights, one zero (the first) and the rest positive: the
    zero map gap-coded with M = 1 (flags 04, length 03, then M = 1, no long codes, unary '1')."""
    return [1, 0, n - 1], bytes([0x04, 0x03, 0x01, 0x00, 0x80])


def empty_ans_zero_map(n: int) -> tuple[list[int], bytes]:
    """Counts and pattern stream of n weights, half zero and half positive, whose zero map is
    flagged ANS-coded with an empty ANS part: the flags byte alone."""
    return [n // 2, 0, n - n // 2], b"\x01"


HOSTILE = {  # name -> (granularity, shape, counts and stream)
    "gap-coded-2**36": ("pattern", [2**36], gap_coded_zero(2**36)),
    "one-symbol-2**31": ("pattern", [2**31, 1], ([0, 0, 2**31], b"")),
    "channels-2**33": ("channel", [2**33, 1], ([0, 0, 2**33], b"")),
    "empty-ans-2**33": ("pattern", [2**33], empty_ans_zero_map(2**33)),
}


def run_inspect(path: Path, env: dict[str, str] | None = None) -> tuple[int, str, float, int]:
    """`polarpack inspect` in a fresh process under a 4 GiB address-space cap: exit status, output,
    seconds and peak resident memory above start-up, in MiB."""
    code = (
        "import resource, sys, time\n"
        "resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))\n"
        "from polarpack_cli.main import cli\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "start = time.perf_counter()\n"
        "try:\n"
        "    cli.main(['inspect', sys.argv[1]], standalone_mode=True)\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base\n"
        "print(f'@@ {code} {time.perf_counter() - start:.3f} {peak // 1024}', file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )
    *lines, last = result.stderr.strip().splitlines()
    _, status, seconds, peak = last.split()
    return int(status), result.stdout + "\n".join(lines), float(seconds), int(peak)


def one_line_error(result) -> str:
    assert result.exit_code == 1, (result.output, result.exception)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


# -- case 1: claimed sizes beyond the file -------------------------------------------------------


@pytest.mark.parametrize("name", HOSTILE)
def test_a_layer_over_the_layer_limit_is_refused_before_it_is_decoded(tmp_path, name):
    granularity, shape, (counts, stream) = HOSTILE[name]
    path = polar_file(tmp_path / f"{name}.polar.safetensors", granularity, shape, counts, stream)
    assert path.stat().st_size < 600
    start = time.perf_counter()
    with pytest.raises(FormatError, match=f"over the 268,435,456-byte limit.*{LAYER_VARIABLE}"):
        load(path)
    runner = CliRunner()
    for args in (
        ["inspect", str(path)],
        ["convert", str(path), "--out", str(tmp_path / "out.polar.safetensors")],
    ):
        line = one_line_error(runner.invoke(cli, args))
        assert "'w'" in line and LAYER_VARIABLE in line, line
    assert time.perf_counter() - start < 10
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # nothing written


@pytest.mark.parametrize("name", HOSTILE)
def test_inspect_of_a_hostile_file_is_a_quick_small_one_line_error(tmp_path, name):
    """In a fresh process under a 4 GiB cap: no MemoryError, seconds, a few MiB."""
    granularity, shape, (counts, stream) = HOSTILE[name]
    path = polar_file(tmp_path / f"{name}.polar.safetensors", granularity, shape, counts, stream)
    status, output, seconds, peak = run_inspect(path)
    assert status == 1 and "Error: " in output and "Traceback" not in output, output
    assert seconds < 5 and peak < 200, (seconds, peak)


def test_a_layer_of_one_symbol_is_measured_without_materializing_it(tmp_path, monkeypatch):
    """Raised for a trusted file, the limit lets a 2**31-weight layer of one symbol through:
    `size_report` and `inspect` measure it in closed form (its channels cost no bits)."""
    monkeypatch.setenv(LAYER_VARIABLE, str(2**31))
    path = polar_file(tmp_path / "one.polar.safetensors", "pattern", [2**31, 1], [0, 0, 2**31], b"")
    dist = load(path)
    tracemalloc.start()
    try:
        sizes = size_report(dist, polar_bytes=path.stat().st_size)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sizes["weights"] == 2**31 and sizes["channel_bits_per_weight"] == 0.0
    assert peak < 1 << 20, peak
    result = CliRunner().invoke(cli, ["inspect", str(path)])
    assert result.exit_code == 0 and "2,147,483,648" in result.output, result.output


def test_measuring_a_pattern_counts_its_channels_as_decoding_would(monkeypatch):
    """The channel-conditional bound read from the maps in blocks equals the one counted from the
    decoded signs, whatever the block size (rows shorter and longer than a block)."""
    from polarpack.format import coding

    rng = np.random.default_rng(0)
    for shape, p in (
        ((7, 5), (0.3, 0.3, 0.4)),
        ((3, 40), (0.9, 0.05, 0.05)),
        ((9,), (0, 0.5, 0.5)),
    ):
        signs = rng.choice([0, -1, 1], size=shape, p=p).astype(np.int8)
        rows = signs.reshape(shape[0], -1)
        table = np.stack([np.count_nonzero(rows == v, axis=1) for v in (0, -1, 1)], axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(table > 0, table * np.log2(table / rows.shape[1]), 0.0)
        expected = -terms.sum() / signs.size
        dist = Distribution([LayerDistribution.from_signs("w", signs)], granularity="pattern")
        for block in (8, 16, 1 << 18):
            monkeypatch.setattr(coding, "BLOCK", block)
            got = size_report(dist)["channel_bits_per_weight"]
            assert got == pytest.approx(expected, rel=1e-12, abs=1e-12), (shape, block)


# -- case 2: an ANS stream that ends early -------------------------------------------------------


@pytest.mark.parametrize("version", [2, 3])
def test_an_ans_part_too_short_for_its_symbols_is_refused_at_once(tmp_path, monkeypatch, version):
    """2**33 bits (the layer limit raised so that only the stream's length can refuse it) and a
    2**27-bit map within the default limit: version 2 re-codes at load, so both read paths."""
    for n, raised in ((2**33, True), (2**27, False)):
        if raised:
            monkeypatch.setenv(LAYER_VARIABLE, str(2**40))
        else:
            monkeypatch.delenv(LAYER_VARIABLE, raising=False)
        counts, stream = empty_ans_zero_map(n)
        path = polar_file(
            tmp_path / f"{n}.polar.safetensors", "pattern", [n], counts, stream, version
        )
        start = time.perf_counter()
        with pytest.raises(FormatError, match="ends early: 0 coded bytes"):
            load(path)
        line = one_line_error(CliRunner().invoke(cli, ["inspect", str(path)]))
        assert "ends early" in line and "corrupt" in line, line
        assert time.perf_counter() - start < 5


def test_an_ans_part_shorter_than_its_symbols_need_is_refused_and_whole_parts_pass():
    """A balanced map (8 bits a byte) ANS-coded by hand, its part cut to whole words below what its
    symbols need: refused by length; the whole part passes the same check and decodes."""
    from polarpack.format import coding

    n = 1 << 16
    bits = np.zeros(n, np.uint8)
    bits[np.random.default_rng(0).permutation(n)[: n // 2]] = 1
    zero_map = np.packbits(bits)
    coder = coding.AnsCoder()
    coding._push(coder, zero_map, coding.bitmap_model(n // 2, n))
    part = coding._words(coder)
    counts = [n // 2, 0, n // 2]
    whole = b"\x01" + part
    coding.check_pattern(whole, n, counts, "w")
    assert np.array_equal(coding.decode_bitmaps(whole, n, counts, "w")[0], zero_map)
    least = coding.least_bits(coding.bitmap_weights(n // 2, n)) * (n // 8)
    short = int(least - coding.STATE_BITS) // 8 - 4
    short -= short % 4
    assert 0 < short < len(part)
    with pytest.raises(FormatError, match="ends early"):
        coding.check_pattern(whole[: 1 + short], n, counts, "w")


# -- case 7: what polarpack writes, it reads -----------------------------------------------------


def test_a_layer_readers_would_refuse_is_not_written(tmp_path, monkeypatch):
    monkeypatch.setenv(LAYER_VARIABLE, "100")
    signs = torch.tensor([1, -1, 0, 1] * 25 + [1], dtype=torch.int8).reshape(101)
    dist = Distribution([LayerDistribution.from_signs("w", signs)], granularity="pattern")
    target = tmp_path / "d.polar.safetensors"
    with pytest.raises(FormatError, match=f"'w'.* 101 bytes, over the 100-byte.*{LAYER_VARIABLE}"):
        save(dist, target)
    assert not target.exists()
    channel = Distribution(
        [LayerDistribution.from_signs("w", signs.reshape(101, 1), granularity="channel")],
        granularity="channel",
    )
    with pytest.raises(FormatError, match="not written"):
        save(channel, target)
    save(channel, tmp_path / "d.polar")  # JSON holds nothing coded: no layer limit
    assert load(tmp_path / "d.polar") == channel


def test_extract_and_convert_refuse_what_they_could_not_read_back(tmp_path, monkeypatch):
    weights = tmp_path / "net.pt"
    torch.save({"conv.weight": torch.randn(8, 3, 3, 3)}, weights)  # 216 weights, 8 channels
    runner = CliRunner()
    out = tmp_path / "p.polar.safetensors"
    args = ["extract", str(weights), "--granularity", "pattern", "--out", str(out)]
    monkeypatch.setenv(LAYER_VARIABLE, "215")
    line = one_line_error(runner.invoke(cli, args))
    assert "216 bytes" in line and LAYER_VARIABLE in line and not out.exists(), line
    monkeypatch.setenv(LAYER_VARIABLE, "216")
    assert runner.invoke(cli, args).exit_code == 0 and load(out).granularity == "pattern"
    # convert: a JSON channel file (no layer limit) to safetensors (8 channels = 192 bytes)
    channel = tmp_path / "c.polar"
    args = ["extract", str(weights), "--granularity", "channel", "--out", str(channel)]
    assert runner.invoke(cli, args).exit_code == 0
    monkeypatch.setenv(LAYER_VARIABLE, "191")
    converted = tmp_path / "c.polar.safetensors"
    line = one_line_error(runner.invoke(cli, ["convert", str(channel), "--out", str(converted)]))
    assert "192 bytes" in line and not converted.exists(), line


# -- case 11: every limit at its boundary --------------------------------------------------------


def test_the_file_size_limit_holds_at_its_boundary(tmp_path, monkeypatch):
    signs = torch.tensor([[1, -1, 0], [0, 0, 1]], dtype=torch.int8)
    dist = Distribution([LayerDistribution.from_signs("w", signs)], granularity="pattern")
    layer_file = Distribution(
        [LayerDistribution("w", 0.5, 0.25, 0.25, shape=[4], counts=[2, 1, 1])]
    )
    for encoding, name, default in (
        ("safetensors", "d.polar.safetensors", SAFETENSORS_LIMIT),
        ("json", "d.polar", JSON_LIMIT),
    ):
        d = dist if encoding == "safetensors" else layer_file
        data = encode(d, encoding)
        path = tmp_path / name
        path.write_bytes(data)
        monkeypatch.delenv(FILE_VARIABLE, raising=False)
        assert size_limit(encoding) == default
        monkeypatch.setenv(FILE_VARIABLE, str(len(data)))
        assert decode(data) == d and load(path) == d and encode(d, encoding) == data
        monkeypatch.setenv(FILE_VARIABLE, str(len(data) - 1))
        needle = f"{len(data):,} bytes.*{FILE_VARIABLE}"
        with pytest.raises(FormatError, match=needle):
            decode(data)
        with pytest.raises(FormatError, match=needle):
            load(path)
        with pytest.raises(FormatError, match=needle):
            encode(d, encoding)


@pytest.mark.parametrize(
    "granularity, shape, counts, stream",
    [
        ("pattern", [LAYER_LIMIT], [0, LAYER_LIMIT, 0], b""),  # one byte per weight
        ("channel", [LAYER_LIMIT // 24, 1], [0, 0, LAYER_LIMIT // 24], b""),  # 24 per channel
    ],
)
def test_the_default_layer_limit_holds_at_its_boundary(
    tmp_path, granularity, shape, counts, stream
):
    """Layers of one symbol: their streams are empty, so only the limit decides."""
    at = polar_file(tmp_path / "at.polar.safetensors", granularity, shape, counts, stream)
    assert load(at)[0].shape == tuple(shape)
    over = [shape[0] + 1, *shape[1:]]
    more = [c + 1 if c else 0 for c in counts]
    path = polar_file(tmp_path / "over.polar.safetensors", granularity, over, more, stream)
    with pytest.raises(FormatError, match=f"over the {LAYER_LIMIT:,}-byte limit"):
        load(path)


@pytest.mark.parametrize("granularity", ["pattern", "scaled", "channel"])
def test_a_raised_or_lowered_layer_limit_holds_at_its_boundary(tmp_path, monkeypatch, granularity):
    """Written and read at exactly the layer's decoded size; one byte less refuses both."""
    signs = torch.tensor([[1, -1, 0, 1], [0, 0, 1, -1], [1, 1, 1, 0]], dtype=torch.int8)
    scales = np.ones(3, np.float32) if granularity == "scaled" else None
    layer = LayerDistribution.from_signs("w", signs, granularity=granularity, scales=scales)
    dist = Distribution([layer], granularity=granularity)
    size = 24 * 3 if granularity == "channel" else 12
    path = tmp_path / "d.polar.safetensors"
    monkeypatch.setenv(LAYER_VARIABLE, str(size))
    save(dist, path)
    assert load(path) == dist
    monkeypatch.setenv(LAYER_VARIABLE, str(size - 1))
    for act in (lambda: load(path), lambda: save(dist, tmp_path / "e.polar.safetensors")):
        with pytest.raises(FormatError, match=f"{size} bytes.*over the {size - 1}-byte"):
            act()
    assert not (tmp_path / "e.polar.safetensors").exists()


def test_a_limit_that_is_not_a_number_is_a_one_line_error(tmp_path, monkeypatch):
    path = polar_file(tmp_path / "d.polar.safetensors", "pattern", [4], [0, 4, 0], b"")
    monkeypatch.setenv(LAYER_VARIABLE, "lots")
    line = one_line_error(CliRunner().invoke(cli, ["inspect", str(path)]))
    assert LAYER_VARIABLE in line and "'lots'" in line, line


def test_inspect_help_names_the_limits_and_how_to_raise_them():
    text = " ".join(CliRunner().invoke(cli, ["inspect", "--help"]).output.split())
    assert "256 MiB" in text and LAYER_VARIABLE in text and FILE_VARIABLE in text, text


# -- reading costs that grow faster than the file ---------------------------------------------


def json_polar(path: Path, layer: dict, **top) -> Path:
    """A one-layer JSON .polar file with this layer record and these top-level objects."""
    document = {"format_version": 3, "granularity": "layer", "layers": [layer], **top}
    path.write_text(json.dumps(document))
    return path


LAYER = {"name": "w", "shape": [2, 2], "counts": [0, 2, 2], "p0": 0.0, "p_neg": 0.5, "p_pos": 0.5}


@pytest.mark.parametrize(
    "what",
    [
        "a name of 400,000 letters",
        "a shape of 200,000 huge sizes",
        "20,000 values under a 3 MiB key",
    ],
)
def test_reading_stays_linear_in_the_file_size(tmp_path, what):
    """Each of these took minutes to hours (the work grew with the square of a string's length,
    of the digits of a product, or of a key's length times the values under it)."""
    if what.startswith("a name"):
        path = json_polar(tmp_path / "d.polar", {**LAYER, "name": "a" * 400_000})
    elif what.startswith("a shape"):
        path = json_polar(tmp_path / "d.polar", {**LAYER, "shape": [2**62] * 200_000})
    else:
        path = json_polar(tmp_path / "d.polar", LAYER, metadata={"k" * (3 << 20): [0] * 20_000})
    start = time.perf_counter()
    try:
        load(path)
    except FormatError as exc:  # refused, in one short line
        assert len(str(exc)) < 1000
    assert time.perf_counter() - start < 10, what


@pytest.mark.parametrize("field", ["shape", "counts"])
def test_nested_lists_are_refused_not_recursed_into(tmp_path, field):
    path = json_polar(tmp_path / "d.polar", {**LAYER, field: "NESTED"})
    path.write_text(path.read_text().replace('"NESTED"', "[" * 900 + "2" + "]" * 900))
    with pytest.raises(FormatError, match=f"'{field}'"):
        load(path)


def test_a_scales_tensor_of_the_wrong_rank_is_refused():
    weights = {"c.weight": torch.randn(4, 2, 3, 3)}
    data = encode(extract(weights, granularity="scaled"), "safetensors")
    (n,) = np.frombuffer(data[:8], "<u8")
    header = json.loads(data[8 : 8 + int(n)])
    tensors = load_tensors(data)
    tensors["scales"] = np.array(tensors["scales"][0])
    broken = save_tensors(tensors, metadata=header["__metadata__"])
    with pytest.raises(FormatError, match="tensor 'scales' must be 1-D, got shape \\[\\]"):
        decode(broken)


def test_a_json_file_over_its_limit_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "big.polar"
    with open(path, "wb") as fh:
        fh.write(b"{" + b" " * 15)  # text: a JSON file
        fh.truncate(JSON_LIMIT + 1)  # the rest sparse: no time or disk to make
    tracemalloc.start()
    try:
        with pytest.raises(FormatError, match=f"over the {JSON_LIMIT:,}-byte limit for json"):
            load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_a_name_as_long_as_the_file_system_allows_is_saved(tmp_path):
    path = tmp_path / ("x" * 249 + ".polar")
    save(load(json_polar(tmp_path / "d.polar", LAYER)), path)
    assert load(path).names == ["w"]
