"""The granularity ladder on two ImageNet families: final validation accuracy against the bytes of
ImageNet information each rung transfers, from the results of examples/ladder.toml (MobileNetV2)
and examples/ladder_efficientnet.toml (EfficientNet-Lite0).

    python examples/ladder_figure.py --results results --out docs/results/ladder

Writes, in --out: each family's report (report.md, report.json, runs.jsonl, figure.png in a
folder of its own), table.md, table.json and ladder.png.

Bytes per rung. *Information bytes*: the coded size of what the rung transfers, in the compact
`.polar.safetensors` encoding (spec/polar-format.md): the coded counts or signs, plus the channel
scales and the BatchNorm tensors as their float32 bytes; fine-tuning transfers every float32
tensor but the classifier head. *File bytes*: the file the rung reads (the JSON `.polar` for the
layer and channel rungs, as the runs used; the checkpoint for fine-tuning). scratch and Freeze
RAND transfer none; the figure draws them at its left edge.

Share of the gap: (rung - scratch) / (fine-tuning - scratch) of the mean final accuracy; its
interval is the 95% interval of rung - scratch (paired by seed where each pair ran on one kind of
machine, else Welch's over all runs, as in the reports) divided by the gap's mean, which is known
to within a point or two.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from scipy import stats

from polarpack._io import atomic_write_text
from polarpack.experiments.reporting import Group, comparison, report
from polarpack.format import load, size_report
from polarpack.sources.references import names_distribution
from polarpack.sources.weights import load_state_dict
from polarpack.training.config import TrainConfig

EXAMPLES = Path(__file__).resolve().parent
FAMILIES = {"MobileNetV2": "ladder.toml", "EfficientNet-Lite0": "ladder_efficientnet.toml"}
ORDER = [
    "scratch",
    "Freeze RAND",
    "Freeze SPIN, layer",
    "Freeze SPIN, channel",
    "Freeze IN, pattern",
    "Fluid IN-Polarity, pattern",
    "signs x scale, frozen",
    "signs x scale, free",
    "signs x scale + BatchNorm",
    "BatchNorm alone",
    "Fluid IN",
]


def folder_name(family: str) -> str:
    """Where a family's report goes under --out: "EfficientNet-Lite0" -> "efficientnet_lite0"."""
    return family.lower().replace("-", "_")


def rung_name(config: TrainConfig) -> str:
    method, ref = config.method, config.dist or config.weights or ""
    if method == "scratch":
        return "BatchNorm alone" if config.norms else "scratch"
    if method == "fluid-in":
        return "Fluid IN"
    if method == "freeze-spin":
        return "Freeze RAND" if "rand5050" in ref else f"Freeze SPIN, {load(ref).granularity}"
    if "scaled" in ref:
        if config.norms:
            return "signs x scale + BatchNorm"
        return "signs x scale, free" if method == "fluid-in-polarity" else "signs x scale, frozen"
    return "Fluid IN-Polarity, pattern" if method == "fluid-in-polarity" else "Freeze IN, pattern"


def rung_bytes(name: str, config: TrainConfig) -> tuple[int, int]:
    """(information bytes, file bytes) of a rung; see the module docstring."""
    if name in ("scratch", "Freeze RAND"):
        file = config.dist or ""
        return 0, Path(file).stat().st_size if file else 0
    if name == "Fluid IN":
        state = load_state_dict(config.weights)
        head = [k for k in state if k.startswith(("classifier.", "fc."))]
        floats = sum(t.numel() for k, t in state.items() if t.is_floating_point() and k not in head)
        return 4 * floats, Path(config.weights).stat().st_size
    ref = config.norms if name == "BatchNorm alone" else config.dist or config.weights
    assert names_distribution(ref), ref
    sizes = size_report(load(ref))
    info = sizes["norm_bytes"] if name == "BatchNorm alone" else sizes["coded_bytes"]
    return info, Path(ref).stat().st_size


def mean_interval(values: list[float]) -> tuple[float | None, float | None]:
    """The 95% t interval of a mean (None with one run)."""
    n = len(values)
    if n < 2:
        return None, None
    mean = sum(values) / n
    sd = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5
    half = stats.t.ppf(0.975, n - 1) * sd / n**0.5
    return mean - half, mean + half


def family_rows(family: str, groups: list[Group]) -> list[dict]:
    by_name = {rung_name(g.config): g for g in groups if g.finished}
    scratch, tuned = by_name.get("scratch"), by_name.get("Fluid IN")
    gap = tuned.final_val_mean - scratch.final_val_mean if scratch and tuned else None
    rows = []
    for name in ORDER:
        g = by_name.get(name)
        if g is None:
            continue
        info, file = rung_bytes(name, g.config)
        low, high = mean_interval([v for v in g.final_val_accs if v is not None])
        row = {
            "family": family,
            "rung": name,
            "n": g.finished,
            "mean": g.final_val_mean,
            "std": g.final_val_std,
            "ci_low": low,
            "ci_high": high,
            "share_of_gap": None,
            "share_ci_low": None,
            "share_ci_high": None,
            "info_bytes": info,
            "file_bytes": file,
            "epochs_to_threshold": g.epochs_to_threshold,
            "machines": g.machines,
        }
        if gap and scratch is not None and g is not scratch:
            row["share_of_gap"] = (g.final_val_mean - scratch.final_val_mean) / gap
            diff = comparison("rung - scratch", g, scratch).final_val_acc
            if diff is not None and diff.low is not None:
                row["share_ci_low"], row["share_ci_high"] = diff.low / gap, diff.high / gap
        if g is scratch:
            row["share_of_gap"] = 0.0  # by definition
        rows.append(row)
    return rows


def _pct(x: float | None, signed: bool = False) -> str:
    return "-" if x is None else (f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}")


def markdown(rows: list[dict]) -> str:
    lines = [
        "| family | rung | runs | final val acc % [95% CI] | share of the scratch to "
        "fine-tuning gap [95% CI] | information bytes | file bytes | epochs to 40% |",
        "| --- | --- | --- | --- | --- | ---: | ---: | --- |",
    ]
    for r in rows:
        acc = f"{_pct(r['mean'])} ± {_pct(r['std'])} [{_pct(r['ci_low'])}, {_pct(r['ci_high'])}]"
        low, high = _pct(r["share_ci_low"]), _pct(r["share_ci_high"])
        share = "-" if r["share_of_gap"] is None else f"{_pct(r['share_of_gap'])}% [{low}, {high}]"
        lines.append(
            f"| {r['family']} | {r['rung']} | {r['n']} | {acc} | {share} | "
            f"{r['info_bytes']:,} | {r['file_bytes']:,} | "
            + ("- |" if r["epochs_to_threshold"] is None else f"{r['epochs_to_threshold']:.1f} |")
        )
    return "\n".join(lines) + "\n"


def figure(rows: list[dict], path: Path) -> None:
    """One panel per family; each rung is a numbered point (the key below); rungs within 30% of
    each other's bytes are drawn side by side, the later one moved right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(FAMILIES), figsize=(11, 5.8), sharey=True)
    floor = min(r["info_bytes"] for r in rows if r["info_bytes"]) / 10
    for ax, family in zip(axes, FAMILIES, strict=True):
        x = 0.0
        for r in sorted((r for r in rows if r["family"] == family), key=lambda r: r["info_bytes"]):
            number = ORDER.index(r["rung"]) + 1
            x = max(r["info_bytes"] or floor, 1.3 * x)  # near-equal bytes: side by side
            y = 100 * r["mean"]
            low, high = (
                100 * (r[k] if r[k] is not None else r["mean"]) for k in ("ci_low", "ci_high")
            )
            ax.errorbar(x, y, yerr=[[y - low], [high - y]], marker="o", capsize=3, color="C0")
            ax.annotate(str(number), (x, y), fontsize=8, xytext=(4, 3), textcoords="offset points")
        mean = {r["rung"]: 100 * r["mean"] for r in rows if r["family"] == family}
        if "scratch" in mean and "Fluid IN" in mean:
            half = (mean["scratch"] + mean["Fluid IN"]) / 2
            ax.axhline(half, ls="--", lw=0.8, color="gray")
            ax.annotate(
                "half the gap",
                (floor, half),
                fontsize=7,
                xytext=(0, 3),
                textcoords="offset points",
                color="gray",
            )
        ax.set_xscale("log")
        ax.set(title=family, xlabel="bytes of ImageNet information (coded; left edge: none)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("final validation accuracy (%), mean and 95% interval")
    fig.suptitle("The ladder from signs to weights: CIFAR-10 at 32 px, 20 epochs, 3 seeds")
    key = [f"{i} {name}" for i, name in enumerate(ORDER, 1)]
    fig.text(0.5, 0.01, "   ".join(key[:6]) + "\n" + "   ".join(key[6:]), ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--results", default="results")
    parser.add_argument("--out", default="docs/results/ladder")
    args = parser.parse_args()
    out, rows = Path(args.out), []
    for family, file in FAMILIES.items():
        folder = out / folder_name(family)
        result = report(EXAMPLES / file, results=args.results, out=folder, title=family)
        rows += family_rows(family, result.groups)
    atomic_write_text(out / "table.json", json.dumps(rows, indent=1) + "\n")
    atomic_write_text(out / "table.md", markdown(rows))
    figure(rows, out / "ladder.png")
    print(markdown(rows), end="")


if __name__ == "__main__":
    main()
