"""Multi-phase CT studies in DICOM: series found, phases identified (and written for review), DICOM-SEG labels read.

A *study folder* is a case folder holding ``.dcm`` files in any layout (any depth, any file names) instead of
``<phase>.nii.gz`` files. :func:`scan_study` reads every header (pydicom) and groups the CT images by
SeriesInstanceUID and, where one series holds several acquisitions of the same slice positions, by
AcquisitionNumber (else AcquisitionTime). Set aside, each with its reason: localisers, derived or secondary images
(ImageType), non-axial reformats, other SOP classes (secondary captures, dose reports and other structured reports),
series with repeated or unevenly spaced slices. Each remaining :class:`Candidate` volume is described by its timing
(:data:`TIME_TAGS`), contrast tags, description, slice thickness and coverage.

:func:`identify_phases` names the candidates (:data:`KNOWN_PHASES`, in acquisition order):

* **timing first**: the first of :data:`TIME_TAGS` that every candidate has orders them; candidates acquired within
  :data:`SAME_ACQUISITION_S` of each other are one acquisition (two reconstructions of it are ambiguous). The first
  contrast-enhanced acquisition is arterial, later ones venous, or delayed from :data:`DELAYED_AFTER_ARTERIAL_S`
  after the arterial one. Non-contrast: no ContrastBolusAgent where others have one, or acquired before
  ContrastBolusStartTime; where the tags cannot tell, the image does;
* **the image as second opinion** (:func:`image_evidence`; where timing is missing, where it comes from SeriesTime
  alone, and for non-contrast where the contrast tags are silent): the share of body voxels in
  :data:`ARTERIAL_HU` (opacified aorta and arteries: bright in the arterial phase only) and in :data:`ENHANCED_HU`
  (enhanced liver, portal vein, kidneys, vessels: low without contrast, highest in the portal-venous phase);
* descriptions are free text and never decide; a description naming another phase is noted in the reason.

Ambiguous evidence (two candidates for one phase, no clear image margin) and contradicting evidence (timing
tags disagreeing on the order, an unenhanced scan after an enhanced one, the image against the timing) are one
:class:`~nnunet_hpn.errors.HPNInputError` line naming the series and the evidence, never a guess.

The outcome is a phase map (:func:`write_phase_map`, CSV ``case,phase,series,reason``, one row per series of the
case, the phase empty where the series is not used) that a user reviews, edits and passes back
(:func:`read_phase_map`): its assignments replace the automatic ones, but an assignment whose timing says the
opposite (venous acquired before arterial, :func:`check_named_order`) is refused with the times shown.

:func:`read_segmentation` reads a DICOM Segmentation (highdicom) into a label map on the grid of the series it
references: frames placed by their referenced SOP instances (else by their positions), segments mapped to the
dataset's labels by segment label or segmented property (:func:`segment_labels`, a segment map for other names).
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from nnunet_hpn.errors import HPNInputError

#: Contrast phases the identification knows, in acquisition order.
KNOWN_PHASES: tuple[str, ...] = ("noncontrast", "arterial", "venous", "delayed")
#: Timing tags in order of preference (each with its date tag); the first that every candidate has orders them.
TIME_TAGS: tuple[tuple[str, str], ...] = (("AcquisitionTime", "AcquisitionDate"), ("ContentTime", "ContentDate"),
                                          ("SeriesTime", "SeriesDate"))
#: Candidates acquired within this many seconds of each other are one acquisition (e.g. thin and thick slices).
SAME_ACQUISITION_S = 2.0
#: An enhanced acquisition this many seconds or more after the arterial one is delayed, earlier ones venous.
DELAYED_AFTER_ARTERIAL_S = 120.0
#: HU range of opacified arterial blood (aorta in the arterial phase) and of enhanced tissue and blood.
ARTERIAL_HU: tuple[float, float] = (200.0, 450.0)
ENHANCED_HU: tuple[float, float] = (90.0, 450.0)
#: Voxels above this HU are the body (air and the table's surroundings excluded).
BODY_HU = -500.0
#: Image rules (shares of body voxels): unenhanced below UNENHANCED_BELOW x the highest enhanced share of the case,
#: enhanced above ENHANCED_ABOVE x it; arterial when its arterial share (above the case's lowest: bone) is
#: ARTERIAL_RATIO x and ARTERIAL_MARGIN above every other one's; of two later phases the one with VENOUS_RATIO x the
#: other's enhanced share is venous (DELAYED_RATIO x the arterial one's or less: delayed).
UNENHANCED_BELOW, ENHANCED_ABOVE = 0.25, 0.4
ARTERIAL_RATIO, ARTERIAL_MARGIN = 1.5, 0.004
VENOUS_RATIO, DELAYED_RATIO = 1.25, 1.05
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
#: Words of series descriptions suggesting a phase (only noted in the reasons; descriptions never decide).
DESCRIPTION_WORDS: dict[str, str] = {
    "noncontrast": r"non[- ]?contrast|native|nativ|plain|unenhanced|pre[- ]?contrast|w/?o|\bnc\b|sans",
    "arterial": r"arter|\bart\b|\bap\b|\bca\b|early",
    "venous": r"ven|portal|\bpv\b|\bpvp\b",
    "delayed": r"delay|late|equilib|\bdel\b",
}
#: Columns of the phase map CSV.
PHASE_MAP_COLUMNS: tuple[str, ...] = ("case", "phase", "series", "reason")
#: The phase map written beside a converted dataset, and the per-case records (``<case>.json``), in this folder.
STUDY_RECORD_FOLDER = "dicom_study"
PHASE_MAP_FILE = "phase_map.csv"


# ----------------------------------------------------------------------------------------------------- scanning --
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


def _text(header, keyword: str) -> str:
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
    study_date = _text(header, "StudyDate")
    return {tag: _parse_time(_text(header, date_tag) or study_date, _text(header, tag)) for tag, date_tag in TIME_TAGS}


def _floats(header, keyword: str, count: int) -> np.ndarray | None:
    try:
        values = np.array([float(v) for v in header.get(keyword)], dtype=float)
    except (TypeError, ValueError):
        return None
    return values if values.size == count and np.isfinite(values).all() else None


def _is_dicom_file(path: Path) -> bool:
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
    return any(_is_dicom_file(path) for path in _visible_files(case_dir))


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
        sop_class = _text(header, "SOPClassUID") or _text(getattr(header, "file_meta", {}), "MediaStorageSOPClassUID")
        # without a SeriesInstanceUID (some de-identified exports) the files of one folder are one series
        series_uid = _text(header, "SeriesInstanceUID") or f"folder:{path.parent.relative_to(folder).as_posix()}"
        description = _text(header, "SeriesDescription")
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
                    path, series_uid, _text(header, "SOPInstanceUID"), position, orientation,
                    _text(header, "AcquisitionNumber"), _times(header), header))
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
    description = _text(members[0].header, "SeriesDescription")
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
            series_number=_text(first, "SeriesNumber"), files=[m.path for m in group],
            sop_uids=[m.sop_uid for m in group], times=times, contrast_agent=_text(first, "ContrastBolusAgent"),
            bolus_start=_parse_time(_text(first, "StudyDate"), _text(first, "ContrastBolusStartTime")),
            slice_thickness=thickness,
            coverage_mm=(heights[0], heights[-1]), study_uid=_text(first, "StudyInstanceUID")))


def _volume_problem(group: list[_Instance]) -> str | None:
    """Why a group of slices is no 3D volume: too few slices, mixed orientation or size, uneven spacing."""
    if len(group) < 2:
        return "a single slice, not a 3D volume"
    if any(not np.allclose(m.orientation, group[0].orientation, atol=1e-3) for m in group):
        return "slices of several orientations"
    if len({(_text(m.header, "Rows"), _text(m.header, "Columns")) for m in group}) > 1:
        return "slices of several sizes"
    normal = np.cross(group[0].orientation[:3], group[0].orientation[3:])
    gaps = np.diff(np.sort([float(m.position @ normal) for m in group]))
    median = float(np.median(gaps))
    if median <= 0 or np.abs(gaps - median).max() > SLICE_GAP_TOLERANCE * median:
        return f"uneven slice spacing ({gaps.min():.3g}..{gaps.max():.3g} mm; missing slices?)"
    return None


# ------------------------------------------------------------------------------------------------------ volumes --
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


@dataclass(frozen=True)
class ImageEvidence:
    """Shares of body voxels in :data:`ARTERIAL_HU` and in :data:`ENHANCED_HU`."""

    arterial_share: float
    enhanced_share: float

    def text(self) -> str:
        return f"arterial-HU share {100 * self.arterial_share:.2f} %, enhanced share {100 * self.enhanced_share:.1f} %"


def image_evidence(image: sitk.Image) -> ImageEvidence:
    """:class:`ImageEvidence` of one volume (HU)."""
    voxels = sitk.GetArrayViewFromImage(image)
    body = voxels[voxels > BODY_HU]
    if body.size == 0:
        return ImageEvidence(0.0, 0.0)
    share = lambda low, high: float(np.count_nonzero((body >= low) & (body <= high)) / body.size)  # noqa: E731
    return ImageEvidence(share(*ARTERIAL_HU), share(*ENHANCED_HU))


# ------------------------------------------------------------------------------------------ phase identification --
@dataclass
class PhaseAssignment:
    """Phase -> candidate of one case, with the reason for each, and the reason each other series is unused."""

    case: str
    phases: dict[str, Candidate]
    reasons: dict[str, str]
    unused: dict[str, str]
    source: str  # "automatic" or the phase map's path

    def record(self, study: Study) -> dict:
        """What the QC JSON keeps: which series became which phase and why, and every other series."""
        return {"case": self.case, "folder": str(study.folder), "source": self.source,
                "phases": {phase: {**candidate.describe(), "reason": self.reasons[phase]}
                           for phase, candidate in self.phases.items()},
                "not_used": {**{c.id: {**c.describe(), "reason": self.unused.get(c.id, "not needed")}
                                for c in study.candidates if c not in self.phases.values()},
                             **{s.series_uid: {"description": s.description, "files": s.files,
                                               "reason": f"set aside: {s.reason}"} for s in study.set_aside}},
                "segmentations": [str(path) for path in study.segmentations]}


def _clock(value: dt.datetime | None) -> str:
    return "no time" if value is None else value.strftime("%H:%M:%S") + (
        f".{value.microsecond // 100000}" if value.microsecond else "")


def _description_phase(description: str) -> str | None:
    hits = [phase for phase, words in DESCRIPTION_WORDS.items() if re.search(words, description, re.IGNORECASE)]
    return hits[0] if len(hits) == 1 else None


def _timing(candidates: Sequence[Candidate]) -> tuple[str | None, str | None]:
    """The timing tag that orders ``candidates`` (first of :data:`TIME_TAGS` on all of them), and a contradiction
    (two tags on all of them ordering them differently), as text, or None."""
    complete = [tag for tag, _ in TIME_TAGS if all(c.time(tag) is not None for c in candidates)]
    if not complete:
        return None, None
    for tag in complete[1:]:
        for a in candidates:
            for b in candidates:
                first, second = (a.time(complete[0]) - b.time(complete[0])).total_seconds(), \
                    (a.time(tag) - b.time(tag)).total_seconds()
                if first > SAME_ACQUISITION_S and second < -SAME_ACQUISITION_S:
                    return complete[0], (f"{complete[0]} puts {a.label} ({_clock(a.time(complete[0]))}) after "
                                         f"{b.label} ({_clock(b.time(complete[0]))}), {tag} before it "
                                         f"({_clock(a.time(tag))} vs {_clock(b.time(tag))})")
    return complete[0], None


def _unenhanced_by_tags(candidates: Sequence[Candidate], tag: str | None) -> dict[str, bool | None]:
    """Non-contrast by the contrast tags: acquired before ContrastBolusStartTime, or without ContrastBolusAgent where
    another candidate has one; None where the tags cannot tell."""
    with_agent = [c for c in candidates if c.contrast_agent]
    verdict: dict[str, bool | None] = {}
    for c in candidates:
        time = c.time(tag) if tag else None
        starts = [o.bolus_start for o in candidates if o.bolus_start is not None]
        if time is not None and starts and time < min(starts):
            verdict[c.id] = True
        elif with_agent and len(with_agent) < len(candidates):
            verdict[c.id] = not c.contrast_agent
        else:
            verdict[c.id] = None
    return verdict


class _Evidence:
    """Image evidence of a case's candidates, read once each when first needed."""

    def __init__(self, read: Callable[[Candidate], sitk.Image]):
        self.read, self.cache = read, {}

    def __call__(self, candidate: Candidate) -> ImageEvidence:
        if candidate.id not in self.cache:
            self.cache[candidate.id] = image_evidence(self.read(candidate))
        return self.cache[candidate.id]


def _unenhanced_by_image(candidates: Sequence[Candidate], evidence: _Evidence, case: str) -> dict[str, bool]:
    """Non-contrast by the image: enhanced share below :data:`UNENHANCED_BELOW` of the case's highest."""
    shares = {c.id: evidence(c).enhanced_share for c in candidates}
    highest = max(shares.values())
    verdict = {}
    for c in candidates:
        ratio = shares[c.id] / highest if highest > 0 else 1.0
        if UNENHANCED_BELOW <= ratio <= ENHANCED_ABOVE or (len(candidates) == 1 and highest == 0):
            raise HPNInputError(f"{case}: cannot tell whether {c.label} ({c.id}) is contrast-enhanced: its "
                                f"{evidence(c).text()}, {100 * ratio:.0f} % of the case's highest and no contrast "
                                f"tags that decide; name the phases in a phase map (--phase-map)")
        verdict[c.id] = ratio < UNENHANCED_BELOW
    return verdict


def _arterial_by_image(candidates: Sequence[Candidate], evidence: _Evidence, case_candidates: Sequence[Candidate]
                       ) -> Candidate | None:
    """The candidate whose arterial share clearly exceeds every other's (:data:`ARTERIAL_RATIO`,
    :data:`ARTERIAL_MARGIN`), or None. Shares count above the lowest of ``case_candidates``: bone in the arterial HU
    range is in every phase alike."""
    baseline = min(evidence(c).arterial_share for c in case_candidates)
    excess = {c.id: evidence(c).arterial_share - baseline for c in candidates}
    ranked = sorted(candidates, key=lambda c: excess[c.id], reverse=True)
    top = excess[ranked[0].id]
    second = excess[ranked[1].id] if len(ranked) > 1 else 0.0
    return ranked[0] if top >= ARTERIAL_RATIO * second and top - second >= ARTERIAL_MARGIN else None


def identify_phases(study: Study, phases: Sequence[str], read: Callable[[Candidate], sitk.Image] = read_candidate
                    ) -> PhaseAssignment:
    """The candidate of every phase in ``phases`` (names from :data:`KNOWN_PHASES`), by the rules of the module
    docstring; one HPNInputError line naming the study folder, the series and the evidence when they are ambiguous
    or contradict each other. ``read`` gives a candidate's volume where the image is needed."""
    case = str(study.folder)  # what the messages name
    unknown = [phase for phase in phases if phase not in KNOWN_PHASES]
    if unknown:
        raise HPNInputError(f"{case}: phase {unknown[0]!r} cannot be identified automatically (known: "
                            f"{', '.join(KNOWN_PHASES)}); name its series in a phase map (--phase-map)")
    candidates = list(study.candidates)
    if not candidates:
        aside = "; ".join(f"{s.description or s.series_uid}: {s.reason}" for s in study.set_aside[:4])
        raise HPNInputError(f"{study.folder}: no axial CT series to use" + (f" (set aside: {aside})" if aside else ""))
    evidence = _Evidence(read)
    tag, contradiction = _timing(candidates)
    if contradiction:
        raise HPNInputError(f"{case}: the timing tags contradict each other: {contradiction}; name the phases in a "
                            f"phase map (--phase-map)")
    if tag is None:
        named, notes = _phases_by_image(candidates, evidence, case)
    else:
        named, notes = _phases_by_time(candidates, tag, evidence, case)
    return _assignment(study, phases, named, notes, tag)


def _phases_by_time(candidates: list[Candidate], tag: str, evidence: _Evidence, case: str
                    ) -> tuple[dict[str, list[Candidate]], dict[str, str]]:
    """Candidates per phase from the timing (acquisitions in time order), the image where the tags cannot tell
    non-contrast, and the image as a check where the time is only SeriesTime."""
    ordered = sorted(candidates, key=lambda c: c.time(tag))
    groups: list[list[Candidate]] = []
    for c in ordered:
        if groups and (c.time(tag) - groups[-1][0].time(tag)).total_seconds() <= SAME_ACQUISITION_S:
            groups[-1].append(c)
        else:
            groups.append([c])
    notes = {c.id: f"acquired {_clock(c.time(tag))} ({tag})" for c in candidates}
    by_tags = _unenhanced_by_tags(candidates, tag)
    if any(value is None for value in by_tags.values()):
        by_image = _unenhanced_by_image(candidates, evidence, case)
        unenhanced = {c.id: by_image[c.id] for c in candidates}
        for c in candidates:
            notes[c.id] += f"; image: {evidence(c).text()} ({'unenhanced' if unenhanced[c.id] else 'enhanced'})"
    else:
        unenhanced = dict(by_tags)
        for c in candidates:
            notes[c.id] += "; no contrast agent" if unenhanced[c.id] else f"; contrast '{c.contrast_agent}'"
    group_unenhanced = []
    for group in groups:
        values = {unenhanced[c.id] for c in group}
        if len(values) > 1:
            raise HPNInputError(f"{case}: {' and '.join(c.label for c in group)} were acquired together "
                                f"({_clock(group[0].time(tag))}, {tag}) but only some look contrast-enhanced")
        group_unenhanced.append(values.pop())
    enhanced_groups = [g for g, flag in zip(groups, group_unenhanced) if not flag]
    if enhanced_groups:
        first_enhanced_time = enhanced_groups[0][0].time(tag)
        late = [g[0] for g, flag in zip(groups, group_unenhanced) if flag and g[0].time(tag) > first_enhanced_time]
        if late:
            raise HPNInputError(f"{case}: {late[0].label} ({late[0].id}) looks unenhanced but was acquired at "
                                f"{_clock(late[0].time(tag))} ({tag}), after the contrast-enhanced "
                                f"{enhanced_groups[0][0].label} at {_clock(first_enhanced_time)}: contradicting "
                                f"evidence; name the phases in a phase map (--phase-map)")
    named: dict[str, list[Candidate]] = {phase: [] for phase in KNOWN_PHASES}
    for group, flag in zip(groups, group_unenhanced):
        if flag:
            named["noncontrast"].append(group)
    for index, group in enumerate(enhanced_groups):
        if index == 0:
            named["arterial"].append(group)
            continue
        delay = (group[0].time(tag) - enhanced_groups[0][0].time(tag)).total_seconds()
        phase = "delayed" if delay >= DELAYED_AFTER_ARTERIAL_S else "venous"
        named[phase].append(group)
        for c in group:
            notes[c.id] += f", {delay:.0f} s after the arterial acquisition"
    if tag == "SeriesTime" and enhanced_groups:  # series creation times: the image must agree
        image_arterial = _arterial_by_image([c for g in enhanced_groups for c in g], evidence, candidates)
        if image_arterial is not None and image_arterial not in enhanced_groups[0]:
            first = enhanced_groups[0][0]
            raise HPNInputError(f"{case}: contradicting evidence: by SeriesTime {first.label} ({first.id}, "
                                f"{_clock(first.time(tag))}) is the arterial phase, by the image {image_arterial.label}"
                                f" ({image_arterial.id}: {evidence(image_arterial).text()} against "
                                f"{evidence(first).text()}); name the phases in a phase map (--phase-map)")
        for c in (c for g in enhanced_groups for c in g):
            notes[c.id] += f"; image: {evidence(c).text()}"
    return {phase: [c for g in groups_ for c in g] if len(groups_) <= 1 else groups_
            for phase, groups_ in named.items()}, notes


def _phases_by_image(candidates: list[Candidate], evidence: _Evidence, case: str
                     ) -> tuple[dict[str, list], dict[str, str]]:
    """Candidates per phase from the image alone (no timing on every candidate)."""
    missing = [c for c in candidates if all(c.time(tag) is None for tag, _ in TIME_TAGS)]
    shown = missing[0] if missing else candidates[0]
    notes = {c.id: f"no timing on every series ({shown.label} has none); image: {evidence(c).text()}"
             for c in candidates}
    by_tags = _unenhanced_by_tags(candidates, None)
    by_image = _unenhanced_by_image(candidates, evidence, case)
    for c in candidates:
        if by_tags[c.id] is not None and by_tags[c.id] != by_image[c.id]:
            raise HPNInputError(f"{case}: contradicting evidence for {c.label} ({c.id}): contrast tags say "
                                f"{'unenhanced' if by_tags[c.id] else 'enhanced'}, the image ({evidence(c).text()}) "
                                f"the opposite; name the phases in a phase map (--phase-map)")
    named: dict[str, list] = {phase: [] for phase in KNOWN_PHASES}
    named["noncontrast"] = [c for c in candidates if by_image[c.id]]
    enhanced = [c for c in candidates if not by_image[c.id]]
    if not enhanced:
        return named, notes
    arterial = _arterial_by_image(enhanced, evidence, candidates)
    if arterial is None:
        shown = ", ".join(f"{c.label} ({c.id}): {evidence(c).text()}" for c in enhanced)
        raise HPNInputError(f"{case}: no timing and no clearly arterial image among {shown}; name the phases in a "
                            f"phase map (--phase-map)")
    named["arterial"] = [arterial]
    later = sorted((c for c in enhanced if c is not arterial), key=lambda c: evidence(c).enhanced_share,
                   reverse=True)
    reference = evidence(arterial).enhanced_share
    if len(later) == 1:
        ratio = evidence(later[0]).enhanced_share / reference if reference else 0.0
        if ratio >= VENOUS_RATIO:
            named["venous"] = later
        elif ratio <= DELAYED_RATIO:
            named["delayed"] = later
        else:
            raise HPNInputError(f"{case}: no timing, and the image of {later[0].label} ({later[0].id}: "
                                f"{evidence(later[0]).text()}) tells neither venous nor delayed against the arterial "
                                f"{arterial.label} ({evidence(arterial).text()}); name it in a phase map "
                                f"(--phase-map)")
    elif len(later) == 2:
        high, low = (evidence(c).enhanced_share for c in later)
        if high < VENOUS_RATIO * low:
            raise HPNInputError(f"{case}: no timing, and the images of {later[0].label} ({later[0].id}) and "
                                f"{later[1].label} ({later[1].id}) do not tell which is venous "
                                f"({evidence(later[0]).text()}; {evidence(later[1]).text()}); name them in a phase "
                                f"map (--phase-map)")
        named["venous"], named["delayed"] = [later[0]], [later[1]]
    elif later:
        raise HPNInputError(f"{case}: no timing and {len(later) + 1} contrast-enhanced series "
                            f"({', '.join(c.label for c in enhanced)}); the image alone cannot order them; name "
                            f"the phases in a phase map (--phase-map)")
    return named, notes


def _assignment(study: Study, phases: Sequence[str], named: Mapping[str, list], notes: Mapping[str, str],
                tag: str | None) -> PhaseAssignment:
    """One candidate per wanted phase, or one HPNInputError line (none, or several acquisitions / series)."""
    chosen, reasons = {}, {}
    for phase in phases:
        found = named.get(phase, [])
        if found and isinstance(found[0], list):  # several acquisitions in this phase's window
            shown = "; ".join(" + ".join(f"{c.label} ({c.id}) {_clock(c.time(tag))}" for c in g) for g in found)
            raise HPNInputError(f"{study.folder}: {len(found)} acquisitions could be the {phase} phase ({shown}); "
                                f"name the phases in a phase map (--phase-map)")
        if not found:
            seen = "; ".join(f"{c.label} ({c.id}): {notes[c.id]}" for c in study.candidates)
            raise HPNInputError(f"{study.folder}: no {phase} series found (candidates: {seen})")
        if len(found) > 1:
            shown = " and ".join(f"{c.label} ({c.id}, {c.slice_thickness} mm)" for c in found)
            raise HPNInputError(f"{study.folder}: {shown} are both the {phase} acquisition "
                                f"({notes[found[0].id]}); choose one in a phase map (--phase-map)")
        candidate = found[0]
        chosen[phase] = candidate
        reasons[phase] = f"{candidate.label}: {phase}, {notes[candidate.id]}" + _description_note(candidate, phase)
    unused = {}
    for c in study.candidates:
        if c not in chosen.values():
            phase = next((p for p, found in named.items() if c in [x for g in found for x in
                                                                    (g if isinstance(g, list) else [g])]), None)
            unused[c.id] = f"{c.label}: " + (f"{phase}, not a phase of the dataset" if phase else "not needed") + \
                f"; {notes.get(c.id, '')}"
    return PhaseAssignment(study.case, chosen, reasons, unused, "automatic")


def _description_note(candidate: Candidate, phase: str) -> str:
    said = _description_phase(candidate.description)
    return f"; its description suggests {said} (descriptions do not decide)" if said and said != phase else ""


def check_named_order(named: Mapping[str, Candidate], where: str) -> None:
    """HPNInputError when two phases given by name were acquired in the wrong order (by the first timing tag both
    have): e.g. the series called venous acquired before the one called arterial."""
    known = [(KNOWN_PHASES.index(phase), phase, c) for phase, c in named.items() if phase in KNOWN_PHASES]
    for index_a, phase_a, a in known:
        for index_b, phase_b, b in known:
            if index_a >= index_b:
                continue
            tag = next((tag for tag, _ in TIME_TAGS if a.time(tag) is not None and b.time(tag) is not None), None)
            if tag and (a.time(tag) - b.time(tag)).total_seconds() > SAME_ACQUISITION_S:
                raise HPNInputError(f"{where}: the {phase_b} series {b.label} ({b.id}) was acquired at "
                                    f"{_clock(b.time(tag))}, before the {phase_a} series {a.label} ({a.id}) at "
                                    f"{_clock(a.time(tag))} ({tag}); swapped phases?")


def check_series_folders_order(phase_inputs: Mapping[str, Path]) -> None:
    """:func:`check_named_order` for phases given as DICOM series folders (other inputs carry no timing)."""
    named = {}
    for phase, path in phase_inputs.items():
        if Path(path).is_dir():
            study = scan_study(Path(path))
            if len(study.candidates) == 1:
                named[phase] = study.candidates[0]
    where = ", ".join(f"{phase}={phase_inputs[phase]}" for phase in named)
    check_named_order(named, where)


# ------------------------------------------------------------------------------------------------- phase maps --
def phase_map_rows(study: Study, assignment: PhaseAssignment | None, error: str | None = None) -> list[dict]:
    """Rows of the phase map for one case: every candidate and set-aside series, the phase where assigned."""
    rows = []
    chosen = {c.id: phase for phase, c in (assignment.phases.items() if assignment else ())}
    for c in study.candidates:
        if c.id in chosen:
            reason = assignment.reasons[chosen[c.id]]
        elif assignment is not None:
            reason = assignment.unused.get(c.id, "not needed")
        else:
            reason = f"{c.label}: {error}" if error else c.label
        rows.append({"case": study.case, "phase": chosen.get(c.id, ""), "series": c.id, "reason": reason})
    for s in study.set_aside:
        rows.append({"case": study.case, "phase": "", "series": s.series_uid,
                     "reason": f"set aside: {s.reason} ('{s.description}', {s.files} file(s))"})
    return rows


def phase_map_text(rows: Iterable[Mapping[str, str]]) -> str:
    """The rows as CSV text with the header :data:`PHASE_MAP_COLUMNS`."""
    stream = io.StringIO()
    writer = csv.DictWriter(stream, PHASE_MAP_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return stream.getvalue()


def read_phase_map(path: Path) -> dict[str, dict[str, str]]:
    """case -> phase -> series id of a phase map (rows with an empty phase left out); HPNInputError naming the file
    and the line for a missing column or a phase given twice."""
    path = Path(path)
    if not path.is_file():
        raise HPNInputError(f"{path}: phase map is missing")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError):
        raise HPNInputError(f"{path}: phase map is unreadable (expected CSV text)") from None
    reader = csv.DictReader(io.StringIO(text))
    missing = [column for column in ("case", "phase", "series") if column not in (reader.fieldnames or [])]
    if missing:
        raise HPNInputError(f"{path}: phase map lacks the column(s) {', '.join(missing)} (header: "
                            f"{','.join(PHASE_MAP_COLUMNS)})")
    cases: dict[str, dict[str, str]] = {}
    for line, row in enumerate(reader, start=2):
        case, phase, series = ((row.get(key) or "").strip() for key in ("case", "phase", "series"))
        if not phase:
            continue
        if not case or not series:
            raise HPNInputError(f"{path}: line {line}: phase {phase!r} without case or series")
        if phase in cases.setdefault(case, {}):
            raise HPNInputError(f"{path}: line {line}: case {case} has a second {phase} series")
        cases[case][phase] = series
    return cases


def assignment_from_map(study: Study, phases: Sequence[str], chosen: Mapping[str, str], map_path: Path
                        ) -> PhaseAssignment:
    """The phase map's assignment of one case, checked: every phase once, known series that are candidates, and
    the timing of the named phases in order (:func:`check_named_order`)."""
    where = f"{map_path}: case {study.case}"
    extra = sorted(set(chosen) - set(phases))
    if extra:
        raise HPNInputError(f"{where}: phase {extra[0]!r} is not one of the dataset's phases ({', '.join(phases)})")
    absent = [phase for phase in phases if phase not in chosen]
    if absent:
        raise HPNInputError(f"{where}: no series given for the {absent[0]} phase")
    named = {}
    for phase in phases:
        candidate = study.candidate(chosen[phase])
        if candidate is None:
            aside = next((s for s in study.set_aside if s.series_uid == chosen[phase]), None)
            problem = f"is set aside ({aside.reason})" if aside else "is not a series of the case"
            raise HPNInputError(f"{where}: the {phase} series {chosen[phase]} {problem}")
        named[phase] = candidate
    if len({c.id for c in named.values()}) < len(named):
        raise HPNInputError(f"{where}: one series is given for two phases")
    check_named_order(named, where)
    reasons = {phase: f"{c.label}: {phase}, as the phase map {map_path} says" for phase, c in named.items()}
    unused = {c.id: f"{c.label}: not in the phase map" for c in study.candidates if c not in named.values()}
    return PhaseAssignment(study.case, named, reasons, unused, str(map_path))


# ------------------------------------------------------------------------------------------------ segmentation --
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
            if not _is_dicom_file(path):
                continue
            try:
                header = pydicom.dcmread(path, stop_before_pixels=True)
            except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, AttributeError):
                raise HPNInputError(f"{path}: unreadable DICOM file beside the study folders") from None
            if _text(header, "SOPClassUID") != SEG_SOP_CLASS:
                continue
            referenced = [str(item.SeriesInstanceUID) for item in header.get("ReferencedSeriesSequence", [])]
            folders = {owner[uid] for uid in referenced if uid in owner}
            if len(folders) != 1:
                raise HPNInputError(f"{path}: the Segmentation beside the study folders references "
                                    f"{'series of several of them' if folders else 'none of their series'} "
                                    f"({', '.join(referenced) or 'no ReferencedSeriesSequence'})")
            found.setdefault(folders.pop(), []).append(path)
    return found


# ----------------------------------------------------------------------------------------- cases from studies --
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
