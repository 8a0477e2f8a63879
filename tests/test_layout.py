"""The shape of the code base: functions a reader can hold, modules of one idea, a library that
never imports the CLI, stage packages whose imports point down the pipeline (never back up, so no
cycles), and every module importable under its own name (no function hides the module it comes
from). Formatting and lint are ruff's job (.ci/run)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "polarpack"
LIBRARY, CLI = sorted(PACKAGE.rglob("*.py")), sorted((ROOT / "cli").glob("*.py"))
# The pipeline, bottom to top (docs/architecture.md): a module imports from its own stage or a
# lower one. The top-level modules (errors, redact, _io, _version, models) are shared by every
# stage; the package's own __init__ and __main__ sit above all of it.
STAGES = ["shared", "format", "sources", "hub", "training", "experiments", "api"]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stage(module: str) -> str:
    parts = module.split(".")
    if module == "polarpack" or module == "polarpack.__main__":
        return "api"
    return parts[1] if len(parts) > 2 or parts[1] in STAGES else "shared"


def _imports(path: Path) -> set[str]:
    """The polarpack modules `path` imports, at the top or inside functions (absolute imports)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: use absolute imports (from polarpack.x import y)"
            if node.module == "polarpack":  # from polarpack import format as fmt
                found |= {f"polarpack.{a.name}" for a in node.names}
            elif (node.module or "").startswith("polarpack."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("polarpack")}
    return found


@pytest.mark.parametrize("path", LIBRARY + CLI, ids=lambda p: str(p.relative_to(ROOT)))
def test_functions_stay_short(path):
    tree = ast.parse(path.read_text())
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    assert [f.name for f in functions if f.end_lineno - f.lineno + 1 > 80] == []


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_stay_small(path):
    assert len(path.read_text().splitlines()) <= 850, "split the module along its seams"


def test_imports_point_down_the_pipeline_and_no_cli_in_the_library():
    upward = [
        f"{module_name(p)} -> {target}"
        for p in LIBRARY
        for target in _imports(p)
        if STAGES.index(stage(target)) > STAGES.index(stage(module_name(p)))
    ]
    assert upward == []
    library = [p for p in LIBRARY if p.name != "__main__.py"]  # `python -m polarpack` runs the CLI
    assert not any(
        "polarpack_cli" in p.read_text() or "import click" in p.read_text() for p in library
    )


@pytest.mark.parametrize("name", [module_name(p) for p in LIBRARY if p.stem != "__main__"])
def test_every_module_is_a_module(name):
    module = importlib.import_module(name)
    parent, _, leaf = name.rpartition(".")
    if parent:
        owner = importlib.import_module(parent)
        assert getattr(owner, leaf, module) is module, f"{name} is hidden by a function"
