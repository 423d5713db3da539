"""nnunet_hpn.io.publish.published_folder: the three ways a built folder is published, and nothing published or
left behind when the block fails."""
from pathlib import Path

import pytest

from nnunet_hpn.io.publish import published_folder


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
