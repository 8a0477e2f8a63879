"""Model builders: the seed's AlexNet and ZFNet in two geometries, plus any torchvision classifier.

Like timm, builders are registered by name (`build_model("zfnet", geometry="small")`); like
torchvision, each carries its metadata (input sizes, conv shapes, provenance) next to it.

Layer names are the parameter names without `.weight` (`conv1` ... `conv5`, `fc6` ... `fc8`), so
the paper's distributions (`paper:alexnet`, layers conv1-conv5) map onto both networks by name.
"""

from __future__ import annotations

from dataclasses import dataclass
import torch
from torch import nn

from .errors import ModelError

GEOMETRIES = ("small", "imagenet")


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
    """A five-conv, three-FC network from the seed, with its geometries."""

    name: str
    channels: tuple[int, ...]
    kernels: tuple[int, ...]
    lrn_after: tuple[bool, ...]
    geometries: dict[str, Geometry]
    description: str
    fc_width: int = 4096

    def conv_shapes(self, in_channels: int = 3) -> dict[str, tuple[int, int, int, int]]:
        shapes, c_in = {}, in_channels
        for i, (c, k) in enumerate(zip(self.channels, self.kernels), start=1):
            shapes[f"conv{i}"] = (c, c_in, k, k)
            c_in = c
        return shapes


# The small geometry keeps every conv weight shape of the imagenet networks (so distributions and
# sign patterns transfer one to one) and only adapts strides, padding and pooling so that a
# 32x32 (CIFAR-10) or 28x28 (Fashion-MNIST) image reaches conv3-conv5 at 2x2, where each 3x3 tap
# still sees data. Both inputs end at 2x2x256 = 1024 features into fc6. This is about 45 M
# multiply-adds per image, so the seed protocol (20 epochs x 10k images) runs in minutes on 2 CPU
# cores; the imagenet geometry (1.1 G multiply-adds for AlexNet at 227) is for GPUs.
ALEXNET = PaperNetSpec(
    name="alexnet",
    channels=(96, 256, 384, 384, 256),
    kernels=(11, 5, 3, 3, 3),
    lrn_after=(False,) * 5,
    description=(
        "AlexNet as the seed's prior work builds it (Wang et al. 2023): conv 96@11x11/4, 256@5x5, "
        "384@3x3, 384@3x3, 256@3x3, max-pools 3/2, fc 4096-4096-classes, dropout after fc6 and fc7; "
        "no LRN, no groups."
    ),
    geometries={
        "imagenet": Geometry(227, (4, 1, 1, 1, 1), (0, 2, 1, 1, 1), (True, True, False, False, True), 0, False, 6,
                             "227x227 input, as the prior-work Keras code"),
        "small": Geometry(32, (4, 1, 1, 1, 1), (5, 2, 1, 1, 1), (True, True, False, False, False), 1, False, 2,
                          "32x32/28x28 input: conv1 stride 4 padding 5 (8x8 or 7x7), pools 3/2 padding 1 after "
                          "conv1 and conv2 (4x4, then 2x2), no pool after conv5"),
    },
)

ZFNET = PaperNetSpec(
    name="zfnet",
    channels=(96, 256, 384, 384, 256),
    kernels=(7, 5, 3, 3, 3),
    lrn_after=(True, True, False, False, False),
    description=(
        "ZFNet (Zeiler & Fergus 2014) as the pytorchcv model zoo defines it: conv 96@7x7/2, 256@5x5/2, "
        "384@3x3, 384@3x3, 256@3x3, LRN after conv1 and conv2, max-pools 3/2 (ceil mode), "
        "fc 4096-4096-classes with dropout after fc6 and fc7."
    ),
    geometries={
        "imagenet": Geometry(224, (2, 2, 1, 1, 1), (1, 0, 1, 1, 1), (True, True, False, False, True), 0, True, 6,
                             "224x224 input, 9216 features into fc6"),
        "small": Geometry(32, (2, 2, 1, 1, 1), (3, 2, 1, 1, 1), (True, True, False, False, False), 1, False, 2,
                          "32x32/28x28 input: conv1 stride 2 padding 3 (16x16 or 14x14), pool 3/2 padding 1 "
                          "(8x8 or 7x7), conv2 stride 2 padding 2 (4x4), pool (2x2), no pool after conv5; no LRN "
                          "(weightless, and it tripled the CPU time of a step)", lrn=False),
    },
)

PAPER_NETS = {spec.name: spec for spec in (ALEXNET, ZFNET)}


class PaperNet(nn.Module):
    """conv1..conv5 (ReLU, optional LRN and max-pool) then fc6, fc7 (ReLU, dropout) and fc8."""

    def __init__(self, spec: PaperNetSpec, geometry: str, num_classes: int, in_channels: int, dropout: float):
        super().__init__()
        geo = spec.geometries[geometry]
        self.spec, self.geometry = spec, geometry
        c_in = in_channels
        for i in range(5):
            conv = nn.Conv2d(c_in, spec.channels[i], spec.kernels[i], stride=geo.strides[i], padding=geo.paddings[i])
            setattr(self, f"conv{i + 1}", conv)
            c_in = spec.channels[i]
        self.fc6 = nn.Linear(c_in * geo.feature_size**2, spec.fc_width)
        self.fc7 = nn.Linear(spec.fc_width, spec.fc_width)
        self.fc8 = nn.Linear(spec.fc_width, num_classes)
        self.lrn = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)
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


def list_models() -> list[str]:
    """`alexnet` and `zfnet` (the seed's networks) followed by torchvision's classifiers."""
    import torchvision

    return list(PAPER_NETS) + [f"torchvision:{n}" for n in torchvision.models.list_models(module=torchvision.models)]


def build_model(name: str, *, num_classes: int = 10, geometry: str = "small", in_channels: int = 3,
                dropout: float = 0.5) -> nn.Module:
    """Build `alexnet`/`zfnet` (seed networks) or a torchvision classifier with `num_classes` outputs.

    Weights are PyTorch's default init; the trainer re-initialises the constrained layers
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

    tv, known = name.removeprefix("torchvision:"), torchvision.models.list_models(module=torchvision.models)
    if tv not in known:
        raise ModelError(f"unknown model {tv!r}; use 'alexnet', 'zfnet' or a torchvision classification model "
                         f"(e.g. {', '.join(sorted(known)[:6])}, ...; see `torchvision.models.list_models()`)")
    if in_channels != 3:
        raise ModelError(f"{tv}: torchvision models take 3 input channels (got {in_channels})")
    return torchvision.models.get_model(tv, weights=None, num_classes=num_classes)


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Conv modules in model order (registration order), named as in the state dict."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)]


def head_name(model: nn.Module) -> str | None:
    """The final classifier layer: resized to the dataset's classes, never transferred or constrained."""
    return next((n for n, m in reversed(list(model.named_modules())) if isinstance(m, nn.Linear)), None)


def constrainable_layers(model: nn.Module, scope: str = "conv") -> list[tuple[str, nn.Module]]:
    """The layers whose kernels follow a sign pattern: conv only (the seed) or conv and FC
    ('all', the prior-work code); the classifier head is never constrained."""
    if scope == "conv":
        return conv_layers(model)
    if scope == "all":
        head = head_name(model)
        layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
        return [(n, m) for n, m in layers if n != head]
    raise ModelError(f"unknown constrain scope {scope!r}; use 'conv' or 'all'")


def input_size_for(name: str, geometry: str) -> int | None:
    """Image size the model wants: None keeps the dataset's native size (small geometry)."""
    if geometry == "small":
        return None
    return PAPER_NETS[name].geometries["imagenet"].input_size if name in PAPER_NETS else 224

