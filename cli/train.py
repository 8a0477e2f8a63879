"""`polarpack train`: one training run of any method, with metrics, checkpoints and progress."""

from __future__ import annotations

import os

import click

from ._common import emit_json, handle_errors, info, json_option
from .materialize import map_option, parse_layer_map


class SizeType(click.ParamType):
    """A positive image count, or 'all' for the whole split."""

    name = "N|all"

    def convert(self, value, param, ctx):
        if value is None or (isinstance(value, str) and value.lower() == "all"):
            return None
        try:
            n = int(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a positive integer or 'all'", param, ctx)
        if n < 1:
            self.fail(f"{value} must be positive (or 'all')", param, ctx)
        return n


@click.command()
@click.option("--method", type=click.Choice(["freeze-spin", "fluid-spin", "freeze-in", "fluid-in", "scratch"]),
              default="freeze-spin", show_default=True,
              help="freeze-spin (Alg. 1): random pattern with --dist's proportions, held fixed. fluid-spin (Alg. 3): "
              "plus per-epoch flips. freeze-in (Alg. 2): the exact pattern of --weights. fluid-in (Alg. 4): "
              "fine-tune --weights. scratch: Glorot init, no constraint.")
@click.option("--dist", default=None, metavar="REF", help="Distribution for the SPIN methods: a .polar file, a preset (paper:alexnet, paper:table1-exp3) or hf://owner/repo/file.polar.")
@click.option("--weights", default=None, metavar="SOURCE", help="Transferred weights for the IN methods: a checkpoint (.safetensors/.pth/.npz), a torchvision model name or an hf:// reference.")
@click.option("--model", default="alexnet", show_default=True, help="alexnet, zfnet, or a torchvision classifier (e.g. mobilenet_v2; its head is resized to the dataset).")
@click.option("--geometry", type=click.Choice(["small", "imagenet"]), default="small", show_default=True,
              help="small: 32x32/28x28 inputs with the seed's conv shapes (CPU-friendly); imagenet: the seed's 227/224 networks, images resized.")
@click.option("--dataset", default="fashion-mnist-mini", show_default=True,
              help="cifar10, fashion-mnist, imagefolder:PATH, or the embedded fashion-mnist-mini (works offline).")
@click.option("--data-dir", envvar="POLARPACK_DATA_DIR", show_envvar=True, default=None, type=click.Path(file_okay=False),
              help="Where datasets live (default: $POLARPACK_DATA_DIR, then ~/.cache/polarpack/data).")
@click.option("--download", is_flag=True, help="Download a missing dataset with torchvision (needs network).")
@click.option("--epochs", type=int, default=20, show_default=True, help="Epochs (the seed: 20).")
@click.option("--batch-size", type=int, default=1000, show_default=True, help="Global batch size (the seed: 1000).")
@click.option("--train-size", type=SizeType(), default="10000", show_default=True, help="Class-balanced seeded subset of the train split, or 'all' (the seed: 10,000).")
@click.option("--val-size", type=SizeType(), default="10000", show_default=True, help="Images of the test split used for validation, or 'all' (the seed: 10,000).")
@click.option("--seed", type=int, default=0, show_default=True, help="Fixes the pattern, magnitudes, data subset and order, and dropout.")
@click.option("--optimizer", type=click.Choice(["adam", "sgd"]), default="adam", show_default=True, help="adam: the prior-work code (the seed names SGD without settings).")
@click.option("--lr", type=float, default=None, help="Learning rate [default: 1e-3 for adam (prior-work code), 1e-2 for sgd (Keras default)].")
@click.option("--momentum", type=float, default=0.0, show_default=True, help="SGD momentum (Keras default 0).")
@click.option("--weight-decay", type=float, default=0.0, show_default=True, help="L2 weight decay (prior-work code: none).")
@click.option("--dropout", type=float, default=0.5, show_default=True, help="Dropout after fc6 and fc7 (prior-work networks: 0.5).")
@click.option("--eps", type=float, default=1e-3, show_default=True, help="Wrong-signed weights are reset to target * U(0, eps) (prior-work code: 1e-3).")
@click.option("--zeros", type=click.Choice(["pin", "free"]), default="pin", show_default=True,
              help="pin: zero targets hold their weights at 0 (the seed's Alg. 1); free: they train freely (prior-work code).")
@click.option("--constrain", type=click.Choice(["conv", "all"]), default="conv", show_default=True, help="conv: conv kernels only, FC free (the seed); all: FC too except the head (prior-work code).")
@click.option("--fluid-fraction", type=float, default=0.5, show_default=True, help="fluid-spin: fraction of non-zero weights changed each epoch (the seed: 50%).")
@click.option("--fluid-mode", type=click.Choice(["flip", "permute"]), default="flip", show_default=True,
              help="flip: chosen weights change sign (the seed); permute: their signs are shuffled, keeping proportions exact.")
@click.option("--sampling", type=click.Choice(["exact", "iid"]), default="exact", show_default=True, help="Pattern sampling (see materialize).")
@map_option
@click.option("--threshold", type=float, default=0.40, show_default=True, help="Report the first epoch whose validation accuracy reaches this (the seed's dashed line).")
@click.option("--device", default="auto", show_default=True, help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps.")
@click.option("--threads", type=int, default=None, help="Torch CPU threads (default: torch's choice).")
@click.option("--backend", type=click.Choice(["auto", "gloo", "nccl", "mpi"]), default="auto", show_default=True,
              envvar="POLARPACK_BACKEND", show_envvar=True,
              help="torch.distributed backend when run under torchrun (RANK/WORLD_SIZE set): auto = nccl on CUDA, gloo on CPU. "
              "Ignored for a single process. See docs/distributed.md.")
@click.option("--layout", type=click.Choice(["auto", "oihw", "hwio"]), default="auto", show_default=True, help="Kernel layout of .npy/.npz --weights.")
@click.option("--save-init", is_flag=True, help="Also write init.safetensors (initial kernels and targets) to the run directory.")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Run directory (default: runs/<time>-<model>-<dataset>-<method>-s<seed>).")
@click.option("--resume", type=click.Path(file_okay=False, exists=True), default=None, help="Continue the interrupted run in this directory with its saved config.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--endpoint", envvar="HF_ENDPOINT", default=None, help="Hub endpoint for hf:// references.")
@click.option("--revision", default=None, help="Hub revision for hf:// references without @rev.")
@json_option
@handle_errors
def train(out, resume, quiet, as_json, layer_map, backend, **options):
    """Train a network whose conv kernels follow a polarity distribution.

    Writes a run directory with config.json, metrics.jsonl/.csv, summary.json and a checkpoint
    after every epoch; --resume continues an interrupted run exactly.

    \b
    Examples:
      polarpack train --dist paper:alexnet --dataset fashion-mnist-mini --epochs 3
      polarpack train --dist paper:alexnet --model zfnet --dataset cifar10 --data-dir ../shared/data
      polarpack train --method freeze-in --model mobilenet_v2 --weights mobilenet_v2-b0353104.pth --dataset cifar10
      polarpack train --resume runs/20261128-101500-zfnet-cifar10-freeze-spin-s0
      torchrun --standalone --nproc_per_node 4 -m polarpack train --dist paper:alexnet --dataset cifar10
    """
    from polarpack.train import TrainConfig
    from polarpack.train import train as run

    if resume:
        result = run(resume=resume, progress=not quiet, backend=backend)
    else:
        config = TrainConfig(layer_map=parse_layer_map(layer_map), **options)
        result = run(config, out=out, progress=not quiet, backend=backend)
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return
    s = result.summary
    if as_json:
        emit_json({"run_dir": str(result.run_dir), **s})
        return
    info(f"{'epoch':>5} {'train_loss':>10} {'train_acc':>9} {'val_loss':>9} {'val_acc':>8} {'seconds':>8} {'img/s':>7} {'resets':>9}")
    for r in result.metrics:
        tl = f"{r['train_loss']:.4f}" if r["train_loss"] is not None else "nan"
        vl = f"{r['val_loss']:.4f}" if r["val_loss"] is not None else "nan"
        info(f"{r['epoch']:>5} {tl:>10} {r['train_acc']:>9.4f} {vl:>9} {r['val_acc']:>8.4f} "
             f"{r['epoch_seconds']:>8.1f} {r['images_per_second']:>7.0f} {r['projection_resets']:>9}")
    crossing = s["epochs_to_threshold"]
    info(f"{s['status']}: final val acc {s['final_val_acc']:.4f}, best {s['best_val_acc']:.4f}, "
         f"{'reached' if crossing else 'did not reach'} {s['threshold']:.0%}" + (f" at epoch {crossing}" if crossing else ""))
    click.echo(str(result.run_dir))
