"""Holding a run folder: one writer at a time, across processes and machines.

A run folder is written by one process; a grid's cells may run on many nodes of a cluster at once,
sharing a results folder on a network filesystem where `flock` may not work. So a writer holds a
claim file beside the folder, created with an exclusive create (atomic on local filesystems and on
NFSv3 and later) and touched while it writes; a crashed or preempted holder's claim goes stale and
is taken over (docs/distributed.md says what the filesystem must offer).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from polarpack.errors import ConfigError

CLAIM_HEARTBEAT_SECONDS = 30.0  # how often a holder touches its claim file
CLAIM_STALE_SECONDS = 300.0  # a claim not touched for this long is a dead holder's
CLAIM_ENV = "POLARPACK_RUN_CLAIM"  # a claim handed to a child process (the ranks of a torchrun)
_HELD: dict[Path, str] = {}  # this process's claims: run folder -> token
_HELD_LOCK = threading.Lock()


class RunHeld(ConfigError):
    """Another process holds the run folder (a live, fresh claim)."""


def claim_file(run_dir: str | os.PathLike) -> Path:
    """`.<name>.claim` beside the run folder: the folder itself holds only the run's files. The
    path is resolved first, so `.`, `run/..` or a link name the folder they lead to."""
    run_dir = Path(run_dir).resolve()
    return run_dir.parent / f".{run_dir.name}.claim"


@contextmanager
def hold(run_dir: str | os.PathLike, *, job: str | None = None) -> Iterator[str]:
    """Hold `run_dir` for the duration: its claim file is created with O_CREAT|O_EXCL (atomic on
    local filesystems and on NFSv3 and later, where `flock` may not be), touched every
    `CLAIM_HEARTBEAT_SECONDS` and removed on exit. A claim is stale, and taken over, when its
    holder is a dead process of this machine, an earlier attempt of the same scheduler `job`
    (a requeued task), or when it was not touched for `CLAIM_STALE_SECONDS`; so a crash releases
    it. Re-entrant in one process, and inherited by a child given its token in $POLARPACK_RUN_CLAIM.
    Raises `RunHeld` naming the run and its holder when another process holds it."""
    path = claim_file(run_dir)
    key = path.resolve()
    with _HELD_LOCK:
        token = _HELD.get(key)
    inherited = os.environ.get(CLAIM_ENV)
    if token is not None or (inherited and (_read_claim(path) or {}).get("token") == inherited):
        yield token or inherited  # held by this process, or by the parent that started us
        return
    token = _acquire(path, Path(run_dir), job)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(path, stop), daemon=True)
    beat.start()
    with _HELD_LOCK:
        _HELD[key] = token
    try:
        yield token
    finally:
        with _HELD_LOCK:
            _HELD.pop(key, None)
        stop.set()
        if (_read_claim(path) or {}).get("token") == token:
            path.unlink(missing_ok=True)


def held_token(run_dir: str | os.PathLike) -> str | None:
    """This process's claim token on `run_dir`, for a child process to inherit."""
    with _HELD_LOCK:
        return _HELD.get(claim_file(run_dir).resolve())


def claim_holder(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """Who holds `run_dir` now (host, pid, job, since), or None when nobody holds it."""
    path = claim_file(run_dir)
    holder = _read_claim(path)
    return None if holder is None or _is_stale(path, holder, None) else holder


def _acquire(path: Path, run_dir: Path, job: str | None) -> str:
    token = uuid.uuid4().hex
    record = {
        "token": token,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "job": job,
        "since": time.time(),
    }
    for _ in range(5):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = _read_claim(path)
            if holder is not None and not _is_stale(path, holder, job):
                raise RunHeld(
                    f"{run_dir}: another process holds this run ({_describe(holder)}, claim "
                    f"{path}); wait for it to finish, or stop that process"
                ) from None
            _break(path, holder)
            continue
        except OSError as exc:
            raise ConfigError(
                f"{run_dir}: cannot claim it ({exc.strerror or exc} at {path}); the folder that "
                "holds the run must be a writable directory"
            ) from None
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(record))
            fh.flush()
            os.fsync(fh.fileno())
        return token
    raise RunHeld(f"{run_dir}: could not claim it ({path} keeps changing hands); try again")


def _read_claim(path: Path) -> dict[str, Any] | None:
    """The claim's record; {} while its creator has not written it yet; None when none."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        record = json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {}
    return record if isinstance(record, dict) else {}


def _is_stale(path: Path, holder: dict[str, Any], job: str | None) -> bool:
    if job is not None and holder.get("job") == job:
        return True  # the same scheduler task, requeued after a preemption or a time limit
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass  # alive, another user's
    try:
        return time.time() - path.stat().st_mtime > CLAIM_STALE_SECONDS
    except FileNotFoundError:
        return True


def _break(path: Path, holder: dict[str, Any] | None) -> None:
    """Move a stale claim aside (a rename is atomic); when what moved is not the claim judged
    stale (its holder was replaced in between), put it back."""
    aside = path.with_name(f"{path.name}.{uuid.uuid4().hex}.stale")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    moved = _read_claim(aside)
    if holder is not None and moved is not None and moved.get("token") != holder.get("token"):
        try:
            os.link(aside, path)
        except OSError:
            pass
    aside.unlink(missing_ok=True)


def _heartbeat(path: Path, stop: threading.Event) -> None:
    while not stop.wait(CLAIM_HEARTBEAT_SECONDS):
        try:
            os.utime(path)
        except OSError:
            return


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "a process starting now"
    where = f"pid {holder.get('pid')} on {holder.get('host')}"
    return f"{where}, Slurm job {holder['job']}" if holder.get("job") else where
