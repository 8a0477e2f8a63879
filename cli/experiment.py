"""`polarpack experiment` (run a declarative grid of training runs) and `polarpack report`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ._common import emit_json, handle_errors, info, json_option


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--results", type=click.Path(file_okay=False), default=None,
              help="Results directory (default: results/<file stem>): runs/<run_id>/ and index.jsonl.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=1, show_default=True,
              help="Cells run in parallel processes; each gets threads = max(1, cores // jobs) unless the file sets threads.")
@click.option("--nproc-per-run", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes per run: >1 trains each cell with DistributedDataParallel under torchrun "
              "(gloo on CPU, NCCL on GPUs); see docs/distributed.md.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override an option: a TrainConfig field (geometry=imagenet, device=cuda, seed=[0,1]), "
              "weights.MODEL=SOURCE, or grid.KEY=[...]. Repeatable.")
@click.option("--dry-run", is_flag=True, help="List the cells and what would happen to each (run, resume, done, skip); train nothing.")
@json_option
@handle_errors
def experiment(file, results, jobs, nproc_per_run, sets, dry_run, as_json):
    """Run the grid of training runs in FILE (TOML or YAML), resumably.

    Cells run seed-major (all cells of seed 0 first). Finished runs are skipped and interrupted
    ones resume from their checkpoint when the same file is run again; a crashed cell is recorded
    as failed and the grid continues; cells that need missing weights are recorded as skipped.
    Relative paths in FILE resolve against the current directory.

    \b
    Examples:
      polarpack experiment examples/tiny.toml --results results/tiny
      polarpack experiment examples/figure1.toml --jobs 2
      polarpack experiment examples/figure1.toml --set geometry=imagenet --set device=cuda
    """
    from polarpack.experiments import ResultsStore, default_results_dir, load_experiment, plan, run_experiment

    exp = load_experiment(file, sets)
    results = Path(results) if results else default_results_dir(file)
    if dry_run:
        rows = plan(exp, ResultsStore(results))
        if as_json:
            emit_json({"name": exp.name, "results": str(results), "total": len(rows), "cells": rows})
        else:
            for r in rows:
                line = f"{r['action']:7s} {r['run_id']}"
                if r["reason"]:
                    line += f"  ({r['reason']})"
                click.echo(line)
            counts = {}
            for r in rows:
                counts[r["action"]] = counts.get(r["action"], 0) + 1
            info(f"{len(rows)} cells in {results}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
        return
    info(f"{exp.name}: {exp.total} cells -> {results} (jobs={jobs})")
    import signal

    def _stop(signum, frame):  # SIGTERM stops like Ctrl-C: workers end, the index stays consistent
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    result = run_experiment(exp, results, jobs=jobs, progress=True, nproc_per_run=nproc_per_run)
    if as_json:
        emit_json(result.to_dict())
    else:
        info(f"{exp.name}: " + ", ".join(f"{v} {k}" for k, v in sorted(result.counts.items())) + f" ({results})")
    if result.interrupted:
        info("interrupted: run the same command again to resume")
        sys.exit(130)


@click.command()
@click.argument("target", type=click.Path(exists=True))
@click.option("--results", type=click.Path(file_okay=False), default=None,
              help="With an experiment FILE: its results directory (default: results/<file stem>).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Also write report.md, report.json, runs.jsonl and figure.png here.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="The same overrides the experiment ran with.")
@click.option("--partial", is_flag=True, help="Also count unfinished runs, up to their last finished epoch (marked PARTIAL).")
@json_option
@handle_errors
def report(target, results, out, sets, partial, as_json):
    """Aggregate an experiment (FILE or RESULTS_DIR) over seeds: markdown tables, JSON, figure.

    Per group of cells differing only in seed: per-epoch mean and std of train/val accuracy,
    final val accuracy mean ± std, the epoch where the mean val accuracy first reaches 40%, and
    converged k/n (final val acc >= 15% = chance + 5 points). Rows for the paper's presets are
    set next to the seed's Table 1.
    """
    from polarpack.experiments import report as make_report

    result = make_report(target, results=results, out=out, sets=sets, partial=partial)
    if as_json:
        emit_json({k: v for k, v in result.items() if k != "markdown"})
    else:
        click.echo(result["markdown"], nl=False)
        for f in result["files"]:
            info(f"wrote {f}")
