"""Model builders: the paper's AlexNet and ZFNet in two geometries, any torchvision classifier and,
with timm installed, any timm model (torchvision's name wins where both have one).

Like timm, builders are registered by name (`build_model("zfnet", geometry="small")`); like
torchvision, each carries its metadata (input sizes, conv shapes, provenance) next to it. The
paper networks' LocalResponseNorm is computed as a banded 1x1 convolution (`LocalResponseNorm`),
which makes the 224-px ZFNet affordable on CPUs.

Layer names are the parameter names without `.weight` (`conv1` ... `conv5`, `fc6` ... `fc8`), so
the paper's distributions (`paper:alexnet`, layers conv1-conv5) map onto both networks by name.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from polarpack.errors import ModelError

GEOMETRIES = ("small", "imagenet")
CONSTRAIN_SCOPES = ("conv", "all")  # which kernels follow a sign pattern (constrainable_layers)


@dataclass(frozen=True)
class Geometry:
    """Strides, paddings and pools for one input size; conv weight shapes never change."""

    input_size: int
    strides: tuple[int, ...]
    paddings: tuple[int, ...]
    pools: tuple[bool, ...]
    pool_padding: int
    pool_ceil: bool
    feature_size: int  # spatial size after the last pool
    note: str
    lrn: bool = True  # keep the network's LRN layers (they have no weights)


@dataclass(frozen=True)
class PaperNetSpec:
    """A five-conv, three-FC network from the paper, with its geometries."""

    name: str
    channels: tuple[int, ...]
    kernels: tuple[int, ...]
    lrn_after: tuple[bool, ...]
    geometries: dict[str, Geometry]
    description: str
    fc_width: int = 4096

    def conv_shapes(self, in_channels: int = 3) -> dict[str, tuple[int, int, int, int]]:
        shapes, c_in = {}, in_channels
        for i, (c, k) in enumerate(zip(self.channels, self.kernels, strict=True), start=1):
            shapes[f"conv{i}"] = (c, c_in, k, k)
            c_in = c
        return shapes


# The small geometry keeps every conv weight shape of the imagenet networks (so distributions and
# sign patterns transfer one to one) and only adapts strides, padding and pooling so that a
# 32x32 (CIFAR-10) or 28x28 (Fashion-MNIST) image reaches conv3-conv5 at 2x2, where each 3x3 tap
# still sees data. Both inputs end at 2x2x256 = 1024 features into fc6. This is about 45 M
# multiply-adds per image, so the paper's protocol (20 epochs x 10k images) runs in minutes on 2 CPU
# cores; the imagenet geometry (1.1 G multiply-adds for AlexNet at 227) is for GPUs.
ALEXNET = PaperNetSpec(
    name="alexnet",
    channels=(96, 256, 384, 384, 256),
    kernels=(11, 5, 3, 3, 3),
    lrn_after=(False,) * 5,
    description=(
        "AlexNet as the paper's prior work builds it (Wang et al. 2023): conv 96@11x11/4, 256@5x5, "
        "384@3x3, 384@3x3, 256@3x3, max-pools 3/2, fc 4096-4096-classes, dropout after fc6 and "
        "fc7; no LRN, no groups."
    ),
    geometries={
        "imagenet": Geometry(
            input_size=227,
            strides=(4, 1, 1, 1, 1),
            paddings=(0, 2, 1, 1, 1),
            pools=(True, True, False, False, True),
            pool_padding=0,
            pool_ceil=False,
            feature_size=6,
            note="227x227 input, as the prior-work Keras code",
        ),
        "small": Geometry(
            input_size=32,
            strides=(4, 1, 1, 1, 1),
            paddings=(5, 2, 1, 1, 1),
            pools=(True, True, False, False, False),
            pool_padding=1,
            pool_ceil=False,
            feature_size=2,
            note=(
                "32x32/28x28 input: conv1 stride 4 padding 5 (8x8 or 7x7), pools 3/2 padding 1 "
                "after conv1 and conv2 (4x4, then 2x2), no pool after conv5"
            ),
        ),
    },
)

ZFNET = PaperNetSpec(
    name="zfnet",
    channels=(96, 256, 384, 384, 256),
    kernels=(7, 5, 3, 3, 3),
    lrn_after=(True, True, False, False, False),
    description=(
        "ZFNet (Zeiler & Fergus 2014) as the pytorchcv model zoo defines it: conv 96@7x7/2, "
        "256@5x5/2, 384@3x3, 384@3x3, 256@3x3, LRN after conv1 and conv2, max-pools 3/2 (ceil "
        "mode), fc 4096-4096-classes with dropout after fc6 and fc7."
    ),
    geometries={
        "imagenet": Geometry(
            input_size=224,
            strides=(2, 2, 1, 1, 1),
            paddings=(1, 0, 1, 1, 1),
            pools=(True, True, False, False, True),
            pool_padding=0,
            pool_ceil=True,
            feature_size=6,
            note="224x224 input, 9216 features into fc6",
        ),
        "small": Geometry(
            input_size=32,
            strides=(2, 2, 1, 1, 1),
            paddings=(3, 2, 1, 1, 1),
            pools=(True, True, False, False, False),
            pool_padding=1,
            pool_ceil=False,
            feature_size=2,
            note=(
                "32x32/28x28 input: conv1 stride 2 padding 3 (16x16 or 14x14), pool 3/2 padding 1 "
                "(8x8 or 7x7), conv2 stride 2 padding 2 (4x4), pool (2x2), no pool after conv5; "
                "no LRN (weightless; the 32-px grids ran without it)"
            ),
            lrn=False,
        ),
    },
)

PAPER_NETS = {spec.name: spec for spec in (ALEXNET, ZFNET)}


def _window_weights(
    channels: int, size: int, alpha: float, k: float, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """1x1-convolution weights (C_out, C_in, 1, 1) that sum, times alpha/size, input channels
    c - size//2 ... c + (size-1)//2 into channel c (torch's zero-padded window), that sum back
    along the same windows (the transpose, for the backward), and the bias k."""
    index = torch.arange(channels, device=device)
    windows = []
    for offset in (index[None, :] - index[:, None], index[:, None] - index[None, :]):
        in_window = (offset >= -(size // 2)) & (offset <= (size - 1) // 2)
        windows.append((in_window.to(dtype) * (alpha / size))[:, :, None, None])
    return windows[0], windows[1], torch.full((channels,), k, dtype=dtype, device=device)


class _BandedLRN(torch.autograd.Function):
    """LRN whose channel-window sum is a 1x1 convolution with a banded weight.

    torch computes the window as a 3-D average pool, which is slow on CPUs; a convolution runs on
    oneDNN (AMX in bf16). The rest is memory-bound, so the backward is written out and buffers are
    reused (three activation-sized allocations forward, two backward). With
    d = k + alpha/size * window(x^2) and y = x * d^-beta:
    dx = g * d^-beta - 2 beta x * window^T(g * y / d) * alpha/size.
    Autocast is off inside: the input's dtype is the compute dtype (bf16 after a bf16 conv).
    """

    @staticmethod
    def forward(ctx, x, size, alpha, beta, k):
        with torch.autocast("cpu", enabled=False):
            window, window_t, bias = _window_weights(x.shape[1], size, alpha, k, x.dtype, x.device)
            squares = x * x
            d = F.conv2d(squares, window, bias)
            r = torch.pow(d, -beta, out=squares)  # reuse the buffer: fresh pages cost time
            if not ctx.needs_input_grad[0]:  # evaluation: nothing to save, d's buffer is free
                return torch.mul(x, r, out=d)
            y = x * r
        ctx.save_for_backward(x, y, d, r)
        ctx.window_t, ctx.beta = window_t, beta
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, y, d, r = ctx.saved_tensors
        with torch.autocast("cpu", enabled=False):
            t = torch.mul(grad, y).div_(d)
            spread = F.conv2d(t, ctx.window_t)
            dx = torch.mul(grad, r, out=t).addcmul_(x, spread, value=-2 * ctx.beta)
        return dx, None, None, None, None


def local_response_norm(
    x: torch.Tensor, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0
) -> torch.Tensor:
    """`torch.nn.functional.local_response_norm`, computed as a banded 1x1 convolution for 4-D CPU
    tensors (several times faster there: benchmarks/bench_lrn.py). Other devices and shapes use
    torch's own, exact kernel (on CUDA the convolution could run in TF32)."""
    if x.device.type != "cpu" or x.dim() != 4 or x.numel() == 0:
        return F.local_response_norm(x, size, alpha, beta, k)
    return _BandedLRN.apply(x, size, alpha, beta, k)


class LocalResponseNorm(nn.LocalResponseNorm):
    """Drop-in for `torch.nn.LocalResponseNorm` (no parameters, no state), fast on CPUs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return local_response_norm(x, self.size, self.alpha, self.beta, self.k)


class PaperNet(nn.Module):
    """conv1..conv5 (ReLU, optional LRN and max-pool) then fc6, fc7 (ReLU, dropout) and fc8."""

    def __init__(
        self, spec: PaperNetSpec, geometry: str, num_classes: int, in_channels: int, dropout: float
    ):
        super().__init__()
        geo = spec.geometries[geometry]
        self.spec, self.geometry = spec, geometry
        c_in = in_channels
        for i in range(5):
            conv = nn.Conv2d(
                c_in,
                spec.channels[i],
                spec.kernels[i],
                stride=geo.strides[i],
                padding=geo.paddings[i],
            )
            setattr(self, f"conv{i + 1}", conv)
            c_in = spec.channels[i]
        self.fc6 = nn.Linear(c_in * geo.feature_size**2, spec.fc_width)
        self.fc7 = nn.Linear(spec.fc_width, spec.fc_width)
        self.fc8 = nn.Linear(spec.fc_width, num_classes)
        self.lrn = LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)
        self.pool = nn.MaxPool2d(3, 2, padding=geo.pool_padding, ceil_mode=geo.pool_ceil)
        self.drop = nn.Dropout(dropout)
        self._pools = geo.pools
        self._lrns = spec.lrn_after if geo.lrn else (False,) * 5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, conv in enumerate((self.conv1, self.conv2, self.conv3, self.conv4, self.conv5)):
            x = torch.relu(conv(x))
            if self._lrns[i]:
                x = self.lrn(x)
            if self._pools[i]:
                x = self.pool(x)
        x = torch.flatten(x, 1)
        x = self.drop(torch.relu(self.fc6(x)))
        x = self.drop(torch.relu(self.fc7(x)))
        return self.fc8(x)


def _timm():
    """timm, when installed (`pip install "polarpack[timm]"`), else None."""
    try:
        import timm
    except ImportError:
        return None
    return timm


def list_models() -> list[str]:
    """`alexnet` and `zfnet` (the paper's networks), torchvision's classifiers and, with timm
    installed, timm's models."""
    import torchvision

    names = list(PAPER_NETS)
    names += [f"torchvision:{n}" for n in torchvision.models.list_models(module=torchvision.models)]
    timm = _timm()
    return names + ([f"timm:{n}" for n in timm.list_models()] if timm else [])


def build_model(
    name: str,
    *,
    num_classes: int = 10,
    geometry: str = "small",
    in_channels: int = 3,
    dropout: float = 0.5,
) -> nn.Module:
    """Build `alexnet`/`zfnet` (the paper's networks), a torchvision classifier or, with timm
    installed, a timm model of that name (torchvision's first), with `num_classes` outputs.

    Weights are the library's default init; the trainer re-initialises the constrained layers
    (materialize) so a run's start is defined by the distribution and the seed alone.
    """
    if geometry not in GEOMETRIES:
        raise ModelError(f"unknown geometry {geometry!r}; choose one of {list(GEOMETRIES)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ModelError(f"num_classes must be a positive integer (got {num_classes!r})")
    if not 0.0 <= dropout < 1.0:
        raise ModelError(f"dropout {dropout} must be in [0, 1)")
    if name in PAPER_NETS:
        return PaperNet(PAPER_NETS[name], geometry, num_classes, in_channels, dropout)
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    tv, timm_name, timm = name.removeprefix("torchvision:"), name.removeprefix("timm:"), _timm()
    if in_channels != 3:
        raise ModelError(
            f"{name}: torchvision and timm models take 3 input channels (got {in_channels})"
        )
    if tv in known and not name.startswith("timm:"):
        return torchvision.models.get_model(tv, weights=None, num_classes=num_classes)
    if timm is not None and timm.is_model(timm_name):
        return timm.create_model(timm_name, pretrained=False, num_classes=num_classes)
    close = difflib.get_close_matches(tv, known + (timm.list_models() if timm else []), n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    extra = "" if timm else " (pip install timm for timm's models)"
    raise ModelError(
        f"unknown model {tv!r}; {hint}use 'alexnet', 'zfnet', a torchvision "
        f"classifier (torchvision.models.list_models()) or a timm model{extra}"
    )


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Conv modules in model order (registration order), named as in the state dict."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)]


def head_name(model: nn.Module) -> str | None:
    """The final classifier layer: resized to the dataset's classes, never transferred or
    constrained."""
    return next(
        (n for n, m in reversed(list(model.named_modules())) if isinstance(m, nn.Linear)), None
    )


def constrainable_layers(model: nn.Module, scope: str = "conv") -> list[tuple[str, nn.Module]]:
    """The layers whose kernels follow a sign pattern: conv only (the paper) or conv and FC
    ('all', the prior-work code); the classifier head is never constrained."""
    if scope == "conv":
        return conv_layers(model)
    if scope == "all":
        head = head_name(model)
        layers = [
            (n, m)
            for n, m in model.named_modules()
            if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))
        ]
        return [(n, m) for n, m in layers if n != head]
    raise ModelError(f"unknown constrain scope {scope!r}; use one of {list(CONSTRAIN_SCOPES)}")


def input_size_for(name: str, geometry: str) -> int | None:
    """Image size the model wants: None keeps the dataset's native size (small geometry)."""
    if geometry == "small":
        return None
    return PAPER_NETS[name].geometries["imagenet"].input_size if name in PAPER_NETS else 224
