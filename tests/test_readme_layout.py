"""README's "What is inside" layout lists exactly the modules of the package and of scripts/, folder by folder."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILE = re.compile(r"\b[A-Za-z_][A-Za-z0-9_]*\.(?:py|sh)\b")


def _layout_block() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("Layout, one folder per concern:")
    begin = text.index("```\n", start) + 4
    return text[begin: text.index("```", begin)].splitlines()


def _files_by_folder(lines: list[str]) -> dict[str, set[str]]:
    """Folder (relative path) -> the file names its lines list outside parentheses; a line whose first word ends
    in "/" opens a folder at its indentation (two spaces a level), other lines continue the current one."""
    folders: dict[str, set[str]] = {}
    stack: list[tuple[int, str]] = []
    current = None
    for line in lines:
        first = line.split()[0] if line.split() else ""
        if first.endswith("/"):
            indent = len(line) - len(line.lstrip())
            while stack and stack[-1][0] >= indent:
                stack.pop()
            current = "/".join([*(name for _, name in stack), first.rstrip("/")])
            stack.append((indent, first.rstrip("/")))
            line = line.strip()[len(first):]
        folders.setdefault(current, set()).update(FILE.findall(re.sub(r"\([^)]*\)?", "", line)))
    return folders


def test_readme_layout_lists_every_module_of_the_package_and_scripts() -> None:
    listed = _files_by_folder(_layout_block())
    for top in ("nnunet_hpn", "scripts"):
        for folder in [ROOT / top, *sorted(p for p in (ROOT / top).rglob("*") if p.is_dir())]:
            if folder.name == "__pycache__":
                continue
            actual = {p.name for p in folder.iterdir() if p.suffix in (".py", ".sh") and p.name != "__init__.py"}
            if not actual:
                continue
            key = folder.relative_to(ROOT).as_posix()
            assert listed.get(key, set()) == actual, f"README layout of {key}/: {sorted(listed.get(key, set()))} " \
                                                     f"but the folder holds {sorted(actual)}"
