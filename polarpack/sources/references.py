"""What a reference names. Every option that takes a source (`--dist`, `--weights`, `--norms`, an
experiment file's cells, `push`) reads it through `classify`, so a preset, a Hub file, a `.polar`
file, a weights checkpoint and a model name are told apart the same way everywhere.

    paper:alexnet                      preset        (polarpack.sources.presets)
    hf://owner/repo[@rev]/path         hub           (polarpack.hub)
    mnv2.polar, x.polar.safetensors    distribution  (.polar, .polar.json, .polar.safetensors)
    model.safetensors, ckpt.pth        weights       (a checkpoint file, by suffix)
    runs/a/b, ./thing                  path          (a path of no known kind)
    mobilenet_v2, resnet18             name          (a model name)

Only the name is looked at, never the file: `alexnet.polarity-study.pth` is a weights file.
"""

from __future__ import annotations

import os
from pathlib import PurePath
from typing import Any, Literal

PRESET_PREFIX = "paper:"
HUB_PREFIX = "hf://"
DISTRIBUTION_SUFFIXES = (".polar", ".polar.json", ".polar.safetensors")
WEIGHTS_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".tar", ".npz", ".npy")

Kind = Literal["preset", "hub", "distribution", "weights", "path", "name"]


def classify(ref: Any) -> Kind | None:
    """The kind of `ref` (see the module docstring); None for anything that is not a string or
    path."""
    if isinstance(ref, os.PathLike):
        ref = os.fspath(ref)
    if not isinstance(ref, str) or not ref:
        return None
    if ref.startswith(PRESET_PREFIX):
        return "preset"
    if ref.startswith(HUB_PREFIX):
        return "hub"
    name = PurePath(ref).name.lower()
    if name.endswith(DISTRIBUTION_SUFFIXES):
        return "distribution"
    if name.endswith(WEIGHTS_SUFFIXES):
        return "weights"
    if "/" in ref or os.sep in ref or ref.startswith("."):
        return "path"
    return "name"


def is_preset(ref: Any) -> bool:
    return classify(ref) == "preset"


def is_hub_reference(ref: Any) -> bool:
    """True for strings that start with `hf://`, well formed or not (`hub.parse_reference` says
    which)."""
    return classify(ref) == "hub"


def names_distribution(ref: Any) -> bool:
    """A preset, a `.polar` file, or a Hub reference to one: read with `load_distribution`."""
    kind = classify(ref)
    if kind == "hub":
        return PurePath(str(ref)).name.lower().endswith(DISTRIBUTION_SUFFIXES)
    return kind in ("preset", "distribution")


def is_local_file(ref: Any) -> bool:
    """A reference that can only mean a file on this computer (so a missing one is an error, not a
    model name to look up)."""
    return classify(ref) in ("distribution", "weights", "path")
