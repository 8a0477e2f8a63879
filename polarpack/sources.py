"""Where weights and distributions come from: torchvision models, checkpoint files, hf:// references.

Two entry points:

- `load_distribution(ref)` resolves a *distribution* reference: a `paper:*` preset, an
  `hf://owner/repo[@rev]/path` reference (downloaded, then read), or a `.polar` /
  `.polar.json` / `.polar.safetensors` file.
- `open_weights(source)` opens a *weights* source lazily and returns a `WeightSource` that
  yields `(state-dict key, tensor)` pairs in model order, one tensor at a time:

  ==============================  ===========================================================
  source                          how it is read
  ==============================  ===========================================================
  torchvision model name          ``alexnet``, ``vgg16``, ``resnet18``, ``mobilenet_v2``, ...:
                                  the ImageNet ``DEFAULT`` weights, from torch's hub cache
                                  (downloaded there once; needs network the first time).
                                  Grouped/depthwise convs report their group count.
  ``*.safetensors``               ``safetensors.safe_open``: only the header is parsed; each
                                  tensor is memory-mapped when asked for, never the whole file.
  ``*.pt`` / ``*.pth`` / ...      ``torch.load(weights_only=True, mmap=True)`` (falls back to a
                                  plain load for the pre-1.6 pickle format). A bare state_dict,
                                  or a checkpoint dict holding one under ``state_dict``,
                                  ``model_state_dict`` or ``model``; a ``module.`` prefix
                                  (DataParallel) is stripped.
  ``*.npz``                       one array per member, each read when asked for
                                  (``allow_pickle=False``).
  ``*.npy``                       a pickled dict ``{layer: [kernel, bias]}`` (or ``{layer:
                                  {"weights": .., "biases": ..}}``) as written by the
                                  caffe-tensorflow converter, e.g. ``bvlc_alexnet.npy``.
                                  **Reading it needs ``allow_pickle=True``: unpickling can run
                                  arbitrary code, so only open .npy files you trust.**
  ``hf://owner/repo[@rev]/path``  downloaded through `polarpack.hub`, then read as the file it is.
  ==============================  ===========================================================

  The file format is recognised by content (magic bytes), falling back to the suffix.
  Model order: torch pickles and torchvision models keep it; safetensors files and pickled
  .npy dicts do not record it, so their tensors come in `model_order_key` order (natural name
  order, "features.2" before "features.10", with classifier heads last).

Kernel layout. PyTorch stores conv kernels as OIHW (out, in, kh, kw); TensorFlow/Keras/Caffe
converters store HWIO (kh, kw, in, out). Every `WeightSource` yields OIHW (and 2-D matrices as
(out, in)). ``layout="auto"`` (the default) treats a 4-D kernel as HWIO when its first two dims
are equal and small (<= 11) and its last two are not equal -- e.g. Caffe AlexNet's
(11, 11, 3, 96) -- and as OIHW otherwise. Kernels the rule cannot tell apart, like
(3, 3, 64, 64), follow the rest of the file: when the decidable kernels of a file are all HWIO
(none looks like OIHW, e.g. (96, 3, 11, 11)), every 4-D kernel of that file is read as HWIO
and its 2-D matrices as (in, out); when they are all OIHW, none is transposed; a file with both
is decided kernel by kernel. The rule is applied to .npy/.npz files and to safetensors files
not marked ``format: pt``; torch pickles and torchvision models are always OIHW under "auto".
``layout="oihw"`` or ``"hwio"`` forces the layout for the whole source; ``"hwio"`` also turns
2-D matrices from (in, out) into (out, in) and n-D conv kernels (k..., in, out) into
(out, in, k...).
"""

from __future__ import annotations

import difflib
import json
import os
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

from .errors import FormatError, SourceError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .format import Distribution

LAYOUTS = ("auto", "oihw", "hwio")
HUB_PREFIX = "hf://"
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".tar", ".npz", ".npy")
_TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".tar")
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")
_HWIO_MAX_KERNEL = 11

# safetensors dtype codes -> torch dtype names
_ST_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}
_FLOAT_NAMES = ("float64", "float32", "float16", "bfloat16")


# -- distributions ---------------------------------------------------------------------------


def load_distribution(
    ref: Any,
    *,
    endpoint: str | None = None,
    token: str | None = None,
    revision: str | None = None,
) -> "Distribution":
    """A distribution from a preset (`paper:alexnet`), an `hf://owner/repo[@rev]/path`
    reference, or a `.polar` / `.polar.json` / `.polar.safetensors` file.

    A `Distribution` passes through unchanged. A missing file raises `FormatError` naming the
    file and suggesting the presets."""
    return resolve_distribution(ref, endpoint=endpoint, token=token, revision=revision)[0]


def resolve_distribution(
    ref: Any,
    *,
    endpoint: str | None = None,
    token: str | None = None,
    revision: str | None = None,
) -> tuple["Distribution", Path | None]:
    """Like `load_distribution`, also returning the local file it was read from (None for
    presets and in-memory objects), e.g. to report the file's size."""
    from . import format as fmt
    from .presets import get_preset, is_preset

    if isinstance(ref, fmt.Distribution):
        return ref, None
    if isinstance(ref, str) and is_preset(ref):
        return get_preset(ref).distribution, None
    if isinstance(ref, str) and _is_hub_reference(ref):
        path = _hub_download(ref, endpoint=endpoint, token=token, revision=revision)
        return _load_polar_file(path, where=ref), path
    if not isinstance(ref, (str, os.PathLike)):
        raise FormatError(f"cannot read a distribution from a {type(ref).__name__}; pass a path, preset or hf:// reference")
    path = Path(ref)
    return _load_polar_file(path, where=str(path)), path


def _load_polar_file(path: Path, *, where: str) -> "Distribution":
    from . import format as fmt

    try:
        return fmt.load(path)
    except FormatError as exc:
        kind = _sniff_format(path) if path.is_file() else None
        if kind in ("safetensors", "torch", "torch-zip", "npz", "npy") and not _is_polar_safetensors(path):
            raise FormatError(
                f"{exc}. {where} looks like a weights checkpoint, not a .polar distribution: "
                f"extract one first with `polarpack extract {where} --out dist.polar`"
            ) from None
        raise


def _is_polar_safetensors(path: Path) -> bool:
    try:
        header = _read_safetensors_header(path)
    except Exception:
        return False
    from .format import SAFETENSORS_METADATA_KEY

    return SAFETENSORS_METADATA_KEY in (header.get("__metadata__") or {})


# -- hub -------------------------------------------------------------------------------------


def _is_hub_reference(ref: str) -> bool:
    try:
        from .hub import is_hub_reference
    except ImportError:
        return ref.startswith(HUB_PREFIX)
    return bool(is_hub_reference(ref))


def _hub_download(ref: str, *, endpoint: str | None, token: str | None, revision: str | None) -> Path:
    try:
        from .hub import download
    except ImportError as exc:
        raise SourceError(f"{ref}: hf:// references need polarpack.hub, which cannot be imported ({exc})") from None
    return Path(download(ref, endpoint=endpoint, token=token, revision=revision))


# -- weights ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorInfo:
    """What is known about one tensor before reading it. `shape` is as yielded (OIHW);
    `stored_shape` as stored; `transposed` says the stored layout was HWIO-style."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # torch dtype name, e.g. "float32"; "other" when not a plain numeric type
    stored_shape: tuple[int, ...]
    transposed: bool = False

    @property
    def is_float(self) -> bool:
        return self.dtype in _FLOAT_NAMES

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


class WeightSource:
    """A lazily read set of named weight tensors.

    Iterating yields `(name, tensor)` in model order, reading one tensor at a time; `keys()`
    and `info(name)` give names, shapes and dtypes without reading any tensor data.
    `source_info` says where the weights come from (computing the file's sha256 on first
    use; `describe(sha256=False)` skips that). `groups` maps conv layer names (state-dict key
    without ".weight") to their group count when the source knows it (torchvision models,
    nn.Module objects). Use as a context manager, or call `close()`, to release file handles.
    """

    def __init__(
        self,
        infos: list[TensorInfo],
        getter: Callable[[str], "torch.Tensor"],
        *,
        info: Mapping[str, Any],
        path: Path | None = None,
        groups: Mapping[str, int] | None = None,
        layout: str = "auto",
        closer: Callable[[], None] | None = None,
        byte_ranges: Mapping[str, tuple[int, int]] | None = None,
    ) -> None:
        self._infos = {i.name: i for i in infos}
        self._ranges = dict(byte_ranges or {})
        self._order = [i.name for i in infos]
        self._getter = getter
        self._info = dict(info)
        self.path = path
        self.groups: dict[str, int] = dict(groups or {})
        self.layout = layout
        self._closer = closer
        self._sha256: str | None = None

    # -- description ---------------------------------------------------------------------
    @property
    def name(self) -> str:
        """A short human-readable name for messages: the file name or the model id."""
        return str(self._info.get("file") or self._info.get("id") or "weights")

    def sha256(self) -> str | None:
        """The sha256 of the weights file (read in chunks, cached), or None without a file."""
        if self.path is None:
            return None
        if self._sha256 is None:
            from ._io import sha256_file

            self._sha256 = sha256_file(self.path)
        return self._sha256

    def describe(self, *, sha256: bool = True) -> dict[str, Any]:
        info = dict(self._info)
        if sha256 and self.path is not None:
            info["sha256"] = self.sha256()
        return info

    @property
    def source_info(self) -> dict[str, Any]:
        return self.describe(sha256=True)

    # -- mapping-like access -------------------------------------------------------------
    def keys(self) -> list[str]:
        return list(self._order)

    def info(self, name: str) -> TensorInfo:
        return self._infos[name]

    def __contains__(self, name: object) -> bool:
        return name in self._infos

    def __len__(self) -> int:
        return len(self._order)

    def __getitem__(self, name: str) -> "torch.Tensor":
        info = self._infos[name]  # KeyError for unknown names
        tensor = self._getter(name)
        if info.transposed:
            tensor = _to_oihw(tensor)
        return tensor

    def __iter__(self) -> Iterator[tuple[str, "torch.Tensor"]]:
        for name in self._order:
            yield name, self[name]

    def items(self) -> Iterator[tuple[str, "torch.Tensor"]]:
        return iter(self)

    def prefetch(self, names: list[str]) -> None:
        """Hint the OS to start reading these tensors' bytes now (posix_fadvise WILLNEED), so the
        disk reads overlap with counting. Only for formats with known byte ranges (safetensors);
        a no-op elsewhere or where the OS lacks the call."""
        ranges = [self._ranges[n] for n in names if n in self._ranges]
        if not ranges or self.path is None or not hasattr(os, "posix_fadvise"):
            return
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return
        try:
            for offset, nbytes in sorted(ranges):
                os.posix_fadvise(fd, offset, nbytes, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)

    def close(self) -> None:
        if self._closer is not None:
            closer, self._closer = self._closer, None
            closer()

    def __enter__(self) -> "WeightSource":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"WeightSource({self.name!r}, {len(self)} tensors, type={self._info.get('type')!r})"


def open_weights(
    source: Any,
    *,
    endpoint: str | None = None,
    token: str | None = None,
    revision: str | None = None,
    layout: str = "auto",
) -> WeightSource:
    """Open `source` for lazy reading; see the module docstring for the accepted kinds.

    `source` is a torchvision model name, a path to a weights file, an `hf://` reference, an
    `nn.Module` or a `{name: tensor}` mapping. `layout` is "auto", "oihw" or "hwio" (see the
    module docstring: "auto" recognises HWIO kernels such as (11, 11, 3, 96) in numpy and
    non-PyTorch safetensors files). Errors are `SourceError`s naming the source and saying
    what to do (e.g. how to pass a local file when a torchvision download is impossible)."""
    if layout not in LAYOUTS:
        raise SourceError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    if isinstance(source, WeightSource):
        return source
    import torch

    if isinstance(source, torch.nn.Module):
        return _open_module(source, layout=layout)
    if isinstance(source, Mapping):
        return _open_mapping(source, info={"type": "manual", "id": "state_dict"}, layout=layout, native="oihw")
    if not isinstance(source, (str, os.PathLike)):
        raise SourceError(f"cannot read weights from a {type(source).__name__}; pass a model name, file path or hf:// reference")
    text = os.fspath(source)
    if isinstance(text, bytes):
        text = text.decode()
    if _is_hub_reference(text):
        path = _hub_download(text, endpoint=endpoint, token=token, revision=revision)
        info: dict[str, Any] = {"type": "hub", "id": text[len(HUB_PREFIX):], "hub": text}
        if revision:
            info["revision"] = revision
        if endpoint:
            info["endpoint"] = endpoint
        return _open_file(path, layout=layout, info=info, where=text)
    path = Path(text)
    if path.exists():
        return _open_file(path, layout=layout, info={"type": "file", "id": path.name}, where=text)
    if _looks_like_model_name(text):
        return _open_torchvision(text, layout=layout)
    raise SourceError(
        f"{text}: no such file; pass an existing weights file (.safetensors, .pt/.pth, .npz, .npy), "
        "a torchvision model name (e.g. mobilenet_v2) or an hf://owner/repo/path reference"
    )


def load_state_dict(
    source: Any,
    *,
    endpoint: str | None = None,
    token: str | None = None,
    revision: str | None = None,
    layout: str = "auto",
    unsafe_allow_pickle: bool = False,
) -> dict[str, "torch.Tensor"]:
    """All tensors of `source` as a plain `{state-dict key: tensor}` dict in model order,
    copied into memory (contiguous, OIHW), detached from the file. Built on `open_weights`."""
    import torch

    ws = open_weights(source, endpoint=endpoint, token=token, revision=revision, layout=layout)
    try:
        return {name: t.detach().clone(memory_format=torch.contiguous_format) for name, t in ws}
    finally:
        if ws is not source:  # close only what we opened
            ws.close()


# -- layout ----------------------------------------------------------------------------------


def looks_hwio(shape: tuple[int, ...]) -> bool:
    """The "auto" rule: a 4-D kernel is HWIO when its first two dims are equal and <= 11 and
    its last two dims differ, e.g. (11, 11, 3, 96) or (3, 3, 192, 384)."""
    return (
        len(shape) == 4
        and shape[0] == shape[1]
        and shape[0] <= _HWIO_MAX_KERNEL
        and shape[2] != shape[3]
    )


def looks_oihw(shape: tuple[int, ...]) -> bool:
    """The mirror rule: last two dims equal and <= 11, first two differ, e.g. (96, 3, 11, 11)."""
    return len(shape) == 4 and shape[2] == shape[3] and shape[2] <= _HWIO_MAX_KERNEL and shape[0] != shape[1]


def _file_layout(shapes: list[tuple[int, ...]]) -> str | None:
    """"hwio" / "oihw" when the file's 4-D kernels that the rules can decide all agree, None when
    they disagree or none is decidable (e.g. only (3, 3, 64, 64)-like kernels)."""
    kernels = [s for s in shapes if len(s) == 4]
    hwio = any(looks_hwio(s) for s in kernels)
    oihw = any(looks_oihw(s) for s in kernels)
    if hwio and not oihw:
        return "hwio"
    if oihw and not hwio:
        return "oihw"
    return None


def _transpose_decision(shape: tuple[int, ...], layout: str, native: str, file_layout: str | None = None) -> bool:
    """True when a tensor stored with `shape` must be transposed to OIHW / (out, in)."""
    if layout == "oihw":
        return False
    if layout == "hwio":
        return len(shape) >= 2
    # auto
    if native != "detect":
        return False
    if file_layout == "hwio":  # a TensorFlow/Caffe-style file: every kernel and matrix is (..., in, out)
        return len(shape) in (2, 4)
    if file_layout == "oihw":
        return False
    return looks_hwio(shape)  # undecided or mixed file: kernel by kernel


def _oihw_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(shape) == 2:
        return (shape[1], shape[0])
    return (shape[-1], shape[-2], *shape[:-2])


def _to_oihw(tensor: "torch.Tensor") -> "torch.Tensor":
    nd = tensor.dim()
    if nd == 2:
        return tensor.t()
    return tensor.permute(nd - 1, nd - 2, *range(nd - 2))


def _infos_for(
    entries: list[tuple[str, tuple[int, ...], str]], *, layout: str, native: str
) -> list[TensorInfo]:
    infos = []
    file_layout = _file_layout([shape for _, shape, dtype in entries if dtype in _FLOAT_NAMES])
    for name, shape, dtype in entries:
        # only weight-like tensors are transposed; biases and 1-D parameters never are
        transpose = len(shape) >= 2 and dtype in _FLOAT_NAMES and _transpose_decision(shape, layout, native, file_layout)
        infos.append(
            TensorInfo(
                name=name,
                shape=_oihw_shape(shape) if transpose else shape,
                dtype=dtype,
                stored_shape=shape,
                transposed=transpose,
            )
        )
    return infos


# -- in-memory sources -----------------------------------------------------------------------


def _dtype_name(dtype: Any) -> str:
    text = str(dtype)
    text = text.removeprefix("torch.")
    return text if text in _ST_DTYPES.values() else "other"


def _open_mapping(tensors: Mapping[str, Any], *, info: Mapping[str, Any], layout: str, native: str,
                  path: Path | None = None, groups: Mapping[str, int] | None = None,
                  closer: Callable[[], None] | None = None) -> WeightSource:
    import torch

    tensors = {k: v for k, v in tensors.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    entries = [(k, tuple(v.shape), _dtype_name(v.dtype)) for k, v in tensors.items()]
    return WeightSource(
        _infos_for(entries, layout=layout, native=native),
        tensors.__getitem__,
        info=info,
        path=path,
        groups=groups,
        layout=layout,
        closer=closer,
    )


def _module_groups(model: Any) -> dict[str, int]:
    import torch

    return {
        name: int(m.groups)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.modules.conv._ConvNd) and int(m.groups) > 1
    }


def _open_module(model: Any, *, layout: str) -> WeightSource:
    sd = model.state_dict()
    return _open_mapping(
        sd,
        info={"type": "manual", "id": type(model).__name__},
        layout=layout,
        native="oihw",
        groups=_module_groups(model),
    )


# -- files -----------------------------------------------------------------------------------


def _sniff_format(path: Path) -> str | None:
    """'safetensors', 'torch-zip', 'torch' (legacy pickle), 'npz', 'npy' or None."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError:
        return None
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError):
            return "torch-zip" if path.suffix.lower() in _TORCH_SUFFIXES else "zip?"
        if any(n.endswith("data.pkl") for n in names):
            return "torch-zip"
        if names and all(n.endswith(".npy") for n in names):
            return "npz"
        return "zip?"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    if head[:1] == b"\x80":
        return "torch"
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return "safetensors"
    if suffix in _TORCH_SUFFIXES:
        return "torch"
    if suffix in (".npz", ".npy"):
        return suffix[1:]
    return None


def _open_file(path: Path, *, layout: str, info: dict[str, Any], where: str) -> WeightSource:
    if path.is_dir():
        found = sorted(p.name for p in path.iterdir() if p.suffix.lower() in WEIGHT_SUFFIXES)
        hint = f" (it holds {', '.join(found[:5])})" if found else ""
        raise SourceError(f"{where}: is a directory; pass one weights file (.safetensors, .pt/.pth, .npz, .npy){hint}")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise SourceError(f"{where}: cannot read ({exc.strerror})") from None
    if size == 0:
        raise SourceError(f"{where}: the file is empty")
    kind = _sniff_format(path)
    info = {**info, "file": path.name}
    if kind == "safetensors":
        info["format"] = "safetensors"
        return _open_safetensors(path, layout=layout, info=info, where=where)
    if kind in ("torch", "torch-zip"):
        info["format"] = "pytorch"
        return _open_torch(path, layout=layout, info=info, where=where, mmap=kind == "torch-zip")
    if kind == "npz":
        info["format"] = "npz"
        return _open_npz(path, layout=layout, info=info, where=where)
    if kind == "npy":
        info["format"] = "npy"
        return _open_npy(path, layout=layout, info=info, where=where)
    raise SourceError(
        f"{where}: unrecognised weights format; expected safetensors, a PyTorch checkpoint (.pt/.pth), "
        ".npz or .npy"
    )


def _read_safetensors_header(path: Path) -> dict[str, Any]:
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ValueError("file shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", head)
        if n > path.stat().st_size - 8:
            raise ValueError(f"header length {n} exceeds the file size")
        return json.loads(fh.read(n))


_HEAD_PREFIXES = ("classifier", "fc", "head", "heads", "last_linear", "logits")


def natural_key(name: str) -> tuple:
    """Sort key that orders 'features.2' before 'features.10' (model order for Sequentials)."""
    return tuple(int(p) if i % 2 else p for i, p in enumerate(re.split(r"(\d+)", name)))


def model_order_key(name: str) -> tuple:
    """Best-effort model order for formats that do not record it (safetensors, pickled .npy
    dicts): natural name order, with top-level classifier heads (classifier, fc, head, heads,
    last_linear, logits) last. Exact for torchvision's Sequential-style CNNs (alexnet, vgg,
    resnet, mobilenet, efficientnet); for others check `polarpack inspect` and pick layers with
    --layers when the order matters."""
    return (name.split(".", 1)[0] in _HEAD_PREFIXES, natural_key(name))


def _open_safetensors(path: Path, *, layout: str, info: dict[str, Any], where: str) -> WeightSource:
    from safetensors import safe_open

    try:
        handle = safe_open(str(path), framework="pt")
        meta = handle.metadata() or {}
        names = list(handle.keys())
        entries = []
        for name in names:
            sl = handle.get_slice(name)
            entries.append((name, tuple(int(s) for s in sl.get_shape()), _ST_DTYPES.get(sl.get_dtype(), "other")))
    except Exception as exc:  # SafetensorError, OSError, ...
        raise SourceError(f"{where}: not a readable safetensors file ({exc}); is it truncated or corrupt?") from None
    # safetensors does not record model order (writers sort by dtype and name): see model_order_key
    entries.sort(key=lambda e: model_order_key(e[0]))
    native = "oihw" if str(meta.get("format", "")).lower() in ("pt", "pytorch", "torch") else "detect"
    try:
        # byte ranges of the tensors, for prefetch(); safe_open has validated the header already
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        base = 8 + n
        ranges = {
            k: (base + int(v["data_offsets"][0]), int(v["data_offsets"][1]) - int(v["data_offsets"][0]))
            for k, v in header.items()
            if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v
        }
    except Exception:
        ranges = {}

    def get(name: str):
        try:
            return handle.get_tensor(name)
        except Exception as exc:
            raise SourceError(f"{where}: cannot read tensor {name!r} ({exc}); is the file truncated?") from None

    def close() -> None:
        exit_ = getattr(handle, "__exit__", None)
        if exit_ is not None:
            try:
                exit_(None, None, None)
            except Exception:
                pass

    return WeightSource(
        _infos_for(entries, layout=layout, native=native),
        get,
        info=info,
        path=path,
        layout=layout,
        closer=close,
        byte_ranges=ranges,
    )


def _torch_load(path: Path, *, where: str, mmap: bool) -> Any:
    import pickle

    import torch

    def load(use_mmap: bool):
        return torch.load(path, map_location="cpu", weights_only=True, mmap=use_mmap)

    try:
        try:
            return load(mmap)
        except (RuntimeError, ValueError) as exc:
            if not mmap:
                raise
            # mmap needs the zipfile format (torch >= 1.6); older files load without it
            del exc
            return load(False)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() or "weights_only" in str(exc).lower():
            raise SourceError(
                f"{where}: holds pickled Python objects, not just tensors; polarpack loads checkpoints "
                "with weights_only=True for safety. Re-save the weights with "
                "torch.save(model.state_dict(), path) or as safetensors"
            ) from None
        raise SourceError(f"{where}: not a readable PyTorch checkpoint ({_first_line(exc)}); is it truncated or corrupt?") from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile, struct.error, KeyError, AttributeError) as exc:
        raise SourceError(f"{where}: not a readable PyTorch checkpoint ({_first_line(exc)}); is it truncated or corrupt?") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _tensor_dict(obj: Any) -> dict[str, Any] | None:
    import torch

    if not isinstance(obj, Mapping):
        return None
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    return tensors or None


def _find_state_dict(obj: Any, *, where: str) -> dict[str, Any]:
    sd = _tensor_dict(obj)
    if sd is None and isinstance(obj, Mapping):
        for key in _STATE_DICT_KEYS:
            sd = _tensor_dict(obj.get(key))
            if sd is not None:
                break
    if sd is None:
        if isinstance(obj, Mapping):
            keys = ", ".join(repr(k) for k in list(obj)[:8])
            what = f"a dict with keys {keys}" if obj else "an empty dict"
        else:
            what = f"a {type(obj).__name__}"
        raise SourceError(
            f"{where}: holds {what}, not a state_dict; expected {{name: tensor}} or a checkpoint dict "
            f"with the state_dict under one of {', '.join(_STATE_DICT_KEYS)}"
        )
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _open_torch(path: Path, *, layout: str, info: dict[str, Any], where: str, mmap: bool,
                groups: Mapping[str, int] | None = None, order: list[str] | None = None) -> WeightSource:
    obj = _torch_load(path, where=where, mmap=mmap)
    sd = _find_state_dict(obj, where=where)
    if order is not None:
        sd = {k: sd[k] for k in order if k in sd} | {k: v for k, v in sd.items() if k not in set(order)}
    return _open_mapping(sd, info=info, layout=layout, native="oihw", path=path, groups=groups)


def _np_dtype_name(dtype: Any) -> str:
    import numpy as np

    try:
        return _dtype_name(np.dtype(dtype).name)
    except TypeError:
        return "other"


def _np_to_torch(arr: Any):
    import numpy as np
    import torch

    arr = np.asarray(arr)
    if arr.dtype.byteorder not in ("=", "|") and arr.dtype.byteorder != ("<" if np.little_endian else ">"):
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if not arr.flags.writeable:
        arr = arr.copy()
    return torch.from_numpy(arr)


_NP_WEIGHT_SUFFIX = re.compile(r"(?:[/._](?:kernel|weights|weight|W|w))(?::0)?$")
_NP_BIAS_SUFFIX = re.compile(r"(?:[/._](?:biases|bias|b))(?::0)?$")


def _np_name(key: str) -> str:
    """Normalise TF/Caffe-style names ('conv1/kernel:0', 'conv1/weights') to 'conv1.weight'."""
    m = _NP_WEIGHT_SUFFIX.search(key)
    if m:
        return key[: m.start()].replace("/", ".") + ".weight"
    m = _NP_BIAS_SUFFIX.search(key)
    if m:
        return key[: m.start()].replace("/", ".") + ".bias"
    return key.replace("/", ".").removesuffix(":0")


def _npy_header(fh) -> tuple[tuple[int, ...], Any]:
    """Shape and dtype of a .npy stream from its header alone (no data read)."""
    import numpy as np

    fmt = np.lib.format
    version = fmt.read_magic(fh)
    if version == (1, 0):
        shape, _fortran, dtype = fmt.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, _fortran, dtype = fmt.read_array_header_2_0(fh)
    else:  # (3, 0): utf-8 field names; numpy has no public reader for it
        shape, _fortran, dtype = fmt._read_array_header(fh, version)
    return shape, dtype


def _open_npz(path: Path, *, layout: str, info: dict[str, Any], where: str) -> WeightSource:
    import numpy as np

    try:
        npz = np.load(path, allow_pickle=False)
        entries = []
        members: dict[str, str] = {}
        with zipfile.ZipFile(path) as zf:
            for key in npz.files:
                with zf.open(key + ".npy") as fh:
                    shape, dtype = _npy_header(fh)
                name = _np_name(key)
                members[name] = key
                entries.append((name, tuple(int(s) for s in shape), _np_dtype_name(dtype)))
    except SourceError:
        raise
    except Exception as exc:
        raise SourceError(f"{where}: not a readable .npz file ({_first_line(exc)}); is it truncated or corrupt?") from None

    def get(name: str):
        try:
            return _np_to_torch(npz[members[name]])
        except ValueError as exc:
            raise SourceError(f"{where}: member {members[name]!r} cannot be read without pickle ({exc}); "
                              "store plain numeric arrays") from None

    return WeightSource(
        _infos_for(entries, layout=layout, native="detect"),
        get,
        info=info,
        path=path,
        layout=layout,
        closer=npz.close,
    )


def _open_npy(path: Path, *, layout: str, info: dict[str, Any], where: str) -> WeightSource:
    import numpy as np

    try:
        # allow_pickle=True is required for a dict of arrays; unpickling can run code, so only
        # open .npy files you trust. encoding="latin1" reads Python 2 pickles (Caffe converters).
        obj = np.load(path, allow_pickle=True, encoding="latin1")
    except Exception as exc:
        raise SourceError(f"{where}: not a readable .npy file ({_first_line(exc)}); is it truncated or corrupt?") from None
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        obj = obj.item()
    if not isinstance(obj, dict):
        what = f"a single {obj.dtype} array of shape {tuple(obj.shape)}" if isinstance(obj, np.ndarray) else type(obj).__name__
        raise SourceError(
            f"{where}: holds {what}, not a dict of layers; expected {{layer: [kernel, bias]}} "
            "(as in Caffe-converted bvlc_alexnet.npy) -- save several arrays with np.savez instead"
        )
    tensors: dict[str, Any] = {}
    for layer in sorted(obj, key=lambda k: model_order_key(str(k))):
        value = obj[layer]
        layer = str(layer)
        if isinstance(value, dict):
            for k, v in value.items():
                tensors[_np_name(f"{layer}/{k}")] = v
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                suffix = {0: "weight", 1: "bias"}.get(i, str(i))
                tensors[f"{layer}.{suffix}"] = v
        else:
            tensors[_np_name(layer)] = value
    converted = {}
    for name, arr in tensors.items():
        arr = np.asarray(arr)
        if arr.dtype.kind in "fiub":
            converted[name] = _np_to_torch(arr)
    # pickled dicts from Python 2 have no meaningful order: layers come in model_order_key order
    return _open_mapping(converted, info=info, layout=layout, native="detect", path=path)


# -- torchvision -----------------------------------------------------------------------------


def _looks_like_model_name(text: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", text)) and not text.lower().endswith(WEIGHT_SUFFIXES)


def torchvision_models() -> list[str]:
    """Names accepted as torchvision sources (every registered torchvision model)."""
    import torchvision

    return sorted(torchvision.models.list_models())


def _open_torchvision(name: str, *, layout: str) -> WeightSource:
    import torch
    import torchvision

    known = torchvision_models()
    if name not in known:
        classification = torchvision.models.list_models(module=torchvision.models)
        close = difflib.get_close_matches(name.lower(), known, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise SourceError(
            f"{name!r} is not a file and not a torchvision model name; {hint}"
            f"torchvision classification models include {', '.join(classification[:8])}, ... "
            "(see torchvision.models.list_models()); or pass a weights file path or an hf:// reference"
        )
    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
    except Exception as exc:
        raise SourceError(f"torchvision model {name!r} has no pretrained weights ({exc})") from None
    url = weights.url
    filename = os.path.basename(url)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if not cached.is_file():
        _download_torchvision(name, url, cached)
    # the model's structure, built on the meta device (no memory, no init cost): module order,
    # state-dict keys and group counts
    try:
        with torch.device("meta"):
            model = torchvision.models.get_model(name)
    except Exception:
        model = torchvision.models.get_model(name)
    groups = _module_groups(model)
    model_keys = list(model.state_dict().keys())
    info = {
        "type": "torchvision",
        "id": name,
        "weights": f"{type(weights).__name__}.{weights.name}",
        "url": url,
        "file": filename,
        "format": "pytorch",
        "torchvision_version": torchvision.__version__.split("+")[0],
    }
    ws = _open_torch(cached, layout=layout, info=info, where=str(cached), mmap=zipfile.is_zipfile(cached),
                     groups=groups, order=model_keys)
    if set(ws.keys()) != set(model_keys):
        # legacy key names (e.g. densenet's 'norm.1'): let torchvision's own loader remap them
        model = torchvision.models.get_model(name, weights=weights)
        ws = _open_mapping(model.state_dict(), info=info, layout=layout, native="oihw", path=cached, groups=groups)
    return ws


def _download_torchvision(name: str, url: str, cached: Path) -> None:
    import torch
    from torch.hub import HASH_REGEX

    filename = cached.name
    match = HASH_REGEX.search(filename)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(cached), hash_prefix=match.group(1) if match else None, progress=False)
    except OSError as exc:  # URLError, HTTPError, socket timeouts, disk errors
        reason = getattr(exc, "reason", None) or exc
        raise SourceError(
            f"torchvision model {name!r}: downloading its pretrained weights from {url} failed "
            f"({_first_line(reason)}); this needs network access. Without network, get the file elsewhere "
            f"and pass it as a local file, e.g. `polarpack extract ./{filename} --out {name}.polar` "
            f"(or copy it to {cached})"
        ) from None
    except Exception as exc:  # e.g. a hash mismatch of a corrupted download
        raise SourceError(
            f"torchvision model {name!r}: the download from {url} failed ({_first_line(exc)}); try again, "
            f"or pass a local copy of {filename} as the source"
        ) from None
