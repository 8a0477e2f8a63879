"""Running a grid: a committable, resumable results store with one writer, runs in parallel processes.

``RESULTS/runs/<run_id>/`` is an ordinary run directory (see `polarpack.train`), and its
``summary.json`` is the one record of the run's status: completed or diverged (done), failed (with
the error; retried next time), running (resumed from its training state, or started over when it
died before its first checkpoint). A cell is found by the hash at the end of its run id, and is done
only when its directory's config.json holds the same options, so committed results (config,
metrics, summary; weights are not committed) carry a grid on in another checkout or machine.

One writer per store: an OS lock on ``RESULTS/.lock``, released when the process dies; the next
writer removes the temporary files a killed writer left. ``--jobs N`` runs cells in N spawned
worker processes that exit when their parent does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from ._io import atomic_write_text, read_json
from .errors import ConfigError, PolarpackError
from .grid import Cell, Experiment, config_hash
from .train import FINISHED, STATE_FILE, TrainConfig, TrainResult, read_metrics, train

try:
    import fcntl
except ImportError:  # Windows: no lock
    fcntl = None


class ResultsStore:
    """``RESULTS/runs/<run_id>/`` run directories, found by their config hash."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.runs = self.root / "runs"

    def run_dir(self, cell: Cell) -> Path:
        """runs/<run_id>, or the directory whose name ends in the same hash (a run id from another
        version's slug)."""
        exact = self.runs / cell.run_id
        found = sorted(self.runs.glob(f"*-{cell.hash}")) if not exact.exists() and self.runs.is_dir() else []
        return found[0] if found else exact

    def summary(self, cell: Cell) -> dict[str, Any]:
        path = self.run_dir(cell) / "summary.json"
        return read_json(path) if path.exists() else {}

    def state(self, cell: Cell) -> str:
        """done, resume, retry (failed before) or run."""
        run_dir = self.run_dir(cell)
        config = run_dir / "config.json"
        if config.exists() and config_hash(read_json(config).get("config", {})) != config_hash(cell.config):
            raise ConfigError(f"{run_dir}: its config.json does not hold the options of cell {cell.run_id}; "
                              "move the directory away or restore its config.json")
        status = self.summary(cell).get("status")
        if status in FINISHED:
            return "done"
        if (run_dir / STATE_FILE).exists():
            return "resume"
        return "retry" if status == "failed" else "run"

    def record_failure(self, cell: Cell, error: str) -> None:
        run_dir = self.run_dir(cell)
        run_dir.mkdir(parents=True, exist_ok=True)
        token = read_json(run_dir / "config.json").get("run_token") if (run_dir / "config.json").exists() else None
        summary = {**self.summary(cell), "status": "failed", "error": error, "run_token": token}
        atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold RESULTS/.lock for the duration; a second writer gets a clear error at once."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+") as fh:
            if fcntl is not None:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    fh.seek(0)
                    raise ConfigError(f"{self.root}: another polarpack experiment (pid {fh.read().strip() or '?'}) "
                                      "is writing to this results folder; wait for it to finish, or use another "
                                      "--results") from None
            fh.truncate(0)
            fh.write(f"{os.getpid()}\n")
            fh.flush()
            for stale in self.runs.glob("*/.*.tmp") if self.runs.is_dir() else ():  # a killed writer's leftovers
                stale.unlink(missing_ok=True)
            yield


def plan(exp: Experiment, store: ResultsStore) -> list[dict[str, Any]]:
    """What running the grid would do with each cell: skip, done, resume, retry or run."""
    return [{"run_id": c.run_id, "seed": c.seed, "method": c.config["method"], "reason": c.skip_reason,
             "action": "skip" if c.skip_reason else store.state(c)} for c in exp.cells]


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


def run_experiment(exp: Experiment, results: str | os.PathLike, *, jobs: int = 1, progress: bool = True,
                   cores: int | None = None, nproc_per_run: int = 1,
                   on_cell: Callable[[Cell, dict[str, Any]], None] | None = None) -> GridResult:
    """Run every cell that is not done. Each gets threads = cores // (jobs * nproc_per_run) unless
    its options set them; nproc_per_run > 1 trains each cell as a torchrun job (`launch`)."""
    store = ResultsStore(results)
    threads = max(1, (cores or os.cpu_count() or 1) // (jobs * nproc_per_run))
    with store.lock():
        todo = [(c, state) for c in exp.cells if not c.skip_reason and (state := store.state(c)) != "done"]
        bar = _bar(progress, exp, store, todo)
        def finish(cell: Cell, outcome: dict[str, Any]) -> None:
            if outcome["status"] == "failed":
                store.record_failure(cell, outcome["error"])
                bar.write(f"failed: {cell.run_id}: {outcome['error']}", file=sys.stderr)
            if on_cell is not None:
                on_cell(cell, outcome)

        jobs_args = [(c, {**c.config, "threads": c.config["threads"] or threads}, str(store.run_dir(c)), state,
                      nproc_per_run)
                     for c, state in todo]
        if jobs == 1:
            for cell, *args in jobs_args:
                finish(cell, _run_cell(*args, on_epoch=lambda row: bar.update(1)))
        else:
            _run_parallel(jobs_args, jobs, finish, bar)
        bar.close()
    runs = []
    for cell in exp.cells:
        summary = {} if cell.skip_reason else store.summary(cell)
        status = "skipped" if cell.skip_reason else summary.get("status", "pending")
        runs.append({"run_id": cell.run_id, "status": status, "final_val_acc": summary.get("final_val_acc"),
                     "error": summary.get("error"), "reason": cell.skip_reason})
    counts: dict[str, int] = {}
    for run in runs:
        counts[run["status"]] = counts.get(run["status"], 0) + 1
    return GridResult(store.root, counts, runs)


def _bar(progress: bool, exp: Experiment, store: ResultsStore, todo: list[tuple[Cell, str]]):
    from tqdm.auto import tqdm

    done = sum(len(read_metrics(store.run_dir(c))) for c, state in todo if state == "resume")
    return tqdm(total=sum(int(c.config["epochs"]) for c, _ in todo), initial=done, unit="epoch", desc=exp.name,
                dynamic_ncols=True, disable=not (progress and todo))


def _run_cell(config: dict[str, Any], run_dir: str, state: str, nproc: int,
              on_epoch: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train one cell here or in a worker; never raises: an error comes back as a failed outcome."""
    started = time.time()
    try:
        if nproc > 1:
            result = launch(config, run_dir, nproc, resume=state == "resume")
        elif state == "resume":
            result = train(resume=run_dir, progress=False, on_epoch=on_epoch)
        else:
            result = train(TrainConfig.from_dict(config), out=run_dir, overwrite=True, progress=False,
                           on_epoch=on_epoch)
        return {"status": result.status, "seconds": time.time() - started,
                "final_val_acc": result.summary["final_val_acc"]}
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - a crashed cell is recorded and the grid goes on
        error = str(exc) if isinstance(exc, PolarpackError) else f"{type(exc).__name__}: {exc}"
        return {"status": "failed", "seconds": time.time() - started, "error": error,
                "traceback": traceback.format_exc(limit=6)}


def _die_with_parent(parent: int) -> None:
    """Worker initializer: exit as soon as the grid process is gone (killed, even by SIGKILL)."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _run_parallel(jobs_args: list, jobs: int, finish: Callable, bar) -> None:
    pending = list(jobs_args)
    running: dict[Any, tuple[Cell, str, int]] = {}
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_die_with_parent,
                             initargs=(os.getpid(),)) as pool:
        while pending or running:
            while pending and len(running) < jobs:
                cell, *args = pending.pop(0)
                running[pool.submit(_run_cell, *args)] = (cell, args[1], len(read_metrics(args[1])))
            finished, _ = wait(list(running), timeout=5.0, return_when=FIRST_COMPLETED)
            for future in list(running):
                cell, run_dir, seen = running[future]
                now = len(read_metrics(run_dir)) if Path(run_dir, "metrics.jsonl").exists() else seen
                bar.update(now - seen)
                running[future] = (cell, run_dir, now)
            for future in finished:
                cell = running.pop(future)[0]
                try:
                    finish(cell, future.result())
                except Exception as exc:  # noqa: BLE001 - a worker that died (BrokenProcessPool)
                    finish(cell, {"status": "failed", "error": f"worker process died: {type(exc).__name__}: {exc}"})


def launch(config: Mapping[str, Any], run_dir: str | os.PathLike, nproc: int, *, resume: bool = False,
           log: str | os.PathLike | None = None, timeout: float | None = None) -> TrainResult:
    """Train one run as a torchrun job of `nproc` processes (`polarpack train` under
    `torch.distributed.run --standalone`); return its result, read back from the run directory."""
    cfg = TrainConfig.from_dict(dict(config)).validate()
    run_dir = Path(run_dir)
    log = Path(log) if log else run_dir.parent / f"{run_dir.name}.launch.log"
    with tempfile.TemporaryDirectory(prefix="polarpack-launch-") as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps(cfg.to_dict()))
        args = ["--resume", str(run_dir)] if resume else ["--config", f"{tmp}/config.json", "--out", str(run_dir),
                                                          "--overwrite"]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "polarpack", "train", "--quiet", *args]
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            try:
                proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": str(cfg.threads or 1)}, stdout=out,
                                      stderr=subprocess.STDOUT, timeout=timeout, check=False)
            except subprocess.TimeoutExpired:
                raise PolarpackError(f"distributed run {run_dir} did not finish within {timeout} s; see "
                                     f"{log}") from None
    summary = read_json(run_dir / "summary.json") if (run_dir / "summary.json").exists() else {}
    if summary.get("status") not in FINISHED:
        raise PolarpackError(f"distributed run {run_dir} ({nproc} processes) failed with exit status "
                             f"{proc.returncode}; see {log}")
    return TrainResult(run_dir, summary["status"], read_metrics(run_dir), summary, cfg)
