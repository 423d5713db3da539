"""The contrast phases of a case: what every part of nnunet-hpn agrees on.

* the default phase names in channel order (:data:`PHASES`: ``_0000`` arterial, ``_0001`` venous); any K >= 2
  phases work, in the order of dataset.json's ``channel_names``;
* the **reference phase** (:func:`reference_phase`): the grid of the label, of the registered phases and of the
  prediction: the one asked for, else "arterial" when it is among the phases, else the first (``convert`` stores the
  one it used in dataset.json; :func:`nnunet_hpn.labels.dataset_reference_phase` reads it back for every later step);
* the channel names of an nnU-Net dataset.json (:func:`channel_names`, :func:`read_channel_names`) and the channel
  file names (:func:`channel_file_name`);
* the paper's HU window (:data:`HU_WINDOW`, §3.2: normalization, registration and figures);
* the value of a missing phase at prediction and of a dropped phase in training (:data:`FILL_POLICIES`).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Mapping, Optional, Sequence

from nnunet_hpn.errors import HPNInputError

#: Channel order of an HPN dataset by default: ``_0000`` arterial, ``_0001`` venous.
PHASES: tuple[str, ...] = ("arterial", "venous")
#: The reference phase whenever it is among the phases and no other one is asked for.
PREFERRED_REFERENCE = "arterial"
#: Intensity window of the paper (§3.2), in HU.
HU_WINDOW: tuple[float, float] = (-100.0, 240.0)
#: Fill policies (name -> value of a missing or dropped channel after normalization): a missing phase is a constant
#: image, which HPN's per-case z-scoring maps to exactly 0 (nnunet_hpn.pipeline.missing_phase).
FILL_POLICIES: dict[str, float] = {"zero": 0.0}
DEFAULT_FILL_POLICY = "zero"


def check_fill_policy(policy: str) -> None:
    """ValueError for a policy not in :data:`FILL_POLICIES`."""
    if policy not in FILL_POLICIES:
        raise ValueError(f"unknown missing-phase policy {policy!r}; known: {sorted(FILL_POLICIES)}")


def reference_phase(phases: Sequence[str], requested: Optional[str] = None, where: str = "phases") -> str:
    """``requested`` (which must be one of ``phases``), else "arterial" if among ``phases``, else the first.

    ``where`` names the source of the phases in the error (HPNInputError) for an unknown ``requested`` or no phase.
    """
    phases = list(phases)
    if not phases:
        raise HPNInputError(f"{where}: no phase")
    if requested is not None:
        if requested not in phases:
            raise HPNInputError(f"{where}: reference phase {requested!r} is not one of the phases {phases}")
        return requested
    return PREFERRED_REFERENCE if PREFERRED_REFERENCE in phases else phases[0]


def channel_names(dataset_json: Mapping) -> list[str]:
    """dataset.json ``channel_names`` values in channel order (keys "0", "1", ... sorted as integers)."""
    channels = dataset_json["channel_names"]
    return [channels[key] for key in sorted(channels, key=int)]


def read_channel_names(dataset_json_path: Path) -> list[str]:
    """:func:`channel_names` of a dataset.json file; HPNInputError naming the file if it is missing or unreadable."""
    path = Path(dataset_json_path)
    if not path.is_file():
        raise HPNInputError(f"{path}: missing")
    try:
        return channel_names(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise HPNInputError(f"{path}: no readable channel_names") from None


def channel_file_name(case: str, channel: int, file_ending: str = ".nii.gz") -> str:
    """nnU-Net's image file name of one channel: ``<case>_<channel:04d><file_ending>``."""
    return f"{case}_{channel:04d}{file_ending}"


def channel_files(images_dir: Path, n_channels: int, file_ending: str = ".nii.gz") -> dict[str, list[Path]]:
    """case id -> its channel files ``<case>_0000<ending>`` ... in channel order, for every case in ``images_dir``;
    HPNInputError when there is none or a case lacks a channel of 0 .. n_channels - 1 (or has another)."""
    pattern = re.compile(rf"^(.+)_(\d{{4}}){re.escape(file_ending)}$")
    found: dict[str, dict[int, Path]] = {}
    for path in sorted(images_dir.iterdir()):
        match = pattern.match(path.name)
        if match:
            found.setdefault(match.group(1), {})[int(match.group(2))] = path
    if not found:
        raise HPNInputError(f"{images_dir}: no nnU-Net image files <case>_0000{file_ending}")
    cases = {}
    for case, by_channel in found.items():
        if sorted(by_channel) != list(range(n_channels)):
            raise HPNInputError(f"{images_dir}: case {case} has channels {sorted(by_channel)}, expected "
                                f"0..{n_channels - 1}")
        cases[case] = [by_channel[c] for c in range(n_channels)]
    return cases
