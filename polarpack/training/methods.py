"""The training methods: one registry entry each (`METHODS`), and how each one starts (the initial
weights and the sign targets it trains under).

Every place that treats methods differently reads the entry: the options `polarpack train` offers
and `TrainConfig.validate` requires, the options a grid cell drops, the run id, the training loop
(constrained? fluid?) and the report's Table 1 rows. A new method is one entry here (and, for a new
kind of start, one start function).

`norms` adds, to any method, the normalisation layers' weights, biases and running statistics of
a checkpoint or of a .polar file that carries them. The paper's networks first get Keras' default
initialisation everywhere (Glorot-uniform kernels, zero biases), so every method starts its
unconstrained layers from the same weights.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from polarpack.errors import ModelError
from polarpack.models import PAPER_NETS, constrainable_layers, head_name
from polarpack.sources.references import names_distribution
from polarpack.training.materialization import (
    Materialized,
    generator_for,
    glorot_normal,
    glorot_uniform_,
    materialize,
    materialize_pattern,
)

if TYPE_CHECKING:  # config.py reads the registry, so it is imported for annotations only
    from polarpack.training.config import TrainConfig

GLOROT, PROPORTIONS, SIGNS, WEIGHTS = "glorot", "proportions", "signs", "weights"
STARTS = (GLOROT, PROPORTIONS, SIGNS, WEIGHTS)
SOURCE_OPTIONS = {PROPORTIONS: "dist", SIGNS: "weights", WEIGHTS: "weights"}


@dataclass(frozen=True)
class Method:
    """What a method starts from and what holds while it trains.

    start: glorot (Glorot-normal kernels), proportions (a random pattern with a distribution's
    proportions, Glorot magnitudes), signs (a transferred sign pattern: a checkpoint's signs or a
    pattern .polar, Glorot magnitudes, or a scaled .polar's channel scales) or weights (the
    transferred float weights, all but the classifier head). constrained: the sign targets hold
    through training (the projection after every step). fluid: a fraction of the targets changes
    each epoch. algorithm: the paper's Algorithm number, where it has one."""

    name: str
    help: str
    start: str
    constrained: bool = False
    fluid: bool = False
    algorithm: int | None = None

    def __post_init__(self) -> None:
        if self.start not in STARTS or (self.fluid and not self.constrained):
            raise ValueError(f"method {self.name}: start {self.start!r}, fluid={self.fluid}")

    @property
    def source(self) -> str | None:
        """The option naming what it starts from (dist or weights), None for a Glorot start."""
        return SOURCE_OPTIONS.get(self.start)

    def uses(self, option: str) -> bool:
        """Whether this method reads `option`: the others are dropped from its grid cells, so
        methods x dists does not repeat the scratch run."""
        used_by = {
            "dist": self.source == "dist",
            "weights": self.source == "weights",
            "zeros": self.constrained,
            "eps": self.constrained,
            "sampling": self.start == PROPORTIONS,
            "fluid_fraction": self.fluid,
            "fluid_mode": self.fluid,
        }
        return used_by.get(option, True)


METHOD_OPTIONS = ("dist", "weights", "zeros", "eps", "sampling", "fluid_fraction", "fluid_mode")

METHODS = {
    m.name: m
    for m in (
        Method(
            "freeze-spin",
            "Alg. 1: Glorot magnitudes, a random pattern with the distribution's proportions, "
            "held fixed",
            PROPORTIONS,
            constrained=True,
            algorithm=1,
        ),
        Method(
            "fluid-spin",
            "Alg. 3: as freeze-spin, and each epoch a fraction of the non-zero weights change "
            "(--fluid-mode)",
            PROPORTIONS,
            constrained=True,
            fluid=True,
            algorithm=3,
        ),
        Method(
            "freeze-in",
            "Alg. 2: the exact sign pattern of --weights (a checkpoint, or a pattern or scaled "
            ".polar), held fixed; Glorot magnitudes (a scaled .polar: its channel scales)",
            SIGNS,
            constrained=True,
            algorithm=2,
        ),
        Method(
            "fluid-in-polarity",
            "the start of freeze-in, then unconstrained training (the prior work's Fluid "
            "IN-Polarity)",
            SIGNS,
        ),
        Method(
            "fluid-in",
            "Alg. 4: start from the transferred weights (--weights) and train freely (fine-tuning)",
            WEIGHTS,
            algorithm=4,
        ),
        Method("scratch", "control: Glorot initialisation, no constraint", GLOROT),
    )
}


DEFAULT_METHOD = METHODS["freeze-spin"].name  # the paper's Algorithm 1


def methods_starting_from(start: str) -> list[str]:
    return [m.name for m in METHODS.values() if m.start == start]


@dataclass
class Start:
    """A method's start: the sign targets (empty when nothing is constrained), what was done (for
    config.json), and the materialized kernels (for init.safetensors)."""

    targets: dict[str, torch.Tensor] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    materialized: Materialized | None = None


def keras_init_(model: nn.Module, seed: int) -> None:
    """Keras defaults for the paper's networks: Glorot-uniform kernels and zero biases, seeded per
    layer so every method starts its unconstrained layers from the same weights."""
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear | nn.modules.conv._ConvNd):
                glorot_uniform_(module.weight, generator_for(seed, "init", name))
                if module.bias is not None:
                    module.bias.zero_()


def initialise(model: nn.Module, config: TrainConfig) -> Start:
    """Initialise `model` in place for `config.method` (and `config.norms`)."""
    if config.model in PAPER_NETS:
        keras_init_(model, config.seed)
    start = _STARTS[METHODS[config.method].start](model, config)
    if config.norms:
        start.report["norms"] = transfer_norms(model, config.norms, **_hub(config))
    return start


def _hub(config: TrainConfig) -> dict[str, Any]:
    return {"endpoint": config.endpoint, "revision": config.revision}


def _scratch(model: nn.Module, config: TrainConfig) -> Start:
    with torch.no_grad():
        for name, module in constrainable_layers(model, config.constrain):
            generator = generator_for(config.seed, "magnitudes", name)
            module.weight.copy_(glorot_normal(module.weight.shape, generator))
    return Start()


def _from_proportions(model: nn.Module, config: TrainConfig) -> Start:
    return _from_distribution(model, config, config.dist)


def _from_signs(model: nn.Module, config: TrainConfig) -> Start:
    if names_distribution(config.weights):
        return _from_distribution(model, config, config.weights, exact=True)
    return _from_checkpoint_signs(model, config)


def _from_distribution(
    model: nn.Module, config: TrainConfig, ref: str, *, exact: bool = False
) -> Start:
    """The start a distribution gives. `exact`: the method transfers a sign pattern, which a
    layer or channel file does not hold (materializing one would sample a random pattern, the
    Freeze SPIN start, under the other method's name)."""
    from polarpack.sources.weights import load_distribution

    distribution = load_distribution(ref, **_hub(config))
    if exact and distribution.granularity not in ("pattern", "scaled"):
        raise ModelError(
            f"--weights {ref}: a {distribution.granularity} distribution holds proportions, not "
            f"the sign pattern that {config.method} transfers; pass a checkpoint or a pattern or "
            f"scaled .polar (polarpack extract --granularity pattern), or train --method "
            f"freeze-spin --dist {ref}"
        )
    mat = materialize(
        distribution,
        model,
        seed=config.seed,
        sampling=config.sampling,
        mapping=config.layer_map,
        scope=config.constrain,
    )
    mat.apply_(model)
    report = {"layer_map": mat.mapping, "distribution_source": dict(distribution.source)}
    return Start(mat.targets, report, mat)


def _checkpoint(
    config: TrainConfig, layers: list[tuple[str, nn.Module]]
) -> dict[str, torch.Tensor]:
    """The transferred state dict, checked to hold every constrained layer's kernel."""
    from polarpack.sources.weights import load_state_dict

    state = load_state_dict(
        config.weights,
        layout=config.layout,
        unsafe_allow_pickle=config.unsafe_allow_pickle,
        **_hub(config),
    )
    for name, module in layers:
        key = f"{name}.weight"
        if key not in state:
            raise ModelError(
                f"--weights {config.weights}: no tensor {key!r} for layer {name!r}; "
                f"the checkpoint has {len(state)} tensors, e.g. {list(state)[:6]}"
            )
        if tuple(state[key].shape) != tuple(module.weight.shape):
            raise ModelError(
                f"--weights {config.weights}: {key!r} has shape {tuple(state[key].shape)} but the "
                f"model needs {tuple(module.weight.shape)}: transferred weights must come from "
                "the same architecture (check --model and --geometry)"
            )
    return state


def _from_checkpoint_signs(model: nn.Module, config: TrainConfig) -> Start:
    layers = constrainable_layers(model, config.constrain)
    state = _checkpoint(config, layers)
    pattern = {
        name: torch.sign(state[f"{name}.weight"].float()).to(torch.int8) for name, _ in layers
    }
    mat = materialize_pattern(pattern, seed=config.seed)
    mat.apply_(model)
    return Start(mat.targets, {"transferred_pattern": list(pattern)}, mat)


def _fine_tune(model: nn.Module, config: TrainConfig) -> Start:
    """Every tensor of the checkpoint that fits, except the classifier head."""
    state = _checkpoint(config, constrainable_layers(model, config.constrain))
    own, head, loaded, skipped = model.state_dict(), head_name(model), [], []
    for key, value in own.items():
        if head is not None and key.startswith(f"{head}."):
            continue
        if key in state and tuple(state[key].shape) == tuple(value.shape):
            own[key] = state[key].to(value.dtype)
            loaded.append(key)
        else:
            shape = f" (shape {tuple(state[key].shape)})" if key in state else ""
            skipped.append(key + shape)
    model.load_state_dict(own)
    return Start(report={"transferred": loaded, "not_transferred": skipped})


_STARTS: dict[str, Callable[[nn.Module, TrainConfig], Start]] = {
    GLOROT: _scratch,
    PROPORTIONS: _from_proportions,
    SIGNS: _from_signs,
    WEIGHTS: _fine_tune,
}


def _norm_source(ref: str, **hub: Any) -> Mapping[str, Any]:
    """The normalisation tensors a reference holds: a .polar's `norms`, or a checkpoint's state
    dict."""
    if names_distribution(ref):
        from polarpack.sources.weights import load_distribution

        norms = load_distribution(ref, **hub).norms
        if not norms:
            raise ModelError(
                f"--norms {ref}: the file carries no normalisation tensors; "
                "extract it with --norms, or pass the checkpoint itself"
            )
        return norms
    from polarpack.sources.weights import load_state_dict

    return load_state_dict(ref, **hub)


def normalisation_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The live weight, bias, running mean and running variance of every batch-norm layer, by
    state-dict name (not the step counter, which a resumed network does not need)."""
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            for attr in ("weight", "bias", "running_mean", "running_var"):
                tensor = getattr(module, attr, None)
                if tensor is not None:
                    found[f"{name}.{attr}" if name else attr] = tensor
    return found


def transfer_norms(model: nn.Module, ref: str, **hub: Any) -> list[str]:
    """Copy every normalisation tensor of `model` (weight, bias, running mean and variance) from
    `ref`; all of them must be there, with their shapes. Returns the names copied."""
    source = _norm_source(ref, **hub)
    own = normalisation_tensors(model)
    missing = [k for k in own if k not in source]
    if missing:
        raise ModelError(
            f"--norms {ref}: no tensor for {len(missing)} of the model's "
            f"{len(own)} normalisation tensors, e.g. {missing[:4]}; it must come "
            "from the same architecture"
        )
    with torch.no_grad():
        for key, tensor in own.items():
            value = source[key]  # a tensor, or a read-only array from a .polar file
            value = value if torch.is_tensor(value) else torch.from_numpy(np.array(value))
            if tuple(value.shape) != tuple(tensor.shape):
                raise ModelError(
                    f"--norms {ref}: {key!r} has shape {tuple(value.shape)}, the "
                    f"model's has {tuple(tensor.shape)}"
                )
            tensor.copy_(value.to(tensor.dtype))
    return list(own)
