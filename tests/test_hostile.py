"""Hostile and unlucky input: the place where such cases live.

Here: code planted in weights files on every path that reads them (a file, `hf://`, `train
--weights`, an experiment's [weights]), run directories that belong to one configuration, damaged
run files, one-line errors for bad options and a failing disk, and `--jobs` workers that die with
their parent. Elsewhere, next to the code they guard: planted payloads under every suffix and the
unsafe opt-in (test_extract), `.polar` size limits and malformed files (test_format), a silent Hub
endpoint and `..` in references (test_hub), one writer per results folder, torn metrics and failed
cells' exit status (test_experiments), divergence's exit status (test_train).
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import TINY, TINY_ARGS

import polarpack._io
from polarpack.errors import PolarpackError
from polarpack.train import STATE_FILE, TrainConfig, train
from polarpack_cli.main import cli


class Payload:
    """Writes a marker file when unpickled: if the marker appears, a data file ran code."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "ran"))


def plant(path: Path, marker: Path) -> Path:
    """An .npy object array (a pickle inside) under whatever name `path` has."""
    with open(path, "wb") as fh:
        np.save(fh, np.array([Payload(str(marker)), None], dtype=object), allow_pickle=True)
    return path


@pytest.mark.parametrize("name", ["model.npy", "model.pth", "model.safetensors"])
def test_a_payload_on_every_path_that_reads_weights_never_runs(tmp_path, hub, name):
    marker = tmp_path / "marker"
    weights = plant(tmp_path / name, marker)
    hub.add_repo("me/w", {name: weights.read_bytes()})
    runner = CliRunner()
    for args in (["extract", str(weights), "--out", str(tmp_path / "d.polar")],
                 ["extract", f"hf://me/w/{name}", "--out", str(tmp_path / "d.polar"), "--endpoint", hub.url],
                 ["train", "--method", "freeze-in", "--weights", str(weights), "--epochs", "1", "--out", str(tmp_path / "r"),
                  *TINY_ARGS]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert not marker.exists(), args
    (tmp_path / "g.toml").write_text(f'[defaults]\nmethod = "fluid-in"\nepochs = 1\ndataset = "fashion-mnist-mini"\n'
                                     f'[weights]\nalexnet = "{weights}"\n')
    result = runner.invoke(cli, ["experiment", str(tmp_path / "g.toml"), "--results", str(tmp_path / "res"), "--json"])
    assert result.exit_code == 1 and json.loads(result.stdout)["counts"] == {"failed": 1}
    assert not marker.exists() and not (tmp_path / "d.polar").exists()


def test_a_run_directory_belongs_to_one_configuration(tmp_path, cli_error):
    args = ["train", "--method", "scratch", "--epochs", "1", "--out", str(tmp_path), *TINY_ARGS]
    assert CliRunner().invoke(cli, args).exit_code == 0
    before = (tmp_path / "summary.json").read_text()
    cli_error(args, "holds this run already", "--resume", "--overwrite")
    cli_error([*args, "--seed", "1"], "holds a different run", "--overwrite")
    assert (tmp_path / "summary.json").read_text() == before  # nothing of the old run was touched
    assert CliRunner().invoke(cli, [*args, "--seed", "1", "--overwrite"]).exit_code == 0
    assert json.loads((tmp_path / "config.json").read_text())["config"]["seed"] == 1


def _interrupted(tmp_path: Path) -> Path:
    def stop(row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(method="scratch", epochs=2, **TINY), out=tmp_path, progress=False, on_epoch=stop)
    return tmp_path


@pytest.mark.parametrize("damage, needles", [
    (lambda d: (d / STATE_FILE).write_bytes(b""), [STATE_FILE, "damaged", "--overwrite"]),
    (lambda d: (d / STATE_FILE).write_bytes((d / STATE_FILE).read_bytes()[:1000]), [STATE_FILE, "damaged"]),
    (lambda d: (d / "summary.json").write_text('{"status": "runn'), ["summary.json", "not valid JSON"]),
    (lambda d: (d / "summary.json").write_text('{"status": "completed", "run_token": "another"}'), ["belongs to another run"]),
    (lambda d: (d / "config.json").write_text("{"), ["config.json", "not valid JSON"]),
])
def test_resume_of_damaged_or_mixed_run_files_is_a_one_line_error(tmp_path, cli_error, damage, needles):
    run = _interrupted(tmp_path)
    damage(run)
    cli_error(["train", "--resume", str(run), "--quiet"], *needles)


def test_resume_removes_a_killed_writers_temporary_files(tmp_path):
    run = _interrupted(tmp_path)
    (run / ".training_state.safetensors.x1.tmp").write_bytes(b"\0" * 1000)
    assert train(resume=run, progress=False).status == "completed" and not list(run.glob(".*.tmp"))


@pytest.mark.parametrize("args, needles", [
    (["--epochs", "0"], ["--epochs must be an integer >= 1"]),
    (["--lr", "nan"], ["--lr must be a finite number > 0"]),
    (["--lr", "-1"], ["--lr must be"]),
    (["--momentum", "-1"], ["--momentum must be a finite number in [0, 1)"]),
    (["--weight-decay", "nan"], ["--weight-decay must be"]),
    (["--threads", "-2"], ["--threads must be an integer in [1, 1024]"]),
    (["--seed", str(2**64)], ["--seed must be an integer in [0, 9223372036854775807]"]),
    (["--dropout", "1"], ["--dropout must be"]),
    (["--method", "freeze-spin"], ["needs a distribution"]),
    (["--method", "freeze-spin", "--dist", "hf://o/r/../x.polar"], [".."]),
])
def test_bad_training_options_are_one_line_errors(tmp_path, cli_error, args, needles):
    cli_error(["train", "--method", "scratch", "--out", str(tmp_path / "r"), *TINY_ARGS, *args], *needles)
    assert not (tmp_path / "r").exists()  # nothing written for a run that never started


@pytest.mark.parametrize("value", ["-3", "0"])
def test_materialize_needs_a_positive_class_count(tmp_path, cli_error, value):
    cli_error(["materialize", "paper:alexnet", "--model", "alexnet", "--seed", "0", "--num-classes", value,
               "--out", str(tmp_path / "i.safetensors")], "--num-classes", code=2)


@pytest.mark.parametrize("errno, needle", [(28, "No space left on device"), (13, "Permission denied")])
@pytest.mark.parametrize("command", ["materialize", "train"])
def test_a_full_disk_or_an_unwritable_folder_is_a_one_line_error(tmp_path, monkeypatch, cli_error, errno, needle, command):
    def fail(*args, **kwargs):
        raise OSError(errno, os.strerror(errno))

    monkeypatch.setattr(polarpack._io.os, "fsync", fail)
    args = {"materialize": ["materialize", "paper:alexnet", "--model", "alexnet", "--seed", "0", "--out", str(tmp_path / "i.safetensors")],
            "train": ["train", "--method", "scratch", "--epochs", "1", "--out", str(tmp_path / "r"), *TINY_ARGS]}[command]
    cli_error(args, needle, "free disk space")
    assert not list(tmp_path.rglob("*.tmp")) and not (tmp_path / "i.safetensors").exists()


def test_a_damaged_run_config_in_a_report_is_a_one_line_error(tmp_path, cli_error):
    run = tmp_path / "runs" / "x-12345678"
    run.mkdir(parents=True)
    (run / "config.json").write_text('{"config": {"method": ')
    cli_error(["report", str(tmp_path)], "config.json", "not valid JSON")


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to find the worker processes")
def test_jobs_workers_die_with_their_parent(tmp_path):
    (tmp_path / "g.toml").write_text('[defaults]\nmethod = "scratch"\nepochs = 50\ndataset = "fashion-mnist-mini"\n'
                                     '[grid]\nseeds = [0, 1]\n')
    parent = subprocess.Popen([sys.executable, "-m", "polarpack", "experiment", str(tmp_path / "g.toml"), "--results",
                               str(tmp_path / "res"), "--jobs", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not list((tmp_path / "res").glob("runs/*/config.json")):
            time.sleep(0.5)
        workers = _children(parent.pid)
        assert workers, "no worker processes started"
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.time() + 20
        while time.time() < deadline and any(Path(f"/proc/{w}").exists() and "Z" not in Path(f"/proc/{w}/stat").read_text().split()[2]
                                             for w in workers):
            time.sleep(0.5)
        alive = [w for w in workers if Path(f"/proc/{w}").exists()]
        assert not alive or all(Path(f"/proc/{w}/stat").read_text().split()[2] == "Z" for w in alive), alive
    finally:
        parent.kill()


def test_polarpack_errors_from_library_calls_are_polarpack_errors(tmp_path):
    with pytest.raises(PolarpackError, match="holds a different run|holds this run"):
        train(TrainConfig(method="scratch", epochs=1, **TINY), out=_interrupted(tmp_path), progress=False)


def test_the_pickle_module_is_never_used_on_a_polar_file(tmp_path):
    (tmp_path / "x.polar").write_bytes(pickle.dumps(Payload(str(tmp_path / "marker"))))
    result = CliRunner().invoke(cli, ["inspect", str(tmp_path / "x.polar")])
    assert result.exit_code == 1 and not (tmp_path / "marker").exists()


def test_a_pattern_file_claiming_a_huge_layer_is_checked_without_expanding_it(tmp_path):
    """A single-sign layer needs no bits, so a file can claim 2**40 weights in a few bytes: reading
    it must not allocate them (materializing checks the shape against the model first)."""
    from polarpack.format import Distribution, LayerDistribution, decode, encode

    n = 2**40
    layer = LayerDistribution.from_counts("huge", [0, n, 0], shape=[n], pattern=b"")
    dist = decode(encode(Distribution([layer], granularity="pattern"), "safetensors"))
    assert dist[0].counts == (0, n, 0) and dist[0].pattern == b""
