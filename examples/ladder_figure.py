"""The granularity ladder's figure and table: final validation accuracy and epochs to 40% against the
bytes of ImageNet information each rung transfers (log scale), from the results of examples/ladder.toml.

    python examples/ladder_figure.py --results results --out docs/results/ladder

Bytes per rung: the size of the file that carries the information (the .polar file as shipped in
examples/, or the conv kernels in float32 for fine-tuning). scratch and Freeze RAND carry none;
they are drawn at the left edge.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from polarpack.extract import extract
from polarpack.report import THRESHOLD, report

EXAMPLES = Path(__file__).resolve().parent
CHECKPOINT = "../shared/data/weights/mobilenet_v2-b0353104.pth"


def rung(config: dict) -> tuple[str, int]:
    """(label, bytes of transferred ImageNet information) of a ladder cell."""
    if config["method"] == "scratch":
        return "scratch", 0
    if config["method"] == "fluid-in":
        kernels = extract(config["weights"], hash_file=False).layers
        return "Fluid IN (float32 conv kernels)", 4 * sum(layer.numel for layer in kernels)
    path = config["dist"] or config["weights"]
    label = {"rand5050": "Freeze RAND", "imagenet.polar": "Freeze SPIN, layer", "channel": "Freeze SPIN, channel",
             "pattern": "Freeze IN, pattern"}
    name = next(v for k, v in label.items() if k in Path(path).name)
    return name, 0 if name == "Freeze RAND" else Path(path).stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default="results")
    parser.add_argument("--out", default="docs/results/ladder")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="the overrides the grid ran with (as for polarpack experiment)")
    args = parser.parse_args()
    groups = report(EXAMPLES / "ladder.toml", results=args.results, out=args.out, sets=args.sets)["groups"]
    rows = sorted(((*rung(g["config"]), g) for g in groups if g["finished"]), key=lambda r: r[1])
    ends = {label: g["final_val_mean"] for label, _, g in rows if label == "scratch" or label.startswith("Fluid IN")}
    gap = (ends.get("Fluid IN (float32 conv kernels)"), ends.get("scratch"))
    print("| rung | bytes of ImageNet information | runs | final val acc % | share of the scratch to fine-tuning gap "
          "| epochs to 40% (mean curve) |")
    print("| --- | ---: | --- | --- | ---: | --- |")
    for label, size, g in rows:
        std = f" ± {100 * g['final_val_std']:.1f}" if g["final_val_std"] is not None else " (n=1)"
        share = "-" if None in gap else f"{100 * (g['final_val_mean'] - gap[1]) / (gap[0] - gap[1]):.0f}%"
        print(f"| {label} | {size:,} | {g['finished']} | {100 * g['final_val_mean']:.1f}{std} | {share} | "
              f"{g['epochs_to_40'] or '-'} |")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = max((g["config"]["epochs"] for _, _, g in rows), default=20)
    fig, (acc, speed) = plt.subplots(1, 2, figsize=(11, 4.5))
    floor = min((size for _, size, _ in rows if size), default=1000) / 10
    for label, size, g in rows:
        x = size or floor * (1.8 if label == "Freeze RAND" else 1)  # the two rungs without information, apart
        mean, std = 100 * g["final_val_mean"], 100 * (g["final_val_std"] or 0)
        acc.errorbar(x, mean, yerr=std, fmt="o", capsize=4, label=f"{label} (n={g['finished']})")
        speed.plot(x, g["epochs_to_40"] or epochs + 1, "o" if g["epochs_to_40"] else "x")
    for ax, title in ((acc, "final validation accuracy (%), mean ± std over seeds"),
                      (speed, f"first epoch the mean reaches {100 * THRESHOLD:.0f}% (x: not in {epochs})")):
        ax.set_xscale("log")
        ax.set(title=title, xlabel="bytes of ImageNet information transferred (left edge: none)",
               ylabel="%" if ax is acc else "epoch")
        ax.grid(alpha=0.3)
    acc.legend(fontsize=7)
    speed.set_ylim(0, epochs + 2)
    fig.suptitle(f"MobileNetV2 on CIFAR-10 ({epochs} epochs): the granularity ladder")
    fig.tight_layout()
    fig.savefig(Path(args.out) / "ladder.png", dpi=110)


if __name__ == "__main__":
    main()
