"""A run directory: the files of one training run, written so that a crash loses nothing and a
resume finds what it needs or refuses clearly.

    config.json                 the options, what they resolved to, where it computed, its token
    metrics.jsonl, metrics.csv  one row per finished epoch
    summary.json                status (running, completed, diverged; failed in a grid), accuracy
    model.safetensors           the weights at the last epoch-end checkpoint and at the end
    training_state.safetensors  what a resume needs (weights, optimizer, sign targets, how far an
                                unfinished epoch got); then gone
    init.safetensors            (save_init) the initial kernels and targets, as `materialize` writes
    earlier/<run token>/        attempts started over (`set_aside`): their config, metrics, summary

Three things tie the files of one run together: the run token (random, in config.json, the
summary and the training state), the config digest (sha256 of the canonical options, in the
summary and the training state: an edited config.json is caught), and the epoch reached (the
training state's epoch must be one the metrics hold).

Checkpoints are written on a time budget: after an epoch, when at least `checkpoint_every` epochs
and `checkpoint_seconds` seconds have passed since the last one, and (in a single-process run)
between the optimizer steps of an epoch that has taken that long. A resume replays the work after
it, so it costs at most that much, while a short run writes its weights once. A checkpoint taken
within an epoch also holds how far the epoch got (`EpochProgress`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypedDict

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file
from torch import nn

from polarpack._io import atomic_output, atomic_write_text, read_bytes, read_json
from polarpack._version import __version__
from polarpack.errors import ConfigError, PolarpackError
from polarpack.training.config import TrainConfig, resolve_device

CONFIG_FILE, METRICS_FILE, SUMMARY_FILE = "config.json", "metrics.jsonl", "summary.json"
MODEL_FILE, STATE_FILE, INIT_FILE = (
    "model.safetensors",
    "training_state.safetensors",
    "init.safetensors",
)
RUN_FILES = (
    CONFIG_FILE,
    METRICS_FILE,
    "metrics.csv",
    SUMMARY_FILE,
    MODEL_FILE,
    STATE_FILE,
    INIT_FILE,
)
KEPT_FILES = (CONFIG_FILE, METRICS_FILE, "metrics.csv", SUMMARY_FILE)  # what `set_aside` keeps
EARLIER_DIR = "earlier"
FINISHED = ("completed", "diverged")
METRICS_LIMIT = 256 << 20  # bytes: a million epochs of metrics


class EpochRow(TypedDict, total=False):
    """One line of metrics.jsonl. Floats that were not finite are null (JSON has no NaN)."""

    epoch: int
    train_loss: float | None
    train_acc: float
    val_loss: float | None
    val_acc: float
    epoch_seconds: float
    train_seconds: float
    images_per_second: float
    projection_resets: int  # weights the sign projection reset this epoch
    fluid_flips: int  # weights Fluid SPIN changed at the start of this epoch
    lr: float
    held: dict[str, list[float]]  # [p0, p_neg, p_pos] of each constrained layer's weights


STATUSES = ("running", *FINISHED, "failed")
_NUMBER = (int, float)


@dataclass(frozen=True)
class RunSummary:
    """summary.json: how far a run got and how well. Every version's file reads: the first ones
    lack `config_digest`, a grid's failed cell holds little more than its `error`, and keys this
    version does not know are left out."""

    status: str  # running | completed | diverged | failed (a grid's cell that raised)
    epochs_done: int = 0
    epochs: int | None = None
    final_val_acc: float | None = None
    final_train_acc: float | None = None
    best_val_acc: float | None = None
    threshold: float | None = None
    epochs_to_threshold: int | None = None
    train_seconds: float = 0.0
    run_token: str | None = None
    config_digest: str | None = None  # sha256 of the options; absent in the first versions
    error: str | None = None  # why a grid's cell failed
    attempts: int | None = None  # how often a grid tried the cell before it recorded it failed

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @classmethod
    def from_json(cls, data: Any, where: str | os.PathLike) -> RunSummary:
        """The one reader: a ConfigError naming `where` and the key when the shape is wrong."""
        if not isinstance(data, dict):
            raise ConfigError(
                f"{where}: not a run summary (a JSON object); restore it, or delete it and rerun"
            )
        known = {f.name: f for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for key, value in values.items():
            wanted = _SUMMARY_TYPES[key]
            ok = value is None or (isinstance(value, wanted) and not isinstance(value, bool))
            if not ok or (key == "status" and value not in STATUSES):
                raise ConfigError(
                    f"{where}: not a run summary ({key} is {value!r}); restore it, or delete it "
                    "and rerun"
                )
        values.setdefault("status", "running")
        values["epochs_done"] = values.get("epochs_done") or 0
        values["train_seconds"] = values.get("train_seconds") or 0.0
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        """The one writer's object: every field, but `error` only when there is one."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        for optional in ("error", "attempts"):
            if data[optional] is None:
                del data[optional]
        return data


_SUMMARY_TYPES = {
    "status": str,
    "epochs_done": int,
    "epochs": int,
    "final_val_acc": _NUMBER,
    "final_train_acc": _NUMBER,
    "best_val_acc": _NUMBER,
    "threshold": _NUMBER,
    "epochs_to_threshold": int,
    "train_seconds": _NUMBER,
    "run_token": str,
    "config_digest": str,
    "error": str,
    "attempts": int,
}


@dataclass(frozen=True)
class RunConfig:
    """config.json: the options the run started with (`TrainConfig.to_dict()`, what a grid's cell
    holds; its config digest and a grid's hash are taken over them as saved), what they resolved
    to (device, precision, the method's start), where it computed, the run token, and where each
    resume computed. Every version's file reads: options added since take their defaults."""

    options: dict[str, Any]
    run_token: str
    resolved: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    resumes: tuple[dict[str, Any], ...] = ()

    @classmethod
    def from_json(cls, data: Any, path: str | os.PathLike) -> RunConfig:
        """The one reader: a ConfigError naming `path` when the shape is wrong."""
        ok = isinstance(data, dict) and isinstance(data.get("config"), dict)
        ok = ok and isinstance(data.get("run_token"), str)
        ok = ok and all(isinstance(data.get(k, {}), dict) for k in ("resolved", "environment"))
        resumes = data.get("resumes", []) if ok else None
        if not ok or not isinstance(resumes, list) or not all(isinstance(r, dict) for r in resumes):
            raise ConfigError(
                f"{path}: not a polarpack run config (an object with 'config' options and a "
                "'run_token'); restore it, or start the run over with --overwrite"
            )
        return cls(
            data["config"],
            data["run_token"],
            data.get("resolved", {}),
            data.get("environment", {}),
            tuple(resumes),
        )

    def to_json(self) -> dict[str, Any]:
        """The one writer's object, in the order the first versions wrote it."""
        data = {
            "config": self.options,
            "resolved": self.resolved,
            "environment": self.environment,
            "run_token": self.run_token,
        }
        return data | ({"resumes": list(self.resumes)} if self.resumes else {})

    def train_config(self) -> TrainConfig:
        """The options as a `TrainConfig` (validated)."""
        return TrainConfig.from_dict(self.options).validate()


@dataclass
class RunFiles:
    """What an existing run directory says about its run, checked for consistency."""

    run_dir: Path
    config: dict[str, Any]
    token: str
    summary: RunSummary | None = None  # None: the run died before its first epoch
    metrics: list[EpochRow] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.summary is not None and self.summary.finished


def config_digest(config: Mapping[str, Any]) -> str:
    return hashlib.sha256(
        json.dumps(dict(config), sort_keys=True, default=str).encode()
    ).hexdigest()


# -- claiming and reading ------------------------------------------------------------------------


def _stale(path: Path) -> bool:
    """A writer's temporary file: ours (.NAME.XXXX.tmp) or safetensors' own (.tmpXXXXXX)."""
    return path.name.startswith(".") and (
        path.name.endswith(".tmp") or path.name.startswith(".tmp")
    )


def remove_stale_files(run_dir: Path) -> None:
    """Temporary files a killed writer left (only a run's own writer ever makes them)."""
    for path in run_dir.iterdir() if run_dir.is_dir() else ():
        if _stale(path) and path.is_file():
            path.unlink(missing_ok=True)


def prepare_out_dir(run_dir: Path, config: Mapping[str, Any], overwrite: bool) -> None:
    """Make `run_dir` this run's: a new or empty folder, or (with `overwrite`) one that holds a
    polarpack run and nothing else. A folder holding anything else is never written into. The
    attempts under earlier/ stay: they are the run's history, not its files."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir}: exists and is not a directory; choose another --out")
    entries = [p for p in run_dir.iterdir() if not _stale(p)] if run_dir.is_dir() else []
    entries = [p for p in entries if not (p.name == EARLIER_DIR and p.is_dir())]  # kept
    if not entries:
        return
    foreign = sorted(p.name for p in entries if p.name not in RUN_FILES)
    is_run = (run_dir / CONFIG_FILE).is_file() or (run_dir / SUMMARY_FILE).is_file()
    if not is_run or foreign:
        shown = ", ".join(foreign[:3] or [p.name for p in entries[:3]])
        raise ConfigError(
            f"--out {run_dir}: holds files that are not a polarpack run ({shown}); choose a new "
            "or empty folder, polarpack does not write into it"
        )
    if not overwrite:
        try:
            same = read_config(run_dir)[0] == dict(config)
        except PolarpackError:  # no config.json (a run that failed at once), or a damaged one
            same = False
        what = "this run already: continue it with --resume" if same else "a different run"
        raise ConfigError(
            f"--out {run_dir}: holds {what}; choose another --out, or pass --overwrite to start "
            "it over"
        )
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)


def load_config(run_dir: str | os.PathLike) -> RunConfig:
    """config.json, refused clearly when it is missing or has another shape."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no {CONFIG_FILE} there; is it a polarpack run directory?")
    return RunConfig.from_json(read_json(path), path)


def read_config(run_dir: str | os.PathLike) -> tuple[dict[str, Any], str]:
    """The options and run token of config.json."""
    saved = load_config(run_dir)
    return saved.options, saved.run_token


def load_summary(run_dir: str | os.PathLike) -> RunSummary | None:
    """summary.json, or None when there is none yet."""
    path = Path(run_dir) / SUMMARY_FILE
    return RunSummary.from_json(read_json(path), path) if path.exists() else None


def read_metrics(run_dir: str | os.PathLike) -> list[EpochRow]:
    """The epochs of a run; a damaged line is an error naming the file and the line."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    text = read_bytes(path, limit=METRICS_LIMIT, what="metrics").decode("utf-8", "replace")
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            row = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            raise ConfigError(
                f"{path}: line {number} is not valid JSON (a damaged file); "
                "restore it, or rerun the run"
            ) from None
        if row is None:
            continue
        if not isinstance(row, dict) or row.get("epoch") != len(rows) + 1:
            raise ConfigError(
                f"{path}: line {number} is not the metrics of epoch {len(rows) + 1} (a damaged "
                "file); restore it, or rerun the run"
            )
        rows.append(row)
    return rows


def open_for_resume(run_dir: Path) -> RunFiles:
    """config.json, summary.json and metrics.jsonl of a run to continue, checked to belong to one
    run and one configuration (the training state is checked when it is loaded)."""
    config, token = read_config(run_dir)
    summary = load_summary(run_dir)
    where = f"--resume {run_dir}"
    if summary is not None and summary.run_token != token:
        raise ConfigError(
            f"{where}: {SUMMARY_FILE} belongs to another run than {CONFIG_FILE}; start over "
            "with --overwrite"
        )
    if summary is not None and summary.config_digest not in (None, config_digest(config)):
        raise ConfigError(
            f"{where}: {CONFIG_FILE} was edited after the run started; restore it, or start a "
            f"new run with --config {run_dir / CONFIG_FILE} --out NEW"
        )
    metrics = read_metrics(run_dir)
    # the metrics are written first: a writer killed between the two leaves them one epoch ahead
    if summary is not None and summary.epochs_done not in (len(metrics), len(metrics) - 1):
        raise ConfigError(
            f"{where}: {SUMMARY_FILE} says {summary.epochs_done} epochs were done but "
            f"{METRICS_FILE} holds {len(metrics)}: the files disagree; restore {METRICS_FILE}, "
            "or start over with --overwrite"
        )
    return RunFiles(run_dir, config, token, summary, metrics)


# -- writing -------------------------------------------------------------------------------------


def git_commit() -> str | None:
    """The commit of the polarpack checkout this runs from ('+dirty' with local changes), else
    $POLARPACK_GIT_COMMIT (a copy without .git), else None (an installed release): recorded in
    every run, so results name the code they ran on."""
    here = str(Path(__file__).parent)
    cmd = [
        "git",
        "-C",
        here,
        "describe",
        "--always",
        "--abbrev=40",
        "--exclude=*",
        "--dirty=+dirty",
    ]
    try:
        found = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        found = None
    if found and found.returncode == 0:
        return found.stdout.strip()
    return os.environ.get("POLARPACK_GIT_COMMIT")


def _cpuinfo() -> str | None:
    """/proc/cpuinfo (Linux), or None."""
    try:
        return read_bytes("/proc/cpuinfo", limit=None, what="CPU information").decode()
    except PolarpackError:
        return None


def cpu_model(cpuinfo: str | None) -> str | None:
    """The CPU's model name: kernels and their rounding differ between CPU kinds."""
    if cpuinfo is None:
        return platform.processor() or None
    return next(
        (
            line.split(":", 1)[1].strip()
            for line in cpuinfo.splitlines()
            if line.startswith("model name")
        ),
        None,
    )


# The CPU features that choose bf16 and matrix kernels: machines that share a model name (a
# virtual machine's "Intel(R) Xeon(R) Processor") can differ in them, and so in results and speed.
KERNEL_FEATURES = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")


def cpu_features(cpuinfo: str | None) -> dict[str, Any] | None:
    """The first CPU's family/model numbers and which of KERNEL_FEATURES its kernel reports."""
    if cpuinfo is None:
        return None
    first = dict(
        (k.strip(), v.strip())
        for k, _, v in (line.partition(":") for line in cpuinfo.split("\n\n")[0].splitlines())
    )
    flags = set(first.get("flags", "").split())
    return {
        "family_model": f"{first.get('cpu family', '?')}/{first.get('model', '?')}",
        "flags": [f for f in KERNEL_FEATURES if f in flags],
    }


def environment(device: torch.device) -> dict[str, Any]:
    """Where a run computed and with what code."""
    cpuinfo = _cpuinfo()
    env = {
        "polarpack": __version__,
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu": cpu_model(cpuinfo),
        "cpu_features": cpu_features(cpuinfo),
    }
    if device.type == "cuda":
        env["cuda_device"] = torch.cuda.get_device_name(device)
    return env


def write_config(run_dir: Path, saved: RunConfig) -> None:
    """The one writer of config.json."""
    run_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(saved.to_json(), indent=2, default=str) + "\n"
    atomic_write_text(run_dir / CONFIG_FILE, text)


def record_resume(run_dir: Path, epoch: int, environment: Mapping[str, Any], step: int = 0) -> None:
    """Add to config.json where a resumed run computes from `epoch` on (and `step` optimizer
    steps into the next epoch): a run that straddles two machines or commits must say so (reports
    never pair it as if it ran on one)."""
    saved = load_config(run_dir)
    resume = {"epoch": epoch, **({"step": step} if step else {}), "environment": dict(environment)}
    write_config(run_dir, replace(saved, resumes=(*saved.resumes, resume)))


def machine_kind(environment: Mapping[str, Any], device: str) -> str:
    """Where a run computed: kernels differ by GPU and by CPU kind. A run that recorded neither
    its CPU model nor its capability says so, and counts as a kind of its own. Virtual machines
    share model names across CPUs, so where a run recorded its CPU's family/model and kernel
    features, they are part of its kind."""
    if environment.get("cuda_device"):
        return str(environment["cuda_device"])
    cpu = environment.get("cpu") or "CPU model not recorded"
    capability = environment.get("cpu_capability") or "capability not recorded"
    features = environment.get("cpu_features")
    if isinstance(features, dict):
        flags = ", ".join(map(str, features.get("flags") or [])) or "no listed features"
        cpu += f"; {features.get('family_model', '?')}: {flags}"
    return f"{device} {capability} ({cpu})"


def machine_here(device: str) -> str:
    """The kind of machine a run with the `device` option would compute on in this process."""
    resolved = resolve_device(device)
    return machine_kind(environment(resolved), str(resolved))


def computed_elsewhere(saved: RunConfig, kind: str) -> str | None:
    """The kind of machine a run computed on last (its last resume's, or where it started), when
    that is not `kind`: resuming it on `kind` would straddle the two."""
    env = saved.resumes[-1].get("environment") if saved.resumes else saved.environment
    there = machine_kind(env if isinstance(env, dict) else {}, str(saved.resolved.get("device")))
    return there if there != kind else None


def set_aside(run_dir: Path) -> Path:
    """Make a run start over from epoch 0 without losing what its attempt so far measured: its
    config, metrics and summary go to earlier/<run token>/, its weights and checkpoint are
    removed. Copies first, removals last (the training state first of them), so a writer killed
    anywhere in between leaves either the run to resume or the one to start, and the copies."""
    token = load_config(run_dir).run_token
    if not (token.isascii() and token.isalnum()):  # it names a folder: never a path
        raise ConfigError(
            f"{run_dir / CONFIG_FILE}: its run_token {token[:40]!r} is not one polarpack wrote "
            "(letters and digits); restore the file, or move the run folder away to start over"
        )
    aside = run_dir / EARLIER_DIR / token
    aside.mkdir(parents=True, exist_ok=True)
    for name in KEPT_FILES:
        if (run_dir / name).is_file():
            atomic_write_text(aside / name, (run_dir / name).read_text())
    for name in (STATE_FILE, *(n for n in RUN_FILES if n != STATE_FILE)):
        (run_dir / name).unlink(missing_ok=True)
    return aside


@dataclass(frozen=True)
class EarlierAttempt:
    """An attempt at a run that `set_aside` kept: where it computed, and how many epochs it
    finished before the run started over."""

    saved: RunConfig
    epochs: int


def earlier_attempts(run_dir: str | os.PathLike) -> list[EarlierAttempt]:
    """The attempts `set_aside` kept in the run's earlier/ folder, by run token; not the run's
    own (copied aside by a writer killed before it removed the run's files)."""
    own = load_config(run_dir).run_token if (Path(run_dir) / CONFIG_FILE).is_file() else None
    return [
        EarlierAttempt(load_config(aside), len(read_metrics(aside)))
        for aside in sorted((Path(run_dir) / EARLIER_DIR).glob("*/"))
        if (aside / CONFIG_FILE).is_file() and aside.name != own
    ]


def write_metrics(run_dir: Path, rows: list[EpochRow]) -> None:
    """metrics.jsonl, and metrics.csv with held proportions as held.<layer>.<p> columns."""
    atomic_write_text(run_dir / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in rows))

    def flatten(row: Mapping[str, Any]) -> dict[str, Any]:
        held = {
            f"held.{name}.{key}": p
            for name, ps in row.get("held", {}).items()
            for key, p in zip(("p0", "p_neg", "p_pos"), ps, strict=True)
        }
        return {k: v for k, v in row.items() if k != "held"} | held

    flat = [flatten(r) for r in rows]
    columns = list(dict.fromkeys(k for r in flat for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(flat)
    atomic_write_text(run_dir / "metrics.csv", buf.getvalue())


def summarize(
    rows: list[EpochRow], *, epochs: int, threshold: float, status: str, token: str, digest: str
) -> RunSummary:
    """Final and best accuracy, and the first epoch whose validation accuracy reached the
    threshold."""
    val = [r["val_acc"] for r in rows if r.get("val_acc") is not None]
    reached = (r["epoch"] for r in rows if (r.get("val_acc") or 0.0) >= threshold)
    return RunSummary(
        status=status,
        epochs_done=len(rows),
        epochs=epochs,
        final_val_acc=rows[-1]["val_acc"] if rows else None,
        final_train_acc=rows[-1]["train_acc"] if rows else None,
        best_val_acc=max(val) if val else None,
        threshold=threshold,
        epochs_to_threshold=next(reached, None),
        train_seconds=sum(r.get("epoch_seconds", 0.0) for r in rows),
        run_token=token,
        config_digest=digest,
    )


def write_summary(run_dir: Path, summary: RunSummary | Mapping[str, Any]) -> None:
    """The one writer of summary.json (a mapping is read as a summary first, so every file it
    writes reads back)."""
    if not isinstance(summary, RunSummary):
        summary = RunSummary.from_json(dict(summary), run_dir / SUMMARY_FILE)
    atomic_write_text(run_dir / SUMMARY_FILE, json.dumps(summary.to_json(), indent=2) + "\n")


# -- checkpoints ---------------------------------------------------------------------------------


@dataclass
class CheckpointClock:
    """When to write the resume checkpoint: after an epoch, once `every` epochs and `seconds`
    seconds have passed since the last one (or since the run started)."""

    every: int
    seconds: float
    last_epoch: int = 0
    last_time: float = field(default_factory=time.monotonic)

    def due(self, epoch: int) -> bool:
        return epoch - self.last_epoch >= self.every and (
            time.monotonic() - self.last_time >= self.seconds
        )

    def due_within(self, epoch: int) -> bool:
        """Between two optimizer steps of `epoch` (not yet finished): an hour-long epoch is not
        repeated whole after an interruption. `seconds=0` checkpoints at epoch ends only."""
        return self.seconds > 0 and self.due(epoch)

    def written(self, epoch: int) -> None:
        self.last_epoch, self.last_time = epoch, time.monotonic()

    def written_within(self) -> None:
        self.last_time = time.monotonic()


@dataclass
class EpochProgress:
    """How far an unfinished epoch got, as a checkpoint within it holds it: the steps done, the
    sums its metrics row will report, and the states of the two random streams that advance with
    every step (dropout; the sign constraint's reset values). The batch order and the epoch's
    fluid change are derived from (seed, epoch) and saved with the targets."""

    steps: int
    loss_sum: float
    correct: int
    seen: int
    train_seconds: float
    epoch_seconds: float
    fluid_flips: int
    resets: int
    dropout_rng: torch.Tensor
    resets_rng: torch.Tensor | None

    _COUNTS = ("steps", "correct", "seen", "fluid_flips", "resets")
    _TIMES = ("loss_sum", "train_seconds", "epoch_seconds")

    def meta(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._COUNTS + self._TIMES}

    def tensors(self) -> dict[str, torch.Tensor]:
        rng = {"dropout": self.dropout_rng, "resets": self.resets_rng}
        return {f"rng.{k}": v for k, v in rng.items() if v is not None}

    @classmethod
    def read(cls, meta: Any, tensors: Mapping[str, torch.Tensor]) -> EpochProgress | None:
        """From a checkpoint's metadata and tensors; None for one written at an epoch's end, or
        whose progress has another shape (the caller says the file is damaged)."""
        counts_ok = isinstance(meta, dict) and all(
            type(meta.get(k)) is int and meta[k] >= 0 for k in cls._COUNTS
        )
        if not counts_ok or not all(isinstance(meta.get(k), int | float) for k in cls._TIMES):
            return None
        if meta["steps"] < 1 or meta["seen"] < 1 or "rng.dropout" not in tensors:
            return None
        return cls(
            **{k: meta[k] for k in cls._COUNTS + cls._TIMES},
            dropout_rng=tensors["rng.dropout"],
            resets_rng=tensors.get("rng.resets"),
        )


def _write_safetensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    """One atomic safetensors write; a full disk is a one-line error naming the folder, and the
    file it would have replaced stays as it was."""
    try:
        with atomic_output(path) as tmp:
            save_file(tensors, tmp, metadata=meta)
    except (OSError, SafetensorError) as exc:
        free = shutil.disk_usage(path.parent).free if path.parent.is_dir() else 0
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PolarpackError(
            f"{path}: cannot write it ({reason}); "
            f"{free:,} bytes are free on the disk of {path.parent}: free space there (or move the "
            "run) and continue with --resume; the previous checkpoint is kept"
        ) from None


def save_checkpoint(
    run_dir: Path,
    *,
    epoch: int,
    token: str,
    digest: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    targets: Mapping[str, torch.Tensor],
    progress: EpochProgress | None = None,
) -> None:
    """training_state.safetensors first (self-contained: a resume reads nothing else), then, at an
    epoch's end, the plain model.safetensors a user loads (within an epoch it keeps the weights of
    the last epoch that has metrics). `epoch` is the last finished epoch; `progress`, how far the
    next one got."""
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors = {f"model.{k}": v for k, v in weights.items()}
    tensors |= {f"target.{k}": v.cpu().contiguous() for k, v in targets.items()}
    if progress is not None:
        tensors |= progress.tensors()
    opt = optimizer.state_dict()
    scalars = {}
    for idx, state in opt["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    meta = {
        "epoch": epoch,
        "run_token": token,
        "config_digest": digest,
        "param_groups": opt["param_groups"],
        "optim_scalars": scalars,
    }
    if progress is not None:
        meta["within_epoch"] = progress.meta()
    _write_safetensors(run_dir / STATE_FILE, tensors, {"polarpack": json.dumps(meta)})
    if progress is None:
        save_weights(run_dir, model)


def save_weights(run_dir: Path, model: nn.Module) -> None:
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    _write_safetensors(run_dir / MODEL_FILE, weights, {"format": "pt"})


@dataclass
class TrainingState:
    """A loaded training_state.safetensors."""

    epoch: int  # the last finished epoch
    model: dict[str, torch.Tensor]
    targets: dict[str, torch.Tensor]
    optimizer: dict[str, Any]  # an optimizer state_dict
    progress: EpochProgress | None = None  # how far epoch + 1 got, when taken within it


def checkpoint_position(run_dir: str | os.PathLike) -> tuple[int, int] | None:
    """Where a resume of the run would start, from its training state's header alone: (the last
    finished epoch, the optimizer steps done in the next one). None without a readable one."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(Path(run_dir) / STATE_FILE), framework="pt") as fh:
            meta = json.loads(fh.metadata()["polarpack"])
    except (SafetensorError, OSError, KeyError, TypeError, ValueError):
        return None
    within = meta.get("within_epoch") if isinstance(meta, dict) else None
    steps = within.get("steps", 0) if isinstance(within, dict) else 0
    epoch = meta.get("epoch") if isinstance(meta, dict) else None
    ok = isinstance(epoch, int) and isinstance(steps, int)
    return (epoch, steps) if ok else None


def load_checkpoint(files: RunFiles) -> TrainingState | None:
    """The training state of a run to resume, or None when it has none (killed before its first
    checkpoint: the run starts over). Refused when it belongs to another run or configuration, or
    when the metrics do not reach its epoch."""
    from safetensors import SafetensorError, safe_open

    path, where = files.run_dir / STATE_FILE, f"--resume {files.run_dir}"
    if not path.exists():
        return None
    damaged = f"{where}: {STATE_FILE} is damaged"
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads(fh.metadata()["polarpack"])
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{damaged} ({exc}); start the run over with --overwrite") from None
    ok = isinstance(meta, dict) and isinstance(meta.get("epoch"), int)
    ok = (
        ok
        and isinstance(meta.get("param_groups"), list)
        and isinstance(meta.get("optim_scalars"), dict)
    )
    progress = EpochProgress.read(meta.get("within_epoch"), tensors) if ok else None
    ok = ok and (progress is not None or "within_epoch" not in meta)
    if not ok or not all(isinstance(k, str) and "." in k for k in meta["optim_scalars"]):
        raise ConfigError(
            f"{damaged} (its metadata has another shape); start over with --overwrite"
        )
    if meta.get("run_token") != files.token:
        raise ConfigError(
            f"{where}: {STATE_FILE} belongs to another run than {CONFIG_FILE}; "
            "start over with --overwrite"
        )
    if meta.get("config_digest") not in (None, config_digest(files.config)):
        raise ConfigError(
            f"{where}: {CONFIG_FILE} was edited after the run started; restore it, "
            f"or start a new run with --config {files.run_dir / CONFIG_FILE} --out NEW"
        )
    if meta["epoch"] > len(files.metrics):
        raise ConfigError(
            f"{where}: {STATE_FILE} is at epoch {meta['epoch']} but {METRICS_FILE} holds "
            f"{len(files.metrics)} epochs: the files disagree; restore {METRICS_FILE}, or start "
            "over with --overwrite"
        )
    return TrainingState(
        meta["epoch"],
        _prefixed(tensors, "model."),
        _prefixed(tensors, "target."),
        _optimizer_state(tensors, meta),
        progress,
    )


def _prefixed(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def _optimizer_state(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, value in _prefixed(tensors, "optim.").items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    for key, value in meta["optim_scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}
