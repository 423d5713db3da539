"""A dataset given as nnU-Net users give it (``501``, ``Dataset501_PancreasDualPhase`` or ``PancreasDualPhase``) ->
its folder name, found in ``$nnUNet_raw``, ``$nnUNet_preprocessed`` and ``$nnUNet_results``; an unknown one is an
error that lists the datasets that exist."""
from __future__ import annotations

import os
import re
from pathlib import Path

from nnunet_hpn.errors import HPNInputError

#: The environment variables of nnU-Net's three folders, in the order they are searched.
NNUNET_FOLDERS: tuple[str, ...] = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
DATASET_FOLDER = re.compile(r"Dataset(\d{3})_(.+)")


def _folder(variable: str) -> str | None:
    """The folder nnU-Net's environment variable ``variable`` names (as ``nnunetv2.paths`` reads it), or None."""
    return os.environ.get(variable) or None


def existing_datasets() -> list[str]:
    """Folder names ``DatasetXXX_Name`` in any of nnU-Net's three folders (those set), sorted."""
    names = set()
    for variable in NNUNET_FOLDERS:
        root = _folder(variable)
        if root and Path(root).is_dir():
            names.update(path.name for path in Path(root).iterdir()
                         if path.is_dir() and DATASET_FOLDER.fullmatch(path.name))
    return sorted(names)


def dataset_name(dataset: str | int, option: str = "-d") -> str:
    """The folder name ``DatasetXXX_Name`` of ``dataset`` (an id, a folder name or the name after ``DatasetXXX_``);
    HPNInputError (naming ``option``) for none or several matches, listing the datasets that exist."""
    text = str(dataset).strip()
    existing = existing_datasets()
    if text.isdigit():
        matches = [name for name in existing if int(DATASET_FOLDER.fullmatch(name).group(1)) == int(text)]
    else:
        matches = [name for name in existing if text in (name, DATASET_FOLDER.fullmatch(name).group(2))]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise HPNInputError(f"{option} {text}: several datasets match ({', '.join(matches)}); give the full name")
    where = ", ".join(f"${variable}" for variable in NNUNET_FOLDERS if _folder(variable))
    if not where:
        raise HPNInputError(f"{option} {text}: none of {', '.join(NNUNET_FOLDERS)} is set")
    known = ", ".join(existing) if existing else "none"
    raise HPNInputError(f"{option} {text}: no such dataset in {where} (datasets there: {known})")
