"""The fold archive of the resumable studies: every finished training is copied into ``--docs`` and, optionally,
committed, so that a run longer than one session continues on another machine; the archive is tied to its data
(label hash, split) and a run on other data stops with one error line."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional


class ArchiveMismatch(RuntimeError):
    """The archive in --docs belongs to other data or another split."""


def labels_digest(labels: Path) -> str:
    """sha256 over the names and bytes of the label maps, in name order."""
    digest = hashlib.sha256()
    for path in sorted(labels.glob("*.nii.gz")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def check_or_record(archive: Path, name: str, value: object) -> None:
    """Record ``value`` as ``archive/name`` (JSON) the first time; afterwards it must be equal."""
    path = archive / name
    if path.is_file():
        recorded = json.loads(path.read_text())
        if recorded != value:
            raise ArchiveMismatch(f"{path}: the archive was made with other {name.split('.')[0]} than "
                                  f"{archive.parent} now has; use another --docs folder")
        return
    archive.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n")


def fold_archive(archive: Path, row: str, fold: int, seed: Optional[int] = None) -> Path:
    """``<row>/fold_<k>`` (one seed), or ``<row>/seed_<s>/fold_<k>``."""
    return archive / row / ("" if seed is None else f"seed_{seed}") / f"fold_{fold}"


def is_archived(archive: Path, row: str, fold: int, seed: Optional[int] = None) -> bool:
    return (fold_archive(archive, row, fold, seed) / "fold.json").is_file()


def git_commit(docs: Path, message: str) -> None:
    """Commit ``docs`` only (other staged or unstaged changes stay as they are); a failure is printed, not fatal."""
    try:
        subprocess.run(["git", "add", "--", str(docs)], cwd=docs, check=True)
        subprocess.run(["git", "commit", "-q", "-m", message, "--", str(docs)], cwd=docs, check=True)
    except (subprocess.CalledProcessError, OSError) as error:
        print(f"{Path(sys.argv[0]).stem}: git commit of {docs} failed ({error}); commit it by hand", file=sys.stderr)


def run_resumably(script: str, body: Callable[[], int]) -> int:
    """``body()``'s exit status; an archive of other data, or a stock command that failed, is one error line
    (prefixed ``script:``) and exit status 1 (re-running the same command resumes)."""
    try:
        return body()
    except ArchiveMismatch as error:
        print(f"{script}: error: {error}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as error:
        print(f"{script}: {' '.join(map(str, error.cmd[:3]))} … failed (exit {error.returncode}); "
              f"re-run to resume", file=sys.stderr)
        return 1
