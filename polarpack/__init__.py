"""polarpack: polarity-distribution transfer learning.

The pipeline, one module per stage:

    format       the `.polar` file: `Distribution`, `load`, `save` (spec/polar-format.md)
    presets      the seed paper's distributions (`paper:alexnet`, `paper:table1-exp1..7`)
    sources      where weights and distributions come from (torchvision, files, hf://)
    extract      pretrained weights -> `Distribution`
    materialize  `Distribution` + seed -> sign targets and initial weights
    constraints  the sign projection and the fluid flips applied during training
    models       `alexnet` / `zfnet` builders (small and imagenet geometry), torchvision models
    data         datasets as in-memory uint8 tensors, batching by index
    train        the training loop: Freeze/Fluid SPIN, Freeze IN, Fluid IN, scratch
    experiments  declarative grids, a resumable results store, reports and figures
    hub          publish and pull distributions on the Hugging Face Hub

Heavy submodules are imported lazily, so `import polarpack` stays cheap.
"""

from __future__ import annotations

import importlib

from ._version import __version__
from .errors import PolarpackError
from .format import Distribution, LayerDistribution, load, save

_LAZY = {
    "get_preset": "presets",
    "list_presets": "presets",
    "load_distribution": "sources",
    "extract": "extract",
    "materialize": "materialize",
    "apply_distribution": "materialize",
    "build_model": "models",
    "list_models": "models",
    "load_dataset": "data",
    "train": "train",
    "TrainConfig": "train",
    "run_experiment": "experiments",
    "push": "hub",
    "pull": "hub",
}

__all__ = ["__version__", "PolarpackError", "Distribution", "LayerDistribution", "load", "save", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'polarpack' has no attribute {name!r}")
