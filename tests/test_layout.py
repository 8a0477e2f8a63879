"""The shape of the code base: functions a reader can hold, no import cycles between the library's
modules, a library that never imports the CLI, and every module importable under its own name
(no function hides the module it comes from). Formatting and lint are ruff's job (.ci/run)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY, CLI = sorted((ROOT / "polarpack").glob("*.py")), sorted((ROOT / "cli").glob("*.py"))


@pytest.mark.parametrize("path", LIBRARY + CLI, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_functions_stay_short(path):
    tree = ast.parse(path.read_text())
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    assert [f.name for f in functions if f.end_lineno - f.lineno + 1 > 80] == []


def _imports(path: Path) -> set[str]:
    """The polarpack modules `path` imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("polarpack."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("polarpack.")}
    return found - {path.stem}


def test_no_import_cycles_and_no_cli_in_the_library():
    graph = {p.stem: _imports(p) for p in LIBRARY}

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        return any(
            n == target or (n not in seen and reaches(n, target, seen | {n}))
            for n in graph.get(start, ())
        )

    assert [m for m in graph if reaches(m, m, {m})] == []
    library = [p for p in LIBRARY if p.name != "__main__.py"]  # `python -m polarpack` runs the CLI
    assert not any(
        "polarpack_cli" in p.read_text() or "import click" in p.read_text() for p in library
    )


@pytest.mark.parametrize(
    "name", [p.stem for p in LIBRARY if p.stem not in ("__init__", "__main__")]
)
def test_every_module_is_a_module(name):
    import polarpack

    module = importlib.import_module(f"polarpack.{name}")
    assert getattr(polarpack, name, module) is module, f"polarpack.{name} is hidden by a function"
