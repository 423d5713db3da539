"""The layout of one case folder: which entry holds each phase and which hold labels, and where the registration QC
goes. One rule for ``convert``, ``predict`` (folder mode), ``uncrop`` and the phantom cases.

In a case folder ``<case>/`` (hidden entries, names starting with ".", are ignored):

* phase ``P``: the image file ``P.nii.gz`` or ``P.nii`` (or another ending of :data:`PHASE_FILE_ENDINGS`; an
  ``.mhd`` header may have its ``P.raw`` / ``P.zraw`` data file beside it) or, where the command reads DICOM, a
  DICOM series folder ``P/``. Two entries for one phase (``venous.nii.gz`` and ``venous.nii``, or a file and a
  folder) are an error naming both: one of them would otherwise be ignored silently;
* the label on the reference phase's grid: ``label.nii.gz`` / ``label.nii``; a label on phase ``P``'s own grid
  (registration QC): ``label_P.nii.gz`` / ``label_P.nii``; two files for one label are an error too;
* anything else is an unexpected file (an error naming it: a misnamed phase is more often a mistake than
  something to ignore).

A command that registers phases writes one QC record per case into :data:`QC_FOLDER` of its output (the converted
dataset, predict's output folder).

:func:`read_case_layout` applies the rule to one folder and returns a :class:`CaseInputs`; :func:`split_image_name`
is the rule for one name (``"venous.nii.gz"`` -> ``("venous", ".nii.gz")``). Another layout of a case (e.g. a DICOM
study folder whose series are identified by their headers) returns the same :class:`CaseInputs`, so that the
commands after it need not know how the phases were found. How strict a command is stays a parameter of
:func:`read_case_layout`: ``convert`` reads image files only, ``predict`` DICOM folders too (and leaves the
labels unused).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from nnunet_hpn.errors import HPNInputError
from nnunet_hpn.io.images import IMAGE_FILE_ENDINGS

#: File endings of a phase image (the first match wins, so ``.nii.gz`` before ``.nii``).
PHASE_FILE_ENDINGS: tuple[str, ...] = IMAGE_FILE_ENDINGS
#: File endings of a label map.
LABEL_FILE_ENDINGS: tuple[str, ...] = (".nii.gz", ".nii")
#: Stem of the label on the reference phase's grid; ``label_<phase>`` is a label on that phase's grid.
LABEL_STEM = "label"
#: Data files an ``.mhd`` header points to (``<stem>.raw`` / ``<stem>.zraw`` beside it).
MHD_DATA_ENDINGS: tuple[str, ...] = (".raw", ".zraw")
#: Folder of the per-case registration QC (``<case>.json``, and ``summary.json`` in a converted dataset) inside the
#: output of a command that registers phases.
QC_FOLDER = "registration_qc"


def split_image_name(name: str, endings: Sequence[str] = PHASE_FILE_ENDINGS) -> tuple[str, str] | None:
    """``(stem, ending)`` of an image file name with one of ``endings`` (``"venous.nii"`` -> ``("venous",
    ".nii")``), or None."""
    for ending in endings:
        if name.endswith(ending) and len(name) > len(ending):
            return name[: -len(ending)], ending
    return None


def label_file_name(phase: str | None = None, ending: str = LABEL_FILE_ENDINGS[0]) -> str:
    """File name of a case's label: on the reference grid (``label.nii.gz``) or, given ``phase``, on that phase's own
    grid (``label_<phase>.nii.gz``)."""
    return f"{LABEL_STEM if phase is None else f'{LABEL_STEM}_{phase}'}{ending}"


def phase_images(case_dir: Path, ending: str) -> list[Path]:
    """The image files ending in ``ending`` of a case folder whose phase names are not known, labels and hidden
    entries left out, in name order."""
    images = []
    for entry in sorted(Path(case_dir).iterdir()):
        parts = split_image_name(entry.name, (ending,))
        if entry.is_file() and not entry.name.startswith(".") and parts is not None \
                and not parts[0].startswith(LABEL_STEM):
            images.append(entry)
    return images


@dataclass(frozen=True)
class CaseInputs:
    """What one case folder holds: ``phases`` (phase -> image file or DICOM series folder, in the order asked for;
    absent phases left out), ``label`` (on the reference grid) and ``phase_labels`` (phase -> label on that
    phase's own grid)."""

    folder: Path
    phases: dict[str, Path]
    label: Path | None = None
    phase_labels: dict[str, Path] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The case's name (its folder's name)."""
        return self.folder.name

    def missing(self, phases: Sequence[str]) -> list[str]:
        """Those of ``phases`` the case lacks."""
        return [phase for phase in phases if phase not in self.phases]


def _expected(phases: Sequence[str], dicom_folders: bool, labels: bool) -> str:
    """The accepted names, for an unexpected-file message."""
    folders = " or a <phase>/ DICOM folder" if dicom_folders else ""
    label_text = ", label.nii.gz, label_<phase>.nii.gz" if labels else ""
    return f"phases {', '.join(phases)} as <phase>.nii.gz or <phase>.nii{folders}{label_text}"


def read_case_layout(case_dir: Path, phases: Sequence[str], *, dicom_folders: bool = True, labels: bool = True,
                     require: str = "all", hint: str = "") -> CaseInputs:
    """The inputs of ``case_dir`` under the rule of this module, for the phase names ``phases``.

    ``dicom_folders``: a ``<phase>/`` folder is a phase (a DICOM series) — else it is an unexpected entry;
    ``labels``: ``label*`` files are the case's labels — else unexpected; ``require``: "all" (every phase must be
    present), "any" (at least one) or "none". Every problem is an HPNInputError naming the entry (``hint`` is
    appended to an unexpected-file message, e.g. the option that sets the phase names).
    """
    case_dir = Path(case_dir)
    if not case_dir.is_dir():
        raise HPNInputError(f"{case_dir}: case folder does not exist")
    wanted = list(phases)
    found: dict[str, list[Path]] = {}
    label_files: dict[str | None, list[Path]] = {}
    mhd_data: list[Path] = []
    unexpected: list[Path] = []
    for entry in sorted(case_dir.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            if dicom_folders and entry.name in wanted:
                found.setdefault(entry.name, []).append(entry)
            else:
                unexpected.append(entry)
            continue
        image = split_image_name(entry.name)
        label = split_image_name(entry.name, LABEL_FILE_ENDINGS)
        if image is not None and image[0] in wanted:
            found.setdefault(image[0], []).append(entry)
        elif labels and label is not None and label[0] == LABEL_STEM:
            label_files.setdefault(None, []).append(entry)
        elif labels and label is not None and label[0].startswith(LABEL_STEM + "_") \
                and label[0][len(LABEL_STEM) + 1:] in wanted:
            label_files.setdefault(label[0][len(LABEL_STEM) + 1:], []).append(entry)
        elif split_image_name(entry.name, MHD_DATA_ENDINGS) is not None:
            mhd_data.append(entry)
        else:
            unexpected.append(entry)
    for data in mhd_data:  # <stem>.raw belongs to <stem>.mhd
        stem = split_image_name(data.name, MHD_DATA_ENDINGS)[0]
        if not any(path.name == f"{stem}.mhd" for paths in found.values() for path in paths):
            unexpected.append(data)
    if unexpected:
        first = sorted(unexpected)[0]
        raise HPNInputError(f"{first}: unexpected {'folder' if first.is_dir() else 'file'} in a case folder "
                            f"(expected {_expected(wanted, dicom_folders, labels)}{hint})")
    kinds = [(f"phase {phase}", paths) for phase, paths in found.items()] + \
        [("the label" if phase is None else f"the label of phase {phase}", paths)
         for phase, paths in label_files.items()]
    for kind, paths in kinds:
        if len(paths) > 1:
            raise HPNInputError(f"{paths[1]}: a second file for {kind} beside {paths[0].name}; keep one")
    inputs = CaseInputs(case_dir, {phase: found[phase][0] for phase in wanted if phase in found},
                        label_files[None][0] if None in label_files else None,
                        {phase: paths[0] for phase, paths in label_files.items() if phase is not None})
    if require == "all" and inputs.missing(wanted):
        phase = inputs.missing(wanted)[0]
        raise HPNInputError(f"{case_dir / (phase + '.nii.gz')}: file is missing (phase {phase}: <phase>.nii.gz or "
                            f"<phase>.nii{' or a DICOM folder' if dicom_folders else ''})")
    if require == "any" and not inputs.phases:
        raise HPNInputError(f"{case_dir}: none of the phases ({', '.join(wanted)}) found")
    if require not in ("all", "any", "none"):
        raise ValueError(f"require must be 'all', 'any' or 'none', got {require!r}")
    return inputs
