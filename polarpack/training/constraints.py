"""The sign constraint of the paper's Algorithms 1-3, and Algorithm 3's per-epoch change.

After every optimizer step, a constrained weight whose sign differs from its target T is reset to
T * U(0, eps). Zero targets have two readings (`zeros`):

* ``pin`` (Algorithm 1 as written): sign(w) != T resets, so a T = 0 weight is held at exactly 0.
  Its reset value is always 0, so instead of resetting it after each step its gradient is masked
  and it never moves; only wrong-signed (or zero) weights under non-zero targets draw U(0, eps).
* ``free`` (the prior-work Keras code): only w * T < 0 resets; T = 0 weights train freely.

One torch implementation serves every device: a sign test over each layer, ``nonzero`` for the few
violators, and their reset values from a seeded `torch.Generator`, so runs are reproducible and
resume exactly. The float copy of T used by the test holds NaN at pinned zeros, and NaN never
compares as a violation.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from polarpack.errors import ConfigError

ZERO_MODES = ("pin", "free")
# flip: the chosen weights and their targets change sign (the paper's W = -W, the pattern moves).
# permute: the signs of the chosen weights are shuffled among them (proportions stay exact).
# reset: only the chosen weights flip; their targets stay, so the next projection resets them to
#   T * U(0, eps): the pattern never changes, the chosen weights restart from near zero.
FLUID_MODES = ("flip", "permute", "reset")


def _flat(x: torch.Tensor) -> torch.Tensor:
    """A 1-D view of a dense tensor in memory order (contiguous and channels_last alike)."""
    return x.as_strided((x.numel(),), (1,), x.storage_offset())


class _Layer:
    def __init__(self, name: str, weight: nn.Parameter, target: torch.Tensor, pin: bool):
        self.name, self.weight, self.target = name, weight, target
        self.nonzero = _flat(target).nonzero().squeeze(1)  # fixed: fluid changes never move zeros
        self.pin = pin
        self.refresh()

    def refresh(self) -> None:
        """The float signs the test multiplies by; NaN at pinned zeros."""
        sign = self.target.to(self.weight.dtype)
        self.sign = sign.masked_fill_(self.target == 0, float("nan")) if self.pin else sign

    def violations(self) -> torch.Tensor:
        product = self.weight.detach() * self.sign
        return product <= 0 if self.pin else product < 0


class SignConstraint:
    """Holds the int8 targets of the constrained layers and keeps their weights on them.

    Create it after the model has its final device and memory format: the targets copy the
    weights' layout, so the projection works on flat views of both.
    """

    def __init__(
        self,
        model: nn.Module,
        targets: Mapping[str, torch.Tensor],
        *,
        eps: float = 1e-3,
        zeros: str = "pin",
    ):
        if zeros not in ZERO_MODES:
            raise ConfigError(f"unknown zeros mode {zeros!r}; use one of {list(ZERO_MODES)}")
        if not eps > 0:
            raise ConfigError(f"eps must be > 0 (got {eps})")
        modules = dict(model.named_modules())
        self.layers: list[_Layer] = []
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        for name, target in targets.items():
            weight = getattr(modules.get(name), "weight", None)
            if weight is None:
                raise ConfigError(f"constraint target {name!r} is not a layer of the model")
            if tuple(target.shape) != tuple(weight.shape):
                raise ConfigError(
                    f"layer {name!r}: target shape {tuple(target.shape)} != weight "
                    f"{tuple(weight.shape)}"
                )
            if not (
                weight.is_contiguous() or weight.is_contiguous(memory_format=torch.channels_last)
            ):
                raise ConfigError(f"layer {name!r}: the weight must be contiguous or channels_last")
            t = torch.empty_like(weight, dtype=torch.int8).copy_(target)  # the weight's layout
            self.layers.append(_Layer(name, weight, t, zeros == "pin"))
            if zeros == "pin":
                keep = (t != 0).to(weight.dtype)
                with torch.no_grad():
                    weight.mul_(keep)
                self._hooks.append(weight.register_hook(lambda grad, keep=keep: grad * keep))
        self.eps, self.zeros = float(eps), zeros
        self.resets = 0  # weights reset since the last `take_reset_count`

    @torch.no_grad()
    def project_(self, generator: torch.Generator) -> None:
        """Reset every wrong-signed weight to T * U(0, eps), in place; `generator` (on the
        weights' device) draws the reset values."""
        for layer in self.layers:
            if layer.weight.stride() != layer.target.stride():
                raise ConfigError(
                    f"layer {layer.name!r}: the weight changed memory format after the constraint "
                    "was made"
                )
            idx = _flat(layer.violations()).nonzero().squeeze(1)
            if idx.numel():
                u = torch.rand(
                    idx.numel(),
                    generator=generator,
                    device=idx.device,
                    dtype=layer.weight.dtype,
                )
                _flat(layer.weight.data)[idx] = u.mul_(self.eps).mul_(_flat(layer.sign)[idx])
                self.resets += idx.numel()

    def release(self) -> None:
        """Stop masking the pinned weights' gradients: the trained model goes back to its user
        free to train on, as any model would."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    def count_violations(self) -> int:
        with torch.no_grad():
            return sum(int(layer.violations().sum()) for layer in self.layers)

    def take_reset_count(self) -> int:
        n, self.resets = self.resets, 0
        return n

    @torch.no_grad()
    def fluid_step_(self, fraction: float, mode: str, generator: torch.Generator) -> int:
        """Algorithm 3's per-epoch change to `fraction` of each layer's non-zero targets, chosen at
        random by the CPU `generator` (see FLUID_MODES). Returns how many weights changed sign."""
        if mode not in FLUID_MODES:
            raise ConfigError(f"unknown fluid mode {mode!r}; use one of {list(FLUID_MODES)}")
        if not 0.0 <= fraction <= 1.0:
            raise ConfigError(f"fluid fraction must be in [0, 1] (got {fraction})")
        changed = 0
        for layer in self.layers:
            k = round(fraction * layer.nonzero.numel())
            if k == 0:
                continue
            pick = torch.randperm(layer.nonzero.numel(), generator=generator)[:k]
            chosen = layer.nonzero[pick.to(layer.nonzero.device)]
            w, t = _flat(layer.weight.data), _flat(layer.target)
            old = t[chosen]
            new = (
                old[torch.randperm(k, generator=generator).to(old.device)]
                if mode == "permute"
                else -old
            )
            w[chosen] = w[chosen].abs() * new.to(w.dtype)
            if mode != "reset":
                t[chosen] = new
            changed += int((new != old).sum())
            layer.refresh()
        return changed

    def held_proportions(self) -> dict[str, list[float]]:
        """[p0, p_neg, p_pos] of the weights as they are now, per constrained layer."""
        out = {}
        with torch.no_grad():
            for layer in self.layers:
                w, n = layer.weight, layer.weight.numel()
                neg, pos = int((w < 0).sum()), int((w > 0).sum())
                out[layer.name] = [(n - neg - pos) / n, neg / n, pos / n]
        return out

    def targets(self) -> dict[str, torch.Tensor]:
        return {layer.name: layer.target for layer in self.layers}

    def load_targets_(self, targets: Mapping[str, torch.Tensor]) -> None:
        """Restore (fluid-changed) targets from a checkpoint."""
        for layer in self.layers:
            layer.target.copy_(targets[layer.name])
            layer.refresh()
