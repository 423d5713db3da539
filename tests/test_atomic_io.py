"""nnunet_hpn.io.publish: the three ways a built folder is published, nothing published or left behind when the
block fails, stale hidden folders of killed runs removed, one claim per dataset id."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nnunet_hpn.errors import HPNInputError
from nnunet_hpn.io.publish import exclusive_claim, published_folder, remove_stale


def _names(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


def test_new_replace_and_merge(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with published_folder(target, "new") as staging:
        (staging / "a.txt").write_text("1")
        assert not target.exists()  # nothing visible before the block ends
    assert _names(target) == ["a.txt"]

    with published_folder(target, "merge") as staging:
        (staging / "sub").mkdir()
        (staging / "sub" / "b.txt").write_text("2")
        (staging / "a.txt").write_text("new")
    assert _names(target) == ["a.txt", "sub", "sub/b.txt"] and (target / "a.txt").read_text() == "new"

    other = tmp_path / "out_other_name"
    other.mkdir()
    with published_folder(target, "replace", replaces=[other, target]) as staging:
        (staging / "c.txt").write_text("3")
    assert _names(target) == ["c.txt"] and not other.exists()
    assert _names(tmp_path) == ["out", "out/c.txt"]  # no staging or trash folder left


@pytest.mark.parametrize("mode", ["new", "replace", "merge"])
def test_failure_publishes_nothing(tmp_path: Path, mode: str) -> None:
    target = tmp_path / "out"
    target.mkdir()
    if mode != "new":
        (target / "kept.txt").write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with published_folder(target, mode) as staging:
            (staging / "half.txt").write_text("x")
            raise RuntimeError("boom")
    assert _names(tmp_path) == (["out"] if mode == "new" else ["out", "out/kept.txt"])


def test_new_refuses_a_folder_with_files(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "user.txt").write_text("mine")
    with pytest.raises(OSError):
        with published_folder(target, "new") as staging:
            (staging / "a.txt").write_text("1")
    assert _names(tmp_path) == ["out", "out/user.txt"]


def _dead_pid() -> int:
    """The id of a process that has finished."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_stale_staging_of_a_killed_run_is_removed_by_the_next_run(tmp_path: Path) -> None:
    target = tmp_path / "out"
    dead = tmp_path / f".out.staging.{_dead_pid()}.abc"
    dead.mkdir()
    (dead / "half.txt").write_text("x")
    (tmp_path / f".out.tmp.{_dead_pid()}.def.tmp").write_text("x")
    alive = tmp_path / f".out.staging.{os.getpid()}.ghi"  # a run of this process, still going
    alive.mkdir()
    other = tmp_path / f".other.staging.{_dead_pid()}.jkl"  # another output's: not ours to remove
    other.mkdir()
    with published_folder(target, "new") as staging:
        (staging / "a.txt").write_text("1")
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(["out", alive.name, other.name])
    assert remove_stale(tmp_path, "other") == [other]


def test_exclusive_claim(tmp_path: Path) -> None:
    lock = tmp_path / ".Dataset007.lock"
    with exclusive_claim(lock, "dataset id 7"):
        assert lock.read_text() == str(os.getpid())
        with pytest.raises(HPNInputError, match=rf"dataset id 7: being written by process {os.getpid()}"):
            with exclusive_claim(lock, "dataset id 7"):
                pass
    assert not lock.exists()
    lock.write_text(str(_dead_pid()))  # left by a killed run
    with exclusive_claim(lock, "dataset id 7"):
        assert lock.read_text() == str(os.getpid())
    assert not lock.exists()
