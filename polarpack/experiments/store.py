"""The results store of a grid: ``RESULTS/runs/<run_id>/``, one ordinary run directory per cell
(see `polarpack.training.runs`), that many writers share.

A run's ``summary.json`` is the one record of its status: completed or diverged (done), failed
(with the error; retried next time), running (resumed from its training state, or started over
when it died before its first checkpoint). A cell is found by the hash at the end of its run id,
and is done only when its directory's config.json holds the same options, so committed results
(config, metrics, summary; weights are not committed) carry a grid on in another checkout or
machine.

Many writers: a cell is trained only under its run's claim (`claims.hold`: a claim file made with
an exclusive create, with a heartbeat and a stale-claim rule), so cells of one grid may run at
once in pool workers, Slurm tasks on other nodes and a second submitter, each cell once; every
run file is written by atomic rename, so a reader never sees half a file. A local pool also holds
``RESULTS/.lock`` (one pool per store), under which temporary files killed writers left are
removed from the runs nobody holds.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from polarpack.errors import ConfigError, PolarpackError
from polarpack.experiments.grid import Cell, Experiment, config_hash
from polarpack.training import claims, runs
from polarpack.training.runs import FINISHED, STATE_FILE


class ResultsStore:
    """``RESULTS/runs/<run_id>/`` run directories, found by their config hash."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.runs = self.root / "runs"
        self._by_hash: dict[str, list[Path]] | None = None
        self._here: dict[str, str | None] = {}  # device option -> this machine's kind for it

    def run_dir(self, cell: Cell) -> Path:
        """runs/<run_id>, or a directory whose name ends in the same hash and whose config.json
        holds the cell's options (a run id from another version's slug, so written before this
        store was opened: the folder is listed once). Eight hex digits are no identity: another
        cell's folder that shares them is that cell's, and this one's is runs/<run_id>."""
        exact = self.runs / cell.run_id
        if exact.exists() or not self.runs.is_dir():
            return exact
        if self._by_hash is None:
            self._by_hash = {}
            for path in sorted(p for p in self.runs.iterdir() if p.is_dir()):
                self._by_hash.setdefault(path.name.rsplit("-", 1)[-1], []).append(path)
        return next((p for p in self._by_hash.get(cell.hash, ()) if _holds(p, cell)), exact)

    def summary(self, cell: Cell) -> runs.RunSummary | None:
        """The cell's summary.json, or None before its run wrote one."""
        return runs.load_summary(self.run_dir(cell))

    def checked_run_dir(self, cell: Cell) -> Path:
        """`run_dir`, refused where its config.json holds other options: the folder's name claims
        the cell, so running the cell would overwrite another run and reporting it would count
        another run's numbers as the cell's."""
        run_dir = self.run_dir(cell)
        if (run_dir / runs.CONFIG_FILE).exists():
            options, _ = runs.read_config(run_dir)
            if config_hash(options) != config_hash(cell.config):
                raise ConfigError(
                    f"{run_dir}: its config.json does not hold the options of cell "
                    f"{cell.run_id}; move the directory away or restore its config.json"
                )
        return run_dir

    def state(self, cell: Cell) -> str:
        """done, resume, retry (failed before) or run."""
        run_dir = self.checked_run_dir(cell)
        summary = self.summary(cell)
        status = summary.status if summary else None
        if status in FINISHED:
            return "done"
        if (run_dir / STATE_FILE).exists():
            return "resume"
        return "retry" if status == "failed" else "run"

    def elsewhere(self, cell: Cell) -> str | None:
        """The kind of machine the cell's run computed on, when this process would compute on
        another (a resume would straddle the two; see `runs.machine_kind`). None before the run
        started, and where the cell's device is not here to compare with."""
        run_dir, device = self.run_dir(cell), cell.config.device
        if not (run_dir / runs.CONFIG_FILE).is_file():
            return None
        if device not in self._here:  # once per device: it reads the CPU and runs git
            try:
                self._here[device] = runs.machine_here(device)
            except ConfigError:  # e.g. --device cuda on a machine without one
                self._here[device] = None
        here = self._here[device]
        return None if here is None else runs.computed_elsewhere(runs.load_config(run_dir), here)

    def start_over_elsewhere(self, cell: Cell) -> str | None:
        """For a cell to resume whose run computed on another kind of machine than this one: set
        its attempt aside (`runs.set_aside`) so it trains from epoch 0 here, and return the other
        kind. A grid whose pairs must each compute on one kind of machine (kernels move results
        by seed-noise amounts) starts such a run over rather than resume it across the two."""
        elsewhere = self.elsewhere(cell)
        if elsewhere:
            runs.set_aside(self.run_dir(cell))
        return elsewhere

    def hold(self, cell: Cell, *, job: str | None = None):
        """The cell's claim (see `claims.hold`); `RunHeld` when another process holds it."""
        return claims.hold(self.run_dir(cell), job=job)

    def holder(self, cell: Cell) -> dict[str, Any] | None:
        """Who runs the cell now, or None."""
        return claims.claim_holder(self.run_dir(cell))

    def record_failure(self, cell: Cell, error: str, attempts: int = 1) -> None:
        run_dir = self.run_dir(cell)
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            token = runs.read_config(run_dir)[1]
        except PolarpackError:
            token = None
        before = self.summary(cell) or runs.RunSummary(status="failed")
        runs.write_summary(
            run_dir,
            replace(before, status="failed", error=error, attempts=attempts, run_token=token),
        )

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold RESULTS/.lock for the duration (one local pool per store); a second pool gets a
        clear error at once. Temporary files are removed only from runs nobody holds."""
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
                if run_dir.is_dir():
                    _sweep(run_dir)
            yield
        finally:
            lock.release()


def _holds(run_dir: Path, cell: Cell) -> bool:
    """Whether the run folder's config.json holds the cell's options (one it cannot read
    does not show that it does)."""
    try:
        options, _ = runs.read_config(run_dir)
    except PolarpackError:
        return False
    return config_hash(options) == config_hash(cell.config)


def _sweep(run_dir: Path) -> None:
    try:
        with claims.hold(run_dir):
            runs.remove_stale_files(run_dir)
    except claims.RunHeld:
        pass  # its writer is alive: its temporary files are in use


OTHER_MACHINE = ("resume", "restart", "leave")


@dataclass(frozen=True)
class PlannedCell:
    """What running the grid would do with one cell: skip, done, resume, restart, retry, run or
    leave; `computed_on` is the other kind of machine a resume's run (or, for leave, its seed's
    runs) computed on."""

    cell: Cell
    action: str
    computed_on: str | None = None

    @property
    def note(self) -> str | None:
        """Why, where there is more to say than the action: the skip's reason or the other kind."""
        if self.computed_on is None:
            return self.cell.skip_reason
        who = f"seed {self.cell.seed}" if self.action == "leave" else "it"
        return f"{who} computed on {self.computed_on}, not on this kind of machine"

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.cell.run_id,
            "seed": self.cell.seed,
            "method": self.cell.config.method,
            "reason": self.cell.skip_reason,
            "action": self.action,
            **({"computed_on": self.computed_on} if self.computed_on else {}),
        }


def plan(
    exp: Experiment, store: ResultsStore, *, other_machine: str = "resume"
) -> list[PlannedCell]:
    """What running the grid would do with each cell; a resume names the other kind of machine
    its run computed on, if any (`elsewhere`). `other_machine` says what happens to a run that
    computed on another kind of machine: it resumes here, or restarts from epoch 0 here
    (`start_over_elsewhere`), or it is left to that kind with every unfinished cell of its seed,
    so that a seed's runs all compute on one kind (action leave)."""
    if other_machine not in OTHER_MACHINE:
        raise ConfigError(f"other_machine must be one of {', '.join(OTHER_MACHINE)}")
    states = ["skip" if c.skip_reason else store.state(c) for c in exp.cells]
    leave = other_machine == "leave"
    # where a run computed, when elsewhere: each resume's, and with leave every started run's
    there = [
        store.elsewhere(c) if s == "resume" or (leave and s != "skip") else None
        for c, s in zip(exp.cells, states, strict=True)
    ]
    seeds_there: dict[Any, str] = {}
    if leave:
        for c, kind in zip(exp.cells, there, strict=True):
            if kind:
                seeds_there.setdefault(c.seed, kind)
    planned = []
    for c, action, kind in zip(exp.cells, states, there, strict=True):
        elsewhere = kind if action == "resume" else None
        if action not in ("skip", "done") and c.seed in seeds_there:
            action, elsewhere = "leave", seeds_there[c.seed]
        elif elsewhere and other_machine == "restart":
            action = "restart"
        planned.append(PlannedCell(c, action, elsewhere))
    return planned
