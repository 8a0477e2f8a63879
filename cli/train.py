"""`polarpack train`: one training run of any method, with metrics, checkpoints and progress."""

from __future__ import annotations

import json
from pathlib import Path
import os
from dataclasses import fields

import click

from polarpack.errors import ConfigError
from polarpack.train import TrainConfig, resolve_device, resolve_precision, train as run

from ._common import emit_json, handle_errors, info, json_option
from .materialize import parse_layer_map


class SizeType(click.ParamType):
    """A positive image count, or 'all' for the whole split."""

    name = "N|all"

    def convert(self, value, param, ctx):
        if isinstance(value, str) and value.lower() == "all":
            return "all"
        try:
            return int(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a positive integer or 'all'", param, ctx)


def config_options(fn):
    """One option per TrainConfig field, so names, help, choices and defaults live there once; every default is
    None, so only what is given overrides --config."""
    for f in reversed(fields(TrainConfig)):
        kind = f.type.split(" | ")[0]
        default = "" if f.default in (None, False) else f" [default: {f.default}]"
        kwargs = {"default": None, "help": f.metadata["help"] + default}
        if f.metadata.get("choices"):
            kwargs["type"] = click.Choice(f.metadata["choices"])
        elif kind == "bool":
            kwargs["is_flag"] = True
        elif f.name in ("train_size", "val_size"):
            kwargs["type"] = SizeType()
        else:  # str and layer_map's dict: click's default, a string
            kwargs["type"] = {"int": int, "float": float}.get(kind)
        name = "--map" if f.name == "layer_map" else "--" + f.name.replace("_", "-")
        fn = click.option(name, f.name, metavar="TARGET=LAYER,..." if f.name == "layer_map" else None, **kwargs)(fn)
    return fn


@click.command()
@config_options
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Start from the options in this JSON file (TrainConfig fields, or a run's config.json); options "
                   "given override them.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run directory (default: runs/<time>-<model>-<dataset>-<method>-s<seed>).")
@click.option("--resume", type=click.Path(file_okay=False, exists=True), default=None,
              help="Continue the interrupted run in this directory with its saved config.")
@click.option("--overwrite", is_flag=True,
              help="Start over in an --out directory that holds a run (its files are deleted first).")
@click.option("--backend", type=click.Choice(["auto", "gloo", "nccl", "mpi"]), default="auto", show_default=True,
              help="torch.distributed backend under torchrun (RANK/WORLD_SIZE set): auto = nccl on CUDA, gloo on CPU. "
                   "See docs/distributed.md.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@json_option
@handle_errors
def train(config_file, out, resume, overwrite, backend, quiet, as_json, **options):
    """Train a network whose conv kernels follow a polarity distribution.

    Writes a run directory with config.json, metrics.jsonl/.csv, summary.json, model.safetensors and
    a resumable training state after every epoch; --resume continues an interrupted run exactly.
    Exit status: 0 completed, 1 error, 3 diverged (the run directory records it).

    \b
    Examples:
      polarpack train --dist paper:alexnet --dataset fashion-mnist-mini --epochs 3
      polarpack train --dist paper:alexnet --model zfnet --dataset cifar10 --data-dir ../shared/data
      polarpack train --method freeze-in --model mobilenet_v2 --weights mobilenet_v2-b0353104.pth --dataset cifar10
      polarpack train --resume runs/20261128-101500-zfnet-cifar10-freeze-spin-s0
      torchrun --standalone --nproc_per_node 4 -m polarpack train --dist paper:alexnet --dataset cifar10
    """
    main = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 reports
    if resume:
        result = run(resume=resume, progress=not quiet and main, backend=backend)
    else:
        base = {}
        if config_file:
            try:
                base = json.loads(Path(config_file).read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ConfigError(f"--config {config_file}: not valid JSON ({exc})") from None
            base = base.get("config", base) if isinstance(base, dict) else base
            if not isinstance(base, dict):
                raise ConfigError(f"--config {config_file}: expected a JSON object of training options")
        given = {k: v for k, v in options.items() if v is not None}
        given |= {k: None for k in ("train_size", "val_size") if given.get(k) == "all"}
        if "layer_map" in given:
            given["layer_map"] = parse_layer_map(given["layer_map"])
        config = TrainConfig.from_dict({**base, **given})
        if main and not quiet:
            precision = resolve_precision(config.precision, resolve_device(config.device))
            info(f"{config.method} {config.model} on {config.dataset}: {precision} on {resolve_device(config.device)}")
        result = run(config, out=out, overwrite=overwrite, progress=not quiet and main, backend=backend)
    if not main:
        return
    s = result.summary
    if as_json:
        emit_json({"run_dir": str(result.run_dir), "precision": result.config.precision, **s})
    else:
        info(f"{'epoch':>5} {'train_loss':>10} {'train_acc':>9} {'val_loss':>9} {'val_acc':>8} {'seconds':>8} "
             f"{'img/s':>7} {'resets':>9}")
        for r in result.metrics:
            tl, vl = (f"{r[k]:.4f}" if r[k] is not None else "nan" for k in ("train_loss", "val_loss"))
            info(f"{r['epoch']:>5} {tl:>10} {r['train_acc']:>9.4f} {vl:>9} {r['val_acc']:>8.4f} "
                 f"{r['epoch_seconds']:>8.1f} {r['images_per_second']:>7.0f} {r['projection_resets']:>9}")
        crossing = s["epochs_to_threshold"]
        info(f"{s['status']} ({result.config.precision}): final val acc {s['final_val_acc']:.4f}, best "
             f"{s['best_val_acc']:.4f}, {'reached' if crossing else 'did not reach'} {s['threshold']:.0%}"
             + (f" at epoch {crossing}" if crossing else ""))
        click.echo(str(result.run_dir))
    if result.status == "diverged":
        raise SystemExit(3)
