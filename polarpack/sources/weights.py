"""Where weights and distributions come from.

Distributions (`load_distribution`): a `paper:*` preset, an ``hf://owner/repo[@rev]/path`` reference
(downloaded by `polarpack.sources.hub`) or a ``.polar`` / ``.polar.safetensors`` file.

Weights (`open_weights`, `load_state_dict`), read lazily, one tensor at a time, in model order:

- a torchvision model name (``alexnet``, ``mobilenet_v2``, ...): its DEFAULT ImageNet weights,
  downloaded once into torch's hub cache by torchvision; group counts come from the model;
- ``.safetensors``: ``safe_open``, each tensor memory-mapped when it is asked for;
- ``.pt`` ``.pth`` ``.bin`` ``.ckpt`` ``.tar``: ``torch.load(weights_only=True)``, memory-mapped
  when the file is a zip; a bare state_dict or one under ``state_dict``, ``model_state_dict`` or
  ``model``; a ``module.`` prefix (DataParallel) is stripped;
- ``.npz`` (numeric arrays; TF/Caffe names such as ``conv1/weights`` read as ``conv1.weight``), or
  ``.npy`` holding a Caffe-converted dict ``{layer: [kernel, bias]}`` (``bvlc_alexnet.npy``);
- an ``nn.Module`` or a ``{name: tensor}`` mapping.

Safety: a file's content must be what its suffix says (a ``.pth`` holding ``.npy`` bytes is an
error); a local PyTorch file whose name carries torch.hub's sha256 prefix (``name-<8+ hex>.pth``)
must match it;
object arrays in .npy/.npz are pickles, which run code when read, so they are refused unless the
caller passes ``unsafe_allow_pickle=True`` (a Caffe ``.npy`` dict is one: trust the file first).

Order: as stored for torch files and models; `model_order_key` for safetensors and .npy dicts.

Layout: kernels are yielded OIHW and matrices (out, in). ``layout="auto"`` reads torch sources as
stored; in numpy files and safetensors files not marked ``format: pt`` a 4-D kernel is HWIO when
`looks_hwio` (e.g. Caffe's (11, 11, 3, 96)), and kernels the rule cannot decide, like (3, 3, 64,
64), follow the file's decidable kernels (all HWIO: every kernel and matrix is transposed; all OIHW:
none is). ``"oihw"`` / ``"hwio"`` force one layout for the whole source.
"""

from __future__ import annotations

import contextlib
import difflib
import math
import os
import pickle
import re
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch
from safetensors import safe_open

from polarpack import format as fmt
from polarpack._io import check_regular_file, sha256_file
from polarpack.errors import FormatError, SourceError
from polarpack.redact import public_url
from polarpack.sources.presets import get_preset
from polarpack.sources.references import is_hub_reference, is_preset

LAYOUTS = ("auto", "oihw", "hwio")
FLOAT_DTYPES = ("float64", "float32", "float16", "bfloat16")
SUFFIX_FORMATS = {
    ".safetensors": "safetensors",
    ".npz": "npz",
    ".npy": "npy",
    **dict.fromkeys((".pt", ".pth", ".bin", ".ckpt", ".tar"), "pytorch"),
}
FORMAT_NAMES = {
    "safetensors": "safetensors file",
    "pytorch": "PyTorch checkpoint",
    "npz": ".npz archive",
    "npy": ".npy array file",
}
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")
_HEADS = ("classifier", "fc", "head", "heads", "last_linear", "logits")
_ST_FLOATS = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}
NPZ_MAX_RATIO = 16  # uncompressed : compressed, beyond a 64 MiB allowance
_PICKLE_HINT = (
    "if you trust the file, pass unsafe_allow_pickle=True (polarpack extract --unsafe-allow-pickle)"
)


# -- distributions ---------------------------------------------------------------------------


def load_distribution(
    ref: Any, *, endpoint: str | None = None, token: str | None = None, revision: str | None = None
) -> fmt.Distribution:
    """A `Distribution` from a preset, an hf:// reference or a .polar file (one passes through)."""
    return resolve_distribution(ref, endpoint=endpoint, token=token, revision=revision)[0]


def resolve_distribution(
    ref: Any, *, endpoint: str | None = None, token: str | None = None, revision: str | None = None
) -> tuple[fmt.Distribution, Path | None]:
    """Like `load_distribution`, also returning the local file read (None for presets and
    objects)."""
    if isinstance(ref, fmt.Distribution):
        return ref, None
    if is_preset(ref):
        return get_preset(ref).distribution, None
    if is_hub_reference(ref):  # bounded download; errors name the reference, not the cache path
        from polarpack.sources.hub import pull_file

        return pull_file(ref, endpoint=endpoint, token=token, revision=revision)
    if not isinstance(ref, (str, os.PathLike)):
        raise FormatError(
            f"cannot read a distribution from a {type(ref).__name__}; pass a path, preset or hf:// "
            "reference"
        )
    path = Path(ref)
    try:
        return fmt.load(path), path
    except FormatError as exc:
        if path.is_file() and _weights_format(path):
            raise FormatError(
                f"{exc}. {ref} looks like a weights checkpoint, not a .polar distribution: "
                f"extract one first with `polarpack extract {ref} --out dist.polar`"
            ) from None
        raise


# -- weights ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorInfo:
    """A tensor before it is read: `shape` as yielded (OIHW), `transposed` when stored
    HWIO-style."""

    shape: tuple[int, ...]
    dtype: str  # torch's name ("float32", "int8", ...) or the file's own ("F8_E4M3", "C64", ...)
    transposed: bool = False
    is_float = property(lambda self: self.dtype in FLOAT_DTYPES)
    numel = property(lambda self: math.prod(self.shape))


@dataclass
class WeightSource(contextlib.AbstractContextManager):
    """Named tensors read lazily in model order: `infos` (shapes, dtypes) reads no tensor data,
    iterating reads one tensor at a time. `groups` maps conv layer names to their group count where
    the source knows it. A context manager: closing releases the file."""

    infos: dict[str, TensorInfo]
    getter: Callable[[str], torch.Tensor]
    source: dict[str, Any]  # where the weights come from, for a distribution's `source`
    path: Path | None = None
    groups: dict[str, int] = field(default_factory=dict)
    closer: Callable[[], Any] | None = None
    digest: str | None = None  # the file's sha256, once computed

    # for messages
    name = property(lambda self: str(self.source.get("file") or self.source.get("id") or "weights"))

    def describe(self, *, sha256: bool = True) -> dict[str, Any]:
        """`source`, with the file's sha256 when asked (hashing reads the whole file, once)."""
        if not sha256 or self.path is None:
            return dict(self.source)
        self.digest = self.digest or sha256_file(self.path)
        return self.source | {"sha256": self.digest}

    def __getitem__(self, name: str) -> torch.Tensor:
        t = self.getter(name)
        if not self.infos[name].transposed:
            return t
        return t.t() if t.dim() == 2 else t.permute(t.dim() - 1, t.dim() - 2, *range(t.dim() - 2))

    def __iter__(self):
        return ((name, self[name]) for name in self.infos)

    def close(self) -> None:
        closer, self.closer = self.closer, None
        if closer is not None:
            closer()

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_weights(
    source: Any,
    *,
    endpoint: str | None = None,
    token: str | None = None,
    revision: str | None = None,
    layout: str = "auto",
    unsafe_allow_pickle: bool = False,
) -> WeightSource:
    """Open `source` (see the module docstring) for lazy reading; errors are one-line `SourceError`s
    naming the source and the fix."""
    if layout not in LAYOUTS:
        raise SourceError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    if isinstance(source, WeightSource):
        return source
    if isinstance(source, torch.nn.Module):
        info = {"type": "manual", "id": type(source).__name__}
        return _from_mapping(
            source.state_dict(), info, layout, native=True, groups=_module_groups(source)
        )
    if isinstance(source, Mapping):
        return _from_mapping(source, {"type": "manual", "id": "state_dict"}, layout, native=True)
    if not isinstance(source, (str, os.PathLike)):
        raise SourceError(
            f"cannot read weights from a {type(source).__name__}; pass a model name, file or hf:// "
            "reference"
        )
    text = os.fspath(source)
    if is_hub_reference(text):
        from polarpack.sources.hub import download

        info = {
            "type": "hub",
            "id": text.removeprefix("hf://"),
            "hub": text,
            "revision": revision,
            "endpoint": public_url(endpoint) if endpoint else None,
        }
        path = download(text, endpoint=endpoint, token=token, revision=revision)
        return _open_file(
            path, {k: v for k, v in info.items() if v}, text, layout, unsafe_allow_pickle
        )
    if Path(text).exists():
        return _open_file(
            Path(text), {"type": "file", "id": Path(text).name}, text, layout, unsafe_allow_pickle
        )
    if re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", text):
        return _open_torchvision(text, layout)
    raise SourceError(
        f"{text}: no such file; pass an existing weights file (.safetensors, .pt/.pth, .npz, "
        ".npy), a torchvision model name (e.g. mobilenet_v2) or an hf://owner/repo/path reference"
    )


def load_state_dict(
    source: Any,
    *,
    endpoint: str | None = None,
    token: str | None = None,
    revision: str | None = None,
    layout: str = "auto",
    unsafe_allow_pickle: bool = False,
) -> dict[str, torch.Tensor]:
    """Every tensor of `source` in model order, copied into memory (contiguous, OIHW)."""
    ws = open_weights(
        source,
        endpoint=endpoint,
        token=token,
        revision=revision,
        layout=layout,
        unsafe_allow_pickle=unsafe_allow_pickle,
    )
    try:
        return {name: t.detach().clone(memory_format=torch.contiguous_format) for name, t in ws}
    finally:
        if ws is not source:
            ws.close()


def model_order_key(name: str) -> tuple:
    """Model order for files that do not record it: natural name order ('features.2' before
    'features.10'), top-level heads (classifier, fc, head, ...) last. Exact for torchvision's
    Sequential-style CNNs; check others with `polarpack inspect`."""
    parts = re.split(r"(\d+)", name)
    return (name.split(".", 1)[0] in _HEADS, *(int(p) if i % 2 else p for i, p in enumerate(parts)))


# -- layout ----------------------------------------------------------------------------------


def looks_hwio(shape: tuple[int, ...]) -> bool:
    """First two dims equal and <= 11, last two different: (11, 11, 3, 96), (3, 3, 192, 384)."""
    return len(shape) == 4 and shape[0] == shape[1] <= 11 and shape[2] != shape[3]


def _infos(
    entries: list[tuple[str, tuple[int, ...], str]], layout: str, native: bool
) -> dict[str, TensorInfo]:
    """TensorInfos of (name, stored shape, dtype) entries, deciding which to transpose to OIHW."""
    kernels = [shape for _, shape, dtype in entries if dtype in FLOAT_DTYPES and len(shape) == 4]
    hwio, oihw = any(map(looks_hwio, kernels)), any(looks_hwio(s[::-1]) for s in kernels)
    infos = {}
    for name, shape, dtype in entries:
        if len(shape) < 2 or dtype not in FLOAT_DTYPES or (layout == "auto" and native):
            flip = False
        elif layout != "auto":
            flip = layout == "hwio"
        elif hwio != oihw:  # the file's decidable kernels agree: follow them
            flip = hwio and len(shape) in (2, 4)
        else:
            flip = looks_hwio(shape)
        if flip:
            shape = (shape[1], shape[0]) if len(shape) == 2 else (shape[-1], shape[-2], *shape[:-2])
        infos[name] = TensorInfo(shape, dtype, flip)
    return infos


# -- sources ---------------------------------------------------------------------------------


def _from_mapping(
    tensors: Mapping[str, Any],
    info: Mapping[str, Any],
    layout: str,
    *,
    native: bool,
    path: Path | None = None,
    groups: Mapping[str, int] | None = None,
    sha256: str | None = None,
) -> WeightSource:
    tensors = {
        k: v for k, v in tensors.items() if isinstance(k, str) and isinstance(v, torch.Tensor)
    }
    entries = [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in tensors.items()]
    return WeightSource(
        _infos(entries, layout, native),
        tensors.__getitem__,
        dict(info),
        path,
        dict(groups or {}),
        digest=sha256,
    )


def _module_groups(model: torch.nn.Module) -> dict[str, int]:
    return {
        name: int(m.groups)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.modules.conv._ConvNd) and m.groups > 1
    }


def _content_format(path: Path) -> str | None:
    """The weights format of a file by its content (magic bytes, zip members), None if none."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"\x80"):  # a pickle: torch's legacy (pre-1.6) format
        return "pytorch"
    if head[8:9] == b"{" and b"\x00" in head[:8]:
        return "safetensors"
    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    if any(n.endswith("data.pkl") for n in names):
        return "pytorch"
    return "npz" if names and all(n.endswith(".npy") for n in names) else None


def _weights_format(path: Path) -> str | None:
    """The format of a file that really is a readable weights file (not a .polar, damaged or
    not)."""
    kind = _content_format(path)
    if kind != "safetensors":
        return kind
    try:
        with safe_open(str(path), framework="pt") as handle:
            return None if fmt.METADATA_KEY in (handle.metadata() or {}) else kind
    except Exception:
        return None


def _verified_sha256(path: Path, where: str) -> str | None:
    """torch.hub names carry the first hex digits of the file's sha256 (`name-b0353104.pth`): check
    them, since a corrupted legacy pickle otherwise loads silently. None when the name has none."""
    match = torch.hub.HASH_REGEX.search(path.name)
    if not match or len(match.group(1)) < 8:
        return None
    digest, prefix = sha256_file(path), match.group(1)
    if not digest.startswith(prefix):
        raise SourceError(
            f"{where}: the file is corrupt: its name carries sha256 prefix {prefix} but its sha256 "
            f"is {digest[: len(prefix)]}...; download it again (or rename it if -{prefix} is not "
            "a hash)"
        )
    return digest


def _open_file(
    path: Path, info: dict[str, Any], where: str, layout: str, unsafe_allow_pickle: bool
) -> WeightSource:
    if path.is_dir():
        raise SourceError(
            f"{where}: is a directory; pass one weights file (.safetensors, .pt/.pth, .npz, .npy)"
        )
    check_regular_file(path, what="weights")  # a FIFO or /dev/zero would hang or fill memory
    expected, found = SUFFIX_FORMATS.get(path.suffix.lower()), _content_format(path)
    if found is None:
        what = (
            "it is empty"
            if path.stat().st_size == 0
            else "it is none of safetensors, PyTorch, .npz, .npy"
        )
        raise SourceError(
            f"{where}: not a readable {FORMAT_NAMES.get(expected, 'weights file')} ({what}); "
            "is it truncated or corrupt?"
        )
    if expected and found != expected:
        raise SourceError(
            f"{where}: the name says {FORMAT_NAMES[expected]} ({path.suffix}) but the content is a "
            f"{FORMAT_NAMES[found]}; rename the file to match its content"
        )
    # torch.hub's convention, for its pickles; a Hub download was checked against its ETag
    checked = found == "pytorch" and info.get("type") != "hub"
    sha = _verified_sha256(path, where) if checked else None
    info = info | {"file": path.name, "format": found}
    opener = {"safetensors": _open_safetensors, "pytorch": _open_torch}.get(found, _open_numpy)
    return opener(path, info, where, layout, sha=sha, unsafe_allow_pickle=unsafe_allow_pickle)


def _open_safetensors(
    path: Path, info: dict, where: str, layout: str, *, sha: str | None, **_: Any
) -> WeightSource:
    try:
        handle = safe_open(str(path), framework="pt")
        entries = [
            (k, tuple(s.get_shape()), _ST_FLOATS.get(s.get_dtype(), s.get_dtype()))
            for k in handle.keys()
            for s in [handle.get_slice(k)]
        ]
        native = str((handle.metadata() or {}).get("format", "")).lower() in (
            "pt",
            "pytorch",
            "torch",
        )
    except Exception as exc:  # SafetensorError, OSError
        raise SourceError(
            f"{where}: not a readable safetensors file ({_first_line(exc)}); is it truncated or "
            "corrupt?"
        ) from None
    entries.sort(key=lambda e: model_order_key(e[0]))
    return WeightSource(
        _infos(entries, layout, native),
        handle.get_tensor,
        info,
        path,
        closer=lambda: handle.__exit__(None, None, None),
        digest=sha,
    )


def _open_torch(
    path: Path, info: dict, where: str, layout: str, *, sha: str | None, **_: Any
) -> WeightSource:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as exc:  # UnpicklingError, RuntimeError, EOFError, BadZipFile, ...
        if isinstance(exc, pickle.UnpicklingError) and "weights only" in str(exc).lower().replace(
            "_", " "
        ):
            raise SourceError(
                f"{where}: holds pickled Python objects, not just tensors; polarpack loads "
                "checkpoints with weights_only=True for safety. Re-save it with "
                "torch.save(model.state_dict(), path) or as safetensors"
            ) from None
        raise SourceError(
            f"{where}: not a readable PyTorch checkpoint ({_first_line(exc)}); is it truncated?"
        ) from None
    return _from_mapping(
        _find_state_dict(obj, where), info, layout, native=True, path=path, sha256=sha
    )


def _find_state_dict(obj: Any, where: str) -> dict[str, torch.Tensor]:
    """The tensors of the object itself or under one of STATE_DICT_KEYS; a `module.` prefix
    stripped."""
    found = [obj, *(obj.get(k) for k in STATE_DICT_KEYS)] if isinstance(obj, Mapping) else []
    found = [
        {k: v for k, v in d.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        for d in found
        if isinstance(d, Mapping)
    ]
    sd = next(filter(None, found), None)
    if sd is None:
        what = (
            f"a {type(obj).__name__}"
            if not isinstance(obj, Mapping)
            else (
                f"a dict with keys {', '.join(map(repr, list(obj)[:8]))}"
                if obj
                else "an empty dict"
            )
        )
        raise SourceError(
            f"{where}: holds {what}, not a state_dict; expected {{name: tensor}} or a checkpoint "
            f"dict with the state_dict under one of {', '.join(STATE_DICT_KEYS)}"
        )
    if all(k.startswith("module.") for k in sd):
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    return sd


_NP_WEIGHT = re.compile(r"[/._](?:kernel|weights|weight|W|w)(?::0)?$")
_NP_BIAS = re.compile(r"[/._](?:biases|bias|b)(?::0)?$")


def _np_name(key: str) -> str:
    """TF/Caffe-style names ('conv1/kernel:0', 'conv1/weights') -> 'conv1.weight'."""
    for pattern, suffix in ((_NP_WEIGHT, ".weight"), (_NP_BIAS, ".bias")):
        if m := pattern.search(key):
            return key[: m.start()].replace("/", ".") + suffix
    return key.replace("/", ".").removesuffix(":0")


def _refuse_zip_bomb(path: Path, where: str) -> None:
    """An .npz expands to what its zip directory declares; float weights barely compress, even
    pruned ones only a few times, so a far higher ratio is not a checkpoint but a zip bomb."""
    with zipfile.ZipFile(path) as zf:
        expanded = sum(member.file_size for member in zf.infolist())
    stored = path.stat().st_size
    if expanded > NPZ_MAX_RATIO * stored + (64 << 20):
        raise SourceError(
            f"{where}: its arrays expand to {expanded:,} bytes from {stored:,} "
            f"({expanded / stored:,.0f}:1): not weights but a zip bomb; polarpack reads .npz files "
            f"that expand at most {NPZ_MAX_RATIO}:1"
        )


def _open_numpy(
    path: Path, info: dict, where: str, layout: str, *, sha: str | None, unsafe_allow_pickle: bool
) -> WeightSource:
    """A .npz of arrays (in file order) or a pickled .npy dict of layers (in `model_order_key`
    order)."""
    if info["format"] == "npz":
        _refuse_zip_bomb(path, where)
    try:  # encoding="latin1" reads the Python 2 pickles of the Caffe converters
        obj = np.load(path, allow_pickle=unsafe_allow_pickle, encoding="latin1")
        if isinstance(obj, np.lib.npyio.NpzFile):
            with obj:
                obj = {k: obj[k] for k in obj.files}
    except Exception as exc:
        if isinstance(exc, ValueError) and "allow_pickle" in str(
            exc
        ):  # numpy refused before unpickling
            raise SourceError(
                f"{where}: holds a pickled object array, and unpickling can run arbitrary code; "
                f"polarpack reads plain numeric arrays only: {_PICKLE_HINT}"
            ) from None
        raise SourceError(
            f"{where}: not a readable {FORMAT_NAMES[info['format']]} ({_first_line(exc)}); "
            "is it truncated or corrupt?"
        ) from None
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        obj = obj.item()
    if not isinstance(obj, dict):
        what = (
            f"a single {obj.dtype} array of shape {obj.shape}"
            if isinstance(obj, np.ndarray)
            else type(obj).__name__
        )
        raise SourceError(
            f"{where}: holds {what}, not a dict of layers; expected {{layer: [kernel, bias]}} (as "
            "in Caffe-converted bvlc_alexnet.npy); save several arrays with np.savez instead"
        )
    tensors = {}
    for layer in (
        obj if info["format"] == "npz" else sorted(obj, key=lambda k: model_order_key(str(k)))
    ):
        value = obj[layer]
        if isinstance(value, dict):
            tensors |= {_np_name(f"{layer}/{k}"): v for k, v in value.items()}
        elif isinstance(value, (list, tuple)):
            tensors |= {
                f"{layer}.{('weight', 'bias')[i] if i < 2 else i}": v for i, v in enumerate(value)
            }
        else:
            tensors[_np_name(str(layer))] = value
    arrays = {k: np.asarray(v) for k, v in tensors.items()}
    arrays = {
        k: torch.from_numpy(np.require(a, a.dtype.newbyteorder("="), "CW"))
        for k, a in arrays.items()
        if a.dtype.kind in "fiubc"
    }
    return _from_mapping(arrays, info, layout, native=False, path=path, sha256=sha)


def _open_torchvision(name: str, layout: str) -> WeightSource:
    """torchvision downloads and caches the DEFAULT weights; the model, built on the meta device,
    gives the module order and group counts."""
    import torchvision

    known = torchvision.models.list_models()
    if name not in known:
        close = difflib.get_close_matches(name.lower(), known, n=3)
        raise SourceError(
            f"{name!r} is not a file and not a torchvision model name; "
            + (f"did you mean {', '.join(close)}? " if close else "")
            + "see torchvision.models.list_models(), or pass a weights file or an hf:// reference"
        )
    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
    except Exception as exc:
        raise SourceError(
            f"torchvision model {name!r} has no pretrained weights ({_first_line(exc)})"
        ) from None
    filename = os.path.basename(urlparse(weights.url).path)
    cached = Path(torch.hub.get_dir(), "checkpoints", filename)
    sha = _verified_sha256(cached, str(cached)) if cached.is_file() else None
    try:
        sd = weights.get_state_dict(
            progress=False, check_hash=True, weights_only=True, map_location="cpu"
        )
    except OSError as exc:  # URLError, timeouts, disk errors
        raise SourceError(
            f"torchvision model {name!r}: downloading {weights.url} failed ({_first_line(exc)}); "
            "this needs network access. Without it, get the file elsewhere and pass it as a local "
            f"file: `polarpack extract ./{filename} --out {name}.polar` (or copy it to {cached})"
        ) from None
    except Exception as exc:  # a hash mismatch of a corrupted download, an unreadable file
        raise SourceError(
            f"torchvision model {name!r}: reading {weights.url} failed ({_first_line(exc)}); try "
            f"again or pass a local copy of {filename}"
        ) from None
    with torch.device("meta"):
        model = torchvision.models.get_model(name)
    keys = list(model.state_dict())
    if set(sd) != set(
        keys
    ):  # legacy key names (densenet's 'norm.1'): torchvision's loader remaps them
        sd = torchvision.models.get_model(name, weights=weights).state_dict()
    info = {
        "type": "torchvision",
        "id": name,
        "weights": f"{type(weights).__name__}.{weights.name}",
        "url": weights.url,
        "file": filename,
        "format": "pytorch",
        "torchvision_version": torchvision.__version__.split("+")[0],
    }
    return _from_mapping(
        {k: sd[k] for k in keys},
        info,
        layout,
        native=True,
        path=cached,
        groups=_module_groups(model),
        sha256=sha,
    )


def _first_line(exc: BaseException) -> str:
    lines = str(getattr(exc, "reason", None) or exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__
