"""Grids that outgrow one machine: the pending cells of a grid as one submitit job array on a Slurm
cluster (``--executor slurm``), or through submitit's local executor (``--executor local``: the
same path, in separate processes on this machine).

Each array task is one cell, run by `run_cell` under the cell's claim in the shared results store,
so tasks on many nodes and two submitters of one grid run each cell once. A task that Slurm
preempts or times out is requeued by submitit's checkpoint hook (`CellTask.checkpoint`) and
resumes its cell from its last finished epoch: the tasks checkpoint after every epoch. A cell
that fails `MAX_TRIES` times is recorded failed with the reason.

The scheduler options come from the grid file's ``[slurm]`` table and ``--slurm KEY=VALUE``
(the command line wins). submitit is the optional extra ``polarpack[slurm]``.
"""

from __future__ import annotations

import json
import os
import sys
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polarpack._io import atomic_write_text, read_bytes, read_json
from polarpack.errors import ConfigError, PolarpackError
from polarpack.experiments.grid import EXPERIMENT_LIMIT, Cell, Experiment
from polarpack.experiments.runner import CellOutcome, cell_options, epoch_bar, run_cell
from polarpack.experiments.store import OTHER_MACHINE, ResultsStore
from polarpack.training.config import TrainConfig
from polarpack.training.runs import STATE_FILE, checkpoint_position, read_metrics

try:  # the optional extra: without it, `require_submitit` says how to install it
    from submitit.helpers import Checkpointable
except ImportError:  # pragma: no cover - exercised where submitit is not installed
    Checkpointable = object

EXECUTORS = ("pool", "local", "slurm")
MAX_TRIES = 3
JOBS_DIR = "slurm"  # RESULTS/slurm/: submitit's logs and pickles, and jobs/<run_id>.json


@dataclass
class SlurmOptions:
    """What a grid asks of the scheduler; `None` leaves it to the cluster's defaults."""

    partition: str | None = None
    time: int = 240  # minutes per task; one that runs out is requeued and resumes
    gpus_per_node: int | None = None  # default: --nproc-per-run when above 1
    cpus_per_task: int = 2
    mem_gb: float | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    array_parallelism: int | None = None  # at most this many tasks of the array at once


_TYPES: dict[str, type] = {
    "partition": str,
    "time": int,
    "gpus_per_node": int,
    "cpus_per_task": int,
    "mem_gb": float,
    "account": str,
    "qos": str,
    "constraint": str,
    "array_parallelism": int,
}


def require_submitit():
    """The submitit module, or a one-line error naming the extra that installs it."""
    try:
        import submitit
    except ImportError:
        raise ConfigError(
            'the slurm and local executors need submitit: pip install "polarpack[slurm]"'
        ) from None
    return submitit


def slurm_options(grid_file: str | os.PathLike, given: Sequence[str] = ()) -> SlurmOptions:
    """The grid file's [slurm] table, then each `KEY=VALUE` of `given` over it."""
    path = Path(grid_file)
    try:
        text = read_bytes(path, limit=EXPERIMENT_LIMIT, what="experiment files").decode("utf-8")
        table = tomllib.loads(text).get("slurm", {})
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not a TOML experiment file ({exc})") from None
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [slurm] must be a table of scheduler options")
    values = {key: _checked(key, value, f"{path} [slurm]") for key, value in table.items()}
    for item in given:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"--slurm {item}: expected KEY=VALUE, e.g. --slurm partition=gpu")
        key = key.strip().replace("-", "_")
        values[key] = _checked(key, _parse(key, text.strip()), "--slurm")
    return SlurmOptions(**values)


def _parse(key: str, text: str) -> Any:
    kind = _TYPES.get(key, str)
    try:
        return kind(text) if kind is not str else text
    except ValueError:
        return text  # refused by _checked with the key's type


def _checked(key: str, value: Any, where: str) -> Any:
    if key not in _TYPES:
        raise ConfigError(
            f"{where}: unknown scheduler option {key!r}; allowed: {', '.join(_TYPES)}"
        )
    kind = _TYPES[key]
    ok = isinstance(value, str) if kind is str else isinstance(value, int | float)
    if kind is int:
        ok = ok and float(value).is_integer() and not isinstance(value, bool)
    if ok and kind is not str:
        ok = value > 0 or (value == 0 and key == "gpus_per_node")
    if not ok:
        what = "a name" if kind is str else "a positive number"
        raise ConfigError(f"{where}: {key} = {value!r} must be {what}")
    return kind(value)


def executor_parameters(options: SlurmOptions, *, kind: str, nproc: int, name: str) -> dict:
    """What the submitit executor of `kind` (slurm or local) is given: one task per cell on one
    node, with `nproc` GPUs when the cells train under torchrun."""
    gpus = options.gpus_per_node if options.gpus_per_node is not None else nproc if nproc > 1 else 0
    if kind == "local":
        return {"timeout_min": options.time, "gpus_per_node": gpus, "tasks_per_node": 1}
    params = {
        "job_name": f"polarpack-{name}",
        "partition": options.partition,
        "time": options.time,
        "nodes": 1,
        "ntasks_per_node": 1,
        "cpus_per_task": options.cpus_per_task,
        "gpus_per_node": gpus or None,
        "mem": f"{options.mem_gb:g}GB" if options.mem_gb else None,
        "account": options.account,
        "qos": options.qos,
        "constraint": options.constraint,
        "array_parallelism": options.array_parallelism,
    }
    return {k: v for k, v in params.items() if v is not None}


def make_executor(folder: Path, options: SlurmOptions, *, kind: str, nproc: int, name: str):
    """A submitit SlurmExecutor or LocalExecutor with the grid's parameters (nothing submitted)."""
    submitit = require_submitit()
    try:
        executor = (submitit.SlurmExecutor if kind == "slurm" else submitit.LocalExecutor)(folder)
    except RuntimeError as exc:  # no srun: not on a Slurm cluster
        raise ConfigError(
            f"--executor {kind}: {exc}; submit from a node of the cluster, or use --executor local"
        ) from None
    try:
        executor.update_parameters(
            **executor_parameters(options, kind=kind, nproc=nproc, name=name)
        )
    except ValueError as exc:
        raise ConfigError(f"scheduler options refused: {str(exc).splitlines()[0]}") from None
    return executor


def sbatch_lines(options: SlurmOptions, *, nproc: int, name: str, cells: int) -> list[str]:
    """The #SBATCH lines submitit would submit the array with (checked as submitit checks its
    parameters; needs no cluster)."""
    submitit = require_submitit()
    params = executor_parameters(options, kind="slurm", nproc=nproc, name=name)
    try:
        text = submitit.slurm.slurm._make_sbatch_string(
            command="true", folder="%j", map_count=max(cells, 1), **params
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"scheduler options refused: {str(exc).splitlines()[0]}") from None
    keep = ("--output", "--error", "--signal", "--open-mode", "--wckey")
    return [x for x in text.splitlines() if x.startswith("#SBATCH") and not x[8:].startswith(keep)]


# -- the task --------------------------------------------------------------------------------------


class CellTask(Checkpointable):
    """One cell as a submitit task. Slurm's preemption or time-limit signal makes submitit call
    `checkpoint`, which requeues this same task: the next start resumes the cell from its last
    finished epoch (its claim, left by this task's job id, is taken over), or with
    `restart_elsewhere` starts it over where the node is another kind of machine (`run_cell`)."""

    def __init__(
        self,
        results: str,
        cell: Cell,
        config: TrainConfig,
        nproc: int,
        restart_elsewhere: bool = False,
    ):
        self.results, self.cell, self.config, self.nproc = results, cell, config, nproc
        self.restart_elsewhere = restart_elsewhere

    def __call__(self) -> CellOutcome:
        import submitit

        job = submitit.JobEnvironment().job_id
        print(f"cell {self.cell.run_id} (job {job})", flush=True)
        outcome = run_cell(
            self.results,
            self.cell,
            self.config,
            nproc=self.nproc,
            attempts=MAX_TRIES,
            job=job,
            restart_elsewhere=self.restart_elsewhere,
        )
        line = f"{outcome.status}: {self.cell.run_id}" + (
            f": {outcome.error}" if outcome.error else ""
        )
        print(line, file=sys.stderr if outcome.status == "failed" else sys.stdout, flush=True)
        return outcome

    def checkpoint(self, *args: Any, **kwargs: Any):
        """Called in the signal handler: requeue; the run folder already holds the last epoch."""
        from submitit.helpers import DelayedSubmission

        print(f"preempted: {self.cell.run_id}: requeued, resumes from its last epoch", flush=True)
        return DelayedSubmission(self)


# -- submitting, following, status -----------------------------------------------------------------


@dataclass
class Submission:
    """What was submitted: the job of each cell, and where submitit writes its logs."""

    kind: str
    job_id: str | None
    logs: Path
    cells: list[Cell]
    jobs: list[Any]
    parameters: dict[str, Any]


def pending_cells(exp: Experiment, store: ResultsStore) -> list[Cell]:
    """The cells the store does not hold as finished, and nobody runs now."""
    return [
        c
        for c in exp.cells
        if not c.skip_reason and store.state(c) != "done" and store.holder(c) is None
    ]


def submit(
    exp: Experiment,
    results: str | os.PathLike,
    options: SlurmOptions,
    *,
    kind: str = "slurm",
    nproc: int = 1,
    dry_run: bool = False,
    other_machine: str = "resume",
) -> Submission:
    """Submit the pending cells as one job array (nothing when `dry_run`); returns at once. With
    `other_machine` restart, a task restarts a run that computed on another kind of node
    (`run_cell`); leave is refused, as only a node knows its kind: keep the grid on one kind of
    node with a constraint instead."""
    if other_machine not in OTHER_MACHINE:
        raise ConfigError(f"other_machine must be one of {', '.join(OTHER_MACHINE)}")
    if other_machine == "leave":
        raise ConfigError(
            "other_machine leave is for a grid run here; on a cluster, keep its tasks on one kind "
            "of node with --slurm constraint=FEATURE, or restart runs that moved with restart"
        )
    store = ResultsStore(results)
    logs = store.root / JOBS_DIR
    params = executor_parameters(options, kind=kind, nproc=nproc, name=exp.name)
    cells = pending_cells(exp, store)
    if dry_run or not cells:
        return Submission(kind, None, logs, cells, [], params)
    executor = make_executor(logs, options, kind=kind, nproc=nproc, name=exp.name)
    threads = max(1, options.cpus_per_task // nproc)
    tasks = [
        CellTask(
            str(store.root),
            c,
            cell_options(c, threads, checkpoint_seconds=0),
            nproc,
            restart_elsewhere=other_machine == "restart",
        )
        for c in cells
    ]
    jobs = executor.submit_array(tasks)
    for cell, job in zip(cells, jobs, strict=True):
        record = {"job_id": job.job_id, "kind": kind, "submitted": time.time()}
        (logs / "jobs").mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            logs / "jobs" / f"{cell.run_id}.json", json.dumps(record, indent=2) + "\n"
        )
    ids = [job.job_id for job in jobs]  # Slurm: ARRAY_TASK; local: one process each
    job_id = ids[0].split("_")[0] if kind == "slurm" else " ".join(ids)
    return Submission(kind, job_id, logs, cells, jobs, params)


def follow(submission: Submission, store: ResultsStore, *, progress: bool = True) -> bool:
    """Wait for the submitted tasks with the pool's progress bar (epochs); True when every
    cell finished (completed or diverged)."""
    cells = submission.cells

    def epochs() -> int:
        return sum(len(read_metrics(store.run_dir(c))) for c in cells)

    bar = epoch_bar(cells, store, desc="cells", progress=progress, done=cells)
    while not all(job.done() for job in submission.jobs):
        time.sleep(2.0)
        bar.update(epochs() - bar.n)
    bar.update(epochs() - bar.n)
    bar.close()
    return all((s := store.summary(c)) is not None and s.finished for c in cells)


@dataclass
class CellStatus:
    run_id: str
    status: str  # done, running, queued, failed, pending, skipped
    detail: str = ""


def grid_status(exp: Experiment, results: str | os.PathLike) -> list[CellStatus]:
    """Per cell: done, running (a live claim), queued (submitted, not started), failed (with the
    log's last line), pending (never submitted, or to retry) or skipped; a running or pending
    one says how many epochs it has done and where a resume would start."""
    store = ResultsStore(results)
    return [_cell_status(store, cell) for cell in exp.cells]


def _cell_status(store: ResultsStore, cell: Cell) -> CellStatus:
    if cell.skip_reason:
        return CellStatus(cell.run_id, "skipped", cell.skip_reason)
    summary = store.summary(cell)
    status = summary.status if summary else None
    if summary is not None and summary.finished:
        return CellStatus(cell.run_id, "done", summary.status)
    progress = _progress(store, cell)
    if holder := store.holder(cell):
        where = f"job {holder['job']}" if holder.get("job") else f"pid {holder.get('pid')}"
        where += f" on {holder.get('host')}"
        return CellStatus(cell.run_id, "running", "; ".join(filter(None, (where, progress))))
    record = _job_record(store, cell)
    if record is not None:
        state = _job_state(store, record)
        if state in ("queued", "running"):
            return CellStatus(cell.run_id, state, f"job {record['job_id']}")
        if state == "ended" or status == "failed":
            error = summary.error if summary else None
            detail = _log_tail(store, record) or error or "ended unfinished"
            return CellStatus(cell.run_id, "failed", f"job {record['job_id']}: {detail}")
    if status == "failed":
        return CellStatus(cell.run_id, "failed", summary.error or "")
    return CellStatus(cell.run_id, "pending", progress)


def _progress(store: ResultsStore, cell: Cell) -> str:
    """How far an unfinished cell's run got, and where a resume of it would start."""
    run_dir = store.run_dir(cell)
    try:
        done = len(read_metrics(run_dir))
    except PolarpackError as exc:  # a damaged file is for the run to refuse, not the listing
        return f"its metrics do not read: {exc}"
    text = f"{done} of {cell.config.epochs} epochs done" if done else ""
    position = checkpoint_position(run_dir) if (run_dir / STATE_FILE).exists() else None
    if position is None:
        return text
    epoch, steps = position
    where = f"after step {steps} of epoch {epoch + 1}" if steps else f"after epoch {epoch}"
    return f"{done} of {cell.config.epochs} epochs done, resumes {where}"


def _job_record(store: ResultsStore, cell: Cell) -> dict[str, Any] | None:
    path = store.root / JOBS_DIR / "jobs" / f"{cell.run_id}.json"
    try:
        record = read_json(path) if path.is_file() else None
    except PolarpackError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("job_id"), str) else None


def _job_state(store: ResultsStore, record: Mapping[str, Any]) -> str:
    """queued, running or ended: from submitit's result file, else from Slurm (sacct)."""
    submitit = require_submitit()
    folder = store.root / JOBS_DIR
    paths = submitit.core.utils.JobPaths(folder, record["job_id"], 0)
    if paths.result_pickle.exists():
        return "ended"
    if record.get("kind") != "slurm":
        return "queued"  # a local task writes its result when it ends, and claims when it runs
    try:
        state = submitit.SlurmJob(folder, record["job_id"]).state
    except Exception:  # noqa: BLE001 - no sacct here: say what the files say
        return "queued"
    if state in ("RUNNING", "COMPLETING"):
        return "running"
    return "queued" if state in ("PENDING", "REQUEUED", "CONFIGURING", "UNKNOWN") else "ended"


def _log_tail(store: ResultsStore, record: Mapping[str, Any]) -> str:
    """The last line the task wrote: its error, or where it stopped."""
    submitit = require_submitit()
    paths = submitit.core.utils.JobPaths(store.root / JOBS_DIR, record["job_id"], 0)
    for log in (paths.stderr, paths.stdout):
        try:
            lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
        except OSError:
            continue
        if lines:
            return lines[-1].strip()
    return ""
