"""Experiment files: a TOML grid of training runs, expanded into cells.

The file's sections (docs/experiments.md shows a whole file): ``[experiment]`` (name,
description), ``[defaults]`` (TrainConfig options for every cell), ``[grid]`` (lists whose product
is the grid; plural aliases such as ``methods`` and ``seeds`` work too), ``[weights]`` (transferred
weights per model, for the methods that start from weights; empty or absent: those cells are
skipped, with why), ``[[include]]`` (extra cells: the defaults and these options), ``[[compare]]``
(the comparisons a report makes, see `polarpack.experiments.comparisons`) and ``[slurm]``
(scheduler options, see `polarpack.experiments.slurm`).

Every key must be a TrainConfig field (or an alias): anything else is an error naming the key, the
file and the allowed keys. Options a method does not use (its entry in
`polarpack.training.methods.METHODS` says which) are dropped from its cells, so methods x dists
does not repeat a run that uses no distribution. A file expands to at most MAX_CELLS cells,
counted before any is built. Cells run seed-major, then in [grid] key order. Relative paths
resolve against the current directory. A cell's identity is the hash of the options that differ
from TrainConfig's defaults (plus the resolved precision), so adding a new option with a neutral
default keeps every existing run; `threads`, `data_dir`, `download` and `checkpoint_every` say
where and how fast, not what is computed, and are not part of it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from polarpack._io import read_bytes
from polarpack.errors import ConfigError
from polarpack.sources.references import is_local_file
from polarpack.training.config import (
    TrainConfig,
    check_option,
    resolve_device,
    resolve_precision,
)
from polarpack.training.methods import METHOD_OPTIONS, METHODS, WEIGHTS, Method

SECTIONS = ("experiment", "defaults", "grid", "weights", "include", "compare", "slurm")
ALIASES = {
    "models": "model",
    "datasets": "dataset",
    "methods": "method",
    "dists": "dist",
    "distributions": "dist",
    "distribution": "dist",
    "seeds": "seed",
}
NOT_HASHED = ("threads", "data_dir", "download", "checkpoint_every", "checkpoint_seconds")
UNUSED = {  # options a method ignores (its registry entry says): dropped from its cells
    option: tuple(m.name for m in METHODS.values() if not m.uses(option))
    for option in METHOD_OPTIONS
}
FLOATS = {f.name for f in fields(TrainConfig) if f.type.partition(" | ")[0] == "float"}
EXPERIMENT_LIMIT = 1 << 20  # bytes: an experiment file is a page of TOML
MAX_CELLS = 100_000  # cells a file may expand to (grid product x seeds, plus the includes)


@dataclass
class Cell:
    """One training run of a grid: its options (relative paths as written) and identity."""

    config: TrainConfig
    run_id: str
    skip_reason: str | None = None

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def hash(self) -> str:
        return self.run_id.rsplit("-", 1)[1]


@dataclass(frozen=True)
class CompareSpec:
    """One ``[[compare]]`` table: each group that `a` selects against the group that `b` selects
    and that agrees with it on every other option (a selector maps options to values; "" means
    not set, as TOML has no null). `margin` gives, per measure, the equivalence margin of a TOST
    (`final_val_acc` in accuracy, `epochs_to_threshold` or its alias `epochs_to_40` in epochs)."""

    name: str = "a - b"
    a: Mapping[str, Any] = field(default_factory=dict)
    b: Mapping[str, Any] = field(default_factory=dict)
    margin: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def from_table(cls, table: Mapping[str, Any], where: str = "[[compare]]") -> CompareSpec:
        """The one reader of a table (from a grid file, or a caller's dict)."""
        if unknown := sorted(set(table) - {"name", "a", "b", "margin"}):
            raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: name, a, b, margin")
        name = str(table.get("name", cls.name))
        sides = {k: table.get(k, {}) for k in ("a", "b")}
        if not all(isinstance(v, Mapping) for v in sides.values()):
            raise ConfigError(
                f"{where} {name!r}: a and b must be tables of options, such as "
                '{ dist = "paper:alexnet" }'
            )
        margin = table.get("margin") or {}
        aliases = {"epochs_to_40": "epochs_to_threshold"}
        measures = {aliases.get(k, k) for k in margin} if isinstance(margin, Mapping) else None
        numbers = isinstance(margin, Mapping) and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in margin.values()
        )
        if not numbers or not measures <= {"final_val_acc", "epochs_to_threshold"}:
            raise ConfigError(
                f"{where} {name!r}: margin must be a table of numbers such as "
                "{ final_val_acc = 0.02, epochs_to_40 = 1 }"
            )
        margins = {aliases.get(k, k): float(v) for k, v in margin.items()}
        return cls(name, dict(sides["a"]), dict(sides["b"]), margins)


@dataclass
class Experiment:
    name: str
    description: str
    path: Path
    cells: list[Cell]
    compare: list[CompareSpec] = field(default_factory=list)


_DEFAULTS = TrainConfig().to_dict()  # every default is immutable (None, str, number, bool)


def defaults() -> dict[str, Any]:
    return dict(_DEFAULTS)


def method_of(name: Any) -> Method | None:
    """The registry entry of a method name; None for a name the registry lacks (which
    validation then refuses, naming the methods)."""
    return METHODS.get(name) if isinstance(name, str) else None


def config_hash(config: TrainConfig | Mapping[str, Any]) -> str:
    """sha256 of the options that differ from TrainConfig's defaults (see the module docstring);
    of a cell's config, or of the options a run folder's config.json holds (any version's)."""
    base = _DEFAULTS
    cfg = _floats(config.to_dict() if isinstance(config, TrainConfig) else config)
    ident = {
        k: v
        for k, v in sorted(cfg.items())
        if k not in NOT_HASHED and (k not in base or v != base[k])
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()


def _floats(options: Mapping[str, Any]) -> dict[str, Any]:
    """Whole numbers of float options as floats, so that `dropout = 0` and `dropout = 0.0` are one
    cell (TOML and JSON keep the two apart, and so would the hash). One too large for a float is
    left for validation to refuse."""
    return {
        k: float(v) if k in FLOATS and type(v) is int and abs(v) <= 2**53 else v
        for k, v in options.items()
    }


def _slug_part(value: Any) -> str:
    text = Path(str(value)).name if "/" in str(value) or os.sep in str(value) else str(value)
    for suffix in (".polar.safetensors", ".polar.json", ".polar", ".pth", ".safetensors"):
        text = text.removesuffix(suffix)
    return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_")[:40] or "x"


def run_id_for(config: TrainConfig) -> str:
    """A readable slug (model, dataset, method, dist, telling options, precision, seed) + 8 hex of
    the hash."""
    base, method = _DEFAULTS, METHODS[config.method]
    parts = [config.model, config.dataset, config.method]
    # float weights to fine-tune are a long checkpoint name: the hash tells them apart
    parts += [v for v in (config.dist, config.weights) if v and method.start != WEIGHTS]
    parts += ["norms", config.norms] if config.norms else []
    telling = (
        "geometry",
        "image_size",
        "epochs",
        "fluid_mode",
        "constrain",
        "optimizer",
        "lr",
        "momentum",
    )
    parts += [f"{k}-{getattr(config, k)}" for k in telling if getattr(config, k) != base[k]]
    if method.constrained:
        parts.append(f"zeros-{config.zeros}")
    if method.fluid and config.fluid_fraction != base["fluid_fraction"]:
        parts.append(f"frac-{config.fluid_fraction}")
    parts += [config.precision, f"s{config.seed}"]
    return "-".join(_slug_part(p) for p in parts) + "-" + config_hash(config)[:8]


def parse_sets(items: Iterable[str]) -> list[tuple[str, Any]]:
    """`--set key=value` pairs; values are TOML literals (3, 1e-3, true, ["pin","free"]), else
    strings."""
    out = []
    for item in items:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected key=value (e.g. --set geometry=imagenet)")
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except (tomllib.TOMLDecodeError, RecursionError):
            value = text.strip()
        out.append((key.strip(), value))
    return out


def _keys(table: Any, section: str, path: Path) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [{section}] must be a table")
    known = set(defaults())
    out: dict[str, Any] = {}
    for key, value in table.items():
        canon = ALIASES.get(key, key)
        if canon not in known:
            raise ConfigError(
                f"{path}: unknown key {key!r} in [{section}]; allowed keys: "
                f"{', '.join(sorted(known))} "
                f"(aliases: {', '.join(sorted(ALIASES))})"
            )
        if canon in out:
            raise ConfigError(
                f"{path}: key {canon!r} given twice in [{section}] (an alias and its name?)"
            )
        out[canon] = value
    return out


def _values(key: str, values: Any, path: Path) -> list[Any]:
    """An axis of the grid: its values as a list (a single value is a list of one)."""
    values = values if isinstance(values, list) else [values]
    if not values:
        raise ConfigError(f"{path}: {key} is an empty list; give at least one value")
    return values


def _product(axes: Mapping[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the axes, the last one varying fastest."""
    return [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]


def _seed_rank(seeds: Sequence[Any]) -> Callable[[Any], int]:
    """A seed's place in the grid's seed list (a dict, not `seeds.index`, which made expansion
    quadratic in the seeds); seeds only an [[include]] names come last."""
    order: dict[Any, int] = {}
    for i, seed in enumerate(seeds):
        if isinstance(seed, Hashable):
            order.setdefault(seed, i)

    def rank(seed: Any) -> int:
        return order.get(seed, len(seeds)) if isinstance(seed, Hashable) else len(seeds)

    return rank


def _expand(
    base: dict[str, Any], grid: dict[str, Any], includes: list[dict[str, Any]], path: Path
) -> list[dict[str, Any]]:
    """The options of every cell, seed-major: the grid's product for each seed, then each
    [[include]]'s (defaults + its options). The cells are counted before any is built, and a file
    of more than MAX_CELLS is refused."""
    seeds = _values("seed", grid.pop("seed", base.pop("seed", 0)), path)
    parts = []  # (seeds, axes) of the grid and of each include
    if grid or not includes:  # a file of [[include]]s only: just those
        parts.append((seeds, {k: _values(k, v, path) for k, v in grid.items()}))
    for inc in includes:
        inc_seeds = _values("seed", inc.pop("seed", seeds), path)
        parts.append((inc_seeds, {k: _values(k, v, path) for k, v in inc.items()}))
    count = sum(len(s) * math.prod(len(v) for v in axes.values()) for s, axes in parts)
    if count > MAX_CELLS:
        raise ConfigError(
            f"{path}: the grid expands to {count:,} cells, more than the {MAX_CELLS:,} a file "
            "may hold; give fewer values, or split it into several files"
        )
    rank = _seed_rank(seeds)
    raw = [
        (rank(seed), {**base, **combo, "seed": seed})
        for part_seeds, axes in parts
        for combos in (_product(axes),)
        for seed in part_seeds
        for combo in combos
    ]
    raw.sort(key=lambda item: item[0])  # stable: within a seed, the file's order
    return [options for _, options in raw]


def _parse(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"experiment file {path} not found")
    text = read_bytes(path, limit=EXPERIMENT_LIMIT, what="experiment files")
    try:
        data = tomllib.loads(text.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not a TOML experiment file ({exc})") from None
    except RecursionError:
        raise ConfigError(
            f"{path}: not a valid grid file (its arrays or tables nest too deep to read; a grid "
            "axis is a flat list of values)"
        ) from None
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ConfigError(
            f"{path}: unknown top-level key(s) {unknown}; allowed: {', '.join(SECTIONS)}"
        )
    meta = data.get("experiment", {})
    if not isinstance(meta, dict) or not set(meta) <= {"name", "description"}:
        raise ConfigError(f"{path}: [experiment] holds only name and description")
    return data


def load_experiment(path: str | os.PathLike, sets: Sequence[str] = ()) -> Experiment:
    """Read and expand an experiment file into its cells (validated, seed-major order)."""
    path = Path(path)
    data = _parse(path)
    base, grid = (
        _keys(data.get("defaults", {}), "defaults", path),
        _keys(data.get("grid", {}), "grid", path),
    )
    weights = {str(k): v for k, v in _check_table(data.get("weights", {}), "weights", path).items()}
    includes = [
        _keys(inc, "include", path) for inc in _tables(data.get("include", []), "include", path)
    ]
    compare = [
        CompareSpec.from_table(table, f"{path}: [[compare]]")
        for table in _tables(data.get("compare", []), "compare", path)
    ]
    for key, value in parse_sets(sets):
        if key.startswith("weights."):
            weights[key.split(".", 1)[1]] = value
            continue
        to_grid = key.startswith("grid.") or isinstance(value, list)
        key = ALIASES.get(key.split(".", 1)[-1], key.split(".", 1)[-1])
        if key not in _DEFAULTS:
            raise ConfigError(
                f"--set {key}: unknown key; allowed keys: {', '.join(sorted(_DEFAULTS))} or "
                "weights.MODEL"
            )
        (grid if to_grid else base)[key] = value
        (base if to_grid else grid).pop(key, None)
        for inc in includes:  # every cell's value; an axis only where an include sets none
            if to_grid:
                inc.setdefault(key, value)
            else:
                inc.pop(key, None)
    cells: dict[str, Cell] = {}
    known: dict[Any, Any] = {}
    for options in _expand(base, grid, includes, path):
        cell = _make_cell(options, weights, path, known)
        cells.setdefault(cell.run_id, cell)
    if not cells:
        raise ConfigError(f"{path}: the grid is empty")
    meta = data.get("experiment", {})
    return Experiment(
        str(meta.get("name") or path.stem),
        str(meta.get("description", "")),
        path,
        list(cells.values()),
        compare,
    )


def _check_table(value: Any, section: str, path: Path) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: [{section}] must be a table")
    return value


def _tables(value: Any, section: str, path: Path) -> list[dict[str, Any]]:
    value = [value] if isinstance(value, dict) else value
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ConfigError(f"{path}: [[{section}]] must be a list of tables")
    return value


def _make_cell(
    options: dict[str, Any], weights: Mapping[str, Any], path: Path, known: dict[str, Any]
) -> Cell:
    """A validated cell. Cells that differ only in seed share the rest of their validation (in
    `known`, with the precision `auto` resolves to per device), so 100,000 seeds expand in
    seconds."""
    shared = repr(sorted((k, v) for k, v in options.items() if k != "seed"))
    if shared not in known:
        known[shared] = _validated(options, weights, path, known)
    config, reason = known[shared]
    try:
        check_option("seed", options["seed"])
    except ConfigError as exc:
        raise ConfigError(f"{path}: cell {_described(options)}: {exc}") from None
    config = replace(config, seed=options["seed"])
    return Cell(config, run_id_for(config), reason)


def _described(options: Mapping[str, Any]) -> str:
    keys = ("model", "dataset", "method", "dist", "seed")
    return ", ".join(f"{k}={options[k]}" for k in keys if k in options)


def _validated(
    options: dict[str, Any], weights: Mapping[str, Any], path: Path, known: dict[str, Any]
) -> tuple[TrainConfig, str | None]:
    """A cell's options: those its method ignores reset to their defaults, transferred weights
    looked up per model, `auto` precision resolved, all validated; and why it is skipped, if it
    is."""
    cfg = _floats({**_DEFAULTS, **options})
    method = method_of(cfg["method"])
    for key in METHOD_OPTIONS if method is not None else ():
        if not method.uses(key):
            cfg[key] = _DEFAULTS[key]
    reason = None
    if method is not None and method.source == "weights" and not cfg.get("weights"):
        cfg["weights"] = weights.get(str(cfg["model"])) or weights.get("default")
        if not cfg["weights"]:
            reason = (
                f"{method.name} needs transferred weights for model {cfg['model']!r}, and none "
                f'are given (set [weights] {cfg["model"]} = "SOURCE" in {path} or --set '
                f"weights.{cfg['model']}=SOURCE)"
            )
    for key in ("weights", "dist"):
        if (
            reason is None
            and is_local_file(cfg.get(key))
            and not Path(cfg[key]).expanduser().exists()
        ):
            where = f"not found (relative to {Path.cwd()})"
            reason = f"{cfg['method']}: {key} file {cfg[key]!r} {where}"
    try:
        config = TrainConfig.from_dict(cfg)
        if reason is None:
            config.validate()
    except (ConfigError, TypeError) as exc:
        raise ConfigError(f"{path}: cell {_described(options)}: {exc}") from None
    # auto must not hide the precision; a pinned one needs no device (report GPU runs anywhere)
    if config.precision == "auto":
        device = ("device", config.device)
        if device not in known:
            known[device] = resolve_precision("auto", resolve_device(config.device))
        config = replace(config, precision=known[device])
    return config, reason
