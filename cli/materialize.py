"""`polarpack materialize`: a distribution and a seed become reproducible initial weights."""

from __future__ import annotations

import os
from pathlib import Path

import click

from polarpack._io import check_output_path, printable
from polarpack.errors import ConfigError
from polarpack.models import CONSTRAIN_SCOPES, GEOMETRIES
from polarpack.sources.weights import resolve_distribution
from polarpack.training.materialization import SAMPLING_MODES
from polarpack.training.materialization import materialize as run

from ._common import emit_json, handle_errors, hub_options, info, json_option


def parse_layer_map(value: str | None) -> dict[str, str] | None:
    """'conv1=features.0,conv2=features.3' -> {'conv1': 'features.0', ...}."""
    if not value:
        return None
    pairs = {}
    for item in value.split(","):
        target, sep, source = item.partition("=")
        if not sep or not target.strip() or not source.strip():
            raise click.BadParameter(
                f"{item!r} is not TARGET=LAYER; write e.g. --map conv1=conv1,conv2=conv2",
                param_hint="--map",
            )
        pairs[target.strip()] = source.strip()
    return pairs


@click.command()
@click.argument("ref")
@click.option(
    "--model", required=True, help="alexnet, zfnet or any torchvision classification model name."
)
@click.option(
    "--seed",
    type=int,
    required=True,
    help="Seed of the pattern and magnitudes; same seed, same bytes.",
)
@click.option(
    "--out", "out", type=click.Path(dir_okay=False), required=True, help="Output .safetensors file."
)
@click.option(
    "--sampling",
    type=click.Choice(SAMPLING_MODES),
    default="exact",
    show_default=True,
    help="exact: round(p*n) weights of each sign (largest remainder); iid: independent draws.",
)
@click.option(
    "--geometry",
    type=click.Choice(GEOMETRIES),
    default="small",
    show_default=True,
    help="Geometry of alexnet/zfnet (conv shapes are the same in both).",
)
@click.option(
    "--num-classes",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Classifier outputs of the built model.",
)
@click.option(
    "--constrain",
    type=click.Choice(CONSTRAIN_SCOPES),
    default="conv",
    show_default=True,
    help="Which layers get a pattern: conv kernels (the paper) or conv and FC except the head.",
)
@click.option(
    "--map",
    "layer_map",
    default=None,
    metavar="TARGET=LAYER,...",
    help="Explicit mapping from model layers to distribution layers. Default: by name when every "
    "model layer has a same-named distribution layer, else by order when the counts agree.",
)
@hub_options
@json_option
@handle_errors
def materialize(
    ref, model, seed, out, sampling, geometry, num_classes, constrain, layer_map, as_json, **hub
):
    """Draw initial weights for MODEL from the distribution REF.

    Each constrained kernel gets GlorotNormal magnitudes (Keras' truncated normal) and a random sign
    pattern with the distribution's proportions; zero targets give zero weights. The file holds
    `{layer}.weight` (float32) and `{layer}.polarity` (int8 targets) and loads with
    `model.load_state_dict(..., strict=False)`.

    \b
    Example:
      polarpack materialize paper:alexnet --model zfnet --seed 0 --out init.safetensors
    """
    check_output_path(out)
    dist, source = resolve_distribution(ref, **hub)
    if source is not None and Path(out).exists() and os.path.samefile(source, out):
        raise ConfigError(f"--out {out}: is the distribution file REF itself; choose another name")
    result = run(
        dist,
        model,
        seed=seed,
        sampling=sampling,
        mapping=parse_layer_map(layer_map),
        scope=constrain,
        geometry=geometry,
        num_classes=num_classes,
    )
    result.save(out)
    rows = [
        {
            "layer": name,
            "from": result.mapping[name],
            "shape": list(t.shape),
            "weights": t.numel(),
            "p0": int((t == 0).sum()) / t.numel(),
            "p_neg": int((t < 0).sum()) / t.numel(),
            "p_pos": int((t > 0).sum()) / t.numel(),
        }
        for name, t in result.targets.items()
    ]
    if as_json:
        emit_json({"out": out, "model": model, "seed": seed, "sampling": sampling, "layers": rows})
        return
    info(f"{'layer':<14}{'from':<10}{'weights':>10}{'p0':>8}{'p-':>8}{'p+':>8}")
    for r in rows:  # layer names come from files: shown escaped
        numbers = f"{r['weights']:>10}{r['p0']:>8.4f}{r['p_neg']:>8.4f}{r['p_pos']:>8.4f}"
        info(printable(f"{r['layer']:<14}{r['from']:<10}{numbers}"))
    click.echo(printable(out))
