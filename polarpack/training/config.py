"""The options of a training run: `TrainConfig`, each field with the help `polarpack train --help`
shows and the values `validate` allows, so the CLI, experiment files and the Python API check
them in one place.

Defaults follow the paper where it speaks (20 epochs, batch 1000, 10k train / 10k validation
images, conv layers constrained, FC layers free) and the prior-work code where it is silent (Adam,
lr 1e-3, eps 1e-3, dropout 0.5 after fc6 and fc7, no weight decay).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from dataclasses import Field, dataclass, field, fields
from typing import Any

import torch

from polarpack._io import read_bytes
from polarpack.errors import ConfigError, PolarpackError
from polarpack.models import CONSTRAIN_SCOPES, GEOMETRIES
from polarpack.redact import public_url
from polarpack.sources.references import names_distribution
from polarpack.sources.weights import LAYOUTS
from polarpack.training.constraints import FLUID_MODES, ZERO_MODES
from polarpack.training.materialization import SAMPLING_MODES
from polarpack.training.methods import (
    DEFAULT_METHOD,
    METHODS,
    SIGNS,
    WEIGHTS,
    methods_starting_from,
)

OPTIMIZERS = ("adam", "sgd")
PRECISIONS = ("auto", "fp32", "bf16")
DEFAULT_LR = {"adam": 1e-3, "sgd": 1e-2}  # adam: prior-work code; sgd: the Keras default
MAX_IMAGE_SIZE = 1024


def _opt(
    default: Any,
    help: str,
    choices: tuple | None = None,
    low: float | None = None,
    high: float | None = None,
    open_ends: str = "",
) -> Any:
    """A TrainConfig field with what `polarpack train --help` shows and what `validate` allows:
    `choices`, or bounds `low`/`high` (exclusive where `open_ends` holds "low"/"high")."""
    bounds = (low, high, open_ends)
    return field(default=default, metadata={"help": help, "choices": choices, "bounds": bounds})


@dataclass
class TrainConfig:
    """Everything that defines a run. Sizes in images, rates per optimizer step."""

    method: str = _opt(
        DEFAULT_METHOD, "; ".join(f"{m.name}: {m.help}" for m in METHODS.values()), tuple(METHODS)
    )
    dist: str | None = _opt(
        None,
        "Distribution for the SPIN methods: a .polar file, a preset "
        "(paper:alexnet) or hf://owner/repo/file.polar.",
    )
    weights: str | None = _opt(
        None,
        "Transferred weights for the IN methods: a checkpoint, a "
        "torchvision model name, an hf:// reference, or a pattern or scaled "
        ".polar (freeze-in, fluid-in-polarity).",
    )
    norms: str | None = _opt(
        None,
        "Also transfer the normalisation layers' weights, biases and "
        "running statistics from this checkpoint or .polar file (one "
        "extracted with --norms), whatever the method.",
    )
    model: str = _opt(
        "alexnet",
        "alexnet, zfnet, a torchvision classifier or, with timm "
        "installed, a timm model (its head is resized to the dataset).",
    )
    geometry: str = _opt(
        "small",
        "small: 32x32/28x28 inputs with the paper's conv shapes; "
        "imagenet: the paper's 227/224 networks, images resized.",
        GEOMETRIES,
    )
    image_size: int | None = _opt(
        None,
        "Resize images to this size (e.g. 64 for torchvision models).",
        low=8,
        high=MAX_IMAGE_SIZE,
    )
    dataset: str = _opt(
        "fashion-mnist-mini",
        "cifar10, fashion-mnist, imagefolder:PATH, or the embedded fashion-mnist-mini (offline).",
    )
    data_dir: str | None = _opt(
        None, "Where datasets live (default: $POLARPACK_DATA_DIR, then ~/.cache/polarpack/data)."
    )
    download: bool = _opt(False, "Download a missing dataset with torchvision (needs network).")
    epochs: int = _opt(20, "Epochs (the paper: 20).", low=1)
    batch_size: int = _opt(
        1000, "Global batch size, split across ranks when distributed (the paper: 1000).", low=1
    )
    train_size: int | None = _opt(
        10_000,
        "Class-balanced seeded subset of the train split, or all (the paper: 10,000).",
        low=1,
    )
    val_size: int | None = _opt(
        10_000, "Class-balanced subset of the test split for validation (the paper: 10,000).", low=1
    )
    seed: int = _opt(
        0,
        "Fixes the pattern, magnitudes, data subset and order, dropout and reset values.",
        low=0,
        high=2**63 - 1,
    )
    optimizer: str = _opt(
        "adam",
        "adam: the prior-work code; sgd: the paper's Algorithms name "
        "stochastic gradient descent (without settings).",
        OPTIMIZERS,
    )
    lr: float | None = _opt(
        None,
        "Learning rate; default 1e-3 for adam (prior-work code), 1e-2 for sgd (Keras).",
        low=0,
        open_ends="low",
    )
    momentum: float = _opt(0.0, "SGD momentum (Keras default 0).", low=0, high=1, open_ends="high")
    weight_decay: float = _opt(0.0, "L2 weight decay (prior-work code: none).", low=0)
    dropout: float = _opt(
        0.5,
        "Dropout after fc6 and fc7 of alexnet/zfnet (prior-work: 0.5).",
        low=0,
        high=1,
        open_ends="high",
    )
    eps: float = _opt(
        1e-3,
        "Wrong-signed weights are reset to target * U(0, eps) (prior-work code: 1e-3).",
        low=0,
        open_ends="low",
    )
    zeros: str = _opt(
        "pin",
        "pin: zero targets hold their weights at 0 (the paper's Alg. 1); "
        "free: they train (prior-work code).",
        ZERO_MODES,
    )
    constrain: str = _opt(
        "conv",
        "conv: conv kernels only, FC free (the paper); all: FC too, "
        "except the head (prior-work code).",
        CONSTRAIN_SCOPES,
    )
    fluid_fraction: float = _opt(
        0.5,
        "fluid-spin: fraction of the non-zero weights changed each epoch (the paper: 0.5).",
        low=0,
        high=1,
    )
    fluid_mode: str = _opt(
        "flip",
        "fluid-spin: flip = weights and targets change sign (the "
        "pattern moves); permute = signs shuffled among the chosen "
        "(proportions exact); reset = only the weights flip, and the "
        "projection resets them to target * U(0, eps) (the pattern stays).",
        FLUID_MODES,
    )
    sampling: str = _opt(
        "exact", "exact: round(p*n) weights of each sign; iid: independent draws.", SAMPLING_MODES
    )
    layer_map: dict[str, str] | None = _opt(
        None, "Model layer -> distribution layer (default: by name, else by order)."
    )
    threshold: float = _opt(
        0.40,
        "Report the first epoch whose validation accuracy reaches this (the paper's 40%).",
        low=0,
        high=1,
        open_ends="low",
    )
    precision: str = _opt(
        "auto",
        "auto: bf16 where the hardware computes it natively (CUDA with bf16, CPUs with "
        "avx512_bf16/AMX), else fp32; bf16 autocast keeps fp32 master weights and optimizer state. "
        "CPUs run mobilenet_v2 faster in fp32.",
        PRECISIONS,
    )
    device: str = _opt(
        "auto",
        "auto (the accelerator torch finds: cuda, mps, ..., else cpu), cpu, cuda, cuda:N, mps.",
    )
    threads: int | None = _opt(
        None, "Torch CPU threads (default: torch's choice).", low=1, high=1024
    )
    micro_batch: int | None = _opt(
        None,
        "Compute each batch in parts of at most this many "
        "images, adding up their gradients before the step: the same "
        "update (up to float rounding) in less memory, for large "
        "images. BatchNorm sees each part on its own.",
        low=1,
    )
    eval_batch_size: int = _opt(1000, "Batch size of the validation pass.", low=1)
    bn_batches: int = _opt(
        2,
        "BatchNorm models: training batches whose statistics replace the "
        "running averages before each validation (ten steps an epoch leave "
        "those far behind); 0 keeps them.",
        low=0,
    )
    checkpoint_every: int = _opt(1, "Write the resume checkpoint at most every N epochs.", low=1)
    checkpoint_seconds: float = _opt(
        60.0,
        "Write the resume checkpoint only once this many seconds have passed since the last "
        "one: after an epoch that --checkpoint-every allows, or (one process) between two "
        "optimizer steps of a long one, so a resume repeats about this much training or the "
        "step it was in (0: after every such epoch, never within one). The metrics are written "
        "every epoch, the weights at every epoch's checkpoint and at the end.",
        low=0,
    )
    save_init: bool = _opt(
        False, "Also write init.safetensors (initial kernels and targets) to the run directory."
    )
    layout: str = _opt("auto", "Kernel layout of .npy/.npz --weights.", LAYOUTS)
    unsafe_allow_pickle: bool = _opt(
        False,
        "Let --weights unpickle .npy object arrays. UNSAFE: a "
        "pickle can run any code; only for files you trust.",
    )
    endpoint: str | None = _opt(None, "Hub endpoint for hf:// references (default: $HF_ENDPOINT).")
    revision: str | None = _opt(None, "Hub revision for hf:// references without @rev.")

    def validate(self) -> TrainConfig:
        """Check every option's type and value, then the options that go together; a
        ConfigError names the option, the value and what is allowed."""
        for f in _fields():
            check_option(f.name, getattr(self, f.name))
        method = METHODS[self.method]
        if method.source and not getattr(self, method.source):
            raise ConfigError(f"--method {self.method} needs {_NEEDS[method.source]}")
        if method.start == WEIGHTS and names_distribution(self.weights):
            raise ConfigError(
                f"--method {self.method} fine-tunes float weights, but --weights "
                f"{self.weights} is a distribution; use "
                f"{' or '.join(methods_starting_from(SIGNS))} for a .polar file"
            )
        if self.endpoint and public_url(self.endpoint) != self.endpoint:
            raise ConfigError(
                "--endpoint carries credentials, and a run's options are written to its "
                "config.json; put the URL in HF_ENDPOINT instead (it is read, never written)"
            )
        return self

    @property
    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]

    def to_dict(self) -> dict[str, Any]:
        """The options by name; layer_map, the one mutable value, is copied (asdict's deep copy
        of every field made expanding a large grid slow)."""
        return {f.name: _copied(getattr(self, f.name)) for f in _fields()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"training options must be a JSON object of options, got {type(data).__name__}"
            )
        if unknown := sorted(set(data) - {f.name for f in _fields()}):
            known = sorted(f.name for f in _fields())
            raise ConfigError(f"unknown training option(s) {unknown}; known options are {known}")
        return cls(**dict(data))


@functools.cache
def _fields() -> tuple[Field, ...]:
    return fields(TrainConfig)


def check_option(name: str, value: Any) -> None:
    """One option's type and value, as `validate` checks them: a grid validates the options its
    cells share once, then only what differs (the random seed)."""
    f = next(f for f in _fields() if f.name == name)
    _check_type(name, value, f.type)
    if value is not None:
        _check_value(name, value, f.metadata, f.type)


def _copied(value: Any) -> Any:
    return dict(value) if isinstance(value, dict) else value


_NEEDS = {  # what a method's source option must name
    "dist": "a distribution: pass --dist FILE or a preset such as paper:alexnet",
    "weights": "transferred weights: pass --weights SOURCE (a checkpoint file, a torchvision "
    "model name or an hf:// reference)",
}
_TYPES = {"str": str, "int": int, "float": (int, float), "bool": bool}


def _check_type(name: str, value: Any, annotation: str) -> None:
    """Values come from JSON and TOML files too: `"save_init": "no"` must not turn an option on."""
    option = f"--{name.replace('_', '-')}"
    base, _, optional = annotation.partition(" | ")
    if value is None:
        if optional:
            return
        raise ConfigError(f"{option} must be given (got null)")
    if base.startswith("dict"):
        ok = isinstance(value, Mapping) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        )
        what = "a mapping of layer names (TARGET=LAYER,...)"
    else:
        wanted = _TYPES[base]
        ok = isinstance(value, wanted) and (base == "bool" or not isinstance(value, bool))
        what = {
            "str": "a string",
            "int": "an integer",
            "float": "a number",
            "bool": "true or false",
        }[base]
    if not ok:
        raise ConfigError(f"{option} must be {what} (got {value!r} of type {type(value).__name__})")


def _check_value(name: str, value: Any, meta: Mapping[str, Any], annotation: str) -> None:
    option = f"--{name.replace('_', '-')}"
    choices, (low, high, open_ends) = meta["choices"], meta["bounds"]
    if choices and value not in choices:
        raise ConfigError(f"unknown {name} {value!r}; choose one of {list(choices)}")
    if low is None:
        return
    ok = math.isfinite(value) and (value > low if "low" in open_ends else value >= low)
    ok = ok and (high is None or (value < high if "high" in open_ends else value <= high))
    if not ok:
        left, right = "(" if "low" in open_ends else "[", ")" if "high" in open_ends else "]"
        allowed = (
            f"{'>' if 'low' in open_ends else '>='} {low}"
            if high is None
            else (f"in {left}{low}, {high}{right}")
        )
        kind = "an integer" if annotation.startswith("int") else "a finite number"
        raise ConfigError(f"{option} must be {kind} {allowed} (got {value!r})")


# -- where and how precisely: what `auto` resolves to --------------------------------------------


def resolve_device(name: str) -> torch.device:
    if name == "auto":  # CUDA, MPS, XPU, ... whichever this torch build has and can reach
        return torch.accelerator.current_accelerator(check_available=True) or torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cpu":
        return device
    here = torch.accelerator.current_accelerator(check_available=True)
    if here is None or here.type != device.type:
        reachable = f"only {here.type} and cpu" if here is not None else "only cpu"
        raise ConfigError(
            f"--device {name} but no {device.type} device is available (this torch reaches "
            f"{reachable}); use --device auto or cpu"
        )
    if device.index is not None and device.index >= torch.accelerator.device_count():
        raise ConfigError(
            f"--device {name} but there are {torch.accelerator.device_count()} {device.type} "
            f"devices (0-{torch.accelerator.device_count() - 1}); use --device {device.type}:0"
        )
    return device


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """True when the CPU flags list avx512_bf16 or AMX-BF16. Elsewhere bf16 convolutions are
    emulated: measured about 70x slower than fp32 on an AVX2-only EPYC
    (benchmarks/bench_epoch.py)."""
    if cpuinfo is None:
        try:
            cpuinfo = read_bytes("/proc/cpuinfo", limit=None, what="CPU information").decode()
        except PolarpackError:
            return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", cpuinfo) is not None


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"
