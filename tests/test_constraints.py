"""The sign projection and Algorithm 3's per-epoch change, checked against a plain reference."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from polarpack.errors import ConfigError
from polarpack.training.constraints import SignConstraint


def reference_project(
    w: torch.Tensor, t: torch.Tensor, zeros: str, eps: float, generator: torch.Generator
) -> tuple[torch.Tensor, int]:
    """The rule, one weight at a time: sign(w) != T (pin) or w * T < 0 (free) resets w to T * U(0,
    eps), the U drawn in memory order; pinned zero targets reset to 0 and draw nothing."""
    w, t = w.reshape(-1).tolist(), t.reshape(-1).tolist()
    violators = [
        i
        for i, (a, b) in enumerate(zip(w, t, strict=True))
        if (zeros == "pin" and b != 0 and (a > 0) - (a < 0) != b) or (zeros == "free" and a * b < 0)
    ]
    u = torch.rand(len(violators), generator=generator) * eps
    for j, i in enumerate(violators):
        w[i] = float(t[i] * u[j])
    return torch.tensor(w, dtype=torch.float32), len(violators)


def _model(weight: torch.Tensor, channels_last: bool = False) -> nn.Module:
    conv = nn.Conv2d(weight.shape[1], weight.shape[0], weight.shape[2:], bias=False)
    with torch.no_grad():
        conv.weight.copy_(weight)
    return conv.to(memory_format=torch.channels_last) if channels_last else conv


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31), st.sampled_from(["pin", "free"]), st.floats(1e-6, 1.0), st.booleans())
def test_projection_equals_the_reference(seed, zeros, eps, channels_last):
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(-1, 2, (6, 5, 3, 3), generator=g).to(torch.int8)
    w0 = torch.randn(6, 5, 3, 3, generator=g)
    w0.view(-1)[:4] = 0.0  # exact zeros under non-zero targets violate in pin mode
    model = _model(w0, channels_last)
    c = SignConstraint(model, {"": t}, eps=eps, zeros=zeros)
    start = model.weight.detach().clone()  # pin: zero targets were zeroed at construction
    if zeros == "pin":
        assert bool((start[t == 0] == 0).all())
    c.project_(torch.Generator().manual_seed(seed))
    memory_order = (0, 2, 3, 1) if channels_last else (0, 1, 2, 3)
    want, resets = reference_project(
        start.permute(memory_order),
        t.permute(memory_order),
        zeros,
        eps,
        torch.Generator().manual_seed(seed),
    )
    assert torch.equal(model.weight.detach().permute(memory_order).reshape(-1), want)
    assert c.count_violations() == 0 and c.take_reset_count() == resets


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_pinned_zeros_never_move_under_an_optimizer(optimizer):
    g = torch.Generator().manual_seed(0)
    t = torch.randint(-1, 2, (8, 4, 3, 3), generator=g).to(torch.int8)
    model = _model(torch.randn(8, 4, 3, 3, generator=g) * t)
    c = SignConstraint(model, {"": t}, zeros="pin")
    opt = (
        torch.optim.Adam(model.parameters(), 0.1)
        if optimizer == "adam"
        else torch.optim.SGD(model.parameters(), 0.1, 0.9)
    )
    for _ in range(5):
        opt.zero_grad()
        model(torch.randn(2, 4, 6, 6, generator=g)).square().sum().backward()
        opt.step()
        c.project_(g)
        assert bool((model.weight[t == 0] == 0).all())
        assert torch.equal(torch.sign(model.weight.detach()), t.float())


def _fluid(mode: str, fraction: float):
    g = torch.Generator().manual_seed(0)
    t = torch.randint(-1, 2, (40, 10, 3, 3), generator=g).to(torch.int8)
    w0 = torch.rand(40, 10, 3, 3, generator=g).add_(0.01) * t
    model = _model(w0)
    c = SignConstraint(model, {"": t})
    changed = c.fluid_step_(fraction, mode, torch.Generator().manual_seed(1))
    return t, w0, model.weight.detach(), c, changed


@pytest.mark.parametrize("fraction", [0.5, 0.1, 0.02])
def test_fluid_flip_changes_weights_and_targets(fraction):
    t, w0, w, c, changed = _fluid("flip", fraction)
    assert changed == round(fraction * int((t != 0).sum()))
    new_t = c.targets()[""]
    assert int((new_t != t).sum()) == changed and torch.equal(new_t == 0, t == 0)
    assert torch.equal(torch.sign(w).to(torch.int8), new_t) and torch.allclose(w.abs(), w0.abs())
    assert c.count_violations() == 0


def test_fluid_permute_keeps_each_layers_proportions():
    t, _, w, c, changed = _fluid("permute", 0.5)
    new_t = c.targets()[""]
    assert [int((new_t == v).sum()) for v in (0, -1, 1)] == [
        int((t == v).sum()) for v in (0, -1, 1)
    ]
    assert 0 < changed < int((t != 0).sum()) and torch.equal(torch.sign(w).to(torch.int8), new_t)


def test_fluid_reset_flips_weights_only_and_the_projection_resets_them():
    t, w0, w, c, changed = _fluid("reset", 0.1)
    assert torch.equal(c.targets()[""], t)  # the pattern stays
    flipped = torch.sign(w).to(torch.int8) != t
    assert int(flipped.sum()) == changed == c.count_violations()
    c.project_(torch.Generator().manual_seed(2))
    assert c.count_violations() == 0
    w = c.layers[0].weight.detach()
    assert bool((w[flipped].abs() <= 1e-3).all()) and torch.equal(w[~flipped], w0[~flipped])


@pytest.mark.parametrize(
    "kwargs, target, message",
    [
        ({"zeros": "maybe"}, None, "zeros mode"),
        ({"eps": 0}, None, "eps"),
        ({}, torch.ones(3, 2, 1, 1, dtype=torch.int8), "target shape"),
    ],
)
def test_bad_options(kwargs, target, message):
    model = _model(torch.ones(2, 2, 1, 1))
    with pytest.raises(ConfigError, match=message):
        SignConstraint(
            model,
            {"": torch.ones(2, 2, 1, 1, dtype=torch.int8) if target is None else target},
            **kwargs,
        )


def test_unknown_fluid_mode_and_changed_memory_format_are_errors():
    model = _model(torch.ones(2, 2, 3, 3))
    c = SignConstraint(model, {"": torch.ones(2, 2, 3, 3, dtype=torch.int8)})
    with pytest.raises(ConfigError, match="fluid mode"):
        c.fluid_step_(0.5, "swap", torch.Generator())
    model.to(memory_format=torch.channels_last)
    with pytest.raises(ConfigError, match="memory format"):
        c.project_(torch.Generator())
