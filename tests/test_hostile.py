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
from polarpack_cli.main import cli

import polarpack._io
from polarpack.errors import PolarpackError
from polarpack.training.loop import STATE_FILE, TrainConfig, train


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
    for args in (
        ["extract", str(weights), "--out", str(tmp_path / "d.polar")],
        ["extract", f"hf://me/w/{name}", "--out", str(tmp_path / "d.polar"), "--endpoint", hub.url],
        [
            "train",
            "--method",
            "freeze-in",
            "--weights",
            str(weights),
            "--epochs",
            "1",
            "--out",
            str(tmp_path / "r"),
            *TINY_ARGS,
        ],
    ):
        result = runner.invoke(cli, args)
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert not marker.exists(), args
    (tmp_path / "g.toml").write_text(
        f'[defaults]\nmethod = "fluid-in"\nepochs = 1\ndataset = "fashion-mnist-mini"\n'
        f'[weights]\nalexnet = "{weights}"\n'
    )
    result = runner.invoke(
        cli, ["experiment", str(tmp_path / "g.toml"), "--results", str(tmp_path / "res"), "--json"]
    )
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
        train(
            TrainConfig(method="scratch", epochs=2, checkpoint_seconds=0, **TINY),
            out=tmp_path,
            progress=False,
            on_epoch=stop,
        )
    return tmp_path


def _within_epoch(run: Path, progress) -> None:
    """Give the training state a progress record within an epoch (as a checkpoint between
    optimizer steps holds one)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(run / STATE_FILE), framework="pt") as fh:
        meta = json.loads(fh.metadata()["polarpack"])
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    meta["within_epoch"] = progress
    save_file(tensors, str(run / STATE_FILE), metadata={"polarpack": json.dumps(meta)})


@pytest.mark.parametrize(
    "damage, needles",
    [
        (lambda d: (d / STATE_FILE).write_bytes(b""), [STATE_FILE, "damaged", "--overwrite"]),
        (lambda d: _within_epoch(d, {"steps": -1}), [STATE_FILE, "damaged", "another shape"]),
        (
            lambda d: _within_epoch(
                d,
                dict.fromkeys(("steps", "correct", "seen", "fluid_flips", "resets"), 1)
                | dict.fromkeys(("loss_sum", "train_seconds", "epoch_seconds"), 1.0),
            ),  # its random states are missing
            [STATE_FILE, "damaged", "another shape"],
        ),
        (
            lambda d: (d / STATE_FILE).write_bytes((d / STATE_FILE).read_bytes()[:1000]),
            [STATE_FILE, "damaged"],
        ),
        (
            lambda d: (d / "summary.json").write_text('{"status": "runn'),
            ["summary.json", "not valid JSON"],
        ),
        (
            lambda d: (d / "summary.json").write_text(
                '{"status": "completed", "run_token": "another"}'
            ),
            ["belongs to another run"],
        ),
        (lambda d: (d / "config.json").write_text("{"), ["config.json", "not valid JSON"]),
    ],
)
def test_resume_of_damaged_or_mixed_run_files_is_a_one_line_error(
    tmp_path, cli_error, damage, needles
):
    run = _interrupted(tmp_path)
    damage(run)
    cli_error(["train", "--resume", str(run), "--quiet"], *needles)


def test_a_run_token_that_is_a_path_never_names_the_folder_a_start_over_writes(tmp_path):
    """set_aside keeps an attempt under earlier/<run token>/: a config.json whose token climbs
    out of the run folder is refused, and nothing is written or removed."""
    from polarpack.training import runs

    run = _interrupted(tmp_path)
    saved = json.loads((run / "config.json").read_text())
    saved["run_token"] = "../../escaped"
    (run / "config.json").write_text(json.dumps(saved))
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(
        PolarpackError, match="run_token '../../escaped' is not one polarpack wrote"
    ):
        runs.set_aside(run)
    assert sorted(p.name for p in run.iterdir()) == before
    assert not (tmp_path / "escaped").exists() and not (run.parent.parent / "escaped").exists()


def test_resume_removes_a_killed_writers_temporary_files(tmp_path):
    run = _interrupted(tmp_path)
    (run / ".training_state.safetensors.x1.tmp").write_bytes(b"\0" * 1000)
    assert train(resume=run, progress=False).status == "completed" and not list(run.glob(".*.tmp"))


@pytest.mark.parametrize(
    "args, needles",
    [
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
    ],
)
def test_bad_training_options_are_one_line_errors(tmp_path, cli_error, args, needles):
    cli_error(
        ["train", "--method", "scratch", "--out", str(tmp_path / "r"), *TINY_ARGS, *args], *needles
    )
    assert not (tmp_path / "r").exists()  # nothing written for a run that never started


@pytest.mark.parametrize("value", ["-3", "0"])
def test_materialize_needs_a_positive_class_count(tmp_path, cli_error, value):
    cli_error(
        [
            "materialize",
            "paper:alexnet",
            "--model",
            "alexnet",
            "--seed",
            "0",
            "--num-classes",
            value,
            "--out",
            str(tmp_path / "i.safetensors"),
        ],
        "--num-classes",
        code=2,
    )


@pytest.mark.parametrize(
    "errno, needle", [(28, "No space left on device"), (13, "Permission denied")]
)
@pytest.mark.parametrize("command", ["materialize", "train"])
def test_a_full_disk_or_an_unwritable_folder_is_a_one_line_error(
    tmp_path, monkeypatch, cli_error, errno, needle, command
):
    def fail(*args, **kwargs):
        raise OSError(errno, os.strerror(errno))

    monkeypatch.setattr(polarpack._io.os, "fsync", fail)
    args = {
        "materialize": [
            "materialize",
            "paper:alexnet",
            "--model",
            "alexnet",
            "--seed",
            "0",
            "--out",
            str(tmp_path / "i.safetensors"),
        ],
        "train": [
            "train",
            "--method",
            "scratch",
            "--epochs",
            "1",
            "--out",
            str(tmp_path / "r"),
            *TINY_ARGS,
        ],
    }[command]
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


needs_proc = pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="needs /proc to find the worker processes"
)


def _workers(pid: int) -> list[int]:
    """The grid's worker processes: its children but multiprocessing's resource tracker."""
    found = []
    for child in _children(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"resource_tracker" not in cmdline:
            found.append(child)
    return found


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _parallel_grid(tmp_path: Path, started: str) -> subprocess.Popen:
    """`polarpack experiment --jobs 2` on two long cells, returned once both have written
    `started` (a run file's name); fails the test when they never do."""
    (tmp_path / "g.toml").write_text(
        '[defaults]\nmethod = "scratch"\nepochs = 50\ndataset = "fashion-mnist-mini"\n'
        "[grid]\nseeds = [0, 1]\n"
    )
    cmd = [
        sys.executable,
        "-m",
        "polarpack",
        "experiment",
        str(tmp_path / "g.toml"),
        "--results",
        str(tmp_path / "res"),
        "--jobs",
        "2",
    ]
    parent = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while len(list((tmp_path / "res").glob(f"runs/*/{started}"))) < 2:
        if time.time() > deadline or parent.poll() is not None:
            parent.kill()
            pytest.fail(f"the grid's two cells did not both write {started} (exit {parent.poll()})")
        time.sleep(0.2)
    return parent


@needs_proc
def test_jobs_workers_die_with_their_parent(tmp_path):
    parent = _parallel_grid(tmp_path, "config.json")
    try:
        workers = _children(parent.pid)
        assert workers, "no worker processes started"
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.time() + 20
        while time.time() < deadline and any(
            Path(f"/proc/{w}").exists()
            and "Z" not in Path(f"/proc/{w}/stat").read_text().split()[2]
            for w in workers
        ):
            time.sleep(0.5)
        alive = [w for w in workers if Path(f"/proc/{w}").exists()]
        assert not alive or all(
            Path(f"/proc/{w}/stat").read_text().split()[2] == "Z" for w in alive
        ), alive
    finally:
        parent.kill()


def test_polarpack_errors_from_library_calls_are_polarpack_errors(tmp_path):
    with pytest.raises(PolarpackError, match="holds a different run|holds this run"):
        train(
            TrainConfig(method="scratch", epochs=1, **TINY),
            out=_interrupted(tmp_path),
            progress=False,
        )


def test_the_pickle_module_is_never_used_on_a_polar_file(tmp_path):
    (tmp_path / "x.polar").write_bytes(pickle.dumps(Payload(str(tmp_path / "marker"))))
    result = CliRunner().invoke(cli, ["inspect", str(tmp_path / "x.polar")])
    assert result.exit_code == 1 and not (tmp_path / "marker").exists()


def test_a_pattern_file_claiming_a_huge_layer_is_checked_without_expanding_it(
    tmp_path, monkeypatch
):
    """A single-sign layer needs no bits, so a file can claim 2**40 weights in a few bytes: reading
    it must not allocate them (materializing checks the shape against the model first). The layer
    limit refuses it by default (test_hostile_format); raised, the file reads."""
    from polarpack.format import Distribution, LayerDistribution, decode, encode

    monkeypatch.setenv("POLARPACK_MAX_LAYER_BYTES", str(2**40))
    n = 2**40
    layer = LayerDistribution.from_counts("huge", [0, n, 0], shape=[n], pattern=b"")
    dist = decode(encode(Distribution([layer], granularity="pattern"), "safetensors"))
    assert dist[0].counts == (0, n, 0) and dist[0].pattern == b""


# -- only regular files, bounded time ------------------------------------------------------------


@pytest.fixture
def deadline():
    """Fail (instead of hanging or filling memory) when a command runs past its seconds."""

    def expire(signum, frame):
        raise TimeoutError("the command did not return in time")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _zero(path: Path) -> Path:
    path.symlink_to("/dev/zero")
    return path


@pytest.mark.parametrize("make", [_fifo, _zero], ids=["fifo", "dev-zero"])
@pytest.mark.parametrize("command", ["extract", "train", "materialize", "inspect"])
def test_only_regular_files_are_read(tmp_path, cli_error, deadline, make, command):
    weights, polar = make(tmp_path / "x.pth"), make(tmp_path / "x.polar")
    args = {
        "extract": ["extract", str(weights), "--out", str(tmp_path / "a.polar")],
        "train": [
            "train",
            "--method",
            "freeze-in",
            "--weights",
            str(weights),
            "--out",
            str(tmp_path / "r"),
            *TINY_ARGS,
        ],
        "materialize": [
            "materialize",
            str(polar),
            "--model",
            "alexnet",
            "--seed",
            "0",
            "--out",
            str(tmp_path / "i.safetensors"),
        ],
        "inspect": ["inspect", str(polar)],
    }[command]
    kind = "a FIFO" if make is _fifo else "a character device"
    cli_error(args, kind, "regular files")


@pytest.mark.parametrize("what", ["config", "experiment", "summary", "metrics"])
def test_run_and_experiment_files_must_be_regular_files(tmp_path, cli_error, deadline, what):
    grid = tmp_path / "g.toml"
    grid.write_text(
        '[defaults]\nmethod = "scratch"\nepochs = 1\ndataset = "fashion-mnist-mini"\n'
        "train_size = 200\nval_size = 100\n"
    )
    if what == "config":
        cli_error(["train", "--config", str(_fifo(tmp_path / "c.json"))], "a FIFO")
    elif what == "experiment":
        cli_error(["experiment", str(_fifo(tmp_path / "e.toml"))], "a FIFO")
    else:
        results = tmp_path / "res"
        ran = CliRunner().invoke(cli, ["experiment", str(grid), "--results", str(results)])
        assert ran.exit_code == 0, ran.output
        (run,) = (results / "runs").iterdir()
        target = run / ("summary.json" if what == "summary" else "metrics.jsonl")
        target.unlink()
        (_fifo if what == "summary" else _zero)(target)
        kind = "a FIFO" if what == "summary" else "a character device"
        cli_error(["report", str(results)], kind)
        if what == "summary":
            _grid_error(["experiment", str(grid), "--results", str(results)], kind)


def test_an_npz_zip_bomb_is_refused_before_it_expands(tmp_path, cli_error, deadline):
    bomb = tmp_path / "bomb.npz"
    np.savez_compressed(bomb, **{"conv1.weight": np.zeros((40_000_000,), dtype=np.float32)})
    cli_error(["extract", str(bomb), "--out", str(tmp_path / "a.polar")], "zip bomb", "16:1")


def _grid_error(args: list[str], *needles: str) -> None:
    """`experiment` says what it is about to run on one line, then fails with one line."""
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("Error: ") and all(n in last for n in needles), last


# -- the results lock, run directories, the disk --------------------------------------------------


def test_the_results_lock_never_follows_a_symlink(tmp_path, cli_error):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / "res").mkdir()
    (tmp_path / "res" / ".lock").symlink_to(victim)
    (tmp_path / "g.toml").write_text('[defaults]\nmethod = "scratch"\nepochs = 1\n')
    _grid_error(
        ["experiment", str(tmp_path / "g.toml"), "--results", str(tmp_path / "res")],
        ".lock",
        "symbolic link",
    )
    assert victim.read_text() == "precious\n"


def test_a_folder_holding_other_files_is_never_a_run_directory(tmp_path, cli_error):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "model.safetensors").write_text("x\n")
    args = [
        "train",
        "--method",
        "scratch",
        "--epochs",
        "1",
        "--out",
        str(tmp_path / "d"),
        *TINY_ARGS,
    ]
    cli_error(args, "not a polarpack run", "model.safetensors")
    cli_error([*args, "--overwrite"], "not a polarpack run")
    assert (tmp_path / "d" / "model.safetensors").read_text() == "x\n"


def test_a_disk_that_fills_during_a_checkpoint_keeps_the_previous_one(
    tmp_path, monkeypatch, cli_error
):
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    import polarpack.training.runs

    calls = []

    def fill_up(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) > 2:  # the first checkpoint (state, then weights) fits, the second does not
            raise SafetensorError("Error while serializing: No space left on device (os error 28)")
        save_file(tensors, filename, metadata=metadata)

    monkeypatch.setattr(polarpack.training.runs, "save_file", fill_up)
    run = tmp_path / "r"
    cli_error(
        [
            "train",
            "--method",
            "scratch",
            "--epochs",
            "3",
            "--checkpoint-seconds",
            "0",
            "--out",
            str(run),
            *TINY_ARGS,
        ],
        "No space left on device",
        "bytes are free",
        "--resume",
    )
    assert json.loads((run / "summary.json").read_text())["status"] == "running"
    assert not list(run.glob(".*")) and (run / STATE_FILE).exists()
    monkeypatch.undo()
    result = train(resume=run, progress=False)  # the previous checkpoint (epoch 1) carries on
    assert result.status == "completed" and [r["epoch"] for r in result.metrics] == [1, 2, 3]


def test_resume_removes_the_temporary_files_of_safetensors_itself(tmp_path):
    run = _interrupted(tmp_path)
    (run / ".tmpAbC123").write_bytes(b"\0" * 1000)  # what a writer killed in save_file leaves
    assert train(resume=run, progress=False).status == "completed"
    assert not list(run.glob(".tmp*"))
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "results/runs/x/.tmpAbC123"],
        cwd=Path(__file__).parents[1],
        check=False,
    )
    assert ignored.returncode in (0, 128)  # ignored (128: not a git checkout)


@pytest.mark.parametrize(
    "damage, needles",
    [
        (lambda d: (d / "metrics.jsonl").unlink(), ["summary.json says 1 epochs", "metrics.jsonl"]),
        (
            lambda d: (d / "summary.json").unlink() or (d / "metrics.jsonl").write_text(""),
            ["training_state.safetensors is at epoch 1", "holds 0 epochs"],
        ),
    ],
)
def test_resume_refuses_files_that_disagree_on_the_epoch(tmp_path, cli_error, damage, needles):
    run = _interrupted(tmp_path)
    damage(run)
    cli_error(["train", "--resume", str(run), "--quiet"], *needles, "the files disagree")


def test_resume_takes_no_other_options_and_no_edited_config(tmp_path, cli_error):
    run = _interrupted(tmp_path)
    cli_error(
        ["train", "--resume", str(run), "--epochs", "5"], "--epochs", "takes no others", code=2
    )
    saved = json.loads((run / "config.json").read_text())
    saved["config"]["epochs"] = 9
    (run / "config.json").write_text(json.dumps(saved))
    cli_error(["train", "--resume", str(run), "--quiet"], "was edited after the run started")


# -- what reaches the terminal --------------------------------------------------------------------

NASTY = "\x1b]0;owned\x07\rError: fake\x1b[2J"


def test_control_characters_from_files_are_shown_escaped(tmp_path):
    """Layer names and file names from files reach the terminal escaped: no OSC title, no bell,
    no fake 'Error:' line at the start of a line."""
    from polarpack.format import Distribution, LayerDistribution, save

    layers = [LayerDistribution(f"conv{i}{NASTY}", 0.0, 0.5, 0.5) for i in range(1, 6)]
    polar = save(Distribution(layers), tmp_path / f"five{NASTY[:7]}.polar")
    three = save(Distribution(layers[:3]), tmp_path / f"three{NASTY[:7]}.polar")
    runner = CliRunner()
    materialize = [
        "materialize",
        str(polar),
        "--model",
        "alexnet",
        "--seed",
        "0",
        "--out",
        str(tmp_path / "i.safetensors"),
    ]
    grid = tmp_path / "g.toml"
    dists = json.dumps([str(polar), str(three)])  # TOML takes JSON's \u escapes
    grid.write_text(
        '[defaults]\nmethod = "freeze-spin"\nepochs = 1\ndataset = "fashion-mnist-mini"\n'
        f"train_size = 200\nval_size = 100\n[grid]\ndists = {dists}\n"
    )
    results = ["--results", str(tmp_path / "res")]
    outputs = [
        runner.invoke(cli, args).output
        for args in (
            materialize,
            ["experiment", str(grid), *results],
            ["report", str(grid), *results],
        )
    ]
    assert "conv1" in outputs[0] and "failed:" in outputs[1] and "three" in outputs[2]
    for output in outputs:
        assert "\x1b" not in output and "\x07" not in output, output
        assert not any(line.startswith("Error: fake") for line in output.splitlines())


# -- JSON of the wrong shape ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, needles",
    [
        ({"layer_map": 5}, ["--layer-map must be a mapping"]),
        ({"model": 5}, ["--model must be a string"]),
        ({"save_init": "no"}, ["--save-init must be true or false"]),
        ({"epochs": 2.5}, ["--epochs must be an integer"]),
        ([], ["expected a JSON object"]),
    ],
)
def test_a_config_file_of_the_wrong_shape_is_a_one_line_error(
    tmp_path, cli_error, options, needles
):
    (tmp_path / "c.json").write_text(json.dumps(options))
    cli_error(
        ["train", "--config", str(tmp_path / "c.json"), "--out", str(tmp_path / "r")], *needles
    )
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "file, text, needles",
    [
        ("config.json", "[]", ["config.json", "not a polarpack run config"]),
        ("config.json", '{"config": 5, "run_token": "t"}', ["not a polarpack run config"]),
        ("summary.json", "[]", ["summary.json", "not a run summary"]),
    ],
)
def test_run_files_of_the_wrong_shape_are_one_line_errors(tmp_path, cli_error, file, text, needles):
    run = _interrupted(tmp_path / "r")
    (run / file).write_text(text)
    cli_error(["train", "--resume", str(run), "--quiet"], *needles)
    store = tmp_path / "store"
    (store / "runs").mkdir(parents=True)
    (store / "runs" / "x-12345678").symlink_to(run, target_is_directory=True)
    cli_error(["report", str(store)], *needles[-1:])


def test_a_training_state_of_the_wrong_shape_is_a_one_line_error(tmp_path, cli_error):
    from safetensors.torch import load_file, save_file

    run = _interrupted(tmp_path)
    tensors = load_file(str(run / STATE_FILE))
    save_file(tensors, str(run / STATE_FILE), metadata={"polarpack": json.dumps({"epoch": 1})})
    cli_error(["train", "--resume", str(run), "--quiet"], STATE_FILE, "damaged", "another shape")


def test_a_grid_whose_summary_has_the_wrong_shape_is_a_one_line_error(tmp_path, cli_error):
    grid = tmp_path / "g.toml"
    grid.write_text('[defaults]\nmethod = "scratch"\nepochs = 1\n')
    run = tmp_path / "res" / "runs" / "x"
    from polarpack.experiments.grid import load_experiment

    (cell,) = load_experiment(grid).cells
    run = tmp_path / "res" / "runs" / cell.run_id
    run.mkdir(parents=True)
    (run / "summary.json").write_text("[]")
    _grid_error(["experiment", str(grid), "--results", str(tmp_path / "res")], "not a run summary")


# -- smaller things -------------------------------------------------------------------------------


def test_materialize_never_overwrites_its_input(tmp_path, cli_error):
    from polarpack.format import save
    from polarpack.sources.presets import get_preset

    polar = save(get_preset("paper:alexnet").distribution, tmp_path / "x.polar.safetensors")
    before = polar.read_bytes()
    cli_error(
        ["materialize", str(polar), "--model", "alexnet", "--seed", "0", "--out", str(polar)],
        "is the distribution file REF itself",
    )
    assert polar.read_bytes() == before


def test_a_huge_image_size_is_refused_before_anything_is_allocated(tmp_path, cli_error, deadline):
    base = [
        "train",
        "--method",
        "scratch",
        "--model",
        "zfnet",
        "--geometry",
        "imagenet",
        "--out",
        str(tmp_path / "r"),
        *TINY_ARGS,
    ]
    cli_error([*base, "--image-size", "4096"], "--image-size must be an integer in [8, 1024]")
    cli_error(
        [*base, "--image-size", "1024", "--batch-size", "100000", "--eval-batch-size", "100000"],
        "GiB for its input alone",
        "--batch-size",
    )
    assert not (tmp_path / "r").exists()


def test_a_checkpoint_named_like_a_distribution_is_read_as_weights(tmp_path, alexnet_weights):
    import torch
    from safetensors.torch import load_file

    weights = tmp_path / "alexnet.polarity-study.pth"
    torch.save(load_file(str(alexnet_weights)), weights)
    result = train(
        TrainConfig(method="freeze-in", weights=str(weights), epochs=1, **TINY),
        out=tmp_path / "r",
        progress=False,
    )
    assert result.status == "completed"


@needs_proc
def test_interrupting_a_parallel_grid_stops_its_cells_at_once(tmp_path, ctrl_c):
    from filelock import FileLock

    from polarpack.experiments.runner import STOP_GRACE_SECONDS

    parent = _parallel_grid(tmp_path, "metrics.jsonl")
    try:
        workers = _workers(parent.pid)
        assert len(workers) == 2, workers
        parent.send_signal(signal.SIGINT)  # to the parent alone, as `kill -INT` does
        started = time.time()
        parent.wait(timeout=120)
        # bounded by the grace period and a kill, not by the cells (minutes of work each)
        assert time.time() - started < STOP_GRACE_SECONDS + 25
        with FileLock(tmp_path / "res" / ".lock", timeout=0):
            pass  # released
        deadline = time.time() + 30
        while any(_running(w) for w in workers) and time.time() < deadline:
            time.sleep(0.1)
        assert not [w for w in workers if _running(w)]
        from polarpack.training.claims import claim_holder

        assert not [r for r in (tmp_path / "res" / "runs").iterdir() if claim_holder(r)]
    finally:
        parent.kill()
