"""Entry point of the `polarpack` console script: one click group, one module per command group."""

from __future__ import annotations

import os
import signal
from typing import Any

import click

from polarpack import __version__
from polarpack.training.loop import keep_freed_memory

from .experiment import experiment, report
from .extract import convert, extract, inspect
from .hub import pull, push
from .materialize import materialize
from .train import train

_EPILOG = """\b
Typical session:
  polarpack inspect paper:alexnet
  polarpack extract mobilenet_v2.pth --out mnv2.polar
  polarpack materialize paper:alexnet --model alexnet --seed 0 --out init.safetensors
  polarpack train --dist paper:alexnet --dataset fashion-mnist-mini --epochs 3

Distributions are accepted as files (.polar, .polar.json, .polar.safetensors), presets
(paper:alexnet, paper:table1-exp1 ... exp7) or hf://owner/repo[@rev]/path references.
"""


@click.group(
    epilog=_EPILOG,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="polarpack")
def cli() -> None:
    """polarpack: transfer learning with polarity distributions.

    A network's per-layer fractions of zero, negative and positive weights (a few numbers per layer,
    stored in a tiny .polar file) stand in for the pretrained checkpoint: new networks get Glorot
    magnitudes and a random sign pattern with those fractions, held fixed during training.
    """


for command in (extract, inspect, convert, materialize, train, push, pull, experiment, report):
    cli.add_command(command)


def _exit_on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    keep_freed_memory()  # a training step reuses its memory instead of page-faulting it back
    # SIGTERM (`timeout`, `docker stop`, a cancelled job) and SIGHUP (a closed terminal) end a
    # command as Ctrl-C does, so its cleanups run: a partial download or checkpoint is removed and
    # a run's claim released. Not under torchrun, which stops its workers with SIGTERM while they
    # may wait in a collective that no Python handler can interrupt. A signal the command was
    # started ignoring (`nohup` ignores SIGHUP) stays ignored.
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        for signum in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(signum) is signal.SIG_DFL:
                signal.signal(signum, _exit_on_signal)
    cli(prog_name="polarpack")


if __name__ == "__main__":
    main()
