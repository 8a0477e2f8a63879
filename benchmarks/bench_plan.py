"""Benchmark: finding the run folders of a large grid's cells in a results store.

A store finds a cell's folder by its exact run id, else by its config hash (a run id written by
another version's slug). Pending cells have no folder, so each one takes the second path. The
baseline lists the store once per cell (a glob of `runs/`); polarpack lists it once per store.
Both run here over the same cells: a grid of ZFNet Freeze SPIN and scratch over --seeds seeds (all
pending) against a store of --runs run folders, written in a temporary directory.

    python benchmarks/bench_plan.py                 # 10,000 cells against 300 runs
    python benchmarks/bench_plan.py --seeds 20000 --runs 1000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from polarpack.experiments.grid import load_experiment
from polarpack.experiments.store import ResultsStore

GRID = """
[experiment]
name = "many"
[defaults]
model = "zfnet"
dataset = "cifar10"
[grid]
methods = ["freeze-spin", "scratch"]
dists = ["paper:alexnet"]
seeds = {seeds}
"""


def globbed(store: ResultsStore, cell) -> Path:
    """The baseline: one listing of runs/ per cell that has no folder under its exact id."""
    exact = store.runs / cell.run_id
    if exact.exists():
        return exact
    found = sorted(p for p in store.runs.glob(f"*-{cell.hash}") if p.is_dir())
    return found[0] if found else exact


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        grid = Path(tmp) / "many.toml"
        grid.write_text(GRID.format(seeds=list(range(args.seeds))))
        cells = load_experiment(grid).cells
        store = ResultsStore(Path(tmp) / "results")
        for i in range(args.runs):
            (store.runs / f"other-run-{i:08x}").mkdir(parents=True)
        start = time.perf_counter()
        baseline = [globbed(store, c) for c in cells]
        glob_seconds = time.perf_counter() - start
        start = time.perf_counter()
        found = [store.run_dir(c) for c in cells]
        store_seconds = time.perf_counter() - start
    assert found == baseline
    print(f"{len(cells):,} pending cells against {args.runs:,} runs")
    print(f"  a listing per cell (baseline)  {glob_seconds:8.3f} s")
    print(f"  one listing per store          {store_seconds:8.3f} s")
    print(f"  ratio                          {glob_seconds / store_seconds:8.1f}x")


if __name__ == "__main__":
    main()
