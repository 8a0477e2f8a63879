"""Training end to end: every method through the CLI on real (embedded) data, the sign invariant
after every step, resume equivalence, determinism, divergence and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file
from torch import nn

from polarpack.errors import ConfigError, ModelError
from polarpack.materialize import materialize
from polarpack.models import build_model
from polarpack.presets import get_preset
from polarpack.train import TrainConfig, train
from polarpack_cli.main import cli

TINY = dict(dataset="fashion-mnist-mini", train_size=200, val_size=100, batch_size=100, threads=1)
TINY_ARGS = ["--dataset", "fashion-mnist-mini", "--train-size", "200", "--val-size", "100", "--batch-size", "100", "--threads", "1", "--quiet"]
TIMING = {"epoch_seconds", "train_seconds", "images_per_second"}


@pytest.fixture(scope="module")
def alexnet_weights(tmp_path_factory) -> Path:
    """A stand-in 'pretrained' AlexNet checkpoint (the real ImageNet one is not available here)."""
    torch.manual_seed(123)
    model = build_model("alexnet", num_classes=1000)
    path = tmp_path_factory.mktemp("weights") / "alexnet.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _run_cli(args: list[str]) -> dict:
    result = CliRunner().invoke(cli, ["train", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoint.safetensors"))


@pytest.mark.parametrize(
    "method, extra",
    [
        ("freeze-spin", ["--dist", "paper:alexnet"]),
        ("fluid-spin", ["--dist", "paper:alexnet", "--zeros", "free"]),
        ("freeze-in", []),
        ("fluid-in", []),
        ("scratch", []),
    ],
)
def test_every_method_end_to_end_through_the_cli(tmp_path, alexnet_weights, method, extra):
    if method.endswith("-in"):
        extra = ["--weights", str(alexnet_weights)]
    out = tmp_path / "run"
    summary = _run_cli(["--method", method, *extra, "--epochs", "2", "--out", str(out), *TINY_ARGS])
    assert summary["status"] == "completed" and summary["epochs_done"] == 2
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert (out / "metrics.csv").read_text().splitlines()[0].startswith("epoch,train_loss,train_acc,val_loss,val_acc")
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["method"] == method
    weights = _final_weights(out)
    targets = {k[len("target."):]: v for k, v in weights.items() if k.startswith("target.")}
    if method in ("fluid-in", "scratch"):
        assert not targets
    else:
        assert sorted(targets) == [f"conv{i}" for i in range(1, 6)]
    if method == "freeze-in":  # the pattern is exactly the transferred one
        source = load_file(str(alexnet_weights))
        for name, t in targets.items():
            assert torch.equal(t, torch.sign(source[f"{name}.weight"]).to(torch.int8))
    if method == "fluid-in":  # started from the transferred weights (not from Glorot)
        assert config["resolved"]["transferred"][:2] == ["conv1.weight", "conv1.bias"]
        assert "fc8.weight" not in config["resolved"]["transferred"]


@pytest.mark.parametrize("zeros", ["pin", "free"])
def test_no_constrained_weight_has_the_wrong_sign_after_any_step(tmp_path, zeros):
    """Checked by the test itself: a global forward pre-hook sees the kernels before every
    forward pass, i.e. after every optimizer step (and projection) of the run."""
    dist = get_preset("paper:alexnet").distribution
    expected = materialize(dist, "alexnet", seed=5).targets
    by_shape = {tuple(t.shape): t for t in expected.values()}
    seen = {"checks": 0}

    def check(module, _inputs):
        if isinstance(module, nn.Conv2d):
            t = by_shape[tuple(module.weight.shape)].to(torch.float32)
            w = module.weight.detach()
            if zeros == "pin":
                assert torch.equal(torch.sign(w), t)
            else:
                assert not bool((w * t < 0).any())
            seen["checks"] += 1

    handle = torch.nn.modules.module.register_module_forward_pre_hook(check)
    try:
        config = TrainConfig(method="freeze-spin", dist="paper:alexnet", seed=5, zeros=zeros, epochs=2, **TINY)
        result = train(config, out=tmp_path, progress=False)
    finally:
        handle.remove()
    assert result.status == "completed"
    assert seen["checks"] >= 5 * (2 * 2 + 2)  # 5 convs x (2 epochs x 2 steps + 2 validation batches)
    assert result.metrics[-1]["projection_resets"] > 0  # Adam moves weights across zero: the projection works


def test_fluid_spin_flips_half_the_nonzero_targets_each_epoch(tmp_path):
    dist = get_preset("paper:alexnet").distribution
    initial = materialize(dist, "alexnet", seed=2).targets
    result = train(TrainConfig(method="fluid-spin", dist="paper:alexnet", seed=2, epochs=2, **TINY), out=tmp_path, progress=False)
    final = {k[len("target."):]: v for k, v in _final_weights(tmp_path).items() if k.startswith("target.")}
    nonzero = sum(int((t != 0).sum()) for t in initial.values())
    changed = sum(int((final[k] != initial[k]).sum()) for k in initial)
    assert result.metrics[1]["fluid_flips"] == changed
    assert abs(changed - nonzero / 2) <= len(initial)  # round(0.5 * nnz) per layer
    for k in initial:
        assert torch.equal(final[k] == 0, initial[k] == 0)


def test_spin_run_starts_from_what_materialize_gives(tmp_path):
    train(TrainConfig(method="freeze-spin", dist="paper:table1-exp5", model="zfnet", seed=9, epochs=1, save_init=True, **TINY), out=tmp_path, progress=False)
    saved = load_file(str(tmp_path / "init.safetensors"))
    outside = materialize(get_preset("paper:table1-exp5").distribution, "zfnet", seed=9)
    for name in outside.targets:
        assert torch.equal(saved[f"{name}.weight"], outside.weights[name])
        assert torch.equal(saved[f"{name}.polarity"], outside.targets[name])


def _comparable(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def test_resume_ends_with_the_metrics_of_an_uninterrupted_run(tmp_path):
    config = TrainConfig(method="fluid-spin", dist="paper:alexnet", seed=4, epochs=3, **TINY)
    whole = train(config, out=tmp_path / "whole", progress=False)

    def stop_after_two(row):
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, out=tmp_path / "cut", progress=False, on_epoch=stop_after_two)
    assert json.loads((tmp_path / "cut" / "summary.json").read_text())["status"] == "running"
    resumed = train(resume=tmp_path / "cut", progress=False)
    assert resumed.status == "completed"
    assert _comparable(resumed.metrics) == _comparable(whole.metrics)
    a, b = _final_weights(tmp_path / "whole"), _final_weights(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith(("model.", "target.")))
    # resuming a finished run does nothing and returns its summary
    again = train(resume=tmp_path / "cut", progress=False)
    assert again.summary == resumed.summary


def test_seed_fixes_everything_and_a_new_seed_changes_it(tmp_path):
    config = TrainConfig(method="freeze-spin", dist="paper:alexnet", seed=1, epochs=1, **TINY)
    a = train(config, out=tmp_path / "a", progress=False)
    b = train(config, out=tmp_path / "b", progress=False)
    c = train(TrainConfig(**{**config.to_dict(), "seed": 2}), out=tmp_path / "c", progress=False)
    assert _comparable(a.metrics) == _comparable(b.metrics)
    assert _comparable(a.metrics) != _comparable(c.metrics)


def test_divergence_is_recorded_not_a_crash(tmp_path):
    result = train(TrainConfig(method="scratch", epochs=3, lr=1e12, optimizer="sgd", **TINY), out=tmp_path, progress=False)
    assert result.status == "diverged"
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "diverged"
    assert len(result.metrics) < 3 or result.metrics[-1]["train_loss"] is None


def test_bad_input_gives_one_line_errors(tmp_path, alexnet_weights):
    runner = CliRunner()
    cases = [
        (["--method", "freeze-spin"], "needs a distribution"),
        (["--method", "freeze-in"], "needs transferred weights"),
        (["--method", "freeze-in", "--model", "zfnet", "--weights", str(alexnet_weights)], "has shape"),
        (["--dist", "paper:nope"], "unknown preset"),
        (["--dist", "paper:alexnet", "--dataset", "mnist-9000"], "mnist-9000"),
        (["--dist", str(tmp_path / "missing.polar")], "missing.polar"),
    ]
    for args, message in cases:
        result = runner.invoke(cli, ["train", "--epochs", "1", "--out", str(tmp_path / "x"), *TINY_ARGS, *args])
        assert result.exit_code != 0, args
        assert message in result.output, (args, result.output)
        assert result.output.strip().count("\n") == 0, result.output  # one line
    with pytest.raises(ConfigError):
        TrainConfig(method="dance").validate()
    with pytest.raises(ModelError):
        train(TrainConfig(method="scratch", model="not_a_model", epochs=1, **TINY), out=tmp_path / "m", progress=False)


def test_cifar10_slice_from_the_shared_data(tmp_path, shared_data_dir):
    summary = _run_cli([
        "--dist", "paper:alexnet", "--model", "zfnet", "--dataset", "cifar10", "--data-dir", str(shared_data_dir),
        "--train-size", "300", "--val-size", "200", "--batch-size", "100", "--epochs", "1", "--threads", "1",
        "--quiet", "--out", str(tmp_path / "run"),
    ])
    assert summary["status"] == "completed"
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["resolved"]["train_images"] == 300 and config["resolved"]["input_size"] == 32
