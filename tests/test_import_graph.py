"""The package's modules import each other without a circle, and no script imports another (README's layout)."""
import ast
import graphlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, top_level: bool = True) -> list[str]:
    """Modules ``path`` imports (``from a import b``: ``a`` and ``a.b``): with ``top_level``, those imported when it is
    imported (module level, also under ``if``/``try``), not those inside functions, which run later; else all."""
    names = []
    tree = ast.parse(path.read_text(encoding="utf-8"))
    pending = list(tree.body) if top_level else list(ast.walk(tree))
    while pending:
        node = pending.pop()
        if top_level and isinstance(node, (ast.If, ast.Try)):
            pending += [*node.body, *node.orelse, *getattr(node, "finalbody", []),
                        *(item for handler in getattr(node, "handlers", []) for item in handler.body)]
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    return names


def test_package_modules_import_without_a_circle() -> None:
    modules = {_module_name(path): path for path in (ROOT / "nnunet_hpn").rglob("*.py")}
    graph = {name: {imported for imported in _imports(path) if imported in modules and imported != name}
             for name, path in modules.items()}
    assert len(graph) > 50 and sum(map(len, graph.values())) > 50          # the walk found the package's imports
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as error:
        raise AssertionError(f"import circle: {' -> '.join(error.args[1])}") from None


def test_scripts_import_no_other_script() -> None:
    scripts = {path.stem for path in (ROOT / "scripts").glob("*.py")}
    assert {"cpu_table1", "run_ablation"} <= scripts
    for path in (ROOT / "scripts").glob("*.py"):
        imported = {name.split(".")[0] for name in _imports(path, top_level=False)}
        assert not imported & (scripts - {path.stem}), f"{path.name} imports {sorted(imported & scripts)}"
