"""Distributed training: two gloo processes on the CPU train to the same weights as one process with
the same global batch, mismatched targets fail on every rank, and a run whose rank died resumes.

torchrun runs with `--standalone` (a rendezvous on a free port picked at run time) and the
process-group test uses a file rendezvous in tmp_path: no fixed ports."""

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
from conftest import TINY
from safetensors.torch import load_file

from polarpack.experiments.runner import launch
from polarpack.models import build_model
from polarpack.training.distributed import DistributedError, World, checksum
from polarpack.training.loop import TrainConfig, train
from polarpack.training.methods import initialise

OPTIONS = dict(
    method="freeze-spin",
    dist="paper:alexnet",
    dataset="fashion-mnist-mini",
    train_size=200,
    val_size=100,
    batch_size=100,
    epochs=2,
    threads=1,
    dropout=0.0,
    optimizer="sgd",
    precision="fp32",
)
# SGD, not Adam: Adam divides by the running gradient scale, which turns float-level differences in
# the all-reduce order into lr-sized steps for weights whose gradient is near zero. fp32, not
# "auto": bf16 kernels differ with the batch split (50 images per rank instead of 100), so no two
# process counts agree to the last bit on a CPU with native bf16.


def _assert_same_epoch(got: dict, want: dict) -> None:
    """Float results differ in the last bits between process counts; a wrong shard or loss scale
    moves them by far more than one image of the validation (or training) set."""
    assert abs(got["val_acc"] - want["val_acc"]) <= 1.0 / OPTIONS["val_size"] + 1e-9
    assert abs(got["train_acc"] - want["train_acc"]) <= 1.0 / OPTIONS["train_size"] + 1e-9
    assert got["val_loss"] == pytest.approx(want["val_loss"], rel=1e-3)


def _env() -> dict[str, str]:
    drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    return {**{k: v for k, v in os.environ.items() if k not in drop}, "OMP_NUM_THREADS": "1"}


def _torchrun(script: str, cwd: Path) -> subprocess.CompletedProcess:
    (cwd / "job.py").write_text(textwrap.dedent(script))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(cwd / "job.py"),
    ]
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("n, world", [(100, 2), (101, 2), (7, 3), (1, 2)])
def test_shards_cover_each_index_once(n, world):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    ranks = [World(rank=r, world_size=world) for r in range(world)]
    parts = [d.shard(order) for d in ranks]
    assert (
        sorted(torch.cat(parts).tolist()) == sorted(order.tolist())
        and max(map(len, parts)) - min(map(len, parts)) <= 1
    )
    assert [i for d in ranks for i in d.shard_range(n)] == list(range(n))
    assert World().shard(order) is order and World().shard_range(n) == range(n)


def test_checksum_is_order_free_and_sensitive():
    t = {
        "conv1": torch.tensor([1, -1, 0], dtype=torch.int8),
        "conv2": torch.ones(2, 2, dtype=torch.int8),
    }
    same = {
        "conv2": torch.ones(2, 2, dtype=torch.int8),
        "conv1": torch.tensor([1, -1, 0], dtype=torch.int8),
    }
    assert checksum(t) == checksum(same)
    same["conv1"][2] = 1
    assert checksum(t) != checksum(same)


def _check_same_worker(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        ctx = World(rank=rank, world_size=2, backend="gloo")
        ctx.check_same("sign targets", 7, "same seed")  # identical: passes
        try:
            ctx.check_same("sign targets", 7 + rank, "every rank must use the same --seed")
            message = "no error"
        except DistributedError as exc:
            message = str(exc)
        Path(out_dir, f"rank{rank}.txt").write_text(message)
    finally:
        dist.destroy_process_group()


def test_mismatched_targets_fail_on_every_rank(tmp_path):
    torch.multiprocessing.spawn(
        _check_same_worker, args=(str(tmp_path / "rdzv"), str(tmp_path)), nprocs=2
    )
    for rank in (0, 1):
        message = (tmp_path / f"rank{rank}.txt").read_text()
        assert "sign targets differ across ranks: rank(s) [1]" in message and "--seed" in message


def _train_in_callers_group(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        result = train(method="scratch", epochs=1, out=Path(out_dir, "run"), progress=False, **TINY)
        Path(out_dir, f"rank{rank}.txt").write_text(result.status)
    finally:
        dist.destroy_process_group()


def test_a_run_joins_a_process_group_its_caller_started(tmp_path):
    """torch.multiprocessing.spawn sets no RANK: the group's rank says which process writes."""
    torch.multiprocessing.spawn(
        _train_in_callers_group, args=(str(tmp_path / "rdzv"), str(tmp_path)), nprocs=2
    )
    assert [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)] == ["completed"] * 2
    resolved = json.loads((tmp_path / "run" / "config.json").read_text())["resolved"]
    assert resolved["distributed"]["world_size"] == 2


@pytest.mark.slow
def test_two_ranks_match_one_process(tmp_path):
    """Each rank computes its 50 images in parts of 30 and 20 (micro-batches under DDP), and the
    run still matches one process computing the batch of 100 at once."""
    proc = _torchrun(
        f"""
        import os
        from safetensors.torch import save_file
        from polarpack.training.loop import train
        result = train(out={str(tmp_path / "ddp")!r}, progress=False, micro_batch=30,
                       **{OPTIONS!r})
        state = {{k: v.contiguous() for k, v in result.model.state_dict().items()}}
        save_file(state, f"rank{{os.environ['RANK']}}.safetensors")
    """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = train(out=tmp_path / "one", progress=False, **OPTIONS)
    reference = load_file(str(tmp_path / "one" / "model.safetensors"))
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1)]
    assert all(
        torch.equal(ranks[0][k], ranks[1][k]) for k in reference
    )  # the ranks never drift apart
    # Compare what training changed: per-rank backward passes (50 instead of 100 images) run other
    # kernels, whose float-level differences stay far below a few percent of the update in fp32; a
    # wrong shard or loss scale changes it by half or more.
    model = build_model("alexnet", num_classes=10, dropout=0.0)
    initialise(model, TrainConfig(**OPTIONS))
    for key, start in model.state_dict().items():
        update, drift = reference[key] - start, ranks[0][key] - reference[key]
        assert drift.norm() <= 0.05 * update.norm(), key
    config = json.loads((tmp_path / "ddp" / "config.json").read_text())
    assert config["resolved"]["distributed"] == {"world_size": 2, "backend": "gloo"}
    rows = [
        json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    ]
    for got, want in zip(rows, single.metrics, strict=True):
        _assert_same_epoch(got, want)


@pytest.mark.slow
def test_a_run_whose_rank_died_resumes_under_torchrun(tmp_path):
    options = dict(OPTIONS, method="scratch", dist=None, epochs=2, checkpoint_seconds=0)
    state = str(tmp_path / "run" / "training_state.safetensors")
    proc = _torchrun(
        f"""
        import os, pathlib, time
        from polarpack.training.loop import train
        def on_epoch(row):
            if os.environ["RANK"] == "1":  # rank 1 dies after epoch 1, once rank 0 has saved it
                while not pathlib.Path({state!r}).exists():
                    time.sleep(0.1)
                time.sleep(1)
                os._exit(3)
        train(out={str(tmp_path / "run")!r}, progress=False, on_epoch=on_epoch, **{options!r})
    """,
        tmp_path,
    )
    assert proc.returncode != 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "running"
    result = launch(options, tmp_path / "run", 2, resume=True, timeout=300)
    single = train(out=tmp_path / "one", progress=False, **options)
    assert result.status == "completed" and [r["epoch"] for r in result.metrics] == [1, 2]
    for got, want in zip(result.metrics, single.metrics, strict=True):
        _assert_same_epoch(got, want)


@pytest.mark.slow
def test_ranks_resumed_from_a_checkpoint_within_an_epoch_draw_their_own_dropout(
    tmp_path, monkeypatch
):
    """A single process checkpoints between steps and saves its one dropout stream; two ranks
    resuming from it must not both continue that stream (each would drop the same units)."""
    from polarpack.training import loop

    options = dict(OPTIONS, method="scratch", dist=None, dropout=0.5, batch_size=50)
    real_step, steps = loop._step, []

    def killed_at_step_six(*args):  # epoch 2, step 2: its step 1 is checkpointed
        steps.append(1)
        if len(steps) == 6:
            raise KeyboardInterrupt
        return real_step(*args)

    monkeypatch.setattr(loop, "_step", killed_at_step_six)
    with pytest.raises(KeyboardInterrupt):
        train(out=tmp_path / "run", progress=False, checkpoint_seconds=1e-9, **options)
    proc = _torchrun(
        f"""
        import hashlib, json, os
        import torch
        import torch.nn.functional as F
        from polarpack.training.loop import train
        states, dropout = [], F.dropout
        def recorded(input, p=0.5, training=True, inplace=False):
            if training:  # in eval mode dropout draws nothing
                state = torch.get_rng_state().numpy().tobytes()
                states.append(hashlib.sha256(state).hexdigest())
            return dropout(input, p, training, inplace)
        F.dropout = recorded
        train(resume={str(tmp_path / "run")!r}, progress=False)
        with open(f"rank{{os.environ['RANK']}}.json", "w") as f:
            json.dump(states, f)
    """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] and not set(ranks[0]) & set(ranks[1])
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert [(r["epoch"], r.get("step")) for r in saved["resumes"]] == [(1, 1)]


@pytest.mark.slow
def test_experiment_grid_hands_each_run_two_processes(tmp_path):
    from polarpack_cli.main import cli

    (tmp_path / "grid.toml").write_text(
        '[defaults]\nmodel = "alexnet"\ndataset = "fashion-mnist-mini"\nmethod = "scratch"\nepochs '
        "= 1\nbatch_size = 100\n"
        "train_size = 200\nval_size = 100\ndropout = 0.0\n[grid]\nseeds = [0]\n"
    )
    result = CliRunner().invoke(
        cli,
        [
            "experiment",
            str(tmp_path / "grid.toml"),
            "--results",
            str(tmp_path / "res"),
            "--nproc-per-run",
            "2",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    (run_dir,) = [p for p in (tmp_path / "res" / "runs").iterdir() if p.is_dir()]
    assert (
        json.loads((run_dir / "config.json").read_text())["resolved"]["distributed"]["world_size"]
        == 2
    )
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
