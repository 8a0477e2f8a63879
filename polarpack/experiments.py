"""Declarative experiment grids: expand, run (resumably, in parallel), aggregate and plot.

An experiment file (TOML, or YAML with the same structure) describes a grid of training runs::

    [experiment]
    name = "table1"                       # optional: name and description
    description = "Seed Table 1"

    [defaults]                            # fixed TrainConfig options for every cell
    dataset = "cifar10"
    data_dir = "../shared/data"
    epochs = 20

    [grid]                                # lists; their product is the grid
    model = ["zfnet"]                     # plural aliases work too: models, datasets, methods,
    method = ["freeze-spin", "scratch"]   #   dists / distributions, seeds
    dist = ["paper:alexnet"]
    zeros = ["pin", "free"]               # any TrainConfig option can be a grid axis
    seed = [0, 1, 2]

    [weights]                             # transferred weights per model, for freeze-in / fluid-in
    alexnet = ""                          # empty or absent: those cells are *skipped* with a reason

    [[include]]                           # extra cells: defaults + these options (lists expand);
    method = "freeze-spin"                #   they take the grid's seeds unless they give `seed`
    dist = "examples/rand.polar"

Rules
-----
* Every key in ``defaults``, ``grid`` and ``include`` must be a `TrainConfig` field (or one of the
  plural aliases); anything else is a `ConfigError` naming the key, the file and the allowed keys.
* Options that a method does not use are dropped from its cells (``dist`` for scratch and the IN
  methods, ``weights`` for the SPIN methods and scratch, ``zeros`` for scratch and fluid-in,
  ``fluid_*`` except for fluid-spin), so ``methods x dists`` does not repeat the scratch run.
* Cells run seed-major: all cells of the first seed, then the next seed, ...; within a seed the
  nesting follows the order of the keys in ``[grid]`` (the first key outermost), then includes.
* Relative paths (``data_dir``, ``dist`` and ``weights`` files) are resolved against the
  current working directory when the run starts (run from the repository root). The run id
  hashes them as written, so the same file gives the same ids on every checkout.
* ``--set key=value`` overrides: a TrainConfig field (replaces the grid axis or default),
  ``weights.MODEL=SOURCE``, or ``grid.KEY=[...]``/``seed=[0,1]`` for a list. Values are parsed
  as TOML literals (``3``, ``1e-3``, ``true``, ``["pin","free"]``); anything else is a string.

Results store
-------------
``RESULTS/runs/<run_id>/`` is a normal run directory (see `polarpack.train`);
``RESULTS/index.jsonl`` is an append-only log written only by the parent process: one JSON line
per status change ``{run_id, status, config, error, reason, started, finished, seconds,
final_val_acc, ...}``; the latest line of a run id is its state. Status is one of pending,
running, completed, diverged, failed, skipped. ``RESULTS/experiment.json`` keeps the expanded
grid of the last invocation. ``run_id`` = readable slug + the first 8 hex digits of the sha256
of the cell's config (``threads`` excluded: it does not change results), so rerunning the same
file skips finished runs and resumes interrupted ones from their checkpoint.

Report definitions
------------------
A *group* is a set of cells that differ only in ``seed``. Per group and epoch: mean and sample
standard deviation (n - 1; 0 for one seed) over the seeds that reached that epoch, of train and
validation accuracy. ``epochs_to_40`` is the first epoch whose *mean* validation accuracy is
>= `THRESHOLD` (the seed's dashed line). A seed *converged* when its final validation accuracy is
>= `CONVERGED_ACC` = chance (0.10) + `CONVERGED_MARGIN` (0.05) = 0.15, and it did not diverge
(the seed's criterion is "accuracy above 10%"; the margin keeps a run that hovers at chance from
counting). ``converged`` is reported as k/n over finished seeds.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
import traceback
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from .errors import ConfigError

CHANCE_ACC = 0.10
CONVERGED_MARGIN = 0.05
CONVERGED_ACC = CHANCE_ACC + CONVERGED_MARGIN  # 0.15: final val acc at or above this = converged
THRESHOLD = 0.40  # the seed's dashed line: first epoch whose mean val acc reaches 40%

TOP_LEVEL_KEYS = ("experiment", "defaults", "grid", "weights", "include")
META_KEYS = ("name", "description")
ALIASES = {
    "models": "model", "datasets": "dataset", "methods": "method", "dists": "dist",
    "distributions": "dist", "distribution": "dist", "seeds": "seed",
}
STATUSES = ("pending", "running", "completed", "diverged", "failed", "skipped")
FINISHED = ("completed", "diverged")
INDEX = "index.jsonl"
NOT_HASHED = ("threads", "data_dir", "download")  # where and how fast: not what the run computes

SPIN = ("freeze-spin", "fluid-spin")
IN = ("freeze-in", "fluid-in")
# options dropped from cells whose method does not use them
_UNUSED = {
    "dist": ("scratch", "freeze-in", "fluid-in"),
    "weights": ("scratch", "freeze-spin", "fluid-spin"),
    "zeros": ("scratch", "fluid-in"),
    "eps": ("scratch", "fluid-in"),
    "sampling": ("scratch", "fluid-in", "freeze-in"),
    "fluid_fraction": ("scratch", "fluid-in", "freeze-in", "freeze-spin"),
    "fluid_mode": ("scratch", "fluid-in", "freeze-in", "freeze-spin"),
}
_PATH_KEYS = ("data_dir", "dist", "weights")


def _train_fields() -> dict[str, Any]:
    from .train import TrainConfig

    return {f.name: f for f in fields(TrainConfig)}


def _defaults() -> dict[str, Any]:
    from .train import TrainConfig

    return TrainConfig().to_dict()


# -- loading -------------------------------------------------------------------------------------


def _parse_value(text: str) -> Any:
    import tomllib

    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_sets(items: Iterable[str]) -> list[tuple[str, Any]]:
    out = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value (e.g. --set geometry=imagenet)")
        key, value = item.split("=", 1)
        out.append((key.strip(), _parse_value(value.strip())))
    return out


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"experiment file {path} not found")
    text = path.read_text()
    suffix = path.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            import tomllib

            data = tomllib.loads(text)
    except Exception as exc:  # tomllib.TOMLDecodeError, yaml.YAMLError
        raise ConfigError(f"{path}: cannot parse ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a table/mapping")
    return data


@dataclass
class Cell:
    """One training run of the grid."""

    config: dict[str, Any]  # TrainConfig options as written (relative paths kept)
    run_id: str
    skip_reason: str | None = None
    index: int = 0

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))

    @property
    def group_key(self) -> str:
        return config_hash({k: v for k, v in self.config.items() if k != "seed"})


@dataclass
class Experiment:
    name: str
    description: str
    path: Path | None
    cells: list[Cell]
    grid_keys: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.cells)


def _norm_keys(table: Mapping[str, Any], where: str, path: Path, allowed: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        canon = ALIASES.get(key, key)
        if canon not in allowed:
            raise ConfigError(
                f"{path}: unknown key {key!r} in [{where}]; allowed keys: {', '.join(sorted(allowed))} "
                f"(aliases: {', '.join(sorted(ALIASES))})"
            )
        if canon in out:
            raise ConfigError(f"{path}: key {canon!r} given twice in [{where}] (an alias and its name?)")
        out[canon] = value
    return out


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def load_experiment(path: str | os.PathLike, sets: Sequence[str] | Sequence[tuple[str, Any]] = ()) -> Experiment:
    """Read and expand an experiment file into its cells (validated, seed-major order)."""
    path = Path(path)
    data = _read_file(path)
    return expand(data, path=path, sets=sets)


def expand(data: Mapping[str, Any], *, path: Path | None = None, sets: Sequence[Any] = ()) -> Experiment:
    path = path or Path("<experiment>")
    known = list(_train_fields())
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            raise ConfigError(f"{path}: unknown top-level key {key!r}; allowed: {', '.join(TOP_LEVEL_KEYS)}")
    meta = data.get("experiment") or {}
    if not isinstance(meta, dict):
        raise ConfigError(f"{path}: [experiment] must be a table")
    for key in meta:
        if key not in META_KEYS:
            raise ConfigError(f"{path}: unknown key {key!r} in [experiment]; allowed: {', '.join(META_KEYS)}")
    for section in ("defaults", "grid", "weights"):
        if not isinstance(data.get(section, {}), dict):
            raise ConfigError(f"{path}: [{section}] must be a table")
    defaults = _norm_keys(data.get("defaults", {}), "defaults", path, known)
    grid = _norm_keys(data.get("grid", {}), "grid", path, known)
    weights = {str(k): v for k, v in (data.get("weights") or {}).items()}
    includes_raw = data.get("include", []) or []
    if isinstance(includes_raw, dict):
        includes_raw = [includes_raw]
    if not isinstance(includes_raw, list) or not all(isinstance(i, dict) for i in includes_raw):
        raise ConfigError(f"{path}: [[include]] must be a list of tables")
    includes = [_norm_keys(inc, "include", path, known) for inc in includes_raw]

    for key, value in (parse_sets(sets) if sets and isinstance(next(iter(sets)), str) else list(sets)):
        if key.startswith("weights."):
            weights[key.split(".", 1)[1]] = value
            continue
        to_grid = key.startswith("grid.")
        key = key.split(".", 1)[1] if to_grid or key.startswith("defaults.") else key
        canon = ALIASES.get(key, key)
        if canon not in known:
            raise ConfigError(f"--set {key}: unknown key; allowed keys: {', '.join(sorted(known))} or weights.MODEL")
        if to_grid or isinstance(value, list):
            grid[canon] = _as_list(value)
            defaults.pop(canon, None)
        else:
            grid.pop(canon, None)
            defaults[canon] = value
            for inc in includes:
                inc.pop(canon, None)

    seeds = _as_list(grid.pop("seed", defaults.pop("seed", 0)))
    axes = [(k, _as_list(v)) for k, v in grid.items()]
    for key, values in axes:
        if not values:
            raise ConfigError(f"{path}: [grid] {key} is an empty list")
    combos: list[dict[str, Any]] = [{}]
    for key, values in axes:
        combos = [{**c, key: v} for c in combos for v in values]
    raw: list[tuple[int, int, dict[str, Any]]] = []  # (seed, order, options)
    order = 0
    for seed in seeds:
        for combo in combos:
            raw.append((seed, order, {**defaults, **combo, "seed": seed}))
            order += 1
    for inc in includes:
        inc_seeds = _as_list(inc.get("seed", seeds))
        inc_axes = [(k, _as_list(v)) for k, v in inc.items() if k != "seed"]
        inc_combos: list[dict[str, Any]] = [{}]
        for key, values in inc_axes:
            inc_combos = [{**c, key: v} for c in inc_combos for v in values]
        for seed in inc_seeds:
            for combo in inc_combos:
                raw.append((seed, order, {**defaults, **combo, "seed": seed}))
                order += 1
    raw.sort(key=lambda t: (seeds.index(t[0]) if t[0] in seeds else len(seeds) + int(t[0]), t[1]))

    cells: list[Cell] = []
    seen: set[str] = set()
    for _, _, options in raw:
        cell = _make_cell(options, weights, path)
        if cell.run_id in seen:
            continue
        seen.add(cell.run_id)
        cell.index = len(cells)
        cells.append(cell)
    if not cells:
        raise ConfigError(f"{path}: the grid is empty")
    name = str(meta.get("name") or (path.stem if path else "experiment"))
    return Experiment(name, str(meta.get("description", "")), path, cells, [k for k, _ in axes] + ["seed"])


def _make_cell(options: dict[str, Any], weights: Mapping[str, Any], path: Path) -> Cell:
    from .train import TrainConfig

    base = _defaults()
    cfg = {**base, **options}
    method = cfg.get("method")
    for key, methods in _UNUSED.items():
        if method in methods:
            cfg[key] = base[key]
    reason = None
    if method in IN and not cfg.get("weights"):
        source = weights.get(str(cfg.get("model"))) or weights.get("default")
        if source:
            cfg["weights"] = source
        else:
            reason = (
                f"{method} needs transferred weights for model {cfg.get('model')!r}, and none are given "
                f"(set [weights] {cfg.get('model')} = \"SOURCE\" in {path} or --set weights.{cfg.get('model')}=SOURCE)"
            )
    if reason is None and method in IN and _looks_like_path(cfg["weights"]) and not Path(cfg["weights"]).expanduser().exists():
        reason = f"{method}: weights file {cfg['weights']!r} not found (relative to {Path.cwd()})"
    if reason is None and method in SPIN and cfg.get("dist") and _looks_like_path(cfg["dist"]) and not Path(cfg["dist"]).expanduser().exists():
        reason = f"{method}: distribution file {cfg['dist']!r} not found (relative to {Path.cwd()})"
    try:
        config = TrainConfig.from_dict(cfg)
        if reason is None:
            config.validate()
    except ConfigError as exc:
        raise ConfigError(f"{path}: cell {_describe(options)}: {exc}") from None
    except TypeError as exc:
        raise ConfigError(f"{path}: cell {_describe(options)}: {exc}") from None
    cfg = config.to_dict()
    from .train import resolve_device, resolve_precision

    cfg["precision"] = resolve_precision(cfg["precision"], resolve_device(cfg["device"]))  # auto must not hide it
    return Cell(cfg, run_id_for(cfg), reason)


def _looks_like_path(ref: Any) -> bool:
    if not isinstance(ref, str) or ref.startswith(("paper:", "hf://")) or "://" in ref:
        return False
    return "/" in ref or os.sep in ref or Path(ref).suffix.lower() in (".polar", ".json", ".safetensors", ".pth", ".pt", ".npz", ".npy", ".bin")


def _describe(options: Mapping[str, Any]) -> str:
    keys = ("model", "dataset", "method", "dist", "seed")
    return ", ".join(f"{k}={options[k]}" for k in keys if k in options)


def config_hash(cfg: Mapping[str, Any]) -> str:
    """sha256 of the options that differ from TrainConfig's defaults, so that a new option (with a
    default that keeps today's behaviour) does not change the identity of existing runs."""
    base = _defaults()
    ident = {k: v for k, v in sorted(cfg.items()) if k not in NOT_HASHED and (k not in base or v != base[k])}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()


def _slug_part(value: Any) -> str:
    text = str(value)
    if "/" in text or os.sep in text:
        text = Path(text).name
    for suffix in (".polar.safetensors", ".polar.json", ".polar", ".pth", ".safetensors"):
        if text.endswith(suffix):
            text = text[: -len(suffix)]
    return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_")[:40] or "x"


def run_id_for(cfg: Mapping[str, Any]) -> str:
    """Readable slug (model, dataset, method, dist, non-default options, seed) + 8 hex of the hash."""
    base = _defaults()
    parts = [cfg["model"], cfg["dataset"], cfg["method"]]
    if cfg.get("dist"):
        parts.append(cfg["dist"])
    skip = {"model", "dataset", "method", "dist", "seed", "weights", "data_dir", "threads", "device"}
    for key in ("geometry", "epochs", "fluid_mode", "constrain", "optimizer"):
        if key in cfg and key not in skip and cfg[key] != base[key]:
            parts.append(f"{key}-{cfg[key]}")
    if cfg.get("method") in SPIN + ("freeze-in",):
        parts.append(f"zeros-{cfg['zeros']}")
    if cfg.get("method") == "fluid-spin" and cfg.get("fluid_fraction") != base["fluid_fraction"]:
        parts.append(f"frac-{cfg['fluid_fraction']}")
    parts += [cfg.get("precision", "fp32"), f"s{cfg.get('seed', 0)}"]
    return "-".join(_slug_part(p) for p in parts) + "-" + config_hash(cfg)[:8]


def resolved_for_run(cfg: Mapping[str, Any], cwd: Path | None = None) -> dict[str, Any]:
    """The cell's options with relative paths made absolute against `cwd` (default: the CWD)."""
    cwd = cwd or Path.cwd()
    out = dict(cfg)
    for key in _PATH_KEYS:
        value = out.get(key)
        if value and (key == "data_dir" or _looks_like_path(value)):
            p = Path(value).expanduser()
            out[key] = str(p if p.is_absolute() else (cwd / p).resolve())
    return out


# -- results store -------------------------------------------------------------------------------


class ResultsStore:
    """`RESULTS/runs/<run_id>/` run directories plus the append-only `RESULTS/index.jsonl`."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.runs = self.root / "runs"

    def run_dir(self, run_id: str) -> Path:
        return self.runs / run_id

    def append(self, record: Mapping[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"time": time.time(), **record}, default=str) + "\n"
        with open(self.root / INDEX, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    def records(self) -> dict[str, dict[str, Any]]:
        """The latest record of each run id (earlier fields carried over)."""
        path = self.root / INDEX
        latest: dict[str, dict[str, Any]] = {}
        if not path.exists():
            return latest
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line after a hard kill
            rid = rec.get("run_id")
            if rid:
                latest[rid] = {**latest.get(rid, {}), **rec}
        return latest

    def disk_state(self, run_id: str) -> str:
        """What the run directory says: completed/diverged (summary), partial (checkpoint), none."""
        d = self.run_dir(run_id)
        summary = d / "summary.json"
        if summary.exists():
            try:
                status = json.loads(summary.read_text()).get("status")
            except (json.JSONDecodeError, OSError):
                status = None
            if status in FINISHED:
                return status
        if (d / "training_state.safetensors").exists() and (d / "config.json").exists():
            return "partial"
        return "none"


# -- running -------------------------------------------------------------------------------------


def _run_cell(cfg: dict[str, Any], run_dir: str, resume: bool, events=None, run_id: str = "", nproc: int = 1) -> dict[str, Any]:
    """Train one cell (in this process or a worker; with nproc > 1 as a torchrun job of nproc
    processes). Never raises: errors come back as 'failed'."""
    from .train import TrainConfig, train

    t0 = time.time()

    def on_epoch(row: dict[str, Any]) -> None:
        if events is not None:
            events.put((run_id, row.get("epoch"), row.get("val_acc")))

    try:
        if nproc > 1:
            result = launch(cfg, run_dir, nproc, resume=resume, log=Path(run_dir).parent / f"{Path(run_dir).name}.launch.log")
        elif resume:
            result = train(resume=run_dir, progress=False, on_epoch=on_epoch)
        else:
            result = train(TrainConfig.from_dict(cfg), out=run_dir, progress=False, on_epoch=on_epoch)
        s = result.summary
        return {"status": result.status, "seconds": time.time() - t0, "final_val_acc": s.get("final_val_acc"),
                "best_val_acc": s.get("best_val_acc"), "epochs_done": s.get("epochs_done"),
                "epochs_to_threshold": s.get("epochs_to_threshold"), "resumed": resume}
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - a crashed cell must be recorded, not lost
        tb = traceback.format_exc(limit=6)
        return {"status": "failed", "seconds": time.time() - t0, "error": f"{type(exc).__name__}: {exc}", "traceback": tb}


def launch(config: Mapping[str, Any], run_dir: str | os.PathLike, nproc: int, *, resume: bool = False,
           log: str | os.PathLike | None = None, timeout: float | None = None):
    """Train one run as a torchrun job of `nproc` processes (`polarpack train` under
    `torch.distributed.run --standalone`); return its TrainResult, read back from the run directory."""
    import subprocess
    import sys
    import tempfile

    from .errors import PolarpackError
    from .train import TrainConfig, TrainResult, read_metrics

    cfg = TrainConfig.from_dict(dict(config)).validate()
    run_dir = Path(run_dir)
    with tempfile.TemporaryDirectory(prefix="polarpack-launch-") as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps(cfg.to_dict()))
        args = ["--resume", str(run_dir)] if resume else ["--config", str(Path(tmp) / "config.json"), "--out", str(run_dir)]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "polarpack", "train", "--quiet", *args]
        env = {**os.environ, "OMP_NUM_THREADS": str(cfg.threads or 1)}
        with open(log, "ab") if log else open(os.devnull, "wb") as out:
            try:
                proc = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False)
            except subprocess.TimeoutExpired:
                raise PolarpackError(f"distributed run {run_dir} did not finish within {timeout} s") from None
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    if proc.returncode not in (0, 3) or summary.get("status") not in FINISHED:
        raise PolarpackError(f"distributed run {run_dir} ({nproc} processes) failed with exit status {proc.returncode}"
                             + (f"; see {log}" if log else ""))
    return TrainResult(run_dir, summary["status"], read_metrics(run_dir), summary, cfg)


@dataclass
class GridResult:
    results_dir: Path
    counts: dict[str, int]
    records: dict[str, dict[str, Any]]
    interrupted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"results": str(self.results_dir), "counts": self.counts, "interrupted": self.interrupted,
                "runs": [{"run_id": k, **{f: v.get(f) for f in ("status", "final_val_acc", "error", "reason", "seconds")}}
                         for k, v in self.records.items()]}


def default_results_dir(path: str | os.PathLike) -> Path:
    return Path("results") / Path(path).stem


def plan(exp: Experiment, store: ResultsStore) -> list[dict[str, Any]]:
    """What a run of the grid would do with each cell: skip, done, resume or run."""
    rows = []
    for cell in exp.cells:
        if cell.skip_reason:
            action = "skip"
        else:
            state = store.disk_state(cell.run_id)
            action = {"completed": "done", "diverged": "done", "partial": "resume"}.get(state, "run")
        rows.append({"run_id": cell.run_id, "seed": cell.seed, "method": cell.config["method"], "action": action,
                     "reason": cell.skip_reason})
    return rows


def run_experiment(
    exp: Experiment,
    results: str | os.PathLike,
    *,
    jobs: int = 1,
    progress: bool = True,
    on_cell: Callable[[Cell, dict[str, Any]], None] | None = None,
    cores: int | None = None,
    nproc_per_run: int = 1,
) -> GridResult:
    """Run every cell not finished yet; record each status change in the index.

    jobs > 1 runs cells in spawned worker processes with ``threads = max(1, cores // jobs)``
    unless the cell sets ``threads``; `nproc_per_run > 1` runs each cell as a torchrun job of that
    many processes (polarpack.distributed.launch), and the cores are split over jobs x processes.
    `on_cell(cell, outcome)` is called in this process after
    each cell (a KeyboardInterrupt from it stops the grid like Ctrl-C would)."""
    store = ResultsStore(results)
    store.root.mkdir(parents=True, exist_ok=True)
    cores = cores or os.cpu_count() or 1
    jobs = max(1, int(jobs))
    nproc_per_run = max(1, int(nproc_per_run))
    threads = max(1, cores // (jobs * nproc_per_run))
    (store.root / "experiment.json").write_text(json.dumps({
        "name": exp.name, "description": exp.description, "file": str(exp.path), "grid_keys": exp.grid_keys,
        "cells": [{"run_id": c.run_id, "config": c.config, "skip_reason": c.skip_reason} for c in exp.cells],
    }, indent=1, default=str) + "\n")

    todo: list[tuple[Cell, bool]] = []
    known = store.records()
    for cell in exp.cells:
        base = {"run_id": cell.run_id, "config": cell.config, "experiment": exp.name, "group": cell.group_key[:12]}
        if cell.skip_reason:
            store.append({**base, "status": "skipped", "reason": cell.skip_reason})
            continue
        state = store.disk_state(cell.run_id)
        if state in FINISHED:
            if known.get(cell.run_id, {}).get("status") != state:
                summary = json.loads((store.run_dir(cell.run_id) / "summary.json").read_text())
                store.append({**base, "status": state, "final_val_acc": summary.get("final_val_acc")})
            continue
        if cell.run_id not in known:
            store.append({**base, "status": "pending"})
        todo.append((cell, state == "partial"))

    total = len(exp.cells)
    done = total - len(todo)
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        epochs_left = sum(int(c.config["epochs"]) - _epochs_done(store, c.run_id, partial) for c, partial in todo)
        bar = tqdm(total=max(epochs_left, 1), unit="epoch", desc=f"{exp.name}", dynamic_ncols=True, file=None)
        bar.set_postfix_str(f"runs {done}/{total}")

    def start(cell: Cell, partial: bool) -> tuple[dict[str, Any], str]:
        cfg = resolved_for_run(cell.config)
        if cfg.get("threads") is None:
            cfg["threads"] = threads
        run_dir = store.run_dir(cell.run_id)
        if not partial and run_dir.exists():  # crashed before its first checkpoint: start clean
            for f in run_dir.iterdir():
                if f.is_file():
                    f.unlink()
        store.append({"run_id": cell.run_id, "status": "running", "started": time.time(), "resumed": partial,
                      "threads": cfg["threads"]})
        in_flight.add(cell.run_id)
        return cfg, str(run_dir)

    def finish(cell: Cell, outcome: dict[str, Any]) -> None:
        nonlocal done
        done += 1
        in_flight.discard(cell.run_id)
        store.append({"run_id": cell.run_id, "finished": time.time(), **outcome})
        if bar is not None:
            bar.set_postfix_str(f"runs {done}/{total}")
            if outcome["status"] == "failed":
                bar.write(f"failed: {cell.run_id}: {outcome.get('error')}")
        if on_cell is not None:
            on_cell(cell, outcome)

    interrupted = False
    in_flight: set[str] = set()
    try:
        if jobs == 1:
            events = _BarEvents(bar)
            for cell, partial in todo:
                cfg, run_dir = start(cell, partial)
                outcome = _run_cell(cfg, run_dir, partial, events, cell.run_id, nproc_per_run)
                finish(cell, outcome)
        else:
            _run_parallel(todo, jobs, start, finish, bar, nproc_per_run)
    except KeyboardInterrupt:
        interrupted = True
        for rid in sorted(in_flight):  # back to pending; the next invocation resumes them
            store.append({"run_id": rid, "status": "pending", "interrupted": True,
                          "epochs_done": len(_read_rows(store, rid))})
    finally:
        if bar is not None:
            bar.close()
    records = store.records()
    counts: dict[str, int] = {}
    for cell in exp.cells:
        st = records.get(cell.run_id, {}).get("status", "pending")
        counts[st] = counts.get(st, 0) + 1
    return GridResult(store.root, counts, {c.run_id: records.get(c.run_id, {}) for c in exp.cells}, interrupted)


class _BarEvents:
    def __init__(self, bar):
        self.bar = bar

    def put(self, item):
        if self.bar is not None:
            self.bar.update(1)


def _read_rows(store: ResultsStore, run_id: str) -> list[dict[str, Any]]:
    from .train import read_metrics

    return read_metrics(store.run_dir(run_id))


def _epochs_done(store: ResultsStore, run_id: str, partial: bool) -> int:
    if not partial:
        return 0
    from .train import read_metrics

    return len(read_metrics(store.run_dir(run_id)))


def _run_parallel(todo, jobs, start, finish, bar, nproc: int = 1) -> None:
    import multiprocessing as mp
    import queue as queue_mod
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    ctx = mp.get_context("spawn")
    manager = ctx.Manager()
    events = manager.Queue()
    pending = list(todo)
    running: dict[Any, Any] = {}
    executor = ProcessPoolExecutor(max_workers=jobs, mp_context=ctx)
    try:
        while pending or running:
            while pending and len(running) < jobs:
                cell, partial = pending.pop(0)
                cfg, run_dir = start(cell, partial)
                running[executor.submit(_run_cell, cfg, run_dir, partial, events, cell.run_id, nproc)] = cell
            finished, _ = wait(list(running), timeout=2.0, return_when=FIRST_COMPLETED)
            while True:
                try:
                    events.get_nowait()
                except (queue_mod.Empty, OSError, EOFError):
                    break
                if bar is not None:
                    bar.update(1)
            for fut in finished:
                cell = running.pop(fut)
                try:
                    outcome = fut.result()
                except BrokenProcessPool as exc:
                    outcome = {"status": "failed", "error": f"worker process died: {exc}"}
                    finish(cell, outcome)
                    executor.shutdown(wait=False, cancel_futures=True)
                    executor = ProcessPoolExecutor(max_workers=jobs, mp_context=ctx)
                    for other, c in list(running.items()):  # their worker pool is gone: run them again
                        pending.insert(0, (c, False))
                        running.pop(other)
                    continue
                except Exception as exc:  # noqa: BLE001
                    outcome = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
                finish(cell, outcome)
    except BaseException:
        # Ctrl-C / SIGTERM: stop the workers too (each run resumes from its last epoch checkpoint;
        # checkpoints and metrics are written atomically, so killing mid-epoch loses only that epoch)
        for proc in list(getattr(executor, "_processes", {}).values()):
            proc.terminate()
        raise
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
        try:
            manager.shutdown()
        except Exception:  # noqa: BLE001
            pass


# -- aggregation ---------------------------------------------------------------------------------


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None, None
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return mean, None  # a spread needs two seeds: report none rather than a false 0
    var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)
    return mean, math.sqrt(var)


def load_cells(target: str | os.PathLike, results: str | os.PathLike | None = None,
               sets: Sequence[str] = ()) -> tuple[str, list[dict[str, Any]], ResultsStore, list[str]]:
    """Cells (config, run_id, skip_reason) of an experiment file or a results directory."""
    target = Path(target)
    if target.is_dir():
        store = ResultsStore(target)
        exp_json = target / "experiment.json"
        if exp_json.exists():
            meta = json.loads(exp_json.read_text())
            cells = meta["cells"]
            name, keys = meta.get("name", target.name), meta.get("grid_keys", [])
        else:
            recs = store.records()
            if not recs:
                raise ConfigError(f"{target}: neither experiment.json nor {INDEX} found; is it a results directory?")
            cells = [{"run_id": k, "config": v.get("config", {}), "skip_reason": v.get("reason")} for k, v in recs.items()]
            name, keys = target.name, []
        return name, cells, store, keys
    exp = load_experiment(target, sets)
    store = ResultsStore(results or default_results_dir(target))
    return exp.name, [{"run_id": c.run_id, "config": c.config, "skip_reason": c.skip_reason} for c in exp.cells], store, exp.grid_keys


def aggregate(cells: Sequence[Mapping[str, Any]], store: ResultsStore, *, partial: bool = False) -> list[dict[str, Any]]:
    """Per group (config minus seed): per-epoch mean/std over seeds, final val acc, convergence.

    partial=True also counts runs that have not finished (their last epoch so far stands in for
    the final one; the group is marked ``partial`` with the epochs done)."""
    from .train import read_metrics

    records = store.records()
    varying = _varying_keys([c["config"] for c in cells])
    groups: dict[str, dict[str, Any]] = {}
    for c in cells:
        cfg = c["config"]
        key = config_hash({k: v for k, v in cfg.items() if k != "seed"})
        g = groups.setdefault(key, {"group": key[:12], "config": {k: v for k, v in cfg.items() if k != "seed"},
                                    "label": _label(cfg, varying), "planned": 0, "seeds": [], "runs": [],
                                    "skipped": [], "failed": [], "unfinished": []})
        g["planned"] += 1
        rid = c["run_id"]
        rec = records.get(rid, {})
        state = store.disk_state(rid)
        if c.get("skip_reason") or rec.get("status") == "skipped":
            g["skipped"].append({"run_id": rid, "seed": cfg.get("seed"), "reason": c.get("skip_reason") or rec.get("reason")})
        elif state in FINISHED:
            rows = read_metrics(store.run_dir(rid))
            g["runs"].append({"run_id": rid, "seed": cfg.get("seed"), "status": state, "metrics": rows})
        elif rec.get("status") == "failed":
            rows = read_metrics(store.run_dir(rid))
            g["failed"].append({"run_id": rid, "seed": cfg.get("seed"), "error": rec.get("error"), "epochs_done": len(rows)})
            if partial and rows:  # e.g. a resume that failed: its epochs so far are still measurements
                g["runs"].append({"run_id": rid, "seed": cfg.get("seed"), "status": "partial", "metrics": rows})
        else:
            rows = read_metrics(store.run_dir(rid))
            g["unfinished"].append({"run_id": rid, "seed": cfg.get("seed"), "status": rec.get("status", "pending"),
                                    "epochs_done": len(rows), "epochs": cfg.get("epochs")})
            if partial and rows:
                g["runs"].append({"run_id": rid, "seed": cfg.get("seed"), "status": "partial", "metrics": rows})
    out = []
    for g in groups.values():
        runs = g["runs"]
        n_epochs = max((len(r["metrics"]) for r in runs), default=0)
        curve = []
        for e in range(1, n_epochs + 1):
            at = [next((m for m in r["metrics"] if m["epoch"] == e), None) for r in runs]
            at = [m for m in at if m is not None]
            tm, ts = _mean_std([m.get("train_acc") for m in at])
            vm, vs = _mean_std([m.get("val_acc") for m in at])
            curve.append({"epoch": e, "n": len(at), "train_mean": tm, "train_std": ts, "val_mean": vm, "val_std": vs})
        finals = [r["metrics"][-1]["val_acc"] if r["metrics"] else None for r in runs]
        fm, fs = _mean_std(finals)
        conv = [r["status"] in ("completed", "partial") and f is not None and f >= CONVERGED_ACC for r, f in zip(runs, finals)]
        crossing = next((p["epoch"] for p in curve if p["val_mean"] is not None and p["val_mean"] >= THRESHOLD), None)
        out.append({
            "group": g["group"], "label": g["label"], "config": g["config"],
            "planned": g["planned"], "finished": len(runs),
            "seeds": sorted(r["seed"] for r in runs),
            "final_val_mean": fm, "final_val_std": fs,
            "final_val_accs": finals,
            "converged": sum(conv), "converged_fraction": (sum(conv) / len(conv)) if conv else None,
            "diverged": sum(r["status"] == "diverged" for r in runs),
            "partial": [f"s{r['seed']}: {len(r['metrics'])}/{g['config'].get('epochs')} epochs" for r in runs if r["status"] == "partial"],
            "epochs_to_40": crossing, "curve": curve,
            "skipped": g["skipped"], "failed": g["failed"], "unfinished": g["unfinished"],
            "run_ids": [r["run_id"] for r in runs],
        })
    return out


def _varying_keys(configs: Sequence[Mapping[str, Any]]) -> list[str]:
    keys: list[str] = []
    for k in (configs[0] if configs else {}):
        if k in ("seed", "threads"):
            continue
        if len({json.dumps(c.get(k), sort_keys=True, default=str) for c in configs}) > 1:
            keys.append(k)
    return keys


def _label(cfg: Mapping[str, Any], varying: Sequence[str]) -> str:
    parts = []
    for k in varying:
        v = cfg.get(k)
        if v is None:
            continue
        if k in ("model", "dataset", "method", "dist", "weights"):
            parts.append(_short(v))
        else:
            parts.append(f"{k}={_short(v)}")
    return " ".join(parts) or str(cfg.get("method"))


def _short(value: Any) -> str:
    text = str(value)
    return Path(text).name if ("/" in text and not text.startswith("hf://")) else text


# -- report output -------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    if std is None:
        return f"{100 * mean:.1f} (n=1)"
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def markdown_report(name: str, groups: Sequence[Mapping[str, Any]]) -> str:
    lines = [f"# {name}", "",
             f"Final validation accuracy (%) mean ± sample std over finished seeds; converged = final val acc "
             f">= {100 * CONVERGED_ACC:.0f}% (chance 10% + margin {100 * CONVERGED_MARGIN:.0f}%); "
             f"epochs to 40% = first epoch whose mean val acc >= {100 * THRESHOLD:.0f}%.", "",
             "| group | model | dataset | method | dist | seeds counted / planned | final val acc % | best epoch-mean val % | epochs to 40% | converged | notes |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for g in groups:
        cfg = g["config"]
        best = max((p["val_mean"] for p in g["curve"] if p["val_mean"] is not None), default=None)
        notes = []
        if g["diverged"]:
            notes.append(f"{g['diverged']} diverged")
        if g["failed"]:
            notes.append(f"{len(g['failed'])} failed (after {g['failed'][0].get('epochs_done', 0)} epochs): {g['failed'][0]['error']}")
        if g["skipped"]:
            notes.append(f"skipped: {g['skipped'][0]['reason']}")
        if g.get("partial"):
            notes.append("PARTIAL, unfinished runs counted at their last epoch: " + ", ".join(g["partial"]))
        elif g["unfinished"]:
            notes.append(f"{len(g['unfinished'])} not finished")
        conv = f"{g['converged']}/{g['finished']}" if g["finished"] else "-"
        lines.append(
            f"| {g['label']} | {cfg.get('model')} | {cfg.get('dataset')} | {cfg.get('method')} | {_short(cfg.get('dist') or '-')} | "
            f"{g['finished']}/{g['planned']} | {_pm(g['final_val_mean'], g['final_val_std'])} | {_pct(best)} | "
            f"{g['epochs_to_40'] if g['epochs_to_40'] is not None else '-'} | {conv} | {'; '.join(notes).replace('|', '/')} |"
        )
    table1 = table1_markdown(groups)
    if table1:
        lines += ["", table1]
    lines += ["", "## Per-epoch validation accuracy (mean ± std, %)", ""]
    for g in groups:
        if not g["curve"]:
            continue
        lines.append(f"- **{g['label']}** ({g['finished']} seeds): " + ", ".join(
            f"{p['epoch']}: {_pm(p['val_mean'], p['val_std'])}" for p in g["curve"]))
    return "\n".join(lines) + "\n"


def table1_markdown(groups: Sequence[Mapping[str, Any]]) -> str | None:
    """The seed's Table 1 next to ours: one row per paper preset, columns per zeros mode."""
    from .presets import PRESETS

    rows = [g for g in groups if g["config"].get("dist") in PRESETS and g["config"].get("method") == "freeze-spin"]
    if not rows:
        return None
    zeros = sorted({g["config"].get("zeros") for g in rows}, key=lambda z: (z != "pin", str(z)))  # the seed's pin first
    header = "| experiment | description | paper converged | paper val acc % | " + " | ".join(
        f"ours zeros={z}: final val acc % | converged" for z in zeros) + " |"
    lines = ["## Table 1: the seed's results next to ours (Freeze SPIN-Polarity)", "",
             "Paper: ZFNet, CIFAR-10, 20 epochs (printed values). Ours: mean ± std over finished seeds, "
             f"converged k/n (final val acc >= {100 * CONVERGED_ACC:.0f}%).", "",
             header, "| --- | --- | --- | --- | " + " | ".join("--- | ---" for _ in zeros) + " |"]
    other = sorted({(g["config"].get("model"), g["config"].get("dataset"), g["config"].get("geometry")) for g in rows})
    for model, dataset, geometry in other:
        if len(other) > 1:
            lines.append(f"| **{model} {dataset} {geometry}** | | | | " + " | ".join("| " for _ in zeros) + "|")
        for name, preset in PRESETS.items():
            cells = []
            for z in zeros:
                g = next((g for g in rows if g["config"].get("dist") == name and g["config"].get("zeros") == z
                          and (g["config"].get("model"), g["config"].get("dataset"), g["config"].get("geometry")) == (model, dataset, geometry)), None)
                if g is None or not g["finished"]:
                    cells.append("not run | -" if g is None else f"pending (0/{g['planned']}) | -")
                else:
                    cells.append(f"{_pm(g['final_val_mean'], g['final_val_std'])} | {g['converged']}/{g['finished']}")
            desc = preset.description.split(":", 1)[-1].strip().split(" (")[0]
            lines.append(f"| {name} | {desc} | {'yes' if preset.paper_converged else 'no'} | {preset.paper_accuracy} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_figure(groups: Sequence[Mapping[str, Any]], path: str | os.PathLike, title: str = "") -> Path | None:
    """Seed Figure 1/2 style: rows train/val, one column per model x dataset; per group a mean line,
    a ±std band and a dashed vertical line where the mean val acc first reaches 40%."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [g for g in groups if g["curve"]]
    if not groups:
        return None
    panels = sorted({(g["config"].get("model"), g["config"].get("dataset")) for g in groups})
    fig, axes = plt.subplots(2, len(panels), figsize=(5.2 * len(panels), 7.5), squeeze=False, sharey="row")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    labels = sorted({_panel_label(g) for g in groups})
    color_of = {lab: colors[i % len(colors)] if i < len(colors) else plt.cm.tab20(i % 20) for i, lab in enumerate(labels)}
    for col, (model, dataset) in enumerate(panels):
        for g in (g for g in groups if (g["config"].get("model"), g["config"].get("dataset")) == (model, dataset)):
            lab = _panel_label(g)
            c = color_of[lab]
            ep = [p["epoch"] for p in g["curve"]]
            for row, key in enumerate(("train", "val")):
                ax = axes[row][col]
                m = [p[f"{key}_mean"] for p in g["curve"]]
                s = [p[f"{key}_std"] or 0.0 for p in g["curve"]]
                ax.plot(ep, m, color=c, label=f"{lab} (n={g['finished']}{', partial' if g.get('partial') else ''})")
                ax.fill_between(ep, [a - b for a, b in zip(m, s)], [a + b for a, b in zip(m, s)], color=c, alpha=0.2, linewidth=0)
                if g["epochs_to_40"] is not None:
                    ax.axvline(g["epochs_to_40"], color=c, linestyle="--", linewidth=1)
        for row, key in enumerate(("Training", "Validation")):
            ax = axes[row][col]
            ax.set_title(f"{model} / {dataset}: {key.lower()}")
            ax.set_xlabel("epoch")
            ax.set_ylabel(f"{key} accuracy")
            ax.axhline(THRESHOLD, color="grey", linewidth=0.5, linestyle=":")
            max_epochs = max(int(g["config"].get("epochs") or 1) for g in groups)
            ax.set_xlim(1, max(max_epochs, 2))
            ax.grid(alpha=0.3)
        axes[1][col].legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _panel_label(g: Mapping[str, Any]) -> str:
    parts = [p for p in g["label"].split(" ") if p not in (str(g["config"].get("model")), str(g["config"].get("dataset")))]
    return " ".join(parts) or str(g["config"].get("method"))


def runs_table(cells: Sequence[Mapping[str, Any]], store: ResultsStore) -> list[dict[str, Any]]:
    """One compact row per cell: id, key options, status, accuracies, time (no checkpoints)."""
    records = store.records()
    out = []
    for c in cells:
        cfg, rid = c["config"], c["run_id"]
        rec = records.get(rid, {})
        summary_path = store.run_dir(rid) / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        status = "skipped" if c.get("skip_reason") else (summary.get("status") if summary.get("status") in FINISHED else rec.get("status", "pending"))
        out.append({
            "run_id": rid, "model": cfg.get("model"), "dataset": cfg.get("dataset"), "geometry": cfg.get("geometry"),
            "method": cfg.get("method"), "dist": cfg.get("dist"), "weights": cfg.get("weights"), "zeros": cfg.get("zeros"),
            "seed": cfg.get("seed"), "status": status, "epochs_done": summary.get("epochs_done"),
            "final_val_acc": summary.get("final_val_acc"), "final_train_acc": summary.get("final_train_acc"),
            "best_val_acc": summary.get("best_val_acc"), "epochs_to_40": summary.get("epochs_to_threshold"),
            "train_seconds": summary.get("train_seconds"), "error": rec.get("error"), "reason": c.get("skip_reason") or rec.get("reason"),
        })
    return out


def report(target: str | os.PathLike, *, results: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
           sets: Sequence[str] = (), partial: bool = False) -> dict[str, Any]:
    """Aggregate an experiment; with `out`, write report.md, report.json, runs.jsonl and figure.png.
    partial=True also counts unfinished runs up to their last epoch (marked in the tables)."""
    name, cells, store, _ = load_cells(target, results, sets)
    groups = aggregate(cells, store, partial=partial)
    if partial:
        name = f"{name} (including unfinished runs)"
    md = markdown_report(name, groups)
    result: dict[str, Any] = {
        "name": name, "results": str(store.root), "converged_acc": CONVERGED_ACC, "threshold": THRESHOLD,
        "groups": groups, "markdown": md, "files": [],
    }
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.md").write_text(md)
        slim = [{k: v for k, v in g.items() if k not in ("run_ids",)} for g in groups]
        (out / "report.json").write_text(json.dumps({k: v for k, v in result.items() if k not in ("markdown", "files", "groups")}
                                                    | {"groups": slim}, indent=1, default=str) + "\n")
        rows = runs_table(cells, store)
        (out / "runs.jsonl").write_text("".join(json.dumps(r, default=str) + "\n" for r in rows))
        files = [out / "report.md", out / "report.json", out / "runs.jsonl"]
        fig = plot_figure(groups, out / "figure.png", title=name)
        if fig is not None:
            files.append(fig)
        result["files"] = [str(f) for f in files]
    return result
