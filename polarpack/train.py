"""The training loop: Freeze/Fluid SPIN-Polarity, Freeze IN-Polarity, Fluid IN and scratch.

One readable loop in the spirit of airbench: the whole dataset sits in memory as uint8 tensors,
batches are index slices of a seeded permutation, and after every optimizer step the sign
constraint resets wrong-signed kernel weights (Algorithms 1-3 of the seed). A run directory holds
everything needed to inspect or continue a run:

    config.json        the resolved configuration plus environment and layer mapping
    metrics.jsonl/csv  one row per epoch (loss, accuracy, seconds, images/s, resets, held proportions)
    summary.json       status (running | completed | diverged), final and best accuracy, epochs to threshold
    checkpoint.safetensors  weights, targets, optimizer and RNG state after the last finished epoch
    init.safetensors   (save_init=True) the initial kernels and targets, comparable with `materialize`

Defaults follow the seed where it speaks (20 epochs, batch 1000, 10k train / 10k validation images,
conv layers constrained, FC layers free, eps > 0) and the prior-work code where it is silent
(Adam, learning rate 1e-3, eps = 1e-3, dropout 0.5 after fc6 and fc7, no weight decay).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ._io import atomic_write_bytes, atomic_write_text
from ._version import __version__
from . import distributed
from .constraints import FLUID_MODES, ZERO_MODES, SignConstraint
from .errors import ConfigError, ModelError
from .materialize import (
    SAMPLING_MODES,
    generator_for,
    glorot_normal,
    glorot_uniform_,
    materialize,
    materialize_pattern,
    pattern_of,
)
from .models import GEOMETRIES, build_model, constrainable_layers, head_name, input_size_for

METHODS = {
    "freeze-spin": "Alg. 1: Glorot magnitudes, random pattern with the distribution's proportions, held fixed",
    "fluid-spin": "Alg. 3: as freeze-spin, and each epoch a fraction of non-zero weights flip sign with their targets",
    "freeze-in": "Alg. 2: the exact sign pattern of transferred weights (--weights), Glorot magnitudes, held fixed",
    "fluid-in": "Alg. 4: start from the transferred weights (--weights) and train freely (fine-tuning)",
    "scratch": "control: Glorot initialisation, no constraint",
}
SPIN_METHODS = ("freeze-spin", "fluid-spin")
IN_METHODS = ("freeze-in", "fluid-in")
OPTIMIZERS = ("adam", "sgd")
DEFAULT_LR = {"adam": 1e-3, "sgd": 1e-2}  # adam: prior-work code; sgd: the Keras default


@dataclass
class TrainConfig:
    """Everything that defines a run. Units: sizes in images, rates per optimizer step."""

    method: str = "freeze-spin"
    dist: str | None = None  # distribution reference (spin methods): file, paper:*, hf://
    weights: str | None = None  # transferred weights source (in methods): checkpoint, model name, hf://
    model: str = "alexnet"
    geometry: str = "small"
    dataset: str = "fashion-mnist-mini"
    data_dir: str | None = None
    download: bool = False
    epochs: int = 20
    batch_size: int = 1000  # global batch (split across ranks when distributed)
    train_size: int | None = 10_000  # class-balanced seeded subset of the train split; None = all
    val_size: int | None = 10_000  # of the test split; None = all
    seed: int = 0
    optimizer: str = "adam"
    lr: float | None = None  # None: 1e-3 for adam, 1e-2 for sgd
    momentum: float = 0.0
    weight_decay: float = 0.0
    dropout: float = 0.5
    eps: float = 1e-3  # reset magnitude bound: wrong-signed weights become T * U(0, eps)
    zeros: str = "pin"  # pin: T = 0 weights held at 0 (seed); free: they train (prior-work code)
    constrain: str = "conv"  # conv: conv kernels only (seed); all: conv and FC except the head
    fluid_fraction: float = 0.5
    fluid_mode: str = "flip"  # flip: W = -W for chosen weights (seed); permute: shuffle their signs
    sampling: str = "exact"  # exact counts per sign, or iid draws
    layer_map: dict[str, str] | None = None  # target layer -> distribution layer
    threshold: float = 0.40  # accuracy whose first crossing is reported (the seed's dashed line)
    device: str = "auto"
    threads: int | None = None  # torch intra-op threads; None leaves torch's default
    eval_batch_size: int = 1000
    save_init: bool = False
    layout: str = "auto"  # kernel layout of .npy/.npz weights
    endpoint: str | None = None
    revision: str | None = None

    def validate(self) -> "TrainConfig":
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; choose one of {list(METHODS)}")
        if self.method in SPIN_METHODS and not self.dist:
            raise ConfigError(f"--method {self.method} needs a distribution: pass --dist FILE or a preset such as paper:alexnet")
        if self.method in IN_METHODS and not self.weights:
            raise ConfigError(
                f"--method {self.method} needs transferred weights: pass --weights SOURCE "
                "(a checkpoint file, a torchvision model name or an hf:// reference)"
            )
        if self.geometry not in GEOMETRIES:
            raise ConfigError(f"unknown geometry {self.geometry!r}; choose one of {list(GEOMETRIES)}")
        choices = {"optimizer": OPTIMIZERS, "zeros": ZERO_MODES, "fluid_mode": FLUID_MODES, "sampling": SAMPLING_MODES, "constrain": ("conv", "all")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"unknown {key} {getattr(self, key)!r}; choose one of {list(allowed)}")
        for key in ("epochs", "batch_size", "eval_batch_size"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < (0 if key == "epochs" else 1):
                raise ConfigError(f"{key} must be a positive integer (got {getattr(self, key)!r})")
        for key in ("train_size", "val_size"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"{key} must be positive or None for the whole split (got {value})")
        if not 0.0 <= self.fluid_fraction <= 1.0:
            raise ConfigError(f"fluid_fraction must be in [0, 1] (got {self.fluid_fraction})")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1) (got {self.dropout})")
        if not self.eps > 0:
            raise ConfigError(f"eps must be > 0 (got {self.eps})")
        return self

    @property
    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown training option(s) {unknown}; known options are {sorted(known)}")
        return cls(**dict(data))


@dataclass
class TrainResult:
    run_dir: Path
    status: str  # completed | diverged
    metrics: list[dict[str, Any]]
    summary: dict[str, Any]
    config: TrainConfig = field(repr=False, default=None)  # type: ignore[assignment]

    @property
    def final_val_accuracy(self) -> float | None:
        return self.summary.get("final_val_acc")


# -- setup helpers -------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda but no CUDA device is available; use --device auto or cpu")
    return device


def keras_init_(model: nn.Module, seed: int) -> None:
    """Keras defaults for the seed's networks: Glorot-uniform kernels and zero biases, seeded per
    layer so every method starts its unconstrained layers from the same weights."""
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
                glorot_uniform_(module.weight, generator_for(seed, "init", name))
                if module.bias is not None:
                    module.bias.zero_()


def _transfer_state(config: TrainConfig) -> dict[str, torch.Tensor]:
    from .sources import load_state_dict

    return load_state_dict(
        config.weights, endpoint=config.endpoint, revision=config.revision, layout=config.layout
    )


def initialise(model: nn.Module, config: TrainConfig) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Initialise `model` for the method; return the sign targets (empty when unconstrained) and
    a description of what was done (layer mapping, transferred layers) for config.json."""
    from .models import PAPER_NETS

    if config.model in PAPER_NETS:
        keras_init_(model, config.seed)
    layers = constrainable_layers(model, config.constrain)
    report: dict[str, Any] = {}
    if config.method in SPIN_METHODS:
        from .sources import load_distribution

        dist = load_distribution(config.dist, endpoint=config.endpoint, revision=config.revision)
        mat = materialize(dist, model, seed=config.seed, sampling=config.sampling, mapping=config.layer_map, scope=config.constrain)
        mat.apply_(model)
        report["layer_map"] = mat.mapping
        report["distribution_source"] = dict(dist.source)
        return mat.targets, report | {"_materialized": mat}
    if config.method == "scratch":
        with torch.no_grad():
            for name, module in layers:
                module.weight.copy_(glorot_normal(module.weight.shape, generator_for(config.seed, "magnitudes", name)))
        return {}, report
    state = _transfer_state(config)
    head = head_name(model)
    if config.method == "freeze-in":
        kernels = {}
        for name, module in layers:
            key = f"{name}.weight"
            if key not in state:
                raise ModelError(
                    f"--weights {config.weights}: no tensor {key!r} for constrained layer {name!r}; "
                    f"the checkpoint has {_keys_preview(state)}"
                )
            _check_shape(config.weights, key, state[key].shape, module.weight.shape)
            kernels[name] = state[key]
        mat = materialize_pattern(pattern_of(kernels), seed=config.seed)
        mat.apply_(model)
        report["transferred_pattern"] = list(kernels)
        return mat.targets, report | {"_materialized": mat}
    # fluid-in: every matching tensor except the classifier head; conv kernels must match
    own = model.state_dict()
    loaded, skipped = [], []
    for key, value in own.items():
        if head is not None and key.startswith(f"{head}."):
            continue
        if key not in state:
            if key.endswith(".weight") and key[: -len(".weight")] in dict(layers):
                raise ModelError(f"--weights {config.weights}: no tensor {key!r}; the checkpoint has {_keys_preview(state)}")
            skipped.append(key)
            continue
        if tuple(state[key].shape) != tuple(value.shape):
            if key[: -len(".weight")] in dict(layers):
                _check_shape(config.weights, key, state[key].shape, value.shape)
            skipped.append(f"{key} (shape {tuple(state[key].shape)} != {tuple(value.shape)})")
            continue
        own[key] = state[key].to(value.dtype)
        loaded.append(key)
    model.load_state_dict(own)
    report["transferred"] = loaded
    report["not_transferred"] = skipped
    return {}, report


def _check_shape(source: str, key: str, got, want) -> None:
    if tuple(got) != tuple(want):
        raise ModelError(
            f"--weights {source}: {key!r} has shape {tuple(got)} but the model needs {tuple(want)}; "
            "transferred weights must come from the same architecture (check --model and --geometry)"
        )


def _keys_preview(state: Mapping[str, Any], limit: int = 8) -> str:
    keys = list(state)
    return str(keys[:limit])[:-1] + (f", ... ({len(keys)} tensors)]" if len(keys) > limit else "]")


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.resolved_lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=config.resolved_lr, momentum=config.momentum, weight_decay=config.weight_decay)


# -- checkpoints ---------------------------------------------------------------------------------

CHECKPOINT = "checkpoint.safetensors"


def save_checkpoint(path: Path, *, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    constraint: SignConstraint | None, rng: Mapping[str, torch.Tensor]) -> None:
    """One safetensors file: model.*, target.*, optim.* tensors, rng.* states; the optimizer's
    param groups and the epoch as JSON metadata. Written atomically after each epoch."""
    from safetensors.torch import save

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if constraint is not None:
        tensors |= {f"target.{k}": v.cpu().contiguous() for k, v in constraint.targets().items()}
        tensors |= {f"rng.constraint.{k}": v for k, v in constraint.state().items()}
    opt = optimizer.state_dict()
    scalars: dict[str, Any] = {}
    for idx, state in opt["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    tensors |= {f"rng.{k}": v for k, v in rng.items()}
    meta = {"epoch": epoch, "param_groups": opt["param_groups"], "optim_scalars": scalars, "polarpack": __version__}
    atomic_write_bytes(path, save(tensors, metadata={"polarpack": json.dumps(meta, sort_keys=True)}))


def load_checkpoint(path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                    constraint: SignConstraint | None) -> tuple[int, dict[str, torch.Tensor]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads(fh.metadata()["polarpack"])
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    device = next(model.parameters()).device
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value.to(device) if name != "step" else value
    for key, value in meta["optim_scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    if constraint is not None:
        constraint.load_targets_({k[len("target."):]: v for k, v in tensors.items() if k.startswith("target.")})
        constraint.load_state({k[len("rng.constraint."):]: v for k, v in tensors.items() if k.startswith("rng.constraint.")})
    rng = {k[len("rng."):]: v for k, v in tensors.items() if k.startswith("rng.") and not k.startswith("rng.constraint.")}
    return int(meta["epoch"]), rng


# -- metrics files -------------------------------------------------------------------------------


def _flat_row(row: Mapping[str, Any]) -> dict[str, Any]:
    flat = {}
    for key, value in row.items():
        if key == "held":
            for layer, props in value.items():
                for suffix, p in zip(("p0", "p_neg", "p_pos"), props):
                    flat[f"held.{layer}.{suffix}"] = p
        else:
            flat[key] = value
    return flat


def write_metrics(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    flat = [_flat_row(r) for r in rows]
    columns: list[str] = []
    for r in flat:
        columns += [k for k in r if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(flat)
    atomic_write_text(run_dir / "metrics.csv", buf.getvalue())


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summarize(rows: list[dict[str, Any]], config: TrainConfig, status: str, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Final and best accuracy, and the first epoch whose validation accuracy reached the threshold."""
    val = [r["val_acc"] for r in rows if r.get("val_acc") is not None and math.isfinite(r["val_acc"])]
    crossing = next((r["epoch"] for r in rows if (r.get("val_acc") or 0.0) >= config.threshold), None)
    return {
        "status": status,
        "epochs_done": len(rows),
        "epochs": config.epochs,
        "final_val_acc": rows[-1]["val_acc"] if rows else None,
        "final_train_acc": rows[-1]["train_acc"] if rows else None,
        "best_val_acc": max(val) if val else None,
        "threshold": config.threshold,
        "epochs_to_threshold": crossing,
        "train_seconds": sum(r.get("epoch_seconds", 0.0) for r in rows),
        **(extra or {}),
    }


# -- the loop ------------------------------------------------------------------------------------


def _default_run_dir(config: TrainConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stamp}-{config.model}-{config.dataset.replace(':', '_').replace('/', '_')}-{config.method}-s{config.seed}"


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, prepare: Callable, batch_size: int,
             ctx: distributed.DistContext = distributed.SINGLE) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over a split, in eval mode (no dropout). Distributed: each
    rank evaluates its contiguous shard and the sums are all-reduced."""
    model.eval()
    n = max(len(labels), 1)
    shard = distributed.shard_range(len(labels), ctx)
    images, labels = images[shard], labels[shard]
    loss_sum, correct = 0.0, 0
    for start in range(0, len(labels), batch_size):
        x = prepare(images[start : start + batch_size])
        y = labels[start : start + batch_size]
        out = model(x)
        loss_sum += float(F.cross_entropy(out, y, reduction="sum"))
        correct += int((out.argmax(1) == y).sum())
    model.train()
    loss_sum, correct = distributed.all_sum(ctx, loss_sum, correct)
    return loss_sum / n, correct / n


def train(
    config: TrainConfig | None = None,
    *,
    out: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    progress: bool = True,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    backend: str | None = None,
    **overrides: Any,
) -> TrainResult:
    """Train one run; returns its metrics. `resume=RUN_DIR` continues an interrupted run from its
    last checkpoint with its saved config, and ends with the metrics an uninterrupted run has.

    Either pass a `TrainConfig` or keyword options (`train(method="scratch", epochs=3)`).

    Under torchrun (RANK/WORLD_SIZE set) or in an initialised process group the run is
    distributed (DDP; `backend` overrides gloo/NCCL): see polarpack/distributed.py. Every rank
    returns the same (reduced) metrics; only rank 0 writes files; a failure on any rank ends the
    run with `DistributedError` and rank 0 records status "failed" in summary.json.
    """
    session: dict[str, Any] = {}
    try:
        return _train(config, out=out, resume=resume, progress=progress, on_epoch=on_epoch, backend=backend,
                      session=session, **overrides)
    except Exception as exc:
        ctx = session.get("ctx")
        if ctx is None or not ctx.distributed:
            raise
        raise _distributed_failure(session, exc) from exc
    finally:
        if "ctx" in session:
            distributed.teardown(session["ctx"])


def _distributed_failure(session: Mapping[str, Any], exc: BaseException) -> distributed.DistributedError:
    """A clear one-line error for a distributed run that failed; rank 0 records status "failed"."""
    ctx, run_dir = session["ctx"], session.get("run_dir")
    message = distributed.failure_message(ctx, exc)
    if ctx.is_main and run_dir is not None and (run_dir / "config.json").exists():
        summary = summarize(session.get("rows", []), session["config"], "failed", {"error": message})
        atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return distributed.DistributedError(message)


def _train(config: TrainConfig | None, *, out, resume, progress, on_epoch, backend, session: dict[str, Any],
           **overrides: Any) -> TrainResult:
    from . import data as datasets

    if resume is not None:
        run_dir = Path(resume)
        cfg_path = run_dir / "config.json"
        if not cfg_path.exists():
            raise ConfigError(f"--resume {run_dir}: no config.json there; is it a polarpack run directory?")
        config = TrainConfig.from_dict(json.loads(cfg_path.read_text())["config"])
    else:
        config = TrainConfig.from_dict({**(config.to_dict() if config else {}), **overrides})
        run_dir = Path(out) if out is not None else _default_run_dir(config)
    config.validate()
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    ctx, device = distributed.setup(device, backend)  # SINGLE unless RANK/WORLD_SIZE or a process group
    session.update(ctx=ctx, config=config, run_dir=run_dir)
    if ctx.owns_group:
        distributed.install_sigterm_handler(ctx)

    train_set, val_set = datasets.load_splits(
        config.dataset, data_dir=config.data_dir, train_size=config.train_size,
        val_size=config.val_size, seed=config.seed, download=config.download,
    )
    size = input_size_for(config.model, config.geometry)
    mean = torch.tensor(train_set.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.tensor(train_set.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)

    def prepare(batch: torch.Tensor) -> torch.Tensor:
        return datasets.prepare_batch(batch.to(device, non_blocking=True), mean, std, size=size, channels=3)

    model = build_model(config.model, num_classes=len(train_set.classes), geometry=config.geometry, dropout=config.dropout)
    targets, init_report = initialise(model, config)
    materialized = init_report.pop("_materialized", None)
    model.to(device)
    optimizer = make_optimizer(model, config)
    constraint = None
    if targets and config.method != "fluid-in":
        constraint = SignConstraint(model, targets, eps=config.eps, zeros=config.zeros, seed=config.seed)
    data_gen = torch.Generator().manual_seed(config.seed)

    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    start_epoch = 0
    ckpt = run_dir / CHECKPOINT
    if resume is not None and ckpt.exists():
        start_epoch, rng = load_checkpoint(ckpt, model=model, optimizer=optimizer, constraint=constraint)
        data_gen.set_state(rng["data"])
        torch.set_rng_state(rng.get(distributed.rank_rng_key(ctx), rng["torch"]))
        rows = [r for r in read_metrics(run_dir) if r["epoch"] <= start_epoch]
        prior = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
        if prior.get("status") in ("completed", "diverged"):
            return TrainResult(run_dir, prior["status"], rows, prior, config)
    else:
        torch.manual_seed(config.seed + ctx.rank)  # dropout masks (each rank its own, as in nanoGPT)
        meta = {
            "config": config.to_dict(),
            "resolved": {"lr": config.resolved_lr, "device": str(device), "input_size": size or int(train_set.images.shape[-1]),
                         "num_classes": len(train_set.classes), "train_images": len(train_set.labels), "val_images": len(val_set.labels),
                         "constrained_layers": list(targets) if constraint else [], **init_report,
                         **({"distributed": ctx.describe()} if ctx.distributed else {})},
            "environment": {"polarpack": __version__, "torch": torch.__version__, "python": platform.python_version(),
                            "threads": torch.get_num_threads(), "machine": platform.machine()},
        }
        if ctx.is_main:
            atomic_write_text(run_dir / "config.json", json.dumps(meta, indent=2, default=str) + "\n")
            if config.save_init and materialized is not None:
                materialized.save(run_dir / "init.safetensors")
    session["rows"] = rows
    net = model
    if ctx.distributed:  # same targets, same resume point on every rank, then DDP (shares model's parameters)
        distributed.check_targets(ctx, constraint.targets() if constraint is not None else targets)
        distributed.check_consistent(ctx, "resume epochs", start_epoch, "resume needs the run directory on every rank")
        net = distributed.wrap_model(model, ctx, device)

    n_train = len(train_set.labels)
    steps = math.ceil(n_train / config.batch_size)
    status = "running"
    bar = _progress(progress and ctx.is_main, total=config.epochs * steps, initial=start_epoch * steps, desc=f"{config.method} {config.model}")
    for epoch in range(start_epoch + 1, config.epochs + 1):
        t0 = time.perf_counter()
        flips = 0
        if constraint is not None and config.method == "fluid-spin" and epoch > 1:
            flips = constraint.fluid_step_(config.fluid_fraction, config.fluid_mode)
        loss_sum, correct, seen = 0.0, 0, 0
        for idx in datasets.batch_indices(n_train, config.batch_size, data_gen):
            count = len(idx)  # the global batch; this rank trains on its strided shard
            idx = distributed.shard_batch(idx, ctx)
            x = prepare(train_set.images[idx])
            y = train_set.labels[idx].to(device, non_blocking=True)
            out = net(x)
            loss = F.cross_entropy(out, y) if not ctx.distributed else distributed.shard_loss(out, y, ctx, count)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if constraint is not None:
                constraint.project_()
            batch_loss = float(loss.detach())  # one sync per step of 1000 images: cheap, and catches NaN at once
            batch_correct = int((out.argmax(1) == y).sum())
            if ctx.distributed:  # global mean loss and correct count, so all ranks take the same NaN decision
                batch_loss, batch_correct = distributed.reduce_step(ctx, batch_loss, batch_correct, count)
            loss_sum += batch_loss * count
            correct += batch_correct
            seen += count
            if bar is not None:
                bar.set_postfix(epoch=epoch, loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", refresh=False)
                bar.update(1)
            if not math.isfinite(batch_loss):
                status = "diverged"
                break
        train_seconds = time.perf_counter() - t0
        val_loss, val_acc = evaluate(model, val_set.images, val_set.labels, prepare, config.eval_batch_size, ctx)
        distributed.check_weights(ctx, model, epoch)
        row = {
            "epoch": epoch,
            "train_loss": _finite_or_none(loss_sum / seen),
            "train_acc": correct / seen,
            "val_loss": _finite_or_none(val_loss),
            "val_acc": val_acc,
            "epoch_seconds": time.perf_counter() - t0,
            "train_seconds": train_seconds,
            "images_per_second": seen / train_seconds,
            "projection_resets": constraint.take_reset_count() if constraint else 0,
            "fluid_flips": flips,
            "lr": optimizer.param_groups[0]["lr"],
        }
        if constraint is not None:
            row["held"] = constraint.held_proportions()
        if row["val_loss"] is None:
            status = "diverged"
        rows.append(row)
        if status != "diverged":
            rng = {"data": data_gen.get_state(), "torch": torch.get_rng_state()}
            rng |= distributed.gather_rng_states(ctx, rng["torch"])  # torch.rankN: the other ranks' dropout RNG
        if ctx.is_main:
            write_metrics(run_dir, rows)
            if status != "diverged":
                save_checkpoint(ckpt, epoch=epoch, model=model, optimizer=optimizer, constraint=constraint, rng=rng)
            atomic_write_text(run_dir / "summary.json", json.dumps(summarize(rows, config, status), indent=2) + "\n")
        if on_epoch is not None:
            on_epoch(row)
        if status == "diverged":
            break
    if bar is not None:
        bar.close()
    if status == "running":
        status = "completed"
    summary = summarize(rows, config, status)
    if ctx.is_main:
        atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    if ctx.distributed:
        distributed.dump_rank_weights(ctx, model, constraint.targets() if constraint is not None else {})
    return TrainResult(run_dir, status, rows, summary, config)


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _progress(enabled: bool, **kwargs):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(unit="step", dynamic_ncols=True, leave=True, **kwargs)
