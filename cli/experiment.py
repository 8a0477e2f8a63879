"""`polarpack experiment` (run a TOML grid of training runs) and `polarpack report` (aggregate
it)."""

from __future__ import annotations

import click

from polarpack.experiments.grid import load_experiment
from polarpack.experiments.reporting import report as make_report
from polarpack.experiments.runner import run_experiment
from polarpack.experiments.slurm import (
    EXECUTORS,
    follow,
    grid_status,
    require_submitit,
    sbatch_lines,
    slurm_options,
    submit,
)
from polarpack.experiments.store import OTHER_MACHINE, ResultsStore, plan

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
    help="Cells run in parallel processes; each gets threads = max(1, cores // (jobs * "
    "nproc-per-run)) unless the file sets threads.",
)
@click.option(
    "--nproc-per-run",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Processes per run: >1 trains each cell with DistributedDataParallel under torchrun; see "
    "docs/distributed.md.",
)
@click.option(
    "--executor",
    type=click.Choice(EXECUTORS),
    default="pool",
    show_default=True,
    help="pool: --jobs processes here. slurm: the pending cells as one submitit job array on a "
    'Slurm cluster. local: the same through submitit\'s local executor. Needs "polarpack[slurm]".',
)
@click.option(
    "--slurm",
    "slurm_sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="A scheduler option over the file's [slurm] table: partition, time (minutes), "
    "gpus_per_node, cpus_per_task, mem_gb, account, qos, constraint, array_parallelism.",
)
@click.option("--wait", is_flag=True, help="With slurm or local: follow the tasks to the end.")
@click.option(
    "--other-machine",
    type=click.Choice(OTHER_MACHINE),
    default="resume",
    show_default=True,
    help="A cell whose run computed on another kind of machine (CPU model and features, or GPU): "
    "resume it here (it warns; reports count it as a kind of its own); restart it from epoch 0 "
    "here, its attempt's metrics kept under earlier/ in its folder and named in reports; or leave "
    "it, and every unfinished cell of its seed, to that kind of machine, so that a seed's runs "
    "all compute on one kind (for grids whose pairs must).",
)
@click.option(
    "--status",
    "show_status",
    is_flag=True,
    help="Per cell: done, running, queued, failed (with its log's last line) or pending; for an "
    "unfinished one, the epochs done and where a resume would start (after an epoch, or a step).",
)
@_sets
@click.option(
    "--dry-run",
    is_flag=True,
    help="List the cells and what would happen to each (run, resume, restart, leave, retry, done, "
    "skip); with --executor slurm or local, the scheduler parameters and the cells it would "
    "submit.",
)
@json_option
@handle_errors
def experiment(
    file,
    results,
    jobs,
    nproc_per_run,
    executor,
    slurm_sets,
    wait,
    other_machine,
    show_status,
    sets,
    dry_run,
    as_json,
):
    """Run the grid of training runs in FILE (TOML), resumably.

    Cells run seed-major (all cells of seed 0 first). A cell whose run directory says completed is
    skipped (committed results count), an interrupted one resumes from its last checkpoint, a
    failed one is retried; cells that need missing weights are skipped with the reason. Each cell
    runs under a claim in the results folder, so several processes, Slurm tasks and submitters may
    share it. Exit status 1 when any cell failed. Relative paths in FILE resolve against the
    current directory. A file expands to at most 100,000 cells (the product of its [grid] lists
    times its seeds, plus its [[include]]s); a larger one is refused before any cell is built. The
    file's sections and keys: docs/experiments.md.

    \b
    Examples:
      polarpack experiment examples/tiny.toml --results results/tiny
      polarpack experiment examples/table1.toml --jobs 2
      polarpack experiment examples/figure1.toml --set geometry=imagenet --set device=cuda
      polarpack experiment examples/seeds10.toml --executor slurm --slurm partition=gpu
      polarpack experiment examples/seeds10.toml --status
    """
    exp = load_experiment(file, sets)
    if show_status:
        _status(exp, results, as_json)
    elif executor != "pool":
        _submit(
            exp,
            file,
            results,
            executor,
            slurm_sets,
            nproc_per_run,
            wait,
            dry_run,
            as_json,
            other_machine,
        )
    elif dry_run:
        _dry_run(exp, results, as_json, other_machine)
    else:
        info(f"{exp.name}: {len(exp.cells)} cells -> {results} (jobs={jobs})")
        result = run_experiment(
            exp,
            results,
            jobs=jobs,
            nproc_per_run=nproc_per_run,
            other_machine=other_machine,
        )
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


def _dry_run(exp, results, as_json, other_machine) -> None:
    planned = plan(exp, ResultsStore(results), other_machine=other_machine)
    if as_json:
        emit_json({"name": exp.name, "results": results, "cells": [p.to_json() for p in planned]})
        return
    for p in planned:
        click.echo(f"{p.action:7s} {p.cell.run_id}" + (f"  ({p.note})" if p.note else ""))
    actions = [p.action for p in planned]
    info(
        f"{len(planned)} cells in {results}: "
        + ", ".join(f"{actions.count(a)} {a}" for a in dict.fromkeys(actions))
    )


def _submit(exp, file, results, kind, slurm_sets, nproc, wait, dry_run, as_json, other) -> None:
    options = slurm_options(file, slurm_sets)
    require_submitit()
    sub = submit(
        exp, results, options, kind=kind, nproc=nproc, dry_run=dry_run, other_machine=other
    )
    if as_json:
        emit_json(
            {
                "executor": kind,
                "job_id": sub.job_id,
                "logs": str(sub.logs),
                "parameters": sub.parameters,
                "cells": [c.run_id for c in sub.cells],
                "submitted": not dry_run and bool(sub.cells),
            }
        )
    elif dry_run:
        click.echo(f"{kind} parameters: " + " ".join(f"{k}={v}" for k, v in sub.parameters.items()))
        if kind == "slurm":
            lines = sbatch_lines(options, nproc=nproc, name=exp.name, cells=len(sub.cells))
            click.echo("\n".join(lines))
        for cell in sub.cells:
            click.echo(f"submit  {cell.run_id}")
        info(f"{len(sub.cells)} cells would be submitted; nothing submitted (--dry-run)")
    elif not sub.cells:
        info(f"{exp.name}: no pending cells in {results}")
    else:
        info(
            f"{exp.name}: {len(sub.cells)} cells submitted as {kind} job {sub.job_id}; "
            f"logs in {sub.logs}"
        )
    if wait and sub.jobs and not follow(sub, ResultsStore(results), progress=not as_json):
        raise SystemExit(1)


def _status(exp, results, as_json) -> None:
    rows = grid_status(exp, results)
    if as_json:
        emit_json({"name": exp.name, "results": results, "cells": [vars(r) for r in rows]})
        return
    for r in rows:
        click.echo(f"{r.status:8s} {r.run_id}" + (f"  ({r.detail})" if r.detail else ""))
    states = [r.status for r in rows]
    info(
        f"{len(rows)} cells: " + ", ".join(f"{states.count(s)} {s}" for s in dict.fromkeys(states))
    )


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
@click.option(
    "--title",
    default="",
    help="The report's heading and the JSON's name (default: the experiment's name, or the "
    "results folder's), and the figure's title (default: none).",
)
@json_option
@handle_errors
def report(target, results, out, sets, partial, title, as_json):
    """Aggregate an experiment FILE (with its --results) or a RESULTS folder over seeds.

    Per group of cells differing only in seed: mean and std of train/val accuracy per epoch, final
    val accuracy, epochs to the runs' threshold (40%; the mean of each run's first epoch there,
    naming the runs that never get there), converged k/n (final >= chance + 5 points), dips; the
    file's [[compare]] pairs with 95% t intervals, paired over seeds that ran on one kind of
    machine, Holm-adjusted p-values, the paired spread and the difference its seeds detect with
    80% power, estimates per machine kind, and two one-sided equivalence tests with their power
    where a pair gives a margin; the paper's Table 1 next to its presets' rows. Experiment files:
    docs/experiments.md.
    """
    result = make_report(target, results=results, out=out, sets=sets, partial=partial, title=title)
    if as_json:
        emit_json(result.to_dict())
        return
    click.echo(result.markdown, nl=False)
    for f in result.files:
        info(f"wrote {f}")
