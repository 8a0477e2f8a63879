"""Multi-process and multi-GPU training with DistributedDataParallel, nanoGPT style.

`train()` runs distributed when the launcher sets `RANK` and `WORLD_SIZE` (torchrun does):

    torchrun --standalone --nproc_per_node 4 -m polarpack train --dist paper:alexnet ...

Each rank trains on the strided slice `batch[rank::world_size]` of every global batch, with its
summed loss scaled by world_size / global batch, so DDP's gradient average is exactly the gradient
of the global batch's mean loss; validation is sharded and the sums are all-reduced; only rank 0
writes. The backend is NCCL on CUDA (each process on `cuda:LOCAL_RANK`) and gloo on the CPU;
`--backend` or `$POLARPACK_BACKEND` overrides, `$POLARPACK_DIST_TIMEOUT` (seconds) bounds how long a
collective waits for a missing peer. See docs/distributed.md.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as torch_distributed
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from polarpack.errors import ConfigError, PolarpackError

BACKENDS = ("auto", "gloo", "nccl", "mpi")


class DistributedError(PolarpackError):
    """The ranks of a distributed run disagree, or the process group cannot be joined."""


@dataclass(frozen=True)
class World:
    """This process's place in the run; the default is the ordinary single process."""

    rank: int = 0
    world_size: int = 1
    backend: str | None = None
    device: torch.device = torch.device("cpu")  # where the collectives' tensors live
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, indices: torch.Tensor) -> torch.Tensor:
        return indices[self.rank :: self.world_size] if self.world_size > 1 else indices

    def shard_range(self, n: int) -> range:
        """This rank's contiguous part of range(n); sizes differ by at most one."""
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return range(start, start + base + (self.rank < extra))

    def all_sum(self, *values: float) -> tuple[float, ...]:
        if self.world_size == 1:
            return values
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        torch_distributed.all_reduce(t)
        return tuple(t.tolist())

    def check_same(self, what: str, value: int, hint: str) -> None:
        """Raise DistributedError on every rank unless all ranks hold the same integer."""
        if self.world_size == 1:
            return
        gathered = [
            torch.zeros(1, dtype=torch.int64, device=self.device) for _ in range(self.world_size)
        ]
        torch_distributed.all_gather(
            gathered, torch.tensor([value], dtype=torch.int64, device=self.device)
        )
        values = [int(g) for g in gathered]
        if len(set(values)) > 1:
            differing = [r for r, v in enumerate(values) if v != values[0]]
            raise DistributedError(
                f"{what} differ across ranks: rank(s) {differing} disagree with rank 0; {hint}"
            )

    def wrap(self, model: nn.Module) -> nn.Module:
        if self.world_size == 1:
            return model
        device = next(model.parameters()).device
        return DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    def teardown(self) -> None:
        if self.owns_group:
            torch_distributed.destroy_process_group()

    def describe(self) -> dict[str, Any]:
        return {"world_size": self.world_size, "backend": self.backend}


def process_rank() -> int:
    """This process's rank before `setup`: its process group's where the caller initialised one
    (torch.multiprocessing.spawn sets no RANK), else torchrun's RANK, else 0."""
    if torch_distributed.is_available() and torch_distributed.is_initialized():
        return torch_distributed.get_rank()
    return int(os.environ.get("RANK", "0"))


def setup(device: torch.device, backend: str | None = None) -> tuple[World, torch.device]:
    """Join the process group when RANK and WORLD_SIZE are set; return this rank's place and
    device."""
    if (
        not ("RANK" in os.environ and "WORLD_SIZE" in os.environ)
        and not torch_distributed.is_initialized()
    ):
        return World(), device
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank) if device.index is None else device
        torch.cuda.set_device(device)
    name = (
        backend if backend not in (None, "auto") else os.environ.get("POLARPACK_BACKEND")
    ) or "auto"
    if name not in BACKENDS:
        raise ConfigError(f"unknown distributed backend {name!r}; choose one of {list(BACKENDS)}")
    name = ("nccl" if device.type == "cuda" else "gloo") if name == "auto" else name
    owns = not torch_distributed.is_initialized()
    if owns:
        timeout = os.environ.get("POLARPACK_DIST_TIMEOUT")
        try:
            torch_distributed.init_process_group(
                name, timeout=datetime.timedelta(seconds=float(timeout)) if timeout else None
            )
        except (RuntimeError, ValueError) as exc:
            raise DistributedError(
                f"cannot join the process group (backend {name}, RANK={os.environ.get('RANK')}, "
                f"WORLD_SIZE={os.environ.get('WORLD_SIZE')}): {exc}"
            ) from exc
    backend_name = str(torch_distributed.get_backend())
    return World(
        torch_distributed.get_rank(),
        torch_distributed.get_world_size(),
        backend_name,
        device if backend_name == "nccl" else torch.device("cpu"),
        owns,
    ), device


def checksum(tensors: Mapping[str, torch.Tensor]) -> int:
    """A signed int64 from SHA-256 over the names, dtypes, shapes and bytes of `tensors`."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return int.from_bytes(h.digest()[:8], "little", signed=True)
