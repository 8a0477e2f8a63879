"""Running a grid: a committable, resumable results store with one writer, its cells run in
parallel processes.

``RESULTS/runs/<run_id>/`` is an ordinary run directory (see `polarpack.training.runs`), and its
``summary.json`` is the one record of the run's status: completed or diverged (done), failed (with
the error; retried next time), running (resumed from its training state, or started over when it
died before its first checkpoint). A cell is found by the hash at the end of its run id, and is
done only when its directory's config.json holds the same options, so committed results (config,
metrics, summary; weights are not committed) carry a grid on in another checkout or machine.

One writer per store: an OS lock on ``RESULTS/.lock`` (the `filelock` package: released when the
process dies, and never through a symlink), under which temporary files a killed writer left are
removed. ``--jobs N`` runs cells in N spawned worker processes, which exit when their parent does
and are stopped at once when it is interrupted.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from polarpack._io import printable
from polarpack.errors import ConfigError, PolarpackError
from polarpack.experiments.grid import Cell, Experiment, config_hash
from polarpack.training import runs
from polarpack.training.config import TrainConfig
from polarpack.training.loop import TrainResult, keep_freed_memory, train
from polarpack.training.runs import FINISHED, STATE_FILE, read_metrics


@dataclass
class CellOutcome:
    """What running one cell came to."""

    status: str  # completed | diverged | failed
    seconds: float
    final_val_acc: float | None = None
    error: str | None = None


class ResultsStore:
    """``RESULTS/runs/<run_id>/`` run directories, found by their config hash."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.runs = self.root / "runs"

    def run_dir(self, cell: Cell) -> Path:
        """runs/<run_id>, or the directory whose name ends in the same hash (a run id from another
        version's slug)."""
        exact = self.runs / cell.run_id
        if exact.exists() or not self.runs.is_dir():
            return exact
        found = sorted(self.runs.glob(f"*-{cell.hash}"))
        return found[0] if found else exact

    def summary(self, cell: Cell) -> dict[str, Any]:
        return runs.read_summary(self.run_dir(cell))

    def state(self, cell: Cell) -> str:
        """done, resume, retry (failed before) or run."""
        run_dir = self.run_dir(cell)
        if (run_dir / runs.CONFIG_FILE).exists():
            options, _ = runs.read_config(run_dir)
            if config_hash(options) != config_hash(cell.config):
                raise ConfigError(
                    f"{run_dir}: its config.json does not hold the options of cell "
                    f"{cell.run_id}; move the directory away or restore its config.json"
                )
        status = self.summary(cell).get("status")
        if status in FINISHED:
            return "done"
        if (run_dir / STATE_FILE).exists():
            return "resume"
        return "retry" if status == "failed" else "run"

    def record_failure(self, cell: Cell, error: str) -> None:
        run_dir = self.run_dir(cell)
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            token = runs.read_config(run_dir)[1]
        except PolarpackError:
            token = None
        runs.write_summary(
            run_dir, {**self.summary(cell), "status": "failed", "error": error, "run_token": token}
        )

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold RESULTS/.lock for the duration; a second writer gets a clear error at once."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / ".lock"
        if path.is_symlink():
            raise ConfigError(
                f"{path}: is a symbolic link; polarpack never locks through one: remove it"
            )
        lock = FileLock(path, timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise ConfigError(
                f"{self.root}: another polarpack experiment is writing to this results folder "
                f"(it holds {path}); wait for it to finish, or use another --results"
            ) from None
        except OSError as exc:
            raise ConfigError(
                f"{path}: cannot lock it ({exc.strerror or exc}); remove it if it "
                "is not a plain file"
            ) from None
        try:
            for run_dir in self.runs.iterdir() if self.runs.is_dir() else ():
                runs.remove_stale_files(run_dir)
            yield
        finally:
            lock.release()


def plan(exp: Experiment, store: ResultsStore) -> list[dict[str, Any]]:
    """What running the grid would do with each cell: skip, done, resume, retry or run."""
    return [
        {
            "run_id": c.run_id,
            "seed": c.seed,
            "method": c.config["method"],
            "reason": c.skip_reason,
            "action": "skip" if c.skip_reason else store.state(c),
        }
        for c in exp.cells
    ]


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
) -> GridResult:
    """Run every cell that is not done. Each gets threads = cores // (jobs * nproc_per_run) unless
    its options set them; nproc_per_run > 1 trains each cell as a torchrun job (`launch`)."""
    store = ResultsStore(results)
    threads = max(1, (cores or os.cpu_count() or 1) // (jobs * nproc_per_run))
    with store.lock():
        todo = [
            (c, state)
            for c in exp.cells
            if not c.skip_reason and (state := store.state(c)) != "done"
        ]
        bar = _bar(progress, exp, store, todo)

        def finish(cell: Cell, outcome: CellOutcome) -> None:
            if outcome.status == "failed":
                store.record_failure(cell, outcome.error or "")
                bar.write(printable(f"failed: {cell.run_id}: {outcome.error}"), file=sys.stderr)
            if on_cell is not None:
                on_cell(cell, outcome)

        work = [
            (
                c,
                {**c.config, "threads": c.config["threads"] or threads},
                str(store.run_dir(c)),
                state,
                nproc_per_run,
            )
            for c, state in todo
        ]
        if jobs == 1:
            for cell, *args in work:
                finish(cell, _run_cell(*args, on_epoch=lambda row: bar.update(1)))
        else:
            _run_parallel(work, jobs, finish, bar)
        bar.close()
    return _grid_result(exp, store)


def _grid_result(exp: Experiment, store: ResultsStore) -> GridResult:
    rows, counts = [], {}
    for cell in exp.cells:
        summary = {} if cell.skip_reason else store.summary(cell)
        status = "skipped" if cell.skip_reason else summary.get("status", "pending")
        rows.append(
            {
                "run_id": cell.run_id,
                "status": status,
                "final_val_acc": summary.get("final_val_acc"),
                "error": summary.get("error"),
                "reason": cell.skip_reason,
            }
        )
        counts[status] = counts.get(status, 0) + 1
    return GridResult(store.root, counts, rows)


def _bar(progress: bool, exp: Experiment, store: ResultsStore, todo: list[tuple[Cell, str]]):
    from tqdm.auto import tqdm

    done = sum(len(read_metrics(store.run_dir(c))) for c, state in todo if state == "resume")
    return tqdm(
        total=sum(int(c.config["epochs"]) for c, _ in todo),
        initial=done,
        unit="epoch",
        desc=exp.name,
        dynamic_ncols=True,
        disable=not (progress and todo),
    )


def _run_cell(
    config: dict[str, Any],
    run_dir: str,
    state: str,
    nproc: int,
    on_epoch: Callable[[Any], None] | None = None,
) -> CellOutcome:
    """Train one cell here or in a worker; never raises: an error comes back as a failed
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
                TrainConfig.from_dict(config),
                out=run_dir,
                overwrite=True,
                progress=False,
                on_epoch=on_epoch,
            )
        return CellOutcome(result.status, time.time() - started, result.summary["final_val_acc"])
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - a crashed cell is recorded and the grid goes on
        error = str(exc) if isinstance(exc, PolarpackError) else f"{type(exc).__name__}: {exc}"
        return CellOutcome("failed", time.time() - started, error=error)


# -- worker processes ----------------------------------------------------------------------------

_EPOCHS: Any = None  # in a worker: the queue its finished epochs go to, for the parent's bar


def _worker_init(parent: int, epochs: Any) -> None:
    """Report epochs to the parent, and exit as soon as the parent is gone (even SIGKILLed)."""
    global _EPOCHS
    _EPOCHS = epochs
    keep_freed_memory()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _epoch_to_parent(row: Any) -> None:
    if _EPOCHS is not None:
        _EPOCHS.put(1)


def _run_parallel(work: list, jobs: int, finish: Callable[[Cell, CellOutcome], None], bar) -> None:
    """The cells in `jobs` worker processes; an interrupt (Ctrl-C, an error here) stops the
    running cells at once instead of waiting for them, so the lock is released now."""
    context = multiprocessing.get_context("spawn")
    epochs = context.Queue()
    listener = threading.Thread(target=_count_epochs, args=(epochs, bar), daemon=True)
    listener.start()
    pool = ProcessPoolExecutor(
        jobs, mp_context=context, initializer=_worker_init, initargs=(os.getpid(), epochs)
    )
    try:
        futures = {pool.submit(_run_cell, *args): cell for cell, *args in work}
        for future in as_completed(futures):
            try:
                outcome = future.result()
            except Exception as exc:  # noqa: BLE001 - a worker that died (BrokenProcessPool)
                outcome = CellOutcome("failed", 0.0, error=f"worker process died: {exc}")
            finish(futures[future], outcome)
    except BaseException:
        for child in multiprocessing.active_children():
            child.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    epochs.put(None)
    listener.join(timeout=5)


def _count_epochs(epochs: Any, bar) -> None:
    while epochs.get() is not None:
        bar.update(1)


def launch(
    config: Mapping[str, Any],
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
    cfg = TrainConfig.from_dict(dict(config)).validate()
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
        with open(log, "ab") as out:
            try:
                proc = subprocess.run(
                    cmd, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False
                )
            except subprocess.TimeoutExpired:
                raise PolarpackError(
                    f"distributed run {run_dir} did not finish within {timeout} s; see {log}"
                ) from None
    summary = runs.read_summary(run_dir)
    if summary.get("status") not in FINISHED:
        raise PolarpackError(
            f"distributed run {run_dir} ({nproc} processes) failed with exit "
            f"status {proc.returncode}; see {log}"
        )
    return TrainResult(run_dir, summary["status"], read_metrics(run_dir), summary, cfg)
