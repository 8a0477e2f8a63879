"""Experiment files that ask for the impossible (a product of billions of cells, arrays nested
thousands deep, a hundred thousand seeds), and [[include]] expansion."""

from __future__ import annotations

import json
import time
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from polarpack_cli.main import cli

from polarpack.errors import ConfigError
from polarpack.experiments import grid
from polarpack.experiments.grid import MAX_CELLS, load_experiment

FAST = '[defaults]\nmethod = "scratch"\ndevice = "cpu"\n'


def _file(tmp_path, text: str, name: str = "grid.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _refused_quickly(cli_error, args: list[str], *needles: str) -> str:
    started = time.monotonic()
    line = cli_error(args, *needles)
    assert time.monotonic() - started < 10, "the refusal took too long"
    return line


def test_a_grid_of_billions_of_cells_is_refused_before_it_is_built(tmp_path, cli_error):
    keys = ("epochs", "batch_size", "train_size", "val_size", "eval_batch_size", "bn_batches")
    axes = "".join(f"{k} = {list(range(1, 41))}\n" for k in keys)
    path = _file(tmp_path, FAST + "[grid]\n" + axes)
    assert path.stat().st_size < 1500
    line = _refused_quickly(
        cli_error,
        ["experiment", str(path), "--results", str(tmp_path / "r"), "--dry-run"],
        "4,096,000,000 cells",
        f"{MAX_CELLS:,}",
    )
    assert str(path) in line


def test_includes_and_seeds_count_towards_the_limit(tmp_path):
    seeds = list(range(MAX_CELLS // 10 + 1))
    text = FAST + f"[grid]\nepochs = [1, 2, 3, 4, 5]\nseed = {seeds}\n"
    text += "[[include]]\nepochs = [6, 7, 8, 9, 10]\n"  # as many again: over the limit
    with pytest.raises(ConfigError, match=f"{10 * len(seeds):,} cells"):
        load_experiment(_file(tmp_path, text))
    with pytest.raises(ConfigError, match="cells, more than"):
        load_experiment(
            _file(tmp_path, FAST), sets=[f"grid.epochs={list(range(1, MAX_CELLS + 2))}"]
        )


def test_the_limit_is_named_in_the_help():
    result = CliRunner().invoke(cli, ["experiment", "--help"])
    assert result.exit_code == 0
    assert f"at most {MAX_CELLS:,} cells" in " ".join(result.output.split())


def test_arrays_nested_thousands_deep_are_not_a_grid_file(tmp_path, cli_error):
    path = _file(tmp_path, FAST + "[grid]\nseed = " + "[" * 5000 + "]" * 5000 + "\n")
    _refused_quickly(
        cli_error,
        ["experiment", str(path), "--results", str(tmp_path / "r"), "--dry-run"],
        "not a valid grid file",
        str(path),
    )
    tables = _file(
        tmp_path, "[grid]\nmodel = " + "{a = " * 3000 + "1" + "}" * 3000 + "\n", "t.toml"
    )
    _refused_quickly(cli_error, ["experiment", str(tables), "--dry-run"], "not a valid grid file")


def test_a_set_value_nested_thousands_deep_is_a_string_and_refused_as_a_seed(tmp_path, cli_error):
    path = _file(tmp_path, FAST)
    deep = "[" * 5000 + "]" * 5000
    _refused_quickly(
        cli_error,
        ["experiment", str(path), "--dry-run", "--set", f"seed={deep}"],
        "--seed must be an integer",
    )


class _CountedSeed(int):
    """A seed that counts how often it is compared for equality."""

    comparisons = 0
    __hash__ = int.__hash__

    def __eq__(self, other):
        _CountedSeed.comparisons += 1
        return int.__eq__(self, other)


def test_expanding_many_seeds_compares_each_seed_a_bounded_number_of_times(tmp_path, monkeypatch):
    """Seed-major ordering must not search the seed list once per cell (quadratic: 100,000 seeds
    took minutes); comparisons are counted, so the check does not depend on the machine's speed."""
    n = 3000

    def loads(text: str):
        data = tomllib.loads(text)
        data["grid"]["seed"] = [_CountedSeed(s) for s in data["grid"]["seed"]]
        for inc in data.get("include", []):
            inc["seed"] = [_CountedSeed(s) for s in inc["seed"]]
        return data

    fake = SimpleNamespace(loads=loads, TOMLDecodeError=tomllib.TOMLDecodeError)
    monkeypatch.setattr(grid, "tomllib", fake)
    text = FAST + f"[grid]\nepochs = [1]\nseed = {list(range(n))}\n"
    text += '[[include]]\nmethod = "freeze-spin"\ndist = "paper:rand"\n'
    text += f"seed = {list(range(n, 2 * n))}\n"
    _CountedSeed.comparisons = 0
    exp = load_experiment(_file(tmp_path, text))
    assert [c.seed for c in exp.cells] == list(range(2 * n))
    assert _CountedSeed.comparisons <= 10 * n, _CountedSeed.comparisons


INCLUDES = """
[defaults]
method = "scratch"
device = "cpu"
epochs = 2

[grid]
seed = [1, 0]
zeros = ["pin", "free"]

[[include]]                        # a list expands; the grid's seeds by default
method = "freeze-spin"
dist = ["paper:rand", "paper:alexnet"]

[[include]]                        # its own seeds, one the grid lacks: after the grid's seeds
method = "freeze-spin"
dist = "paper:rand"
epochs = 3
seed = [0, 7]

[[include]]                        # the same cell as the first include's: kept once
method = "freeze-spin"
dist = "paper:rand"
"""


def test_includes_expand_with_the_defaults_and_the_grids_seeds(tmp_path):
    exp = load_experiment(_file(tmp_path, INCLUDES))
    got = [(c.seed, c.config.method, c.config.dist, c.config.epochs) for c in exp.cells]
    assert got == [
        (1, "scratch", None, 2),  # scratch ignores zeros: pin and free are one cell
        (1, "freeze-spin", "paper:rand", 2),
        (1, "freeze-spin", "paper:alexnet", 2),
        (0, "scratch", None, 2),
        (0, "freeze-spin", "paper:rand", 2),
        (0, "freeze-spin", "paper:alexnet", 2),
        (0, "freeze-spin", "paper:rand", 3),
        (7, "freeze-spin", "paper:rand", 3),
    ]
    assert all(c.config.zeros == "pin" for c in exp.cells)  # includes take the defaults
    assert len({c.run_id for c in exp.cells}) == len(exp.cells)


def test_a_list_set_reaches_the_includes_that_do_not_set_it(tmp_path):
    """`--set grid.epochs=[5]` takes epochs out of [defaults]: the includes get the axis as the
    grid's cells do (as they get its seeds), not TrainConfig's default, but for one that sets
    epochs itself."""
    exp = load_experiment(_file(tmp_path, INCLUDES), ["grid.epochs=[5]"])
    got = {(c.config.method, c.config.dist, c.seed): c.config.epochs for c in exp.cells}
    assert got[("scratch", None, 0)] == got[("freeze-spin", "paper:alexnet", 0)] == 5
    assert got[("freeze-spin", "paper:rand", 7)] == 3  # the include's own epochs = 3
    assert sorted(set(got.values())) == [3, 5]


def test_a_whole_number_of_a_float_option_is_one_cell_either_way(tmp_path):
    """`dropout = 0` and `dropout = 0.0` (or `lr`, which the slug shows) are one cell: one run id,
    one hash, one run in a grid that lists both."""
    path = _file(tmp_path, FAST)
    ints, floats = (
        load_experiment(path, sets) for sets in (["dropout=0", "lr=1"], ["dropout=0.0", "lr=1.0"])
    )
    assert [c.run_id for c in ints.cells] == [c.run_id for c in floats.cells]
    both = load_experiment(path, ["grid.dropout=[0, 0.0]", "grid.lr=[1, 1.0]"])
    assert len(both.cells) == 1 and both.cells[0].config.lr == 1.0
    options = both.cells[0].config.to_dict()
    assert grid.config_hash({**options, "dropout": 0, "lr": 1}) == grid.config_hash(options)


def test_a_file_of_includes_only_is_just_those(tmp_path):
    text = FAST + '[[include]]\nmethod = "freeze-spin"\ndist = "paper:rand"\nseed = [3, 4]\n'
    exp = load_experiment(_file(tmp_path, text))
    assert [(c.seed, c.config.method) for c in exp.cells] == [
        (3, "freeze-spin"),
        (4, "freeze-spin"),
    ]


@pytest.mark.parametrize(
    ("include", "needle"),
    [
        ("colour = 1", "unknown key 'colour' in [include]"),
        ("epochs = []", "epochs is an empty list"),
        ('method = "freeze-spin"', "needs a distribution"),
    ],
)
def test_a_bad_include_is_one_line_naming_it(tmp_path, cli_error, include, needle):
    path = _file(tmp_path, FAST + f"[[include]]\n{include}\n")
    cli_error(["experiment", str(path), "--dry-run"], needle, str(path))


def test_a_store_finds_runs_of_another_slug_by_hash_and_lists_its_folder_once(
    tmp_path, monkeypatch
):
    """A run folder written under an earlier version's slug is found by its config hash (its
    config.json holding the cell's options); pending cells cost no listing each (planning a large
    grid stays linear)."""
    from pathlib import Path

    from polarpack.experiments.store import ResultsStore

    path = tmp_path / "g.toml"
    path.write_text(
        '[defaults]\nmodel = "zfnet"\n[grid]\nmethods = ["scratch"]\nseeds = '
        + str(list(range(200)))
    )
    cells = load_experiment(path).cells
    store = ResultsStore(tmp_path / "results")
    old = store.runs / f"zfnet-old-slug-{cells[3].hash}"
    old.mkdir(parents=True)
    saved = {"config": cells[3].config.to_dict(), "run_token": "t"}
    (old / "config.json").write_text(json.dumps(saved))
    listings = []
    iterdir = Path.iterdir
    monkeypatch.setattr(Path, "iterdir", lambda p: listings.append(p) or iterdir(p))
    monkeypatch.setattr(Path, "glob", lambda *a, **k: pytest.fail("a listing per cell"))
    found = [store.run_dir(c) for c in cells]
    assert found[3] == old and found[4] == store.runs / cells[4].run_id
    assert listings == [store.runs]


def test_the_documented_experiment_file_expands_as_the_page_says(tmp_path, monkeypatch):
    page = (Path(__file__).parents[1] / "docs" / "experiments.md").read_text()
    text = page.split("```toml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "grid.toml").write_text(text)
    monkeypatch.chdir(tmp_path)
    exp = load_experiment("grid.toml")
    # freeze-spin: 2 dists x 2 zeros; scratch uses neither: one cell; and the include: per seed
    assert len(exp.cells) == 3 * (2 * 2 + 1 + 1)
    assert [c.config.method for c in exp.cells[:6]] == ["freeze-spin"] * 4 + ["scratch"] * 1 + [
        "freeze-spin"
    ]
    assert all("not found" in c.skip_reason for c in exp.cells if c.config.dist == "my-model.polar")
    (spec,) = exp.compare
    assert spec.margin == {"final_val_acc": 0.02, "epochs_to_threshold": 1.0}
