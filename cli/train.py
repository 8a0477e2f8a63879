"""`polarpack train`: one training run of any method, with metrics, checkpoints and progress."""

from __future__ import annotations

import os
from dataclasses import fields
from typing import Any

import click

from polarpack._io import read_json
from polarpack.errors import ConfigError
from polarpack.training.config import TrainConfig
from polarpack.training.distributed import BACKENDS
from polarpack.training.loop import TrainResult, resolve_device, resolve_precision
from polarpack.training.loop import train as run

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
    """One option per TrainConfig field, so names, help, choices and defaults live there once.
    Every default is None, so only what is given overrides --config."""
    for f in reversed(fields(TrainConfig)):
        kind = f.type.split(" | ")[0]
        default = "" if f.default in (None, False) else f" [default: {f.default}]"
        kwargs: dict[str, Any] = {"default": None, "help": f.metadata["help"] + default}
        if f.metadata.get("choices"):
            kwargs["type"] = click.Choice(f.metadata["choices"])
        elif kind == "bool":
            kwargs["is_flag"] = True
        elif f.name in ("train_size", "val_size"):
            kwargs["type"] = SizeType()
        else:  # str and layer_map's dict: click's default, a string
            kwargs["type"] = {"int": int, "float": float}.get(kind)
        name = "--map" if f.name == "layer_map" else "--" + f.name.replace("_", "-")
        metavar = "TARGET=LAYER,..." if f.name == "layer_map" else None
        fn = click.option(name, f.name, metavar=metavar, **kwargs)(fn)
    return fn


def _options(config_file: str | None, given: dict[str, Any]) -> TrainConfig:
    """--config's options (a JSON object of options, or a run's config.json) with the given ones
    on top."""
    base: Any = {}
    if config_file:
        base = read_json(config_file)
        base = base.get("config", base) if isinstance(base, dict) else base
        if not isinstance(base, dict):
            raise ConfigError(f"--config {config_file}: expected a JSON object of training options")
    given |= {k: None for k in ("train_size", "val_size") if given.get(k) == "all"}
    if "layer_map" in given:
        given["layer_map"] = parse_layer_map(given["layer_map"])
    return TrainConfig.from_dict({**base, **given}).validate()


def _print(result: TrainResult) -> None:
    """The epochs as a table on stderr, the run directory on stdout."""
    info(
        f"{'epoch':>5} {'train_loss':>10} {'train_acc':>9} {'val_loss':>9} {'val_acc':>8} "
        f"{'seconds':>8} {'img/s':>7} {'resets':>9}"
    )
    for r in result.metrics:
        tl, vl = (f"{r[k]:.4f}" if r[k] is not None else "nan" for k in ("train_loss", "val_loss"))
        info(
            f"{r['epoch']:>5} {tl:>10} {r['train_acc']:>9.4f} {vl:>9} {r['val_acc']:>8.4f} "
            f"{r['epoch_seconds']:>8.1f} {r['images_per_second']:>7.0f} "
            f"{r['projection_resets']:>9}"
        )
    s = result.summary
    reached = (
        f"reached {s.threshold:.0%} at epoch {s.epochs_to_threshold}"
        if s.epochs_to_threshold
        else (f"did not reach {s.threshold:.0%}")
    )
    info(
        f"{s.status} ({result.config.precision}): final val acc {s.final_val_acc:.4f}, "
        f"best {s.best_val_acc:.4f}, {reached}"
    )
    click.echo(str(result.run_dir))


@click.command()
@config_options
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Start from the options in this JSON file (TrainConfig fields, or a run's "
    "config.json); options given override them.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Run directory (default: runs/<time>-<model>-<dataset>-<method>-s<seed>); a new "
    "or empty folder, or one holding a run (with --overwrite).",
)
@click.option(
    "--resume",
    type=click.Path(file_okay=False, exists=True),
    default=None,
    help="Continue the interrupted run in this directory with its saved options (it "
    "takes no other options).",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Start over in an --out directory that holds a run (its files are deleted).",
)
@click.option(
    "--backend",
    type=click.Choice(BACKENDS),
    default="auto",
    show_default=True,
    help="torch.distributed backend under torchrun (RANK/WORLD_SIZE set): auto = nccl "
    "on CUDA, gloo on CPU. See docs/distributed.md.",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@json_option
@handle_errors
def train(config_file, out, resume, overwrite, backend, quiet, as_json, **options):
    """Train a network whose conv kernels follow a polarity distribution.

    Writes a run directory with config.json, metrics.jsonl/.csv (every epoch), summary.json and
    model.safetensors (the weights at the end). The resume checkpoint is written once
    --checkpoint-seconds (60) have passed since the last one, after an epoch or between the
    optimizer steps of a long one, so a short run writes its weights once and an interrupted one
    repeats about a minute of work (or the step it was in): --resume continues it exactly. Exit
    status: 0 completed, 1 error, 3 diverged (the run directory records it).

    \b
    Examples:
      polarpack train --dist paper:alexnet --dataset fashion-mnist-mini --epochs 3
      polarpack train --dist paper:alexnet --model zfnet --dataset cifar10 --data-dir DATA
      polarpack train --method freeze-in --model mobilenet_v2 \\
          --weights mobilenet_v2-b0353104.pth --dataset cifar10
      polarpack train --method fluid-in --model tf_efficientnet_lite0 \\
          --weights tf_efficientnet_lite0.in1k.safetensors --dataset cifar10
      polarpack train --resume runs/20261128-101500-zfnet-cifar10-freeze-spin-s0
      torchrun --standalone --nproc_per_node 4 -m polarpack train --dist paper:alexnet
    """
    main = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 reports
    given = {k: v for k, v in options.items() if v is not None}
    if resume:
        extra = [f"--{k.replace('_', '-')}" for k in given]
        extra += [
            n
            for n, v in (("--config", config_file), ("--out", out), ("--overwrite", overwrite))
            if v
        ]
        if extra:
            raise click.UsageError(
                f"--resume continues a run with its saved options and takes no others (got "
                f"{', '.join(extra)}); to change a run, start a new one with --config "
                f"{resume}/config.json --out NEW_DIR and the options to change"
            )
        result = run(resume=resume, progress=not quiet and main, backend=backend)
    else:
        config = _options(config_file, given)
        if main and not quiet:
            device = resolve_device(config.device)
            precision = resolve_precision(config.precision, device)
            info(f"{config.method} {config.model} on {config.dataset}: {precision} on {device}")
        result = run(
            config, out=out, overwrite=overwrite, progress=not quiet and main, backend=backend
        )
    if not main:
        return
    if as_json:
        emit_json(
            {
                "run_dir": str(result.run_dir),
                "precision": result.config.precision,
                **result.summary.to_json(),
            }
        )
    else:
        _print(result)
    if result.status == "diverged":
        raise SystemExit(3)
