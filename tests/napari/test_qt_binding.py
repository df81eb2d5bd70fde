"""The plugin stays binding-agnostic: Qt is imported through qtpy, never from a binding directly."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BINDINGS = {"PyQt5", "PyQt6", "PySide2", "PySide6"}


def _direct_binding_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [f"{path.relative_to(ROOT)}:{node.lineno} imports {n}" for n in names
                  if n.split(".")[0] in BINDINGS]
    return found


def test_no_module_imports_a_qt_binding_directly():
    files = [p for folder in ("src", "tests", "benchmarks", "docs/scripts") for p in (ROOT / folder).rglob("*.py")]
    assert files
    offenders = [hit for path in files for hit in _direct_binding_imports(path)]
    assert offenders == [], "import Qt from qtpy instead:\n" + "\n".join(offenders)
