"""The vocabulary of the `.polar` format: its versions, granularities and key names, and the
plain-value checks and conversions every part of the format shares.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

FORMAT_VERSION = 3
READ_VERSIONS = (1, 2, 3)
GRANULARITIES = ("layer", "channel", "pattern", "scaled")
JSON_GRANULARITIES = ("layer", "channel")  # the others hold binary signs: safetensors only
LAYER_KINDS = ("conv", "linear")
SOURCE_TYPES = ("torchvision", "file", "hub", "paper", "manual")
NORM_MEMBERS = ("weight", "bias", "running_mean", "running_var")
SUM_TOLERANCE = 1e-9
INT64_MAX = 2**63 - 1
TOP_KEYS = (
    "format_version",
    "granularity",
    "layers",
    "source",
    "extraction",
    "producer",
    "metadata",
)
LAYER_KEYS = ("name", "kind", "shape", "p0", "p_neg", "p_pos", "counts", "channel_counts")
OBJECT_KEYS = ("source", "extraction", "producer", "metadata")
HEADER_KEYS = ("format_version", "granularity", "layers", "shapes", "linear", *OBJECT_KEYS)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= INT64_MAX


def _plain(value: Any) -> Any:
    """numpy/torch scalars and arrays, lists and tuples -> Python numbers and tuples of them;
    -0.0 -> 0.0; else unchanged. One level deep: no field nests lists, so a nested one is left as
    it is for the rules to refuse (converting it would recurse as deep as a hostile file nests)."""
    if type(value) is int or value is None:  # the common cases, without the slow ABC checks
        return value
    tolist = getattr(value, "tolist", None)  # numpy's and torch's arrays and scalars
    if tolist is not None:
        value = tolist()
    if isinstance(value, (list, tuple)):
        if all(type(v) is int for v in value):
            return tuple(value)
        return tuple(v if isinstance(v, (list, tuple)) else _plain(v) for v in value)
    return _number(value)


def _number(value: Any) -> Any:
    if type(value) is float:
        return value + 0.0
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, int)):
        return float(value) + 0.0
    return value


def _proportion(value: Any) -> Any:
    value = _plain(value)
    return float(value) if _is_number(value) and abs(value) < 1e300 else value  # huge ints stay


def _readonly(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array
