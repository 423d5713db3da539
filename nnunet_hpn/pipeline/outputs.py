"""What ``nnunet-hpn predict`` writes for one case, and where: the label map ``<case>.nii.gz``, with
``--save_probabilities`` nnU-Net's ``<case>.npz`` / ``<case>.pkl`` beside it, with ``--output-format dicom-seg`` a
DICOM Segmentation ``<case>.seg.dcm``, and the QC record. :func:`write_case_outputs` publishes them together: all of
them, or (when one fails) none.
"""
from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from nnunet_hpn.errors import HPNInputError
from nnunet_hpn.io.dicom_seg import DICOM_SEG_ENDING, dicom_seg_for
from nnunet_hpn.io.images import IMAGE_FILE_ENDINGS
from nnunet_hpn.io.publish import atomic_files
from nnunet_hpn.labels import LabelScheme
from nnunet_hpn.pipeline.missing_phase import missing_phase_message

#: ``--output-format`` values: NIfTI label maps, or NIfTI plus a DICOM Segmentation (``<case>.seg.dcm``)
OUTPUT_FORMATS = ("nifti", "dicom-seg")


@dataclass
class CasePrediction:
    """A label map on the reference image's grid, the reference phase, the registration QC per phase, the
    model phases that were missing from the input (filled by the missing-phase policy) and, with
    ``save_probabilities``, nnU-Net's class probabilities (num_classes, z, y, x) with the properties its ``.pkl``
    holds."""

    label: sitk.Image
    reference_phase: str
    qc: dict
    missing_phases: list[str] = field(default_factory=list)
    probabilities: np.ndarray | None = None
    properties: dict | None = None
    #: two-stage prediction: the locator's box, volumes and seconds, stage 2's seconds, or the fallback taken
    locator: dict | None = None


def image_suffix(path: Path) -> str:
    """The image file ending of an output path (``.nii.gz``, ...); HPNInputError naming it when it has none."""
    for ending in IMAGE_FILE_ENDINGS:
        if Path(path).name.endswith(ending):
            return ending
    raise HPNInputError(f"{path}: output must end with one of {', '.join(IMAGE_FILE_ENDINGS)}")


def truncated_name(path: Path) -> Path:
    """``path`` without its image file ending (nnU-Net's ``output_file_truncated``: ``<case>`` of ``<case>.nii.gz``)."""
    return Path(path).with_name(Path(path).name[:-len(image_suffix(Path(path)))])


def probability_files(truncated: Path) -> tuple[Path, Path]:
    """nnU-Net's probability files of ``<truncated>``: ``<truncated>.npz`` and ``<truncated>.pkl``."""
    return truncated.with_name(truncated.name + ".npz"), truncated.with_name(truncated.name + ".pkl")


def dicom_seg_file(truncated: Path) -> Path:
    """The DICOM Segmentation written beside ``<truncated>.nii.gz``: ``<truncated>.seg.dcm``."""
    return truncated.with_name(truncated.name + DICOM_SEG_ENDING)


def case_outputs(out_dir: Path, case: str, save_probabilities: bool, output_format: str = "nifti") -> list[Path]:
    """The files one folder-mode case writes into ``out_dir`` (besides its QC)."""
    label = Path(out_dir) / f"{case}.nii.gz"
    return [label, *(probability_files(truncated_name(label)) if save_probabilities else ()),
            *([dicom_seg_file(truncated_name(label))] if output_format == "dicom-seg" else [])]


def write_probabilities(probabilities: np.ndarray, properties: dict, npz: Path, pkl: Path) -> None:
    """nnU-Net's probability export (:func:`probability_files`): the ``.npz`` (key ``probabilities``) and the
    ``.pkl`` (the image properties)."""
    # not nnU-Net's export_prediction_from_logits: it writes to names of its own choosing (not the temporaries of
    # an atomic publish) and cannot paste a stage-2 crop's probabilities back into the full scan
    np.savez_compressed(npz, probabilities=probabilities)
    Path(pkl).write_bytes(pickle.dumps(properties))


def write_case_outputs(result: CasePrediction, phase_paths: Mapping[str, Path], out_path: Path,
                       qc_path: Path | None, output_format: str, scheme: LabelScheme | None,
                       channel_names: Sequence[str]) -> None:
    """The label map at ``out_path``, nnU-Net's ``.npz`` / ``.pkl`` beside it (with probabilities), the DICOM
    Segmentation beside it (``dicom-seg``, segments named by ``scheme``, instances of the reference phase's series)
    and the QC record at ``qc_path``: all of them, or (when one fails) none."""
    out_path = Path(out_path)
    truncated = truncated_name(out_path)
    targets = [out_path]
    if result.probabilities is not None:
        targets += probability_files(truncated)
    if output_format == "dicom-seg":
        targets.append(dicom_seg_file(truncated))
    if qc_path is not None:
        targets.append(Path(qc_path))
    with atomic_files(targets) as temporaries:
        written = dict(zip(targets, temporaries))
        sitk.WriteImage(result.label, str(written[out_path]), useCompression=True)
        if result.probabilities is not None:
            write_probabilities(result.probabilities, result.properties,
                                *(written[path] for path in probability_files(truncated)))
        if output_format == "dicom-seg":
            dicom_seg_for(result.label, Path(phase_paths[result.reference_phase]), scheme).save_as(
                str(written[dicom_seg_file(truncated)]))
        if qc_path is not None:
            record = {"reference_phase": result.reference_phase,
                      "inputs": {phase: str(path) for phase, path in phase_paths.items()},
                      "missing_phases": result.missing_phases, "phases": result.qc}
            if result.missing_phases:
                record["missing_phase_policy"] = missing_phase_message(result.missing_phases, channel_names)
            if result.locator is not None:
                record["locator"] = result.locator
            written[Path(qc_path)].write_text(json.dumps(record, indent=2), encoding="utf-8")
