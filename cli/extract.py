"""`polarpack extract` (weights -> .polar file), `polarpack inspect` (read a distribution) and
`polarpack convert` (rewrite a .polar file in the current format)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import click

from polarpack._io import check_output_path
from polarpack.errors import ConfigError, PolarpackError
from polarpack.format import (
    FORMAT_VERSION,
    GRANULARITIES,
    JSON_GRANULARITIES,
    encoding_for_path,
    save,
    size_report,
)
from polarpack.sources.extraction import extract as extract_distribution
from polarpack.sources.weights import LAYOUTS, resolve_distribution

from ._common import emit_json, handle_errors, hub_options, json_option, printable


def _say(lines: list[str], *, err: bool) -> None:
    """Every line shown escaped: layer names, paths and metadata come from files and must not drive
    the terminal."""
    for line in lines:
        click.echo(printable(line), err=err)


def _parse_groups(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> dict[str, int]:
    groups = {}
    for item in (p.strip() for value in values for p in value.split(",") if p.strip()):
        name, _, count = item.rpartition("=")
        if not name or not count.strip().isdigit() or int(count) < 1:
            raise click.BadParameter(
                f"{item!r} is not NAME=G with a group count G >= 1 (e.g. conv2=2)", ctx, param
            )
        groups[name.strip()] = int(count)
    return groups


def _parse_layers(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> list[str] | None:
    return [g.strip() for v in values for g in v.split(",") if g.strip()] or None


def _int(n: int | None) -> str:
    return "?" if n is None else f"{n:,}"


def _table(dist: Any, limit: int | None = None) -> list[str]:
    head = ("layer", "kind", "shape", "weights", "p0", "p-", "p+")
    layers = dist.layers
    hidden = len(layers) - 2 * limit if limit and len(layers) > 2 * limit + 1 else 0
    shown = layers[:limit] + layers[-limit:] if hidden else layers
    rows = [head] + [
        tuple(
            map(
                printable,
                (
                    layer.name,
                    layer.kind,
                    "x".join(map(str, layer.shape)) if layer.shape else "?",
                    _int(layer.numel),
                    f"{layer.p0:.4f}",
                    f"{layer.p_neg:.4f}",
                    f"{layer.p_pos:.4f}",
                ),
            )
        )
        for layer in shown
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [
        "  ".join(
            c.rjust(w) if i >= 3 else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ).rstrip()
        for r in rows
    ]
    return (
        lines[: limit + 1] + [f"... {hidden} more layers ..."] + lines[limit + 1 :]
        if hidden
        else lines
    )


_BOUNDS = {
    "layer": "a uniform code of (n0, n-) per layer",
    "channel": "a uniform code of (n0, n-) per output channel",
    "pattern": "the order-0 entropy of each layer's signs",
    "scaled": "the order-0 entropy of the signs + 32 bits per scale",
}


def _what(dist: Any, sizes: dict[str, Any]) -> str:
    if dist.granularity in ("pattern", "scaled"):
        scales = " and one scale per output channel" if dist.granularity == "scaled" else ""
        return (
            f"the exact sign pattern{scales} at {sizes['pattern_bits_per_weight']:.3f} bits per "
            f"weight (entropy bound {sizes['entropy_bits_per_weight']:.3f} bits per weight)"
        )
    if dist.granularity == "channel":
        return (
            f"{sum(layer.shape[0] for layer in dist.layers):,} output channels, "
            f"{sizes['numbers']:,} numbers that matter (p0 and p- per channel)"
        )
    return f"{sizes['numbers']} numbers that matter (p0 and p- per layer; p+ = 1 - p0 - p-)"


def _bits(value: float | None) -> str:
    return "?" if value is None else f"{value:.3f}"


def _summary(dist: Any, sizes: dict[str, Any], polar_what: str) -> list[str]:
    """Size beside information: the file's bits per weight, the bound of its granularity, the
    sign pattern's order-0 and channel-conditional bounds, and what the file replaces."""
    polar, signs, f32 = sizes["polar_bytes"], sizes["sign_pattern_bytes"], sizes["float32_bytes"]

    def ratio(big: int | None) -> str:
        return f"  ({big / polar:,.0f}x the .polar file)" if big and polar else ""

    info = sizes["information_bytes"]
    versus = f"; the file is {polar / info:.3f}x it" if info and polar else ""
    norms = (
        [
            f"  normalisation        {_int(sizes['norm_bytes']):>15} B  ({len(dist.norms)} float32 "
            "tensors, in the file)"
        ]
        if dist.norms
        else []
    )
    return [
        f"granularity {dist.granularity}: {sizes['layers']} layers, {_what(dist, sizes)}, "
        f"{_int(sizes['weights'])} weights summarised",
        f"  .polar file          {_int(polar):>15} B  {_bits(sizes['file_bits_per_weight'])} bits "
        f"per weight  {polar_what}",
        f"  information          {_int(info):>15} B  "
        f"{_bits(sizes['information_bits_per_weight'])} bits per weight: "
        f"{_BOUNDS[dist.granularity]}{versus}",
        f"  sign pattern bounds  order-0 {_bits(sizes['order0_bits_per_weight'])}, "
        f"channel-conditional {_bits(sizes['channel_bits_per_weight'])} bits per weight",
        *norms,
        f"  full sign pattern    {_int(signs):>15} B  (2 bits per weight){ratio(signs)}",
        f"  float32 weights      {_int(f32):>15} B  (4 bytes per weight: what the file "
        f"replaces){ratio(f32)}",
    ]


def _check_output_name(out_path: Path, granularity: str | None, norms: bool) -> None:
    """The name picks the encoding; binary contents need the safetensors one."""
    if not out_path.name.endswith((".polar", ".json", ".safetensors")):
        raise ConfigError(
            f"{out_path}: the output name must end with .polar, .polar.json or .polar.safetensors "
            "(the suffix picks the encoding)"
        )
    if encoding_for_path(out_path) == "safetensors":
        return
    if granularity is not None and granularity not in JSON_GRANULARITIES:
        raise ConfigError(
            f"{out_path}: a sign pattern is binary and is only stored as safetensors; name the "
            "output NAME.polar.safetensors"
        )
    if norms:
        raise ConfigError(
            f"{out_path}: --norms keeps float32 tensors, which are only stored as safetensors "
            "(JSON holds the human-readable layer and channel rungs); name the output "
            "NAME.polar.safetensors"
        )


@click.command("extract")
@click.argument("source")
@click.option(
    "--out",
    "-o",
    "out",
    required=True,
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="Where to write the distribution: .polar / .polar.json (JSON) or .polar.safetensors. "
    "Written atomically; the directory must exist.",
)
@click.option(
    "--layers",
    "layers",
    multiple=True,
    callback=_parse_layers,
    metavar="GLOB",
    help="Only layers (state-dict key without '.weight') matching this fnmatch glob, e.g. "
    "'features.*'. Repeat it or separate globs with commas. Default: every conv layer.",
)
@click.option(
    "--include-linear",
    is_flag=True,
    help="Also count 2-D weight matrices (fully connected layers).",
)
@click.option(
    "--zero-tol",
    type=click.FloatRange(min=0.0),
    default=0.0,
    show_default=True,
    metavar="X",
    help="A weight counts as zero when |w| <= X.",
)
@click.option(
    "--expand-groups",
    is_flag=True,
    help="Count grouped/depthwise convs as their dense block-diagonal kernels, as the paper's "
    "AlexNet conv2/4/5 (p0 = 0.5). Group counts come from torchvision models or --groups.",
)
@click.option(
    "--groups",
    "groups",
    multiple=True,
    callback=_parse_groups,
    metavar="NAME=G,...",
    help="Group counts of a checkpoint file's grouped convs, e.g. conv2=2,conv4=2. Implies "
    "--expand-groups.",
)
@click.option(
    "--layout",
    type=click.Choice(LAYOUTS),
    default="auto",
    show_default=True,
    help="Kernel axis order in the source. auto: PyTorch files are OIHW; in .npy/.npz and "
    "non-PyTorch safetensors a kernel like (11,11,3,96) is HWIO (TensorFlow/Caffe) and ambiguous "
    "ones follow the file.",
)
@click.option(
    "--granularity",
    type=click.Choice(GRANULARITIES),
    default="layer",
    show_default=True,
    help="layer: p0/p-/p+ per layer; channel: counts per output channel; pattern: the exact sign "
    "pattern, entropy-coded; scaled: the pattern and each output channel's mean |w| (a 1-bit "
    "checkpoint). pattern and scaled need --out NAME.polar.safetensors.",
)
@click.option(
    "--norms",
    is_flag=True,
    help="Also keep the normalisation layers' weight, bias, running_mean and running_var "
    "(float32; needs --out NAME.polar.safetensors).",
)
@click.option(
    "--no-hash",
    is_flag=True,
    help="Do not record the weights file's sha256 (hashing reads the file once).",
)
@click.option(
    "--unsafe-allow-pickle",
    is_flag=True,
    help="Read pickled object arrays in .npy/.npz files (e.g. Caffe-converted bvlc_alexnet.npy). "
    "Unpickling can run arbitrary code: only for files you trust.",
)
@json_option
@hub_options
@handle_errors
def extract(
    source: str,
    out: str,
    as_json: bool,
    no_hash: bool,
    granularity: str,
    norms: bool,
    groups: dict[str, int],
    expand_groups: bool,
    **options: Any,
) -> None:
    """Count the zero, negative and positive weights of each layer of SOURCE into a .polar file.

    SOURCE is a torchvision model name (its ImageNet weights, downloaded once into torch's cache), a
    weights file (.safetensors, .pt/.pth, .npz, or a Caffe-converted .npy dict with
    --unsafe-allow-pickle) or hf://owner/repo[@rev]/path. Only the counted tensors are read.

    \b
    Examples:
      polarpack extract ./mobilenet_v2-b0353104.pth --out mnv2.polar
      polarpack extract vgg16 --out vgg16.polar.safetensors --include-linear
      polarpack extract bvlc_alexnet.npy --out alexnet.polar --groups conv2=2,conv4=2,conv5=2
      --unsafe-allow-pickle
      polarpack extract model.safetensors --out signs.polar.safetensors --granularity pattern
      polarpack extract mnv2.pth --granularity scaled --norms --out mnv2-1bit.polar.safetensors
    """
    out_path = Path(out)
    _check_output_name(out_path, granularity, norms)
    check_output_path(out_path)  # fail before any work
    if Path(source).exists() and out_path.exists() and os.path.samefile(source, out_path):
        raise ConfigError(f"{out}: is the source file itself; choose another output name")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = extract_distribution(
            source,
            expand_groups=expand_groups or bool(groups),
            groups=groups or None,
            hash_file=not no_hash,
            granularity=granularity,
            norms=norms,
            **options,
        )
    try:
        written = save(dist, out_path)
    except OSError as exc:
        raise PolarpackError(f"{out}: cannot write the file ({exc.strerror or exc})") from None
    sizes = size_report(dist, polar_bytes=written.stat().st_size)
    kinds = ", ".join(
        f"{n} {k}"
        for k in ("conv", "linear")
        if (n := sum(layer.kind == k for layer in dist.layers))
    )
    _say(
        [
            *(f"warning: {w.message}" for w in caught),
            f"extracted {kinds} layers from {source} -> {written}",
            *_table(dist, limit=10),
            *_summary(dist, sizes, f"({written.name})"),
        ],
        err=True,
    )
    if as_json:
        emit_json(dist.to_dict() | {"computed": {"sizes": sizes, "out": str(written)}})


@click.command("inspect")
@click.argument("ref")
@json_option
@hub_options
@handle_errors
def inspect(
    ref: str, as_json: bool, endpoint: str | None, revision: str | None, token: str | None
) -> None:
    """Show a distribution: its granularity, per-layer shape, weight count and p0 / p- / p+, and the
    sizes that make the paper's point (the .polar file vs the sign pattern vs the float32 weights).

    REF is a .polar / .polar.json / .polar.safetensors file, a preset (paper:alexnet,
    paper:table1-exp1 ... exp7) or hf://owner/repo[@rev]/path. With --json, stdout gets the
    distribution's .polar JSON object plus a "computed" key.

    Files are untrusted: a file over 16 MiB (JSON) or 1 GiB (safetensors) is refused, and so is a
    layer that would decode to over 256 MiB (its int8 signs, or 24 bytes per channel). For files
    you trust, raise them with POLARPACK_MAX_POLAR_BYTES and POLARPACK_MAX_LAYER_BYTES (bytes).

    \b
    Examples:
      polarpack inspect paper:alexnet
      polarpack inspect mnv2.polar --json | jq '.computed.sizes'
    """
    dist, path = resolve_distribution(ref, endpoint=endpoint, token=token, revision=revision)
    sizes = size_report(dist, polar_bytes=path.stat().st_size if path else None)
    if as_json:
        emit_json(dist.to_dict() | {"computed": {"sizes": sizes, "ref": ref}})
        return
    desc = dist.source.get("description") or dist.source.get("id") or dist.source.get("file") or ""
    ex = dist.extraction
    settings = ", ".join(
        f"{k}={ex[k]}" for k in ("zero_tol", "expand_groups", "include_linear") if k in ex
    )
    _say(
        [
            f"{ref}: {len(dist)} layers" + (f" -- {desc}" if desc else ""),
            *_table(dist),
            "",
            *_summary(dist, sizes, f"({path.name})" if path else "(as a .polar file)"),
            *([f"extracted with {settings}"] if settings else []),
        ],
        err=False,
    )


@click.command("convert")
@click.argument("src")
@click.option(
    "--out",
    "-o",
    "out",
    required=True,
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="Where to write it: .polar / .polar.json (JSON: layer and channel rungs without norms) or "
    ".polar.safetensors (every rung, entropy-coded). Written atomically.",
)
@json_option
@hub_options
@handle_errors
def convert(
    src: str,
    out: str,
    as_json: bool,
    endpoint: str | None,
    revision: str | None,
    token: str | None,
) -> None:
    """Rewrite the distribution SRC (any format_version, either encoding; also a preset or an
    hf:// reference) in the current format, as OUT's suffix says. Every coded stream is decoded
    and checked first, so a damaged file is reported rather than copied.

    \b
    Examples:
      polarpack convert old-pattern.polar.safetensors --out pattern.polar.safetensors
      polarpack convert mnv2-channel.polar.safetensors --out mnv2-channel.polar
    """
    out_path = Path(out)
    _check_output_name(out_path, None, False)
    check_output_path(out_path)
    dist, path = resolve_distribution(src, endpoint=endpoint, token=token, revision=revision)
    _check_output_name(out_path, dist.granularity, bool(dist.norms))
    before = path.stat().st_size if path else None
    dist.verify()
    try:
        written = save(dist, out_path)
    except OSError as exc:
        raise PolarpackError(f"{out}: cannot write the file ({exc.strerror or exc})") from None
    after = written.stat().st_size
    _say(
        [
            f"converted {src} (format_version {dist.format_version}, {_int(before)} B) "
            f"-> {written} (format_version {FORMAT_VERSION}, {encoding_for_path(written)}, "
            f"{_int(after)} B)"
        ],
        err=True,
    )
    if as_json:
        emit_json(
            {
                "src": src,
                "out": str(written),
                "format_version": [dist.format_version, FORMAT_VERSION],
                "bytes": [before, after],
                "granularity": dist.granularity,
            }
        )
