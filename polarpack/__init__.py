"""polarpack: polarity-distribution transfer learning.

The pipeline, one module per stage:

    format       the `.polar` file at three granularities: `Distribution`, `load`, `save` (spec/polar-format.md)
    presets      the seed paper's distributions (`paper:alexnet`, `paper:table1-exp1..7`, `paper:rand`)
    sources      where weights and distributions come from (torchvision, files, hf://)
    extract      pretrained weights -> `Distribution`
    materialize  `Distribution` + seed -> sign targets and initial weights
    constraints  the sign projection and Algorithm 3's per-epoch change, applied during training
    models       `alexnet` / `zfnet` builders (small and imagenet geometry), torchvision models
    data         datasets as in-memory uint8 tensors, batching by index
    train        the training loop: Freeze/Fluid SPIN, Freeze IN, Fluid IN, scratch
    distributed  DDP under torchrun: the rank, the batch split, the reductions
    grid         experiment files (TOML) -> cells
    runner       the results store and running a grid (resumable, parallel, one writer)
    report       statistics over seeds, comparisons, Table 1, figures
    hub          publish and pull distributions on the Hugging Face Hub

The top-level names below are the public API; the submodules hold the rest.
"""

from __future__ import annotations

from ._version import __version__
from .errors import PolarpackError
from .extract import extract
from .format import Distribution, LayerDistribution, load, save
from .materialize import apply_distribution, materialize
from .models import build_model, list_models
from .presets import get_preset, list_presets
from .sources import load_distribution
from .train import TrainConfig, TrainResult, train

__all__ = [
    "__version__", "PolarpackError", "Distribution", "LayerDistribution", "load", "save", "load_distribution",
    "get_preset", "list_presets", "extract", "materialize", "apply_distribution", "build_model", "list_models",
    "train", "TrainConfig", "TrainResult",
]
