"""Experiment grids: expansion and identity (grid), the results store (runner), statistics and
comparisons (report). Real runs use torchvision's squeezenet1_1 (0.7 M parameters) on the embedded
data, so a cell takes seconds; the report's arithmetic is checked on run directories written by
hand."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from polarpack_cli.main import cli

from polarpack import format as fmt
from polarpack.errors import ConfigError
from polarpack.experiments.grid import config_hash, defaults, load_experiment
from polarpack.experiments.reporting import (
    aggregate,
    compare,
    compare_each,
    markdown_report,
    report,
)
from polarpack.experiments.runner import ResultsStore, plan, run_experiment
from polarpack.experiments.statistics import t_interval, tost
from polarpack.models import build_model

REPO = Path(__file__).resolve().parents[1]

GRID = """
[experiment]
name = "tinytest"

[defaults]
model = "squeezenet1_1"
dataset = "fashion-mnist-mini"
epochs = 1
batch_size = 50
train_size = 100
val_size = 50
threads = 1

[grid]
methods = ["freeze-spin", "scratch", "fluid-in"]
dists = ["DIST"]
seeds = [0, 1]

[weights]
squeezenet1_1 = ""

[[compare]]
name = "SPIN - scratch"
a = { method = "freeze-spin" }
b = { method = "scratch" }
"""


@pytest.fixture(scope="module")
def grid_file(tmp_path_factory) -> Path:
    """A grid file with a distribution extracted from a fresh squeezenet1_1 (no download needed)."""
    from polarpack.sources.extraction import extract

    root = tmp_path_factory.mktemp("grid")
    fmt.save(extract(build_model("squeezenet1_1")), root / "sq.polar")
    path = root / "tiny.toml"
    path.write_text(GRID.replace("DIST", str(root / "sq.polar")))
    return path


@pytest.fixture(scope="module")
def finished(grid_file, tmp_path_factory) -> tuple[Path, dict]:
    """The grid run once to the end (4 cells run, 2 skipped: no weights for fluid-in)."""
    results = tmp_path_factory.mktemp("results")
    result = run_experiment(load_experiment(grid_file), results, progress=False)
    return results, result.counts


# -- grid ----------------------------------------------------------------------------------------


def test_expansion_is_seed_major_drops_unused_options_and_skips_missing_weights(grid_file):
    exp = load_experiment(grid_file)
    assert [(c.config.method, c.seed) for c in exp.cells] == [
        ("freeze-spin", 0),
        ("scratch", 0),
        ("fluid-in", 0),
        ("freeze-spin", 1),
        ("scratch", 1),
        ("fluid-in", 1),
    ]
    assert exp.cells[1].config.dist is None  # scratch ignores dist: one cell, not one per dist
    assert (
        "needs transferred weights" in exp.cells[2].skip_reason and exp.cells[0].skip_reason is None
    )
    assert all(
        c.run_id.endswith(f"-{c.config.precision}-s{c.seed}-{config_hash(c.config)[:8]}")
        for c in exp.cells
    )


def test_identity_ignores_where_and_how_fast_and_new_neutral_options(grid_file):
    cell = load_experiment(grid_file).cells[0]
    options = cell.config.to_dict()
    moved = {
        **options,
        "data_dir": "/elsewhere",
        "threads": 7,
        "download": True,
        "checkpoint_every": 5,
    }
    assert config_hash(moved) == config_hash(cell.config)
    # a config written before an option existed (the option absent) has the id it has with the
    # option at its default
    assert config_hash({k: v for k, v in options.items() if v != defaults()[k]}) == config_hash(
        cell.config
    )
    assert config_hash({**options, "seed": 5}) != config_hash(cell.config)


@pytest.mark.parametrize(
    "sets, check",
    [
        (["epochs=3"], lambda cells: {c.config.epochs for c in cells} == {3}),
        (["seeds=[4]"], lambda cells: {c.seed for c in cells} == {4}),
        (
            ["grid.zeros=['pin','free']"],
            lambda cells: (
                {c.config.zeros for c in cells if c.config.method == "freeze-spin"}
                == {"pin", "free"}
            ),
        ),
        (
            ["weights.squeezenet1_1=x.pth"],
            lambda cells: all(
                "not found" in c.skip_reason for c in cells if c.config.method == "fluid-in"
            ),
        ),
        # a grid that ran on a GPU is planned and reported anywhere once its precision is pinned
        (
            ["device=cuda", "precision=bf16"],
            lambda cells: {c.config.precision for c in cells} == {"bf16"},
        ),
    ],
)
def test_set_overrides(grid_file, sets, check):
    assert check(load_experiment(grid_file, sets).cells)


@pytest.mark.parametrize(
    "text, message",
    [
        ("[defaults]\nepochz = 3\n", "unknown key 'epochz' in [defaults]"),
        ("[grid]\nseeds = []\n", "empty list"),
        ("[grid\n", "not a TOML experiment file"),
        ("[results]\nx = 1\n", "unknown top-level key"),
        ("[defaults]\nmethod = 'dance'\n", "unknown method"),
        ("[defaults]\nmethod = 'scratch'\nlr = -1.0\n", "--lr must be"),
        ("[[compare]]\nname = 'd'\nmargins = 0.02\n", "unknown key(s) ['margins']"),
        ("[[compare]]\nname = 'd'\na = 'scratch'\n", "'d': a and b must be tables"),
        ("[[compare]]\nmargin = { final_val_acc = '2' }\n", "margin must be a table of numbers"),
        ("[[compare]]\nmargin = { accuracy = 0.02 }\n", "margin must be a table of numbers"),
    ],
)
def test_bad_experiment_files_name_the_file_and_the_key(tmp_path, text, message):
    (tmp_path / "bad.toml").write_text(text)
    with pytest.raises(ConfigError) as info:
        load_experiment(tmp_path / "bad.toml")
    assert "bad.toml" in str(info.value) and message in str(info.value)


# -- runner --------------------------------------------------------------------------------------


def test_a_finished_grid_is_done_and_its_committed_files_alone_count(finished, grid_file, tmp_path):
    results, counts = finished
    assert counts == {"completed": 4, "skipped": 2}
    exp = load_experiment(grid_file)
    assert [p.action for p in plan(exp, ResultsStore(results))] == ["done", "done", "skip"] * 2
    for run in (results / "runs").iterdir():  # what git keeps: config, metrics, summary; no weights
        target = tmp_path / "clone" / "runs" / run.name
        target.mkdir(parents=True)
        for name in ("config.json", "metrics.jsonl", "metrics.csv", "summary.json"):
            (target / name).write_bytes((run / name).read_bytes())
    assert [p.action for p in plan(exp, ResultsStore(tmp_path / "clone"))] == [
        "done",
        "done",
        "skip",
    ] * 2


def test_interrupted_and_failed_cells_resume_and_retry(grid_file, tmp_path):
    exp = load_experiment(grid_file, ["epochs=2", "seeds=[0]"])
    spin, scratch = exp.cells[0], exp.cells[1]

    def stop(cell, outcome):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_experiment(exp, tmp_path, progress=False, on_cell=stop)
    store = ResultsStore(tmp_path)
    store.record_failure(scratch, "it broke")  # as a crashed worker leaves it
    (store.run_dir(spin) / ".model.safetensors.x.tmp").write_bytes(b"left by a killed writer")
    assert [p.action for p in plan(exp, store)][:2] == ["done", "retry"]
    result = run_experiment(exp, tmp_path, progress=False)
    assert result.counts == {"completed": 2, "skipped": 1}
    assert not list(tmp_path.glob("runs/*/.*.tmp"))


def test_a_failed_cell_is_recorded_and_the_cli_exits_1(grid_file, tmp_path):
    text = grid_file.read_text().replace(
        'dists = ["', 'dists = ["paper:alexnet", "'
    )  # 5 conv layers: no fit
    (tmp_path / "g.toml").write_text(text)
    result = CliRunner().invoke(
        cli,
        [
            "experiment",
            str(tmp_path / "g.toml"),
            "--results",
            str(tmp_path / "r"),
            "--set",
            "seeds=[0]",
            "--set",
            "methods=['freeze-spin']",
            "--json",
        ],
    )
    assert result.exit_code == 1, result.output
    runs = json.loads(result.stdout)["runs"]
    failed = [r for r in runs if r["status"] == "failed"]
    assert len(failed) == 1 and "layers" in failed[0]["error"]


def test_one_writer_per_results_folder(grid_file, tmp_path):
    store = ResultsStore(tmp_path)
    with store.lock():
        with pytest.raises(ConfigError, match="another polarpack experiment is writing"):
            run_experiment(load_experiment(grid_file), tmp_path, progress=False)


INTERRUPTED = ["epochs=2", "seeds=[0]", "checkpoint_seconds=0"]


def _interrupted_cell(grid_file: Path, results: Path):
    """The grid's second cell (of two epochs) stopped after its first: (experiment, cell,
    its run folder)."""
    from polarpack.training.loop import train

    exp = load_experiment(grid_file, INTERRUPTED)
    cell = exp.cells[1]
    run_dir = ResultsStore(results).run_dir(cell)

    def stop(row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cell.config, out=run_dir, progress=False, on_epoch=stop)
    return exp, cell, run_dir


def test_a_resume_on_another_kind_of_machine_is_named_and_warned_of(
    grid_file, tmp_path, monkeypatch
):
    """A resume that would straddle two kinds of machine (which the report counts as a kind of
    its own) is named by --dry-run, and the resume warns of it."""
    import torch

    from polarpack.training import runs

    exp, cell, _ = _interrupted_cell(grid_file, tmp_path)
    args = ["experiment", str(grid_file), "--results", str(tmp_path), "--dry-run"]
    args += [x for s in INTERRUPTED for x in ("--set", s)]
    same = CliRunner().invoke(cli, args)
    assert f"resume  {cell.run_id}\n" in same.stdout and "this kind of machine" not in same.stdout
    home = runs.environment(torch.device("cpu"))
    monkeypatch.setattr(runs, "environment", lambda device: {**home, "cpu": "Another CPU"})
    moved = CliRunner().invoke(cli, args)
    kind = runs.machine_kind(home, "cpu")
    assert f"resume  {cell.run_id}  (it computed on {kind}, not on this kind" in moved.stdout
    warned = "another kind of machine than it computed on (" + kind
    with pytest.warns(UserWarning, match=re.escape(warned)):
        run_experiment(exp, tmp_path, progress=False)


def test_a_run_that_computed_on_another_kind_of_machine_can_start_over_instead(
    grid_file, tmp_path, monkeypatch
):
    """--other-machine restart: a cell whose run computed on another kind of machine trains from
    epoch 0 here, its attempt's small files are kept under earlier/ (weights and checkpoint
    gone), and the report names it; the restarted run itself computed on one kind."""
    import torch

    from polarpack.training import runs

    exp, cell, run_dir = _interrupted_cell(grid_file, tmp_path)
    first = runs.load_config(run_dir)
    home = runs.environment(torch.device("cpu"))
    monkeypatch.setattr(runs, "environment", lambda device: {**home, "cpu": "Another CPU"})
    args = ["experiment", str(grid_file), "--results", str(tmp_path), "--dry-run"]
    args += [x for s in INTERRUPTED for x in ("--set", s)] + ["--other-machine", "restart"]
    planned = CliRunner().invoke(cli, args)
    kind = runs.machine_kind(home, "cpu")
    assert f"restart {cell.run_id}  (it computed on {kind}, not on this kind" in planned.stdout

    with pytest.warns(UserWarning, match="starts over from epoch 0 here"):
        result = run_experiment(exp, tmp_path, progress=False, other_machine="restart")
    assert result.ok
    again = runs.load_config(run_dir)
    assert again.environment["cpu"] == "Another CPU" and not again.resumes
    assert again.run_token != first.run_token and len(runs.read_metrics(run_dir)) == 2
    aside = run_dir / runs.EARLIER_DIR / first.run_token
    assert sorted(p.name for p in aside.iterdir()) == sorted(runs.KEPT_FILES)
    [attempt] = runs.earlier_attempts(run_dir)
    assert attempt.epochs == 1 and attempt.saved.run_token == first.run_token

    made = report(grid_file, results=tmp_path, sets=INTERRUPTED)
    assert "Started over from epoch 0 rather than resumed on another kind of machine" in (
        made.markdown
    )
    assert f"to epoch 1 on {kind}" in made.markdown
    [run] = [r for g in made.to_dict()["groups"] for r in g["runs"] if "started_over" in r]
    assert run["machine"] == runs.machine_kind({**home, "cpu": "Another CPU"}, "cpu")


def test_a_seed_that_computed_on_another_kind_of_machine_can_be_left_to_it(
    grid_file, tmp_path, monkeypatch
):
    """--other-machine leave: every unfinished cell of a seed one of whose runs computed on
    another kind of machine is left alone here (the run, and its seed-mate that never started),
    while the other seeds run; --dry-run says so."""
    import torch

    from polarpack.training import runs

    _, cell, run_dir = _interrupted_cell(grid_file, tmp_path)
    home = runs.environment(torch.device("cpu"))
    monkeypatch.setattr(runs, "environment", lambda device: {**home, "cpu": "Another CPU"})
    sets = ["epochs=2", "seeds=[0,1]", "checkpoint_seconds=0"]
    exp = load_experiment(grid_file, sets)
    args = ["experiment", str(grid_file), "--results", str(tmp_path), "--dry-run"]
    args += [x for s in sets for x in ("--set", s)] + ["--other-machine", "leave"]
    planned = CliRunner().invoke(cli, args).stdout
    kind = runs.machine_kind(home, "cpu")
    seed0 = [c.run_id for c in exp.cells if c.seed == 0 and not c.skip_reason]
    assert cell.run_id in seed0 and len(seed0) == 2
    for run_id in seed0:
        assert f"leave   {run_id}  (seed 0 computed on {kind}, not on this kind" in planned
    assert sum(line.startswith("run ") for line in planned.splitlines()) == 2  # seed 1's
    cells = json.loads(CliRunner().invoke(cli, [*args, "--json"]).stdout)["cells"]
    left = {c["run_id"]: c["computed_on"] for c in cells if c["action"] == "leave"}
    assert left == dict.fromkeys(seed0, kind)

    result = run_experiment(exp, tmp_path, progress=False, other_machine="leave")
    store = ResultsStore(tmp_path)
    assert [store.state(c) for c in exp.cells if not c.skip_reason] == [
        "run",
        "resume",
        "done",
        "done",
    ]
    assert len(runs.read_metrics(run_dir)) == 1 and result.ok


def test_a_start_over_killed_half_way_leaves_a_run_to_resume_and_is_done_again(
    grid_file, tmp_path, monkeypatch
):
    """`set_aside` copies before it removes, the training state first: killed after the copies,
    the run still resumes, and the copies are not counted as an earlier attempt until it is
    set aside again."""
    from polarpack.training import runs

    _, cell, run_dir = _interrupted_cell(grid_file, tmp_path)
    store = ResultsStore(tmp_path)
    unlink = Path.unlink

    def killed(path, missing_ok=False):
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "unlink", killed)
    with pytest.raises(KeyboardInterrupt):
        runs.set_aside(run_dir)
    monkeypatch.setattr(Path, "unlink", unlink)
    assert store.state(cell) == "resume" and runs.earlier_attempts(run_dir) == []
    runs.set_aside(run_dir)
    assert store.state(cell) == "run" and len(runs.earlier_attempts(run_dir)) == 1


def test_dry_run_through_the_cli(grid_file, finished):
    results, _ = finished
    result = CliRunner().invoke(
        cli, ["experiment", str(grid_file), "--results", str(results), "--dry-run"]
    )
    assert result.exit_code == 0 and result.stdout.splitlines()[0].startswith("done ")
    as_json = CliRunner().invoke(
        cli, ["experiment", str(grid_file), "--results", str(results), "--dry-run", "--json"]
    )
    cells = json.loads(as_json.stdout)["cells"]
    assert [c["action"] for c in cells] == [line.split()[0] for line in result.stdout.splitlines()]
    assert all(c.keys() == {"run_id", "seed", "method", "reason", "action"} for c in cells)


def test_the_help_says_what_the_threads_and_the_title_are():
    """--jobs divides the cores by the processes of every cell; --title names the report too."""
    jobs = "".join(CliRunner().invoke(cli, ["experiment", "--help"]).output.split())
    assert "threads=max(1,cores//(jobs*nproc-per-run))" in jobs  # click may wrap at a hyphen
    title = " ".join(CliRunner().invoke(cli, ["report", "--help"]).output.split())
    assert "The report's heading and the JSON's name" in title


# -- report --------------------------------------------------------------------------------------


def test_t_interval_by_hand():
    paired = t_interval([0.5, 0.6, 0.7], [0.4, 0.4, 0.5], paired=True)  # differences 0.1, 0.2, 0.2
    half = 4.303 * (math.sqrt(((0.1 - 0.5 / 3) ** 2 + 2 * (0.2 - 0.5 / 3) ** 2) / 2) / math.sqrt(3))
    assert paired.diff == pytest.approx(0.5 / 3)
    assert paired.high - paired.diff == pytest.approx(half, rel=1e-4)
    welch = t_interval([1.0, 2.0, 3.0], [1.0, 1.0, 1.5], paired=False)
    assert welch.test == "Welch t" and welch.df == 2 and welch.low < welch.diff < welch.high
    one = t_interval([0.5], [0.4], paired=True)  # one seed: the difference, no spread, no interval
    assert one.diff == pytest.approx(0.1) and one.low is None and one.high is None
    assert t_interval([0.5], [0.4, 0.3], paired=False).low is None
    assert t_interval([], [0.4], paired=False) is None


def test_tost_by_hand():
    """Differences 0.01, -0.01, 0.0, 0.005, -0.005 (sd 0.0079, se 0.00354, t(4) 95% = 2.132): the
    90% interval [-0.0075, +0.0075] lies inside +-0.02 but not inside +-0.005."""
    a, b = [0.51, 0.49, 0.50, 0.505, 0.495], [0.50] * 5
    inside, outside = tost(a, b, paired=True, margin=0.02), tost(a, b, paired=True, margin=0.005)
    assert inside.equivalent and inside.p_value < 0.05
    assert inside.high == pytest.approx(2.132 * 0.0079057 / math.sqrt(5), rel=1e-3)
    assert not outside.equivalent and outside.low == inside.low
    far = tost([0.6, 0.62, 0.61], [0.5, 0.5, 0.5], paired=True, margin=0.02)
    assert not far.equivalent and far.p_value > 0.5
    assert tost([0.5], [0.4], paired=True, margin=0.02).equivalent is False  # no spread, no test


def _write_run(
    root: Path,
    name: str,
    config: dict,
    accs: list[float],
    status: str = "completed",
    cpu: str = "AVX512",
) -> None:
    run = root / "runs" / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(
        json.dumps(
            {
                "config": {**defaults(), "precision": "fp32", **config},
                "resolved": {"device": "cpu", "num_classes": 10},
                "environment": {"cpu_capability": cpu},
                "run_token": "t",
            }
        )
    )
    (run / "metrics.jsonl").write_text(
        "".join(
            json.dumps({"epoch": i + 1, "train_acc": a, "val_acc": a}) + "\n"
            for i, a in enumerate(accs)
        )
    )
    (run / "summary.json").write_text(json.dumps({"status": status, "final_val_acc": accs[-1]}))


def test_aggregation_and_comparison_by_hand(tmp_path):
    runs = {
        ("freeze-spin", 0): [0.3, 0.45, 0.5],
        ("freeze-spin", 1): [0.35, 0.41, 0.6],
        ("freeze-spin", 2): [0.1, 0.2, 0.3],
        ("scratch", 0): [0.2, 0.3, 0.4],
        ("scratch", 1): [0.25, 0.35, 0.5],
        ("scratch", 2): [0.1, 0.1, 0.12],
    }
    for (method, seed), accs in runs.items():
        config = {
            "method": method,
            "seed": seed,
            "dist": "paper:alexnet" if method != "scratch" else None,
        }
        _write_run(
            tmp_path,
            f"{method}-s{seed}-{seed}",
            config,
            accs,
            cpu="AVX2" if (method, seed) == ("scratch", 2) else "AVX512",
        )
    text = report(tmp_path).markdown
    groups = aggregate(*_cells(tmp_path))
    spin = next(g for g in groups if g.config.method == "freeze-spin")
    assert spin.final_val_mean == pytest.approx(0.4667, abs=1e-4)
    assert spin.final_val_std == pytest.approx(0.1528, abs=1e-4)
    assert spin.mean_curve_crossing == 3  # the mean is 0.353 at epoch 2
    assert spin.epochs_to_threshold is None and spin.never_reached == [2]  # no mean over s2
    assert spin.epochs_to_threshold_per_seed == [2, 2, None]
    assert spin.converged == 3 and spin.dips_mean == 0
    scratch = next(g for g in groups if g.config.method == "scratch")
    assert scratch.converged == 2  # 0.12 < 0.15: hovering at chance does not count
    (c,) = compare(
        groups, [{"name": "d", "a": {"method": "freeze-spin"}, "b": {"method": "scratch"}}]
    )
    # seed 2's pair ran on two kinds of machine: all runs compared unpaired, no seed dropped
    assert c.final_val_acc.test == "Welch t" and c.seeds == []
    assert c.final_val_acc.diff == pytest.approx((0.5 + 0.6 + 0.3) / 3 - (0.4 + 0.5 + 0.12) / 3)
    assert c.pairing == "unpaired: s2 ran a and b on different machines"
    assert c.censored  # scratch's seed 2 never reaches 40%
    same = [r for r in scratch.runs if r.seed != 2]
    (c,) = compare(
        [spin, dataclasses.replace(scratch, runs=same)],
        [{"name": "d", "a": {"method": "freeze-spin"}, "b": {"method": "scratch"}}],
    )
    assert c.seeds == [0, 1] and c.final_val_acc.test == "none (every pair equal)"  # 0.1, 0.1
    assert c.final_val_acc.diff == pytest.approx((0.1 + 0.1) / 2)
    assert not c.censored and c.epochs_to_threshold.diff == -1  # both pairs: epoch 2 vs 3
    # one seed: a single difference without an interval, and the pairing still names its machine
    (c,) = compare(
        [
            dataclasses.replace(spin, runs=spin.runs[:1]),
            dataclasses.replace(scratch, runs=same[:1]),
        ],
        [{"name": "d", "a": {"method": "freeze-spin"}, "b": {"method": "scratch"}}],
    )
    assert c.final_val_acc.diff == pytest.approx(0.1) and c.final_val_acc.low is None
    assert c.pairing == (
        "unpaired (only one seed ran both: cpu AVX512 (CPU model not recorded): s0; "
        "commits unknown: s0)"
    )
    assert "freeze-spin" in text and "| fp32 | 3/3 |" in text
    assert spin.machines == ["cpu AVX512 (CPU model not recorded)"]
    assert text.count("mixed machines: cpu AVX2") == 1  # scratch


def _cells(root: Path):
    from polarpack.experiments.reporting import load_cells

    _, cells, store, _ = load_cells(root)
    return cells, store


def test_report_files_and_a_torn_metrics_line(finished, grid_file, tmp_path):
    results, _ = finished
    out = report(grid_file, results=results, out=tmp_path / "rep")
    assert sorted(Path(f).name for f in out.files) == [
        "figure.png",
        "report.json",
        "report.md",
        "runs.jsonl",
    ]
    assert out.comparisons and out.comparisons[0].name == "SPIN - scratch"
    assert (tmp_path / "rep" / "figure.png").read_bytes()[:4] == b"\x89PNG"
    _write_run(tmp_path / "torn", "x-1", {"method": "scratch"}, [0.2])
    with open(tmp_path / "torn" / "runs" / "x-1" / "metrics.jsonl", "a") as fh:
        fh.write('{"epoch": 2, "val_')
    result = CliRunner().invoke(cli, ["report", str(tmp_path / "torn")])
    assert (
        result.exit_code == 1
        and "line 2 is not valid JSON" in result.output
        and "Traceback" not in result.output
    )


@pytest.mark.parametrize(
    "path",
    sorted(REPO.glob("examples/*.toml")),
    ids=lambda p: p.name,
)
def test_shipped_experiment_files_expand(path, monkeypatch):
    monkeypatch.chdir(path.parents[1])  # their relative paths are written from the repository root
    exp = load_experiment(path)
    assert exp.cells and all(c.skip_reason is None or "weights" in c.skip_reason for c in exp.cells)
    assert all(c.config.precision in ("fp32", "bf16") for c in exp.cells)


def test_comparisons_match_groups_on_every_option_the_methods_use(tmp_path):
    """zeros free - pin pairs each distribution with itself; SPIN - scratch ignores what scratch
    does not use."""
    for dist, accs in (("paper:alexnet", (0.5, 0.4)), ("paper:table1-exp3", (0.3, 0.2))):
        for zeros, acc in zip(("free", "pin"), accs, strict=True):
            for seed in (0, 1):
                _write_run(
                    tmp_path,
                    f"{dist[-4:]}-{zeros}-s{seed}-{dist[-1]}{zeros[0]}{seed}",
                    {"method": "freeze-spin", "dist": dist, "zeros": zeros, "seed": seed},
                    [acc + seed / 100],
                )
    for seed in (0, 1):
        _write_run(
            tmp_path,
            f"scratch-s{seed}-x{seed}",
            {"method": "scratch", "seed": seed},
            [0.1 + seed / 100],
        )
    groups = aggregate(*_cells(tmp_path))
    zeros = compare(groups, [{"a": {"zeros": "free"}, "b": {"zeros": "pin"}}])
    assert sorted((c.a, c.b, round(c.final_val_acc.diff, 6)) for c in zeros) == [
        ("freeze-spin paper:alexnet zeros=free", "freeze-spin paper:alexnet zeros=pin", 0.1),
        (
            "freeze-spin paper:table1-exp3 zeros=free",
            "freeze-spin paper:table1-exp3 zeros=pin",
            0.1,
        ),
    ]
    spin = compare(
        groups, [{"a": {"method": "freeze-spin", "zeros": "pin"}, "b": {"method": "scratch"}}]
    )
    assert sorted(round(c.final_val_acc.diff, 6) for c in spin) == [0.1, 0.3]
    assert {c.b for c in spin} == {
        "scratch"
    }  # labels leave out what a method ignores (its zeros, its dist)
    specs = [
        {"name": "free - pin", "a": {"zeros": "free"}, "b": {"zeros": "pin"}},
        {"name": "typo", "a": {"dist": "paper:alexnt"}, "b": {"method": "scratch"}},
    ]
    per_spec = compare_each(groups, specs)
    assert [len(made) for made in per_spec] == [2, 0]  # "typo" is said, not dropped in silence
    made = [c for m in per_spec for c in m]
    assert "leave out): typo." in markdown_report("x", groups, made, ["typo"])
    unnamed = [{"a": {"zeros": "free"}, "b": {"zeros": "pin"}}, {"a": {"dist": "paper:alexnt"}}]
    assert [len(made) for made in compare_each(groups, unnamed)] == [2, 0]  # names may repeat


def test_a_margin_adds_equivalence_tests_and_empty_selects_unset(tmp_path):
    """[[compare]] margin = {...} gives TOST per measure; `norms = ""` selects the runs without
    norms (TOML has no null); the report names the machines and commits of its runs."""
    accs = {0: 0.50, 1: 0.52, 2: 0.49, 3: 0.51}
    for seed, acc in accs.items():
        _write_run(tmp_path, f"a-s{seed}-a{seed}", {"method": "scratch", "seed": seed}, [acc])
        _write_run(
            tmp_path,
            f"b-s{seed}-b{seed}",
            {"method": "scratch", "seed": seed, "norms": "bn.polar.safetensors"},
            [acc + 0.002 * (-1) ** seed],
        )
    spec = {
        "name": "norms - none",
        "a": {"norms": "bn.polar.safetensors"},
        "b": {"norms": ""},
        "margin": {"final_val_acc": 0.02, "epochs_to_40": 1},
    }
    (c,) = compare(aggregate(*_cells(tmp_path)), [spec])
    assert c.final_val_acc.test == "paired t" and c.seeds == [0, 1, 2, 3]
    assert c.equivalence["final_val_acc"].equivalent
    same = c.equivalence["epochs_to_threshold"]  # all at epoch 1: no spread, so no test
    assert not same.equivalent and same.p_value is None
    table = markdown_report("x", aggregate(*_cells(tmp_path)), [c])
    assert "| +0.0 (no interval: every pair equal) |" in table and "[+0.0, +0.0]" not in table
    assert "±1: no test (every pair equal)" in table
    text = report(tmp_path).markdown
    assert "Runs computed on cpu AVX512 (CPU model not recorded) (8)" in text


def _published_reports() -> list[tuple[str, list[str]]]:
    """The `polarpack report` commands docs/results/README.md gives for the committed reports."""
    import re
    import shlex

    text = (REPO / "docs" / "results" / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            args = shlex.split(line, comments=True)
            if args[:2] == ["polarpack", "report"] and "docs/results/" in line:
                commands.append((args[args.index("--out") + 1], args[2:]))
    return commands


@pytest.fixture(scope="module")
def committed_results(tmp_path_factory) -> Path:
    """A copy of the runs git tracks under results/, without any a grid is writing right now."""
    import shutil
    import subprocess

    try:
        tracked = (
            subprocess.run(
                ["git", "ls-files", "-z", "results"], cwd=REPO, capture_output=True, check=True
            )
            .stdout.decode()
            .split("\0")
        )
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the committed results store is not known")
    root = tmp_path_factory.mktemp("committed")
    for name in filter(None, tracked):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / name, root / name)
    return root / "results"


@pytest.fixture(scope="module")
def beside_the_data(tmp_path_factory) -> Path:
    """A folder to run the committed grid files from: they name the real data `../shared/data`, a
    folder beside the checkout. Here that folder is $POLARPACK_SHARED_DATA wherever it lives: a
    checkout of links to this one, beside a link to the data."""
    import os

    data = os.environ.get("POLARPACK_SHARED_DATA")
    if not data or not Path(data).is_dir():
        return REPO
    root = tmp_path_factory.mktemp("beside")
    (root / "shared").mkdir()
    (root / "shared" / "data").symlink_to(Path(data).resolve())
    (root / "checkout").mkdir()
    for entry in REPO.iterdir():
        (root / "checkout" / entry.name).symlink_to(entry)
    return root / "checkout"


@pytest.mark.parametrize("out, args", _published_reports(), ids=lambda v: str(v))
def test_published_reports_regenerate_from_the_committed_store(
    out, args, committed_results, beside_the_data, tmp_path, monkeypatch
):
    """Every committed report.md is what its documented command computes from results/."""
    monkeypatch.chdir(beside_the_data)
    args = list(args)  # the parameter is shared between runs of the test
    store = args[args.index("--results") + 1]
    args[args.index("--results") + 1] = str(committed_results.parent / store)
    args[args.index("--out") + 1] = str(tmp_path)
    result = CliRunner().invoke(cli, ["report", *args])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "report.md").read_text() == (REPO / out / "report.md").read_text()


def _ladder_figure():
    """examples/ladder_figure.py, which writes the ladder's reports, as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "ladder_figure", REPO / "examples/ladder_figure.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LADDER = _ladder_figure()


@pytest.mark.parametrize("family", LADDER.FAMILIES)
def test_the_ladder_reports_regenerate_from_the_committed_store(
    family, committed_results, beside_the_data, monkeypatch
):
    monkeypatch.chdir(beside_the_data)
    file = REPO / "examples" / LADDER.FAMILIES[family]
    made = report(file, results=committed_results, title=family)
    published = REPO / "docs/results/ladder" / LADDER.folder_name(family) / "report.md"
    assert made.markdown == published.read_text()
    rows = LADDER.markdown(LADDER.family_rows(family, made.groups)).splitlines()[2:]
    table = (REPO / "docs/results/ladder/table.md").read_text().splitlines()
    assert rows and all(row in table for row in rows)  # the ladder table's rows of this family
