"""Grids through submitit (its local executor: separate processes, no cluster needed), the results
store that many writers share, preemption that resumes, the Slurm parameters a command line and a
grid file's [slurm] table give, and the run-folder claim that `train --resume` takes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from polarpack_cli.main import cli

from polarpack.errors import ConfigError
from polarpack.experiments.grid import NOT_HASHED, load_experiment
from polarpack.experiments.reporting import report
from polarpack.experiments.slurm import (
    SlurmOptions,
    executor_parameters,
    grid_status,
    require_submitit,
    sbatch_lines,
    slurm_options,
    submit,
)
from polarpack.experiments.store import ResultsStore
from polarpack.training import claims, runs
from polarpack.training.loop import TrainConfig, train

pytest.importorskip("submitit")

REPO = Path(__file__).resolve().parents[1]
TIMING = {"epoch_seconds", "train_seconds", "images_per_second"}
SMALL = dict(
    model="squeezenet1_1",
    dataset="fashion-mnist-mini",
    train_size=100,
    val_size=50,
    batch_size=50,
    threads=1,
)


def _grid(tmp_path: Path, epochs: int, seeds: list[int], extra: str = "") -> Path:
    """Scratch squeezenet1_1 cells on the embedded data: seconds each."""
    options = "".join(f"{k} = {json.dumps(v)}\n" for k, v in SMALL.items())
    path = tmp_path / "grid.toml"
    path.write_text(
        f'[experiment]\nname = "g"\n[defaults]\nmethod = "scratch"\nepochs = {epochs}\n{options}'
        f"[grid]\nseeds = {seeds}\n{extra}"
    )
    return path


def _runs(results: Path) -> dict[str, tuple[dict, list[dict], str]]:
    """Each run's options (but where and how fast), its metrics (but timing) and status."""
    out = {}
    for run in sorted((results / "runs").iterdir()):
        config = runs.read_config(run)[0]
        rows = [{k: v for k, v in r.items() if k not in TIMING} for r in runs.read_metrics(run)]
        options = {k: v for k, v in config.items() if k not in NOT_HASHED}
        out[run.name] = (options, rows, runs.load_summary(run).status)
    return out


def _wait(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {seconds} s")
        time.sleep(0.05)


# -- the local executor ------------------------------------------------------------------------


@pytest.mark.slow
def test_the_local_executor_runs_tiny_toml_as_the_pool_does(tmp_path):
    grid, one_seed = REPO / "examples" / "tiny.toml", ["--set", "seeds=[0]"]  # 2 cells, 1 skip
    local, pool = tmp_path / "local", tmp_path / "pool"
    args = ["experiment", str(grid), *one_seed, "--results"]
    result = CliRunner().invoke(cli, [*args, str(local), "--executor", "local", "--wait"])
    assert result.exit_code == 0, result.output
    assert "submitted as local job" in result.output and str(local / "slurm") in result.output
    result = CliRunner().invoke(cli, [*args, str(pool)])
    assert result.exit_code == 0, result.output
    assert _runs(local) == _runs(pool) and len(_runs(pool)) == 2
    exp = load_experiment(grid, ["seeds=[0]"])
    assert [s.status for s in grid_status(exp, local)] == ["done", "done", "skipped"]
    tables = [report(grid, results=r, sets=["seeds=[0]"]).markdown for r in (local, pool)]
    assert tables[0] == tables[1] and "| freeze-spin" in tables[0]


def test_two_submitters_of_one_grid_run_each_cell_once(tmp_path):
    grid, results = _grid(tmp_path, epochs=1, seeds=[0, 1]), tmp_path / "res"
    exp = load_experiment(grid)
    assert [s.status for s in grid_status(exp, results)] == ["pending", "pending"]
    with ResultsStore(results).hold(exp.cells[0]):  # a live claim: another process runs it
        assert grid_status(exp, results)[0].status == "running"
    first = submit(exp, results, SlurmOptions(), kind="local")
    second = submit(exp, results, SlurmOptions(), kind="local")  # before any task started
    assert len(first.jobs) == len(second.jobs) == 2
    outcomes = [job.result() for job in first.jobs + second.jobs]
    by_cell = {c.run_id: [] for c in exp.cells}
    for sub in (first, second):
        for cell, job in zip(sub.cells, sub.jobs, strict=True):
            by_cell[cell.run_id].append(job.result().status)
    for statuses in by_cell.values():  # trained once; the other task found it held or done
        assert sorted(statuses)[0] == "completed" and statuses.count("completed") == 1, outcomes
        assert set(statuses) <= {"completed", "held", "done"}
    for run in (results / "runs").iterdir():
        saved = json.loads((run / "config.json").read_text())
        assert len(runs.read_metrics(run)) == 1 and "resumes" not in saved
    assert not list((results / "runs").glob(".*.claim"))  # every claim released
    assert [s.status for s in grid_status(exp, results)] == ["done", "done"]
    assert submit(exp, results, SlurmOptions(), kind="local").cells == []  # nothing pending


def test_a_preempted_task_resumes_its_cell_from_its_last_epoch(tmp_path):
    grid, results = _grid(tmp_path, epochs=6, seeds=[0]), tmp_path / "res"
    exp = load_experiment(grid)
    sub = submit(exp, results, SlurmOptions(), kind="local")
    run = ResultsStore(results).run_dir(exp.cells[0])
    _wait(lambda: len(runs.read_metrics(run)) >= 2, 120, "two epochs")
    task, done = claims.claim_holder(run)["pid"], len(runs.read_metrics(run))  # claim names it
    os.kill(task, signal.SIGUSR2)  # what Slurm sends before it preempts a submitit task
    assert sub.jobs[0].result().status == "completed"
    saved = json.loads((run / "config.json").read_text())
    assert len(runs.read_metrics(run)) == 6 and runs.load_summary(run).epochs_done == 6
    # from the last checkpoint: the epoch done (or the one before, when the signal came between
    # its metrics and its checkpoint), never epoch 0
    assert len(saved["resumes"]) == 1 and saved["resumes"][0]["epoch"] >= max(1, done - 1)
    assert "preempted" in sub.jobs[0].stdout()


def _stopped_after_an_epoch(tmp_path: Path, epochs: int, seeds: list[int]):
    """A grid whose first cell was interrupted after its first epoch (checkpointed there):
    (experiment, results folder, that cell's run folder)."""
    grid, results = _grid(tmp_path, epochs=epochs, seeds=seeds), tmp_path / "res"
    exp = load_experiment(grid, ["checkpoint_seconds=0"])
    run = ResultsStore(results).run_dir(exp.cells[0])

    def stop(row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(exp.cells[0].config, out=run, progress=False, on_epoch=stop)
    return exp, results, run


def test_a_task_on_another_kind_of_node_starts_its_cell_over_when_asked(tmp_path):
    """other_machine restart reaches the task: a cell that computed on another kind of machine
    trains from epoch 0 on the node, its attempt kept under earlier/; leave is refused."""
    exp, results, run = _stopped_after_an_epoch(tmp_path, epochs=2, seeds=[0])
    saved = json.loads((run / "config.json").read_text())
    saved["environment"]["cpu"] = "Another CPU"  # as a run started on another node records it
    (run / "config.json").write_text(json.dumps(saved))
    sub = submit(exp, results, SlurmOptions(), kind="local", other_machine="restart")
    assert sub.jobs[0].result().status == "completed"
    [attempt] = runs.earlier_attempts(run)
    assert attempt.epochs == 1 and attempt.saved.environment["cpu"] == "Another CPU"
    assert "resumes" not in json.loads((run / "config.json").read_text())
    with pytest.raises(ConfigError, match="constraint=FEATURE"):  # only a node knows its kind
        submit(exp, results, SlurmOptions(), kind="local", other_machine="leave")


def test_status_says_how_far_an_unfinished_cell_got(tmp_path):
    exp, results, run = _stopped_after_an_epoch(tmp_path, epochs=3, seeds=[0, 1])
    first, second = grid_status(exp, results)
    assert (first.status, first.detail) == (
        "pending",
        "1 of 3 epochs done, resumes after epoch 1",
    )
    assert (second.status, second.detail) == ("pending", "")
    with ResultsStore(results).hold(exp.cells[0]):
        running = grid_status(exp, results)[0]
    assert running.status == "running" and running.detail.startswith(f"pid {os.getpid()} on ")
    assert running.detail.endswith("; 1 of 3 epochs done, resumes after epoch 1")


def test_a_failing_cell_is_tried_three_times_and_status_shows_why(tmp_path):
    grid = _grid(tmp_path, epochs=1, seeds=[0])  # the paper's AlexNet: 5 conv layers, no fit
    grid.write_text(grid.read_text().replace('"scratch"', '"freeze-spin"\ndist = "paper:alexnet"'))
    results = tmp_path / "res"
    args = ["experiment", str(grid), "--results", str(results)]
    result = CliRunner().invoke(cli, [*args, "--executor", "local", "--wait"])
    assert result.exit_code == 1, result.output
    summary = ResultsStore(results).summary(load_experiment(grid).cells[0])
    assert summary.status == "failed" and summary.attempts == 3
    assert "layers" in summary.error and "failed 3 of 3 tries" in summary.error
    status = CliRunner().invoke(cli, [*args, "--status"]).stdout.splitlines()
    assert status[0].startswith("failed ") and "failed 3 of 3 tries" in status[0]  # its log


# -- parameters --------------------------------------------------------------------------------


def test_slurm_parameters_from_the_table_and_the_command_line(tmp_path):
    table = '[slurm]\npartition = "cpu"\ntime = 60\nmem_gb = 8\naccount = "lab"\n'
    grid = _grid(tmp_path, epochs=1, seeds=[0, 1, 2], extra=table)
    options = slurm_options(grid, ["partition=gpu", "gpus_per_node=2", "array_parallelism=2"])
    assert options == SlurmOptions(
        partition="gpu", time=60, mem_gb=8.0, account="lab", gpus_per_node=2, array_parallelism=2
    )
    params = executor_parameters(options, kind="slurm", nproc=1, name="g")
    assert params["partition"] == "gpu" and params["mem"] == "8GB" and params["time"] == 60
    lines = sbatch_lines(options, nproc=1, name="g", cells=3)
    for line in ("--partition=gpu", "--gpus-per-node=2", "--mem=8GB", "--time=60", "--array=0-2%2"):
        assert f"#SBATCH {line}" in lines, lines
    assert "#SBATCH --account=lab" in lines and "#SBATCH --cpus-per-task=2" in lines
    torchrun = executor_parameters(SlurmOptions(), kind="slurm", nproc=4, name="g")
    assert torchrun["gpus_per_node"] == 4 and torchrun["ntasks_per_node"] == 1
    assert executor_parameters(options, kind="local", nproc=1, name="g")["timeout_min"] == 60
    result = CliRunner().invoke(
        cli,
        ["experiment", str(grid), "--results", str(tmp_path / "r"), "--executor", "slurm"]
        + ["--slurm", "partition=gpu", "--slurm", "time=30", "--dry-run"],
    )
    assert result.exit_code == 0, result.output
    assert "partition=gpu" in result.stdout and "#SBATCH --time=30" in result.stdout
    assert result.stdout.count("submit  ") == 3 and not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "given, needle",
    [
        (["walltime=5"], "unknown scheduler option 'walltime'"),
        (["time=soon"], "time = 'soon' must be a positive number"),
        (["cpus_per_task=0"], "cpus_per_task = 0 must be a positive number"),
        (["partition"], "expected KEY=VALUE"),
    ],
)
def test_bad_slurm_options_are_one_line_errors(tmp_path, cli_error, given, needle):
    grid = _grid(tmp_path, epochs=1, seeds=[0])
    args = ["experiment", str(grid), "--executor", "slurm", "--dry-run"]
    cli_error([*args, *(x for g in given for x in ("--slurm", g))], needle)
    (tmp_path / "t.toml").write_text(grid.read_text() + '[slurm]\ntime = "an hour"\n')
    with pytest.raises(ConfigError, match=r"t.toml \[slurm\]: time = 'an hour'"):
        slurm_options(tmp_path / "t.toml")


def test_without_submitit_the_error_names_the_extra(tmp_path, monkeypatch, cli_error):
    monkeypatch.setitem(sys.modules, "submitit", None)
    with pytest.raises(ConfigError, match=r'pip install "polarpack\[slurm\]"'):
        require_submitit()
    grid = _grid(tmp_path, epochs=1, seeds=[0])
    cli_error(["experiment", str(grid), "--executor", "local"], "polarpack[slurm]")


# -- the run-folder claim ----------------------------------------------------------------------


def test_a_second_resume_of_a_held_run_is_refused_and_a_crash_releases_it(tmp_path):
    run = tmp_path / "run"

    def stop(row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(
            TrainConfig(method="scratch", epochs=1000, **SMALL),
            out=run,
            progress=False,
            on_epoch=stop,
        )
    cmd = [sys.executable, "-m", "polarpack", "train", "--quiet", "--resume", str(run)]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        claim = claims.claim_file(run)
        _wait(
            lambda: claim.exists() and f'"pid": {first.pid}' in claim.read_text(),
            120,
            "the first resume's claim",
        )
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert second.returncode == 1, second.stderr
        error = second.stderr.strip().splitlines()
        assert len(error) == 1 and str(run) in error[0] and "another process holds" in error[0]
        assert f"pid {first.pid}" in error[0]
    finally:
        first.send_signal(signal.SIGKILL)  # a crash: no cleanup runs
        first.wait()
    assert claims.claim_holder(run) is None  # a dead process's claim is stale at once
    with claims.hold(run):
        assert json.loads(claim.read_text())["pid"] == os.getpid()
    assert not claim.exists()


def test_a_run_named_by_another_path_has_the_same_claim(tmp_path, monkeypatch):
    run = tmp_path / "r"
    run.mkdir()
    (tmp_path / "link").symlink_to(run)
    monkeypatch.chdir(run)
    other = {"token": "x", "host": "elsewhere", "pid": 1, "job": "7_1", "since": 0}
    claims.claim_file(run).write_text(json.dumps(other))  # a live holder on another node
    for name in (".", "../r", tmp_path / "link"):
        assert claims.claim_file(name) == claims.claim_file(run)
        with pytest.raises(claims.RunHeld), claims.hold(name):
            pass


def test_a_claim_is_reentrant_and_refuses_another_holder(tmp_path):
    run = tmp_path / "r"
    with claims.hold(run) as token:
        with claims.hold(run) as again:
            assert again == token
        assert claims.claim_file(run).exists()  # the outer hold still has it
        holder = claims.claim_holder(run)
        assert holder["pid"] == os.getpid() and holder["token"] == token
    other = {"token": "x", "host": "elsewhere", "pid": 1, "job": "7_1", "since": 0}
    claims.claim_file(run).write_text(json.dumps(other))  # a live holder on another node
    with pytest.raises(claims.RunHeld, match="another process holds this run.*Slurm job 7_1"):
        with claims.hold(run):
            pass
    with claims.hold(run, job="7_1"):  # the same Slurm task, requeued: takes its claim back
        assert json.loads(claims.claim_file(run).read_text())["job"] == "7_1"
    claims.claim_file(run).write_text(json.dumps(other))
    old = time.time() - claims.CLAIM_STALE_SECONDS - 1
    os.utime(claims.claim_file(run), (old, old))  # no heartbeat for too long: stale
    with claims.hold(run):
        pass
    assert not claims.claim_file(run).exists()
