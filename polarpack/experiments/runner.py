"""Running a grid: its cells in parallel processes on this machine, over a results store that
many writers share (`polarpack.experiments.store`; `polarpack.experiments.slurm` sends the cells
to a Slurm cluster instead).

Every cell runs through `run_cell`: under its run's claim, so a cell another process runs is left
to it, and a cell that finished meanwhile is not run again. ``--jobs N`` runs cells in N spawned
worker processes, each the leader of its own process group (its torchrun ranks with it); they
exit when their parent does, and an interrupt stops them within `STOP_GRACE_SECONDS` whatever
they are doing: SIGINT to each worker's group, then SIGKILL.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from polarpack._io import printable
from polarpack.errors import PolarpackError
from polarpack.experiments.grid import Cell, Experiment
from polarpack.experiments.store import ResultsStore, plan
from polarpack.training import claims, runs
from polarpack.training.config import TrainConfig
from polarpack.training.loop import TrainResult, keep_freed_memory, train
from polarpack.training.runs import read_metrics

__all__ = ["CellOutcome", "GridResult", "ResultsStore", "launch", "plan", "run_cell"]

STOP_GRACE_SECONDS = 5.0  # after an interrupt, how long running cells get to stop on their own


@dataclass
class CellOutcome:
    """What running one cell came to."""

    status: str  # completed | diverged | failed | done (before) | held (another process runs it)
    seconds: float
    final_val_acc: float | None = None
    error: str | None = None


def cell_options(cell: Cell, threads: int, **extra: Any) -> TrainConfig:
    """The cell's training options, with the threads this machine gives it unless it sets them."""
    return replace(cell.config, threads=cell.config.threads or threads, **extra)


def run_cell(
    results: str | os.PathLike,
    cell: Cell,
    config: TrainConfig,
    *,
    nproc: int = 1,
    attempts: int = 1,
    job: str | None = None,
    on_epoch: Callable[[Any], None] | None = None,
    restart_elsewhere: bool = False,
) -> CellOutcome:
    """Train one cell of the store at `results` under its claim: resumed from its last
    checkpoint, or started (over). A failed try is retried up to `attempts` tries (resuming what
    it saved), then recorded failed with the reason. With `restart_elsewhere`, a run that computed
    on another kind of machine starts over here (`ResultsStore.start_over_elsewhere`) instead of
    resuming. Never raises for a cell's own failure."""
    store, started = ResultsStore(results), time.time()
    try:
        with store.hold(cell, job=job):
            outcome = CellOutcome("failed", 0.0)
            for attempt in range(1, attempts + 1):
                state = store.state(cell)
                if state == "done":
                    return CellOutcome("done", 0.0, store.summary(cell).final_val_acc)
                if state == "resume" and restart_elsewhere:
                    if elsewhere := store.start_over_elsewhere(cell):
                        state = "run"
                        warnings.warn(
                            f"{cell.run_id}: computed on {elsewhere}, so it starts over from "
                            f"epoch 0 here; its attempt is kept in {runs.EARLIER_DIR}/",
                            stacklevel=2,
                        )
                outcome = _train_cell(config, store.run_dir(cell), state, nproc, on_epoch)
                if outcome.status != "failed":
                    return outcome
                if attempts > 1:
                    outcome.error = f"{outcome.error} (failed {attempt} of {attempts} tries)"
                store.record_failure(cell, outcome.error or "", attempt)
            return outcome
    except claims.RunHeld as exc:
        return CellOutcome("held", time.time() - started, error=str(exc))
    except PolarpackError as exc:  # the store's folder holds another run, or cannot be claimed
        return CellOutcome("failed", time.time() - started, error=str(exc))


@dataclass
class GridResult:
    results_dir: Path
    counts: dict[str, int]
    runs: list[dict[str, Any]]

    @property
    def ok(self) -> bool:
        return not self.counts.get("failed")

    def to_dict(self) -> dict[str, Any]:
        return {"results": str(self.results_dir), "counts": self.counts, "runs": self.runs}


def run_experiment(
    exp: Experiment,
    results: str | os.PathLike,
    *,
    jobs: int = 1,
    progress: bool = True,
    cores: int | None = None,
    nproc_per_run: int = 1,
    on_cell: Callable[[Cell, CellOutcome], None] | None = None,
    other_machine: str = "resume",
) -> GridResult:
    """Run every cell that is not done. Each gets threads = cores // (jobs * nproc_per_run) unless
    its options set them; nproc_per_run > 1 trains each cell as a torchrun job (`launch`).
    `other_machine` (resume, restart or leave) says what becomes of a run that computed on
    another kind of machine (`plan`)."""
    store = ResultsStore(results)
    threads = max(1, (cores or os.cpu_count() or 1) // (jobs * nproc_per_run))
    with store.lock():
        planned = plan(exp, store, other_machine=other_machine)
        todo = [p for p in planned if p.action in ("run", "resume", "retry", "restart")]
        resumed = [p.cell for p in todo if p.action == "resume"]
        bar = epoch_bar(
            [p.cell for p in todo], store, desc=exp.name, progress=progress, done=resumed
        )
        for p in planned:
            if p.action == "leave":
                note = f"left to {p.computed_on} (seed {p.cell.seed} computed there)"
                bar.write(printable(f"{note}: {p.cell.run_id}"), file=sys.stderr)

        def finish(cell: Cell, outcome: CellOutcome) -> None:
            if outcome.status == "failed":
                bar.write(printable(f"failed: {cell.run_id}: {outcome.error}"), file=sys.stderr)
            elif outcome.status == "held":
                bar.write(printable(f"left to its holder: {outcome.error}"), file=sys.stderr)
            if on_cell is not None:
                on_cell(cell, outcome)

        work = [
            (
                p.cell,
                (str(store.root), p.cell, cell_options(p.cell, threads)),
                {"nproc": nproc_per_run, "restart_elsewhere": other_machine == "restart"},
            )
            for p in todo
        ]
        if jobs == 1:
            for cell, args, kwargs in work:
                finish(cell, run_cell(*args, **kwargs, on_epoch=lambda row: bar.update(1)))
        else:
            _run_parallel(work, jobs, finish, bar, store)
        bar.close()
    return _grid_result(exp, store)


def _grid_result(exp: Experiment, store: ResultsStore) -> GridResult:
    rows, counts = [], {}
    for cell in exp.cells:
        summary = None if cell.skip_reason else store.summary(cell)
        status = "skipped" if cell.skip_reason else summary.status if summary else "pending"
        rows.append(
            {
                "run_id": cell.run_id,
                "status": status,
                "final_val_acc": summary.final_val_acc if summary else None,
                "error": summary.error if summary else None,
                "reason": cell.skip_reason,
            }
        )
        counts[status] = counts.get(status, 0) + 1
    return GridResult(store.root, counts, rows)


def epoch_bar(cells: list[Cell], store: ResultsStore, *, desc: str, progress: bool, done=()):
    """A progress bar over the epochs `cells` will train, starting at the epochs the cells in
    `done` have already recorded (the pool and the Slurm executor show the same bar)."""
    from tqdm.auto import tqdm

    return tqdm(
        total=sum(c.config.epochs for c in cells),
        initial=sum(len(read_metrics(store.run_dir(c))) for c in done),
        unit="epoch",
        desc=desc,
        dynamic_ncols=True,
        disable=not (progress and cells),
    )


def _train_cell(
    config: TrainConfig,
    run_dir: Path,
    state: str,
    nproc: int,
    on_epoch: Callable[[Any], None] | None = None,
) -> CellOutcome:
    """Train one cell here; never raises but for an interrupt: an error comes back as a failed
    outcome."""
    started = time.time()
    on_epoch = on_epoch or _epoch_to_parent
    try:
        if nproc > 1:
            result = launch(config, run_dir, nproc, resume=state == "resume")
        elif state == "resume":
            result = train(resume=run_dir, progress=False, on_epoch=on_epoch)
        else:
            result = train(
                config,
                out=run_dir,
                overwrite=True,
                progress=False,
                on_epoch=on_epoch,
            )
        return CellOutcome(result.status, time.time() - started, result.summary.final_val_acc)
    except Exception as exc:  # noqa: BLE001 - a crashed cell is recorded and the grid goes on
        error = str(exc) if isinstance(exc, PolarpackError) else f"{type(exc).__name__}: {exc}"
        return CellOutcome("failed", time.time() - started, error=error)


# -- worker processes ----------------------------------------------------------------------------

_EPOCHS: Any = None  # in a worker: the queue its finished epochs go to, for the parent's bar


def _worker_init(parent: int, epochs: Any) -> None:
    """Lead a process group of its own (the parent stops the worker and what it started as one),
    report epochs to the parent, and exit as soon as the parent is gone (even SIGKILLed)."""
    global _EPOCHS
    _EPOCHS = epochs
    keep_freed_memory()
    os.setpgid(0, 0)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.killpg(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, daemon=True).start()


def _epoch_to_parent(row: Any) -> None:
    if _EPOCHS is not None:
        _EPOCHS.put(1)


def _run_parallel(
    work: list, jobs: int, finish: Callable[[Cell, CellOutcome], None], bar, store: ResultsStore
) -> None:
    """The cells in `jobs` worker processes; an interrupt (Ctrl-C, an error here) stops the
    running cells within STOP_GRACE_SECONDS instead of waiting for them, so the lock is released
    then."""
    context = multiprocessing.get_context("spawn")
    epochs = context.Queue()
    listener = threading.Thread(target=_count_epochs, args=(epochs, bar), daemon=True)
    listener.start()
    pool = ProcessPoolExecutor(
        jobs, mp_context=context, initializer=_worker_init, initargs=(os.getpid(), epochs)
    )
    try:
        futures = {pool.submit(run_cell, *args, **kwargs): cell for cell, args, kwargs in work}
        for future in as_completed(futures):
            try:
                outcome = future.result()
            except Exception as exc:  # noqa: BLE001 - a worker that died (BrokenProcessPool)
                outcome = CellOutcome("failed", 0.0, error=f"worker process died: {exc}")
                store.record_failure(futures[future], outcome.error or "")
            finish(futures[future], outcome)
        pool.shutdown()
    except BaseException:
        _stop_workers(pool)
        raise
    epochs.put(None)
    listener.join(timeout=5)


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """SIGINT to each worker's process group (a cell stops and releases its claim), SIGKILL to
    those still there after STOP_GRACE_SECONDS: the wait is bounded whatever the load."""
    workers = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    _signal_groups(workers, signal.SIGINT)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))
    _signal_groups([w for w in workers if w.is_alive()], signal.SIGKILL)
    for worker in workers:
        worker.join(1.0)


def _signal_groups(workers: list, signum: int) -> None:
    for worker in workers:
        if worker.pid is None:
            continue
        try:
            os.killpg(worker.pid, signum)  # the worker and its torchrun, once it leads its group
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(worker.pid, signum)  # still starting: not yet a group of its own
            except ProcessLookupError:
                pass


def _count_epochs(epochs: Any, bar) -> None:
    while epochs.get() is not None:
        bar.update(1)


def launch(
    config: TrainConfig | Mapping[str, Any],
    run_dir: str | os.PathLike,
    nproc: int,
    *,
    resume: bool = False,
    log: str | os.PathLike | None = None,
    timeout: float | None = None,
) -> TrainResult:
    """Train one run as a torchrun job of `nproc` processes (`polarpack train` under
    `torch.distributed.run --standalone`); return its result, read back from the run
    directory."""
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(dict(config))
    cfg.validate()
    run_dir = Path(run_dir)
    log = Path(log) if log else run_dir.parent / f"{run_dir.name}.launch.log"
    with tempfile.TemporaryDirectory(prefix="polarpack-launch-") as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps(cfg.to_dict()))
        args = (
            ["--resume", str(run_dir)]
            if resume
            else ["--config", f"{tmp}/config.json", "--out", str(run_dir), "--overwrite"]
        )
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            "-m",
            "polarpack",
            "train",
            "--quiet",
            *args,
        ]
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(cfg.threads or 1)}
        if token := claims.held_token(run_dir):
            env[claims.CLAIM_ENV] = token  # rank 0 writes under the claim its parent holds
        with open(log, "ab") as out:
            try:
                proc = subprocess.run(
                    cmd, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False
                )
            except subprocess.TimeoutExpired:
                raise PolarpackError(
                    f"distributed run {run_dir} did not finish within {timeout} s; see {log}"
                ) from None
    summary = runs.load_summary(run_dir)
    if summary is None or not summary.finished:
        raise PolarpackError(
            f"distributed run {run_dir} ({nproc} processes) failed with exit "
            f"status {proc.returncode}; see {log}"
        )
    return TrainResult(run_dir, summary.status, read_metrics(run_dir), summary, cfg)
