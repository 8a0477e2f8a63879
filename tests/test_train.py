"""Training end to end: every method through the CLI on real (embedded) data, the sign invariant
after every step, resume equivalence, determinism, precision, divergence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import TINY, TINY_ARGS
from polarpack_cli.main import cli
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from polarpack.format import Distribution, LayerDistribution, save
from polarpack.models import build_model
from polarpack.sources.presets import get_preset
from polarpack.training.loop import (
    STATE_FILE,
    TrainConfig,
    cpu_has_native_bf16,
    resolve_precision,
    train,
)
from polarpack.training.materialization import materialize

TIMING = {"epoch_seconds", "train_seconds", "images_per_second"}


def _cli_json(args: list[str]) -> dict:
    result = CliRunner().invoke(cli, ["train", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _comparable(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.mark.parametrize(
    "method, extra",
    [
        ("freeze-spin", ["--dist", "paper:alexnet"]),
        ("fluid-spin", ["--dist", "paper:alexnet", "--zeros", "free", "--fluid-mode", "reset"]),
        ("freeze-in", ["--weights", "WEIGHTS"]),
        ("fluid-in", ["--weights", "WEIGHTS"]),
        ("scratch", []),
    ],
)
def test_every_method_end_to_end_through_the_cli(tmp_path, alexnet_weights, method, extra):
    extra = [str(alexnet_weights) if a == "WEIGHTS" else a for a in extra]
    out = tmp_path / "run"
    summary = _cli_json(
        ["--method", method, *extra, "--epochs", "2", "--out", str(out), *TINY_ARGS]
    )
    assert (
        summary["status"] == "completed"
        and summary["epochs_done"] == 2
        and summary["precision"] in ("fp32", "bf16")
    )
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert (
        (out / "metrics.csv").read_text().startswith("epoch,train_loss,train_acc,val_loss,val_acc,")
    )
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["method"] == method and config["run_token"] == summary["run_token"]
    assert (
        config["environment"]["git_commit"] is None
        or len(config["environment"]["git_commit"]) >= 40
    )
    model = build_model("alexnet", num_classes=10)
    model.load_state_dict(
        load_file(str(out / "model.safetensors"))
    )  # loads without polarpack's help
    assert not (out / STATE_FILE).exists()  # a finished run keeps its weights, not its resume state
    if method == "fluid-in":  # started from the transferred weights, all but the head
        assert config["resolved"]["transferred"][:2] == ["conv1.weight", "conv1.bias"]
        assert "fc8.weight" not in config["resolved"]["transferred"]


@pytest.mark.parametrize("zeros, precision", [("pin", "fp32"), ("free", "fp32"), ("pin", "bf16")])
def test_no_constrained_weight_has_the_wrong_sign_after_any_step(tmp_path, zeros, precision):
    """Checked by the test itself: a global forward pre-hook sees the kernels before every forward
    pass, i.e. after every optimizer step (and projection) of the run."""
    expected = materialize(get_preset("paper:alexnet").distribution, "alexnet", seed=5).targets
    by_shape = {tuple(t.shape): t.float() for t in expected.values()}
    seen = []

    def check(module, _inputs):
        if isinstance(module, nn.Conv2d):
            w, t = module.weight.detach(), by_shape[tuple(module.weight.shape)]
            assert torch.equal(torch.sign(w), t) if zeros == "pin" else not bool((w * t < 0).any())
            seen.append(module)

    # bf16 is emulated, and slow, on CPUs without native bf16: one step of 100 images there
    epochs, size = (1, 100) if precision == "bf16" else (2, TINY["train_size"])
    handle = torch.nn.modules.module.register_module_forward_pre_hook(check)
    try:
        result = train(
            TrainConfig(
                method="freeze-spin",
                dist="paper:alexnet",
                seed=5,
                zeros=zeros,
                epochs=epochs,
                precision=precision,
                **{**TINY, "train_size": size},
            ),
            out=tmp_path,
            progress=False,
        )
    finally:
        handle.remove()
    assert result.status == "completed" and result.config.precision == precision
    # 5 convs x (epochs x (steps + 1 validation batch) + the image-size probe before the run)
    assert len(seen) == 5 * (epochs * (size // 100 + 1) + 1)
    assert (
        result.metrics[-1]["projection_resets"] > 0
    )  # Adam moves weights across zero: the projection works


def test_fluid_spin_flips_half_the_nonzero_targets_at_the_second_epoch(tmp_path):
    initial = materialize(get_preset("paper:alexnet").distribution, "alexnet", seed=2).targets

    def stop(row):
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(
            TrainConfig(
                method="fluid-spin",
                dist="paper:alexnet",
                seed=2,
                epochs=3,
                checkpoint_seconds=0,
                **TINY,
            ),
            out=tmp_path,
            progress=False,
            on_epoch=stop,
        )
    state = load_file(str(tmp_path / STATE_FILE))
    final = {k[len("target.") :]: v for k, v in state.items() if k.startswith("target.")}
    changed = sum(int((final[k] != initial[k]).sum()) for k in initial)
    nonzero = sum(int((t != 0).sum()) for t in initial.values())
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[1]["fluid_flips"] == changed and abs(changed - nonzero / 2) <= len(initial)
    assert all(torch.equal(final[k] == 0, initial[k] == 0) for k in initial)


def test_spin_run_starts_from_what_materialize_gives(tmp_path):
    train(
        TrainConfig(
            method="freeze-spin",
            dist="paper:table1-exp5",
            model="zfnet",
            seed=9,
            epochs=1,
            save_init=True,
            **TINY,
        ),
        out=tmp_path,
        progress=False,
    )
    saved = load_file(str(tmp_path / "init.safetensors"))
    outside = materialize(get_preset("paper:table1-exp5").distribution, "zfnet", seed=9)
    for name in outside.targets:
        assert torch.equal(saved[f"{name}.weight"], outside.weights[name])
        assert torch.equal(saved[f"{name}.polarity"], outside.targets[name])


def test_freeze_in_from_a_pattern_file_equals_freeze_in_from_the_checkpoint(
    tmp_path, alexnet_weights
):
    """The pattern .polar carries everything Freeze IN-Polarity needs: no float checkpoint."""
    state = load_file(str(alexnet_weights))
    layers = [
        LayerDistribution.from_signs(
            f"conv{i}", torch.sign(state[f"conv{i}.weight"]).to(torch.int8).numpy()
        )
        for i in range(1, 6)
    ]
    pattern = save(
        Distribution(layers, granularity="pattern"), tmp_path / "alexnet.polar.safetensors"
    )
    runs = [
        train(
            TrainConfig(method="freeze-in", weights=str(source), epochs=1, save_init=True, **TINY),
            out=tmp_path / name,
            progress=False,
        )
        for name, source in (("ckpt", alexnet_weights), ("pattern", pattern))
    ]
    assert _comparable(runs[0].metrics) == _comparable(runs[1].metrics)
    a, b = (load_file(str(tmp_path / n / "init.safetensors")) for n in ("ckpt", "pattern"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "epochs, every, stop", [(3, 1, 2), (4, 2, 3)], ids=["checkpoint-each-epoch", "every-2"]
)
def test_resume_ends_with_the_metrics_and_weights_of_an_uninterrupted_run(
    tmp_path, epochs, every, stop
):
    config = TrainConfig(
        method="fluid-spin",
        dist="paper:alexnet",
        seed=4,
        epochs=epochs,
        checkpoint_every=every,
        checkpoint_seconds=0,
        **TINY,
    )
    whole = train(config, out=tmp_path / "whole", progress=False)

    def interrupt(row):  # with every=2 the last checkpoint is epoch 2: the resume repeats epoch 3
        if row["epoch"] == stop:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, out=tmp_path / "cut", progress=False, on_epoch=interrupt)
    assert json.loads((tmp_path / "cut" / "summary.json").read_text())["status"] == "running"
    resumed = train(resume=tmp_path / "cut", progress=False)
    assert resumed.status == "completed" and _comparable(resumed.metrics) == _comparable(
        whole.metrics
    )
    a, b = (load_file(str(tmp_path / n / "model.safetensors")) for n in ("whole", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (
        train(resume=tmp_path / "cut", progress=False).summary == resumed.summary
    )  # a finished run stays as it is


@pytest.mark.parametrize("method", ["fluid-spin", "scratch"])
def test_a_run_killed_within_an_epoch_resumes_at_its_next_step(tmp_path, monkeypatch, method):
    """With an epoch longer than `checkpoint_seconds`, the checkpoint is taken between optimizer
    steps too: a run killed in the middle of an epoch repeats only the step it was in, and ends
    with the metrics and weights of an uninterrupted run (dropout and reset streams included)."""
    from polarpack.training import loop, runs

    config = TrainConfig(
        method=method,
        dist="paper:alexnet" if method != "scratch" else None,
        fluid_fraction=0.1,
        seed=3,
        epochs=3,
        checkpoint_seconds=1e-9,  # every step
        **{**TINY, "batch_size": 50},  # four steps an epoch
    )
    whole = train(config, out=tmp_path / "whole", progress=False)
    real_step, calls = loop._step, []

    def killed_at(n):
        def step(*args):
            calls.append(1)
            if len(calls) == n:
                raise KeyboardInterrupt
            return real_step(*args)

        return step

    monkeypatch.setattr(loop, "_step", killed_at(7))  # epoch 2, step 3: steps 1-2 checkpointed
    with pytest.raises(KeyboardInterrupt):
        train(config, out=tmp_path / "cut", progress=False)
    assert runs.checkpoint_position(tmp_path / "cut") == (1, 2)  # what --status reads
    calls.clear()
    monkeypatch.setattr(loop, "_step", killed_at(0))  # count only
    resumed = train(resume=tmp_path / "cut", progress=False)
    assert len(calls) == 3 * 4 - 6  # epoch 2's steps 3-4 and epoch 3's four
    assert resumed.status == "completed"
    assert _comparable(resumed.metrics) == _comparable(whole.metrics)
    a, b = (load_file(str(tmp_path / n / "model.safetensors")) for n in ("whole", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    saved = json.loads((tmp_path / "cut" / "config.json").read_text())
    assert [(r["epoch"], r.get("step")) for r in saved["resumes"]] == [(1, 2)]


def test_a_checkpoint_within_an_epoch_resumes_on_another_device_type(tmp_path, monkeypatch):
    """A GPU's generator states have another form than a CPU's: a resume on the other type
    derives its streams for the rest of the epoch instead of failing to restore them."""
    from polarpack.training import loop, runs

    config = TrainConfig(
        method="fluid-spin",
        dist="paper:alexnet",
        epochs=2,
        checkpoint_seconds=1e-9,
        **{**TINY, "batch_size": 50},
    )
    real_step, calls = loop._step, []

    def step(*args):
        calls.append(1)
        if len(calls) == 6:  # epoch 2, step 2
            raise KeyboardInterrupt
        return real_step(*args)

    monkeypatch.setattr(loop, "_step", step)
    with pytest.raises(KeyboardInterrupt):
        train(config, out=tmp_path / "run", progress=False)
    monkeypatch.setattr(loop, "_step", real_step)
    state = tmp_path / "run" / runs.STATE_FILE
    with safe_open(str(state), "pt") as fh:
        tensors, meta = {k: fh.get_tensor(k) for k in fh.keys()}, fh.metadata()
    assert {"rng.dropout", "rng.resets"} <= set(tensors)
    philox = torch.zeros(16, dtype=torch.uint8)  # a CUDA generator's state
    save_file({**tensors, "rng.dropout": philox, "rng.resets": philox.clone()}, str(state), meta)
    resumed = train(resume=tmp_path / "run", progress=False)
    assert resumed.status == "completed" and len(resumed.metrics) == 2


def test_a_run_resumed_on_another_machine_says_so(tmp_path, monkeypatch):
    """config.json records each resume's machine; a report counts such a run as a kind of its
    own (never paired as if it ran on one machine)."""
    from polarpack.experiments.reporting import machine_kind, report
    from polarpack.training import runs

    config = TrainConfig(method="scratch", seed=0, epochs=2, checkpoint_seconds=0, **TINY)
    run_dir = tmp_path / "results" / "runs" / "cut"

    def interrupt(row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, out=run_dir, progress=False, on_epoch=interrupt)
    here = runs.environment(torch.device("cpu"))
    elsewhere = {**here, "cpu": "Another CPU", "git_commit": "f" * 40}
    monkeypatch.setattr(runs, "environment", lambda device: elsewhere)
    with pytest.warns(UserWarning, match="another kind of machine than it computed on"):
        assert train(resume=run_dir, progress=False).status == "completed"
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["environment"]["cpu"] == here["cpu"]
    assert saved["resumes"] == [{"epoch": 1, "environment": elsewhere}]
    [group] = report(tmp_path / "results").groups
    home, away = (machine_kind(env, "cpu") for env in (here, elsewhere))
    assert home != away and group.machines == [f"{home}, from epoch 1 {away}"]


def test_seed_fixes_everything_and_a_new_seed_changes_it(tmp_path):
    config = TrainConfig(method="freeze-spin", dist="paper:alexnet", seed=1, epochs=1, **TINY)
    a, b = (train(config, out=tmp_path / n, progress=False) for n in "ab")
    c = train(TrainConfig(**{**config.to_dict(), "seed": 2}), out=tmp_path / "c", progress=False)
    assert _comparable(a.metrics) == _comparable(b.metrics) != _comparable(c.metrics)


def test_divergence_is_recorded_and_exits_3(tmp_path):
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--method",
            "scratch",
            "--epochs",
            "3",
            "--lr",
            "1e12",
            "--optimizer",
            "sgd",
            "--out",
            str(tmp_path),
            *TINY_ARGS,
        ],
    )
    assert result.exit_code == 3, result.output
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "diverged"


@pytest.mark.parametrize(
    "cpuinfo, native",
    [
        ("flags : fpu avx2 fma", False),
        ("flags : avx512f avx512_bf16", True),
        ("flags : amx_bf16 amx_tile", True),
    ],
)
def test_bf16_is_native_only_where_the_cpu_says_so(cpuinfo, native):
    assert cpu_has_native_bf16(cpuinfo) is native


def test_precision_auto_resolves_and_is_recorded(tmp_path):
    result = train(TrainConfig(method="scratch", epochs=1, **TINY), out=tmp_path, progress=False)
    assert result.config.precision == resolve_precision("auto", torch.device("cpu")) != "auto"
    assert (
        json.loads((tmp_path / "config.json").read_text())["config"]["precision"]
        == result.config.precision
    )


def test_train_config_file_and_overrides(tmp_path):
    (tmp_path / "c.json").write_text(
        json.dumps({"method": "scratch", "epochs": 1, "seed": 3, **TINY})
    )
    summary = _cli_json(
        [
            "--config",
            str(tmp_path / "c.json"),
            "--seed",
            "4",
            "--out",
            str(tmp_path / "run"),
            "--quiet",
        ]
    )
    config = json.loads(Path(summary["run_dir"], "config.json").read_text())["config"]
    assert (config["method"], config["seed"], config["epochs"]) == ("scratch", 4, 1)


def test_cifar10_slice_from_the_shared_data(tmp_path, shared_data_dir):
    summary = _cli_json(
        [
            "--dist",
            "paper:alexnet",
            "--model",
            "zfnet",
            "--dataset",
            "cifar10",
            "--data-dir",
            str(shared_data_dir),
            "--train-size",
            "300",
            "--val-size",
            "200",
            "--batch-size",
            "100",
            "--epochs",
            "1",
            "--threads",
            "1",
            "--quiet",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert summary["status"] == "completed"
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["resolved"]["train_images"] == 300 and config["resolved"]["input_size"] == 32


def test_checkpoints_follow_the_clock_and_a_run_without_one_starts_over(tmp_path, monkeypatch):
    """The resume state is written once `checkpoint_seconds` have passed since the last one (a short
    run writes none, only its weights at the end); a run killed before its first checkpoint is
    resumed by starting over, and ends as an uninterrupted run does."""
    import polarpack.training.runs

    written = []
    real = polarpack.training.runs.save_checkpoint
    monkeypatch.setattr(
        polarpack.training.runs,
        "save_checkpoint",
        lambda run_dir, **kw: written.append(kw["epoch"]) or real(run_dir, **kw),
    )
    config = TrainConfig(method="scratch", epochs=3, **TINY)
    whole = train(config, out=tmp_path / "whole", progress=False)
    assert written == [] and (tmp_path / "whole" / "model.safetensors").exists()
    train(
        TrainConfig(method="scratch", epochs=3, checkpoint_seconds=0, **TINY),
        out=tmp_path / "every",
        progress=False,
    )
    assert written == [1, 2]  # never after the last epoch: the weights are written instead

    def stop(row):
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, out=tmp_path / "cut", progress=False, on_epoch=stop)
    assert not (tmp_path / "cut" / STATE_FILE).exists()
    resumed = train(resume=tmp_path / "cut", progress=False)
    assert _comparable(resumed.metrics) == _comparable(whole.metrics)


def test_micro_batches_give_the_same_update_as_the_whole_batch(tmp_path):
    """Parts of 30, 30, 30 and 10 images add up to the gradient of the batch of 100 (fp32 and SGD:
    equal up to float rounding, far below the update; a wrong scale or a missed part is not)."""
    from polarpack.models import build_model
    from polarpack.training.methods import initialise

    base = dict(
        method="freeze-spin",
        dist="paper:alexnet",
        epochs=2,
        precision="fp32",
        dropout=0.0,
        optimizer="sgd",
        **TINY,
    )
    whole = train(TrainConfig(**base), out=tmp_path / "whole", progress=False)
    parts = train(TrainConfig(**base, micro_batch=30), out=tmp_path / "parts", progress=False)
    for a, b in zip(whole.metrics, parts.metrics, strict=True):
        assert abs(a["val_acc"] - b["val_acc"]) <= 1 / TINY["val_size"] + 1e-9
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
    start = build_model("alexnet", num_classes=10, dropout=0.0)
    initialise(start, TrainConfig(**base))
    a, b = (load_file(str(tmp_path / n / "model.safetensors")) for n in ("whole", "parts"))
    for key, initial in start.state_dict().items():
        assert (a[key] - b[key]).norm() <= 0.05 * (a[key] - initial).norm(), key


def test_a_run_leaves_the_callers_torch_settings_as_it_found_them(tmp_path):
    """`threads=1`, the kernel choices and the seeded dropout stream are the run's own: a guest in
    its caller's process."""
    callers = torch.get_num_threads()
    torch.set_num_threads(2)
    before = (torch.backends.cudnn.benchmark, torch.backends.cudnn.conv.fp32_precision)
    random_state = torch.get_rng_state()
    try:
        config = TrainConfig(method="scratch", epochs=1, **TINY)
        result = train(config, out=tmp_path, progress=False)
        assert result.status == "completed" and result.config.threads == 1
        assert torch.get_num_threads() == 2
        assert (torch.backends.cudnn.benchmark, torch.backends.cudnn.conv.fp32_precision) == before
        assert torch.equal(torch.get_rng_state(), random_state)
    finally:
        torch.set_num_threads(callers)


@pytest.mark.parametrize(
    "options, needle",
    [
        (["--model", "alexnet", "--image-size", "64"], "cannot take 64x64 images"),
        (["--model", "zfnet", "--geometry", "imagenet", "--image-size", "32"], "224x224 images"),
    ],
)
def test_an_image_size_the_network_cannot_take_is_refused_before_the_run_exists(
    cli_error, tmp_path, options, needle
):
    out = tmp_path / "run"
    args = ["train", "--method", "scratch", *options, "--epochs", "1", "--out", str(out)]
    cli_error([*args, *TINY_ARGS], needle)
    assert not out.exists() or not any(out.iterdir())


def test_a_run_can_go_into_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["train", "--method", "scratch", "--epochs", "1", "--out", ".", *TINY_ARGS]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "summary.json").is_file() and not list(tmp_path.parent.glob(".*.claim"))


def test_the_seed_alone_defines_a_torchvision_networks_start(tmp_path):
    """Its head is no method's: it must not depend on what the caller drew from torch before."""
    models = []
    for caller in (1, 2):
        torch.manual_seed(caller)
        config = {**TINY, "train_size": 100, "val_size": 100}
        out = tmp_path / str(caller)
        result = train(method="scratch", model="mobilenet_v2", epochs=1, out=out, **config)
        models.append(result.model.state_dict())
    assert all(torch.equal(models[0][k], models[1][k]) for k in models[0])


def test_the_returned_model_trains_freely(tmp_path):
    """Pinned zero-target weights are held during the run only, not in the model handed back."""
    result = train(method="freeze-spin", dist="paper:alexnet", epochs=1, out=tmp_path, **TINY)
    weight = result.model.conv2.weight
    weight.grad = None
    result.model(torch.randn(2, 3, 28, 28)).sum().backward()
    assert bool((weight == 0).any()) and bool((weight.grad[weight == 0] != 0).any())


@pytest.mark.skipif(torch.accelerator.is_available(), reason="needs a machine without accelerator")
@pytest.mark.parametrize("device", ["cuda", "cuda:1", "mps", "meta"])
def test_a_device_this_machine_lacks_is_one_line(cli_error, tmp_path, device):
    args = ["train", "--method", "scratch", "--device", device, "--out", str(tmp_path / "r")]
    cli_error([*args, *TINY_ARGS], f"--device {device} but no", "use --device auto or cpu")


def test_a_config_file_with_an_integer_too_long_to_read_is_one_line(cli_error, tmp_path):
    config = tmp_path / "c.json"
    config.write_text('{"epochs": ' + "9" * 5000 + "}")
    cli_error(["train", "--config", str(config)], "not valid JSON", "the file is damaged")
