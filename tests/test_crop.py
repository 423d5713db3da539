"""ROI crops (``convert --crop-to-label``, ``phantom --crop``, ``uncrop``): world positions kept, exact round trip,
bad margins / empty labels / boxes outside the image refused with nothing written."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_hpn.cli import main as cli_main
from nnunet_hpn.io.crop_boxes import BOXES_FILE, crop_image, label_box, read_boxes, write_boxes
from nnunet_hpn.pipeline.crop import find_reference, uncrop_folder
from nnunet_hpn.errors import HPNInputError
from nnunet_hpn.phantom import write_phantom_cases

SHAPE = (24, 40, 40)
SPACING = (2.5, 1.5, 1.5)


def _oblique_image(array: np.ndarray) -> sitk.Image:
    """An image with a rotated direction, anisotropic spacing and an arbitrary origin."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 1.1, 2.5))
    image.SetOrigin((-12.3, 40.2, 7.7))
    angle = np.deg2rad(20)
    image.SetDirection((np.cos(angle), -np.sin(angle), 0, np.sin(angle), np.cos(angle), 0, 0, 0, -1))
    return image


@pytest.fixture()
def label_and_image() -> tuple[sitk.Image, sitk.Image]:
    label = np.zeros((20, 30, 40), dtype=np.uint8)
    label[8:12, 10:18, 15:30] = 1
    label[9:11, 12:14, 20:22] = 2
    image = np.random.default_rng(0).integers(-100, 200, size=label.shape).astype(np.int16)
    return _oblique_image(label), _oblique_image(image)


def test_crop_keeps_every_voxels_physical_position(label_and_image) -> None:
    label, image = label_and_image
    box = label_box(label, 3.0, "label")
    cropped = crop_image(image, box, "image")
    assert cropped.GetSpacing() == image.GetSpacing() and cropped.GetDirection() == image.GetDirection()
    cropped_voxels, full_voxels = sitk.GetArrayViewFromImage(cropped), sitk.GetArrayViewFromImage(image)
    rng = np.random.default_rng(1)
    for index in zip(*(rng.integers(0, n, size=50) for n in cropped.GetSize())):
        index = [int(i) for i in index]
        point = cropped.TransformIndexToPhysicalPoint(index)
        full_index = image.TransformPhysicalPointToIndex(point)
        assert np.allclose(image.TransformIndexToPhysicalPoint(full_index), point, atol=1e-6)
        assert cropped_voxels[index[2], index[1], index[0]] == full_voxels[full_index[2], full_index[1], full_index[0]]


def test_box_is_the_foreground_plus_the_margin_clipped_to_the_image(label_and_image) -> None:
    label, _ = label_and_image
    box = label_box(label, 3.0, "label")  # spacing x 0.8, y 1.1, z 2.5 -> 4, 3, 2 voxels of margin
    assert box.start_xyz == (15 - 4, 10 - 3, 8 - 2)
    assert box.size_xyz == (15 + 8, 8 + 6, 4 + 4)
    wide = label_box(label, 1000.0, "label")
    assert wide.start_xyz == (0, 0, 0) and wide.size_xyz == tuple(label.GetSize())


def _uncrop_inputs(tmp_path: Path, label_and_image, box_edit: dict) -> tuple[Path, Path, Path]:
    """A cropped label as the prediction, the full image as reference, its crop box (``box_edit`` applied)."""
    label, image = label_and_image
    box = label_box(label, 2.0, "label")
    (tmp_path / "pred").mkdir()
    (tmp_path / "full").mkdir()
    sitk.WriteImage(crop_image(label, box, "label"), str(tmp_path / "pred" / "case_a.nii.gz"))
    sitk.WriteImage(image, str(tmp_path / "full" / "case_a_0000.nii.gz"))
    write_boxes(tmp_path / BOXES_FILE, {"case_a": box}, 2.0, "arterial")
    entries = json.loads((tmp_path / BOXES_FILE).read_text())
    entries["cases"]["case_a"].update(box_edit)
    (tmp_path / BOXES_FILE).write_text(json.dumps(entries))
    return tmp_path / "pred", tmp_path / BOXES_FILE, tmp_path / "full"


def test_crop_then_uncrop_round_trips_a_label_exactly(tmp_path: Path, label_and_image) -> None:
    label, _ = label_and_image
    pred, boxes, full = _uncrop_inputs(tmp_path, label_and_image, {})
    assert uncrop_folder(pred, boxes, full, tmp_path / "out", progress=False) == ["case_a"]
    restored = sitk.ReadImage(str(tmp_path / "out" / "case_a.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(restored), sitk.GetArrayFromImage(label))
    assert np.allclose(restored.GetOrigin(), label.GetOrigin()) and restored.GetSize() == label.GetSize()
    assert np.allclose(restored.GetDirection(), label.GetDirection())


@pytest.mark.parametrize("margin", [0.0, -5.0, float("nan")])
def test_margins_of_zero_or_less_are_refused(label_and_image, margin: float) -> None:
    with pytest.raises(HPNInputError, match="crop margin must be a positive number"):
        label_box(label_and_image[0], margin, "label.nii.gz")


def test_empty_label_is_refused(label_and_image) -> None:
    empty = sitk.Image(label_and_image[0])
    empty = sitk.Multiply(empty, 0)
    with pytest.raises(HPNInputError, match="label.nii.gz: label has no foreground"):
        label_box(empty, 5.0, "label.nii.gz")


def _phantoms(tmp_path: Path, **kwargs) -> Path:
    out = tmp_path / "phantoms"
    write_phantom_cases(out, 2, seed=3, shape_zyx=SHAPE, spacing_zyx=SPACING, progress=False, **kwargs)
    return out


def test_phantom_crop_writes_boxes_and_world_aligned_crops(tmp_path: Path) -> None:
    full = _phantoms(tmp_path)
    cropped = tmp_path / "cropped"
    write_phantom_cases(cropped, 2, seed=3, shape_zyx=SHAPE, spacing_zyx=SPACING, progress=False, crop_margin_mm=6.0)
    boxes = read_boxes(cropped / BOXES_FILE)
    assert sorted(boxes) == ["hpn_000", "hpn_001"]
    assert json.loads((cropped / "phantoms.json").read_text())["crop_margin_mm"] == 6.0
    for case, box in boxes.items():
        for name in ("arterial", "venous", "label", "label_venous"):
            small = sitk.ReadImage(str(cropped / case / f"{name}.nii.gz"))
            large = sitk.ReadImage(str(full / case / f"{name}.nii.gz"))
            assert small.GetSize() == box.size_xyz and small.GetSize() != large.GetSize()
            corner = large.TransformIndexToPhysicalPoint(list(box.start_xyz))
            assert np.allclose(small.GetOrigin(), corner)
            x0, y0, z0 = box.start_xyz
            nx, ny, nz = box.size_xyz
            assert np.array_equal(sitk.GetArrayFromImage(small),
                                  sitk.GetArrayFromImage(large)[z0:z0 + nz, y0:y0 + ny, x0:x0 + nx])
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(cropped / case / "label.nii.gz")))
        assert label.sum() > 0 and set(np.unique(label)) == {0, 1, 2, 3}


def test_phantom_crop_with_bad_margin_writes_nothing(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as error:  # range-checked when the options are parsed
        cli_main(["phantom", str(tmp_path / "out"), "--cases", "1", "--crop", "0"])
    assert error.value.code == 2
    assert "argument --crop: must be a number in (0, 1000] mm, got 0" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()


def test_convert_crop_to_label_then_uncrop_through_the_cli(tmp_path: Path, capsys) -> None:
    phantoms = _phantoms(tmp_path)
    raw = tmp_path / "raw"
    assert cli_main(["convert", str(phantoms), "--dataset-id", "9", "--name", "Crop", "--raw-root", str(raw),
                     "--crop-to-label", "5"]) == 0
    dataset = raw / "Dataset009_Crop"
    boxes = read_boxes(dataset / BOXES_FILE)
    assert "cut to its label's box" in json.loads((dataset / "dataset.json").read_text())["description"]
    for case, box in boxes.items():
        for channel in ("0000", "0001"):
            assert sitk.ReadImage(str(dataset / "imagesTr" / f"{case}_{channel}.nii.gz")).GetSize() == box.size_xyz
    # the cropped labels stand in for predictions: pasted back they equal the full labels
    assert cli_main(["uncrop", str(dataset / "labelsTr"), "--boxes", str(dataset / BOXES_FILE), "--reference",
                     str(phantoms), "-o", str(tmp_path / "full")]) == 0
    for case in boxes:
        restored = sitk.ReadImage(str(tmp_path / "full" / f"{case}.nii.gz"))
        original = sitk.ReadImage(str(phantoms / case / "label.nii.gz"))
        assert np.array_equal(sitk.GetArrayFromImage(restored), sitk.GetArrayFromImage(original))
        assert np.allclose(restored.GetOrigin(), original.GetOrigin())


def test_convert_crop_refuses_a_case_without_label_and_writes_nothing(tmp_path: Path, capsys) -> None:
    phantoms = _phantoms(tmp_path)
    (phantoms / "hpn_001" / "label.nii.gz").unlink()
    raw = tmp_path / "raw"
    assert cli_main(["convert", str(phantoms), "--dataset-id", "9", "--name", "Crop", "--raw-root", str(raw),
                     "--crop-to-label", "5"]) != 0
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "hpn_001" in error[0] and "--crop-to-label needs a label" in error[0]
    assert not raw.exists() or not any(raw.iterdir())


def test_convert_crop_refuses_a_margin_of_zero(tmp_path: Path, capsys) -> None:
    phantoms = _phantoms(tmp_path)
    with pytest.raises(SystemExit) as error:  # range-checked when the options are parsed
        cli_main(["convert", str(phantoms), "--dataset-id", "9", "--name", "Crop", "--raw-root",
                  str(tmp_path / "raw"), "--crop-to-label", "-1"])
    assert error.value.code == 2 and "argument --crop-to-label: must be a number in" in capsys.readouterr().err
    assert not (tmp_path / "raw").exists()


def test_uncrop_refuses_a_box_outside_the_image_and_writes_nothing(tmp_path: Path, label_and_image, capsys) -> None:
    pred, boxes, full = _uncrop_inputs(tmp_path, label_and_image, {"start_xyz": [30, 0, 0]})
    assert cli_main(["uncrop", str(pred), "--boxes", str(boxes), "--reference", str(full),
                     "-o", str(tmp_path / "out")]) != 0
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "lies outside the image" in error[0] and "case_a" in error[0]
    assert not (tmp_path / "out").exists()


def test_uncrop_refuses_a_reference_of_another_grid(tmp_path: Path, label_and_image, capsys) -> None:
    pred, boxes, full = _uncrop_inputs(tmp_path, label_and_image, {"full_size_xyz": [41, 30, 20]})
    assert cli_main(["uncrop", str(pred), "--boxes", str(boxes), "--reference", str(full),
                     "-o", str(tmp_path / "out")]) != 0
    assert "grid is not the full grid of the crop box" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [BOXES_FILE, "full", "pred"]


def test_convert_crop_refuses_an_empty_label_and_writes_nothing(tmp_path: Path, capsys) -> None:
    phantoms = _phantoms(tmp_path)
    label_path = phantoms / "hpn_000" / "label.nii.gz"
    label = sitk.ReadImage(str(label_path))
    sitk.WriteImage(sitk.Multiply(label, 0), str(label_path))
    raw = tmp_path / "raw"
    assert cli_main(["convert", str(phantoms), "--dataset-id", "9", "--name", "Crop", "--raw-root", str(raw),
                     "--crop-to-label", "5"]) != 0
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and str(label_path) in error[0] and "label has no foreground" in error[0]
    assert not raw.exists() or not any(raw.iterdir())


def test_find_reference_takes_a_case_folders_first_phase_by_the_case_layout(tmp_path: Path) -> None:
    case = tmp_path / "references" / "case_1"
    case.mkdir(parents=True)
    for name in ("venous.nii.gz", "label.nii.gz", "label_arterial.nii.gz", ".hidden.nii.gz", "notes.txt"):
        (case / name).write_bytes(b"")
    (case / "arterial.nii.gz").mkdir()  # a folder is no image file
    assert find_reference(tmp_path / "references", "case_1") == case / "venous.nii.gz"
    (case / "arterial.nii").write_bytes(b"")  # another ending is not the asked file ending
    assert find_reference(tmp_path / "references", "case_1") == case / "venous.nii.gz"
    (tmp_path / "references" / "case_1_0000.nii.gz").write_bytes(b"")  # nnU-Net's name comes first
    assert find_reference(tmp_path / "references", "case_1") == tmp_path / "references" / "case_1_0000.nii.gz"
    with pytest.raises(HPNInputError, match="no full image of case 'case_2'"):
        find_reference(tmp_path / "references", "case_2")
