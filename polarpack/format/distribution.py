"""`Distribution`: a network's ordered layer distributions, their provenance and, optionally,
its normalisation tensors; validated on creation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from polarpack._version import __version__
from polarpack.errors import FormatError
from polarpack.format import coding
from polarpack.format.fields import (
    FORMAT_VERSION,
    LAYER_KEYS,
    NORM_MEMBERS,
    OBJECT_KEYS,
    TOP_KEYS,
    _readonly,
)
from polarpack.format.layer import LayerDistribution, _ChannelStream
from polarpack.format.rules import (
    _check_keys,
    _check_version,
    _plain_json,
    validate,
)


def _frozen_norms(norms: Any) -> Mapping[str, np.ndarray]:
    """Normalisation tensors as a read-only mapping of read-only float32 vectors, grouped by module
    (first appearance) with members in the order weight, bias, running_mean, running_var."""
    if not isinstance(norms, Mapping):
        raise FormatError(f"'norms' must be a mapping of tensor names to arrays, got {norms!r}")
    modules: dict[str, dict[str, np.ndarray]] = {}
    for name, value in norms.items():
        prefix, _, member = name.rpartition(".") if isinstance(name, str) else ("", "", "")
        if member not in NORM_MEMBERS:
            raise FormatError(
                f"norms: {name!r} is not a normalisation tensor; names end with one of "
                f"{list(NORM_MEMBERS)}"
            )
        modules.setdefault(prefix, {})[member] = _norm_vector(name, value)
    out = {}
    for prefix, members in modules.items():
        _check_norm_module(prefix, members)
        for member in NORM_MEMBERS:
            if member in members:
                out[f"{prefix}.{member}" if prefix else member] = members[member]
    return MappingProxyType(out)


def _norm_vector(name: str, value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor; bfloat16 has no numpy dtype
        value = value.detach().cpu()
        value = (value.float() if value.is_floating_point() else value).numpy()
    array = np.asarray(value)
    if array.dtype.kind != "f" or array.ndim != 1 or not array.size:
        raise FormatError(
            f"norms: {name!r} must be a non-empty 1-D float vector, got {array.dtype} of shape "
            f"{list(array.shape)}"
        )
    array = _readonly(np.array(array, dtype=np.float32))
    if not np.isfinite(array).all():
        raise FormatError(f"norms: {name!r} holds NaN or infinite values; the source is corrupt")
    return array


def _check_norm_module(prefix: str, members: Mapping[str, np.ndarray]) -> None:
    sizes = {len(v) for v in members.values()}
    if not {"running_mean", "running_var"} <= set(members) or len(sizes) != 1:
        raise FormatError(
            f"norms: module {prefix!r} has {sorted(members)} of lengths {sorted(sizes)}; a "
            "normalisation module has running_mean and running_var (weight and bias optional), "
            "all of one length"
        )


@dataclass(frozen=True, eq=False)
class Distribution:
    """Ordered layer distributions plus where they came from (`source`), how they were extracted
    (`extraction`), who wrote them (`producer`), free-form `metadata` and, optionally, the
    network's normalisation tensors (`norms`: state-dict name -> read-only float32 vector);
    validated on creation. `format_version` is the version of the file it was read from (writers
    always write the current one)."""

    layers: tuple[LayerDistribution, ...]
    source: Mapping[str, Any] = field(default_factory=dict)
    extraction: Mapping[str, Any] = field(default_factory=dict)
    producer: Mapping[str, Any] = field(
        default_factory=lambda: {"name": "polarpack", "version": __version__}
    )
    metadata: Mapping[str, Any] = field(default_factory=dict)
    granularity: str = "layer"
    format_version: int = FORMAT_VERSION
    norms: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        for key in OBJECT_KEYS:
            object.__setattr__(self, key, _plain_json(getattr(self, key), key))
        object.__setattr__(self, "norms", _frozen_norms(self.norms))
        validate(self)

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def __getitem__(self, key: int | str) -> LayerDistribution:
        if isinstance(key, str):
            found = [layer for layer in self.layers if layer.name == key]
            if not found:
                raise KeyError(f"no layer named {key!r}; layers are {self.names}")
            return found[0]
        return self.layers[key]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Distribution):
            return NotImplemented
        return (
            self.granularity == other.granularity
            and self.layers == other.layers
            and all(getattr(self, k) == getattr(other, k) for k in OBJECT_KEYS)
            and list(self.norms) == list(other.norms)
            and all(np.array_equal(v, other.norms[k]) for k, v in self.norms.items())
        )

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self):
        fields = [getattr(self, k) for k in ("layers", *OBJECT_KEYS, "granularity")]
        return (Distribution, (*fields, self.format_version, dict(self.norms)))

    def proportions(self):
        """The (L, 3) float64 tensor [p0, p_neg, p_pos] per layer: the paper's P."""
        import torch

        return torch.tensor([layer.proportions for layer in self.layers], dtype=torch.float64)

    def norm_state_dict(self) -> dict[str, Any]:
        """The normalisation tensors as float32 torch tensors (copies), keyed as in the source."""
        import torch

        return {name: torch.from_numpy(array.copy()) for name, array in self.norms.items()}

    def verify(self) -> Distribution:
        """Decode every coded stream once, one layer at a time, and check it against its counts:
        reading checks only what needs no decoding. Returns self."""
        for layer in self.layers:
            if layer._pattern is not None:
                coding.decode_bitmaps(layer._pattern, layer.numel, layer.counts, layer.where)
            elif isinstance(layer._channels, _ChannelStream):
                layer.channel_counts  # noqa: B018 -- decoding is the check
        return self

    def to_dict(self) -> dict[str, Any]:
        """The JSON object (format_version as written: the current one)."""
        d: dict[str, Any] = {"format_version": FORMAT_VERSION}
        if self.granularity != "layer":  # layer files keep the layout of older readers
            d["granularity"] = self.granularity
        return d | {
            "layers": [layer.to_dict() for layer in self.layers],
            **{k: dict(getattr(self, k)) for k in OBJECT_KEYS},
        }

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "distribution") -> Distribution:
        """Build from the JSON object form; unknown or missing members are errors naming `where`."""
        if not isinstance(data, dict):
            raise FormatError(
                f"{where}: the top level must be a JSON object, got {type(data).__name__}"
            )
        _check_keys(
            data,
            TOP_KEYS,
            ("format_version", "layers"),
            where,
            "put extra information under 'metadata'",
        )
        _check_version(data["format_version"], where)
        if not isinstance(data["layers"], list) or not data["layers"]:
            raise FormatError(f"{where}: 'layers' must be a non-empty list of layer objects")
        layers = [_layer_from_dict(item, i, where) for i, item in enumerate(data["layers"])]
        extras = {k: data.get(k, {}) for k in OBJECT_KEYS}
        extras |= {"granularity": data["granularity"]} if "granularity" in data else {}
        try:
            return cls(layers=tuple(layers), format_version=data["format_version"], **extras)
        except FormatError as exc:
            raise FormatError(f"{where}: {exc}") from None


def _layer_from_dict(item: Any, i: int, where: str) -> LayerDistribution:
    if not isinstance(item, dict):
        raise FormatError(f"{where}: layers[{i}] must be a JSON object, got {type(item).__name__}")
    name = item.get("name")
    _check_keys(
        item,
        LAYER_KEYS,
        ("name", "p0", "p_neg", "p_pos"),
        f"{where}: layers[{i}]" + (f" ({name!r})" if isinstance(name, str) else ""),
        "see spec/polar-format.md",
    )
    return LayerDistribution(**item)
