"""The training loop: Freeze/Fluid SPIN-Polarity, Freeze IN-Polarity, Fluid IN-Polarity, Fluid IN
and scratch.

In the spirit of airbench: the whole dataset sits in memory as uint8 tensors, batches are index
slices of a seeded permutation, and after every optimizer step the sign constraint resets
wrong-signed kernel weights (the paper's Algorithms 1-3). Every random stream (batch order,
dropout, reset values, fluid changes) is seeded from (seed, epoch), so a run resumed at an epoch's
end replays exactly what an uninterrupted one does with no saved random state; a checkpoint taken
within an epoch saves the two streams that advance with each step. How each method starts
is `polarpack.training.methods`; the files of a run are `polarpack.training.runs`; the options are
`polarpack.training.config`.

Precision `auto` trains in bf16 autocast (fp32 master weights and optimizer state) where the
hardware computes bf16 natively, else fp32.
"""

from __future__ import annotations

import math
import os
import re
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from polarpack.errors import ConfigError
from polarpack.models import build_model, input_size_for
from polarpack.training import claims, distributed, runs
from polarpack.training.config import (
    TrainConfig,
    cpu_has_native_bf16,
    resolve_device,
    resolve_precision,
)
from polarpack.training.constraints import SignConstraint
from polarpack.training.materialization import derive_seed
from polarpack.training.methods import METHODS, Start, initialise
from polarpack.training.runs import FINISHED, MODEL_FILE, STATE_FILE, EpochRow, read_metrics

__all__ = [
    "FINISHED",
    "MODEL_FILE",
    "STATE_FILE",
    "TrainConfig",
    "TrainResult",
    "cpu_has_native_bf16",
    "read_metrics",
    "resolve_device",
    "resolve_precision",
    "train",
]


@dataclass
class TrainResult:
    run_dir: Path
    status: str  # completed | diverged
    metrics: list[EpochRow]
    summary: runs.RunSummary
    config: TrainConfig
    model: nn.Module | None = field(default=None, repr=False)  # None when nothing was trained


# -- memory ----------------------------------------------------------------------------------------


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse rather than hand it back to the system. A
    training step frees and allocates the same large activations every step, and each fresh
    mapping page-faults all its pages in again: keeping them made a 224-px ZFNet step 1.6x faster
    (benchmarks/bench_lrn.py), without changing a bit of the numbers. Process-wide, so the command
    line and the grid's worker processes call it, not `train`. Returns whether it applied (glibc
    only)."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    lr, decay = config.resolved_lr, config.weight_decay
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=decay)
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=config.momentum, weight_decay=decay)


def epoch_generator(
    seed: int, purpose: str, epoch: int, device: torch.device | str = "cpu"
) -> torch.Generator:
    """The random stream of one purpose in one epoch: resume needs no saved random state."""
    return torch.Generator(device=device).manual_seed(derive_seed(seed, purpose, str(epoch)))


# -- one epoch -----------------------------------------------------------------------------------


@dataclass
class _Setup:
    """What the loop needs besides the model: data, batch preparation, precision, the ranks."""

    config: TrainConfig
    device: torch.device
    prepare: Callable[[torch.Tensor], torch.Tensor]
    train_set: Any
    val_set: Any
    world: distributed.World
    report: dict[str, Any]  # what the setup resolved, for config.json

    def autocast(self):
        bf16 = self.config.precision == "bf16"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16)


@torch.no_grad()
def refresh_batchnorm(model: nn.Module, setup: _Setup, epoch: int) -> None:
    """Precise BN: the statistics of `bn_batches` whole training batches (the same on every rank)
    replace the running averages, which lag far behind the weights after ten steps an epoch."""
    from polarpack.training.data import batch_indices

    norms = [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    if not norms or not setup.config.bn_batches:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches below
    order = epoch_generator(setup.config.seed, "bn", epoch)
    batches = batch_indices(len(setup.train_set.labels), setup.config.batch_size, order)
    for idx in batches[: setup.config.bn_batches]:
        with setup.autocast():
            model(setup.prepare(setup.train_set.images[idx]))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum


@torch.no_grad()
def evaluate(model: nn.Module, setup: _Setup) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over the validation split (sums in fp32; sharded by
    rank)."""
    model.eval()
    images, labels, step = setup.val_set.images, setup.val_set.labels, setup.config.eval_batch_size
    shard = setup.world.shard_range(len(labels))
    loss_sum, correct = 0.0, 0
    for start in range(shard.start, shard.stop, step):
        stop = min(start + step, shard.stop)
        y = labels[start:stop].to(setup.device)
        with setup.autocast():
            out = model(setup.prepare(images[start:stop])).float()
        loss_sum += float(F.cross_entropy(out, y, reduction="sum"))
        correct += int((out.argmax(1) == y).sum())
    model.train()
    loss_sum, correct = setup.world.all_sum(loss_sum, correct)
    return loss_sum / len(labels), correct / len(labels)


def _step(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    setup: _Setup,
    idx: torch.Tensor,
    mine: torch.Tensor,
) -> tuple[float, int]:
    """One optimizer step on the global batch `idx`, of which this rank computes `mine`, in
    parts of at most `micro_batch` images whose gradients add up before the step. Returns this
    rank's summed loss (scaled as below) and its correct predictions."""
    config, world = setup.config, setup.world
    parts = mine.split(config.micro_batch or max(len(mine), 1)) if len(mine) else (mine,)
    optimizer.zero_grad(set_to_none=True)
    loss_sum, correct = 0.0, 0
    for i, part in enumerate(parts):
        x = setup.prepare(setup.train_set.images[part])
        y = setup.train_set.labels[part].to(setup.device, non_blocking=True)
        last = i == len(parts) - 1  # DDP all-reduces the gradients once, in the last backward
        with nullcontext() if last else getattr(net, "no_sync", nullcontext)():
            with setup.autocast():
                out = net(x).float()
            # summed over the part, scaled so DDP's average is the global batch's mean loss
            loss = F.cross_entropy(out, y, reduction="sum") * (world.world_size / len(idx))
            loss.backward()
        loss_sum += float(loss.detach())
        correct += int((out.argmax(1) == y).sum())
    optimizer.step()
    return loss_sum, correct


def _dropout_rng(device: torch.device) -> torch.Tensor:
    """The state of the generator dropout draws from on `device` (torch's default one)."""
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _fits(saved: torch.Tensor, state: torch.Tensor) -> bool:
    """A saved generator state is one this generator takes (same device type)."""
    return saved.dtype == state.dtype and saved.shape == state.shape


def _set_dropout_rng(device: torch.device, state: torch.Tensor) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


# -- a run ---------------------------------------------------------------------------------------


@dataclass
class _Trainer:
    """One run in progress: the model and its optimizer, constraint and run directory."""

    config: TrainConfig
    setup: _Setup
    model: nn.Module
    optimizer: torch.optim.Optimizer
    constraint: SignConstraint | None
    run_dir: Path
    token: str
    digest: str
    rows: list[EpochRow]
    clock: runs.CheckpointClock
    resumed: runs.EpochProgress | None = None  # how far the first epoch got before a resume
    status: str = "running"

    def epoch(self, epoch: int, net: nn.Module, bar) -> EpochRow:
        """Train, refresh BatchNorm and validate one epoch, from where a checkpoint within it left
        off when the run resumed there."""
        config, constraint, flips = self.config, self.constraint, 0
        resumed, self.resumed = self.resumed, None
        if resumed is not None:
            flips, started = resumed.fluid_flips, time.perf_counter() - resumed.epoch_seconds
            if constraint is not None:
                constraint.resets = resumed.resets
        else:
            started = time.perf_counter()
            if constraint is not None and METHODS[config.method].fluid and epoch > 1:
                flips = constraint.fluid_step_(
                    config.fluid_fraction,
                    config.fluid_mode,
                    epoch_generator(config.seed, "fluid", epoch),
                )
        trained = self._train_epoch(epoch, net, bar, resumed, started, flips)
        refresh_batchnorm(self.model, self.setup, epoch)
        val_loss, val_acc = evaluate(self.model, self.setup)
        row: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": trained["train_loss"],
            "train_acc": trained["train_acc"],
            "val_loss": val_loss,
            "val_acc": val_acc,
            "epoch_seconds": time.perf_counter() - started,
            **trained,
            "projection_resets": constraint.take_reset_count() if constraint else 0,
            "fluid_flips": flips,
            "lr": self.optimizer.param_groups[0]["lr"],
        }
        if constraint is not None:
            row["held"] = constraint.held_proportions()
        if not math.isfinite(row["train_loss"] + row["val_loss"]):  # JSON has no NaN: null
            self.status = "diverged"
            row = {
                k: None if isinstance(v, float) and not math.isfinite(v) else v
                for k, v in row.items()
            }
        return row  # type: ignore[return-value]

    def _random_streams(
        self, epoch: int, resumed: runs.EpochProgress | None
    ) -> torch.Generator | None:
        """Seed dropout's stream for the epoch and return the sign constraint's reset values'
        stream (None without a constraint), both where a checkpoint within the epoch left them."""
        config, device, world = self.config, self.setup.device, self.setup.world
        resets = epoch_generator(config.seed, "resets", epoch, device) if self.constraint else None
        after = () if resumed is None else (f"step {resumed.steps}",)
        # A checkpoint within an epoch is single-process and holds one device type's generator
        # states (a CPU's and a GPU's differ in form). Dropout's stream is restored by a single
        # process on the same device type; each rank of a distributed resume derives its own
        # (one saved stream would have every rank drop the same units), as does a resume on
        # another device type. The reset values' stream is every rank's alike, restored where
        # it fits and otherwise derived alike.
        if (
            resumed is not None
            and world.world_size == 1
            and _fits(resumed.dropout_rng, _dropout_rng(device))
        ):
            _set_dropout_rng(device, resumed.dropout_rng)
        else:
            torch.manual_seed(
                derive_seed(config.seed, "dropout", str(world.rank), str(epoch), *after)
            )
        if resets is not None and resumed is not None and resumed.resets_rng is not None:
            if _fits(resumed.resets_rng, resets.get_state()):
                resets.set_state(resumed.resets_rng)
            else:
                resets.manual_seed(derive_seed(config.seed, "resets", str(epoch), *after))
        return resets

    def _train_epoch(
        self,
        epoch: int,
        net: nn.Module,
        bar,
        resumed: runs.EpochProgress | None,
        epoch_started: float,
        flips: int,
    ) -> dict:
        """One pass over the training set, from the step a checkpoint within the epoch reached;
        stops early at a non-finite loss (the row says so). A single-process run checkpoints
        between steps when the clock says so (a distributed one only at epoch ends: each rank
        has its own dropout stream)."""
        from polarpack.training.data import batch_indices

        config, setup, world, constraint = (
            self.config,
            self.setup,
            self.setup.world,
            self.constraint,
        )
        resets = self._random_streams(epoch, resumed)
        steps, loss_sum, correct, seen, before = 0, 0.0, 0, 0, 0.0
        if resumed is not None:
            steps, loss_sum, correct = resumed.steps, resumed.loss_sum, resumed.correct
            seen, before = resumed.seen, resumed.train_seconds
        started = time.perf_counter() - before
        order = epoch_generator(config.seed, "batches", epoch)
        batches = batch_indices(len(setup.train_set.labels), config.batch_size, order)
        for idx in batches[steps:]:
            rank_loss, rank_correct = _step(net, self.optimizer, setup, idx, world.shard(idx))
            if constraint is not None:
                constraint.project_(resets)
            batch_loss, batch_correct = world.all_sum(
                rank_loss * len(idx) / world.world_size, rank_correct
            )
            steps, loss_sum, correct, seen = (
                steps + 1,
                loss_sum + batch_loss,
                correct + int(batch_correct),
                seen + len(idx),
            )
            bar.set_postfix(
                epoch=epoch,
                loss=f"{loss_sum / seen:.3f}",
                acc=f"{correct / seen:.3f}",
                refresh=False,
            )
            bar.update(1)
            if not math.isfinite(batch_loss):
                break
            if world.world_size == 1 and self.clock.due_within(epoch):
                now = time.perf_counter()
                progress = runs.EpochProgress(
                    steps=steps,
                    loss_sum=loss_sum,
                    correct=correct,
                    seen=seen,
                    train_seconds=now - started,
                    epoch_seconds=now - epoch_started,
                    fluid_flips=flips,
                    resets=constraint.resets if constraint else 0,
                    dropout_rng=_dropout_rng(setup.device),
                    resets_rng=resets.get_state() if resets is not None else None,
                )
                self._checkpoint(epoch - 1, progress)
                self.clock.written_within()
        seconds = time.perf_counter() - started
        return {
            "train_loss": loss_sum / seen,
            "train_acc": correct / seen,
            "train_seconds": seconds,
            "images_per_second": seen / seconds,
        }

    def summary(self, status: str) -> runs.RunSummary:
        return runs.summarize(
            self.rows,
            epochs=self.config.epochs,
            threshold=self.config.threshold,
            status=status,
            token=self.token,
            digest=self.digest,
        )

    def record(self, row: EpochRow) -> None:
        """Metrics every epoch; the resume checkpoint when the clock says so."""
        self.rows.append(row)
        if not self.setup.world.is_main:
            return
        runs.write_metrics(self.run_dir, self.rows)
        runs.write_summary(self.run_dir, self.summary(self.status))
        epoch, last = row["epoch"], row["epoch"] == self.config.epochs
        if self.status == "running" and not last and self.clock.due(epoch):
            self._checkpoint(epoch)
            self.clock.written(epoch)

    def _checkpoint(self, epoch: int, progress: runs.EpochProgress | None = None) -> None:
        runs.save_checkpoint(
            self.run_dir,
            epoch=epoch,
            token=self.token,
            digest=self.digest,
            model=self.model,
            optimizer=self.optimizer,
            targets=self.constraint.targets() if self.constraint else {},
            progress=progress,
        )

    def finish(self) -> TrainResult:
        status = "completed" if self.status == "running" else self.status
        summary = self.summary(status)
        if self.setup.world.is_main:
            if status == "completed":
                runs.save_weights(self.run_dir, self.model)
            runs.write_summary(self.run_dir, summary)
            (self.run_dir / STATE_FILE).unlink(missing_ok=True)  # a finished run is never resumed
        if self.constraint is not None:
            self.constraint.release()
        self.setup.world.teardown()
        return TrainResult(self.run_dir, status, self.rows, summary, self.config, self.model)


def train(
    config: TrainConfig | None = None,
    *,
    out: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = True,
    on_epoch: Callable[[EpochRow], None] | None = None,
    backend: str | None = None,
    **overrides: Any,
) -> TrainResult:
    """Train one run. Pass a `TrainConfig` or keyword options (`train(dist="paper:alexnet",
    epochs=3)`). `resume=RUN_DIR` continues an interrupted run with its saved options (and takes
    no others) and ends with the metrics an uninterrupted run has. Under torchrun (RANK/WORLD_SIZE
    set) the run is distributed (DDP); every rank returns the same metrics, only rank 0 writes.
    The run folder is held while it trains (`claims.hold`): a second process is refused."""
    target = resume if resume is not None else out
    main = distributed.process_rank() == 0
    with claims.hold(target) if target is not None and main else nullcontext(), _torch_restored():
        return _train(config, out, resume, overwrite, progress, on_epoch, backend, overrides)


@contextmanager
def _torch_restored() -> Iterator[None]:
    """A run sets torch's thread count, cuDNN's kernel choices and the default generators (dropout
    draws from them) for itself; the caller's process gets its own back when the run ends, however
    it ends."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (torch.get_num_threads(), cudnn.benchmark, cudnn.conv.fp32_precision)
    saved_matmul = matmul.fp32_precision
    cuda = range(torch.cuda.device_count()) if torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=cuda):
            yield
    finally:
        torch.set_num_threads(saved[0])
        cudnn.benchmark, cudnn.conv.fp32_precision = saved[1], saved[2]
        matmul.fp32_precision = saved_matmul


def _train(config, out, resume, overwrite, progress, on_epoch, backend, overrides) -> TrainResult:
    if resume is not None:
        given = [k for k, v in (("config", config), ("out", out), ("overwrite", overwrite)) if v]
        if given or overrides:
            raise ConfigError(
                f"--resume continues a run with its saved options and takes no "
                f"others (got {', '.join(given + sorted(overrides))}); to change a "
                f"run, start a new one: --config {Path(resume) / 'config.json'} "
                "--out NEW_DIR and the options to change"
            )
        files = runs.open_for_resume(Path(resume))
        config = TrainConfig.from_dict(files.config).validate()
        if files.finished:  # nothing to do: no data is loaded
            return TrainResult(
                files.run_dir, files.summary.status, files.metrics, files.summary, config
            )
    else:
        files = None
        config = TrainConfig.from_dict({**(config.to_dict() if config else {}), **overrides})
        config.validate()
        config.precision = resolve_precision(config.precision, resolve_device(config.device))
    run_dir = files.run_dir if files else Path(out) if out is not None else _default_run_dir(config)
    if distributed.process_rank() == 0:
        if files is None:
            runs.prepare_out_dir(run_dir, config.to_dict(), overwrite)
        runs.remove_stale_files(run_dir)
    trainer = _start(config, run_dir, files, backend)
    net, world = trainer.setup.world.wrap(trainer.model), trainer.setup.world
    steps = math.ceil(len(trainer.setup.train_set.labels) / config.batch_size)
    bar = tqdm(
        total=config.epochs * steps,
        initial=len(trainer.rows) * steps + (trainer.resumed.steps if trainer.resumed else 0),
        unit="step",
        desc=f"{config.method} {config.model}",
        dynamic_ncols=True,
        disable=not (progress and world.is_main),
    )
    for epoch in range(len(trainer.rows) + 1, config.epochs + 1):
        row = trainer.epoch(epoch, net, bar)
        trainer.record(row)
        if on_epoch is not None:
            on_epoch(row)
        if trainer.status == "diverged":
            break
    bar.close()
    return trainer.finish()


def _start(
    config: TrainConfig, run_dir: Path, files: runs.RunFiles | None, backend: str | None
) -> _Trainer:
    """The run at its first epoch (a new run: config.json written) or at its last checkpoint (a
    resume; without one, the run starts over)."""
    setup, model, start = _build(config, backend)
    optimizer = make_optimizer(model, config)
    constraint = None
    if METHODS[config.method].constrained:
        constraint = SignConstraint(model, start.targets, eps=config.eps, zeros=config.zeros)
    token = files.token if files else uuid.uuid4().hex
    options = files.config if files else config.to_dict()  # as config.json holds them
    digest = runs.config_digest(options)
    state = runs.load_checkpoint(files) if files else None
    rows: list[EpochRow] = []
    if state is not None:
        model.load_state_dict(state.model)
        optimizer.load_state_dict(state.optimizer)
        if constraint is not None:
            constraint.load_targets_(state.targets)
        rows = files.metrics[: state.epoch]
        if setup.world.is_main:
            here = runs.environment(setup.device)
            kind = runs.machine_kind(here, str(setup.device))
            there = runs.computed_elsewhere(runs.load_config(run_dir), kind)
            step = state.progress.steps if state.progress else 0
            runs.record_resume(run_dir, state.epoch, here, step)
            if there is not None:
                warnings.warn(
                    f"{run_dir}: resumed on {kind}, another kind of machine than it computed on "
                    f"({there}); reports count it as a kind of its own (to keep a run on one "
                    "kind, start it over there)",
                    stacklevel=2,
                )
    elif setup.world.is_main:
        _write_config(run_dir, options, config, setup, token, start)
    setup.world.check_same(
        "sign targets",
        distributed.checksum(constraint.targets() if constraint else {}),
        "every rank must materialize the same pattern: same --seed, --dist, --sampling, --map, "
        "version",
    )
    clock = runs.CheckpointClock(
        config.checkpoint_every, config.checkpoint_seconds, last_epoch=len(rows)
    )
    return _Trainer(
        config,
        setup,
        model,
        optimizer,
        constraint,
        run_dir,
        token,
        digest,
        rows,
        clock,
        state.progress if state is not None else None,
    )


def _default_run_dir(config: TrainConfig) -> Path:
    dataset = re.sub(r"[^A-Za-z0-9.-]+", "_", config.dataset)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stamp}-{config.model}-{dataset}-{config.method}-s{config.seed}"


def _check_memory(config: TrainConfig, size: int | None, world_size: int) -> None:
    """Refuse a batch whose input tensor alone would take a quarter of the memory, before it is
    allocated (an image size of 4096 is otherwise killed by the kernel, with no message)."""
    if size is None:
        return
    per_rank = math.ceil(config.batch_size / world_size)
    per_rank = max(min(per_rank, config.micro_batch or per_rank), config.eval_batch_size)
    need = per_rank * 3 * size * size * 4
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if need > physical / 4:
        raise ConfigError(
            f"a batch of {per_rank} images at {size}x{size} px needs {need / 2**30:.1f} GiB for "
            f"its input alone, over a quarter of this computer's {physical / 2**30:.0f} GiB; "
            "lower --batch-size (and --eval-batch-size) or --image-size"
        )


def _build(config: TrainConfig, backend: str | None) -> tuple[_Setup, nn.Module, Start]:
    """Data, model (initialised, on its device and memory format) and the method's start."""
    from polarpack.training.data import load_splits, prepare_batch

    if config.threads:
        torch.set_num_threads(config.threads)
    world, device = distributed.setup(resolve_device(config.device), backend)
    size = config.image_size or input_size_for(config.model, config.geometry)
    _check_memory(config, size, world.world_size)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: cuDNN times its kernels once
        if config.precision == "fp32":  # IEEE fp32, not the TF32 convolutions of CUDA's default
            torch.backends.cudnn.conv.fp32_precision = "ieee"
            torch.backends.cuda.matmul.fp32_precision = "ieee"
    train_set, val_set = load_splits(
        config.dataset,
        data_dir=config.data_dir,
        train_size=config.train_size,
        val_size=config.val_size,
        seed=config.seed,
        download=config.download,
    )
    # What no method initialises (a torchvision or timm network's head, say) draws from torch's
    # default generator: seeded here, the run's seed alone defines its start, whatever the caller
    # drew before (the caller's generator comes back when the run ends).
    torch.manual_seed(derive_seed(config.seed, "model"))
    model = build_model(
        config.model,
        num_classes=len(train_set.classes),
        geometry=config.geometry,
        dropout=config.dropout,
    )
    start = initialise(model, config)
    _check_input_size(model, config, size or int(train_set.images.shape[-1]))
    conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    memory_format = torch.channels_last if conv else torch.contiguous_format  # faster convs
    model.to(device, memory_format=memory_format)
    mean, std = train_set.mean, train_set.std

    def prepare(batch: torch.Tensor) -> torch.Tensor:
        x = prepare_batch(batch.to(device, non_blocking=True), mean, std, size=size, channels=3)
        return x.contiguous(memory_format=memory_format)

    report = {
        "input_size": size or int(train_set.images.shape[-1]),
        "num_classes": len(train_set.classes),
        "train_images": len(train_set.labels),
        "val_images": len(val_set.labels),
        "memory_format": str(memory_format),
    }
    return _Setup(config, device, prepare, train_set, val_set, world, report), model, start


def _check_input_size(model: nn.Module, config: TrainConfig, size: int) -> None:
    """One image through the network before anything is written: a size its layers cannot take
    (the paper networks' fc6 is sized for their geometry's images) is a one-line error here, not a
    traceback at the first step of a run whose folder then blocks its --out."""
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, size, size))
    except RuntimeError as exc:
        native = input_size_for(config.model, config.geometry)
        fits = f"{native}x{native} images" if native else "the dataset's own size"
        raise ConfigError(
            f"--model {config.model} (--geometry {config.geometry}) cannot take {size}x{size} "
            f"images ({str(exc).splitlines()[0]}); leave out --image-size (the geometry takes "
            f"{fits}) or choose another --geometry"
        ) from None
    finally:
        model.train()


def _write_config(
    run_dir: Path,
    options: dict[str, Any],
    config: TrainConfig,
    setup: _Setup,
    token: str,
    start: Start,
) -> None:
    resolved = {
        "lr": config.resolved_lr,
        "device": str(setup.device),
        "precision": config.precision,
        **start.report,
        **setup.report,
    }
    if setup.world.world_size > 1:
        resolved["distributed"] = setup.world.describe()
    saved = runs.RunConfig(options, token, resolved, runs.environment(setup.device))
    runs.write_config(run_dir, saved)
    if config.save_init and start.materialized is not None:
        start.materialized.save(run_dir / runs.INIT_FILE)
