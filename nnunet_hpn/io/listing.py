"""The cases of a folder: files ``<case><file_ending>`` (label maps, predictions) and case sub-folders."""
from __future__ import annotations

from pathlib import Path

from nnunet_hpn.errors import HPNInputError


def case_files(folder: Path, file_ending: str, what: str, required: bool = True) -> dict[str, Path]:
    """Case name -> file, for every file in ``folder`` whose name ends in ``file_ending``, in name order.

    HPNInputError naming ``folder`` (``what``: "truth", "prediction", ...) when it does not exist or, if
    ``required``, holds no such file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise HPNInputError(f"{folder}: {what} folder does not exist")
    cases = {path.name[: -len(file_ending)]: path for path in sorted(folder.iterdir())
             if path.is_file() and path.name.endswith(file_ending)}
    if required and not cases:
        raise HPNInputError(f"{folder}: no {what} files ending in {file_ending!r}")
    return cases


def predicted_cases(pred_dir: Path, file_ending: str = ".nii.gz") -> list[str]:
    """Sorted case names of the files in ``pred_dir`` ending in ``file_ending`` (HPNInputError if none)."""
    return list(case_files(pred_dir, file_ending, "prediction"))


def case_folders(folder: Path) -> list[Path]:
    """The case folders of ``folder`` (sub-folders not starting with "."), in name order; HPNInputError naming
    ``folder`` when it does not exist or has none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise HPNInputError(f"{folder}: input folder does not exist")
    cases = sorted(path for path in folder.iterdir() if path.is_dir() and not path.name.startswith("."))
    if not cases:
        raise HPNInputError(f"{folder}: no case folders found")
    return cases
