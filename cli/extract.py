"""`polarpack extract` (weights -> .polar file) and `polarpack inspect` (read a distribution)."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import click

from polarpack.errors import ConfigError, PolarpackError

from ._common import emit_json, handle_errors, hub_options, info, json_option

_OUT_SUFFIXES = (".polar", ".polar.json", ".json", ".polar.safetensors", ".safetensors")
_TABLE_HEAD = 10  # rows shown before and after the ellipsis in extract's stderr summary


def _parse_groups(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, int]:
    groups: dict[str, int] = {}
    for value in values:
        for item in filter(None, (p.strip() for p in value.split(","))):
            name, sep, count = item.rpartition("=")
            if not sep or not name:
                raise click.BadParameter(f"{item!r} is not NAME=G (e.g. conv2=2)", ctx, param)
            try:
                g = int(count)
            except ValueError:
                raise click.BadParameter(f"{item!r}: group count {count!r} is not an integer", ctx, param) from None
            if g < 1:
                raise click.BadParameter(f"{item!r}: group count must be >= 1", ctx, param)
            groups[name.strip()] = g
    return groups


def _parse_layers(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> list[str] | None:
    globs = [g.strip() for v in values for g in v.split(",") if g.strip()]
    return globs or None


def _fmt_int(n: int | None) -> str:
    return "?" if n is None else f"{n:,}"


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "unknown"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _layer_rows(dist: Any) -> list[tuple[str, ...]]:
    rows = []
    for layer in dist.layers:
        shape = "x".join(str(s) for s in layer.shape) if layer.shape else "?"
        rows.append(
            (layer.name, layer.kind, shape, _fmt_int(layer.numel), f"{layer.p0:.4f}", f"{layer.p_neg:.4f}", f"{layer.p_pos:.4f}")
        )
    return rows


def _table(rows: list[tuple[str, ...]], *, limit: int | None = None) -> list[str]:
    head = ("layer", "kind", "shape", "weights", "p0", "p-", "p+")
    shown = rows
    hidden = 0
    if limit is not None and len(rows) > 2 * limit + 1:
        shown = rows[:limit] + rows[-limit:]
        hidden = len(rows) - 2 * limit
    widths = [max(len(r[i]) for r in [head, *shown]) for i in range(len(head))]
    right = {3, 4, 5, 6}

    def line(r: tuple[str, ...]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    out = [line(head)]
    for i, r in enumerate(shown):
        if hidden and i == limit:
            out.append(f"... {hidden} more layers ...")
        out.append(line(r))
    return out


def _size_lines(sizes: dict[str, Any], *, polar_what: str) -> list[str]:
    polar, signs, f32 = sizes["polar_bytes"], sizes["sign_pattern_bytes"], sizes["float32_bytes"]

    def ratio(big: int | None) -> str:
        return f"  ({big / polar:,.0f}x the .polar file)" if big and polar else ""

    return [
        f"{sizes['layers']} layers, {sizes['numbers']} numbers that matter (p0 and p- per layer; p+ = 1 - p0 - p-), "
        f"{_fmt_int(sizes['weights'])} weights summarised",
        f"  .polar file          {_fmt_int(polar):>15} B  {polar_what}",
        f"  full sign pattern    {_fmt_int(signs):>15} B  (2 bits per weight){ratio(signs)}",
        f"  float32 weights      {_fmt_int(f32):>15} B  (4 bytes per weight){ratio(f32)}",
    ]


def _json_object(dist: Any, computed: dict[str, Any]) -> dict[str, Any]:
    from polarpack.format import encode_json

    obj = json.loads(encode_json(dist))  # exactly the .polar JSON encoding's object
    obj["computed"] = computed
    return obj


@click.command("extract")
@click.argument("source")
@click.option(
    "--out", "-o", "out", required=True, type=click.Path(dir_okay=False), metavar="FILE",
    help="Where to write the distribution. The suffix picks the encoding: .polar / .polar.json "
    "(JSON, the default) or .polar.safetensors. Written atomically; the directory must exist.",
)
@click.option(
    "--layers", "layers", multiple=True, callback=_parse_layers, metavar="GLOB",
    help="Only layers whose name (state-dict key without '.weight') matches this fnmatch glob, "
    "e.g. 'features.*'. Repeat the option or separate globs with commas. Default: every conv layer.",
)
@click.option(
    "--include-linear", is_flag=True,
    help="Also count 2-D weight matrices (fully connected layers, kind 'linear'). Default: conv only.",
)
@click.option(
    "--zero-tol", type=click.FloatRange(min=0.0), default=0.0, show_default=True, metavar="X",
    help="A weight counts as zero when |w| <= X. The default 0 counts exact zeros only.",
)
@click.option(
    "--expand-groups", is_flag=True,
    help="Count grouped/depthwise convs as their dense kernels (zero off-diagonal blocks: adds "
    "(g-1)*numel zeros and records the dense shape), as the paper's AlexNet conv2/4/5 (p0 = 0.5). "
    "Group counts come from torchvision models or --groups. Default: count stored kernels.",
)
@click.option(
    "--groups", "groups", multiple=True, callback=_parse_groups, metavar="NAME=G,...",
    help="Group counts of grouped convs in a checkpoint file, e.g. conv2=2,conv4=2,conv5=2 "
    "(files do not record them). Implies --expand-groups.",
)
@click.option(
    "--layout", type=click.Choice(["auto", "oihw", "hwio"]), default="auto", show_default=True,
    help="Kernel axis order in the source. auto: PyTorch files are OIHW; in .npy/.npz and non-PyTorch "
    "safetensors a 4-D kernel whose first two dims are equal and <= 11 and last two differ, e.g. "
    "(11,11,3,96), is HWIO (TensorFlow/Caffe) and is transposed to OIHW; ambiguous kernels such as "
    "(3,3,64,64) follow the rest of the file. oihw/hwio force the layout for the whole file.",
)
@click.option(
    "--no-hash", is_flag=True,
    help="Do not record the weights file's sha256 in 'source' (hashing reads the whole file once, "
    "about 1 s per GB; extraction itself reads only the counted tensors).",
)
@json_option
@hub_options
@handle_errors
def extract(
    source: str,
    out: str,
    layers: list[str] | None,
    include_linear: bool,
    zero_tol: float,
    expand_groups: bool,
    groups: dict[str, int],
    layout: str,
    no_hash: bool,
    as_json: bool,
    endpoint: str | None,
    revision: str | None,
    token: str | None,
) -> None:
    """Count the zero, negative and positive weights of each layer of SOURCE into a .polar file.

    SOURCE is a torchvision model name (alexnet, vgg16, resnet18, mobilenet_v2, ...: its ImageNet
    weights, downloaded once into torch's cache, so it needs network the first time), a weights
    file (.safetensors, .pt/.pth state_dict or checkpoint, .npz, or a Caffe-converted .npy dict --
    .npy needs unpickling: only open files you trust), or hf://owner/repo[@rev]/path.

    Only the counted tensors are read (safetensors and new-style .pth files are memory-mapped),
    so a large checkpoint takes little more than one read of its conv kernels.

    \b
    Examples:
      polarpack extract ./mobilenet_v2-b0353104.pth --out mnv2.polar
      polarpack extract vgg16 --out vgg16.polar.safetensors --include-linear
      polarpack extract bvlc_alexnet.npy --out alexnet.polar --groups conv2=2,conv4=2,conv5=2
      polarpack extract model.safetensors --out conv.polar --layers 'features.*' --zero-tol 1e-8
    """
    from polarpack._io import check_output_path
    from polarpack.extract import extract as extract_distribution
    from polarpack.format import save, size_report

    out_path = Path(out)
    if not out_path.name.endswith(_OUT_SUFFIXES):
        raise ConfigError(
            f"{out}: the output name must end with .polar, .polar.json or .polar.safetensors "
            "(the suffix picks the encoding)"
        )
    check_output_path(out_path)  # fail before any work
    src_path = Path(source)
    if src_path.exists() and out_path.exists() and os.path.samefile(src_path, out_path):
        raise ConfigError(f"{out}: is the source file itself; choose another output name")
    if groups:
        expand_groups = True
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = extract_distribution(
            source,
            layers=layers,
            include_linear=include_linear,
            zero_tol=zero_tol,
            expand_groups=expand_groups,
            groups=groups or None,
            layout=layout,
            endpoint=endpoint,
            token=token,
            revision=revision,
            hash_file=not no_hash,
        )
    for w in caught:
        info(f"warning: {w.message}")
    try:
        written = save(dist, out_path)
    except OSError as exc:
        raise PolarpackError(f"{out}: cannot write the file ({exc.strerror or exc})") from None
    sizes = size_report(dist, polar_bytes=written.stat().st_size)
    kinds = {k: sum(1 for l in dist.layers if l.kind == k) for k in ("conv", "linear")}
    what = ", ".join(f"{n} {k}" for k, n in kinds.items() if n)
    info(f"extracted {what} layers from {source} -> {written}")
    for line in _table(_layer_rows(dist), limit=_TABLE_HEAD):
        info(line)
    for line in _size_lines(sizes, polar_what=f"({written.name})"):
        info(line)
    if as_json:
        emit_json(_json_object(dist, {"sizes": sizes, "out": str(written)}))


@click.command("inspect")
@click.argument("ref")
@json_option
@hub_options
@handle_errors
def inspect(ref: str, as_json: bool, endpoint: str | None, revision: str | None, token: str | None) -> None:
    """Show a distribution: per-layer shape, weight count and p0 / p- / p+, and the sizes that make
    the paper's point (the .polar file vs the full sign pattern vs the float32 weights).

    REF is a .polar / .polar.json / .polar.safetensors file, a preset (paper:alexnet,
    paper:table1-exp1 ... exp7) or hf://owner/repo[@rev]/path. With --json, stdout gets the
    distribution's .polar JSON object plus a "computed" key (sizes); without "computed" it is a
    valid .polar file.

    \b
    Examples:
      polarpack inspect paper:alexnet
      polarpack inspect mnv2.polar --json | jq '.computed.sizes'
    """
    from polarpack.format import encode_json, size_report
    from polarpack.sources import resolve_distribution

    dist, path = resolve_distribution(ref, endpoint=endpoint, token=token, revision=revision)
    if path is not None:
        polar_bytes = path.stat().st_size
        polar_what = f"({path.name})"
    else:
        polar_bytes = len(encode_json(dist))
        polar_what = "(as a .polar JSON file)"
    sizes = size_report(dist, polar_bytes=polar_bytes)
    if as_json:
        emit_json(_json_object(dist, {"sizes": sizes, "ref": ref}))
        return
    src = dict(dist.source)
    desc = src.get("description") or src.get("id") or src.get("file") or ""
    click.echo(f"{ref}: {len(dist)} layers" + (f" -- {desc}" if desc else ""))
    for line in _table(_layer_rows(dist)):
        click.echo(line)
    click.echo("")
    for line in _size_lines(sizes, polar_what=polar_what):
        click.echo(line)
    if dist.extraction:
        ex = dist.extraction
        settings = ", ".join(f"{k}={ex[k]}" for k in ("zero_tol", "expand_groups", "include_linear") if k in ex)
        if settings:
            click.echo(f"extracted with {settings}")


__all__ = ["extract", "inspect"]
