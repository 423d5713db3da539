"""The package's import layers, read from the source (every ``import`` statement of every module of nnunet_hpn/,
those inside functions included), nothing imported.

Layers, lowest first; a module imports modules of its own group or of a lower layer, never of a group beside it or
above it:

0. base: the package root, ``errors``, ``version``, ``phases``, ``labels``, ``processes``, ``budget``;
1. ``model/`` (with the root's ``hyper_connections``, which only re-exports the networks for old checkpoints),
   ``io/``, ``augment/``, ``measures`` (four groups that do not import each other);
2. ``nnunet/`` (planner, trainers, start-up hook, model folder) and the phantoms (``phantom``, ``phantom_liver``);
3. ``pipeline/``;
4. ``evaluate/``;
5. the commands: ``cli``, ``cli_options``, ``demo``.

Besides, no import circle between modules; ``model/`` imports only torch and dynamic_network_architectures from
outside the package (and, as it does today, the standard library and numpy); ``io/`` does not import the package
root (it imports what it needs from the base modules that define it).
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = "nnunet_hpn"
PACKAGE_DIR = Path(__file__).resolve().parents[1] / PACKAGE

#: group -> layer; a module may import its own group and every group of a lower layer
LAYERS: dict[str, int] = {"base": 0, "model": 1, "io": 1, "augment": 1, "measures": 1, "nnunet": 2, "phantom": 2,
                          "pipeline": 3, "evaluate": 4, "commands": 5}
#: modules at the package's top level -> group (sub-packages are their own group)
TOP_LEVEL_GROUPS: dict[str, str] = {
    PACKAGE: "base", "errors": "base", "version": "base", "phases": "base", "labels": "base", "processes": "base",
    "budget": "base", "hyper_connections": "model", "measures": "measures", "phantom": "phantom",
    "phantom_liver": "phantom", "cli": "commands", "cli_options": "commands", "demo": "commands"}
#: what model/ may import from outside the package besides the standard library
MODEL_THIRD_PARTY: frozenset[str] = frozenset({"torch", "dynamic_network_architectures", "numpy"})


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    """Module name -> source file, for every module of the package."""
    return {_module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> tuple[set[str], set[str]]:
    """(the package's modules ``name`` imports, the top-level names of the other packages it imports), from every
    import statement of the file. ``from a import b`` counts as importing ``a.b`` when that is a module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    internal, external = set(), set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] != PACKAGE:
                external.add(target.split(".")[0])
                continue
            while target not in modules:  # ``import nnunet_hpn.x.y`` of a name inside a module
                target = target.rpartition(".")[0]
            if target != name:
                internal.add(target)
    return internal, external


@pytest.fixture(scope="module")
def graph() -> dict[str, tuple[set[str], set[str]]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _group(name: str) -> str:
    parts = name.split(".")
    if len(parts) == 1:
        return TOP_LEVEL_GROUPS[PACKAGE]
    if (PACKAGE_DIR / parts[1]).is_dir():
        return parts[1]
    return TOP_LEVEL_GROUPS.get(parts[1], "unplaced")


def test_every_module_has_a_layer(graph) -> None:
    unplaced = sorted(name for name in graph if _group(name) not in LAYERS)
    assert not unplaced, f"modules outside every layer (add them to the test's LAYERS): {unplaced}"


def test_no_import_circle(graph) -> None:
    """Depth-first search for a back edge; the circle found is named module by module."""
    state: dict[str, str] = {}
    stack: list[str] = []
    circles: list[str] = []

    def visit(name: str) -> None:
        state[name] = "open"
        stack.append(name)
        for target in sorted(graph[name][0]):
            if state.get(target) == "open":
                circles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target)
        stack.pop()
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name)
    assert not circles, "import circles:\n" + "\n".join(circles)


def _violations(graph, importers: str | None = None) -> list[str]:
    """Every import of a group beside or above the importer's (only of modules of group ``importers`` if given)."""
    found = []
    for name, (internal, _) in sorted(graph.items()):
        group = _group(name)
        if importers is not None and group != importers:
            continue
        for target in sorted(internal):
            target_group = _group(target)
            if target_group != group and LAYERS[target_group] >= LAYERS[group]:
                found.append(f"{name} ({group}) imports {target} ({target_group})")
    return found


def test_model_imports_only_torch_and_dynamic_network_architectures(graph) -> None:
    found = []
    for name, (internal, external) in sorted(graph.items()):
        if _group(name) != "model":
            continue
        found += [f"{name} imports {target}" for target in sorted(internal) if _group(target) != "model"]
        found += [f"{name} imports {package}" for package in sorted(external)
                  if package not in MODEL_THIRD_PARTY and package not in sys.stdlib_module_names]
    assert not found, "\n".join(found)


def test_io_imports_nothing_above_it(graph) -> None:
    violations = _violations(graph, "io")
    assert not violations, "\n".join(violations)


def test_io_does_not_import_the_package_root(graph) -> None:
    found = [name for name, (internal, _) in sorted(graph.items()) if _group(name) == "io" and PACKAGE in internal]
    assert not found, f"io modules importing the package root: {found}"


def test_nnunet_imports_nothing_from_pipeline(graph) -> None:
    found = [f"{name} imports {target}" for name, (internal, _) in sorted(graph.items()) if _group(name) == "nnunet"
             for target in sorted(internal) if _group(target) == "pipeline"]
    assert not found, "\n".join(found)


def test_every_import_points_down_the_layers(graph) -> None:
    violations = _violations(graph)
    assert not violations, "\n".join(violations)
