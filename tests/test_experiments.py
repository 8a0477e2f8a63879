"""Experiment grids: expansion, the results store, resume, failures, skips, report and figure.

One small grid on the embedded fashion-mnist-mini data (tiny sizes, 2 epochs, 1 thread) is run
once per module, interrupted after its first run and resumed; the tests read what it left. It uses
torchvision's squeezenet1_1 (0.7 M parameters) with a distribution extracted from a fresh instance:
the paper's AlexNet (21 M parameters, 250 MB of checkpoint per epoch) would take most of the
60-second budget on a loaded 2-core machine for the same coverage.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from polarpack import experiments as ex
from polarpack.errors import ConfigError

TINY = """
[experiment]
name = "tinytest"

[defaults]
model = "squeezenet1_1"
dataset = "fashion-mnist-mini"
epochs = 2
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

[[include]]
method = "freeze-spin"
dist = "BAD"
seed = 0
"""


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """Run the tiny grid: stop it (KeyboardInterrupt) after the first finished cell, then rerun."""
    root = tmp_path_factory.mktemp("grid")
    bad = root / "bad.polar"
    bad.write_text("this is not a polar file")
    path = root / "tiny.toml"
    import torchvision

    from polarpack import format as fmt
    from polarpack.extract import extract

    dist = root / "squeeze.polar"
    fmt.save(extract(torchvision.models.squeezenet1_1(num_classes=10)), dist)
    path.write_text(TINY.replace("BAD", str(bad)).replace("DIST", str(dist)))
    results = root / "results"
    exp = ex.load_experiment(path)
    seen = []

    def stop_after_first(cell, outcome):
        seen.append((cell.run_id, outcome["status"]))
        raise KeyboardInterrupt

    first = ex.run_experiment(exp, results, jobs=1, progress=False, on_cell=stop_after_first)
    first_id = seen[0][0]
    metrics = results / "runs" / first_id / "metrics.jsonl"
    before = (metrics.stat().st_mtime_ns, metrics.read_bytes())
    order = []
    second = ex.run_experiment(ex.load_experiment(path), results, jobs=1, progress=False,
                               on_cell=lambda c, o: order.append(c.run_id))
    return {"path": path, "results": results, "exp": exp, "first": first, "second": second,
            "first_id": first_id, "before": before, "rerun": order}


def test_expansion_is_seed_major_dedupes_and_skips(grid):
    exp = grid["exp"]
    seeds = [c.seed for c in exp.cells]
    assert seeds == sorted(seeds)  # seed-major
    methods = [c.config["method"] for c in exp.cells]
    # scratch / fluid-in do not take a dist: one cell each per seed, dist dropped
    assert methods.count("scratch") == 2 and methods.count("fluid-in") == 2
    assert all(c.config["dist"] is None for c in exp.cells if c.config["method"] != "freeze-spin")
    skipped = [c for c in exp.cells if c.skip_reason]
    assert [c.config["method"] for c in skipped] == ["fluid-in", "fluid-in"]
    assert "weights" in skipped[0].skip_reason and "squeezenet1_1" in skipped[0].skip_reason
    assert len(exp.cells) == 7  # 3 methods x 2 seeds + the include
    # run ids: readable and stable
    again = ex.load_experiment(grid["path"])
    assert [c.run_id for c in again.cells] == [c.run_id for c in exp.cells]
    assert exp.cells[0].run_id.startswith("squeezenet1_1-fashion_mnist_mini-freeze_spin-squeeze-epochs_2-zeros_pin-s0-")


def test_resume_does_not_repeat_finished_runs(grid):
    assert grid["first"].interrupted
    metrics = grid["results"] / "runs" / grid["first_id"] / "metrics.jsonl"
    assert (metrics.stat().st_mtime_ns, metrics.read_bytes()) == grid["before"]
    assert grid["first_id"] not in grid["rerun"]
    counts = grid["second"].counts
    assert counts == {"completed": 4, "skipped": 2, "failed": 1}
    assert not grid["second"].interrupted


def test_failed_cell_recorded_and_grid_continues(grid):
    records = ex.ResultsStore(grid["results"]).records()
    failed = [r for r in records.values() if r["status"] == "failed"]
    assert len(failed) == 1 and "bad.polar" in failed[0]["error"]
    # the failing include is the last seed-0 cell; the seed-1 cells after it completed
    skipped = [r for r in records.values() if r["status"] == "skipped"]
    assert all("needs transferred weights" in r["reason"] for r in skipped)
    statuses = {r["status"] for r in records.values()}
    assert statuses == {"completed", "failed", "skipped"}
    # the index holds the config of every cell
    assert all("config" in r and r["config"]["epochs"] == 2 for r in records.values())


def _stats(values):
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return mean, std


def test_aggregation_matches_hand_computation(grid):
    results = grid["results"]
    name, cells, store, _ = ex.load_cells(results)
    groups = {g["config"]["method"] + Path(str(g["config"]["dist"])).name: g for g in ex.aggregate(cells, store)}
    g = groups["freeze-spinsqueeze.polar"]
    runs = [c for c in cells if c["config"]["method"] == "freeze-spin" and str(c["config"]["dist"]).endswith("squeeze.polar")]
    assert len(runs) == 2 and g["finished"] == 2 and g["seeds"] == [0, 1]
    rows = [[json.loads(l) for l in (results / "runs" / c["run_id"] / "metrics.jsonl").read_text().splitlines()] for c in runs]
    for e in range(2):
        vm, vs = _stats([r[e]["val_acc"] for r in rows])
        tm, ts = _stats([r[e]["train_acc"] for r in rows])
        point = g["curve"][e]
        assert point["epoch"] == e + 1 and point["n"] == 2
        assert point["val_mean"] == pytest.approx(vm) and point["val_std"] == pytest.approx(vs)
        assert point["train_mean"] == pytest.approx(tm) and point["train_std"] == pytest.approx(ts)
    finals = [r[-1]["val_acc"] for r in rows]
    fm, fs = _stats(finals)
    assert g["final_val_mean"] == pytest.approx(fm) and g["final_val_std"] == pytest.approx(fs)
    assert g["converged"] == sum(f >= ex.CONVERGED_ACC for f in finals)
    crossing = next((e + 1 for e in range(2) if _stats([r[e]["val_acc"] for r in rows])[0] >= ex.THRESHOLD), None)
    assert g["epochs_to_40"] == crossing
    assert ex.CONVERGED_ACC == pytest.approx(0.15)
    assert groups["fluid-inNone"]["finished"] == 0 and len(groups["fluid-inNone"]["skipped"]) == 2


def test_report_cli_writes_markdown_json_and_png(grid, tmp_path):
    out = tmp_path / "report"
    res = CliRunner().invoke(cli, ["report", str(grid["results"]), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "| freeze-spin" in res.output and "## Per-epoch" in res.output
    assert (out / "report.md").read_text().startswith("# tinytest")
    assert (out / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = (out / "runs.jsonl").read_text().splitlines()
    assert len(lines) == 7 and {json.loads(l)["status"] for l in lines} == {"completed", "failed", "skipped"}
    res = CliRunner().invoke(cli, ["report", str(grid["path"]), "--results", str(grid["results"]), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["converged_acc"] == pytest.approx(0.15) and len(data["groups"]) == 4


def test_table1_markdown_sets_paper_next_to_ours():
    def group(dist, zeros, finals):
        mean, std = _stats(finals)
        return {"config": {"method": "freeze-spin", "dist": dist, "zeros": zeros, "model": "zfnet", "dataset": "cifar10",
                           "geometry": "small"}, "finished": len(finals), "planned": 3, "final_val_mean": mean,
                "final_val_std": std, "converged": sum(f >= ex.CONVERGED_ACC for f in finals)}

    md = ex.table1_markdown([group("paper:alexnet", "pin", [0.5, 0.6]), group("paper:table1-exp1", "free", [0.1, 0.1])])
    row = next(l for l in md.splitlines() if l.startswith("| paper:alexnet "))
    assert "| yes | 57 | 55.0 ± 7.1 | 2/2 | not run | - |" in row
    row = next(l for l in md.splitlines() if l.startswith("| paper:table1-exp1 "))
    assert "| no | 10 | not run | - | 10.0 ± 0.0 | 0/2 |" in row
    assert ex.table1_markdown([{"config": {"method": "scratch", "dist": None}}]) is None


def test_dry_run_reports_done_and_skipped(grid):
    res = CliRunner().invoke(cli, ["experiment", str(grid["path"]), "--results", str(grid["results"]), "--dry-run", "--json"])
    assert res.exit_code == 0, res.output
    actions = [c["action"] for c in json.loads(res.output)["cells"]]
    assert actions.count("done") == 4 and actions.count("skip") == 2 and actions.count("run") == 1


def test_malformed_file_names_the_bad_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[defaults]\nepochs = 2\nlearning_rate = 0.1\n[grid]\nmethods = ['scratch']\n")
    with pytest.raises(ConfigError) as err:
        ex.load_experiment(path)
    msg = str(err.value)
    assert "learning_rate" in msg and str(path) in msg and "batch_size" in msg
    res = CliRunner().invoke(cli, ["experiment", str(path), "--dry-run"])
    assert res.exit_code == 1
    assert res.output.startswith("Error:") and "learning_rate" in res.output and len(res.output.strip().splitlines()) == 1
    path.write_text("[grid]\nmethods = ['frozen']\n")
    with pytest.raises(ConfigError, match="frozen"):
        ex.load_experiment(path)
    path.write_text("[gird]\nmethods = ['scratch']\n")
    with pytest.raises(ConfigError, match="gird"):
        ex.load_experiment(path)


def test_set_overrides_and_yaml(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("defaults: {dataset: fashion-mnist-mini, epochs: 1}\ngrid: {methods: [freeze-spin, fluid-in], dists: ['paper:alexnet'], seeds: [0, 1, 2]}\n")
    exp = ex.load_experiment(path, ["seed=[5]", "zeros=free", "weights.alexnet=w.safetensors", "epochs=3"])
    assert [c.seed for c in exp.cells] == [5, 5]
    spin = exp.cells[0].config
    assert spin["zeros"] == "free" and spin["epochs"] == 3
    fluid = exp.cells[1]
    assert fluid.config["weights"] == "w.safetensors" and "not found" in fluid.skip_reason
    # threads is not part of a run's identity
    a = ex.load_experiment(path, ["threads=1"]).cells[0].run_id
    b = ex.load_experiment(path, ["threads=2"]).cells[0].run_id
    assert a == b


def test_example_files_expand():
    repo = Path(__file__).resolve().parents[1]
    sizes = {}
    for name in ("tiny", "table1", "figure1", "figure2", "mobilenet"):
        exp = ex.load_experiment(repo / "examples" / f"{name}.toml")
        sizes[name] = len(exp.cells)
        assert [c.seed for c in exp.cells] == sorted(c.seed for c in exp.cells)
    assert sizes["table1"] == 48 and sizes["figure1"] == 40 and sizes["figure2"] == 40
