"""No script in scripts/ imports another (README's layout: what scripts share lives in scripts/hpn_experiments/).
The package's own import rules and circles are tests/test_layers.py's."""
import ast
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _imported_top_names(path: Path) -> set[str]:
    """First component of every module imported anywhere in ``path`` (inside functions too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_scripts_import_no_other_script() -> None:
    scripts = {path.stem for path in SCRIPTS.glob("*.py")}
    assert {"cpu_table1", "run_ablation"} <= scripts
    for path in sorted(SCRIPTS.glob("*.py")):
        others = _imported_top_names(path) & (scripts - {path.stem})
        assert not others, f"{path.name} imports {sorted(others)}"
