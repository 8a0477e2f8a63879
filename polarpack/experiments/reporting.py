"""Reports over a results store: per-group statistics over seeds, comparisons with 95% intervals,
family-adjusted p-values and equivalence tests, the paper's Table 1 side by side, and Figure
1/2-style plots.

Definitions. A *group* is the cells that differ only in ``seed``. Per group and epoch: the mean
and sample standard deviation (n - 1) of train and validation accuracy over the seeds that reached
the epoch (the curve: a picture). *Epochs to threshold* is, per run, the first epoch whose
validation accuracy reaches the runs' `threshold` option (the paper's 40%); a group gives the mean
and standard deviation of its runs' crossings and names the runs that never cross, which are
counted, not dropped. A run *converged* when its final validation accuracy is at least chance (1 /
the number of classes) + 5 points and it did not diverge (the paper's criterion is "above 10%" on
ten classes; the margin keeps a run that hovers at chance from counting). A *dip* is an epoch whose
validation accuracy falls 2 points or more below the previous epoch's.

Comparisons (``[[compare]]`` in the experiment file; `polarpack.experiments.comparisons`) give
the difference a - b of the final validation accuracy and of the per-run epochs to threshold,
with a 95% Student t interval and a p-value beside its Holm adjustment over the report's
comparisons; the estimates within each kind of machine where the pairs ran on several; and, with
a `margin = { final_val_acc = 0.02, epochs_to_40 = 1 }`, two one-sided tests (TOST) with their
power. Epochs to threshold has no interval when a run never got there (censored). Every
comparison says which machines and commits its pairs used.

A metrics file whose accuracies are not numbers between 0 and 1 (NaN, infinite, out of range) is
an error naming the file and the epoch: such a value is neither a measurement nor a missing one.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from polarpack._io import atomic_write_text, printable
from polarpack.errors import ConfigError, PolarpackError
from polarpack.experiments.comparisons import (
    Comparison,
    compare,
    compare_each,
    comparison,
    comparisons_markdown,
    crossing,
    paired_runs,
)
from polarpack.experiments.grid import (
    NOT_HASHED,
    UNUSED,
    Cell,
    CompareSpec,
    config_hash,
    load_experiment,
    method_of,
)
from polarpack.experiments.statistics import mean_std
from polarpack.experiments.store import ResultsStore
from polarpack.training import runs
from polarpack.training.config import TrainConfig
from polarpack.training.runs import FINISHED, EpochRow, machine_kind

__all__ = ["Comparison", "Group", "Report", "Run", "compare", "compare_each", "comparison"]
__all__ += ["aggregate", "markdown_report", "paired_runs", "plot_figure", "report"]

CONVERGED_MARGIN = 0.05  # above chance
DIP = 0.02
_IGNORED = (*NOT_HASHED, "seed")  # options that never split a group


@dataclass
class Run:
    """One finished (or, with `partial`, unfinished) run of a group."""

    seed: int
    status: str  # completed | diverged | partial
    metrics: list[EpochRow]
    machine: str  # the kind of machine it computed on
    commit: str | None
    chance: float
    started_over: list[str] = field(default_factory=list)  # attempts set aside: how far, where

    @property
    def final(self) -> float | None:
        return self.metrics[-1]["val_acc"] if self.metrics else None


@dataclass
class CurvePoint:
    epoch: int
    n: int
    train_mean: float | None
    train_std: float | None
    val_mean: float | None
    val_std: float | None


@dataclass
class Group:
    """The cells that differ only in seed, and their statistics."""

    label: str
    config: TrainConfig  # its first cell's options: every cell's, the seed aside
    planned: int = 0
    runs: list[Run] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)
    curve: list[CurvePoint] = field(default_factory=list)

    @property
    def threshold(self) -> float:
        return self.config.threshold

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]

    @property
    def finished(self) -> int:
        return len(self.runs)

    @property
    def final_val_accs(self) -> list[float | None]:
        return [r.final for r in self.runs]

    @property
    def final_val_mean(self) -> float | None:
        return mean_std(self.final_val_accs)[0]

    @property
    def final_val_std(self) -> float | None:
        return mean_std(self.final_val_accs)[1]

    @property
    def best_val_mean(self) -> float | None:
        return max((p.val_mean for p in self.curve if p.val_mean is not None), default=None)

    @property
    def converged(self) -> int:
        return sum(
            r.status != "diverged"
            and r.final is not None
            and r.final >= r.chance + CONVERGED_MARGIN
            for r in self.runs
        )

    @property
    def diverged(self) -> int:
        return sum(r.status == "diverged" for r in self.runs)

    @property
    def partial(self) -> list[str]:
        return [f"s{r.seed}: {len(r.metrics)} epochs" for r in self.runs if r.status == "partial"]

    @property
    def epochs_to_threshold_per_seed(self) -> list[int | None]:
        """Each run's first epoch at the threshold; None: it never got there."""
        return [crossing(r, self.threshold) for r in self.runs]

    @property
    def never_reached(self) -> list[int]:
        """The seeds whose run never reached the threshold."""
        return [r.seed for r in self.runs if crossing(r, self.threshold) is None]

    @property
    def epochs_to_threshold(self) -> float | None:
        """The mean of the runs' crossings; None when a run never crossed (see
        `never_reached`: a mean without it would flatter the group)."""
        crossings = self.epochs_to_threshold_per_seed
        return None if None in crossings else mean_std(crossings)[0]

    @property
    def epochs_to_threshold_std(self) -> float | None:
        crossings = self.epochs_to_threshold_per_seed
        return None if None in crossings else mean_std(crossings)[1]

    @property
    def mean_curve_crossing(self) -> int | None:
        """The first epoch whose mean validation accuracy reaches the threshold: where the
        figure draws its dashed line, not a statistic."""
        return next((p.epoch for p in self.curve if (p.val_mean or 0) >= self.threshold), None)

    @property
    def dips_mean(self) -> float | None:
        dips = [
            sum(b["val_acc"] <= a["val_acc"] - DIP for a, b in itertools.pairwise(r.metrics))
            for r in self.runs
        ]
        return mean_std(dips)[0]

    @property
    def machines(self) -> list[str]:
        return sorted({r.machine for r in self.runs})

    @property
    def commits(self) -> list[str]:
        return sorted({(r.commit or "unknown")[:8] for r in self.runs})

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: the fields and the statistics."""
        names = (
            "threshold",
            "seeds",
            "finished",
            "final_val_accs",
            "final_val_mean",
            "final_val_std",
            "best_val_mean",
            "converged",
            "diverged",
            "partial",
            "epochs_to_threshold",
            "epochs_to_threshold_std",
            "epochs_to_threshold_per_seed",
            "never_reached",
            "mean_curve_crossing",
            "dips_mean",
            "machines",
            "commits",
        )
        runs = [
            {
                "seed": r.seed,
                "status": r.status,
                "final_val_acc": r.final,
                "epochs": len(r.metrics),
                "machine": r.machine,
                "commit": r.commit,
                **({"started_over": r.started_over} if r.started_over else {}),
            }
            for r in self.runs
        ]  # the per-epoch metrics are in each run's metrics.jsonl
        record = {k: v for k, v in asdict(self).items() if k != "runs"}
        record["config"] = {k: v for k, v in record["config"].items() if k != "seed"}
        return record | {"runs": runs} | {name: getattr(self, name) for name in names}


@dataclass
class Report:
    name: str
    results: str
    groups: list[Group]
    comparisons: list[Comparison]
    markdown: str = ""
    files: list[str] = field(default_factory=list)
    not_compared: list[str] = field(default_factory=list)  # [[compare]] names nothing matched

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "results": self.results,
            "groups": [g.to_dict() for g in self.groups],
            "comparisons": [asdict(c) for c in self.comparisons],
            "not_compared": self.not_compared,
            "files": self.files,
        }


# -- loading and grouping ------------------------------------------------------------------------


def load_cells(
    target: str | os.PathLike, results: str | os.PathLike | None = None, sets: Sequence[str] = ()
) -> tuple[str, list[Cell], ResultsStore, list[CompareSpec]]:
    """The cells of an experiment FILE (with its results store), or every run of a RESULTS
    dir."""
    target = Path(target)
    if not target.is_dir():
        exp = load_experiment(target, sets)
        return exp.name, exp.cells, ResultsStore(results or Path("results")), exp.compare
    store = ResultsStore(target)
    dirs = sorted(p.parent for p in store.runs.glob("*/config.json")) if store.runs.is_dir() else []
    if not dirs:
        raise ConfigError(f"{target}: no runs/<run_id>/config.json here; is it a results folder?")
    return target.name, [Cell(_options(d), d.name) for d in dirs], store, []


def _options(run_dir: Path) -> TrainConfig:
    try:
        return TrainConfig.from_dict(runs.load_config(run_dir).options)
    except (ConfigError, TypeError) as exc:
        raise ConfigError(
            f"{run_dir / runs.CONFIG_FILE}: its options do not make a run here ({exc}); "
            "restore or remove that run"
        ) from None


def _group_key(config: TrainConfig) -> str:
    return config_hash({k: v for k, v in config.to_dict().items() if k not in _IGNORED})


def _varying(cells: Sequence[Cell]) -> list[str]:
    keys = [f.name for f in fields(TrainConfig) if f.name not in _IGNORED]
    return [
        k for k in keys if len({json.dumps(getattr(c.config, k), default=str) for c in cells}) > 1
    ]


def _label(config: TrainConfig, varying: Sequence[str]) -> str:
    parts = []
    for key in varying:
        value = getattr(config, key)
        if value is None or config.method in UNUSED.get(key, ()):
            continue
        text = str(value)
        if "/" in text and not text.startswith("hf://"):
            text = Path(text).name
        named = key in ("model", "dataset", "method", "dist", "weights")
        parts.append(text if named else f"{key}={text}")
    return printable(" ".join(parts) or config.method)


def checked_metrics(run_dir: Path) -> list[EpochRow]:
    """The run's epochs, each accuracy a number between 0 and 1: a NaN, an infinity or 1e308 is
    neither a measurement nor a missing one, so it is an error naming the file and the epoch."""
    rows = runs.read_metrics(run_dir)
    for row in rows:
        for key in ("train_acc", "val_acc"):
            value = row.get(key)
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if not (number and 0.0 <= value <= 1.0):  # NaN fails every comparison
                raise ConfigError(
                    f"{run_dir / runs.METRICS_FILE}: epoch {row['epoch']} has {key} = "
                    f"{value!r}, not an accuracy between 0 and 1 (a damaged or foreign file); "
                    "restore it, or rerun the run"
                )
    return rows


def _computed_on(saved: runs.RunConfig) -> str:
    """The kind of machine a run computed on; one resumed on another kind is a kind of its own."""
    device = str(saved.resolved.get("device", "?"))
    kind = home = machine_kind(saved.environment, device)
    for resume in saved.resumes:
        there = resume.get("environment")
        if isinstance(there, dict) and (elsewhere := machine_kind(there, device)) != home:
            kind += f", from epoch {resume.get('epoch')} {elsewhere}"
    return kind


def _run(cell: Cell, run_dir: Path, status: str, rows: list[EpochRow]) -> Run:
    saved = runs.load_config(run_dir)
    classes = saved.resolved.get("num_classes") or 10
    return Run(
        cell.seed,
        status if status in FINISHED else "partial",
        rows,
        _computed_on(saved),
        saved.environment.get("git_commit"),
        1.0 / classes,
        [f"to epoch {a.epochs} on {_computed_on(a.saved)}" for a in runs.earlier_attempts(run_dir)],
    )


def aggregate(cells: Sequence[Cell], store: ResultsStore, *, partial: bool = False) -> list[Group]:
    """The groups with their runs and curves. `partial` also counts unfinished runs at their last
    finished epoch (the group says so)."""
    varying, groups = _varying(cells), {}
    for cell in cells:
        group = groups.setdefault(
            _group_key(cell.config), Group(_label(cell.config, varying), cell.config)
        )
        group.planned += 1
        run_dir = store.checked_run_dir(cell)
        summary = runs.load_summary(run_dir)
        if cell.skip_reason and summary is None:  # a missing input stops a run, not its report
            group.skipped.append(printable(cell.skip_reason))
            continue
        status = summary.status if summary else None
        rows = checked_metrics(run_dir) if status else []
        if status in FINISHED and not rows:
            raise ConfigError(
                f"{run_dir}: its {runs.SUMMARY_FILE} says {status} but {runs.METRICS_FILE} holds "
                f"no epochs (a damaged or partly copied run); restore {runs.METRICS_FILE}, or "
                "remove the folder to run the cell again"
            )
        if status in FINISHED or (partial and rows):
            group.runs.append(_run(cell, run_dir, status, rows))
        elif summary and status == "failed":
            group.failed.append(printable(str(summary.error)))
        else:
            group.unfinished.append(f"s{cell.seed}: {len(rows)}/{cell.config.epochs} epochs")
    for group in groups.values():
        group.runs.sort(key=lambda r: r.seed)
        group.curve = _curve(group.runs)
    return list(groups.values())


def _curve(group_runs: Sequence[Run]) -> list[CurvePoint]:
    curve = []
    for epoch in range(1, max((len(r.metrics) for r in group_runs), default=0) + 1):
        at = [m for r in group_runs for m in r.metrics if m["epoch"] == epoch]
        (tm, ts) = mean_std([m["train_acc"] for m in at])
        (vm, vs) = mean_std([m["val_acc"] for m in at])
        curve.append(CurvePoint(epoch, len(at), tm, ts, vm, vs))
    return curve


# -- output --------------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{100 * mean:.1f}" + (" (n=1)" if std is None else f" ± {100 * std:.1f}")


def _notes(g: Group) -> str:
    shown = [
        (f"{g.diverged} diverged", g.diverged),
        (f"failed: {g.failed[0] if g.failed else ''}", g.failed),
        (f"skipped: {g.skipped[0] if g.skipped else ''}", g.skipped),
        (f"not finished: {', '.join(g.unfinished)}", g.unfinished),
        (f"PARTIAL (at their last epoch): {', '.join(g.partial)}", g.partial),
        (f"mixed machines: {', '.join(g.machines)}", g.machines[1:]),
    ]
    return "; ".join(text for text, show in shown if show).replace("|", "/")


def _crossings(g: Group) -> str:
    """The mean ± std of the runs' epochs to threshold, and which never got there."""
    reached = [c for c in g.epochs_to_threshold_per_seed if c is not None]
    mean, std = mean_std(reached)
    text = "-" if mean is None else f"{mean:.1f}" + ("" if std is None else f" ± {std:.1f}")
    if not g.never_reached:
        return text if g.runs else "-"
    never = ", ".join(f"s{s}" for s in g.never_reached)
    if not reached:
        return f"never ({never})"
    return f"{text} ({len(reached)} run{'s' if len(reached) > 1 else ''}); never: {never}"


def _groups_table(groups: Sequence[Group]) -> list[str]:
    threshold = {f"{100 * g.threshold:.0f}%" for g in groups} or {"40%"}
    lines = [
        "Final validation accuracy (%): mean ± sample std over the seeds that finished; converged "
        f"= final val acc >= chance + {100 * CONVERGED_MARGIN:.0f} points; epochs to "
        f"{'/'.join(sorted(threshold))} = mean ± std over runs of each run's first epoch whose "
        "val acc reaches it (a run that never does is named, not averaged);",
        f"dips = mean count per run of epochs whose val acc fell >= {100 * DIP:.0f} points.",
        "",
        "| group | precision | seeds | final val acc % | best epoch mean % | epochs to threshold "
        "| converged | dips | notes |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for g in groups:
        dips = "-" if g.dips_mean is None else f"{g.dips_mean:.1f}"
        lines.append(
            f"| {g.label} | {g.config.precision} | {g.finished}/{g.planned} | "
            f"{_pm(g.final_val_mean, g.final_val_std)} | {_pct(g.best_val_mean)} | "
            f"{_crossings(g)} | {g.converged}/{g.finished} | {dips} | {_notes(g)} |"
        )
    return lines


def _provenance(groups: Sequence[Group]) -> list[str]:
    """Which machines and commits the runs computed on, with how many runs each."""
    machines: dict[str, int] = {}
    commits: dict[str, int] = {}
    for run in (r for g in groups for r in g.runs):
        machines[run.machine] = machines.get(run.machine, 0) + 1
        commit = (run.commit or "not recorded")[:8]
        commits[commit] = commits.get(commit, 0) + 1
    if not machines:
        return []
    restarts = [
        f"{g.label} seed {r.seed} (set aside: {'; '.join(r.started_over)})"
        for g in groups
        for r in g.runs
        if r.started_over
    ]
    return [
        "",
        "Runs computed on "
        + "; ".join(f"{m} ({n})" for m, n in machines.items())
        + ", from commits "
        + ", ".join(f"{c} ({n})" for c, n in sorted(commits.items()))
        + ".",
        *(
            [
                "",
                "Started over from epoch 0 rather than resumed on another kind of machine: "
                + ", ".join(restarts)
                + ".",
            ]
            if restarts
            else []
        ),
    ]


def markdown_report(
    name: str,
    groups: Sequence[Group],
    comparisons: Sequence[Comparison],
    unmatched: Sequence[str] = (),
) -> str:
    lines = [f"# {printable(name)}", "", *_groups_table(groups), *_provenance(groups)]
    if comparisons:
        lines += comparisons_markdown(comparisons)
    if unmatched:
        lines += [
            "",
            "Not compared (no finished group matches a, or none matching b agrees with it on "
            "every option the two selectors leave out): "
            + "; ".join(printable(n) for n in unmatched)
            + ".",
        ]
    table1 = table1_markdown(groups)
    lines += ["", table1] if table1 else []
    lines += ["", "## Validation accuracy per epoch (mean ± std, %)", ""]
    lines += [
        f"- **{g.label}** ({g.finished} runs): "
        + ", ".join(f"{p.epoch}: {_pm(p.val_mean, p.val_std)}" for p in g.curve)
        for g in groups
        if g.curve
    ]
    return "\n".join(lines) + "\n"


def table1_markdown(groups: Sequence[Group]) -> str | None:
    """The paper's Table 1 next to ours: one row per Table 1 preset, a column pair per zeros
    mode."""
    from polarpack.sources.presets import PRESETS

    def is_row(g: Group) -> bool:
        preset = PRESETS.get(g.config.dist)
        return (
            getattr(method_of(g.config.method), "algorithm", None) == 1
            and preset is not None
            and (preset.paper_converged is not None)
        )

    rows = [g for g in groups if is_row(g)]
    if len({g.config.dist for g in rows}) < 2:  # one distribution is not the paper's table
        return None
    zeros = sorted({g.config.zeros for g in rows}, key=lambda z: z != "pin")
    lines = [
        "## Table 1: the paper's results next to ours (Freeze SPIN-Polarity)",
        "",
        "Paper: ZFNet, CIFAR-10, 20 epochs. Ours: mean ± std over seeds; converged k/n (final "
        f">= chance + {100 * CONVERGED_MARGIN:.0f} points).",
        "",
        "| experiment | paper converged | paper val acc % | "
        + " | ".join(f"zeros={z}: val acc % | converged" for z in zeros)
        + " |",
        "| --- | --- | --- | " + " | ".join("--- | ---" for _ in zeros) + " |",
    ]
    for name, preset in PRESETS.items():
        if preset.paper_converged is None:
            continue
        cells = []
        for z in zeros:
            g = next((g for g in rows if g.config.dist == name and g.config.zeros == z), None)
            cells.append(
                "not run | -"
                if g is None or not g.finished
                else f"{_pm(g.final_val_mean, g.final_val_std)} | {g.converged}/{g.finished}"
            )
        lines.append(
            f"| {name} | {'yes' if preset.paper_converged else 'no'} | "
            f"{preset.paper_accuracy} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"


def _panel_label(g: Group) -> str:
    skip = (g.config.model, g.config.dataset)
    return " ".join(p for p in g.label.split(" ") if p not in skip) or g.config.method


def plot_figure(groups: Sequence[Group], path: str | os.PathLike, title: str = "") -> Path | None:
    """Figure 1/2 style: a column per model x dataset, training and validation rows; per group the
    mean over seeds with a ±1 std band, a dashed line where the mean validation accuracy reaches
    the threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [g for g in groups if g.curve]
    if not groups:
        return None
    panels = sorted({(g.config.model, g.config.dataset) for g in groups})
    fig, axes = plt.subplots(
        2, len(panels), figsize=(max(8.0, 5.5 * len(panels)), 8.5), squeeze=False, sharey="row"
    )
    labels = sorted({_panel_label(g) for g in groups})
    cmap = plt.cm.tab10 if len(labels) <= 10 else plt.cm.tab20
    colors = {label: cmap(i % 20) for i, label in enumerate(labels)}
    for col, panel in enumerate(panels):
        for g in (g for g in groups if (g.config.model, g.config.dataset) == panel):
            _plot_group(axes[:, col], g, colors[_panel_label(g)])
        _decorate(axes[:, col], panel, groups[0].threshold)
    handles, names = [], []
    for ax in axes[1]:
        h, n = ax.get_legend_handles_labels()
        handles, names = handles + h, names + n
    unique = dict(zip(names, handles, strict=True))
    fig.legend(
        unique.values(), unique.keys(), loc="lower center", ncol=2, fontsize=8, frameon=False
    )
    fig.suptitle(
        (title + "\n" if title else "") + "dotted: the threshold; dashed: the epoch where "
        "a group's mean validation accuracy reaches it",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.04 + 0.022 * ((len(unique) + 1) // 2), 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_group(column, g: Group, color) -> None:
    epochs = [p.epoch for p in g.curve]
    for row, key in enumerate(("train", "val")):
        mean = [100 * (getattr(p, f"{key}_mean") or 0) for p in g.curve]
        std = [100 * (getattr(p, f"{key}_std") or 0) for p in g.curve]
        ax = column[row]
        label = f"{_panel_label(g)} (n={g.finished})" if row else None
        ax.plot(epochs, mean, color=color, label=label)
        ax.fill_between(
            epochs,
            [m - s for m, s in zip(mean, std, strict=True)],
            [m + s for m, s in zip(mean, std, strict=True)],
            color=color,
            alpha=0.15,
            linewidth=0,
        )
        if g.mean_curve_crossing:
            ax.axvline(g.mean_curve_crossing, color=color, linestyle="--", linewidth=1)


def _decorate(column, panel: tuple[str, str], threshold: float) -> None:
    model, dataset = panel
    for row, what in enumerate(("training", "validation")):
        ax = column[row]
        ax.set_title(f"{model} on {dataset}: {what} accuracy (mean ± std over seeds)", fontsize=9)
        ax.set(xlabel="epoch", ylabel=f"{what} accuracy (%)")
        ax.axhline(100 * threshold, color="grey", linewidth=0.8, linestyle=":")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)


def report(
    target: str | os.PathLike,
    *,
    results: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    sets: Sequence[str] = (),
    partial: bool = False,
    title: str = "",
) -> Report:
    """Aggregate an experiment; with `out`, also write report.md, report.json, runs.jsonl and
    figure.png."""
    name, cells, store, specs = load_cells(target, results, sets)
    try:
        groups = aggregate(cells, store, partial=partial)
    except (KeyError, TypeError, AttributeError) as exc:  # a run file of another shape
        raise PolarpackError(
            f"{store.root}: a run's files do not have the shape polarpack writes "
            f"({type(exc).__name__}: {exc}); restore or remove that run"
        ) from None
    per_spec = compare_each(groups, specs)
    comparisons = [c for made in per_spec for c in made]
    # a selector that matches nothing, or groups that differ in an option neither side names,
    # would otherwise vanish from the report without a word
    unmatched = [s.name for s, made in zip(specs, per_spec, strict=True) if not made]
    name = (title or name) + (" (unfinished runs counted at their last epoch)" if partial else "")
    markdown = markdown_report(name, groups, comparisons, unmatched)
    result = Report(name, str(store.root), groups, comparisons, markdown, not_compared=unmatched)
    if out is not None:
        result.files = _write(Path(out), result, cells, store, title)
    return result


def _summary_columns(summary: runs.RunSummary | None) -> dict[str, Any]:
    """A run's summary in runs.jsonl: all but what ties its files together."""
    data = summary.to_json() if summary else {}
    return {k: v for k, v in data.items() if k not in ("run_token", "config_digest")}


def _write(
    out: Path, result: Report, cells: Sequence[Cell], store: ResultsStore, title: str
) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    keys = (
        "model",
        "dataset",
        "method",
        "dist",
        "weights",
        "norms",
        "zeros",
        "fluid_mode",
        "fluid_fraction",
        "optimizer",
        "lr",
        "momentum",
        "precision",
    )
    rows = [
        {
            "run_id": c.run_id,
            "seed": c.seed,
            **{k: getattr(c.config, k) for k in keys},
            **_summary_columns(summary),
        }
        for c in cells
        if (summary := runs.load_summary(store.run_dir(c))) or not c.skip_reason
    ]
    atomic_write_text(out / "report.md", result.markdown)
    atomic_write_text(
        out / "report.json", json.dumps(result.to_dict(), indent=1, default=str) + "\n"
    )
    atomic_write_text(out / "runs.jsonl", "".join(json.dumps(r, default=str) + "\n" for r in rows))
    figure = plot_figure(result.groups, out / "figure.png", title)
    return [str(out / f) for f in ("report.md", "report.json", "runs.jsonl")] + (
        [str(figure)] if figure else []
    )
