"""polarpack: polarity-distribution transfer learning.

The pipeline, one package per stage (docs/architecture.md; imports point down this list):

    format/       the `.polar` file: data model, entropy coding, encodings, validation, limits
    sources/      references, the paper's presets, weights files, torchvision/timm/hf:// sources,
                  extraction of a `Distribution`
    hub/          publishing on the Hugging Face Hub: push and the model card
    training/     a run: options, the method registry, materialization, sign constraints, data,
                  the loop, distributed training, the run folder and its records
    experiments/  grids of runs: experiment files, the runner, the results store, statistics,
                  comparisons and reports

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
