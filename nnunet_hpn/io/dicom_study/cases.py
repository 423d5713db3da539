"""Study folders as the cases of a dataset.

Each study folder is resolved (:func:`resolve_studies`: its scan, its phases identified or taken from a reviewed
phase map, its Segmentation), then written or linked as an ordinary case folder (:class:`StagedStudies`, for
``convert`` and ``predict``); :func:`review_phase_map` writes the phase map of a set of studies for review.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import SimpleITK as sitk

from nnunet_hpn.errors import HPNInputError
from nnunet_hpn.io.dicom_study.series import Study, is_study_folder, read_candidate, scan_study
from nnunet_hpn.io.dicom_study.phases import PhaseAssignment, identify_phases
from nnunet_hpn.io.dicom_study.phase_map import assignment_from_map, phase_map_rows, phase_map_text, read_phase_map
from nnunet_hpn.io.dicom_study.segmentation import read_segmentation, segmentations_beside, study_segmentation

#: The phase map written beside a converted dataset, and the per-case records (``<case>.json``), in this folder.
STUDY_RECORD_FOLDER = "dicom_study"
PHASE_MAP_FILE = "phase_map.csv"


def dataset_labels() -> dict[str, int]:
    """Label names and values of the paper's scheme (:data:`nnunet_hpn.labels.PDAC_SCHEME`), the default."""
    from nnunet_hpn.labels import PDAC_SCHEME

    return dict(PDAC_SCHEME.labels)


@dataclass
class StudyCase:
    """One study case resolved: its scan, its phase assignment, and its Segmentation (if any)."""

    study: Study
    assignment: PhaseAssignment
    segmentation: Path | None


def resolve_studies(case_dirs: Sequence[Path], phases: Sequence[str], reference_phase: str,
                    phase_map: Path | None = None) -> dict[str, StudyCase]:
    """Case name -> :class:`StudyCase` for every study folder among ``case_dirs`` (the others are left out):
    phases from the phase map where it names the case, else identified; the label from the Segmentation in the study
    folder or beside it (:func:`segmentations_beside`). Every failing case is one line of a single HPNInputError
    (cases in name order)."""
    mapped = read_phase_map(phase_map) if phase_map is not None else {}
    resolved, errors = {}, []
    study_dirs = [Path(d) for d in case_dirs if is_study_folder(Path(d), phases)]
    unknown = sorted(set(mapped) - {d.name for d in study_dirs})
    if unknown:
        errors.append(f"{phase_map}: case {unknown[0]} is not a study folder of the input")
    studies = {}
    for case_dir in study_dirs:
        try:
            studies[case_dir] = scan_study(case_dir)
        except HPNInputError as error:
            errors.append(str(error))
    try:
        for case_dir, paths in segmentations_beside(study_dirs, studies).items():
            studies[case_dir].segmentations.extend(paths)
    except HPNInputError as error:
        errors.append(str(error))
    for case_dir, study in studies.items():
        try:
            if case_dir.name in mapped:
                assignment = assignment_from_map(study, phases, mapped[case_dir.name], Path(phase_map))
            else:
                assignment = identify_phases(study, phases)
            reference = assignment.phases[reference_phase]
            resolved[case_dir.name] = StudyCase(study, assignment,
                                                study_segmentation(study, reference, assignment, reference_phase))
        except HPNInputError as error:
            errors.append(str(error))
    if errors:
        raise HPNInputError("\n".join(errors))
    return resolved


def write_study_case(resolved: StudyCase, case_dir: Path, reference_phase: str,
                     segment_map: Mapping[str, str] | None = None, allow_unusual_intensities: bool = False,
                     labels: Mapping[str, int] | None = None) -> None:
    """``case_dir/<phase>.nii.gz`` for every phase and ``label.nii.gz`` from the Segmentation (on the reference
    phase's grid): the case folder the study stands for."""
    from nnunet_hpn.io.images import check_phase_voxels

    case_dir.mkdir(parents=True)
    reference_image = None
    for phase, candidate in resolved.assignment.phases.items():
        image = read_candidate(candidate)
        where = f"{resolved.study.folder}: {candidate.label} ({phase})"
        check_phase_voxels(sitk.GetArrayViewFromImage(image), image.GetSize(), where, allow_unusual_intensities)
        sitk.WriteImage(image, str(case_dir / f"{phase}.nii.gz"), useCompression=True)
        if phase == reference_phase:
            reference_image = image
    if resolved.segmentation is not None:
        label = read_segmentation(resolved.segmentation, resolved.assignment.phases[reference_phase],
                                  reference_image, labels or dataset_labels(), segment_map)
        sitk.WriteImage(label, str(case_dir / "label.nii.gz"), useCompression=True)


def link_study_case(resolved: StudyCase, case_dir: Path) -> dict[str, Path]:
    """``case_dir/<phase>/`` folders of links to each phase's slice files (one series per folder, as a DICOM
    series folder input); returns phase -> folder."""
    folders = {}
    for phase, candidate in resolved.assignment.phases.items():
        folder = case_dir / phase
        folder.mkdir(parents=True)
        for index, path in enumerate(candidate.files):
            target = folder / f"{index:05d}.dcm"
            try:
                os.symlink(Path(path).resolve(), target)
            except OSError:  # no symbolic links on this file system
                import shutil

                shutil.copyfile(path, target)
        folders[phase] = folder
    return folders


class StagedStudies:
    """Study folders stood in for by case folders in a temporary folder (removed by :meth:`cleanup`, or when the
    object is collected): NIfTI cases for ``convert`` (``nifti=True``; the label from the study's Segmentation,
    its segments mapped to ``labels``, name -> value, default the paper's), DICOM series folders of links for
    ``predict``; the other case folders are passed through. Either is a case folder under the case-layout rule
    (:mod:`nnunet_hpn.io.case_layout`), so the commands read it as any other."""

    def __init__(self, case_dirs: Sequence[Path], phases: Sequence[str], reference_phase: str,
                 phase_map: Path | None = None, segment_map: Mapping[str, str] | None = None, nifti: bool = True,
                 labels: Mapping[str, int] | None = None, allow_unusual_intensities: bool = False):
        self.resolved = resolve_studies(case_dirs, phases, reference_phase, phase_map)
        self._temporary = tempfile.TemporaryDirectory(prefix="nnunet-hpn-studies.") if self.resolved else None
        self.case_dirs: list[Path] = []
        self.inputs: dict[str, dict[str, Path]] = {}
        for case_dir in case_dirs:
            resolved = self.resolved.get(Path(case_dir).name)
            if resolved is None:
                self.case_dirs.append(Path(case_dir))
                continue
            staged = Path(self._temporary.name) / Path(case_dir).name
            if nifti:
                write_study_case(resolved, staged, reference_phase, segment_map, allow_unusual_intensities, labels)
            else:
                self.inputs[staged.name] = link_study_case(resolved, staged)
            self.case_dirs.append(staged)

    def records(self) -> dict[str, dict]:
        """case -> which series became which phase and why (:meth:`PhaseAssignment.record`)."""
        return {case: r.assignment.record(r.study) for case, r in self.resolved.items()}

    def phase_map(self) -> str:
        """The phase map CSV of the staged studies."""
        return phase_map_text(row for r in self.resolved.values() for row in phase_map_rows(r.study, r.assignment))

    def write_records(self, folder: Path) -> None:
        """``folder/dicom_study/phase_map.csv`` and ``<case>.json`` per study case (nothing without studies)."""
        if not self.resolved:
            return
        target = Path(folder) / STUDY_RECORD_FOLDER
        target.mkdir(exist_ok=True)
        (target / PHASE_MAP_FILE).write_text(self.phase_map(), encoding="utf-8")
        for case, record in self.records().items():
            (target / f"{case}.json").write_text(json.dumps(record, indent=2))

    def add_to_qc(self, qc_folder: Path) -> None:
        """Each study case's record (:meth:`records`) added to its QC file ``qc_folder/<case>.json`` as
        ``"dicom_study"``."""
        for case, record in self.records().items():
            path = Path(qc_folder) / f"{case}.json"
            if path.is_file():
                qc = json.loads(path.read_text(encoding="utf-8"))
                path.write_text(json.dumps({**qc, "dicom_study": record}, indent=2), encoding="utf-8")

    def cleanup(self) -> None:
        if self._temporary is not None:
            self._temporary.cleanup()


def review_phase_map(case_dirs: Sequence[Path], phases: Sequence[str], phase_map: Path | None = None
                     ) -> tuple[str, list[str]]:
    """The phase map CSV of every study folder among ``case_dirs`` (phases identified, or from ``phase_map``)
    and one error line per case that needs a decision (its rows are written with the phase empty)."""
    mapped = read_phase_map(phase_map) if phase_map is not None else {}
    rows, errors = [], []
    for case_dir in (Path(d) for d in case_dirs):
        if not is_study_folder(case_dir, phases):
            continue
        study = scan_study(case_dir)
        try:
            if case_dir.name in mapped:
                assignment = assignment_from_map(study, phases, mapped[case_dir.name], Path(phase_map))
            else:
                assignment = identify_phases(study, phases)
        except HPNInputError as error:
            errors.append(str(error))
            rows += phase_map_rows(study, None, "undecided, see the error")
            continue
        rows += phase_map_rows(study, assignment)
    return phase_map_text(rows), errors
