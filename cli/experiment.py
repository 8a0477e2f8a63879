"""`polarpack experiment` (run a TOML grid of training runs) and `polarpack report` (aggregate
it)."""

from __future__ import annotations

import click

from polarpack.experiments.grid import load_experiment
from polarpack.experiments.reporting import report as make_report
from polarpack.experiments.runner import ResultsStore, plan, run_experiment

from ._common import emit_json, handle_errors, info, json_option

_sets = click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override an option: a TrainConfig field (geometry=imagenet, device=cuda, seed=[0,1]), "
    "weights.MODEL=SOURCE, or grid.KEY=[...]. Repeatable.",
)
_results = click.option(
    "--results",
    type=click.Path(file_okay=False),
    default="results",
    show_default=True,
    help="Results store: runs/<run_id>/ with config, metrics and summary (committable; weights "
    "git-ignored).",
)


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@_results
@click.option(
    "--jobs",
    "-j",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Cells run in parallel processes; each gets threads = max(1, cores // jobs) unless the "
    "file sets threads.",
)
@click.option(
    "--nproc-per-run",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Processes per run: >1 trains each cell with DistributedDataParallel under torchrun; see "
    "docs/distributed.md.",
)
@_sets
@click.option(
    "--dry-run",
    is_flag=True,
    help="List the cells and what would happen to each (run, resume, retry, done, skip).",
)
@json_option
@handle_errors
def experiment(file, results, jobs, nproc_per_run, sets, dry_run, as_json):
    """Run the grid of training runs in FILE (TOML), resumably.

    Cells run seed-major (all cells of seed 0 first). A cell whose run directory says completed is
    skipped (committed results count), an interrupted one resumes from its last epoch, a failed one
    is retried; cells that need missing weights are skipped with the reason. One process writes to a
    results folder at a time. Exit status 1 when any cell failed. Relative paths in FILE resolve
    against the current directory. A file expands to at most 100,000 cells (the product of its
    [grid] lists times its seeds, plus its [[include]]s); a larger one is refused before any cell is
    built.

    \b
    Examples:
      polarpack experiment examples/tiny.toml --results results/tiny
      polarpack experiment examples/table1.toml --jobs 2
      polarpack experiment examples/figure1.toml --set geometry=imagenet --set device=cuda
    """
    exp = load_experiment(file, sets)
    if dry_run:
        rows = plan(exp, ResultsStore(results))
        if as_json:
            emit_json({"name": exp.name, "results": results, "cells": rows})
            return
        for r in rows:
            click.echo(
                f"{r['action']:7s} {r['run_id']}" + (f"  ({r['reason']})" if r["reason"] else "")
            )
        actions = [r["action"] for r in rows]
        info(
            f"{len(rows)} cells in {results}: "
            + ", ".join(f"{actions.count(a)} {a}" for a in dict.fromkeys(actions))
        )
        return
    info(f"{exp.name}: {len(exp.cells)} cells -> {results} (jobs={jobs})")
    result = run_experiment(exp, results, jobs=jobs, nproc_per_run=nproc_per_run)
    if as_json:
        emit_json(result.to_dict())
    else:
        info(
            f"{exp.name}: "
            + ", ".join(f"{v} {k}" for k, v in sorted(result.counts.items()))
            + f" ({results})"
        )
    if not result.ok:
        raise SystemExit(1)


@click.command()
@click.argument("target", type=click.Path(exists=True))
@_results
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Also write report.md, report.json, runs.jsonl and figure.png here.",
)
@_sets
@click.option(
    "--partial",
    is_flag=True,
    help="Also count unfinished runs at their last finished epoch (marked PARTIAL).",
)
@click.option("--title", default="", help="Title of the figure.")
@json_option
@handle_errors
def report(target, results, out, sets, partial, title, as_json):
    """Aggregate an experiment FILE (with its --results) or a RESULTS folder over seeds.

    Per group of cells differing only in seed: mean and std of train/val accuracy per epoch, final
    val accuracy, epochs until the mean reaches the runs' threshold (40%), converged k/n (final >=
    chance + 5 points), dips; the file's [[compare]] pairs with 95% t intervals, paired over seeds
    that ran on one kind of machine, and two one-sided equivalence tests where a pair gives a
    margin; the seed's Table 1 next to its presets' rows.
    """
    result = make_report(target, results=results, out=out, sets=sets, partial=partial, title=title)
    if as_json:
        emit_json(result.to_dict())
        return
    click.echo(result.markdown, nl=False)
    for f in result.files:
        info(f"wrote {f}")
