"""Distributed training (polarpack/distributed.py): two gloo processes on the CPU train to the same
weights as one process with the same global batch, mismatched targets fail clearly, and a rank
that dies ends the run as "failed" with a clear message on rank 0.

The end-to-end tests start torchrun with `--standalone` (c10d rendezvous on a free port picked at
run time) and the process-group tests use a file rendezvous in tmp_path: no fixed ports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from polarpack import distributed
from polarpack.distributed import SINGLE, DistContext, DistributedError

TINY = ["--dist", "paper:alexnet", "--dataset", "fashion-mnist-mini", "--train-size", "200", "--val-size", "100",
        "--batch-size", "100", "--epochs", "2", "--threads", "1", "--dropout", "0", "--optimizer", "sgd", "--quiet"]
# SGD, not Adam: Adam divides by the running gradient scale, which turns float-level differences
# in the all-reduce order into lr-sized steps for weights whose gradient is near zero.


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def _torchrun(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = distributed.torchrun_command(2, args)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


# -- unit tests, no process group ---------------------------------------------------------------


@pytest.mark.parametrize("n,world", [(100, 2), (101, 2), (7, 3), (1, 2)])
def test_shards_cover_each_index_once(n, world):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    ctxs = [DistContext(rank=r, world_size=world, backend="gloo") for r in range(world)]
    parts = [distributed.shard_batch(order, c) for c in ctxs]
    assert sorted(torch.cat(parts).tolist()) == sorted(order.tolist())
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    slices = [distributed.shard_range(n, c) for c in ctxs]
    assert [i for s in slices for i in range(n)[s]] == list(range(n))
    assert distributed.shard_batch(order, SINGLE) is order and distributed.shard_range(n, SINGLE) == slice(0, n)


def test_backend_choice_and_env_detection(monkeypatch):
    monkeypatch.delenv(distributed.ENV_BACKEND, raising=False)
    assert distributed.resolve_backend("auto", torch.device("cpu")) == "gloo"
    assert distributed.resolve_backend(None, torch.device("cuda", 0)) == "nccl"
    monkeypatch.setenv(distributed.ENV_BACKEND, "gloo")
    assert distributed.resolve_backend("auto", torch.device("cuda", 0)) == "gloo"
    with pytest.raises(Exception, match="nccl needs CUDA"):
        distributed.resolve_backend("nccl", torch.device("cpu"))
    assert distributed.env_requests_distributed({"RANK": "0", "WORLD_SIZE": "2"})
    assert not distributed.env_requests_distributed({"LOCAL_RANK": "0"})


def test_checksum_is_order_free_and_sensitive():
    t = {"conv1": torch.tensor([1, -1, 0], dtype=torch.int8), "conv2": torch.ones(2, 2, dtype=torch.int8)}
    same = {"conv2": torch.ones(2, 2, dtype=torch.int8), "conv1": torch.tensor([1, -1, 0], dtype=torch.int8)}
    assert distributed.checksum(t) == distributed.checksum(same)
    same["conv1"][2] = 1
    assert distributed.checksum(t) != distributed.checksum(same)


# -- two gloo processes --------------------------------------------------------------------------


def _check_targets_worker(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        ctx = DistContext(rank=rank, world_size=2, backend="gloo")
        targets = {"conv1": torch.tensor([1, -1, 0, 1], dtype=torch.int8)}
        distributed.check_targets(ctx, targets)  # identical: passes
        if rank == 1:
            targets["conv1"][0] = -1
        try:
            distributed.check_targets(ctx, targets)
            message = "no error"
        except DistributedError as exc:
            message = str(exc)
        Path(out_dir, f"rank{rank}.txt").write_text(message)
    finally:
        dist.destroy_process_group()


def test_mismatched_targets_fail_on_every_rank(tmp_path):
    torch.multiprocessing.spawn(_check_targets_worker, args=(str(tmp_path / "rdzv"), str(tmp_path)), nprocs=2)
    for rank in (0, 1):
        message = (tmp_path / f"rank{rank}.txt").read_text()
        assert "sign targets differ across ranks" in message and "rank(s) [1]" in message, message


def _violations(tensors: dict[str, torch.Tensor]) -> int:
    total = 0
    for key, target in tensors.items():
        if key.startswith("target."):
            weight = tensors["model." + key[len("target."):] + ".weight"]
            total += int((torch.sign(weight) != target.to(weight.dtype)).sum())  # zeros="pin"
    return total


@pytest.mark.slow
def test_two_ranks_match_one_process(tmp_path):
    from safetensors.torch import load_file

    from polarpack.train import read_metrics, train

    dumps = tmp_path / "ranks"
    proc = _torchrun(["polarpack", "train", *TINY, "--out", str(tmp_path / "ddp")], tmp_path,
                     _env(**{distributed.ENV_RANK_WEIGHTS: str(dumps)}))
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = train(method="freeze-spin", dist="paper:alexnet", dataset="fashion-mnist-mini", train_size=200, val_size=100,
                   batch_size=100, epochs=2, threads=1, dropout=0.0, optimizer="sgd", out=tmp_path / "one", progress=False)
    reference = load_file(str(tmp_path / "one" / "checkpoint.safetensors"))
    ranks = [load_file(str(dumps / f"rank{r}.safetensors")) for r in (0, 1)]
    assert _violations(reference) == 0
    for state in ranks:
        assert _violations(state) == 0
        for key, value in state.items():
            if key.startswith("target."):
                assert torch.equal(value, reference[key]), key
            else:
                torch.testing.assert_close(value, reference[key], rtol=1e-4, atol=1e-5, msg=key)
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), f"ranks drifted apart at {key}"
    # rank 0 wrote the run directory: reduced metrics equal the single process's
    ddp_dir = tmp_path / "ddp"
    assert json.loads((ddp_dir / "summary.json").read_text())["status"] == "completed"
    assert json.loads((ddp_dir / "config.json").read_text())["resolved"]["distributed"]["world_size"] == 2
    for got, want in zip(read_metrics(ddp_dir), single.metrics, strict=True):
        assert got["val_acc"] == want["val_acc"] and got["train_acc"] == want["train_acc"]
        assert got["val_loss"] == pytest.approx(want["val_loss"], rel=1e-4)
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-4)
    checkpoint = load_file(str(ddp_dir / "checkpoint.safetensors"))
    torch.testing.assert_close(checkpoint["model.conv1.weight"], ranks[0]["model.conv1.weight"], rtol=0, atol=0)
    assert "rng.torch.rank1" in checkpoint  # every rank's dropout RNG, for resume
    assert proc.stdout.strip().splitlines() == [str(ddp_dir)]  # only rank 0 reports


@pytest.mark.slow
def test_dead_rank_fails_clearly_and_launch_resumes(tmp_path, monkeypatch):
    script = tmp_path / "die.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        from polarpack.train import train
        def on_epoch(row):
            if os.environ["RANK"] == "1":
                os._exit(3)  # rank 1 dies after epoch 1
        try:
            train(method="scratch", dataset="fashion-mnist-mini", train_size=100, val_size=50, batch_size=100,
                  epochs=3, threads=1, dropout=0.0, out={str(tmp_path / "run")!r}, progress=False, on_epoch=on_epoch)
        except Exception as exc:
            print(f"RANK{{os.environ['RANK']}} {{type(exc).__name__}}: {{exc}}", file=sys.stderr)
            sys.exit(1)
    """))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] != "completed"
    if summary["status"] == "failed":  # rank 0 saw the failure (not killed outright by torchrun first)
        assert "rank 0/2" in summary["error"]
        assert "RANK0 DistributedError: rank 0/2" in proc.stderr, proc.stderr[-3000:]
    # launch() resumes it under torchrun from the epoch-1 checkpoint, to what one process gets
    from polarpack.train import train

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    options = dict(method="scratch", dataset="fashion-mnist-mini", train_size=100, val_size=50, batch_size=100,
                   epochs=3, threads=1, dropout=0.0)
    result = distributed.launch(options, tmp_path / "run", 2, resume=True, log=tmp_path / "resume.log", timeout=120)
    assert result.status == "completed" and [r["epoch"] for r in result.metrics] == [1, 2, 3]
    single = train(**options, out=tmp_path / "one", progress=False)
    for got, want in zip(result.metrics, single.metrics, strict=True):
        assert got["val_acc"] == want["val_acc"]
        assert got["val_loss"] == pytest.approx(want["val_loss"], rel=1e-4)


@pytest.mark.slow
def test_experiment_grid_hands_each_run_two_processes(tmp_path):
    """`polarpack experiment --nproc-per-run 2`: each cell is a torchrun job; its run directory and
    the index look like a one-process run's."""
    from polarpack_cli.main import cli

    grid = tmp_path / "grid.toml"
    grid.write_text(
        '[experiment]\nname = "ddp"\n[defaults]\nmodel = "alexnet"\ndataset = "fashion-mnist-mini"\n'
        'method = "scratch"\nepochs = 1\nbatch_size = 100\ntrain_size = 200\nval_size = 100\ndropout = 0.0\n'
        "[grid]\nseeds = [0]\n"
    )
    result = CliRunner().invoke(cli, ["experiment", str(grid), "--results", str(tmp_path / "res"), "--nproc-per-run", "2", "--json"])
    assert result.exit_code == 0, result.output
    (run_dir,) = [p for p in (tmp_path / "res" / "runs").iterdir() if p.is_dir()]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["resolved"]["distributed"]["world_size"] == 2
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
