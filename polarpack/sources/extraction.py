"""Pretrained weights -> `Distribution`: the zero, negative and positive weights of each layer.

A layer is a state-dict entry ending in ``.weight``, named without it (``features.0.0``). Conv
kernels (3-D to 5-D) are counted in model order; ``include_linear`` adds 2-D matrices. A weight
is zero when ``|w| <= zero_tol``, exactly, in its own dtype. NaN or infinite weights, and kernels
that are not float16/bfloat16/float32/float64 (int8, fp8, complex), are refused.

Granularity: ``"layer"`` keeps [n0, n-, n+] per layer, ``"channel"`` also per output channel,
``"pattern"`` the exact ternary sign pattern, ``"scaled"`` the pattern and each output channel's
mean |w| (a 1-bit checkpoint; pattern and scaled: safetensors encoding only). ``norms=True`` also
keeps the normalisation modules' tensors (`normalisation_tensors`).

Grouped convolutions store (out, in/g, kh, kw); with ``expand_groups`` they count as the dense
(out, in, kh, kw) kernel that is zero off its ``g`` diagonal blocks (how the paper's AlexNet
conv2/4/5 get p0 = 0.5), channel counts and patterns included. Group counts come from the model
(torchvision names, nn.Module objects) or ``groups={"conv2": 2}``.
"""

from __future__ import annotations

import fnmatch
import math
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from polarpack.errors import ConfigError, SourceError
from polarpack.format import GRANULARITIES, NORM_MEMBERS, Distribution, LayerDistribution
from polarpack.sources.weights import LAYOUTS, TensorInfo, WeightSource, open_weights

CONV_NDIMS = (3, 4, 5)
_CHUNK = 1 << 18  # elements per counting block: small enough to stay in cache across passes
_AS_INT = {
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
    torch.float32: torch.int32,
    torch.float64: torch.int64,
}


def extract(
    source: Any,
    *,
    layers: Sequence[str] | str | None = None,
    include_linear: bool = False,
    zero_tol: float = 0.0,
    expand_groups: bool = False,
    groups: Mapping[str, int] | None = None,
    layout: str = "auto",
    endpoint: str | None = None,
    token: str | None = None,
    revision: str | None = None,
    hash_file: bool = True,
    granularity: str = "layer",
    norms: bool = False,
    unsafe_allow_pickle: bool = False,
) -> Distribution:
    """The polarity distribution of `source` (anything `polarpack.sources.weights.open_weights`
    reads).

    `layers`: fnmatch globs over layer names, each must match. `groups`: group counts by layer,
    used with `expand_groups`. `hash_file`: record the file's sha256 (reads the whole file once).
    `norms`: also keep every normalisation module's weight, bias, running_mean and running_var
    (safetensors output only). `unsafe_allow_pickle`: read pickled .npy/.npz object arrays (they
    can run code: trusted files only).
    """
    tol, user = _check_options(zero_tol, groups, layout, granularity)
    globs = (
        [layers]
        if isinstance(layers, str)
        else (None if layers is None else list(map(str, layers)))
    )
    if user and not expand_groups:
        warnings.warn(
            "groups= only changes the counts with expand_groups=True; counting stored kernels as "
            "they are",
            stacklevel=2,
        )
    ws = open_weights(
        source,
        endpoint=endpoint,
        token=token,
        revision=revision,
        layout=layout,
        unsafe_allow_pickle=unsafe_allow_pickle,
    )
    try:
        selected = _select(ws, globs, include_linear)
        used = _groups_used(ws, selected, user, expand_groups)
        out = [
            _layer(ws, name, key, info, used.get(name, 1) if expand_groups else 1, tol, granularity)
            for name, key, info in selected
        ]
        detected = {info.transposed for _, _, info in selected if len(info.shape) >= 3}
        extraction = {
            "zero_tol": tol,
            "expand_groups": bool(expand_groups),
            "groups": used,
            "include_linear": bool(include_linear),
            "layers": globs,
            "layout": "OIHW",
            "norms": bool(norms),
            "source_layout": layout,
            "source_layout_detected": "mixed"
            if len(detected) > 1
            else ("HWIO" if True in detected else "OIHW"),
        }
        return Distribution(
            tuple(out),
            source=ws.describe(sha256=hash_file),
            extraction=extraction,
            granularity=granularity,
            norms=normalisation_tensors(ws) if norms else {},
        )
    finally:
        if ws is not source:
            ws.close()


def _check_options(
    zero_tol: Any, groups: Mapping[str, int] | None, layout: str, granularity: str
) -> tuple[float, dict[str, int]]:
    """(tolerance as a float, the user's group counts), or a ConfigError naming the bad value."""
    user = dict(groups or {})
    try:
        tol = float(zero_tol)
    except (TypeError, ValueError):
        tol = math.nan
    if not 0 <= tol < math.inf or any(
        isinstance(g, bool) or not isinstance(g, int) or g < 1 for g in user.values()
    ):
        raise ConfigError(
            f"zero_tol must be a finite number >= 0 (got {zero_tol!r}) and groups positive "
            f"integers (got {user})"
        )
    if layout not in LAYOUTS or granularity not in GRANULARITIES:
        raise ConfigError(
            f"layout must be one of {list(LAYOUTS)} and granularity one of {list(GRANULARITIES)}; "
            f"got {layout!r}, {granularity!r}"
        )
    return tol, user


def _groups_used(
    ws: WeightSource,
    selected: list[tuple[str, str, TensorInfo]],
    user: dict[str, int],
    expand_groups: bool,
) -> dict[str, int]:
    """The group counts of the selected grouped convs (the source's, overridden by the user's)."""
    names = [name for name, _, _ in selected]
    unknown = sorted(set(user) - set(names))
    if unknown:
        raise ConfigError(
            f"groups names layer(s) {unknown} not among the extracted layers of {ws.name} "
            f"({_preview(names)})"
        )
    dense = [name for name, _, info in selected if len(info.shape) == 2 and user.get(name, 1) > 1]
    if dense:
        raise ConfigError(
            f"{ws.name}: layer(s) {dense} are dense matrices; groups apply to conv kernels only"
        )
    groups = {**ws.groups, **user}
    if expand_groups and not groups:
        warnings.warn(
            f"expand_groups=True but {ws.name} reports no grouped convs; pass "
            "groups={'conv2': 2} (--groups conv2=2) for checkpoint files",
            stacklevel=3,
        )
    return {
        name: groups[name]
        for name, _, info in selected
        if groups.get(name, 1) > 1 and len(info.shape) > 2
    }


def normalisation_tensors(ws: WeightSource) -> dict[str, np.ndarray]:
    """Every normalisation module's tensors as float32, in model order: the modules whose
    `running_mean` and `running_var` the source holds, with their `weight` and `bias` when present
    (`num_batches_tracked` is not kept)."""
    names, out = set(ws.infos), {}
    for key in ws.infos:
        if key != "running_mean" and not key.endswith(".running_mean"):
            continue
        prefix = key.removesuffix("running_mean")
        if prefix + "running_var" not in names:
            continue
        for member in NORM_MEMBERS:
            name = prefix + member
            if name not in names:
                continue
            if not ws.infos[name].is_float:
                raise SourceError(
                    f"{ws.name}: normalisation tensor {name!r} has dtype {ws.infos[name].dtype}; "
                    "polarpack keeps floating-point normalisation tensors"
                )
            out[name] = ws[name].detach().cpu().to(torch.float32).numpy()
    return out


def _layer(
    ws: WeightSource,
    name: str,
    key: str,
    info: TensorInfo,
    g: int,
    zero_tol: float,
    granularity: str,
) -> LayerDistribution:
    """One layer at `granularity`; with g > 1 that of the dense block-diagonal kernel."""
    kind = "linear" if len(info.shape) == 2 else "conv"
    if not info.is_float:
        raise SourceError(
            f"{ws.name}: layer {name!r} has dtype {info.dtype}; polarpack counts floating-point "
            "kernels (float16, bfloat16, float32, float64): dequantize or convert the weights first"
        )
    if info.shape[0] % g:
        raise ConfigError(
            f"{ws.name}: layer {name!r} has {info.shape[0]} output channels, not divisible by "
            f"groups={g}"
        )
    try:
        if granularity == "layer":
            n0, n_neg, n_pos = count_signs(ws[key], zero_tol)
            return LayerDistribution.from_counts(
                name,
                ((g - 1) * info.numel + n0, n_neg, n_pos),
                kind=kind,
                shape=(info.shape[0], info.shape[1] * g, *info.shape[2:]),
            )
        tensor = ws[key]
        return LayerDistribution.from_signs(
            name,
            _block_diagonal(signs(tensor, zero_tol), g),
            kind=kind,
            granularity=granularity,
            scales=channel_scales(tensor, g) if granularity == "scaled" else None,
        )
    except ValueError as exc:
        raise SourceError(f"{ws.name}: layer {name!r}: {exc}") from None


def channel_scales(tensor: torch.Tensor, groups: int = 1) -> np.ndarray:
    """Each output channel's mean |w| over all its weights, zeros included (a grouped conv's dense
    channel has `groups` times the stored weights, the rest zero): summed in float64, stored as
    float32. float16/bfloat16 widen to float32 exactly first."""
    t = tensor.detach().cpu()
    a = (t if t.dtype == torch.float64 else t.to(torch.float32)).numpy()
    rows = np.abs(a.reshape(a.shape[0], -1))
    return (rows.sum(axis=1, dtype=np.float64) / (rows.shape[1] * groups)).astype(np.float32)


def _block_diagonal(s: torch.Tensor, g: int) -> torch.Tensor:
    """The dense kernel of a g-group conv: output block j sees input block j, zeros elsewhere."""
    if g == 1:
        return s
    o, i, *k = s.shape
    dense = s.new_zeros((g, o // g, g, i, *k))
    dense[torch.arange(g), :, torch.arange(g)] = s.reshape(g, o // g, i, *k)
    return dense.reshape(o, g * i, *k)


def _preview(names: Sequence[str], n: int = 8) -> str:
    return ", ".join(names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "")


def _select(
    ws: WeightSource, layers: Sequence[str] | None, include_linear: bool
) -> list[tuple[str, str, TensorInfo]]:
    """(layer name, key, info) of the tensors to count, in model order."""
    candidates, dense = [], []
    for key, info in ws.infos.items():
        name = (
            "weight"
            if key == "weight"
            else (key.removesuffix(".weight") if key.endswith(".weight") else None)
        )
        if (
            name is not None
            and info.numel
            and (len(info.shape) in CONV_NDIMS or len(info.shape) == 2)
        ):
            (candidates if len(info.shape) > 2 or include_linear else dense).append(
                (name, key, info)
            )
    if not candidates:
        found = Counter(len(info.shape) for info in ws.infos.values())
        found = (
            ", ".join(f"{n}-D x{c}" for n, c in sorted(found.items(), reverse=True)) or "nothing"
        )
        what = "conv kernels (3-D to 5-D '.weight' tensors)" + (
            " or 2-D weight matrices" if include_linear else ""
        )
        hint = (
            "; pass --include-linear (include_linear=True) to count dense layers" if dense else ""
        )
        raise SourceError(
            f"{ws.name}: no {what} among {len(ws.infos)} tensors (found {found}){hint}"
        )
    names = [c[0] for c in candidates]
    for glob in layers or ():
        if not any(fnmatch.fnmatchcase(n, glob) for n in names):
            hit = [c[0] for c in dense if fnmatch.fnmatchcase(c[0], glob)]
            hint = (
                f"; it matches dense layer(s) {_preview(hit, 4)}: add --include-linear"
                if hit
                else ""
            )
            raise SourceError(
                f"{ws.name}: layer glob {glob!r} matches no layer{hint}; layers are "
                f"{_preview(names)}"
            )
    return [
        c for c in candidates if layers is None or any(fnmatch.fnmatchcase(c[0], g) for g in layers)
    ]


# -- counting --------------------------------------------------------------------------------


def _view(tensor: torch.Tensor, zero_tol: float) -> tuple[Any, Any, Any]:
    """(array, library, tolerance in its dtype): float32/float64 as a zero-copy numpy view (numpy's
    comparisons are about 2x torch's on CPU), float16/bfloat16 as torch tensors in their own dtype.
    The tolerance is the largest dtype value <= zero_tol, so `> tol` is exactly |w| > zero_tol."""
    t = tensor.detach().cpu()
    if t.dtype not in _AS_INT:
        raise ValueError(
            f"dtype {str(t.dtype).removeprefix('torch.')} is not float16, bfloat16, float32 or "
            "float64"
        )
    tol = torch.tensor(zero_tol, dtype=torch.float64).to(t.dtype)
    tol = (tol.view(_AS_INT[t.dtype]) - 1).view(t.dtype) if float(tol) > zero_tol else tol
    return (
        (t.numpy(), np, tol.numpy()[()])
        if t.dtype in (torch.float32, torch.float64)
        else (t, torch, tol)
    )


def _refuse_nonfinite(a: Any) -> None:
    """NaN would count as zero and inf as a sign: a corrupt or diverged checkpoint, refused."""
    t = torch.as_tensor(a)
    nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
    if nan or inf:
        what = " and ".join(
            f"{k} of {t.numel()} weights are {w}" for k, w in ((nan, "NaN"), (inf, "infinite")) if k
        )
        raise ValueError(f"{what}; the checkpoint is corrupt or diverged")


# inf - inf and overflowing sums only lead to the exact check
@np.errstate(invalid="ignore", over="ignore")
def signs(tensor: torch.Tensor, zero_tol: float = 0.0) -> torch.Tensor:
    """The int8 ternary signs (-1, 0, 1) of a float tensor by the counting rule (|w| <= zero_tol is
    0)."""
    a, lib, tol = _view(tensor, zero_tol)
    if not lib.isfinite(a.sum()):  # NaN and inf propagate
        _refuse_nonfinite(a)
    return torch.as_tensor(lib.greater(a, tol).view(lib.int8) - lib.less(a, -tol).view(lib.int8))


@np.errstate(invalid="ignore", over="ignore")
def count_signs(tensor: torch.Tensor, zero_tol: float = 0.0) -> tuple[int, int, int]:
    """Exact [n_zero, n_neg, n_pos] of a float tensor; |w| <= zero_tol counts as zero.

    In cache-sized blocks with one reused mask. NaN/inf propagate through each block's dot product
    with itself (numpy's is ~3x faster than its sum) or sum: a non-finite one sends the tensor to
    the exact check, which raises ValueError for NaN or inf weights."""
    a, lib, tol = _view(tensor, zero_tol)
    if lib is np:
        flat = a.ravel(order="K")  # memory order: a view even for transposed kernels
        flat = (
            flat
            if flat.flags.c_contiguous or flat.flags.f_contiguous
            else np.ascontiguousarray(flat)
        )
        buf, total = np.empty(min(flat.size, _CHUNK), dtype=bool), lambda c: np.dot(c, c)
    else:
        flat, buf, total = (
            a.reshape(-1),
            torch.empty(min(a.numel(), _CHUNK), dtype=torch.bool),
            torch.sum,
        )
    pos, neg, finite = 0, 0, True
    for start in range(0, len(flat), _CHUNK):
        c = flat[start : start + _CHUNK]
        m = buf[: len(c)]
        pos += int(lib.count_nonzero(lib.greater(c, tol, out=m)))
        neg += int(lib.count_nonzero(lib.less(c, -tol, out=m)))
        finite = finite and bool(lib.isfinite(total(c)))
    if not finite:
        _refuse_nonfinite(a)
    return (len(flat) - pos - neg, neg, pos)
