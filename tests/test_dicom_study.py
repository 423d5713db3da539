"""DICOM studies in, HPN datasets out: series grouped and set aside, phases identified (timing, contrast tags, the
image), the phase map written and obeyed, DICOM-SEG labels read; every study layout converts to the same dataset as
its NIfTI case folders. Studies are written here from phantoms (pydicom, highdicom); the real DICOM-SEG under
../shared/data/real is read where present."""
from __future__ import annotations

import copy
import csv
import datetime as dt
import io
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import FileDataset
from pydicom.uid import XRayRadiationDoseSRStorage, generate_uid

from conftest import ct_slice_dataset, dicom_file_dataset
from nnunet_hpn.cli import main
from nnunet_hpn.errors import HPNInputError
from nnunet_hpn.io import dicom_study
from nnunet_hpn.io.dicom_seg import dicom_seg_for
from nnunet_hpn.phantom import generate_phantom_case, phantom_image
from nnunet_hpn.pipeline.convert import convert_cases

SHAPE, SPACING = (20, 48, 48), (2.5, 3.0, 3.0)
ALL_PHASES = ("noncontrast", "arterial", "venous", "delayed")
#: acquisition times of the phases (s after 10:00:00): arterial 35 s after injection, venous 70 s, delayed 240 s
TIMES = {"noncontrast": 0, "arterial": 95, "venous": 130, "delayed": 300}
REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


def _phantom(index: int):
    return generate_phantom_case(11, index, SHAPE, SPACING, phases=ALL_PHASES)


def _clock(seconds: float) -> str:
    return (dt.datetime(2026, 1, 1, 10) + dt.timedelta(seconds=seconds)).strftime("%H%M%S")


def _ct_slices(volume: np.ndarray, study_uid: str, series_uid: str, description: str, tags: dict,
               orientation: str = "axial") -> list[FileDataset]:
    """One CT image per slice of ``volume`` (z, y, x, HU) on the phantom grid (:func:`phantom_image`); ``tags``
    set on every slice (None removes a tag). ``orientation`` "coronal": the volume's y-planes as coronal slices."""
    image = phantom_image(volume, SPACING)
    frame_uid = "1.2.826.0.1.3680043.8.498.99"
    if orientation == "coronal":
        planes = [volume[:, y, :] for y in range(volume.shape[1])]
        iop, positions = [1, 0, 0, 0, 0, -1], [image.TransformIndexToPhysicalPoint((0, y, volume.shape[0] - 1))
                                               for y in range(volume.shape[1])]
        planes = [p[::-1] for p in planes]
        pixel_spacing = [SPACING[0], SPACING[2]]
    else:
        planes = list(volume)
        iop, positions = [1, 0, 0, 0, 1, 0], [image.TransformIndexToPhysicalPoint((0, 0, z))
                                               for z in range(volume.shape[0])]
        pixel_spacing = [SPACING[1], SPACING[2]]
    series_number, slices = tags.pop("_number", 1), []
    for index, (plane, position) in enumerate(zip(planes, positions)):
        ds = ct_slice_dataset(plane, position=position, orientation=iop, pixel_spacing=pixel_spacing,
                              thickness=SPACING[0], study_uid=study_uid, series_uid=series_uid, frame_uid=frame_uid,
                              sop_uid=generate_uid(), instance_number=index + 1, patient=("Phantom^Study", "HPN-STUDY"))
        ds.Manufacturer, ds.PatientSex = "phantom", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID = "20260101", "095500", "1"
        ds.SeriesDescription, ds.SeriesNumber = description, series_number
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        for keyword, value in tags.items():
            if value is None:
                if keyword in ds:
                    delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        slices.append(ds)
    return slices


def _series(case, phase: str, study_uid: str, description: str | None = None, **tags) -> list[FileDataset]:
    """The slices of one phase of a phantom case, acquired at TIMES[phase], contrast agent unless non-contrast."""
    base = {"AcquisitionTime": _clock(TIMES[phase]), "ContentTime": _clock(TIMES[phase] + 5),
            "SeriesTime": _clock(TIMES[phase] + 20), "AcquisitionNumber": 1,
            "_number": ALL_PHASES.index(phase) + 2}
    if phase != "noncontrast":
        base.update(ContrastBolusAgent="Iohexol", ContrastBolusStartTime=_clock(60))
    base.update(tags)
    return _ct_slices(case.images[phase], study_uid, generate_uid(), description or phase.upper(), base)


def _localiser(study_uid: str) -> list[FileDataset]:
    slices = _ct_slices(np.full((1, 48, 48), -1000, np.int16), study_uid, generate_uid(), "TOPOGRAM", {})
    slices[0].ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    return slices


def _dose_report(study_uid: str) -> list[FileDataset]:
    """A radiation dose structured report (no pixels): what scanners add to a study."""
    ds = dicom_file_dataset(XRayRadiationDoseSRStorage, generate_uid())
    ds.Modality, ds.StudyInstanceUID, ds.SeriesInstanceUID = "SR", study_uid, generate_uid()
    ds.SeriesDescription = "Dose Report"
    return [ds]


def _derived(case, study_uid: str) -> list[FileDataset]:
    """A thick-slab MIP of the arterial phase: DERIVED / SECONDARY images."""
    slices = _ct_slices(case.images["arterial"][::4], study_uid, generate_uid(), "MIP 10mm", {"_number": 8})
    for ds in slices:
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL", "MIP"]
    return slices


def _reformat(case, study_uid: str) -> list[FileDataset]:
    return _ct_slices(case.images["venous"], study_uid, generate_uid(), "COR REFORMAT", {"_number": 9},
                      orientation="coronal")


def _segmentation(case, reference_slices: list[FileDataset], scratch: Path) -> pydicom.Dataset:
    """The DICOM-SEG of the case's label on the reference series (the package's own writer)."""
    folder = scratch / f"seg_source_{random.random():.9f}"
    folder.mkdir(parents=True)
    for index, ds in enumerate(reference_slices):
        ds.save_as(folder / f"{index:03d}.dcm", enforce_file_format=True)
    label = phantom_image(case.label, SPACING)
    seg = dicom_seg_for(label, folder)
    shutil.rmtree(folder)
    return seg


def _write_shuffled(datasets: list[pydicom.Dataset], folder: Path, rng: random.Random) -> None:
    """Every dataset under ``folder`` in a random nested layout with meaningless names, in shuffled order."""
    datasets = list(datasets)
    rng.shuffle(datasets)
    for ds in datasets:
        sub = folder / f"d{rng.randrange(3)}" / f"x{rng.randrange(2)}"
        sub.mkdir(parents=True, exist_ok=True)
        ds.save_as(sub / f"IM{rng.randrange(10**8):08d}", enforce_file_format=True)


def _nifti_case(case, folder: Path, phases=("arterial", "venous")) -> None:
    folder.mkdir(parents=True)
    for phase in phases:
        sitk.WriteImage(phantom_image(case.images[phase], SPACING), str(folder / f"{phase}.nii.gz"))
    sitk.WriteImage(phantom_image(case.label, SPACING), str(folder / "label.nii.gz"))


def _study(case, folder: Path, layout: str, scratch: Path, seed: int) -> None:
    """One study folder of ``layout``: the ways studies arrive (see the test ids)."""
    study_uid = generate_uid()
    rng = random.Random(seed)
    extra: list[pydicom.Dataset] = []
    if layout == "four_series":  # NC, A, V, D, a localiser and a coronal reformat
        series = {phase: _series(case, phase, study_uid) for phase in ALL_PHASES}
        extra = _localiser(study_uid) + _reformat(case, study_uid) + _dose_report(study_uid) + \
            _derived(case, study_uid)
    elif layout == "three_series":
        series = {phase: _series(case, phase, study_uid) for phase in ("noncontrast", "arterial", "venous")}
    elif layout == "two_acquisitions":  # arterial and venous in one series, AcquisitionNumber 1 and 2
        shared = generate_uid()
        series = {phase: _series(case, phase, study_uid, "ABDOMEN DUAL", AcquisitionNumber=number)
                  for number, phase in ((1, "arterial"), (2, "venous"))}
        for slices in series.values():
            for ds in slices:
                ds.SeriesInstanceUID, ds.SeriesNumber = shared, 3
    elif layout == "missing_timing":  # no time tags at all, no contrast tags: the image decides
        gone = dict(AcquisitionTime=None, ContentTime=None, SeriesTime=None, ContrastBolusAgent=None,
                    ContrastBolusStartTime=None)
        series = {phase: _series(case, phase, study_uid, f"SERIES {i}", **gone)
                  for i, phase in enumerate(("noncontrast", "arterial", "venous"))}
    elif layout == "swapped_descriptions":
        series = {"arterial": _series(case, "arterial", study_uid, "PORTAL VENOUS 70s"),
                  "venous": _series(case, "venous", study_uid, "ARTERIAL PHASE")}
    else:
        raise ValueError(layout)
    seg = _segmentation(case, series["arterial"], scratch)
    _write_shuffled([ds for slices in series.values() for ds in slices] + extra + [seg], folder, rng)


LAYOUTS = ("four_series", "three_series", "two_acquisitions", "missing_timing", "swapped_descriptions")


def _dataset_arrays(dataset: Path) -> dict[str, tuple]:
    out = {}
    for path in sorted(dataset.rglob("*.nii.gz")):
        image = sitk.ReadImage(str(path))
        out[str(path.relative_to(dataset))] = (sitk.GetArrayFromImage(image), image)
    return out


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> dict:
    """One phantom per layout as a study folder and as NIfTI case folders."""
    root = tmp_path_factory.mktemp("studies")
    cases = {layout: _phantom(index) for index, layout in enumerate(LAYOUTS)}
    for seed, (layout, case) in enumerate(cases.items()):
        _study(case, root / "dicom" / layout, layout, root / "scratch", seed)
        _nifti_case(case, root / "nifti" / layout)
    return {"root": root, "cases": cases}


def test_every_study_layout_converts_to_the_dataset_of_its_nifti_case_folders(studies, tmp_path: Path) -> None:
    root = studies["root"]
    from_dicom = convert_cases(root / "dicom", 501, "Studies", raw_root=tmp_path / "a", progress=False)
    from_nifti = convert_cases(root / "nifti", 501, "Studies", raw_root=tmp_path / "b", progress=False)
    dicom_files, nifti_files = _dataset_arrays(from_dicom), _dataset_arrays(from_nifti)
    assert sorted(dicom_files) == sorted(nifti_files)
    assert len([name for name in nifti_files if name.startswith("labelsTr")]) == len(LAYOUTS)
    for name, (voxels, image) in nifti_files.items():
        dicom_voxels, dicom_image = dicom_files[name]
        assert np.array_equal(dicom_voxels, voxels), name
        assert dicom_voxels.dtype == voxels.dtype, name
        assert np.allclose(dicom_image.GetOrigin(), image.GetOrigin(), atol=1e-4), name
        assert np.allclose(dicom_image.GetSpacing(), image.GetSpacing(), atol=1e-4), name
        assert np.allclose(dicom_image.GetDirection(), image.GetDirection(), atol=1e-6), name
    assert json.loads((from_dicom / "dataset.json").read_text())["labels"] == \
        json.loads((from_nifti / "dataset.json").read_text())["labels"]
    # which series became which phase and why, and the phase map for review
    record = json.loads((from_dicom / "dicom_study" / "four_series.json").read_text())
    assert set(record["phases"]) == {"arterial", "venous"}
    assert record["phases"]["arterial"]["description"] == "ARTERIAL"
    assert "AcquisitionTime" in record["phases"]["arterial"]["reason"]
    reasons = " ".join(entry["reason"] for entry in record["not_used"].values())
    assert "localiser" in reasons and "non-axial reformat" in reasons and "noncontrast" in reasons
    assert "delayed" in reasons
    swapped = json.loads((from_dicom / "dicom_study" / "swapped_descriptions.json").read_text())
    assert swapped["phases"]["arterial"]["description"] == "PORTAL VENOUS 70s"
    assert "description suggests venous" in swapped["phases"]["arterial"]["reason"]
    untimed = json.loads((from_dicom / "dicom_study" / "missing_timing.json").read_text())
    assert "image:" in untimed["phases"]["arterial"]["reason"]
    rows = list(csv.DictReader(io.StringIO((from_dicom / "dicom_study" / "phase_map.csv").read_text())))
    assert [row["phase"] for row in rows if row["case"] == "two_acquisitions"] == ["arterial", "venous"]
    assert all("#" in row["series"] for row in rows if row["case"] == "two_acquisitions")


def test_scan_describes_candidates_and_sets_aside_with_reasons(studies) -> None:
    study = dicom_study.scan_study(studies["root"] / "dicom" / "four_series")
    assert [c.description for c in study.candidates] == ["NONCONTRAST", "ARTERIAL", "VENOUS", "DELAYED"]
    arterial = study.candidates[1]
    assert arterial.contrast_agent == "Iohexol" and arterial.slice_thickness == SPACING[0]
    assert len(arterial.files) == SHAPE[0]
    assert arterial.coverage_mm[1] - arterial.coverage_mm[0] == pytest.approx((SHAPE[0] - 1) * SPACING[0])
    assert arterial.time("AcquisitionTime").strftime("%H:%M:%S") == "10:01:35"
    reasons = sorted(s.reason.split(" (")[0] for s in study.set_aside)
    assert reasons == ["derived or secondary image", "localiser", "non-axial reformat", "radiation dose report"]
    assert len(study.segmentations) == 1


def _expect_error(capsys, argv: list[str], *fragments: str) -> str:
    assert main(argv) == 1
    message = capsys.readouterr().err
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_ambiguous_and_contradicting_studies_are_one_line_per_case_naming_the_series(
        studies, tmp_path: Path, capsys) -> None:
    case = studies["cases"]["four_series"]
    bad = tmp_path / "bad"
    uid = generate_uid
    # two reconstructions of the arterial acquisition
    study = uid()
    thick, thin = _series(case, "arterial", study, "ART 5mm"), _series(case, "arterial", study, "ART 1mm")
    _write_shuffled(thick + thin + _series(case, "venous", study), bad / "c1_two_recons", random.Random(1))
    # AcquisitionTime: arterial first; ContentTime: venous first
    study = uid()
    _write_shuffled(_series(case, "arterial", study, ContentTime=_clock(400))
                    + _series(case, "venous", study), bad / "c2_timing_contradicts", random.Random(2))
    # only SeriesTime, and it puts the venous scan first: the image says the opposite
    study = uid()
    gone = dict(AcquisitionTime=None, ContentTime=None)
    _write_shuffled(_series(case, "arterial", study, SeriesTime=_clock(500), **gone)
                    + _series(case, "venous", study, **gone), bad / "c3_image_contradicts", random.Random(3))
    raw = tmp_path / "raw"
    message = _expect_error(capsys, ["convert", str(bad), "-d", "502", "--name", "Bad", "--raw-root", str(raw)])
    lines = [line for line in message.strip().splitlines()]
    assert len(lines) == 3, message
    assert "c1_two_recons" in lines[0] and "'ART 5mm'" in lines[0] and "'ART 1mm'" in lines[0]
    assert thick[0].SeriesInstanceUID in lines[0] and thin[0].SeriesInstanceUID in lines[0]
    assert "c2_timing_contradicts" in lines[1] and "ContentTime" in lines[1] and "contradict" in lines[1]
    assert "c3_image_contradicts" in lines[2] and "SeriesTime" in lines[2] and "image" in lines[2]
    assert not raw.exists() or not any(raw.iterdir())


def test_phase_map_is_written_for_review_and_edited_is_obeyed(studies, tmp_path: Path, capsys) -> None:
    case = studies["cases"]["three_series"]
    cases = tmp_path / "cases"
    study = generate_uid()
    thick = _series(case, "arterial", study, "ART 5mm")
    brighter = case.images["arterial"] + np.int16(7)  # a second reconstruction that differs
    thin = _ct_slices(brighter, study, generate_uid(), "ART 1mm",
                      {"AcquisitionTime": _clock(TIMES["arterial"]), "ContrastBolusAgent": "Iohexol",
                       "_number": 7})
    venous = _series(case, "venous", study)
    _write_shuffled(thick + thin + venous, cases / "p1", random.Random(5))
    shutil.copytree(studies["root"] / "dicom" / "three_series", cases / "p2")
    review = tmp_path / "review.csv"
    message = _expect_error(capsys, ["phase-map", str(cases), "-o", str(review)], "p1: ", "ART 1mm")
    lines = message.strip().splitlines()
    assert len(lines) == 2 and "p1: " in lines[0] and "1 case(s) need a decision" in lines[1], message
    rows = list(csv.DictReader(io.StringIO(review.read_text())))
    assert {row["case"] for row in rows} == {"p1", "p2"}
    assert [row["phase"] for row in rows if row["case"] == "p1"] == ["", "", ""]
    assert sorted(row["phase"] for row in rows if row["case"] == "p2") == ["", "arterial", "venous"]
    # the user picks the thin reconstruction as the arterial phase of p1
    for row in rows:
        if row["series"] == thin[0].SeriesInstanceUID:
            row["phase"] = "arterial"
        if row["series"] == venous[0].SeriesInstanceUID:
            row["phase"] = "venous"
    review.write_text(dicom_study.phase_map_text(rows))
    assert main(["convert", str(cases), "-d", "503", "--name", "Mapped", "--raw-root", str(tmp_path / "raw"),
                 "--phase-map", str(review)]) == 0
    dataset = next((tmp_path / "raw").glob("Dataset503_*"))
    arterial = sitk.GetArrayFromImage(sitk.ReadImage(str(dataset / "imagesTs" / "p1_0000.nii.gz")))
    assert np.array_equal(arterial, brighter)
    record = json.loads((dataset / "dicom_study" / "p1.json").read_text())
    assert record["phases"]["arterial"]["series"] == thin[0].SeriesInstanceUID
    assert "phase map" in record["phases"]["arterial"]["reason"]
    # swapped by name: the map's venous series was acquired before its arterial one -> refused with the times
    for row in rows:
        if row["case"] == "p1" and row["phase"]:
            row["phase"] = {"arterial": "venous", "venous": "arterial"}[row["phase"]]
    review.write_text(dicom_study.phase_map_text(rows))
    _expect_error(capsys, ["convert", str(cases), "-d", "504", "--name", "Swapped", "--raw-root",
                           str(tmp_path / "raw"), "--phase-map", str(review)],
                  "p1", "10:01:35", "10:02:10", "swapped phases?")
    assert not list((tmp_path / "raw").glob("Dataset504_*"))


def test_segmentation_outside_the_volume_or_of_another_series_is_one_line(studies, tmp_path: Path) -> None:
    case = studies["cases"]["three_series"]
    study = generate_uid()
    arterial, venous = _series(case, "arterial", study), _series(case, "venous", study)
    seg = _segmentation(case, arterial, tmp_path / "scratch")
    # frames without instance references are placed by their positions
    by_position = copy.deepcopy(seg)
    for frame in by_position.PerFrameFunctionalGroupsSequence:
        del frame.DerivationImageSequence
    _write_shuffled(arterial + venous + [by_position], tmp_path / "positions" / "c", random.Random(6))
    staged = dicom_study.StagedStudies([tmp_path / "positions" / "c"], ("arterial", "venous"), "arterial")
    label = sitk.ReadImage(str(staged.case_dirs[0] / "label.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(label), case.label)
    staged.cleanup()
    # a frame whose instance is not in the series and whose position lies above the volume
    moved = copy.deepcopy(seg)
    frame = moved.PerFrameFunctionalGroupsSequence[0]
    frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID = generate_uid()
    frame.PlanePositionSequence[0].ImagePositionPatient[2] = 500.0
    _write_shuffled(arterial + venous + [moved], tmp_path / "outside" / "c", random.Random(7))
    with pytest.raises(HPNInputError, match=r"frame 1 lies outside the volume of series 3 'ARTERIAL'"):
        dicom_study.StagedStudies([tmp_path / "outside" / "c"], ("arterial", "venous"), "arterial")
    # a SEG referencing a series that is not in the case
    other = _segmentation(case, _series(case, "arterial", generate_uid()), tmp_path / "scratch")
    _write_shuffled(arterial + venous + [other], tmp_path / "foreign" / "c", random.Random(8))
    with pytest.raises(HPNInputError, match=r"references a series not in the case"):
        dicom_study.resolve_studies([tmp_path / "foreign" / "c"], ("arterial", "venous"), "arterial")


def test_segmentation_beside_its_study_folder_is_the_label_of_that_study(studies, tmp_path: Path) -> None:
    """A SEG lying beside the study folders (not in them) labels the study whose series it references; one that
    references none of them is one line and nothing is written."""
    case = studies["cases"]["three_series"]
    study = generate_uid()
    arterial, venous = _series(case, "arterial", study), _series(case, "venous", study)
    _write_shuffled(arterial + venous, tmp_path / "in" / "c", random.Random(9))
    _segmentation(case, arterial, tmp_path / "scratch").save_as(tmp_path / "in" / "c_seg.dcm",
                                                                enforce_file_format=True)
    (tmp_path / "in" / "notes.txt").write_text("not DICOM: left alone")
    assert dicom_study.scan_study(tmp_path / "in" / "c").segmentations == []
    dataset = convert_cases(tmp_path / "in", 505, "Beside", raw_root=tmp_path / "raw", progress=False)
    label = sitk.ReadImage(str(dataset / "labelsTr" / "c.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(label), case.label)
    record = json.loads((dataset / "dicom_study" / "c.json").read_text())
    assert record["segmentations"] == [str(tmp_path / "in" / "c_seg.dcm")]
    # a SEG beside them of a series in none of the study folders
    _write_shuffled(arterial + venous, tmp_path / "stray" / "c", random.Random(10))
    other = _segmentation(case, _series(case, "arterial", generate_uid()), tmp_path / "scratch")
    other.save_as(tmp_path / "stray" / "other_seg.dcm", enforce_file_format=True)
    with pytest.raises(HPNInputError, match=r"other_seg\.dcm: the Segmentation beside the study folders references "
                                            r"none of their series"):
        convert_cases(tmp_path / "stray", 506, "Stray", raw_root=tmp_path / "raw2", progress=False)
    assert not (tmp_path / "raw2").exists() or not list((tmp_path / "raw2").iterdir())


def test_named_dicom_series_folders_acquired_in_the_wrong_order_are_refused(studies, tmp_path: Path) -> None:
    case = studies["cases"]["three_series"]
    study = generate_uid()
    for phase, folder in (("arterial", "called_venous"), ("venous", "called_arterial")):
        (tmp_path / folder).mkdir()
        for index, ds in enumerate(_series(case, phase, study)):
            ds.save_as(tmp_path / folder / f"{index}.dcm", enforce_file_format=True)
    with pytest.raises(HPNInputError, match=r"the venous series series 3 'ARTERIAL' .* acquired at 10:01:35, "
                                            r"before the arterial series series 4 'VENOUS' .* at 10:02:10"):
        dicom_study.check_series_folders_order({"arterial": tmp_path / "called_arterial",
                                                "venous": tmp_path / "called_venous"})


def test_image_evidence_orders_the_phantom_phases() -> None:
    for index in range(3):
        case = _phantom(20 + index)
        evidence = {phase: dicom_study.image_evidence(phantom_image(case.images[phase], SPACING))
                    for phase in ALL_PHASES}
        enhanced = max(e.enhanced_share for e in evidence.values())
        assert evidence["noncontrast"].enhanced_share < dicom_study.phases.UNENHANCED_BELOW * enhanced
        baseline = min(e.arterial_share for e in evidence.values())  # bone, in every phase alike
        arterial = evidence["arterial"].arterial_share - baseline
        others = max(evidence[p].arterial_share for p in ("venous", "delayed")) - baseline
        assert arterial >= dicom_study.phases.ARTERIAL_RATIO * others
        assert arterial - others >= dicom_study.phases.ARTERIAL_MARGIN
        assert evidence["venous"].enhanced_share >= dicom_study.phases.VENOUS_RATIO * evidence["delayed"].enhanced_share


@pytest.mark.skipif(not (REAL / "dcmqi_ct3slice" / "liver.dcm").is_file(),
                    reason="real DICOM-SEG ../shared/data/real/dcmqi_ct3slice absent")
def test_real_dicom_seg_reads_into_the_label_map_of_its_nrrd_mask(tmp_path: Path) -> None:
    folder = tmp_path / "study"
    folder.mkdir()
    for path in (REAL / "dcmqi_ct3slice" / "ct-3slice").iterdir():
        (folder / f"z{path.name}").symlink_to(path)
    (folder / "seg.dcm").symlink_to(REAL / "dcmqi_ct3slice" / "liver.dcm")
    study = dicom_study.scan_study(folder)
    assert len(study.candidates) == 1 and len(study.segmentations) == 1
    ct = study.candidates[0]
    image = dicom_study.read_candidate(ct)
    with pytest.raises(HPNInputError, match=r"segment 1 'Liver' .* maps to none of the labels"):
        dicom_study.read_segmentation(study.segmentations[0], ct, image, dicom_study.dataset_labels())
    label = dicom_study.read_segmentation(study.segmentations[0], ct, image, {"background": 0, "liver": 1})
    truth = sitk.ReadImage(str(REAL / "dcmqi_ct3slice" / "liver_seg.nrrd"))
    assert np.array_equal(sitk.GetArrayFromImage(label), sitk.GetArrayFromImage(truth).astype(np.uint8))
    assert np.allclose(label.GetOrigin(), truth.GetOrigin(), atol=1e-3)
    assert sitk.GetArrayFromImage(label).sum() > 0
    mapped = dicom_study.read_segmentation(study.segmentations[0], ct, image, dicom_study.dataset_labels(),
                                           {"Liver": "pancreas"})
    assert np.array_equal(sitk.GetArrayFromImage(mapped), sitk.GetArrayFromImage(label))


@pytest.mark.skipif(not (REAL / "tcia_cc_tumor_heterogeneity_ccth_a01" / "dicom_subset_pancreas_level").is_dir(),
                    reason="real CT series ../shared/data/real/tcia_cc_tumor_heterogeneity_ccth_a01 absent")
def test_real_ct_series_is_one_described_candidate() -> None:
    study = dicom_study.scan_study(REAL / "tcia_cc_tumor_heterogeneity_ccth_a01" / "dicom_subset_pancreas_level")
    assert len(study.candidates) == 1 and not study.set_aside
    ct = study.candidates[0]
    assert len(ct.files) == 24 and ct.slice_thickness == pytest.approx(2.5) and ct.contrast_agent == ""
    assert ct.coverage_mm == pytest.approx((331.25, 388.75))
    assert ct.time("AcquisitionTime") is not None


def test_predict_reads_a_study_folder_as_its_nifti_case_folder(studies, predict_model, tmp_path: Path) -> None:
    in_dir = tmp_path / "cases"
    shutil.copytree(studies["root"] / "dicom" / "four_series", in_dir / "study")
    shutil.copytree(studies["root"] / "nifti" / "four_series", in_dir / "nifti")
    out = tmp_path / "pred"
    assert main(["predict", "-i", str(in_dir), "-m", str(predict_model), "-o", str(out), "--disable-tta",
                 "--registration", "none"]) == 0
    study, nifti = (sitk.ReadImage(str(out / f"{case}.nii.gz")) for case in ("study", "nifti"))
    assert np.allclose(study.GetOrigin(), nifti.GetOrigin(), atol=1e-4) and study.GetSize() == nifti.GetSize()
    # one model, the same voxels: a 3-iteration model's near-tied logits may flip a handful of voxels
    assert np.mean(sitk.GetArrayFromImage(study) == sitk.GetArrayFromImage(nifti)) > 0.99
    record = json.loads((out / "registration_qc" / "study.json").read_text())["dicom_study"]
    assert record["phases"]["arterial"]["description"] == "ARTERIAL"
    assert record["phases"]["venous"]["description"] == "VENOUS"
    assert not list(out.glob("*.dcm")) and sorted(p.name for p in out.glob("*.nii.gz")) == ["nifti.nii.gz",
                                                                                          "study.nii.gz"]


def test_predict_writes_a_dicom_seg_of_a_study_on_its_reference_series(studies, predict_model, tmp_path: Path
                                                                        ) -> None:
    """``predict -i`` of a study folder with ``--output-format dicom-seg``: the Segmentation references the series
    identified as the reference phase (arterial) and reads back as the NIfTI output, voxel for voxel."""
    in_dir = tmp_path / "cases"
    shutil.copytree(studies["root"] / "dicom" / "three_series", in_dir / "study")
    out = tmp_path / "pred"
    assert main(["predict", "-i", str(in_dir), "-m", str(predict_model), "-o", str(out), "--disable-tta",
                 "--registration", "none", "--output-format", "dicom-seg"]) == 0
    study = dicom_study.scan_study(in_dir / "study")
    arterial = next(c for c in study.candidates if c.description == "ARTERIAL")
    seg_file = out / "study.seg.dcm"
    assert pydicom.dcmread(seg_file).ReferencedSeriesSequence[0].SeriesInstanceUID == arterial.series_uid
    nifti = sitk.ReadImage(str(out / "study.nii.gz"))
    names = {name: value for name, value in dicom_study.dataset_labels().items()}
    read_back = dicom_study.read_segmentation(seg_file, arterial, dicom_study.read_candidate(arterial), names)
    assert np.array_equal(sitk.GetArrayFromImage(read_back), sitk.GetArrayFromImage(nifti))


@pytest.mark.skipif(not (REAL / "totalsegmentator" / "example_ct_dicom").is_dir(),
                    reason="real CT series ../shared/data/real/totalsegmentator/example_ct_dicom absent")
def test_real_series_without_series_uid_is_read_by_folder_with_its_contrast_timing() -> None:
    study = dicom_study.scan_study(REAL / "totalsegmentator" / "example_ct_dicom")
    assert len(study.candidates) == 1 and not study.set_aside
    ct = study.candidates[0]
    assert ct.id == "folder:." and ct.contrast_agent == "APPLIED" and ct.slice_thickness == pytest.approx(3.0)
    delay = (ct.time("AcquisitionTime") - ct.bolus_start).total_seconds()
    assert delay == pytest.approx(95.76, abs=0.01)  # portal-venous timing
    assert sitk.GetArrayViewFromImage(dicom_study.read_candidate(ct)).shape == (20, 512, 512)  # JPEG 2000, via GDCM


def test_register_treats_a_study_as_its_nifti_case_folder(studies, tmp_path: Path) -> None:
    for kind in ("dicom", "nifti"):
        (tmp_path / kind).mkdir()
        shutil.copytree(studies["root"] / kind / "three_series", tmp_path / kind / "case")
    datasets = [convert_cases(tmp_path / kind, 505, "Registered", raw_root=tmp_path / f"raw_{kind}", progress=False,
                              register=True, registration_method="affine") for kind in ("dicom", "nifti")]
    (dicom_voxels, _), (nifti_voxels, _) = (_dataset_arrays(d)["imagesTr/case_0001.nii.gz"] for d in datasets)
    assert np.array_equal(dicom_voxels, nifti_voxels)
    qc = json.loads((datasets[0] / "registration_qc" / "case.json").read_text())
    assert qc["phases"]["venous"]["method"] == "affine"
    assert json.loads((datasets[0] / "dicom_study" / "case.json").read_text())["phases"]["venous"]["series"]
