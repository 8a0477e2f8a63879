"""Experiment files: a TOML grid of training runs, expanded into cells.

    [experiment]                          # optional: name and description
    name = "table1"

    [defaults]                            # TrainConfig options for every cell
    dataset = "cifar10"
    epochs = 20

    [grid]                                # lists; their product is the grid
    method = ["freeze-spin", "scratch"]   # plural aliases work too: models, methods, dists, seeds
    zeros = ["pin", "free"]
    seed = [0, 1, 2]

    [weights]                             # transferred weights per model, for freeze-in / fluid-in
    alexnet = ""                          # empty or absent: those cells are skipped, with why

    [[include]]                           # extra cells: defaults + these options (lists expand)
    method = "freeze-spin"
    dist = "paper:rand"

    [[compare]]                           # comparisons the report makes (see polarpack.report)
    name = "Freeze SPIN - scratch"
    a = { method = "freeze-spin", dist = "paper:alexnet" }
    b = { method = "scratch" }

Every key must be a TrainConfig field (or an alias): anything else is an error naming the key, the
file and the allowed keys. Options a method does not use are dropped from its cells, so methods x
dists does not repeat the scratch run. Cells run seed-major, then in [grid] key order. Relative
paths resolve against the current directory. A cell's identity is the hash of the options that
differ from TrainConfig's defaults (plus the resolved precision), so adding a new option with a
neutral default keeps every existing run; `threads`, `data_dir`, `download` and `checkpoint_every`
say where and how fast, not what is computed, and are not part of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from polarpack._io import read_bytes
from polarpack.errors import ConfigError
from polarpack.sources.references import is_local_file
from polarpack.training.config import IN_METHODS, SPIN_METHODS, TrainConfig
from polarpack.training.loop import resolve_device, resolve_precision

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
UNCONSTRAINED = ("scratch", "fluid-in", "fluid-in-polarity")
UNUSED = {  # options a method ignores: dropped from its cells
    "dist": ("scratch", "freeze-in", "fluid-in", "fluid-in-polarity"),
    "weights": ("scratch", "freeze-spin", "fluid-spin"),
    "zeros": UNCONSTRAINED,
    "eps": UNCONSTRAINED,
    "sampling": ("scratch", "fluid-in", "freeze-in", "fluid-in-polarity"),
    "fluid_fraction": ("scratch", "fluid-in", "freeze-in", "freeze-spin", "fluid-in-polarity"),
    "fluid_mode": ("scratch", "fluid-in", "freeze-in", "freeze-spin", "fluid-in-polarity"),
}
EXPERIMENT_LIMIT = 1 << 20  # bytes: an experiment file is a page of TOML


@dataclass
class Cell:
    """One training run of a grid: its options (relative paths as written) and identity."""

    config: dict[str, Any]
    run_id: str
    skip_reason: str | None = None

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))

    @property
    def hash(self) -> str:
        return self.run_id.rsplit("-", 1)[1]


@dataclass
class Experiment:
    name: str
    description: str
    path: Path
    cells: list[Cell]
    compare: list[dict[str, Any]] = field(default_factory=list)


def defaults() -> dict[str, Any]:
    return TrainConfig().to_dict()


def config_hash(cfg: Mapping[str, Any]) -> str:
    """sha256 of the options that differ from TrainConfig's defaults (see the module docstring)."""
    base = defaults()
    ident = {
        k: v
        for k, v in sorted(cfg.items())
        if k not in NOT_HASHED and (k not in base or v != base[k])
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()


def _slug_part(value: Any) -> str:
    text = Path(str(value)).name if "/" in str(value) or os.sep in str(value) else str(value)
    for suffix in (".polar.safetensors", ".polar.json", ".polar", ".pth", ".safetensors"):
        text = text.removesuffix(suffix)
    return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_")[:40] or "x"


def run_id_for(cfg: Mapping[str, Any]) -> str:
    """A readable slug (model, dataset, method, dist, telling options, precision, seed) + 8 hex of
    the hash."""
    base = defaults()
    parts = [cfg["model"], cfg["dataset"], cfg["method"]]
    parts += [cfg[k] for k in ("dist", "weights") if cfg.get(k) and cfg["method"] != "fluid-in"]
    parts += ["norms", cfg["norms"]] if cfg.get("norms") else []
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
    parts += [f"{k}-{cfg[k]}" for k in telling if cfg.get(k) != base.get(k)]
    if cfg["method"] in (*SPIN_METHODS, "freeze-in"):
        parts.append(f"zeros-{cfg['zeros']}")
    if cfg["method"] == "fluid-spin" and cfg["fluid_fraction"] != base["fluid_fraction"]:
        parts.append(f"frac-{cfg['fluid_fraction']}")
    parts += [cfg["precision"], f"s{cfg['seed']}"]
    return "-".join(_slug_part(p) for p in parts) + "-" + config_hash(cfg)[:8]


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
        except tomllib.TOMLDecodeError:
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


def _product(axes: Mapping[str, Any], path: Path) -> list[dict[str, Any]]:
    combos: list[dict[str, Any]] = [{}]
    for key, values in axes.items():
        values = values if isinstance(values, list) else [values]
        if not values:
            raise ConfigError(f"{path}: {key} is an empty list; give at least one value")
        combos = [{**c, key: v} for c in combos for v in values]
    return combos


def load_experiment(path: str | os.PathLike, sets: Sequence[str] = ()) -> Experiment:
    """Read and expand an experiment file into its cells (validated, seed-major order)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"experiment file {path} not found")
    text = read_bytes(path, limit=EXPERIMENT_LIMIT, what="experiment files")
    try:
        data = tomllib.loads(text.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not a TOML experiment file ({exc})") from None
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ConfigError(
            f"{path}: unknown top-level key(s) {unknown}; allowed: {', '.join(SECTIONS)}"
        )
    meta = data.get("experiment", {})
    if not isinstance(meta, dict) or not set(meta) <= {"name", "description"}:
        raise ConfigError(f"{path}: [experiment] holds only name and description")
    base, grid = (
        _keys(data.get("defaults", {}), "defaults", path),
        _keys(data.get("grid", {}), "grid", path),
    )
    weights = {str(k): v for k, v in _check_table(data.get("weights", {}), "weights", path).items()}
    includes = [
        _keys(inc, "include", path) for inc in _tables(data.get("include", []), "include", path)
    ]
    compare = _tables(data.get("compare", []), "compare", path)
    for key, value in parse_sets(sets):
        if key.startswith("weights."):
            weights[key.split(".", 1)[1]] = value
            continue
        to_grid = key.startswith("grid.") or isinstance(value, list)
        key = ALIASES.get(key.split(".", 1)[-1], key.split(".", 1)[-1])
        if key not in defaults():
            raise ConfigError(
                f"--set {key}: unknown key; allowed keys: {', '.join(sorted(defaults()))} or "
                "weights.MODEL"
            )
        (grid if to_grid else base)[key] = value
        (base if to_grid else grid).pop(key, None)
        for inc in includes if not to_grid else ():
            inc.pop(key, None)
    seeds = grid.pop("seed", base.pop("seed", 0))
    seeds = seeds if isinstance(seeds, list) else [seeds]
    _product({"seed": seeds}, path)
    combos = (
        _product(grid, path) if grid or not includes else []
    )  # a file of [[include]]s only: just those
    raw = [(seed, {**base, **combo, "seed": seed}) for seed in seeds for combo in combos]
    for inc in includes:
        inc_seeds = inc.pop("seed", seeds)
        raw += [
            (s, {**base, **combo, "seed": s})
            for s in (inc_seeds if isinstance(inc_seeds, list) else [inc_seeds])
            for combo in _product(inc, path)
        ]
    raw.sort(key=lambda item: seeds.index(item[0]) if item[0] in seeds else len(seeds))
    cells = {}
    for _, options in raw:
        cell = _make_cell(options, weights, path)
        cells.setdefault(cell.run_id, cell)
    if not cells:
        raise ConfigError(f"{path}: the grid is empty")
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


def _make_cell(options: dict[str, Any], weights: Mapping[str, Any], path: Path) -> Cell:
    base = defaults()
    cfg = {**base, **options}
    method = cfg["method"]
    for key, methods in UNUSED.items():
        if method in methods:
            cfg[key] = base[key]
    reason = None
    if method in IN_METHODS and not cfg.get("weights"):
        cfg["weights"] = weights.get(str(cfg["model"])) or weights.get("default")
        if not cfg["weights"]:
            reason = (
                f"{method} needs transferred weights for model {cfg['model']!r}, and none are "
                f'given (set [weights] {cfg["model"]} = "SOURCE" in {path} or --set '
                f"weights.{cfg['model']}=SOURCE)"
            )
    for key in ("weights", "dist"):
        if (
            reason is None
            and is_local_file(cfg.get(key))
            and not Path(cfg[key]).expanduser().exists()
        ):
            reason = f"{method}: {key} file {cfg[key]!r} not found (relative to {Path.cwd()})"
    described = ", ".join(
        f"{k}={options[k]}" for k in ("model", "dataset", "method", "dist", "seed") if k in options
    )
    try:
        config = TrainConfig.from_dict(cfg)
        if reason is None:
            config.validate()
    except (ConfigError, TypeError) as exc:
        raise ConfigError(f"{path}: cell {described}: {exc}") from None
    cfg = config.to_dict()
    # auto must not hide the precision; a pinned one needs no device (report GPU runs anywhere)
    if cfg["precision"] == "auto":
        cfg["precision"] = resolve_precision("auto", resolve_device(cfg["device"]))
    return Cell(cfg, run_id_for(cfg), reason)
