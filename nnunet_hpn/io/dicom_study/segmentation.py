"""DICOM Segmentations of a study read as label maps.

:func:`read_segmentation` reads a DICOM Segmentation (highdicom) into a label map on the grid of the series it
references: frames placed by their referenced SOP instances (else by their positions), segments mapped to the
dataset's labels by segment label or segmented property (:func:`segment_labels`, a segment map for other names).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from nnunet_hpn.errors import HPNInputError
from nnunet_hpn.io.dicom_study.series import SEG_SOP_CLASS, Candidate, Study, header_text, is_dicom_file
from nnunet_hpn.io.dicom_study.phases import PhaseAssignment

def segment_labels(segments: Sequence[tuple[int, str, str, str]], labels: Mapping[str, int],
                   segment_map: Mapping[str, str] | None, where: str) -> dict[int, int]:
    """Segment number -> label value. ``segments``: (number, segment label, property type code value, code
    meaning). A segment maps by ``segment_map`` (segment label -> label name or value; 0 leaves it out), else by its
    segment label or property type meaning equal to a label name (case and punctuation aside), else by the
    property type code of the label of that name in the DICOM-SEG output (:data:`nnunet_hpn.io.dicom_seg.SEGMENTS`).
    ``labels``: label name -> value (a region-based scheme's regions are not segment targets).
    HPNInputError naming the segment when none applies."""
    from pydicom.sr.codedict import codes

    from nnunet_hpn.labels import PDAC_LABELS
    from nnunet_hpn.io.dicom_seg import SEGMENTS

    def norm(text: str) -> str:
        return re.sub(r"[^a-z0-9]", "", text.lower())

    by_name = {norm(name): value for name, value in labels.items() if isinstance(value, int) and value != 0}
    preset_names = {value: name for name, value in PDAC_LABELS.items()}
    output_codes = {}  # the DICOM-SEG output's segment labels and codes, for labels of the same name
    for value, (segment_label, _, kind) in SEGMENTS.items():
        if norm(preset_names[value]) in by_name:
            by_name.setdefault(norm(segment_label), by_name[norm(preset_names[value])])
            output_codes[str(getattr(codes.SCT, kind).value)] = by_name[norm(preset_names[value])]
    mapping = {norm(key): value for key, value in (segment_map or {}).items()}
    result = {}
    for number, label, code, meaning in segments:
        target = mapping.get(norm(label))
        if target is not None:
            value = int(target) if str(target).isdigit() else by_name.get(norm(str(target)))
            if value is None:
                raise HPNInputError(f"{where}: segment map names the label {target!r}, not one of "
                                    f"{', '.join(labels)}")
        else:
            value = by_name.get(norm(label), by_name.get(norm(meaning), output_codes.get(code)))
        if value is None:
            names = ", ".join(name for name, v in labels.items() if v != 0)
            raise HPNInputError(f"{where}: segment {number} '{label}' ({meaning or 'no property type'}) maps to none "
                                f"of the labels {names}; --segment-map '{label}=LABEL' (or =0 to leave it out)")
        result[number] = value
    return result


def read_segmentation(seg_path: Path, reference: Candidate, reference_image: sitk.Image,
                      labels: Mapping[str, int], segment_map: Mapping[str, str] | None = None) -> sitk.Image:
    """A DICOM Segmentation as a label map (uint8) on ``reference_image``'s grid (the volume of ``reference``).
    Each frame goes on the slice of its referenced SOP instance, or (without one) of its ImagePositionPatient;
    where segments overlap the smaller one wins (a mass inside its organ). HPNInputError naming the file for a
    frame outside the volume or a size other than the slices'."""
    from nnunet_hpn.io.dicom_seg import import_highdicom

    hd = import_highdicom()
    seg_path = Path(seg_path)
    try:
        seg = hd.seg.segread(str(seg_path))
    except Exception as error:  # highdicom raises many kinds for a damaged or foreign file
        raise HPNInputError(f"{seg_path}: not a readable DICOM Segmentation ({type(error).__name__})") from None
    size_x, size_y, size_z = reference_image.GetSize()
    if (int(seg.Rows), int(seg.Columns)) != (size_y, size_x):
        raise HPNInputError(f"{seg_path}: frames of {seg.Rows}x{seg.Columns} pixels, the slices of {reference.label} "
                            f"have {size_y}x{size_x}")
    segments = []
    for item in seg.SegmentSequence:
        kind = item.SegmentedPropertyTypeCodeSequence[0] if "SegmentedPropertyTypeCodeSequence" in item else None
        segments.append((int(item.SegmentNumber), str(item.get("SegmentLabel", "")),
                         str(kind.CodeValue) if kind is not None and "CodeValue" in kind else "",
                         str(kind.CodeMeaning) if kind is not None else ""))
    values = segment_labels(segments, labels, segment_map, str(seg_path))
    pixels = np.asarray(seg.pixel_array)
    pixels = pixels.reshape((-1, *pixels.shape[-2:]))
    if str(seg.SegmentationType) == "FRACTIONAL":
        pixels = pixels >= 0.5 * float(seg.MaximumFractionalValue)
    masks = {number: np.zeros((size_z, size_y, size_x), dtype=bool) for number in values}
    slice_of = {uid: index for index, uid in enumerate(reference.sop_uids)}
    origin = np.asarray(reference_image.GetOrigin())
    direction = np.asarray(reference_image.GetDirection()).reshape(3, 3)
    spacing = np.asarray(reference_image.GetSpacing())
    shared = seg.get("SharedFunctionalGroupsSequence", [None])[0]
    for index, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        number = _frame_item(frame, shared, "SegmentIdentificationSequence", "ReferencedSegmentNumber")
        z = _frame_slice(frame, slice_of, origin, direction, spacing, size_z)
        if z is None:
            raise HPNInputError(f"{seg_path}: frame {index + 1} lies outside the volume of {reference.label} "
                                f"({reference.id}): its referenced instance is not a slice of the series and its "
                                f"position is on no slice")
        if number is None or int(number) not in masks:
            raise HPNInputError(f"{seg_path}: frame {index + 1} names no segment of the Segmentation")
        masks[int(number)][z] |= pixels[index].astype(bool)
    label = np.zeros((size_z, size_y, size_x), dtype=np.uint8)
    for number in sorted(masks, key=lambda n: -int(masks[n].sum())):  # largest first: smaller segments win
        if values[number]:
            label[masks[number]] = values[number]
    image = sitk.GetImageFromArray(label)
    image.CopyInformation(reference_image)
    return image


def _frame_item(frame, shared, sequence: str, keyword: str):
    for group in (frame, shared):
        items = getattr(group, sequence, None) if group is not None else None
        if items and keyword in items[0]:
            return items[0].get(keyword)
    return None


def _frame_slice(frame, slice_of: Mapping[str, int], origin: np.ndarray, direction: np.ndarray,
                 spacing: np.ndarray, size_z: int) -> int | None:
    """Slice index of a SEG frame: its referenced instance, else its position (within a tenth of a slice, on the
    first voxel's column and row)."""
    for derivation in frame.get("DerivationImageSequence", []):
        for source in derivation.get("SourceImageSequence", []):
            uid = str(source.get("ReferencedSOPInstanceUID", ""))
            if uid in slice_of:
                return slice_of[uid]
    if "PlanePositionSequence" not in frame:
        return None
    position = np.array([float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient])
    index = np.linalg.solve(direction * spacing, position - origin)  # continuous (x, y, z) voxel index
    z = int(round(index[2]))
    if abs(index[2] - z) > 0.1 or abs(index[0]) > 0.1 or abs(index[1]) > 0.1 or not 0 <= z < size_z:
        return None
    return z


def study_segmentation(study: Study, reference: Candidate, assignment: PhaseAssignment, reference_phase: str
                       ) -> Path | None:
    """The study's one Segmentation object, checked to reference the reference phase's series (None without
    one); HPNInputError for several, or one referencing another series."""
    import pydicom

    if not study.segmentations:
        return None
    if len(study.segmentations) > 1:
        raise HPNInputError(f"{study.folder}: {len(study.segmentations)} DICOM Segmentation objects "
                            f"({', '.join(p.name for p in study.segmentations[:3])}); keep one per case")
    path = study.segmentations[0]
    header = pydicom.dcmread(path, stop_before_pixels=True)
    referenced = [str(item.SeriesInstanceUID) for item in header.get("ReferencedSeriesSequence", [])]
    if referenced and reference.series_uid not in referenced:
        known = {c.series_uid: phase for phase, c in assignment.phases.items()}
        other = next((uid for uid in referenced if uid in known), None)
        if other is not None:
            raise HPNInputError(f"{path}: the Segmentation references the {known[other]} series ({other}); the label "
                                f"must be on the reference phase ({reference_phase}): --reference-phase "
                                f"{known[other]}")
        in_case = {c.series_uid for c in study.candidates} | {s.series_uid for s in study.set_aside}
        problem = "a series the case uses as no phase" if any(uid in in_case for uid in referenced) else \
            "a series not in the case"
        raise HPNInputError(f"{path}: the Segmentation references {problem} ({referenced[0]})")
    return path


def segmentations_beside(study_dirs: Sequence[Path], studies: Mapping[Path, Study]) -> dict[Path, list[Path]]:
    """The DICOM Segmentation files lying beside the study folders (directly in their parent folders), by the study
    folder whose series they reference (ReferencedSeriesSequence). HPNInputError naming a file beside them that
    references none of their series."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    owner = {candidate.series_uid: folder for folder, study in studies.items() for candidate in study.candidates}
    found: dict[Path, list[Path]] = {}
    for parent in sorted({Path(folder).parent for folder in study_dirs}):
        for path in sorted(entry for entry in parent.iterdir() if entry.is_file() and not entry.name.startswith(".")):
            if not is_dicom_file(path):
                continue
            try:
                header = pydicom.dcmread(path, stop_before_pixels=True)
            except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, AttributeError):
                raise HPNInputError(f"{path}: unreadable DICOM file beside the study folders") from None
            if header_text(header, "SOPClassUID") != SEG_SOP_CLASS:
                continue
            referenced = [str(item.SeriesInstanceUID) for item in header.get("ReferencedSeriesSequence", [])]
            folders = {owner[uid] for uid in referenced if uid in owner}
            if len(folders) != 1:
                raise HPNInputError(f"{path}: the Segmentation beside the study folders references "
                                    f"{'series of several of them' if folders else 'none of their series'} "
                                    f"({', '.join(referenced) or 'no ReferencedSeriesSequence'})")
            found.setdefault(folders.pop(), []).append(path)
    return found
