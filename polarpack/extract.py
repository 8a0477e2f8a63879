"""Pretrained weights -> `Distribution`: count zero, negative and positive weights per layer.

A layer is a state-dict entry ending in ``.weight``; its name is the key without that suffix
(``features.0.0.weight`` -> ``features.0.0``). By default only conv kernels are counted (3-D to
5-D weights: conv1d/2d/3d, in model order); ``include_linear`` adds 2-D weight matrices.
Biases, norm parameters (1-D), running statistics and ``num_batches_tracked`` are never
counted. A weight counts as zero when ``|w| <= zero_tol`` (exactly, in the weight's own dtype).

Grouped convolutions. A conv with ``g`` groups stores a kernel of shape (out, in/g, kh, kw).
With ``expand_groups=True`` it is counted as its dense equivalent (out, in, kh, kw) whose
off-diagonal blocks are zero, i.e. ``(g - 1) * numel`` extra zeros, and the dense shape is
recorded. This is how the seed paper's AlexNet gets p0 = 0.5 in conv2/4/5 (two groups in the
Caffe model). Group counts come from the model (torchvision names, nn.Module objects) or from
``groups={"conv2": 2}``; depthwise convs (MobileNetV2) expand likewise when asked.

Counting is vectorised and streams one tensor at a time from a lazily opened source (see
`polarpack.sources`), so only the counted tensors are ever read from disk.
"""

from __future__ import annotations

import fnmatch
import math
import warnings
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from .errors import ConfigError, SourceError
from .format import Distribution, LayerDistribution
from .sources import LAYOUTS, TensorInfo, WeightSource, open_weights

if TYPE_CHECKING:  # pragma: no cover
    import torch

CONV_NDIMS = (3, 4, 5)
_CHUNK = 1 << 18  # elements per counting block: small enough to stay in cache across passes


def extract(
    source: Any,
    *,
    layers: Sequence[str] | None = None,
    include_linear: bool = False,
    zero_tol: float = 0.0,
    expand_groups: bool = False,
    groups: Mapping[str, int] | None = None,
    layout: str = "auto",
    endpoint: str | None = None,
    token: str | None = None,
    revision: str | None = None,
    hash_file: bool = True,
) -> Distribution:
    """Extract the per-layer polarity distribution of `source`.

    source: a torchvision model name (``"mobilenet_v2"``), a weights file (.safetensors,
        .pt/.pth, .npz, .npy), an ``hf://owner/repo[@rev]/path`` reference, an ``nn.Module``,
        a ``{name: tensor}`` mapping or an open `WeightSource`.
    layers: fnmatch globs over layer names (e.g. ``["features.*"]``); every glob must match a
        layer. Default: all conv layers (plus 2-D ones with `include_linear`).
    include_linear: also count 2-D weight matrices (fully connected layers), kind "linear".
    zero_tol: a weight counts as zero when ``|w| <= zero_tol`` (default 0: exact zeros only).
    expand_groups / groups: count grouped convs as dense kernels (see the module docstring);
        `groups` gives or overrides group counts by layer name.
    layout: "auto", "oihw" or "hwio" kernel layout of the source (see `polarpack.sources`).
    endpoint / token / revision: for hf:// references.
    hash_file: record the sha256 of the weights file in ``source`` (default True; this reads
        the whole file once, which dominates the time for large checkpoints).

    Returns a validated `Distribution` with exact `counts`, `kind`, `shape` per layer, the
    source description in ``source`` and these settings in ``extraction``.
    """
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    zero_tol = _check_tol(zero_tol)
    user_groups = _check_groups(groups)
    if layers is not None:
        if isinstance(layers, str):
            layers = [layers]
        layers = [str(g) for g in layers]
    if user_groups and not expand_groups:
        warnings.warn(
            "groups= only changes the counts with expand_groups=True; counting stored kernels as they are",
            stacklevel=2,
        )

    opened = not isinstance(source, WeightSource)
    ws = open_weights(source, endpoint=endpoint, token=token, revision=revision, layout=layout)
    try:
        selected = _select(ws, layers=layers, include_linear=include_linear)
        group_map = {**ws.groups, **user_groups}
        unknown = sorted(set(user_groups) - {name for name, _, _ in selected})
        if unknown:
            names = [name for name, _, _ in selected]
            raise ConfigError(
                f"groups names layer(s) {unknown} not among the extracted layers of {ws.name} "
                f"({_preview(names)})"
            )
        if expand_groups and not group_map:
            warnings.warn(
                f"expand_groups=True but {ws.name} reports no grouped convs; pass groups={{'conv2': 2}} "
                "(--groups conv2=2) for checkpoint files",
                stacklevel=2,
            )
        ws.prefetch([key for _, key, _ in selected])  # overlap disk reads with counting
        out: list[LayerDistribution] = []
        used_groups: dict[str, int] = {}
        for name, key, info in selected:
            kind = "linear" if len(info.shape) == 2 else "conv"
            try:
                n0, nneg, npos = count_signs(ws[key], zero_tol)
            except ValueError as exc:
                raise SourceError(f"{ws.name}: layer {name!r}: {exc}") from None
            shape = tuple(info.shape)
            g = group_map.get(name, 1)
            if g > 1 and kind == "conv":
                used_groups[name] = g
                if expand_groups:
                    if shape[0] % g:
                        raise ConfigError(
                            f"{ws.name}: layer {name!r} has {shape[0]} output channels, not divisible by groups={g}"
                        )
                    numel = math.prod(shape)
                    n0 += (g - 1) * numel
                    shape = (shape[0], shape[1] * g, *shape[2:])
            elif g > 1 and name in user_groups:
                raise ConfigError(f"{ws.name}: layer {name!r} is a dense matrix; groups apply to conv kernels only")
            out.append(LayerDistribution.from_counts(name, (n0, nneg, npos), kind=kind, shape=shape))
        layouts = {info.transposed for _, _, info in selected if len(info.shape) >= 3}
        extraction = {
            "zero_tol": zero_tol,
            "expand_groups": bool(expand_groups),
            "groups": dict(sorted(used_groups.items(), key=lambda kv: [n for n, _, _ in selected].index(kv[0]))),
            "include_linear": bool(include_linear),
            "layers": list(layers) if layers is not None else None,
            "layout": "OIHW",  # the axis order of every recorded shape (spec: extraction.layout)
            "source_layout": layout,
            "source_layout_detected": "mixed" if len(layouts) > 1 else ("HWIO" if True in layouts else "OIHW"),
        }
        return Distribution(layers=tuple(out), source=ws.describe(sha256=hash_file), extraction=extraction)
    finally:
        if opened:
            ws.close()


def _check_tol(zero_tol: Any) -> float:
    try:
        tol = float(zero_tol)
    except (TypeError, ValueError):
        raise ConfigError(f"zero_tol must be a number, got {zero_tol!r}") from None
    if not math.isfinite(tol) or tol < 0:
        raise ConfigError(f"zero_tol must be a finite number >= 0, got {zero_tol!r}")
    return tol


def _check_groups(groups: Mapping[str, int] | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, g in (groups or {}).items():
        if isinstance(g, bool) or not isinstance(g, int) or g < 1:
            raise ConfigError(f"groups[{name!r}] must be a positive integer, got {g!r}")
        out[str(name)] = g
    return out


def _preview(names: Sequence[str], n: int = 8) -> str:
    shown = ", ".join(names[:n])
    return shown + (f", ... ({len(names)} in all)" if len(names) > n else "")


def _layer_name(key: str) -> str | None:
    if key == "weight":
        return "weight"
    if key.endswith(".weight"):
        return key[: -len(".weight")]
    return None


def _select(ws: WeightSource, *, layers: Sequence[str] | None, include_linear: bool) -> list[tuple[str, str, TensorInfo]]:
    """(layer name, key, info) of the tensors to count, in model order."""
    conv, linear = [], []
    ndims: dict[int, int] = {}
    for key in ws.keys():
        info = ws.info(key)
        ndims[len(info.shape)] = ndims.get(len(info.shape), 0) + 1
        name = _layer_name(key)
        if name is None or not info.is_float or info.numel == 0:
            continue
        if len(info.shape) in CONV_NDIMS:
            conv.append((name, key, info))
        elif len(info.shape) == 2:
            linear.append((name, key, info))
    candidates = [c for c in (conv + linear if include_linear else conv)]
    if include_linear:  # keep model order across kinds
        order = {k: i for i, k in enumerate(ws.keys())}
        candidates.sort(key=lambda c: order[c[1]])
    if not candidates:
        found = ", ".join(f"{n}-D x{c}" for n, c in sorted(ndims.items(), reverse=True)) or "nothing"
        what = "conv kernels (3-D to 5-D '.weight' tensors)" + (" or 2-D weight matrices" if include_linear else "")
        hint = "; pass --include-linear (include_linear=True) to count dense layers" if linear and not include_linear else ""
        raise SourceError(f"{ws.name}: no {what} among {len(ws)} tensors (found {found}){hint}")
    if layers is None:
        return candidates
    names = [c[0] for c in candidates]
    chosen: set[str] = set()
    for glob in layers:
        hit = [n for n in names if fnmatch.fnmatchcase(n, glob)]
        if not hit:
            dense = [c[0] for c in linear if fnmatch.fnmatchcase(c[0], glob)] if not include_linear else []
            hint = f"; it matches dense layer(s) {_preview(dense, 4)}: add --include-linear" if dense else ""
            raise SourceError(f"{ws.name}: layer glob {glob!r} matches no layer{hint}; layers are {_preview(names)}")
        chosen.update(hit)
    return [c for c in candidates if c[0] in chosen]


# -- counting --------------------------------------------------------------------------------


def _tol_in_dtype(zero_tol: float, dtype: "torch.dtype") -> "torch.Tensor":
    """The largest value of `dtype` that is <= zero_tol, so that comparing stored weights with it
    is exactly |w| <= zero_tol (a plain cast could round the tolerance up)."""
    import torch

    t = torch.tensor(zero_tol, dtype=torch.float64).to(dtype)
    if float(t) > zero_tol:
        as_int = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32, torch.float64: torch.int64}[dtype]
        t = (t.view(as_int) - 1).view(dtype)
    return t


def count_signs(tensor: "torch.Tensor", zero_tol: float = 0.0) -> tuple[int, int, int]:
    """Exact [n_zero, n_neg, n_pos] of a floating tensor; |w| <= zero_tol counts as zero.

    Vectorised, in cache-sized blocks with one reused mask buffer: float32/float64 through a
    zero-copy numpy view (numpy's comparisons are about 2x faster than torch's on CPU),
    float16/bfloat16 with torch in their native dtype (no upcast copy). Two passes (> tol,
    < -tol); NaN weights raise ValueError (checked only when the layer has zeros, since a NaN
    would be counted as one)."""
    import numpy as np
    import torch

    t = tensor.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if not t.is_floating_point():
        raise ValueError(f"dtype {t.dtype} is not floating point")
    n = t.numel()
    if n == 0:
        return (0, 0, 0)
    tol_t = _tol_in_dtype(zero_tol, t.dtype)
    pos = neg = 0
    if t.dtype in (torch.float32, torch.float64):
        a = t.numpy().ravel(order="K")  # memory order: a view even for transposed kernels
        if not a.flags.c_contiguous and not a.flags.f_contiguous:
            a = np.ascontiguousarray(a)
        tol = tol_t.numpy()[()]
        ntol = -tol
        buf = np.empty(min(n, _CHUNK), dtype=bool)
        for start in range(0, n, _CHUNK):
            c = a[start : start + _CHUNK]
            m = buf[: len(c)]
            pos += int(np.count_nonzero(np.greater(c, tol, out=m)))
            neg += int(np.count_nonzero(np.less(c, ntol, out=m)))
    else:
        flat = t.reshape(-1) if t.is_contiguous() else t.contiguous().reshape(-1)
        buf = torch.empty(min(n, _CHUNK), dtype=torch.bool)
        ntol_t = -tol_t
        for start in range(0, n, _CHUNK):
            c = flat[start : start + _CHUNK]
            m = buf[: c.numel()]
            pos += int(torch.count_nonzero(torch.gt(c, tol_t, out=m)))
            neg += int(torch.count_nonzero(torch.lt(c, ntol_t, out=m)))
    zero = n - pos - neg
    # NaN is neither > tol nor < -tol, so it would land among the zeros: look for it only when
    # there are "zeros" (dense trained layers usually have none, so this pass is usually skipped)
    if zero:
        bad = int(torch.isnan(t).sum())
        if bad:
            raise ValueError(f"{bad} of {n} weights are NaN; the checkpoint is corrupt or diverged")
    return (zero, neg, pos)
