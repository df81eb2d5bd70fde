"""The layers of docs/architecture.md, checked on the source: no upward import, no sibling method
imported by another, nothing outside cli/ importing the command line, and no import cycle.

Every ``import`` statement counts, also those inside functions (a lazy import is still a dependency),
except those under ``if TYPE_CHECKING:`` (annotations only, never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"

# lowest first; a module may import its own layer and the layers below, never above
LAYERS = (
    ("errors",),
    ("io",),
    ("image",),
    ("metrics", "nodules", "reports", "edits"),
    ("data",),
    ("training",),
    ("foundation",),  # pretrained models (LiteMedSAM): used by the methods, never the other way round
    ("nam", "flow", "pw4medseg", "baselines"),  # the methods: siblings never import each other
    ("segmentation",),
    ("shipped",),  # the models shipped in the package, loaded through segmentation's front door
    ("evaluation",),
    ("demo",),
    ("cli",),
)
METHODS = set(LAYERS[7])
LAYER_OF = {room: i for i, rooms in enumerate(LAYERS) for room in rooms}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The project modules ``path`` imports (``from pkg import sub`` names the submodule)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            submodules = {f"{target}.{alias.name}" for alias in node.names} & modules
            found.update(submodules)
            if len(submodules) < len(node.names):  # names from the module itself, not only its submodules
                found.add(target)
    return {m for m in found if m in modules and m != name}


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` outside ``if TYPE_CHECKING:`` blocks."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            test = child.test if isinstance(child, ast.If) else None
            if test is not None and "TYPE_CHECKING" in ast.unparse(test):
                todo.extend(child.orelse)
                continue
            todo.append(child)


def project_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in SRC.rglob("*.py")}
    modules = set(paths)
    return {name: imports_of(path, modules) for name, path in paths.items()}


def room(module: str) -> str | None:
    """``wsnodule_core.nam.pipeline`` -> ``nam``; the package root itself -> None."""
    parts = module.split(".")
    return parts[1] if parts[0] == "wsnodule_core" and len(parts) > 1 else None


def test_every_room_has_a_layer():
    rooms = {room(m) for m in project_graph() if m.startswith("wsnodule_core.")}
    assert rooms <= set(LAYER_OF), (
        f"rooms missing from LAYERS (and docs/architecture.md): {rooms - set(LAYER_OF)}"
    )


def test_no_upward_or_sibling_imports():
    wrong = []
    for module, targets in project_graph().items():
        if not module.startswith("wsnodule_core."):
            continue
        here = room(module)
        for target in targets:
            there = room(target)
            if there is None or there == here:
                continue
            if LAYER_OF[there] > LAYER_OF[here] or (here in METHODS and there in METHODS):
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the layers:\n" + "\n".join(sorted(wrong))


def test_the_core_never_imports_the_plugin_and_only_cli_imports_cli():
    wrong = [
        f"{m} -> {t}"
        for m, targets in project_graph().items()
        for t in targets
        if (m.startswith("wsnodule_core") and t.startswith("napari_wsnodule"))
        or (t.startswith("wsnodule_core.cli") and not m.startswith("wsnodule_core.cli"))
    ]
    assert not wrong, "\n".join(sorted(wrong))


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles():
    cycle = find_cycle(project_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checker_finds_what_it_should():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert room("wsnodule_core.nam.pipeline") == "nam" and room("wsnodule_core") is None
