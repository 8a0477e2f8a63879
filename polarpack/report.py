"""Reports over a results store: per-group statistics over seeds, comparisons with 95% intervals,
the seed's Table 1 side by side, and Figure 1/2-style plots.

Definitions. A *group* is the cells that differ only in ``seed``. Per group and epoch: the mean and
sample standard deviation (n - 1) of train and validation accuracy over the seeds that reached the
epoch. ``epochs_to_40`` is the first epoch whose *mean* validation accuracy reaches `THRESHOLD`
(the seed's dashed line). A run *converged* when its final validation accuracy is at least
`CONVERGED_ACC` = chance (0.10) + 0.05 and it did not diverge (the seed's criterion is "above 10%";
the margin keeps a run that hovers at chance from counting). A *dip* is an epoch whose validation
accuracy falls `DIP` (2 points) or more below the previous epoch's.

Comparisons (``[[compare]]`` in the experiment file: a and b select groups by options; each a-group
is matched with the b-group that agrees on every other option) give the difference a - b of the
final validation accuracy and of the per-seed epochs to 40%, with a 95% Student t interval: paired
over seeds when both groups ran the same seeds (same data subset and batch order per seed), else
Welch's. Epochs to 40% has no interval when a run never got there (censored).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from ._io import atomic_write_text, read_json
from .errors import ConfigError
from .grid import NOT_HASHED, UNUSED, Cell, config_hash, load_experiment
from .runner import ResultsStore
from .train import FINISHED, read_metrics

CHANCE_ACC = 0.10
CONVERGED_ACC = CHANCE_ACC + 0.05
THRESHOLD = 0.40
DIP = 0.02
# two-sided 95% Student t quantiles by degrees of freedom; beyond 30 the normal 1.96
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]
_IGNORED = (*NOT_HASHED, "seed")  # options that never split a group


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None, None
    mean = sum(vals) / len(vals)
    return mean, (math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else None)


def t_interval(a: Sequence[float], b: Sequence[float], paired: bool) -> dict[str, Any] | None:
    """Mean difference a - b and its 95% Student t interval (paired, or Welch's). With one run on a
    side there is no spread to estimate: the difference alone, its interval None."""
    if paired:
        d = [x - y for x, y in zip(a, b)]
        mean, sd = mean_std(d)
        if sd is None:
            return None if mean is None else {"diff": mean, "low": None, "high": None, "df": 0, "test": "none (n=1)"}
        df, se = len(d) - 1, sd / math.sqrt(len(d))
    else:
        (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
        if ma is None or mb is None:
            return None
        if sa is None or sb is None:
            return {"diff": ma - mb, "low": None, "high": None, "df": 0, "test": "none (n=1)"}
        va, vb = sa**2 / len(a), sb**2 / len(b)
        mean, se = ma - mb, math.sqrt(va + vb)
        df = int((va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))) if va + vb > 0 else len(a) + len(b) - 2
    half = (_T95[df - 1] if 1 <= df <= len(_T95) else 1.96) * se
    return {"diff": mean, "low": mean - half, "high": mean + half, "df": df,
            "test": "paired t" if paired else "Welch t"}


# -- loading and grouping ------------------------------------------------------------------------


def load_cells(target: str | os.PathLike, results: str | os.PathLike | None = None,
               sets: Sequence[str] = ()) -> tuple[str, list[Cell], ResultsStore, list[dict[str, Any]]]:
    """The cells of an experiment FILE (with its results store), or every run of a RESULTS dir."""
    target = Path(target)
    if target.is_dir():
        store = ResultsStore(target)
        dirs = sorted(p for p in store.runs.glob("*/config.json")) if store.runs.is_dir() else []
        if not dirs:
            raise ConfigError(f"{target}: no runs/<run_id>/config.json here; is it a results folder?")
        cells = [Cell(read_json(p)["config"], p.parent.name) for p in dirs]
        return target.name, cells, store, []
    exp = load_experiment(target, sets)
    return exp.name, exp.cells, ResultsStore(results or Path("results")), exp.compare


def _group_key(config: Mapping[str, Any]) -> str:
    return config_hash({k: v for k, v in config.items() if k not in _IGNORED})


def _varying(cells: Sequence[Cell]) -> list[str]:
    keys = [k for k in cells[0].config if k not in _IGNORED] if cells else []
    return [k for k in keys if len({json.dumps(c.config.get(k), default=str) for c in cells}) > 1]


def _label(config: Mapping[str, Any], varying: Sequence[str]) -> str:
    parts = []
    for key in varying:
        value = config.get(key)
        if value is not None and config.get("method") not in UNUSED.get(key, ()):
            text = Path(str(value)).name if "/" in str(value) and not str(value).startswith("hf://") else str(value)
            parts.append(text if key in ("model", "dataset", "method", "dist", "weights") else f"{key}={text}")
    return " ".join(parts) or str(config.get("method"))


def aggregate(cells: Sequence[Cell], store: ResultsStore, *, partial: bool = False) -> list[dict[str, Any]]:
    """Per group: the per-epoch mean/std curves, final accuracies, convergence, dips. `partial`
    also counts unfinished runs at their last finished epoch (the group says so)."""
    varying = _varying(cells)
    groups: dict[str, dict[str, Any]] = {}
    for cell in cells:
        g = groups.setdefault(_group_key(cell.config), {
            "label": _label(cell.config, varying), "config": {k: v for k, v in cell.config.items() if k != "seed"},
            "planned": 0, "runs": [], "skipped": [], "failed": [], "unfinished": [], "machines": []})
        g["planned"] += 1
        summary = {} if cell.skip_reason else store.summary(cell)
        status = summary.get("status")
        rows = read_metrics(store.run_dir(cell)) if status else []
        if cell.skip_reason:
            g["skipped"].append(cell.skip_reason)
        elif status in FINISHED or (partial and rows):
            g["machines"] = sorted({*g["machines"], _machine(store.run_dir(cell))})
            g["runs"].append({"seed": cell.seed, "status": status if status in FINISHED else "partial",
                              "metrics": rows})
        elif status == "failed":
            g["failed"].append(summary.get("error"))
        else:
            g["unfinished"].append(f"s{cell.seed}: {len(rows)}/{cell.config['epochs']} epochs")
    return [_statistics(g) for g in groups.values()]


def _machine(run_dir: Path) -> str:
    """Where a run computed: kernels differ by GPU and by CPU level, so one group should not mix them."""
    saved = read_json(run_dir / "config.json")
    env, device = saved.get("environment", {}), saved.get("resolved", {}).get("device", "?")
    return env.get("cuda_device") or f"{device} {env.get('cpu_capability', '?')}"


def _statistics(g: dict[str, Any]) -> dict[str, Any]:
    runs = sorted(g.pop("runs"), key=lambda r: r["seed"])
    curve = []
    for epoch in range(1, max((len(r["metrics"]) for r in runs), default=0) + 1):
        at = [m for r in runs for m in r["metrics"] if m["epoch"] == epoch]
        (tm, ts), (vm, vs) = mean_std([m["train_acc"] for m in at]), mean_std([m["val_acc"] for m in at])
        curve.append({"epoch": epoch, "n": len(at), "train_mean": tm, "train_std": ts, "val_mean": vm, "val_std": vs})
    finals = [r["metrics"][-1]["val_acc"] if r["metrics"] else None for r in runs]
    crossings = [next((m["epoch"] for m in r["metrics"] if m["val_acc"] >= THRESHOLD), None) for r in runs]
    dips = [sum(b["val_acc"] <= a["val_acc"] - DIP for a, b in zip(r["metrics"], r["metrics"][1:])) for r in runs]
    fm, fs = mean_std(finals)
    return {**g, "seeds": [r["seed"] for r in runs], "finished": len(runs), "final_val_accs": finals,
            "final_val_mean": fm, "final_val_std": fs,
            "best_val_mean": max((p["val_mean"] for p in curve if p["val_mean"] is not None), default=None),
            "converged": sum(r["status"] != "diverged" and f is not None and f >= CONVERGED_ACC for r,
                             f in zip(runs, finals)),
            "diverged": sum(r["status"] == "diverged" for r in runs),
            "partial": [f"s{r['seed']}: {len(r['metrics'])} epochs" for r in runs if r["status"] == "partial"],
            "epochs_to_40": next((p["epoch"] for p in curve if (p["val_mean"] or 0) >= THRESHOLD), None),
            "epochs_to_40_per_seed": crossings, "dips_mean": mean_std(dips)[0], "curve": curve}


def _matches(a: Mapping[str, Any], b: Mapping[str, Any], ignore: set[str]) -> bool:
    """b agrees with a on every option but `ignore` and those one of the two methods does not use."""
    unused = {k for k, methods in UNUSED.items() if a.get("method") in methods or b.get("method") in methods}
    return all(b.get(k) == v for k, v in a.items() if k not in ignore | unused)


def compare(groups: Sequence[Mapping[str, Any]], specs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each spec's a-groups against their matching b-groups (see the module docstring)."""
    out = []
    for spec in specs:
        a_sel, b_sel = dict(spec.get("a", {})), dict(spec.get("b", {}))
        for ga in (g for g in groups if g["finished"] and all(g["config"].get(k) == v for k, v in a_sel.items())):
            ignore = set(a_sel) | set(b_sel)
            gb = next((g for g in groups if g is not ga and g["finished"] and all(g["config"].get(k) == v for k, v
                       in b_sel.items()) and _matches(ga["config"], g["config"], ignore)), None)
            if gb is None:
                continue
            paired = len(ga["seeds"]) >= 2 and ga["seeds"] == gb["seeds"]  # same seeds: same data subset and order
            acc = t_interval(ga["final_val_accs"], gb["final_val_accs"], paired)
            ea, eb = ga["epochs_to_40_per_seed"], gb["epochs_to_40_per_seed"]
            censored = None in ea + eb
            out.append({"name": spec.get("name", "a - b"), "a": ga["label"], "b": gb["label"],
                        "n": (ga["finished"], gb["finished"]), "final_val_acc": acc,
                        "epochs_to_40": None if censored else t_interval(ea, eb, paired), "censored": censored})
    return out


# -- output --------------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _pm(mean: float | None, std: float | None) -> str:
    return "-" if mean is None else f"{100 * mean:.1f}" + (" (n=1)" if std is None else f" ± {100 * std:.1f}")


def _interval(c: dict[str, Any] | None, scale: float, unit: str) -> str:
    if c is None:
        return "-"
    if c["low"] is None:
        return f"{scale * c['diff']:+.1f}{unit} (no interval: n=1)"
    return f"{scale * c['diff']:+.1f}{unit} [{scale * c['low']:+.1f}, {scale * c['high']:+.1f}]"


def markdown_report(name: str, groups: Sequence[Mapping[str, Any]], comparisons: Sequence[Mapping[str, Any]]) -> str:
    lines = [f"# {name}", "",
             f"Final validation accuracy (%): mean ± sample std over the seeds that finished; converged = "
             f"final val acc >= {100 * CONVERGED_ACC:.0f}%; epochs to 40% = first epoch whose mean val acc >= 40%;",
             f"dips = mean count per run of epochs whose val acc fell >= {100 * DIP:.0f} points.", "",
             "| group | precision | seeds | final val acc % | best epoch mean % | epochs to 40% | converged | dips "
             "| notes |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for g in groups:
        notes = [text for text, show in ((f"{g['diverged']} diverged", g["diverged"]),
                                         (f"failed: {g['failed'][0] if g['failed'] else ''}", g["failed"]),
                                         (f"skipped: {g['skipped'][0] if g['skipped'] else ''}", g["skipped"]),
                                         (f"not finished: {', '.join(g['unfinished'])}", g["unfinished"]),
                                         (f"PARTIAL (at their last epoch): {', '.join(g['partial'])}",
                                          g["partial"]),
                                         (f"mixed machines: {', '.join(g['machines'])}", g["machines"][1:])) if show]
        dips = "-" if g["dips_mean"] is None else f"{g['dips_mean']:.1f}"
        lines.append(f"| {g['label']} | {g['config'].get('precision', '-')} | {g['finished']}/{g['planned']} | "
                     f"{_pm(g['final_val_mean'], g['final_val_std'])} | {_pct(g['best_val_mean'])} | "
                     f"{g['epochs_to_40'] or '-'} | "
                     f"{g['converged']}/{g['finished']} | {dips} | {'; '.join(notes).replace('|', '/')} |")
    if comparisons:
        lines += ["", "## Comparisons (a - b, 95% t interval over seeds)", "",
                  "| comparison | a | b | runs (a, b) | final val acc, points | epochs to 40% | interval |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for c in comparisons:
            epochs = "n/a: a run never reached 40%" if c["censored"] else _interval(c["epochs_to_40"], 1, "")
            test = (c["final_val_acc"] or {}).get("test", "-")
            lines.append(f"| {c['name']} | {c['a']} | {c['b']} | {c['n'][0]}, {c['n'][1]} | "
                         f"{_interval(c['final_val_acc'], 100, '')} "
                         f"| {epochs} | {test} |")
    table1 = table1_markdown(groups)
    lines += ["", table1] if table1 else []
    lines += ["", "## Validation accuracy per epoch (mean ± std, %)", ""]
    lines += [f"- **{g['label']}** ({g['finished']} runs): "
              "" + ", ".join(f"{p['epoch']}: {_pm(p['val_mean'], p['val_std'])}"
              for p in g["curve"]) for g in groups if g["curve"]]
    return "\n".join(lines) + "\n"


def table1_markdown(groups: Sequence[Mapping[str, Any]]) -> str | None:
    """The seed's Table 1 next to ours: one row per Table 1 preset, a column pair per zeros mode."""
    from .presets import PRESETS

    rows = [g for g in groups if g["config"].get("method") == "freeze-spin"
            and PRESETS.get(g["config"].get("dist"),
                            None) is not None and PRESETS[g["config"]["dist"]].paper_converged is not None]
    if len({g["config"]["dist"] for g in rows}) < 2:  # one distribution is not the seed's table
        return None
    zeros = sorted({g["config"]["zeros"] for g in rows}, key=lambda z: z != "pin")
    lines = ["## Table 1: the seed's results next to ours (Freeze SPIN-Polarity)", "",
             "Paper: ZFNet, CIFAR-10, 20 epochs. Ours: mean ± std over seeds; converged k/n (final >= "
             f"{100 * CONVERGED_ACC:.0f}%).",
             "", "| experiment | paper converged | paper val acc % | "
                 "" + " | ".join(f"zeros={z}: val acc % | converged" for z in zeros) + " |",
             "| --- | --- | --- | " + " | ".join("--- | ---" for _ in zeros) + " |"]
    for name, preset in PRESETS.items():
        if preset.paper_converged is None:
            continue
        cells = []
        for z in zeros:
            g = next((g for g in rows if g["config"]["dist"] == name and g["config"]["zeros"] == z), None)
            cells.append("not run | -" if g is None or not g["finished"] else
                         f"{_pm(g['final_val_mean'], g['final_val_std'])} | {g['converged']}/{g['finished']}")
        lines.append(f"| {name} | {'yes' if preset.paper_converged else 'no'} | {preset.paper_accuracy} | "
                     "" + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_figure(groups: Sequence[Mapping[str, Any]], path: str | os.PathLike, title: str = "") -> Path | None:
    """Figure 1/2 style: a column per model x dataset, training and validation rows; per group the
    mean over seeds with a ±1 std band, a dashed line where the mean validation accuracy reaches 40%."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [g for g in groups if g["curve"]]
    if not groups:
        return None
    panels = sorted({(g["config"]["model"], g["config"]["dataset"]) for g in groups})
    fig, axes = plt.subplots(2, len(panels), figsize=(max(8.0, 5.5 * len(panels)), 8.5), squeeze=False, sharey="row")
    labels = sorted({_panel_label(g) for g in groups})
    colors = {label: (plt.cm.tab10 if len(labels) <= 10 else plt.cm.tab20)(i % 20) for i, label in enumerate(labels)}
    for col, (model, dataset) in enumerate(panels):
        for g in (g for g in groups if (g["config"]["model"], g["config"]["dataset"]) == (model, dataset)):
            label, epochs = _panel_label(g), [p["epoch"] for p in g["curve"]]
            for row, key in enumerate(("train", "val")):
                mean = [100 * (p[f"{key}_mean"] or 0) for p in g["curve"]]
                std = [100 * (p[f"{key}_std"] or 0) for p in g["curve"]]
                ax = axes[row][col]
                ax.plot(epochs, mean, color=colors[label], label=f"{label} (n={g['finished']})" if row else None)
                ax.fill_between(epochs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                                color=colors[label], alpha=0.15, linewidth=0)
                if g["epochs_to_40"]:
                    ax.axvline(g["epochs_to_40"], color=colors[label], linestyle="--", linewidth=1)
        for row, what in enumerate(("training", "validation")):
            ax = axes[row][col]
            ax.set_title(f"{model} on {dataset}: {what} accuracy (mean ± std over seeds)", fontsize=9)
            ax.set(xlabel="epoch", ylabel=f"{what} accuracy (%)")
            ax.axhline(100 * THRESHOLD, color="grey", linewidth=0.8, linestyle=":")
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.grid(alpha=0.3)
    handles, names = axes[1][0].get_legend_handles_labels()
    for ax in axes[1][1:]:
        handles, names = handles + ax.get_legend_handles_labels()[0], names + ax.get_legend_handles_labels()[1]
    unique = dict(zip(names, handles))
    fig.legend(unique.values(), unique.keys(), loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.suptitle((title + "\n" if title else "") + "dotted: 40%; dashed: the epoch where a group's mean validation "
                 "accuracy reaches it", fontsize=10)
    fig.tight_layout(rect=(0, 0.04 + 0.022 * ((len(unique) + 1) // 2), 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _panel_label(g: Mapping[str, Any]) -> str:
    skip = (str(g["config"]["model"]), str(g["config"]["dataset"]))
    return " ".join(p for p in g["label"].split(" ") if p not in skip) or str(g["config"]["method"])


def report(target: str | os.PathLike, *, results: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
           sets: Sequence[str] = (), partial: bool = False, title: str = "") -> dict[str, Any]:
    """Aggregate an experiment; with `out`, also write report.md, report.json, runs.jsonl, figure.png."""
    name, cells, store, specs = load_cells(target, results, sets)
    groups = aggregate(cells, store, partial=partial)
    comparisons = compare(groups, specs)
    name = (title or name) + (" (unfinished runs counted at their last epoch)" if partial else "")
    result = {"name": name, "results": str(store.root), "converged_acc": CONVERGED_ACC, "threshold": THRESHOLD,
              "groups": groups, "comparisons": comparisons, "markdown": markdown_report(name, groups, comparisons),
              "files": []}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        runs = [{"run_id": c.run_id, "seed": c.seed, **{k: c.config.get(k) for k in ("model", "dataset", "method",
                                                                                     "dist", "zeros",
                 "fluid_mode", "fluid_fraction", "precision")},
                 **{k: v for k, v in store.summary(c).items() if k != "run_token"}}
                for c in cells if not c.skip_reason]
        atomic_write_text(out / "report.md", result["markdown"])
        atomic_write_text(out / "report.json",
                          json.dumps({k: v for k, v in result.items() if k not in ("markdown", "files")},
                                                          indent=1, default=str) + "\n")
        atomic_write_text(out / "runs.jsonl", "".join(json.dumps(r, default=str) + "\n" for r in runs))
        figure = plot_figure(groups, out / "figure.png", title)
        result["files"] = [str(out / f) for f in ("report.md", "report.json",
                                                  "runs.jsonl")] + ([str(figure)] if figure else [])
    return result
