"""timm models: `--model` takes any timm model name that torchvision does not have, and the real
EfficientNet-Lite0 ImageNet checkpoint (timm's tensor names) fine-tunes, extracts and transfers
its signs and BatchNorm like the torchvision models do."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY
from safetensors.torch import load_file

from polarpack.errors import ModelError
from polarpack.models import build_model, conv_layers, head_name, list_models
from polarpack.sources.extraction import extract
from polarpack.training.config import TrainConfig
from polarpack.training.loop import train
from polarpack.training.methods import normalisation_tensors

pytest.importorskip("timm", reason="timm is an optional extra: pip install 'polarpack[timm]'")


@pytest.fixture(scope="module")
def lite0(shared_data_dir):
    path = shared_data_dir / "weights" / "tf_efficientnet_lite0.in1k.safetensors"
    if not path.is_file():
        pytest.skip(f"{path} not found (see ../shared/data/README.md)")
    return path


def test_a_timm_name_builds_the_timm_model_with_the_head_resized():
    model = build_model("tf_efficientnet_lite0", num_classes=10)
    assert type(model).__module__.startswith("timm.")
    assert head_name(model) == "classifier" and model.classifier.out_features == 10
    assert len(conv_layers(model)) == 49
    assert "timm:tf_efficientnet_lite0" in list_models()
    assert type(build_model("mobilenet_v2")).__module__.startswith("torchvision.")  # first


def test_an_unknown_name_suggests_close_ones():
    with pytest.raises(ModelError, match="did you mean tf_efficientnet_lite"):
        build_model("tf_efficientnet_lite9")


def test_fine_tuning_the_real_checkpoint_transfers_every_kernel_and_batchnorm(tmp_path, lite0):
    state = load_file(str(lite0))
    config = TrainConfig(
        method="fluid-in",
        model="tf_efficientnet_lite0",
        weights=str(lite0),
        epochs=1,
        **{**TINY, "train_size": 100, "val_size": 100},
    )
    result = train(config, out=tmp_path, progress=False)
    transferred = set(json.loads((tmp_path / "config.json").read_text())["resolved"]["transferred"])
    model = build_model("tf_efficientnet_lite0", num_classes=10)
    kernels = {f"{name}.weight" for name, _ in conv_layers(model)}
    norms = set(normalisation_tensors(model))
    assert len(kernels) == 49 and len(norms) == 4 * 49
    assert kernels | norms <= transferred
    assert not any(k.startswith("classifier.") for k in transferred)
    assert result.status == "completed" and result.metrics[0]["train_acc"] > 0
    trained = result.model.state_dict()  # one epoch moved the kernels away from the checkpoint
    assert not torch.equal(trained["conv_stem.weight"], state["conv_stem.weight"])


def test_its_signs_and_scales_extract_and_map_onto_the_model_by_name(lite0):
    dist = extract(lite0, granularity="scaled", norms=True, hash_file=False)
    model = build_model("tf_efficientnet_lite0", num_classes=10)
    assert sorted(layer.name for layer in dist.layers) == sorted(n for n, _ in conv_layers(model))
    assert set(dist.norms) == set(normalisation_tensors(model))
