"""Fixtures shared by the test modules. Keep each one small, with a docstring saying why."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The real data described in ../shared/data/README.md ($POLARPACK_SHARED_DATA overrides)."""
    path = Path(os.environ.get("POLARPACK_SHARED_DATA") or REPO.parent / "shared" / "data")
    if not path.is_dir():
        pytest.skip(f"real data not found at {path}; set POLARPACK_SHARED_DATA to the shared data folder")
    return path


@pytest.fixture(scope="session")
def polar_schema_validator():
    """Validates a JSON object against spec/polar.schema.json: every file the project writes must pass."""
    import jsonschema

    from polarpack.format import json_schema

    return jsonschema.Draft202012Validator(json_schema())
