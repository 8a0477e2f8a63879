"""Fixtures shared by the test modules. Keep each one small, with a docstring saying why."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
# The smallest real training run: the embedded Fashion-MNIST subset, two steps an epoch.
TINY = dict(dataset="fashion-mnist-mini", train_size=200, val_size=100, batch_size=100, threads=1)
TINY_ARGS = [
    "--dataset",
    "fashion-mnist-mini",
    "--train-size",
    "200",
    "--val-size",
    "100",
    "--batch-size",
    "100",
    "--threads",
    "1",
    "--quiet",
]


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The real data described in ../shared/data/README.md ($POLARPACK_SHARED_DATA overrides)."""
    path = Path(os.environ.get("POLARPACK_SHARED_DATA") or REPO.parent / "shared" / "data")
    if not path.is_dir():
        pytest.skip(
            f"real data not found at {path}; set POLARPACK_SHARED_DATA to the shared data folder"
        )
    return path


@pytest.fixture(scope="session")
def polar_schema_validator():
    """Validates a JSON object against the shipped schema: every file the project writes must
    pass."""
    import jsonschema

    from polarpack.format import json_schema

    return jsonschema.Draft202012Validator(json_schema())


@pytest.fixture(scope="session")
def alexnet_weights(tmp_path_factory) -> Path:
    """A stand-in 'pretrained' AlexNet checkpoint (no ImageNet AlexNet is available here)."""
    from safetensors.torch import save_file

    from polarpack.models import build_model

    torch.manual_seed(123)
    model = build_model("alexnet", num_classes=1000)
    path = tmp_path_factory.mktemp("weights") / "alexnet.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture
def hub_env(tmp_path, monkeypatch):
    """Isolate every place huggingface_hub reads or writes user state, and keep it on loopback."""
    from huggingface_hub import constants as hf_constants

    for var in (
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_ENDPOINT",
        "HF_OIDC_RESOURCE",
        "POLARPACK_MAX_POLAR_BYTES",
        "POLARPACK_HUB_TIMEOUT",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "hf_home" / "token"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    # With telemetry on, the client's user-agent builder fetches an "agent harness" registry from
    # https://huggingface.co once per process, whatever the endpoint.
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_TELEMETRY", True)
    return tmp_path


@pytest.fixture
def hub(hub_env):
    """A fake Hugging Face Hub on loopback that the real huggingface_hub client talks to."""
    from hub_server import FakeHub

    with FakeHub() as server:
        yield server


@pytest.fixture
def cli_error():
    """Run the CLI and check it failed cleanly: our errors are one `Error:` line (exit 1), click's
    usage errors end with one (exit 2); no traceback; the error line holds every needle."""
    from polarpack_cli.main import cli

    def run(args: list[str], *needles: str, code: int = 1) -> str:
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == code, (args, result.output, result.exception)
        lines = result.output.strip().splitlines()
        assert lines[-1].startswith("Error: ") and "Traceback" not in result.output, result.output
        assert code != 1 or len(lines) == 1, result.output
        for needle in needles:
            assert needle in lines[-1], (needle, lines[-1])
        return lines[-1]

    return run


@pytest.fixture
def ctrl_c():
    """SIGINT raises KeyboardInterrupt here, and a child process started meanwhile gets the default
    action, as under an interactive shell. A shell starts a background job (`pytest &`) with SIGINT
    ignored, which a child inherits; the tests that press Ctrl-C must not depend on that."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)
