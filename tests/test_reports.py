"""`polarpack report` over run folders written here: per-run epochs to threshold, Holm-adjusted
p-values, estimates per kind of machine, seeds that only one side finished, and metrics files
whose numbers are not accuracies."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner
from polarpack_cli.main import cli
from scipy import stats

from polarpack.experiments.grid import load_experiment
from polarpack.experiments.reporting import machine_kind, report
from polarpack.experiments.runner import ResultsStore
from polarpack.experiments.statistics import holm

GRID = """
[experiment]
name = "machines"

[defaults]
model = "zfnet"
dataset = "cifar10"
epochs = 4

[grid]
methods = ["freeze-spin", "scratch"]
dists = ["paper:alexnet"]
seeds = [0, 1, 2, 3, 4, 5]

[[compare]]
name = "SPIN - scratch"
a = { method = "freeze-spin" }
b = { method = "scratch" }
margin = { final_val_acc = 0.02 }

[[compare]]
name = "scratch - SPIN"
a = { method = "scratch" }
b = { method = "freeze-spin" }
"""

AMD = {"cpu_capability": "AVX512"}  # recorded before the CPU model was
INTEL = {"cpu_capability": "AVX512", "cpu": "Intel(R) Xeon(R) Processor"}


def write_run(run: Path, config: dict, accs: list, environment: dict, status="completed") -> None:
    """A run folder as `polarpack train` leaves it; `accs` go into metrics.jsonl verbatim (json
    writes NaN and Infinity as the tokens Python's json reads back)."""
    run.mkdir(parents=True)
    (run / "config.json").write_text(
        json.dumps(
            {
                "config": config,
                "resolved": {"device": "cpu", "num_classes": 10},
                "environment": environment,
                "run_token": "t",
            }
        )
    )
    (run / "metrics.jsonl").write_text(
        "".join(
            json.dumps({"epoch": i + 1, "train_acc": 0.5, "val_acc": a}) + "\n"
            for i, a in enumerate(accs)
        )
    )
    (run / "summary.json").write_text(json.dumps({"status": status}))


def grid(tmp_path: Path, finals: dict, text: str = GRID) -> tuple[Path, Path]:
    """The grid file and a store holding, per (method, seed) in `finals`, a run that ends at that
    final accuracy (seeds 0-2 on one machine, 3-5 on another); a list is the whole curve."""
    path = tmp_path / "grid.toml"
    path.write_text(text)
    store = ResultsStore(tmp_path / "results")
    for cell in load_experiment(path).cells:
        final = finals.get((cell.config.method, cell.seed))
        if final is None:
            continue
        accs = final if isinstance(final, list) else [0.2, 0.3, 0.41, final]
        write_run(store.run_dir(cell), cell.config.to_dict(), accs, AMD if cell.seed < 3 else INTEL)
    return path, store.root


def invoke(*args: str):
    return CliRunner().invoke(cli, ["report", *map(str, args)])


def test_machine_kinds_are_estimated_apart_and_tested_against_each_other(tmp_path):
    """The first kind's seeds put SPIN 2 points below scratch, the second's 2 above: each kind
    gets its own paired estimate, and Welch's test over the per-seed differences is scipy's."""
    spin = [0.50, 0.51, 0.49, 0.54, 0.55, 0.53]
    scratch = [0.52, 0.525, 0.515, 0.52, 0.525, 0.515]
    finals = {("freeze-spin", s): v for s, v in enumerate(spin)}
    finals |= {("scratch", s): v for s, v in enumerate(scratch)}
    path, results = grid(tmp_path, finals)
    made = report(path, results=results)
    c = made.comparisons[0]
    assert [e.seeds for e in c.by_machine] == [[0, 1, 2], [3, 4, 5]]
    first = [a - b for a, b in zip(spin[:3], scratch[:3], strict=True)]
    second = [a - b for a, b in zip(spin[3:], scratch[3:], strict=True)]
    assert c.by_machine[0].final_val_acc.diff == pytest.approx(sum(first) / 3)
    assert c.by_machine[1].final_val_acc.diff == pytest.approx(sum(second) / 3)
    welch = stats.ttest_ind(first, second, equal_var=False)
    differ = c.machines_differ["final_val_acc"]
    assert differ.diff / ((differ.high - differ.diff) / stats.t.ppf(0.975, differ.df)) == (
        pytest.approx(welch.statistic)
    )
    assert differ.p_value < 0.05 and differ.df == math.floor(welch.df)
    text = made.markdown
    assert "## Within each kind of machine" in text
    assert "| cpu AVX512 (CPU model not recorded) | s0,1,2 | -2.0 [" in text
    assert "first kind - second (Welch) | | -4.0 [" in text


def test_p_values_are_holm_adjusted_over_the_report_and_words_follow_them(tmp_path):
    """Two comparisons of final accuracy (the second the first reversed: the same p) form a
    family of two: each adjusted p is twice the raw one, and TOST that passes raw but not
    adjusted says so."""
    spin = [0.501, 0.502, 0.499, 0.503, 0.502, 0.500]
    scratch = [0.500, 0.500, 0.500, 0.500, 0.501, 0.499]
    finals = {("freeze-spin", s): v for s, v in enumerate(spin)}
    finals |= {("scratch", s): v for s, v in enumerate(scratch)}
    path, results = grid(tmp_path, finals)
    made = report(path, results=results)
    one, two = made.comparisons
    raw = one.final_val_acc.p_value
    assert raw == pytest.approx(two.final_val_acc.p_value)
    assert raw == pytest.approx(stats.ttest_rel(spin, scratch).pvalue)
    assert one.p_adjusted["final_val_acc"] == pytest.approx(min(1.0, 2 * raw))
    assert one.equivalent("final_val_acc")  # one TOST in its family: Holm changes nothing
    assert one.equivalence["final_val_acc"].power > 0.99
    assert f"p {raw:.3f}, Holm {min(1.0, 2 * raw):.3f}" in made.markdown
    assert "a family of 2 for final accuracy" in made.markdown


def test_epochs_to_threshold_are_per_run_and_a_run_that_never_crosses_is_named(tmp_path):
    finals = {
        ("freeze-spin", 0): [0.41, 0.45, 0.5, 0.5],  # crosses at 1
        ("freeze-spin", 1): [0.3, 0.41, 0.5, 0.5],  # at 2
        ("freeze-spin", 2): [0.3, 0.35, 0.39, 0.42],  # at 4
        ("scratch", 0): [0.3, 0.35, 0.41, 0.5],
        ("scratch", 1): [0.2, 0.3, 0.35, 0.39],  # never
        ("scratch", 2): [0.3, 0.35, 0.41, 0.45],
    }
    path, results = grid(tmp_path, finals)
    result = invoke(path, "--results", results, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    text = (tmp_path / "out" / "report.md").read_text()
    # SPIN's mean curve reaches 40% at epoch 2 (0.403); its runs cross at 1, 2 and 4
    assert "| 2.3 ± 1.5 |" in text
    assert "| 3.0 ± 0.0 (2 runs); never: s1 |" in text
    assert "n/a: s1 (b) never reached it" in text
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    spin = next(g for g in saved["groups"] if g["config"]["method"] == "freeze-spin")
    assert spin["epochs_to_threshold_per_seed"] == [1, 2, 4]
    assert spin["mean_curve_crossing"] == 2  # the picture's line, not the table's number
    assert spin["epochs_to_threshold"] == pytest.approx(7 / 3)


def test_seeds_only_one_side_finished_are_left_out_of_the_pairs_and_named(tmp_path):
    """A grid still running: scratch has seeds 0-5, Freeze SPIN only 0, 1, 3 and 4."""
    finals = {("scratch", s): 0.5 + 0.01 * s for s in range(6)}
    finals |= {("freeze-spin", s): 0.52 + 0.01 * s + 0.001 * (s % 2) for s in (0, 1, 3, 4)}
    path, results = grid(tmp_path, finals)
    made = report(path, results=results)
    c = made.comparisons[0]
    assert c.seeds == [0, 1, 3, 4] and c.final_val_acc.test == "paired t"
    assert c.incomplete == ["s2 (b only)", "s5 (b only)"]
    assert "not paired, finished on one side only: s2 (b only), s5 (b only)" in made.markdown
    assert "| 4/6 |" in made.markdown and "not finished: s2: 0/4 epochs" in made.markdown


@pytest.mark.parametrize(
    "value, shown",
    [
        (float("nan"), "nan"),
        (float("inf"), "inf"),
        (-float("inf"), "-inf"),
        (1e300, "1e+300"),
        (1.5, "1.5"),
        (-0.01, "-0.01"),
        (None, "None"),
        ("0.5", "'0.5'"),
        (True, "True"),
    ],
)
def test_a_metrics_value_that_is_not_an_accuracy_is_a_one_line_error(tmp_path, value, shown):
    finals = {(m, s): 0.5 for m in ("freeze-spin", "scratch") for s in range(6)}
    path, results = grid(tmp_path, finals)
    bad = next((results / "runs").glob("zfnet-cifar10-scratch*s3*"))
    rows = (bad / "metrics.jsonl").read_text().splitlines()
    rows[2] = json.dumps({"epoch": 3, "train_acc": 0.5, "val_acc": value})
    (bad / "metrics.jsonl").write_text("\n".join(rows) + "\n")
    result = invoke(path, "--results", results, "--out", tmp_path / "out")
    assert result.exit_code == 1 and "Traceback" not in result.output
    (line,) = result.output.strip().splitlines()
    assert f"{bad / 'metrics.jsonl'}: epoch 3 has val_acc = {shown}, not an accuracy" in line
    assert not (tmp_path / "out" / "report.md").exists()


def test_a_huge_number_written_as_text_is_caught_too(tmp_path):
    """1e999 reads as infinity: still an error, not a missing value or an overflow."""
    finals = {(m, s): 0.5 for m in ("freeze-spin", "scratch") for s in range(6)}
    path, results = grid(tmp_path, finals)
    bad = next((results / "runs").glob("zfnet-cifar10-freeze_spin*s0*"))
    with (bad / "metrics.jsonl").open("a") as f:
        f.write('{"epoch": 5, "train_acc": 1e999, "val_acc": 0.5}\n')
    result = invoke(results)  # a results folder alone: every run, no comparisons
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "epoch 5 has train_acc = inf, not an accuracy between 0 and 1" in result.output


def test_holm_in_a_report_matches_the_function(tmp_path):
    """The report's adjusted p-values are `holm` of its raw ones, measure by measure."""
    spin = [0.50, 0.53, 0.49, 0.56, 0.55, 0.52]
    scratch = [0.52, 0.52, 0.50, 0.50, 0.53, 0.51]
    finals = {("freeze-spin", s): v for s, v in enumerate(spin)}
    finals |= {("scratch", s): v for s, v in enumerate(scratch)}
    path, results = grid(tmp_path, finals)
    made = report(path, results=results)
    for measure in ("final_val_acc", "epochs_to_threshold"):
        raw = [getattr(c, measure).p_value for c in made.comparisons]
        assert [c.p_adjusted[measure] for c in made.comparisons] == holm(raw)


def test_one_model_name_with_other_kernel_features_is_another_kind_of_machine():
    """A virtual machine names many CPUs "Intel(R) Xeon(R) Processor": the family/model and the
    bf16/AMX features a run recorded tell them apart; runs that recorded none keep their kind."""
    amx = {**INTEL, "cpu_features": {"family_model": "6/143", "flags": ["avx512f", "amx_bf16"]}}
    plain = {**INTEL, "cpu_features": {"family_model": "6/207", "flags": ["avx512f"]}}
    kinds = {machine_kind(env, "cpu") for env in (INTEL, amx, plain)}
    assert len(kinds) == 3
    assert machine_kind(INTEL, "cpu") == "cpu AVX512 (Intel(R) Xeon(R) Processor)"
    assert machine_kind(plain, "cpu") == "cpu AVX512 (Intel(R) Xeon(R) Processor; 6/207: avx512f)"


TWO_SEEDS = """
[defaults]
method = "scratch"
precision = "fp32"
epochs = 2

[grid]
seeds = [15945, 36267]
"""


def test_a_folder_that_only_shares_a_cells_eight_hex_digits_is_another_cells(tmp_path):
    """Seeds 15945 and 36267 of this grid end their run ids in the same eight hex digits: the
    finished run of the first is not the second's, neither to plan (which must not stop the grid
    either) nor to report."""
    path = tmp_path / "grid.toml"
    path.write_text(TWO_SEEDS)
    ran, never = load_experiment(path).cells
    assert ran.hash == never.hash and ran.run_id != never.run_id
    results = tmp_path / "results"
    write_run(results / "runs" / ran.run_id, ran.config.to_dict(), [0.3, 0.5], AMD)
    planned = CliRunner().invoke(cli, ["experiment", str(path), "--results", results, "--dry-run"])
    assert planned.exit_code == 0, planned.output
    assert planned.stdout.splitlines() == [f"done    {ran.run_id}", f"run     {never.run_id}"]
    made = report(path, results=results)
    assert made.groups[0].seeds == [15945] and made.groups[0].unfinished == ["s36267: 0/2 epochs"]


def test_a_folder_named_as_a_cell_that_holds_other_options_is_refused(tmp_path, cli_error):
    finals = {(m, s): 0.5 for m in ("freeze-spin", "scratch") for s in range(6)}
    path, results = grid(tmp_path, finals)
    edited = next((results / "runs").glob("zfnet-cifar10-scratch*s3*"))
    config = json.loads((edited / "config.json").read_text())
    config["config"]["lr"] = 0.5
    (edited / "config.json").write_text(json.dumps(config))
    cli_error(
        ["report", str(path), "--results", str(results)],
        f"{edited}: its config.json does not hold the options of cell",
    )


def test_a_finished_run_is_reported_when_its_input_file_is_not_here(tmp_path):
    """A file missing here (a checkpoint outside the repository) stops its cell from running,
    not the report of the run it made elsewhere."""
    text = GRID.replace('dists = ["paper:alexnet"]', 'dists = ["elsewhere/zfnet.polar"]')
    path, results = grid(tmp_path, {("freeze-spin", s): 0.5 for s in range(6)}, text)
    assert all("not found" in c.skip_reason for c in load_experiment(path).cells if c.config.dist)
    result = invoke(path, "--results", results, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    text = (tmp_path / "out" / "report.md").read_text()
    assert "- **freeze-spin zfnet.polar** (6 runs)" in text and "skipped" not in text
    rows = (tmp_path / "out" / "runs.jsonl").read_text().splitlines()
    assert sum('"freeze-spin"' in row for row in rows) == 6


def test_a_finished_run_without_epochs_is_a_one_line_error(tmp_path, cli_error):
    finals = {(m, s): 0.5 for m in ("freeze-spin", "scratch") for s in range(6)}
    path, results = grid(tmp_path, finals)
    bad = next((results / "runs").glob("zfnet-cifar10-scratch*s3*"))
    (bad / "metrics.jsonl").write_text("")
    cli_error(
        ["report", str(path), "--results", str(results)],
        f"{bad}: its summary.json says completed but metrics.jsonl holds no epochs",
        "restore metrics.jsonl, or remove the folder",
    )
