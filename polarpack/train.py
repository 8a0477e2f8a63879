"""The training loop: Freeze/Fluid SPIN-Polarity, Freeze IN-Polarity, Fluid IN and scratch.

In the spirit of airbench: the whole dataset sits in memory as uint8 tensors, batches are index
slices of a seeded permutation, and after every optimizer step the sign constraint resets
wrong-signed kernel weights (the seed's Algorithms 1-3). Every random stream (batch order, dropout,
reset values, fluid changes) is seeded from (seed, epoch), so a resumed run replays exactly what an
uninterrupted one does, and no random state needs saving. A run directory holds:

    config.json               the resolved configuration, environment (package, git commit) and run token
    metrics.jsonl / .csv      one row per epoch (loss, accuracy, seconds, images/s, resets, held proportions)
    summary.json              status (running | completed | diverged), final and best accuracy, epochs to threshold
    model.safetensors         the weights after the last finished epoch: model.load_state_dict(load_file(...))
    training_state.safetensors  everything a resume needs (weights, optimizer, sign targets); removed once complete
    init.safetensors          (save_init) the initial kernels and targets, as `materialize` writes them

Defaults follow the seed where it speaks (20 epochs, batch 1000, 10k train / 10k validation images,
conv layers constrained, FC layers free) and the prior-work code where it is silent (Adam, lr 1e-3,
eps 1e-3, dropout 0.5 after fc6 and fc7, no weight decay). Precision `auto` trains in bf16 autocast
(fp32 master weights and optimizer state) where the hardware computes bf16 natively, else fp32.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import re
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import distributed
from ._io import atomic_output, atomic_write_text, read_json
from ._version import __version__
from .constraints import FLUID_MODES, ZERO_MODES, SignConstraint
from .errors import ConfigError, ModelError
from .materialize import (SAMPLING_MODES, derive_seed, generator_for, glorot_normal, glorot_uniform_, materialize,
                          materialize_pattern)
from .models import GEOMETRIES, PAPER_NETS, build_model, constrainable_layers, head_name, input_size_for

METHODS = {
    "freeze-spin": "Alg. 1: Glorot magnitudes, random pattern with the distribution's proportions, held fixed",
    "fluid-spin": "Alg. 3: as freeze-spin, and each epoch a fraction of the non-zero weights change (--fluid-mode)",
    "freeze-in": "Alg. 2: the exact sign pattern of --weights (checkpoint or pattern .polar), Glorot magnitudes, fixed",
    "fluid-in": "Alg. 4: start from the transferred weights (--weights) and train freely (fine-tuning)",
    "scratch": "control: Glorot initialisation, no constraint",
}
SPIN_METHODS = ("freeze-spin", "fluid-spin")
IN_METHODS = ("freeze-in", "fluid-in")
CONSTRAINED_METHODS = ("freeze-spin", "fluid-spin", "freeze-in")
DEFAULT_LR = {"adam": 1e-3, "sgd": 1e-2}  # adam: prior-work code; sgd: the Keras default
FINISHED = ("completed", "diverged")
MODEL_FILE, STATE_FILE = "model.safetensors", "training_state.safetensors"


def _opt(default: Any, help: str, choices: tuple | None = None, low: float | None = None, high: float | None = None,
         open_ends: str = "") -> Any:
    """A TrainConfig field with what `polarpack train --help` shows and what `validate` allows:
    `choices`, or bounds `low`/`high` (exclusive where `open_ends` holds "low"/"high")."""
    return field(default=default, metadata={"help": help, "choices": choices, "bounds": (low, high, open_ends)})


@dataclass
class TrainConfig:
    """Everything that defines a run. Sizes in images, rates per optimizer step."""

    method: str = _opt("freeze-spin", "; ".join(f"{k}: {v}" for k, v in METHODS.items()), tuple(METHODS))
    dist: str | None = _opt(None, "Distribution for the SPIN methods: a .polar file, a preset (paper:alexnet) or "
                                  "hf://owner/repo/file.polar.")
    weights: str | None = _opt(None, "Transferred weights for the IN methods: a checkpoint, a torchvision model name, "
                                     "an hf:// reference, or a pattern .polar (freeze-in).")
    model: str = _opt("alexnet", "alexnet, zfnet, or a torchvision classifier (its head is resized to the dataset).")
    geometry: str = _opt("small", "small: 32x32/28x28 inputs with the seed's conv shapes; imagenet: the seed's 227/224 "
                                  "networks, images resized.", GEOMETRIES)
    image_size: int | None = _opt(None, "Resize images to this size (e.g. 64 for torchvision models).",
                                  low=8, high=4096)
    dataset: str = _opt("fashion-mnist-mini", "cifar10, fashion-mnist, imagefolder:PATH, or the embedded "
                                              "fashion-mnist-mini (offline).")
    data_dir: str | None = _opt(None, "Where datasets live (default: $POLARPACK_DATA_DIR, then "
                                      "~/.cache/polarpack/data).")
    download: bool = _opt(False, "Download a missing dataset with torchvision (needs network).")
    epochs: int = _opt(20, "Epochs (the seed: 20).", low=1)
    batch_size: int = _opt(1000, "Global batch size, split across ranks when distributed (the seed: 1000).", low=1)
    train_size: int | None = _opt(10_000, "Class-balanced seeded subset of the train split, or all (the seed: "
                                          "10,000).", low=1)
    val_size: int | None = _opt(10_000, "Class-balanced subset of the test split for validation (the seed: "
                                        "10,000).", low=1)
    seed: int = _opt(0, "Fixes the pattern, magnitudes, data subset and order, dropout and reset values.",
                     low=0, high=2**63 - 1)
    optimizer: str = _opt("adam", "adam: the prior-work code (the seed names SGD without settings).", ("adam", "sgd"))
    lr: float | None = _opt(None, "Learning rate; default 1e-3 for adam (prior-work code), 1e-2 for sgd (Keras).",
                            low=0, open_ends="low")
    momentum: float = _opt(0.0, "SGD momentum (Keras default 0).", low=0, high=1, open_ends="high")
    weight_decay: float = _opt(0.0, "L2 weight decay (prior-work code: none).", low=0)
    dropout: float = _opt(0.5, "Dropout after fc6 and fc7 of alexnet/zfnet (prior-work: 0.5).",
                          low=0, high=1, open_ends="high")
    eps: float = _opt(1e-3, "Wrong-signed weights are reset to target * U(0, eps) (prior-work code: 1e-3).",
                      low=0, open_ends="low")
    zeros: str = _opt("pin", "pin: zero targets hold their weights at 0 (the seed's Alg. 1); free: they train "
                             "(prior-work code).", ZERO_MODES)
    constrain: str = _opt("conv", "conv: conv kernels only, FC free (the seed); all: FC too, except the head "
                                  "(prior-work code).", ("conv", "all"))
    fluid_fraction: float = _opt(0.5, "fluid-spin: fraction of the non-zero weights changed each epoch "
                                      "(the seed: 0.5).", low=0, high=1)
    fluid_mode: str = _opt("flip", "fluid-spin: flip = weights and targets change sign (the pattern moves); "
                                   "permute = signs shuffled among the chosen (proportions exact); reset = only the "
                                   "weights flip, and the projection resets them to target * U(0, eps) (the pattern "
                                   "stays).", FLUID_MODES)
    sampling: str = _opt("exact", "exact: round(p*n) weights of each sign; iid: independent draws.", SAMPLING_MODES)
    layer_map: dict[str, str] | None = _opt(None, "Model layer -> distribution layer (default: by name, else by "
                                                  "order).")
    threshold: float = _opt(0.40, "Report the first epoch whose validation accuracy reaches this (the seed's 40%).",
                            low=0, high=1, open_ends="low")
    precision: str = _opt("auto", "auto: bf16 where the hardware computes it natively (CUDA with bf16, CPUs with "
                                  "avx512_bf16/AMX), else fp32; bf16 autocast keeps fp32 master weights and optimizer "
                                  "state. CPUs run mobilenet_v2 faster in fp32.", ("auto", "fp32", "bf16"))
    device: str = _opt("auto", "auto (the accelerator torch finds: cuda, mps, ..., else cpu), cpu, cuda, cuda:N, mps.")
    threads: int | None = _opt(None, "Torch CPU threads (default: torch's choice).", low=1, high=1024)
    eval_batch_size: int = _opt(1000, "Batch size of the validation pass.", low=1)
    bn_batches: int = _opt(2, "BatchNorm models: training batches whose statistics replace the running averages before "
                              "each validation (ten steps an epoch leave those far behind); 0 keeps them.", low=0)
    checkpoint_every: int = _opt(1, "Write the resume checkpoint every N epochs (and the weights after the last): "
                                    "fewer writes on fast devices; a resume repeats at most N-1 epochs.", low=1)
    save_init: bool = _opt(False, "Also write init.safetensors (initial kernels and targets) to the run directory.")
    layout: str = _opt("auto", "Kernel layout of .npy/.npz --weights.", ("auto", "oihw", "hwio"))
    unsafe_allow_pickle: bool = _opt(False, "Let --weights unpickle .npy object arrays. UNSAFE: a pickle can run any "
                                            "code; only for files you trust.")
    endpoint: str | None = _opt(None, "Hub endpoint for hf:// references (default: $HF_ENDPOINT).")
    revision: str | None = _opt(None, "Hub revision for hf:// references without @rev.")

    def validate(self) -> TrainConfig:
        """Check every option; a ConfigError names the option, the value and what is allowed."""
        for f in fields(self):
            value, choices, (low, high, open_ends) = getattr(self, f.name), f.metadata["choices"], f.metadata["bounds"]
            if choices and value not in choices:
                raise ConfigError(f"unknown {f.name} {value!r}; choose one of {list(choices)}")
            if low is None or (value is None and "None" in f.type):
                continue
            kind = "an integer" if f.type.startswith("int") else "a finite number"
            number = isinstance(value, (int, float)) and (kind == "an integer" or math.isfinite(value))
            ok = number and (isinstance(value, int) or kind != "an integer")
            ok = ok and not isinstance(value, bool) and (value > low if "low" in open_ends else value >= low)
            ok = ok and (high is None or (value < high if "high" in open_ends else value <= high))
            if not ok:
                allowed = (f"{'>' if 'low' in open_ends else '>='} {low}" if high is None else
                           f"in {'(' if 'low' in open_ends else '['}{low}, {high}{')' if 'high' in open_ends else ']'}")
                raise ConfigError(f"--{f.name.replace('_', '-')} must be {kind} {allowed} (got {value!r})")
        if self.method in SPIN_METHODS and not self.dist:
            raise ConfigError(f"--method {self.method} needs a distribution: pass --dist FILE or a preset such as "
                              "paper:alexnet")
        if self.method in IN_METHODS and not self.weights:
            raise ConfigError(f"--method {self.method} needs transferred weights: pass --weights SOURCE "
                              "(a checkpoint file, a torchvision model name or an hf:// reference)")
        return self

    @property
    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        known = sorted(f.name for f in fields(cls))
        if unknown := sorted(set(data) - set(known)):
            raise ConfigError(f"unknown training option(s) {unknown}; known options are {known}")
        return cls(**dict(data))


@dataclass
class TrainResult:
    run_dir: Path
    status: str  # completed | diverged
    metrics: list[dict[str, Any]]
    summary: dict[str, Any]
    config: TrainConfig
    model: nn.Module | None = field(default=None, repr=False)  # the trained model (None when nothing ran)


# -- setup ---------------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    if name == "auto":  # CUDA, MPS, XPU, ... whichever this torch build has and can reach
        return torch.accelerator.current_accelerator(check_available=True) or torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda but no CUDA device is available; use --device auto or cpu")
    return device


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """True when the CPU flags list avx512_bf16 or AMX-BF16. Elsewhere bf16 convolutions are
    emulated: measured about 70x slower than fp32 on an AVX2-only EPYC (benchmarks/bench_epoch.py)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", cpuinfo) is not None


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"


def git_commit() -> str | None:
    """The commit of the polarpack checkout this runs from ('+dirty' with local changes), else
    $POLARPACK_GIT_COMMIT (a copy without .git), else None (an installed release): recorded in every
    run, so results name the code they ran on."""
    cmd = ["git", "-C", str(Path(__file__).parent), "describe", "--always", "--abbrev=40", "--exclude=*",
           "--dirty=+dirty"]
    try:
        found = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        found = None
    return found.stdout.strip() if found and found.returncode == 0 else os.environ.get("POLARPACK_GIT_COMMIT")


def _cpu_model() -> str | None:
    """The CPU's model name: kernels and their rounding differ between CPU kinds."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or None
    return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), None)


def keras_init_(model: nn.Module, seed: int) -> None:
    """Keras defaults for the seed's networks: Glorot-uniform kernels and zero biases, seeded per
    layer so every method starts its unconstrained layers from the same weights."""
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
                glorot_uniform_(module.weight, generator_for(seed, "init", name))
                if module.bias is not None:
                    module.bias.zero_()


def initialise(model: nn.Module, config: TrainConfig) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Initialise `model` for the method; return the sign targets (empty when unconstrained) and
    what was done (layer mapping, transferred tensors) for config.json."""
    from .sources import load_distribution, load_state_dict

    if config.model in PAPER_NETS:
        keras_init_(model, config.seed)
    layers = constrainable_layers(model, config.constrain)
    hub = dict(endpoint=config.endpoint, revision=config.revision)
    if config.method == "scratch":
        with torch.no_grad():
            for name, module in layers:
                module.weight.copy_(glorot_normal(module.weight.shape, generator_for(config.seed, "magnitudes", name)))
        return {}, {}
    if config.method in SPIN_METHODS or (config.method == "freeze-in" and _is_distribution(config.weights)):
        dist = load_distribution(config.dist if config.method in SPIN_METHODS else config.weights, **hub)
        mat = materialize(dist, model, seed=config.seed, sampling=config.sampling, mapping=config.layer_map,
                          scope=config.constrain)
        mat.apply_(model)
        return mat.targets, {"layer_map": mat.mapping, "distribution_source": dict(dist.source), "_materialized": mat}
    state = load_state_dict(config.weights, layout=config.layout, unsafe_allow_pickle=config.unsafe_allow_pickle, **hub)
    constrained = dict(layers)
    for name, module in layers:
        key = f"{name}.weight"
        if key not in state:
            raise ModelError(f"--weights {config.weights}: no tensor {key!r} for layer {name!r}; the checkpoint has "
                             f"{len(state)} tensors, e.g. {list(state)[:6]}")
        if tuple(state[key].shape) != tuple(module.weight.shape):
            raise ModelError(f"--weights {config.weights}: {key!r} has shape {tuple(state[key].shape)} but the model "
                             f"needs {tuple(module.weight.shape)}: transferred weights must come from the same "
                             "architecture (check --model and --geometry)")
    if config.method == "freeze-in":
        pattern = {name: torch.sign(state[f"{name}.weight"].float()).to(torch.int8) for name in constrained}
        mat = materialize_pattern(pattern, seed=config.seed)
        mat.apply_(model)
        return mat.targets, {"transferred_pattern": list(pattern), "_materialized": mat}
    own, head, loaded, skipped = model.state_dict(), head_name(model), [], []  # fluid-in: all but the head
    for key, value in own.items():
        if head is not None and key.startswith(f"{head}."):
            continue
        if key in state and tuple(state[key].shape) == tuple(value.shape):
            own[key] = state[key].to(value.dtype)
            loaded.append(key)
        else:
            skipped.append(key if key not in state else f"{key} (shape {tuple(state[key].shape)})")
    model.load_state_dict(own)
    return {}, {"transferred": loaded, "not_transferred": skipped}


def _is_distribution(ref: str | None) -> bool:
    return isinstance(ref, str) and (ref.startswith("paper:") or ".polar" in Path(ref).name)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.resolved_lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=config.resolved_lr, momentum=config.momentum,
                           weight_decay=config.weight_decay)


# -- run directory -------------------------------------------------------------------------------


def _default_run_dir(config: TrainConfig) -> Path:
    dataset = re.sub(r"[^A-Za-z0-9.-]+", "_", config.dataset)
    return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{config.model}-{dataset}-{config.method}-s{config.seed}"


RUN_FILES = ("config.json", "metrics.jsonl", "metrics.csv", "summary.json", MODEL_FILE, STATE_FILE, "init.safetensors")


def claim_run_dir(run_dir: Path, config: TrainConfig, overwrite: bool) -> None:
    """A run directory belongs to one configuration: refuse to mix a new run into an old one."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir}: exists and is not a directory; choose another --out")
    old = run_dir / "config.json"
    if old.exists() and not overwrite:
        try:
            same = TrainConfig.from_dict(read_json(old)["config"]).to_dict() == config.to_dict()
        except (ConfigError, KeyError, TypeError):
            same = False
        what = "this run already; continue it with --resume" if same else "a different run; choose another --out"
        raise ConfigError(f"--out {run_dir}: holds {what} {run_dir}, or pass --overwrite to start it over")
    for name in RUN_FILES if overwrite else ():
        (run_dir / name).unlink(missing_ok=True)


def write_metrics(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    def flatten(row: dict[str, Any]) -> dict[str, Any]:  # held proportions as held.<layer>.<p> columns
        keys = ("p0", "p_neg", "p_pos")
        held = {f"held.{name}.{k}": p for name, ps in row.get("held", {}).items() for k, p in zip(keys, ps)}
        return {k: v for k, v in row.items() if k != "held"} | held

    flat = [flatten(r) for r in rows]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in flat for k in r)), lineterminator="\n")
    writer.writeheader()
    writer.writerows(flat)
    atomic_write_text(run_dir / "metrics.csv", buf.getvalue())


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The epochs of a run; a torn last line (a writer killed mid-write) is an error naming the file."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            rows += [json.loads(line)] if line.strip() else []
        except json.JSONDecodeError:
            raise ConfigError(f"{path}: line {number} is not valid JSON (a damaged file); restore it, or rerun the "
                              "run") from None
    return rows


def summarize(rows: list[dict[str, Any]], config: TrainConfig, status: str, token: str) -> dict[str, Any]:
    """Final and best accuracy, and the first epoch whose validation accuracy reached the threshold."""
    val = [r["val_acc"] for r in rows if r.get("val_acc") is not None]
    return {
        "status": status, "epochs_done": len(rows), "epochs": config.epochs,
        "final_val_acc": rows[-1]["val_acc"] if rows else None,
        "final_train_acc": rows[-1]["train_acc"] if rows else None,
        "best_val_acc": max(val) if val else None,
        "threshold": config.threshold,
        "epochs_to_threshold": next((r["epoch"] for r in rows if (r.get("val_acc") or 0.0) >= config.threshold), None),
        "train_seconds": sum(r.get("epoch_seconds", 0.0) for r in rows),
        "run_token": token,
    }


# -- checkpoints ---------------------------------------------------------------------------------


def save_checkpoint(run_dir: Path, *, epoch: int, token: str, model: nn.Module, optimizer: torch.optim.Optimizer,
                    constraint: SignConstraint | None) -> None:
    """training_state.safetensors first (self-contained: a resume reads nothing else), then the
    plain model.safetensors a user loads; each is written atomically."""
    from safetensors.torch import save_file

    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors = {f"model.{k}": v for k, v in weights.items()}
    tensors |= {f"target.{k}": v.cpu().contiguous() for k, v in (constraint.targets() if constraint else {}).items()}
    opt = optimizer.state_dict()
    scalars = {}
    for idx, state in opt["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    meta = {"epoch": epoch, "run_token": token, "param_groups": opt["param_groups"], "optim_scalars": scalars}
    with atomic_output(run_dir / STATE_FILE) as tmp:
        save_file(tensors, tmp, metadata={"polarpack": json.dumps(meta)})
    with atomic_output(run_dir / MODEL_FILE) as tmp:
        save_file(weights, tmp, metadata={"format": "pt"})


def load_checkpoint(run_dir: Path, *, token: str, model: nn.Module, optimizer: torch.optim.Optimizer,
                    constraint: SignConstraint | None) -> int:
    """Restore the state after the last finished epoch; return that epoch."""
    from safetensors import SafetensorError, safe_open

    path = run_dir / STATE_FILE
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads(fh.metadata()["polarpack"])
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"--resume {run_dir}: {STATE_FILE} is damaged ({exc}); the run cannot continue from it: "
                          "start it over with --overwrite") from None
    if meta.get("run_token") != token:
        raise ConfigError(f"--resume {run_dir}: {STATE_FILE} belongs to another run than config.json; start over with "
                          "--overwrite")
    device = next(model.parameters()).device
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value if name == "step" else value.to(device)
    for key, value in meta["optim_scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    if constraint is not None:
        constraint.load_targets_({k[len("target."):]: v for k, v in tensors.items() if k.startswith("target.")})
    return int(meta["epoch"])


# -- the loop ------------------------------------------------------------------------------------


def epoch_generator(seed: int, purpose: str, epoch: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The random stream of one purpose in one epoch: resume needs no saved random state."""
    return torch.Generator(device=device).manual_seed(derive_seed(seed, purpose, str(epoch)))


@dataclass
class _Run:
    """What the loop needs besides the model: data, batch preparation and precision."""

    config: TrainConfig
    device: torch.device
    precision: str
    prepare: Callable[[torch.Tensor], torch.Tensor]
    train_set: Any
    val_set: Any
    dist: distributed.Dist

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")


@torch.no_grad()
def refresh_batchnorm(model: nn.Module, run: _Run, epoch: int) -> None:
    """Precise BN: the statistics of `bn_batches` whole training batches (the same on every rank)
    replace the running averages, which lag far behind the weights after ten steps an epoch."""
    from .data import batch_indices

    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms or not run.config.bn_batches:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches below
    order = epoch_generator(run.config.seed, "bn", epoch)
    batches = batch_indices(len(run.train_set.labels), run.config.batch_size, order)
    for idx in batches[: run.config.bn_batches]:
        with run.autocast():
            model(run.prepare(run.train_set.images[idx]))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum


@torch.no_grad()
def evaluate(model: nn.Module, run: _Run) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over the validation split (sums in fp32; sharded by rank)."""
    model.eval()
    images, labels = run.val_set.images, run.val_set.labels
    shard = run.dist.shard_range(len(labels))
    loss_sum, correct = 0.0, 0
    for start in range(shard.start, shard.stop, run.config.eval_batch_size):
        stop = min(start + run.config.eval_batch_size, shard.stop)
        y = labels[start:stop].to(run.device)
        with run.autocast():
            out = model(run.prepare(images[start:stop])).float()
        loss_sum += float(F.cross_entropy(out, y, reduction="sum"))
        correct += int((out.argmax(1) == y).sum())
    model.train()
    loss_sum, correct = run.dist.all_sum(loss_sum, correct)
    return loss_sum / len(labels), correct / len(labels)


def _train_epoch(net: nn.Module, optimizer, constraint: SignConstraint | None, run: _Run, epoch: int, bar) -> dict:
    """One pass over the training set; stops early at a non-finite loss (the row says so)."""
    from .data import batch_indices

    torch.manual_seed(derive_seed(run.config.seed, "dropout", str(run.dist.rank), str(epoch)))
    loss_sum, correct, seen, started = 0.0, 0, 0, time.perf_counter()
    order = epoch_generator(run.config.seed, "batches", epoch)
    for idx in batch_indices(len(run.train_set.labels), run.config.batch_size, order):
        mine = run.dist.shard(idx)
        x, y = run.prepare(run.train_set.images[mine]), run.train_set.labels[mine].to(run.device, non_blocking=True)
        with run.autocast():
            out = net(x).float()
        # summed over this rank's images, scaled so DDP's average is the global batch's mean loss
        loss = F.cross_entropy(out, y, reduction="sum") * (run.dist.world_size / len(idx))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if constraint is not None:
            constraint.project_()
        batch_loss, batch_correct = run.dist.all_sum(float(loss.detach()) * len(idx) / run.dist.world_size,
                                                     int((out.argmax(1) == y).sum()))
        loss_sum, correct, seen = loss_sum + batch_loss, correct + int(batch_correct), seen + len(idx)
        bar.set_postfix(epoch=epoch, loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", refresh=False)
        bar.update(1)
        if not math.isfinite(batch_loss):
            break
    seconds = time.perf_counter() - started
    return {"train_loss": loss_sum / seen, "train_acc": correct / seen, "train_seconds": seconds,
            "images_per_second": seen / seconds}


def train(config: TrainConfig | None = None, *, out: str | os.PathLike | None = None,
          resume: str | os.PathLike | None = None,
          overwrite: bool = False, progress: bool = True, on_epoch: Callable[[dict], None] | None = None,
          backend: str | None = None, **overrides: Any) -> TrainResult:
    """Train one run. `resume=RUN_DIR` continues an interrupted run with its saved config and ends
    with the metrics an uninterrupted run has. Pass a `TrainConfig` or keyword options
    (`train(method="scratch", epochs=3)`). Under torchrun (RANK/WORLD_SIZE set) the run is
    distributed (DDP); every rank returns the same metrics, only rank 0 writes files."""
    config, run_dir, meta = _open_run(config, out, resume, overwrite, overrides)
    run, model, targets, init_report = _build(config, backend)
    optimizer = make_optimizer(model, config)
    constraint = None
    if config.method in CONSTRAINED_METHODS:
        constraint = SignConstraint(model, targets, eps=config.eps, zeros=config.zeros, seed=config.seed)
    rows, token = [], meta.get("run_token") or uuid.uuid4().hex
    if resume is not None and (run_dir / STATE_FILE).exists():
        start = load_checkpoint(run_dir, token=token, model=model, optimizer=optimizer, constraint=constraint)
        rows = read_metrics(run_dir)[:start]
    elif resume is not None and meta.get("summary", {}).get("status") in FINISHED:
        summary = meta["summary"]
        return TrainResult(run_dir, summary["status"], read_metrics(run_dir), summary, config)
    elif run.dist.is_main:
        _write_config(run_dir, config, run, token, init_report)
    run.dist.check_same("sign targets", distributed.checksum(constraint.targets() if constraint else {}),
                        "every rank must materialize the same pattern: same --seed, --dist, --sampling, --map, version")
    net, status, steps = run.dist.wrap(model), "running", math.ceil(len(run.train_set.labels) / config.batch_size)
    bar = tqdm(total=config.epochs * steps, initial=len(rows) * steps, desc=f"{config.method} {config.model}",
               unit="step", dynamic_ncols=True, disable=not (progress and run.dist.is_main))
    for epoch in range(len(rows) + 1, config.epochs + 1):
        started = time.perf_counter()
        flips = 0
        if constraint is not None and config.method == "fluid-spin" and epoch > 1:
            constraint.flip_generator = epoch_generator(config.seed, "fluid", epoch)
            flips = constraint.fluid_step_(config.fluid_fraction, config.fluid_mode)
        if constraint is not None:
            constraint.generator = epoch_generator(config.seed, "resets", epoch, run.device)
        trained = _train_epoch(net, optimizer, constraint, run, epoch, bar)
        refresh_batchnorm(model, run, epoch)
        val_loss, val_acc = evaluate(model, run)
        row = {"epoch": epoch, "train_loss": trained["train_loss"], "train_acc": trained["train_acc"],
               "val_loss": val_loss,
               "val_acc": val_acc, "epoch_seconds": time.perf_counter() - started, **trained,
               "projection_resets": constraint.take_reset_count() if constraint else 0, "fluid_flips": flips,
               "lr": optimizer.param_groups[0]["lr"], **({"held": constraint.held_proportions()} if constraint else {})}
        if not math.isfinite(row["train_loss"] + row["val_loss"]):  # JSON holds no NaN: those become null
            status = "diverged"
            row = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}
        rows.append(row)
        if run.dist.is_main:
            write_metrics(run_dir, rows)
            if status != "diverged" and (epoch % config.checkpoint_every == 0 or epoch == config.epochs):
                save_checkpoint(run_dir, epoch=epoch, token=token, model=model, optimizer=optimizer,
                                constraint=constraint)
            atomic_write_text(run_dir / "summary.json", json.dumps(summarize(rows, config, status, token),
                                                                   indent=2) + "\n")
        if on_epoch is not None:
            on_epoch(row)
        if status == "diverged":
            break
    bar.close()
    status = "completed" if status == "running" else status
    summary = summarize(rows, config, status, token)
    if run.dist.is_main:
        atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        (run_dir / STATE_FILE).unlink(missing_ok=True)  # a finished run is never resumed
    run.dist.teardown()
    return TrainResult(run_dir, status, rows, summary, config, model)


def _open_run(config, out, resume, overwrite, overrides) -> tuple[TrainConfig, Path, dict[str, Any]]:
    """The validated config and run directory; for a resume, what the directory already says."""
    meta: dict[str, Any] = {}
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "config.json").exists():
            raise ConfigError(f"--resume {run_dir}: no config.json there; is it a polarpack run directory?")
        saved = read_json(run_dir / "config.json")
        config = TrainConfig.from_dict(saved["config"])
        meta["run_token"] = saved.get("run_token")
        if (run_dir / "summary.json").exists():
            meta["summary"] = read_json(run_dir / "summary.json")
            if meta["summary"].get("run_token") != meta["run_token"]:
                raise ConfigError(f"--resume {run_dir}: summary.json belongs to another run than config.json; "
                                  "start over with --overwrite")
    else:
        config = TrainConfig.from_dict({**(config.to_dict() if config else {}), **overrides})
        run_dir = Path(out) if out is not None else _default_run_dir(config)
    config.validate()
    config.precision = resolve_precision(config.precision, resolve_device(config.device))
    if os.environ.get("RANK", "0") == "0":
        if resume is None:
            claim_run_dir(run_dir, config, overwrite)
        for stale in run_dir.glob(".*.tmp") if run_dir.is_dir() else ():  # a writer killed mid-write
            stale.unlink(missing_ok=True)
    return config, run_dir, meta


def _build(config: TrainConfig, backend: str | None) -> tuple[_Run, nn.Module, dict[str, torch.Tensor], dict[str, Any]]:
    """Data, model (initialised, on its device and memory format) and the sign targets."""
    from .data import load_splits, prepare_batch

    if config.threads:
        torch.set_num_threads(config.threads)
    dist, device = distributed.setup(resolve_device(config.device), backend)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: cuDNN times its kernels once, then uses the fastest
        if config.precision == "fp32":  # fp32 means IEEE fp32, not the TF32 convolutions of PyTorch's CUDA default
            torch.backends.cudnn.conv.fp32_precision = torch.backends.cuda.matmul.fp32_precision = "ieee"
    train_set, val_set = load_splits(config.dataset, data_dir=config.data_dir, train_size=config.train_size,
                                     val_size=config.val_size, seed=config.seed, download=config.download)
    model = build_model(config.model, num_classes=len(train_set.classes), geometry=config.geometry,
                        dropout=config.dropout)
    targets, report = initialise(model, config)
    conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    memory_format = torch.channels_last if conv else torch.contiguous_format  # faster convs in fp32 and bf16 alike
    model.to(device, memory_format=memory_format)
    size = config.image_size or input_size_for(config.model, config.geometry)
    mean, std = train_set.mean, train_set.std

    def prepare(batch: torch.Tensor) -> torch.Tensor:
        x = prepare_batch(batch.to(device, non_blocking=True), mean, std, size=size, channels=3)
        return x.contiguous(memory_format=memory_format)

    report |= {"input_size": size or int(train_set.images.shape[-1]), "num_classes": len(train_set.classes),
               "train_images": len(train_set.labels), "val_images": len(val_set.labels),
               "memory_format": str(memory_format)}
    return _Run(config, device, config.precision, prepare, train_set, val_set, dist), model, targets, report


def _write_config(run_dir: Path, config: TrainConfig, run: _Run, token: str, report: dict[str, Any]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    materialized = report.pop("_materialized", None)
    resolved = {"lr": config.resolved_lr, "device": str(run.device), "precision": run.precision, **report,
                **({"distributed": run.dist.describe()} if run.dist.world_size > 1 else {})}
    environment = {"polarpack": __version__, "git_commit": git_commit(), "torch": torch.__version__,
                   "python": platform.python_version(), "threads": torch.get_num_threads(),
                   "machine": platform.machine(), "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu": _cpu_model(),
                   **({"cuda_device": torch.cuda.get_device_name(run.device)} if run.device.type == "cuda" else {})}
    meta = {"config": config.to_dict(), "resolved": resolved, "environment": environment, "run_token": token}
    atomic_write_text(run_dir / "config.json", json.dumps(meta, indent=2, default=str) + "\n")
    if config.save_init and materialized is not None:
        materialized.save(run_dir / "init.safetensors")
