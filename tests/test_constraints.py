"""The sign projection and the fluid flips, checked against their definitions."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from polarpack.constraints import SignConstraint
from polarpack.errors import ConfigError


def _model_with(weight: torch.Tensor) -> nn.Module:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        layer.weight.copy_(weight)
    return nn.Sequential(layer)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**31), st.sampled_from(["pin", "free"]), st.floats(1e-6, 1.0))
def test_projection_matches_the_rule(seed, zeros, eps):
    g = torch.Generator().manual_seed(seed)
    w0 = torch.randn(7, 9, generator=g)
    w0[0, :3] = 0.0  # exact zeros take the pin branch
    t = torch.randint(-1, 2, (7, 9), generator=g, dtype=torch.int64).to(torch.int8)
    model = _model_with(w0)
    c = SignConstraint(model, {"0": t}, eps=eps, zeros=zeros, seed=seed)
    c.project_()
    w = model[0].weight.detach()
    tf = t.float()
    if zeros == "pin":
        bad = torch.sign(w0) != tf
        assert torch.equal(torch.sign(w), tf)  # every weight now has its target's sign
    else:
        bad = (w0 * tf) < 0
        assert not bool(((w * tf) < 0).any())
        assert torch.equal(w[t == 0], w0[t == 0])  # zero targets untouched
    assert torch.equal(w[~bad], w0[~bad])  # weights that obeyed are untouched
    reset = w[bad].abs()
    assert bool((reset <= eps).all())
    assert c.take_reset_count() == int(bad.sum())


def test_pin_holds_zero_targets_at_zero():
    w0 = torch.tensor([[0.5, -0.5, 0.2]])
    t = torch.tensor([[0, 0, 1]], dtype=torch.int8)
    model = _model_with(w0)
    SignConstraint(model, {"0": t}, zeros="pin").project_()
    assert model[0].weight.detach().tolist()[0][:2] == [0.0, 0.0]


def test_fluid_flip_fraction_and_targets_follow():
    g = torch.Generator().manual_seed(0)
    t = torch.randint(-1, 2, (100, 100), generator=g).to(torch.int8)
    w0 = torch.rand(100, 100, generator=g).add_(0.01) * t
    model = _model_with(w0)
    c = SignConstraint(model, {"0": t}, seed=1)
    nonzero = int((t != 0).sum())
    changed = c.fluid_step_(0.5, "flip")
    assert changed == round(0.5 * nonzero)
    new_t = c.targets()["0"]
    assert int((new_t != t).sum()) == changed
    assert torch.equal(new_t == 0, t == 0)  # zeros never move
    w = model[0].weight.detach()
    assert torch.equal(torch.sign(w).to(torch.int8), new_t)  # weights flipped with their targets
    assert torch.allclose(w.abs(), w0.abs())
    assert c.count_violations() == 0


def test_fluid_permute_keeps_proportions_exactly():
    g = torch.Generator().manual_seed(0)
    t = torch.where(torch.rand(200, 50, generator=g) < 0.7, 1, -1).to(torch.int8)
    t[:20] = 0
    model = _model_with(torch.rand(200, 50, generator=g).add_(0.01) * t)
    c = SignConstraint(model, {"0": t}, seed=2)
    before = [int((t == v).sum()) for v in (0, -1, 1)]
    changed = c.fluid_step_(0.5, "permute")
    new_t = c.targets()["0"]
    assert [int((new_t == v).sum()) for v in (0, -1, 1)] == before
    assert 0 < changed < int((t != 0).sum())


def test_bad_options():
    model = _model_with(torch.ones(2, 2))
    t = torch.ones(2, 2, dtype=torch.int8)
    with pytest.raises(ConfigError, match="zeros mode"):
        SignConstraint(model, {"0": t}, zeros="maybe")
    with pytest.raises(ConfigError, match="eps"):
        SignConstraint(model, {"0": t}, eps=0)
    with pytest.raises(ConfigError, match="target shape"):
        SignConstraint(model, {"0": torch.ones(3, 2, dtype=torch.int8)})
    with pytest.raises(ConfigError, match="fluid mode"):
        SignConstraint(model, {"0": t}).fluid_step_(0.5, "swap")
