"""``predict --output-format dicom-seg``: a DICOM Segmentation that reads back (pydicom, highdicom) voxel for voxel as
the NIfTI label map and references the input series."""
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from conftest import DICOM_FRAME_UID, DICOM_SERIES_UID, DICOM_STUDY_UID, write_dicom_series
from nnunet_hpn.cli import main
from nnunet_hpn.errors import HPNInputError
from nnunet_hpn.io.dicom_seg import SEGMENTS, dicom_seg_for, import_highdicom
from nnunet_hpn.io.images import dicom_file_names, read_image


def labels_from_dicom_seg(path: Path, series_folder: Path) -> np.ndarray:
    """The label map (z, y, x) of a DICOM Segmentation, read with pydicom alone: each frame placed on the slice of
    the source instance it references, with its segment number as the value."""
    seg = pydicom.dcmread(path)
    sources = [pydicom.dcmread(name) for name in dicom_file_names(series_folder)]
    slice_of = {str(source.SOPInstanceUID): z for z, source in enumerate(sources)}
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns))
    labels = np.zeros((len(sources), int(seg.Rows), int(seg.Columns)), dtype=np.uint8)
    for frame, group in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        number = int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        source = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        labels[slice_of[str(source)]][frame > 0] = number
    return labels


def _series(tmp_path: Path, volume: np.ndarray) -> tuple[Path, sitk.Image]:
    folder = tmp_path / "arterial"
    write_dicom_series(volume, folder, (0.7, 0.8, 2.5), (-20.0, 15.0, 100.0),
                       (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    return folder, read_image(folder, allow_unusual_intensities=True)


def test_dicom_seg_round_trips_voxel_for_voxel_and_references_the_series(tmp_path: Path) -> None:
    folder, image = _series(tmp_path, (np.arange(6 * 10 * 12).reshape(6, 10, 12) % 700 - 200).astype(np.int16))
    voxels = np.zeros((6, 10, 12), dtype=np.uint8)
    voxels[1:5, 2:7, 3:9] = 1
    voxels[2:4, 3:5, 4:6] = 2
    voxels[4, 5, 3:8] = 3
    label = sitk.GetImageFromArray(voxels)
    label.CopyInformation(image)
    out = tmp_path / "case.seg.dcm"
    dicom_seg_for(label, folder).save_as(out)

    assert np.array_equal(labels_from_dicom_seg(out, folder), voxels)
    seg = pydicom.dcmread(out)
    assert seg.Modality == "SEG" and seg.StudyInstanceUID == DICOM_STUDY_UID
    assert seg.FrameOfReferenceUID == DICOM_FRAME_UID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == DICOM_SERIES_UID
    referenced = {str(item.ReferencedSOPInstanceUID) for item in seg.ReferencedSeriesSequence[0]
                  .ReferencedInstanceSequence}
    assert referenced == {f"{DICOM_SERIES_UID}.{z}" for z in range(1, 7)}
    described = {int(s.SegmentNumber): (s.SegmentLabel, s.SegmentedPropertyTypeCodeSequence[0].CodeValue)
                 for s in seg.SegmentSequence}
    assert described == {1: ("pancreas", "15776009"), 2: ("PDAC", "700423003"), 3: ("pancreatic duct", "69930009")}
    assert set(described) == set(SEGMENTS)

    hd = import_highdicom()  # highdicom reads it as well: every voxel at the same physical position
    volume = hd.seg.segread(out).get_volume(combine_segments=True)
    assert volume.array.shape == (4, 10, 12)  # slices 1..4 hold segments (empty frames omitted)
    indices = np.indices(volume.array.shape).reshape(3, -1)  # highdicom's (slice, row, column)
    world = (volume.affine @ np.vstack([indices, np.ones(indices.shape[1])]))[:3]  # patient coordinates, mm
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    xyz = np.linalg.solve(direction, world - np.asarray(image.GetOrigin())[:, None]) / \
        np.asarray(image.GetSpacing())[:, None]
    x, y, z = np.round(xyz).astype(int)
    assert np.allclose(xyz, [x, y, z], atol=1e-4)
    assert np.array_equal(volume.array.reshape(-1), voxels[z, y, x])


def test_dicom_seg_refuses_a_label_map_on_another_grid(tmp_path: Path) -> None:
    folder, _ = _series(tmp_path, (np.arange(6 * 10 * 12).reshape(6, 10, 12) % 300 - 100).astype(np.int16))
    label = sitk.Image(12, 10, 5, sitk.sitkUInt8)
    with pytest.raises(HPNInputError, match="label map: size"):
        dicom_seg_for(label, folder)


def test_a_missing_highdicom_is_one_line_naming_the_package(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "highdicom", None)
    with pytest.raises(HPNInputError, match=r"^--output-format dicom-seg needs the package 'highdicom' "):
        import_highdicom()


def test_predict_writes_a_dicom_seg_matching_the_nifti_output(planned_dataset, predict_model, tmp_path: Path,
                                                              capsys) -> None:
    case = planned_dataset["root"] / "phantoms" / planned_dataset["test_cases"][0]
    arterial = sitk.ReadImage(str(case / "arterial.nii.gz"))
    series = tmp_path / "case" / "arterial"
    (tmp_path / "case").mkdir()
    write_dicom_series(np.round(sitk.GetArrayFromImage(arterial)).astype(np.int16), series, arterial.GetSpacing(),
                       arterial.GetOrigin(), arterial.GetDirection())
    out = tmp_path / "pred" / "case.nii.gz"
    assert main(["predict", "--arterial", str(series), "--venous", str(case / "venous.nii.gz"), "-m",
                 str(predict_model), "-o", str(out), "--disable-tta", "--output-format", "dicom-seg"]) == 0
    nifti = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    seg_file = tmp_path / "pred" / "case.seg.dcm"
    assert np.array_equal(labels_from_dicom_seg(seg_file, series), nifti)
    assert pydicom.dcmread(seg_file).ReferencedSeriesSequence[0].SeriesInstanceUID == DICOM_SERIES_UID

    # a NIfTI arterial input has no series to reference: one line, nothing written
    refused = tmp_path / "refused" / "case.nii.gz"
    assert main(["predict", "--arterial", str(case / "arterial.nii.gz"), "--venous", str(case / "venous.nii.gz"),
                 "-m", str(predict_model), "-o", str(refused), "--output-format", "dicom-seg"]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.endswith("arterial.nii.gz: --output-format dicom-seg needs the arterial phase as a DICOM series "
                          "folder (the Segmentation references its instances)")
    assert not refused.parent.exists() or not any(refused.parent.iterdir())
