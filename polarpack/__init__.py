"""polarpack: polarity-distribution transfer learning.

The pipeline, one module per stage:

    format           the `.polar` file and its granularities (spec/polar-format.md)
    presets          the seed paper's distributions (paper:alexnet, paper:table1-exp1..7, ...)
    references       what a reference names: a preset, an hf:// file, a .polar, a checkpoint
    sources          where weights and distributions come from (torchvision, files, hf://)
    extraction       pretrained weights -> `Distribution`
    materialization  `Distribution` + seed -> sign targets and initial weights
    models           alexnet / zfnet (small and imagenet geometry), torchvision and timm models
    constraints      the sign projection and Algorithm 3's per-epoch change
    data             datasets as in-memory uint8 tensors, batching by index
    config           the options of a training run (`TrainConfig`)
    methods          how each method starts: initial weights and sign targets
    runs             a run directory: config, metrics, summary, checkpoints
    training         the training loop, resumable and distributed
    distributed      DDP under torchrun: the ranks, the batch split, the reductions
    grid             experiment files (TOML) -> cells
    runner           the results store and running a grid (resumable, parallel, one writer)
    statistics       intervals and equivalence tests over seeds
    reporting        per-group statistics, comparisons, Table 1, figures
    hub              publish and pull distributions on the Hugging Face Hub

The top-level names below are the public API; the modules hold the rest, each importable under
its own name (`polarpack.training.config.TrainConfig`).
"""

from __future__ import annotations

from polarpack._version import __version__
from polarpack.errors import PolarpackError
from polarpack.experiments.reporting import report
from polarpack.format import Distribution, LayerDistribution, load, save
from polarpack.models import build_model, list_models
from polarpack.sources.extraction import extract
from polarpack.sources.presets import get_preset, list_presets
from polarpack.sources.weights import load_distribution
from polarpack.training.config import TrainConfig
from polarpack.training.loop import TrainResult, train
from polarpack.training.materialization import apply_distribution, materialize

__all__ = [
    "Distribution",
    "LayerDistribution",
    "PolarpackError",
    "TrainConfig",
    "TrainResult",
    "__version__",
    "apply_distribution",
    "build_model",
    "extract",
    "get_preset",
    "list_models",
    "list_presets",
    "load",
    "load_distribution",
    "materialize",
    "report",
    "save",
    "train",
]
