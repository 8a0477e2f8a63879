"""Materialization: a `Distribution` and a seed become sign targets and initial weights.

This is Algorithm 1's initialisation: GlorotNormal magnitudes (exactly as Keras draws them), a
random target pattern T with the distribution's proportions, and weights that take T's signs
(zero targets give zero weights). Each layer's pattern and magnitudes come from generators seeded
by (seed, layer name), so a layer's draw does not depend on the other layers, and the same seed
gives bit-identical output for a given torch version (torch's CPU `randperm`/`rand` algorithms
are the only thing that may change it). Everything is drawn on the CPU, then moved, so the result
does not depend on the device either.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from polarpack._io import atomic_write_bytes, check_output_path
from polarpack.errors import ModelError
from polarpack.format import Distribution, LayerDistribution
from polarpack.models import build_model, constrainable_layers

# Keras' GlorotNormal divides the std by the std of a unit normal truncated at +-2, so that the
# truncated samples have the Glorot std exactly.
TRUNCATION_CORRECTION = 0.87962566103423978
SAMPLING_MODES = ("exact", "iid")


def fans(shape: Sequence[int]) -> tuple[int, int]:
    """Keras' fans: for a conv kernel (out, in, kh, kw), fan_in = kh*kw*in, fan_out = kh*kw*out."""
    if len(shape) < 2:
        raise ModelError(f"cannot compute fans of a {len(shape)}-D shape {tuple(shape)}")
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def glorot_normal(shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    """Keras GlorotNormal: N(0, s / 0.8796) truncated at two of those stds, so the std is s.

    Sampled by rejection (redraw the ~4.6% beyond the bounds until none is left), which is exact
    and several times faster than inverse-CDF truncation on the CPU.
    """
    fan_in, fan_out = fans(shape)
    scale = math.sqrt(2.0 / (fan_in + fan_out)) / TRUNCATION_CORRECTION
    out = torch.empty(tuple(shape), dtype=torch.float32).normal_(0.0, scale, generator=generator)
    flat, bound = out.view(-1), 2.0 * scale
    redo = torch.from_numpy(np.flatnonzero(np.abs(flat.numpy()) > bound))
    while redo.numel():
        flat[redo] = torch.empty(redo.numel(), dtype=torch.float32).normal_(
            0.0, scale, generator=generator
        )
        redo = redo[flat[redo].abs() > bound]
    return out


def glorot_uniform_(tensor: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Keras' default Dense/Conv kernel init, used for the unconstrained layers."""
    fan_in, fan_out = fans(tensor.shape)
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    with torch.no_grad():
        return tensor.uniform_(-limit, limit, generator=generator)


def largest_remainder_counts(proportions: Sequence[float], n: int) -> tuple[int, int, int]:
    """[n0, n_neg, n_pos] summing to n, each round(p * n) with the remainder given to the largest
    fractional parts (ties go to the earlier class), so counts are as close to p * n as possible."""
    raw = [p * n for p in proportions]
    counts = [math.floor(r) for r in raw]
    short = n - sum(counts)
    order = sorted(range(3), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in order[:short]:
        counts[i] += 1
    return tuple(counts)  # type: ignore[return-value]


def sample_signs(
    shape: Sequence[int] | int,
    proportions: Sequence[float],
    generator: torch.Generator,
    sampling: str = "exact",
) -> torch.Tensor:
    """An int8 target pattern with values in {0, -1, +1}.

    'iid': each weight independently, so counts vary around p * n. 'exact': exactly
    `largest_remainder_counts` of each sign, uniformly over all such arrangements. It starts from
    the iid draw and moves the O(sqrt(n)) surplus of a class to the short one, choosing the moved
    weights uniformly at random: first zero vs non-zero, then negative vs positive among the
    non-zero. Every step is exchangeable, so the result is uniform given its counts, without a
    full random permutation (which is sequential and three times slower).
    """
    if sampling not in SAMPLING_MODES:
        raise ModelError(f"unknown sampling {sampling!r}; use one of {list(SAMPLING_MODES)}")
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    n = math.prod(shape)
    p0, p_neg = float(proportions[0]), float(proportions[1])
    u = torch.rand(n, generator=generator, dtype=torch.float64).numpy()
    zero = u < p0
    neg = (u >= p0) & (u < p0 + p_neg)
    if sampling == "exact":
        n0, n_neg, _ = largest_remainder_counts(proportions, n)
        surplus = int(np.count_nonzero(zero)) - n0
        if surplus > 0:  # some zeros become non-zero, with a fresh sign draw
            moved = _choose(np.flatnonzero(zero), surplus, generator)
            zero[moved] = False
            fresh = torch.rand(len(moved), generator=generator, dtype=torch.float64).numpy()
            neg[moved] = fresh < p_neg / max(1.0 - p0, 1e-300)
        elif surplus < 0:
            moved = _choose(np.flatnonzero(~zero), -surplus, generator)
            zero[moved] = True
            neg[moved] = False
        surplus = int(np.count_nonzero(neg)) - n_neg
        if surplus > 0:
            neg[_choose(np.flatnonzero(neg), surplus, generator)] = False
        elif surplus < 0:
            neg[_choose(np.flatnonzero(~zero & ~neg), -surplus, generator)] = True
    pattern = (~zero).astype(np.int8)
    pattern -= 2 * neg.astype(np.int8)
    return torch.from_numpy(pattern).view(shape)


def _choose(index: np.ndarray, k: int, generator: torch.Generator) -> np.ndarray:
    """k distinct entries of `index`, uniformly: sequential draws with repeats skipped."""
    picks = np.empty(0, dtype=np.int64)
    while len(picks) < k:
        draws = torch.randint(len(index), (2 * (k - len(picks)) + 16,), generator=generator).numpy()
        both = np.concatenate([picks, draws])
        _, first = np.unique(both, return_index=True)
        picks = both[np.sort(first)][:k]  # first occurrences, in draw order
    return index[picks]


def derive_seed(seed: int, *parts: str) -> int:
    """A 63-bit seed for one purpose and layer, stable across runs, processes and platforms."""
    digest = hashlib.sha256("/".join([str(int(seed)), *parts]).encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def generator_for(seed: int, *parts: str) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, *parts))


def signed_glorot(targets: torch.Tensor, seed: int, layer: str) -> torch.Tensor:
    """Glorot magnitudes carrying the target's signs: |w| * T (zero where T is zero)."""
    magnitudes = glorot_normal(targets.shape, generator_for(seed, "magnitudes", layer))
    return magnitudes.abs_().mul_(targets.to(torch.float32))


# -- layer mapping ---------------------------------------------------------------------------


def map_layers(
    dist: Distribution,
    targets: Sequence[tuple[str, tuple[int, ...]]],
    mapping: Mapping[str, str] | None = None,
) -> list[tuple[str, LayerDistribution]]:
    """Pair each target layer with a distribution layer.

    An explicit `mapping` (target layer -> distribution layer) wins and may cover a subset;
    otherwise by name when every target layer has a same-named distribution layer, else by order
    when the counts agree; anything else is an error that lists both sides.
    """
    target_names = [name for name, _ in targets]
    if mapping:
        pairs = []
        for target, source in mapping.items():
            if target not in target_names:
                raise ModelError(
                    f"--map: target layer {target!r} is not in the model; its layers are "
                    f"{target_names}"
                )
            try:
                pairs.append((target, dist[source]))
            except KeyError:
                raise ModelError(
                    f"--map: distribution has no layer {source!r}; its layers are {dist.names}"
                ) from None
        order = {name: i for i, name in enumerate(target_names)}
        return sorted(pairs, key=lambda p: order[p[0]])
    by_name = {layer.name: layer for layer in dist.layers}
    if all(name in by_name for name in target_names):
        return [(name, by_name[name]) for name in target_names]
    if len(dist.layers) == len(target_names):
        return list(zip(target_names, dist.layers, strict=True))
    raise ModelError(
        f"the distribution has {len(dist.layers)} layers {dist.names} but the model has "
        f"{len(target_names)} constrained layers {_abbrev(target_names)}; the names do not match "
        "either; pass an explicit mapping (--map TARGET=LAYER,...) or use --constrain to pick "
        "layers"
    )


def _abbrev(names: Sequence[str], limit: int = 12) -> str:
    shown = list(names[:limit])
    return str(shown)[:-1] + (f", ... ({len(names)} in all)]" if len(names) > limit else "]")


# -- materialization -------------------------------------------------------------------------


@dataclass
class Materialized:
    """Initial kernels and their int8 sign targets, keyed by layer name (parameter minus
    .weight)."""

    weights: dict[str, torch.Tensor]
    targets: dict[str, torch.Tensor]
    mapping: dict[str, str] = field(default_factory=dict)  # target layer -> distribution layer
    info: dict = field(default_factory=dict)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """`{layer}.weight` tensors, to load with `model.load_state_dict(sd, strict=False)`."""
        return {f"{name}.weight": w for name, w in self.weights.items()}

    def apply_(self, model: nn.Module) -> nn.Module:
        """Copy the kernels into `model` in place."""
        modules = dict(model.named_modules())
        with torch.no_grad():
            for name, w in self.weights.items():
                param = modules[name].weight
                if tuple(param.shape) != tuple(w.shape):
                    raise ModelError(
                        f"layer {name!r}: model kernel {tuple(param.shape)} but materialized "
                        f"{tuple(w.shape)}"
                    )
                param.copy_(w.to(param.device, param.dtype))
        return model

    def save(self, path: str | os.PathLike) -> Path:
        """safetensors with `{layer}.weight` (float32) and `{layer}.polarity` (int8) tensors."""
        from safetensors.torch import save

        check_output_path(path)
        tensors = {
            **self.state_dict(),
            **{f"{n}.polarity": t.contiguous() for n, t in self.targets.items()},
        }
        meta = {
            "polarpack": json.dumps(
                {**self.info, "mapping": self.mapping}, sort_keys=True, separators=(",", ":")
            )
        }
        return atomic_write_bytes(path, save(tensors, metadata=meta))


def sample_channel_signs(
    shape: Sequence[int], channel_counts: Sequence[Sequence[int]], generator: torch.Generator
) -> torch.Tensor:
    """An int8 pattern whose output channel c holds exactly channel_counts[c] = [n0, n_neg, n_pos],
    uniformly over such arrangements: each row ranks its positions by uniform keys, and the ranks
    below n0 become zero, the next n_neg negative, the rest positive."""
    counts = torch.tensor(channel_counts, dtype=torch.int64)
    rows, per_row = counts.shape[0], math.prod(shape[1:])
    order = torch.rand(rows, per_row, generator=generator).argsort(dim=1)
    rank = torch.arange(per_row).expand(rows, -1)
    by_rank = torch.where(
        rank < counts[:, :1], 0, torch.where(rank < counts[:, :2].sum(1, keepdim=True), -1, 1)
    )
    return (
        torch.empty(rows, per_row, dtype=torch.int8)
        .scatter_(1, order, by_rank.to(torch.int8))
        .view(tuple(shape))
    )


def _check_fits(
    dist: Distribution, target: str, layer: LayerDistribution, shape: tuple[int, ...]
) -> None:
    """Channel, pattern and scaled distributions carry the shape they were extracted from; only
    that fits."""
    if dist.granularity == "layer":
        return
    if dist.granularity == "channel":
        fits = layer.shape is not None and (layer.shape[0], math.prod(layer.shape[1:])) == (
            shape[0],
            math.prod(shape[1:]),
        )
    else:
        fits = layer.shape == shape
    if not fits:
        raise ModelError(
            f"layer {target!r}: the distribution's layer {layer.name!r} has shape "
            f"{list(layer.shape or [])} but the model's kernel is {list(shape)}; "
            f"{dist.granularity} distributions fit only the architecture they were extracted from "
            "(use a layer-granularity .polar for another model)"
        )


def materialize(
    dist: Distribution,
    model: nn.Module | str,
    *,
    seed: int,
    sampling: str = "exact",
    mapping: Mapping[str, str] | None = None,
    scope: str = "conv",
    geometry: str = "small",
    num_classes: int = 10,
    in_channels: int = 3,
) -> Materialized:
    """Sign targets from `dist` and signed Glorot kernels for `model`'s constrained layers.

    Layer granularity draws a random pattern with each layer's proportions (`sampling`); channel
    granularity gives every output channel its exact counts; pattern granularity gives the exact
    signs (Freeze IN-Polarity without the float checkpoint). `model` is a module or a model name.
    """
    if sampling not in SAMPLING_MODES:
        raise ModelError(f"unknown sampling {sampling!r}; use one of {list(SAMPLING_MODES)}")
    module = (
        model
        if isinstance(model, nn.Module)
        else build_model(model, geometry=geometry, num_classes=num_classes, in_channels=in_channels)
    )
    layers = [(name, tuple(m.weight.shape)) for name, m in constrainable_layers(module, scope)]
    shapes = dict(layers)
    pairs = map_layers(dist, layers, mapping)
    for target, layer in pairs:
        _check_fits(dist, target, layer, shapes[target])

    def draw(pair: tuple[str, LayerDistribution]) -> tuple[torch.Tensor, torch.Tensor]:
        target, layer = pair
        generator = generator_for(seed, "signs", target)
        if dist.granularity == "scaled":  # the 1-bit checkpoint: signs times channel scales
            weights = layer.scaled_weights()
            return torch.sign(weights).to(torch.int8), weights
        if dist.granularity == "pattern":
            pattern = layer.signs()
        elif dist.granularity == "channel":
            pattern = sample_channel_signs(shapes[target], layer.channel_counts, generator)
        else:
            pattern = sample_signs(shapes[target], layer.proportions, generator, sampling)
        return pattern, signed_glorot(pattern, seed, target)

    # Layers draw from their own generators, so they can run in parallel threads (torch and
    # numpy release the GIL) and still give the same bits in any order.
    with ThreadPoolExecutor(max_workers=max(1, min(len(pairs), torch.get_num_threads()))) as pool:
        drawn = list(pool.map(draw, pairs))
    targets = {target: pattern for (target, _), (pattern, _) in zip(pairs, drawn, strict=True)}
    weights = {target: w for (target, _), (_, w) in zip(pairs, drawn, strict=True)}
    info = {
        "seed": int(seed),
        "sampling": sampling,
        "granularity": dist.granularity,
        "distribution": dict(dist.source),
        "model": model if isinstance(model, str) else type(model).__name__,
        "torch": torch.__version__,
    }
    return Materialized(weights, targets, {target: layer.name for target, layer in pairs}, info)


def apply_distribution(
    module: nn.Module, dist: Distribution, *, seed: int, **kwargs
) -> Materialized:
    """`materialize` for an existing module, applied in place; returns the targets as well."""
    result = materialize(dist, module, seed=seed, **kwargs)
    result.apply_(module)
    return result


def materialize_pattern(targets: Mapping[str, torch.Tensor], *, seed: int) -> Materialized:
    """Glorot magnitudes on a given pattern (Algorithm 2); the same magnitudes `materialize`
    draws for the same seed and layer, so Freeze IN and Freeze SPIN differ only in the pattern."""
    weights = {name: signed_glorot(t.to(torch.int8), seed, name) for name, t in targets.items()}
    return Materialized(
        weights,
        {n: t.to(torch.int8) for n, t in targets.items()},
        {n: n for n in targets},
        {"seed": int(seed)},
    )
