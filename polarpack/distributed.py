"""Multi-process / multi-GPU training with `torch.distributed` (DistributedDataParallel).

`train()` runs distributed when the environment says so, nanoGPT style: `RANK` and `WORLD_SIZE`
are set (torchrun sets them, with `LOCAL_RANK`, `MASTER_ADDR` and `MASTER_PORT`), or a process
group is already initialised by the caller. Launch it with

    torchrun --standalone --nproc_per_node 4 -m polarpack train --dist paper:alexnet ...

or, from Python (experiment grids), `launch(config, run_dir, nproc)`. See docs/distributed.md.

What each rank does (all of it is here; train.py only calls these helpers):

* the backend is NCCL on CUDA and gloo on the CPU (`--backend`, `$POLARPACK_BACKEND` override);
  on CUDA each process uses `cuda:LOCAL_RANK`;
* `--batch-size` is the GLOBAL batch: every rank draws the same seeded permutation and takes the
  strided slice `batch[rank::world_size]` of each global batch, so ranks differ by at most one
  image when the batch does not divide evenly, and the loss is weighted so that the averaged
  gradient is exactly the gradient of the mean over the global batch;
* the sign targets are checked to be identical on every rank before training (a checksum of the
  targets is all-gathered; `DistributedError` if they differ), and a fingerprint of the weights
  is compared after every epoch, so ranks that drifted apart stop the run instead of going on;
* validation is sharded (contiguous slices) and the loss sums and correct counts are all-reduced;
* only rank 0 writes files and shows progress.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .errors import ConfigError, PolarpackError

BACKENDS = ("auto", "gloo", "nccl", "mpi")
ENV_BACKEND = "POLARPACK_BACKEND"  # backend override (also read by `polarpack train --backend`)
ENV_TIMEOUT = "POLARPACK_DIST_TIMEOUT"  # seconds a collective may wait for a peer (default: torch's)
ENV_RANK_WEIGHTS = "POLARPACK_DIST_RANK_WEIGHTS"  # tests: every rank writes its final weights here


class DistributedError(PolarpackError):
    """A distributed run cannot start or cannot go on (mismatched ranks, a failed peer, bad launch)."""


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the run. `SINGLE` is the ordinary one-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # None: no process group (single process)
    device: torch.device = torch.device("cpu")  # where collectives' tensors live
    owns_group: bool = False  # True when setup() created the group, so teardown() destroys it

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> dict[str, Any]:
        return {"world_size": self.world_size, "backend": self.backend, "global_batch": True, "shard": "strided"}


SINGLE = DistContext()


# -- setup ---------------------------------------------------------------------------------------


def env_requests_distributed(environ: Mapping[str, str] | None = None) -> bool:
    """True when the launcher set RANK and WORLD_SIZE (torchrun does; nanoGPT's convention)."""
    environ = os.environ if environ is None else environ
    return "RANK" in environ and "WORLD_SIZE" in environ


def resolve_backend(name: str | None, device: torch.device) -> str:
    """`auto` (or None): `$POLARPACK_BACKEND` if set, else NCCL for CUDA devices and gloo otherwise."""
    if name in (None, "auto"):
        name = os.environ.get(ENV_BACKEND) or "auto"
    name = name.lower()
    if name not in BACKENDS:
        raise ConfigError(f"unknown distributed backend {name!r}; choose one of {list(BACKENDS)}")
    if name == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if name == "nccl" and device.type != "cuda":
        raise ConfigError(f"--backend nccl needs CUDA devices but the run uses {device}; use --backend gloo (or auto) on the CPU")
    return name


def _timeout() -> datetime.timedelta | None:
    value = os.environ.get(ENV_TIMEOUT)
    if not value:
        return None
    try:
        return datetime.timedelta(seconds=float(value))
    except ValueError:
        raise ConfigError(f"${ENV_TIMEOUT} must be a number of seconds (got {value!r})") from None


def setup(device: torch.device, backend: str | None = None) -> tuple[DistContext, torch.device]:
    """Join (or create) the process group when the environment asks for it.

    Returns the context and the device this rank trains on (`cuda:LOCAL_RANK` for CUDA runs).
    Without RANK/WORLD_SIZE and without an initialised group it returns `(SINGLE, device)`.
    """
    import torch.distributed as dist

    initialised = dist.is_available() and dist.is_initialized()
    if not initialised and not env_requests_distributed():
        return SINGLE, device
    if not dist.is_available():
        raise DistributedError("RANK/WORLD_SIZE are set but this torch build has no torch.distributed support")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device.type == "cuda":
        if device.index is None:
            if local_rank >= torch.cuda.device_count():
                raise DistributedError(
                    f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA device(s) are visible; "
                    "run at most one process per GPU (--nproc_per_node)"
                )
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    owns = False
    if initialised:
        name = dist.get_backend()
    else:
        name = resolve_backend(backend, device)
        kwargs: dict[str, Any] = {"backend": name}
        if (timeout := _timeout()) is not None:
            kwargs["timeout"] = timeout
        if name == "nccl":
            kwargs["device_id"] = device
        try:
            dist.init_process_group(**kwargs)
        except (RuntimeError, ValueError) as exc:
            raise DistributedError(f"cannot join the process group (backend {name}, RANK={os.environ.get('RANK')}, "
                                   f"WORLD_SIZE={os.environ.get('WORLD_SIZE')}): {exc}") from exc
        owns = True
    ctx = DistContext(
        rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, backend=str(name),
        device=device if str(name) == "nccl" else torch.device("cpu"), owns_group=owns,
    )
    return ctx, device


def teardown(ctx: DistContext) -> None:
    """Destroy the process group if `setup` created it."""
    import torch.distributed as dist

    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: nn.Module, ctx: DistContext, device: torch.device) -> nn.Module:
    """DistributedDataParallel around `model` (whose parameters it shares), or `model` itself."""
    if not ctx.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def install_sigterm_handler(ctx: DistContext) -> None:
    """torchrun stops the surviving workers with SIGTERM when one fails: turn it into an error the
    loop can report (and record as `failed`) instead of a silent death."""
    if not ctx.distributed or os.name == "nt":
        return
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum, frame):  # noqa: ARG001
        raise DistributedError(
            f"rank {ctx.rank}/{ctx.world_size} was terminated (signal {signum}): another process of the "
            "distributed run failed or the launcher stopped it; see the failing rank's error above"
        )

    signal.signal(signal.SIGTERM, handler)


def failure_message(ctx: DistContext, exc: BaseException) -> str:
    """One clear line for an error that ended a distributed run on this rank."""
    prefix = f"rank {ctx.rank}/{ctx.world_size}: "
    if isinstance(exc, PolarpackError):
        return str(exc) if str(exc).startswith("rank ") else prefix + str(exc)
    text = f"{type(exc).__name__}: {exc}".strip()
    if "Connection closed by peer" in text or "Connection reset" in text or "timed out" in text.lower() \
            or "DistBackendError" in text or "NCCL" in text:
        return (f"rank {ctx.rank}/{ctx.world_size}: a collective operation failed, most likely because another rank "
                f"died or hung (see its error above; torchrun names it in its failure summary): {text.splitlines()[0]}")
    return f"rank {ctx.rank}/{ctx.world_size}: {text.splitlines()[0] if text else type(exc).__name__}"


# -- sharding and reductions ---------------------------------------------------------------------


def shard_batch(indices: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """This rank's part of one global batch: the strided slice `indices[rank::world_size]`."""
    if not ctx.distributed:
        return indices
    return indices[ctx.rank :: ctx.world_size]


def shard_range(n: int, ctx: DistContext) -> slice:
    """This rank's contiguous part of `range(n)` (validation); sizes differ by at most one."""
    if not ctx.distributed:
        return slice(0, n)
    base, extra = divmod(n, ctx.world_size)
    start = ctx.rank * base + min(ctx.rank, extra)
    return slice(start, start + base + (1 if ctx.rank < extra else 0))


def loss_weight(ctx: DistContext, global_count: int) -> float:
    """Factor for a rank's summed loss so that DDP's gradient average is the gradient of the mean
    over the whole global batch: world_size / global_count (exact for uneven shards too)."""
    return ctx.world_size / max(global_count, 1)


def shard_loss(out: torch.Tensor, y: torch.Tensor, ctx: DistContext, global_count: int) -> torch.Tensor:
    """This rank's loss: the summed cross-entropy of its shard times world_size / global_count, so
    that DDP's average of the ranks' gradients is the gradient of the global batch's mean loss."""
    import torch.nn.functional as F

    return F.cross_entropy(out, y, reduction="sum") * loss_weight(ctx, global_count)


def reduce_step(ctx: DistContext, shard_loss_value: float, correct: int, global_count: int) -> tuple[float, int]:
    """The global batch's mean loss and correct count from this rank's `shard_loss` value and
    correct count (one small all_reduce per step)."""
    loss_sum, correct_sum = all_sum(ctx, shard_loss_value / loss_weight(ctx, global_count), correct)
    return loss_sum / max(global_count, 1), int(round(correct_sum))


def all_sum(ctx: DistContext, *values: float) -> tuple[float, ...]:
    """Sum numbers over ranks (one float64 all_reduce); returns them unchanged for one process."""
    if not ctx.distributed:
        return tuple(float(v) for v in values)
    import torch.distributed as dist

    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return tuple(t.tolist())


def checksum(tensors: Mapping[str, torch.Tensor]) -> int:
    """A signed int64 from SHA-256 over the names, dtypes, shapes and bytes of `tensors`."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return int.from_bytes(h.digest()[:8], "little", signed=True)


def check_consistent(ctx: DistContext, what: str, value: int, hint: str = "") -> None:
    """All-gather an int64 from every rank; raise `DistributedError` on every rank if they differ."""
    if not ctx.distributed:
        return
    import torch.distributed as dist

    mine = torch.tensor([int(value)], dtype=torch.int64, device=ctx.device)
    gathered = [torch.zeros_like(mine) for _ in range(ctx.world_size)]
    dist.all_gather(gathered, mine)
    values = [int(g.item()) for g in gathered]
    if len(set(values)) > 1:
        differing = [r for r, v in enumerate(values) if v != values[0]]
        raise DistributedError(
            f"{what} differ across ranks: rank(s) {differing} disagree with rank 0 "
            f"(values by rank: {values}); {hint or 'every rank must run the same configuration'}"
        )


def check_targets(ctx: DistContext, targets: Mapping[str, torch.Tensor]) -> None:
    """Fail clearly unless the sign targets are bit-identical on every rank."""
    check_consistent(
        ctx, "sign targets", checksum(targets),
        "every rank must materialize the same pattern: same --seed, --dist, --sampling, --map and package version",
    )


@torch.no_grad()
def weights_fingerprint(model: nn.Module) -> int:
    """A cheap exact fingerprint of the parameters (float64 sums, hashed): equal on ranks whose
    weights are bit-identical, which DDP and the seeded projection guarantee."""
    sums = torch.stack([torch.stack([p.double().sum(), p.double().abs().sum()]) for p in model.parameters()])
    return checksum({"sums": sums.cpu()})


def check_weights(ctx: DistContext, model: nn.Module, epoch: int) -> None:
    """Fail clearly if the ranks' weights are no longer identical (no-op for one process)."""
    if not ctx.distributed:
        return
    check_consistent(ctx, f"weights after epoch {epoch}", weights_fingerprint(model),
                     "the ranks drifted apart (non-deterministic kernels or a rank with different data?)")


def gather_rng_states(ctx: DistContext, state: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every rank's torch RNG state (dropout masks differ by rank), keyed `torch.rankN` for N > 0."""
    if not ctx.distributed:
        return {}
    import torch.distributed as dist

    states: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(states, state)
    return {f"torch.rank{r}": s for r, s in enumerate(states) if r > 0}


def rank_rng_key(ctx: DistContext) -> str:
    return "torch" if ctx.rank == 0 else f"torch.rank{ctx.rank}"


def dump_rank_weights(ctx: DistContext, model: nn.Module, targets: Mapping[str, torch.Tensor]) -> None:
    """Test hook: with `$POLARPACK_DIST_RANK_WEIGHTS=DIR` every rank writes DIR/rankN.safetensors."""
    folder = os.environ.get(ENV_RANK_WEIGHTS)
    if not folder:
        return
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors |= {f"target.{k}": v.detach().cpu().contiguous() for k, v in targets.items()}
    Path(folder).mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(Path(folder) / f"rank{ctx.rank}.safetensors"))


# -- launching -----------------------------------------------------------------------------------


def torchrun_command(nproc: int, module_args: Sequence[str], *, nnodes: int = 1) -> list[str]:
    """`python -m torch.distributed.run --standalone --nproc_per_node N -m ...` (single node; the
    rendezvous picks a free port, so concurrent launches do not collide)."""
    if nproc < 1:
        raise ConfigError(f"nproc must be >= 1 (got {nproc})")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nnodes={nnodes}",
            f"--nproc_per_node={nproc}", "-m", *module_args]


def launch(
    config: Mapping[str, Any] | Any,
    run_dir: str | os.PathLike,
    nproc: int,
    *,
    resume: bool = False,
    backend: str | None = None,
    env: Mapping[str, str] | None = None,
    log: str | os.PathLike | None = None,
    timeout: float | None = None,
):
    """Run one training run with `nproc` processes under torchrun, as a subprocess; return its
    `TrainResult` (read back from the run directory that rank 0 wrote).

    `config` is a `TrainConfig` or its dict; `resume=True` continues `run_dir` from its checkpoint.
    `env` adds environment variables (e.g. CUDA_VISIBLE_DEVICES for a GPU subset); `log` receives
    stdout and stderr of all ranks (default: inherited). Raises `DistributedError` when the run
    fails, with the log's tail in the message.
    """
    from .train import TrainConfig, TrainResult, read_metrics

    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(dict(config))
    cfg.validate()
    run_dir = Path(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="polarpack-launch-") as tmp:
        cfg_file = Path(tmp) / "config.json"
        cfg_file.write_text(json.dumps(cfg.to_dict()))
        args = ["polarpack.distributed", "--config", str(cfg_file), "--out", str(run_dir)]
        if resume:
            args.append("--resume")
        if backend:
            args += ["--backend", backend]
        cmd = torchrun_command(nproc, args)
        child_env = {**os.environ, **(env or {})}
        child_env.setdefault("OMP_NUM_THREADS", str(cfg.threads or 1))
        handle = open(log, "ab") if log is not None else None
        try:
            proc = subprocess.run(cmd, env=child_env, stdout=handle, stderr=subprocess.STDOUT if handle else None,
                                  timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise DistributedError(f"distributed run {run_dir} ({nproc} processes) did not finish within {timeout} s") from None
        finally:
            if handle is not None:
                handle.close()
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    if proc.returncode != 0 or summary.get("status") not in ("completed", "diverged"):
        tail = ""
        if log is not None and Path(log).exists():
            tail = "\n" + "\n".join(Path(log).read_text(errors="replace").splitlines()[-20:])
        raise DistributedError(
            f"distributed run {run_dir} ({nproc} processes) failed with exit status {proc.returncode}, "
            f"status {summary.get('status', 'not started')!r}" + (f"; log: {log}" if log else "") + tail
        )
    return TrainResult(run_dir, summary["status"], read_metrics(run_dir), summary, cfg)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m polarpack.distributed --config CFG.json --out RUN_DIR [--resume] [--backend B]`:
    the worker entry point `launch` runs under torchrun."""
    import argparse

    from .train import TrainConfig, train

    parser = argparse.ArgumentParser(prog="python -m polarpack.distributed", description=main.__doc__)
    parser.add_argument("--config", required=True, help="JSON file with a TrainConfig dict")
    parser.add_argument("--out", required=True, help="run directory")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--backend", default=None, choices=BACKENDS)
    args = parser.parse_args(argv)
    try:
        if args.resume:
            result = train(resume=args.out, progress=False, backend=args.backend)
        else:
            config = TrainConfig.from_dict(json.loads(Path(args.config).read_text()))
            result = train(config, out=args.out, progress=False, backend=args.backend)
    except PolarpackError as exc:
        print(f"polarpack: error: {exc}", file=sys.stderr)
        return 1
    return 0 if result.status in ("completed", "diverged") else 1


if __name__ == "__main__":
    sys.exit(main())
