"""The paper networks' local response normalisation: polarpack's LRN must compute what
`torch.nn.LocalResponseNorm` computes (forward and input gradient, fp32 and bf16 autocast, both
memory formats, the zero-padded window at the first and last channels), keep no state, and leave
the networks without LRN untouched."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from polarpack.models import LocalResponseNorm, build_model, local_response_norm

PAPER = dict(size=5, alpha=1e-4, beta=0.75, k=2.0)
# alpha 0.5 makes the window sum dominate k, so a wrong window or edge shows in every output.
STRONG = dict(size=5, alpha=0.5, beta=0.75, k=2.0)


def _input(shape, channels_last: bool, seed: int, dtype=torch.float32) -> torch.Tensor:
    """Post-ReLU-like activations (zeros included) large enough to make the window matter."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g) * 4).relu().to(dtype)
    return x.contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format
    )


def _forward_and_grad(lrn: nn.Module, x: torch.Tensor, grad: torch.Tensor, bf16: bool = False):
    x = x.detach().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        y = lrn(x)
    (dx,) = torch.autograd.grad(y, x, grad.to(y.dtype))
    return y, dx


def _close(actual: torch.Tensor, expected: torch.Tensor, rel: float, scale=None) -> None:
    """Elementwise within `rel` of `scale` (default: the largest expected magnitude)."""
    expected = expected.detach().float()
    scale = expected.abs().max().clamp_min(1e-12) if scale is None else scale
    error = (actual.detach().float() - expected).abs().max()
    assert error <= rel * scale, f"max error {error:.3g} > {rel} x {scale:.3g}"


def _grad_close(dx, dx_ref, grad, params, rel: float) -> None:
    """dx = g * d^-beta - (a term of at most 2 beta times that size): the two can cancel, so the
    error is measured against the terms' size, |g| k^-beta, not against the difference."""
    terms = grad.float().abs().max() * params["k"] ** -params["beta"]
    _close(dx, dx_ref, rel, max(terms, dx_ref.detach().float().abs().max()))


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    batch=st.integers(1, 3),
    channels=st.integers(1, 40),
    height=st.integers(1, 6),
    width=st.integers(1, 6),
    size=st.sampled_from([5, 4, 1]),
    strong=st.booleans(),
    channels_last=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_fp32_matches_torch(batch, channels, height, width, size, strong, channels_last, seed):
    params = dict(STRONG if strong else PAPER, size=size)
    x = _input((batch, channels, height, width), channels_last, seed)
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed + 1))
    y, dx = _forward_and_grad(LocalResponseNorm(**params), x, grad)
    y_ref, dx_ref = _forward_and_grad(nn.LocalResponseNorm(**params), x, grad)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    _grad_close(dx, dx_ref, grad, params, 1e-5)
    expected_format = torch.channels_last if channels_last else torch.contiguous_format
    assert y.is_contiguous(memory_format=expected_format)
    with torch.no_grad():  # evaluation takes a path of its own
        evaluated = LocalResponseNorm(**params)(x)
    torch.testing.assert_close(evaluated, y_ref, rtol=1e-5, atol=1e-6)
    assert evaluated.is_contiguous(memory_format=expected_format)


@pytest.mark.parametrize("channels", [5, 6, 7])
@pytest.mark.parametrize("size", [5, 4])
def test_window_edges_match_torch(channels, size):
    """Which input channel feeds which output channel (the Jacobian's pattern), and by how much,
    is torch's exactly: at the first and last channels the window is cut, not wrapped."""
    params = dict(STRONG, size=size)
    x = torch.linspace(1.0, 3.0, channels, dtype=torch.float64).view(1, channels, 1, 1)
    ours = torch.autograd.functional.jacobian(lambda t: local_response_norm(t, **params), x)
    torchs = torch.autograd.functional.jacobian(
        lambda t: nn.functional.local_response_norm(t, **params), x
    )
    ours, torchs = ours.view(channels, channels), torchs.view(channels, channels)
    assert torch.equal(ours != 0, torchs != 0)
    # the windows of the first and last channels are cut (zero padding), not wrapped
    assert (torchs[0] != 0).sum() == (size - 1) // 2 + 1 and (
        torchs[-1] != 0
    ).sum() == size // 2 + 1
    torch.testing.assert_close(ours, torchs, rtol=1e-12, atol=1e-14)


def test_gradient_is_the_derivative():
    x = _input((2, 7, 3, 4), True, 0, torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: local_response_norm(t, **STRONG), (x,))


@pytest.mark.parametrize("channels_last", [True, False], ids=["channels_last", "contiguous"])
@pytest.mark.parametrize("channels", [96, 255])
@pytest.mark.parametrize("params", [PAPER, STRONG], ids=["paper", "strong"])
def test_bf16_autocast_matches_torch(channels_last, channels, params):
    """In training the LRN sees a bf16 conv output; ours computes in bf16, torch's in fp32 (autocast
    runs its average pool in fp32): they agree to bf16 precision."""
    x = _input((2, channels, 9, 8), channels_last, channels, torch.bfloat16)
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    y, dx = _forward_and_grad(LocalResponseNorm(**params), x, grad, bf16=True)
    y_ref, dx_ref = _forward_and_grad(nn.LocalResponseNorm(**params), x, grad, bf16=True)
    assert y.dtype == dx.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), y_ref.float(), rtol=2e-2, atol=1e-2)
    _grad_close(dx, dx_ref, grad, params, 2e-2)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        evaluated = LocalResponseNorm(**params)(x)
    torch.testing.assert_close(evaluated.float(), y_ref.float(), rtol=2e-2, atol=1e-2)


def test_fp32_input_under_autocast_stays_fp32():
    x = _input((2, 6, 4, 4), True, 3)
    grad = torch.randn(x.shape)
    y, dx = _forward_and_grad(LocalResponseNorm(**STRONG), x, grad, bf16=True)
    y_ref, dx_ref = _forward_and_grad(nn.LocalResponseNorm(**STRONG), x, grad)
    assert y.dtype == dx.dtype == torch.float32
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    _grad_close(dx, dx_ref, grad, STRONG, 1e-5)


@pytest.mark.parametrize("shape", [(2, 6, 9), (2, 6, 3, 4, 5), (0, 6, 3, 3)])
def test_other_shapes_use_torchs_kernel(shape):
    """(N, C, L), (N, C, D, H, W) and empty inputs take torch's own path: identical results."""
    x = torch.randn(shape).relu() * 4
    assert torch.equal(
        local_response_norm(x, **STRONG), nn.functional.local_response_norm(x, **STRONG)
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_cuda_matches_torch(bf16):
    x = _input((2, 96, 11, 11), True, 0).cuda()
    grad = torch.randn(x.shape, device="cuda")
    x = x.detach().requires_grad_()
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        y = LocalResponseNorm(**PAPER)(x)
        y_ref = nn.LocalResponseNorm(**PAPER)(x)
    assert torch.equal(y, y_ref)
    (dx,) = torch.autograd.grad(y, x, grad.to(y.dtype))
    assert torch.isfinite(dx).all()


def test_no_parameters_and_no_state():
    lrn = LocalResponseNorm(**PAPER)
    assert list(lrn.parameters()) == [] and list(lrn.buffers()) == [] and lrn.state_dict() == {}
    layers = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
    expected = {f"{layer}.{p}" for layer in layers for p in ("weight", "bias")}
    for geometry in ("imagenet", "small"):
        assert set(build_model("zfnet", geometry=geometry).state_dict()) == expected


def test_imagenet_zfnet_matches_torchs_lrn():
    """The 224-px ZFNet with polarpack's LRN against the same weights with torch's LRN."""
    torch.manual_seed(0)
    ours = build_model("zfnet", geometry="imagenet").eval()
    reference = build_model("zfnet", geometry="imagenet").eval()
    reference.load_state_dict(ours.state_dict())
    reference.lrn = nn.LocalResponseNorm(**PAPER)
    x = torch.randn(1, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    out, out_ref = ours(x), reference(x)
    torch.testing.assert_close(out, out_ref, rtol=1e-4, atol=1e-5)
    out.square().sum().backward()
    out_ref.square().sum().backward()
    _close(ours.conv1.weight.grad, reference.conv1.weight.grad, 1e-4)


class _Forbidden(nn.Module):
    def forward(self, x):
        raise AssertionError("this network must not apply LRN")


@pytest.mark.parametrize(
    ("name", "geometry", "size"),
    [("zfnet", "small", 32), ("alexnet", "small", 32), ("alexnet", "imagenet", 227)],
)
def test_networks_without_lrn_never_call_it(name, geometry, size):
    """The small ZFNet and AlexNet have no LRN, so the new LRN cannot change what they compute."""
    model = build_model(name, geometry=geometry)
    model.lrn = _Forbidden()
    assert model(torch.randn(1, 3, size, size)).shape == (1, 10)
