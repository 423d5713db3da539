"""The series of a DICOM study folder: CT volumes found and described, the rest set aside with a reason.

A *study folder* is a case folder holding ``.dcm`` files in any layout (any depth, any file names) instead of
``<phase>.nii.gz`` files. :func:`scan_study` reads every header (pydicom) and groups the CT images by
SeriesInstanceUID and, where one series holds several acquisitions of the same slice positions, by
AcquisitionNumber (else AcquisitionTime). Set aside, each with its reason: localisers, derived or secondary images
(ImageType), non-axial reformats, other SOP classes (secondary captures, dose reports and other structured reports),
series with repeated or unevenly spaced slices. Each remaining :class:`Candidate` volume is described by its timing
(:data:`TIME_TAGS`), contrast tags, description, slice thickness and coverage.
"""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from nnunet_hpn.errors import HPNInputError

#: Timing tags in order of preference (each with its date tag); the first that every candidate has orders them.
TIME_TAGS: tuple[tuple[str, str], ...] = (("AcquisitionTime", "AcquisitionDate"), ("ContentTime", "ContentDate"),
                                          ("SeriesTime", "SeriesDate"))
#: Slice normals whose z component is smaller than this are not axial (cos 25 degrees).
AXIAL_MIN_COS = 0.9
#: Largest relative deviation of one slice gap from the median gap.
SLICE_GAP_TOLERANCE = 0.05
#: SOP classes read as CT volumes, and the Segmentation storage class.
CT_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.2": "CT Image Storage"}
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
#: SOP class prefixes set aside with a reason of their own.
SET_ASIDE_SOP_PREFIXES: tuple[tuple[str, str], ...] = (
    ("1.2.840.10008.5.1.4.1.1.88.67", "radiation dose report (structured report)"),
    ("1.2.840.10008.5.1.4.1.1.88", "structured report"),
    ("1.2.840.10008.5.1.4.1.1.7", "secondary capture"),
    ("1.2.840.10008.5.1.4.1.1.2.1", "enhanced (multi-frame) CT, not read: export it as CT Image Storage"),
    ("1.2.840.10008.1.3.10", "DICOMDIR (media directory)"),
)


@dataclass
class _Instance:
    """Header of one CT image file (what grouping, sorting and description need)."""

    path: Path
    series_uid: str
    sop_uid: str
    position: np.ndarray  # ImagePositionPatient (mm)
    orientation: np.ndarray  # ImageOrientationPatient (6 cosines)
    acquisition_number: str
    times: dict[str, dt.datetime | None]
    header: object  # the pydicom dataset, pixels not read


@dataclass
class Candidate:
    """One axial CT volume of a study: a series, or one acquisition of a series that holds several. ``files`` and
    ``sop_uids`` are in slice order (along the slice normal); ``times`` per :data:`TIME_TAGS` tag (earliest slice)."""

    series_uid: str
    acquisition: str | None
    description: str
    series_number: str
    files: list[Path]
    sop_uids: list[str]
    times: dict[str, dt.datetime | None]
    contrast_agent: str
    bolus_start: dt.datetime | None
    slice_thickness: float | None
    coverage_mm: tuple[float, float]
    study_uid: str = ""

    @property
    def id(self) -> str:
        """The series' identifier in phase maps: the SeriesInstanceUID, ``#<acquisition>`` for one of several."""
        return self.series_uid if self.acquisition is None else f"{self.series_uid}#{self.acquisition}"

    @property
    def label(self) -> str:
        """``series <number> '<description>'`` (acquisition ``n``) for messages."""
        text = f"series {self.series_number or '?'} '{self.description}'"
        return text + (f" acquisition {self.acquisition}" if self.acquisition is not None else "")

    def time(self, tag: str) -> dt.datetime | None:
        return self.times.get(tag)

    def describe(self) -> dict:
        """Timing, contrast tags, description, slice thickness and coverage (JSON-ready)."""
        return {"series": self.id, "series_number": self.series_number, "description": self.description,
                "times": {tag: None if value is None else value.isoformat() for tag, value in self.times.items()},
                "contrast_agent": self.contrast_agent,
                "contrast_bolus_start": None if self.bolus_start is None else self.bolus_start.isoformat(),
                "slice_thickness_mm": self.slice_thickness, "slices": len(self.files),
                "coverage_mm": [round(v, 2) for v in self.coverage_mm]}


@dataclass
class SetAside:
    """A series (or files of one) that is no phase candidate, and why."""

    series_uid: str
    description: str
    reason: str
    files: int


@dataclass
class Study:
    """The DICOM content of one case folder."""

    case: str
    folder: Path
    candidates: list[Candidate] = field(default_factory=list)
    set_aside: list[SetAside] = field(default_factory=list)
    segmentations: list[Path] = field(default_factory=list)

    def candidate(self, series_id: str) -> Candidate | None:
        return next((c for c in self.candidates if c.id == series_id), None)


def header_text(header, keyword: str) -> str:
    value = header.get(keyword, "")
    return "" if value is None else str(value).strip()


def _parse_time(date_text: str, time_text: str) -> dt.datetime | None:
    """A DICOM DA + TM pair as a datetime (without a date: 1900-01-01); None when the time is absent or invalid."""
    time_text = time_text.strip().replace(":", "")
    if not time_text:
        return None
    match = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?", time_text)
    if not match:
        return None
    hours, minutes, seconds = (int(group or 0) for group in match.groups()[:3])
    micro = int((match.group(4) or "0").ljust(6, "0"))
    try:
        day = dt.datetime.strptime(date_text.strip().replace(".", ""), "%Y%m%d") if date_text.strip() \
            else dt.datetime(1900, 1, 1)
        return day.replace(hour=hours, minute=minutes, second=min(seconds, 59), microsecond=micro)
    except ValueError:
        return None


def _times(header) -> dict[str, dt.datetime | None]:
    study_date = header_text(header, "StudyDate")
    return {tag: _parse_time(header_text(header, date_tag) or study_date, header_text(header, tag))
            for tag, date_tag in TIME_TAGS}


def _floats(header, keyword: str, count: int) -> np.ndarray | None:
    try:
        values = np.array([float(v) for v in header.get(keyword)], dtype=float)
    except (TypeError, ValueError):
        return None
    return values if values.size == count and np.isfinite(values).all() else None


def is_dicom_file(path: Path) -> bool:
    """A file with the DICOM preamble (``DICM`` at byte 128) or ending in ``.dcm``."""
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with path.open("rb") as stream:
            return stream.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _visible_files(folder: Path) -> list[Path]:
    """Files under ``folder`` at any depth, hidden files and folders aside, in path order."""
    return sorted(path for path in Path(folder).rglob("*")
                  if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts))


def is_study_folder(case_dir: Path, phases: Sequence[str]) -> bool:
    """True when no entry of ``case_dir`` is a phase or a label by the case-layout rule
    (:mod:`nnunet_hpn.io.case_layout`: ``<phase>.nii.gz`` etc., ``<phase>/``, ``label*``) and DICOM files lie in it
    at some depth: a study, not a case folder of named phases."""
    from nnunet_hpn.io.case_layout import LABEL_STEM, split_image_name

    case_dir = Path(case_dir)
    for entry in case_dir.iterdir():
        stem = entry.name if entry.is_dir() else (split_image_name(entry.name) or (None,))[0]
        if stem is not None and (stem in phases or stem.startswith(LABEL_STEM)) and not entry.name.startswith("."):
            return False
    return any(is_dicom_file(path) for path in _visible_files(case_dir))


def scan_study(folder: Path, case: str | None = None) -> Study:
    """Every DICOM header under ``folder`` (any layout) sorted into phase candidates, set-aside series and
    Segmentation objects (:class:`Study`). Files that are not DICOM are left out; none at all is an error."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    folder = Path(folder)
    study = Study(case or folder.name, folder)
    instances: dict[str, list[_Instance]] = {}
    aside: dict[tuple[str, str], list[str]] = {}  # (series, reason) -> descriptions
    n_dicom = 0
    for path in _visible_files(folder):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, AttributeError):
            if path.suffix.lower() == ".dcm":
                raise HPNInputError(f"{path}: unreadable DICOM file") from None
            continue
        n_dicom += 1
        sop_class = (header_text(header, "SOPClassUID")
                     or header_text(getattr(header, "file_meta", {}), "MediaStorageSOPClassUID"))
        # without a SeriesInstanceUID (some de-identified exports) the files of one folder are one series
        series_uid = header_text(header, "SeriesInstanceUID") or f"folder:{path.parent.relative_to(folder).as_posix()}"
        description = header_text(header, "SeriesDescription")
        if sop_class == SEG_SOP_CLASS:
            study.segmentations.append(path)
            continue
        reason = _set_aside_reason(header, sop_class)
        if reason is None:
            position = _floats(header, "ImagePositionPatient", 3)
            orientation = _floats(header, "ImageOrientationPatient", 6)
            if position is None or orientation is None:
                reason = "no ImagePositionPatient / ImageOrientationPatient"
            elif abs(np.cross(orientation[:3], orientation[3:])[2]) < AXIAL_MIN_COS:
                reason = "non-axial reformat (coronal, sagittal or oblique slices)"
            else:
                instances.setdefault(series_uid, []).append(_Instance(
                    path, series_uid, header_text(header, "SOPInstanceUID"), position, orientation,
                    header_text(header, "AcquisitionNumber"), _times(header), header))
                continue
        aside.setdefault((series_uid, reason), []).append(description)
    if n_dicom == 0:
        raise HPNInputError(f"{folder}: no DICOM files found")
    for (series_uid, reason), descriptions in aside.items():
        study.set_aside.append(SetAside(series_uid, descriptions[0], reason, len(descriptions)))
    for series_uid, members in instances.items():
        _add_series(study, series_uid, members)
    study.candidates.sort(key=lambda c: (c.series_number.zfill(8), c.id))
    return study


def _set_aside_reason(header, sop_class: str) -> str | None:
    """Why an image is no phase candidate (SOP class, ImageType), or None."""
    for prefix, reason in SET_ASIDE_SOP_PREFIXES:
        if sop_class.startswith(prefix):
            return reason
    if sop_class not in CT_SOP_CLASSES:
        return f"not a CT image (SOP class {sop_class or 'missing'})"
    image_type = [str(v).upper() for v in (header.get("ImageType") or [])]
    shown = "\\".join(image_type)
    if "LOCALIZER" in image_type or "SCOUT" in image_type:
        return f"localiser (ImageType {shown})"
    if image_type[:1] == ["DERIVED"] or image_type[1:2] == ["SECONDARY"]:
        return f"derived or secondary image (ImageType {shown})"
    return None


def _split_acquisitions(members: list[_Instance]) -> tuple[list[tuple[str | None, list[_Instance]]], str | None]:
    """The volumes of one series: itself, or one per acquisition where slice positions repeat; or a reason."""
    normal = np.cross(members[0].orientation[:3], members[0].orientation[3:])
    positions = [round(float(m.position @ normal), 2) for m in members]
    if len(set(positions)) == len(positions):
        return [(None, members)], None
    for key, name in ((lambda m: m.acquisition_number, "AcquisitionNumber"),
                      (lambda m: str(m.times.get("AcquisitionTime")), "AcquisitionTime")):
        groups: dict[str, list[_Instance]] = {}
        for member in members:
            groups.setdefault(key(member), []).append(member)
        if len(groups) > 1 and all(len({round(float(m.position @ normal), 2) for m in group}) == len(group)
                                   for group in groups.values()):
            if name == "AcquisitionNumber":
                return [(k or "?", g) for k, g in sorted(groups.items())], None
            ordered = sorted(groups.values(), key=lambda g: min(m.times["AcquisitionTime"] or dt.datetime.min
                                                                for m in g))
            return [(str(i + 1), g) for i, g in enumerate(ordered)], None
    return [], "repeated slice positions that neither AcquisitionNumber nor AcquisitionTime separates"


def _add_series(study: Study, series_uid: str, members: list[_Instance]) -> None:
    """The candidates (or set-aside entries) of one series."""
    description = header_text(members[0].header, "SeriesDescription")
    volumes, problem = _split_acquisitions(members)
    if problem:
        study.set_aside.append(SetAside(series_uid, description, problem, len(members)))
        return
    for acquisition, group in volumes:
        reason = _volume_problem(group)
        if reason:
            study.set_aside.append(SetAside(series_uid if acquisition is None else f"{series_uid}#{acquisition}",
                                            description, reason, len(group)))
            continue
        normal = np.cross(group[0].orientation[:3], group[0].orientation[3:])
        group = sorted(group, key=lambda m: float(m.position @ normal))
        heights = [float(m.position @ normal) for m in group]
        first = group[0].header
        times = {tag: min((m.times[tag] for m in group if m.times[tag] is not None), default=None)
                 for tag, _ in TIME_TAGS}
        try:
            thickness = float(first.get("SliceThickness"))
        except (TypeError, ValueError):
            thickness = None
        study.candidates.append(Candidate(
            series_uid=series_uid, acquisition=acquisition if len(volumes) > 1 else None, description=description,
            series_number=header_text(first, "SeriesNumber"), files=[m.path for m in group],
            sop_uids=[m.sop_uid for m in group], times=times, contrast_agent=header_text(first, "ContrastBolusAgent"),
            bolus_start=_parse_time(header_text(first, "StudyDate"), header_text(first, "ContrastBolusStartTime")),
            slice_thickness=thickness,
            coverage_mm=(heights[0], heights[-1]), study_uid=header_text(first, "StudyInstanceUID")))


def _volume_problem(group: list[_Instance]) -> str | None:
    """Why a group of slices is no 3D volume: too few slices, mixed orientation or size, uneven spacing."""
    if len(group) < 2:
        return "a single slice, not a 3D volume"
    if any(not np.allclose(m.orientation, group[0].orientation, atol=1e-3) for m in group):
        return "slices of several orientations"
    if len({(header_text(m.header, "Rows"), header_text(m.header, "Columns")) for m in group}) > 1:
        return "slices of several sizes"
    normal = np.cross(group[0].orientation[:3], group[0].orientation[3:])
    gaps = np.diff(np.sort([float(m.position @ normal) for m in group]))
    median = float(np.median(gaps))
    if median <= 0 or np.abs(gaps - median).max() > SLICE_GAP_TOLERANCE * median:
        return f"uneven slice spacing ({gaps.min():.3g}..{gaps.max():.3g} mm; missing slices?)"
    return None


def read_candidate(candidate: Candidate) -> sitk.Image:
    """The candidate's volume (SimpleITK, slices in the candidate's order, rescaled to HU), int16 when its values
    are whole numbers in range."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(path) for path in candidate.files])
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise HPNInputError(f"{candidate.files[0].parent}: {candidate.label} could not be read "
                            f"({str(error).strip().splitlines()[-1] if str(error).strip() else 'unknown error'})"
                            ) from None
    voxels = sitk.GetArrayViewFromImage(image)
    if image.GetPixelID() != sitk.sitkInt16 and np.array_equal(voxels, np.round(voxels)) \
            and voxels.min() >= -32768 and voxels.max() <= 32767:
        image = sitk.Cast(image, sitk.sitkInt16)
    return image
