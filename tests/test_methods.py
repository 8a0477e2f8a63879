"""How each method starts, for the rungs between the signs and the float weights: Fluid
IN-Polarity, the 1-bit checkpoint (signs times channel scales) and the BatchNorm transfer, checked
against a real checkpoint's tensors."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY
from safetensors.torch import load_file, save_file

from polarpack.errors import ModelError
from polarpack.format import load, save
from polarpack.models import build_model, conv_layers
from polarpack.sources.extraction import extract
from polarpack.training.config import TrainConfig
from polarpack.training.loop import train
from polarpack.training.methods import initialise, normalisation_tensors


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A MobileNetV2 whose weights and BatchNorm statistics are not the defaults, saved as a
    checkpoint, and its scaled + norms .polar."""
    torch.manual_seed(7)
    model = build_model("mobilenet_v2", num_classes=1000)
    with torch.no_grad():
        for tensor in normalisation_tensors(model).values():
            tensor.copy_(torch.rand_like(tensor) + 0.5)
    folder = tmp_path_factory.mktemp("mnv2")
    path = folder / "mnv2.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    polar = save(extract(path, granularity="scaled", norms=True), folder / "s.polar.safetensors")
    return path, polar


def _start(config: TrainConfig):
    model = build_model(config.model, num_classes=10)
    return model, initialise(model, config)


def test_the_one_bit_checkpoint_starts_from_signs_times_channel_scales(checkpoint):
    path, polar = checkpoint
    state = load_file(str(path))
    config = TrainConfig(method="freeze-in", model="mobilenet_v2", weights=str(polar), **TINY)
    model, start = _start(config)
    for name, module in conv_layers(model):
        w = state[f"{name}.weight"]
        scale = w.abs().flatten(1).mean(1).view(-1, *[1] * (w.dim() - 1))
        assert torch.allclose(module.weight, torch.sign(w) * scale, rtol=1e-6, atol=0), name
        assert torch.equal(start.targets[name], torch.sign(w).to(torch.int8)), name


@pytest.mark.parametrize("method", ["freeze-in", "fluid-in-polarity"])
@pytest.mark.parametrize("granularity", ["layer", "channel"])
def test_a_method_that_transfers_signs_refuses_a_file_of_proportions(
    tmp_path, checkpoint, method, granularity
):
    """A layer or channel file would give a random pattern: Freeze SPIN under another name."""
    polar = save(extract(checkpoint[0], granularity=granularity), tmp_path / "d.polar")
    config = TrainConfig(method=method, model="mobilenet_v2", weights=str(polar), **TINY)
    with pytest.raises(ModelError, match=f"a {granularity} distribution holds proportions, not"):
        _start(config)


@pytest.mark.parametrize("weights", ["checkpoint", "pattern"])
def test_fluid_in_polarity_starts_as_freeze_in_and_trains_free(tmp_path, checkpoint, weights):
    path, _ = checkpoint
    source = (
        path
        if weights == "checkpoint"
        else save(extract(path, granularity="pattern"), tmp_path / "p.polar.safetensors")
    )
    runs = {}
    for method in ("freeze-in", "fluid-in-polarity"):
        config = TrainConfig(
            method=method,
            model="mobilenet_v2",
            weights=str(source),
            epochs=1,
            save_init=True,
            **TINY,
        )
        runs[method] = train(config, out=tmp_path / method, progress=False)
    inits = [load_file(str(tmp_path / m / "init.safetensors")) for m in runs]
    assert inits[0].keys() == inits[1].keys()
    assert all(torch.equal(inits[0][k], inits[1][k]) for k in inits[0])
    free = runs["fluid-in-polarity"].model
    flipped = sum(
        int((torch.sign(m.weight) * inits[1][f"{n}.polarity"] < 0).sum())
        for n, m in conv_layers(free)
    )
    assert flipped > 0  # no constraint: some weights crossed zero
    assert runs["freeze-in"].metrics[0]["projection_resets"] > 0
    assert runs["fluid-in-polarity"].metrics[0]["projection_resets"] == 0


@pytest.mark.parametrize("source", ["checkpoint", "polar"])
def test_batchnorm_is_transferred_from_a_checkpoint_or_a_polar_file(checkpoint, source):
    path, polar = checkpoint
    state = load_file(str(path))
    ref = str(path if source == "checkpoint" else polar)
    model, start = _start(TrainConfig(method="scratch", model="mobilenet_v2", norms=ref, **TINY))
    norms = normalisation_tensors(model)
    assert len(norms) == 4 * sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert all(torch.equal(tensor, state[name]) for name, tensor in norms.items())
    assert sorted(start.report["norms"]) == sorted(norms)
    assert load(polar).norms.keys() == norms.keys()


def test_norms_from_a_file_without_them_or_another_network_are_refused(tmp_path, checkpoint):
    _, polar = checkpoint
    plain = save(extract(checkpoint[0]), tmp_path / "layer.polar")
    with pytest.raises(ModelError, match="carries no normalisation tensors"):
        _start(TrainConfig(method="scratch", model="mobilenet_v2", norms=str(plain), **TINY))
    with pytest.raises(ModelError, match="normalisation tensors, e.g."):
        _start(TrainConfig(method="scratch", model="resnet18", norms=str(polar), **TINY))


# -- the registry --------------------------------------------------------------------------------


SOURCES = {"dist": "paper:alexnet", "weights": "alexnet.safetensors"}


def test_the_registry_is_the_train_commands_method_choices_and_help():
    from click.testing import CliRunner
    from polarpack_cli.main import cli
    from polarpack_cli.train import train as train_command

    from polarpack.training.methods import METHODS

    option = next(p for p in train_command.params if p.name == "method")
    assert tuple(option.type.choices) == tuple(METHODS)
    usage = CliRunner().invoke(cli, ["train", "--method", "no-such-method"])
    assert usage.exit_code == 2
    assert all(name in usage.output for name in METHODS)
    shown = "".join(CliRunner().invoke(cli, ["train", "--help"]).output.split())
    for method in METHODS.values():  # compared without the spaces the help's wrapping moves
        assert "".join(f"{method.name}: {method.help}".split()) in shown


def test_validation_asks_each_method_for_what_its_entry_says_it_starts_from():
    from polarpack.errors import ConfigError
    from polarpack.training.methods import METHODS

    for method in METHODS.values():
        if method.source is None:
            TrainConfig(method=method.name).validate()
            continue
        with pytest.raises(ConfigError, match=f"--method {method.name} needs"):
            TrainConfig(method=method.name).validate()
        TrainConfig(method=method.name, **{method.source: SOURCES[method.source]}).validate()
    with pytest.raises(
        ConfigError, match="choose one of " + str(list(METHODS)).replace("[", r"\[")
    ):
        TrainConfig(method="no-such-method").validate()


def test_a_float_weights_method_refuses_a_distribution_and_names_the_sign_methods():
    from polarpack.errors import ConfigError
    from polarpack.training.methods import METHODS, SIGNS, WEIGHTS

    for method in (m for m in METHODS.values() if m.start == WEIGHTS):
        with pytest.raises(ConfigError, match="is a distribution") as caught:
            TrainConfig(method=method.name, weights="paper:alexnet").validate()
        signs = [m.name for m in METHODS.values() if m.start == SIGNS]
        assert signs and all(name in str(caught.value) for name in signs)


def test_grid_cells_drop_exactly_the_options_a_method_does_not_use(tmp_path):
    from polarpack.experiments.grid import defaults, load_experiment
    from polarpack.training.methods import METHOD_OPTIONS, METHODS

    changed = {
        "dist": "paper:rand",
        "weights": "hf://owner/repo/w.safetensors",
        "zeros": "free",
        "eps": 0.01,
        "sampling": "iid",
        "fluid_fraction": 0.25,
        "fluid_mode": "permute",
    }
    assert set(changed) == set(METHOD_OPTIONS)
    options = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in changed.items())
    path = tmp_path / "g.toml"
    path.write_text(f'[defaults]\ndevice = "cpu"\n{options}[grid]\nmethod = {list(METHODS)}\n')
    cells = {c.config.method: c.config for c in load_experiment(path).cells}
    assert set(cells) == set(METHODS)
    for name, config in cells.items():
        for option, value in changed.items():
            expected = value if METHODS[name].uses(option) else defaults()[option]
            assert getattr(config, option) == expected, (name, option)


def test_the_training_loop_constrains_and_changes_what_the_registry_says(tmp_path):
    from polarpack.training.methods import METHODS

    for method in ("fluid-spin", "scratch"):
        result = train(
            method=method,
            dist="paper:alexnet",
            epochs=2,
            out=tmp_path / method,
            progress=False,
            **TINY,
        )
        spec = METHODS[method]
        assert ("held" in result.metrics[0]) is spec.constrained
        assert (result.metrics[1]["fluid_flips"] > 0) is spec.fluid
