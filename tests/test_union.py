"""Tests of nnunet_hpn.pipeline.union: the label union rule and the all-or-nothing folder union."""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_hpn.errors import HPNInputError
from nnunet_hpn.pipeline.union import LABEL_PRIORITY, union_folders, union_label_maps

SHAPE = (4, 5, 6)  # (z, y, x)
SPACING_XYZ = (0.7, 0.7, 2.0)
ORIGIN = (12.0, -4.5, 30.0)
DIRECTION = (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)

#: Hand-written expected union for every ordered pair of labels (original, virtual) -> union.
EXPECTED = {
    (0, 0): 0, (0, 1): 1, (0, 2): 2, (0, 3): 3,
    (1, 0): 1, (1, 1): 1, (1, 2): 2, (1, 3): 3,
    (2, 0): 2, (2, 1): 2, (2, 2): 2, (2, 3): 2,
    (3, 0): 3, (3, 1): 3, (3, 2): 2, (3, 3): 3,
}


def write_label_map(array: np.ndarray, path: Path, spacing_xyz=SPACING_XYZ, origin=ORIGIN) -> None:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(spacing_xyz)
    image.SetOrigin(origin)
    image.SetDirection(DIRECTION)
    sitk.WriteImage(image, str(path))


def random_label_map(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4, SHAPE).astype(np.uint8)


# ---------------------------------------------------------------- union_label_maps

def test_every_label_pair() -> None:
    pairs = list(itertools.product(range(4), repeat=2))
    original = np.array([a for a, _ in pairs], dtype=np.uint8)
    virtual = np.array([b for _, b in pairs], dtype=np.int16)
    union = union_label_maps(original, virtual)
    assert union.dtype == np.uint8
    assert dict(zip(pairs, union.tolist())) == EXPECTED
    np.testing.assert_array_equal(union_label_maps(virtual, original), union)  # symmetric
    assert LABEL_PRIORITY == (2, 3, 1)


def test_union_keeps_all_foreground_and_is_associative() -> None:
    first, second, third = (random_label_map(seed) for seed in range(3))
    union = union_label_maps(first, second)
    np.testing.assert_array_equal(union > 0, (first > 0) | (second > 0))
    np.testing.assert_array_equal(union_label_maps(union, third),
                                  union_label_maps(first, union_label_maps(second, third)))


def test_bad_arrays_rejected() -> None:
    good = np.zeros(SHAPE, dtype=np.uint8)
    with pytest.raises(ValueError, match="shape"):
        union_label_maps(good, good[:-1])
    with pytest.raises(ValueError, match=r"unexpected labels \[4\]"):
        union_label_maps(good, np.full(SHAPE, 4, dtype=np.uint8))
    with pytest.raises(ValueError, match="integer"):
        union_label_maps(good.astype(np.float32), good)


# ---------------------------------------------------------------- union_folders

def make_inputs(tmp_path: Path, n_folders: int = 2, cases=("case_a", "case_b")) -> list[Path]:
    folders = []
    for index in range(n_folders):
        folder = tmp_path / f"pred_{index}"
        folder.mkdir()
        for case_number, case in enumerate(cases):
            write_label_map(random_label_map(10 * index + case_number), folder / f"{case}.nii.gz")
        (folder / "plans.json").write_text("{}")  # nnU-Net output folders hold more than predictions
        folders.append(folder)
    return folders


def test_folder_round_trip(tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path, n_folders=3)
    output = tmp_path / "union"
    output.mkdir()
    (output / "notes.txt").write_text("keep me")
    written = union_folders(inputs, output)
    assert written == ["case_a", "case_b"]
    assert sorted(p.name for p in output.iterdir()) == ["case_a.nii.gz", "case_b.nii.gz", "notes.txt"]
    assert (output / "notes.txt").read_text() == "keep me"
    for case in written:
        maps = [sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"{case}.nii.gz"))) for folder in inputs]
        result = sitk.ReadImage(str(output / f"{case}.nii.gz"))
        assert result.GetPixelID() == sitk.sitkUInt8
        np.testing.assert_allclose(result.GetSpacing(), SPACING_XYZ)
        np.testing.assert_allclose(result.GetOrigin(), ORIGIN)
        np.testing.assert_allclose(result.GetDirection(), DIRECTION)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(result),
                                      union_label_maps(union_label_maps(maps[0], maps[1]), maps[2]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred_0", "pred_1", "pred_2", "union"]  # no temp left


def test_geometry_mismatch_writes_nothing(tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path)
    write_label_map(random_label_map(99), inputs[1] / "case_b.nii.gz", spacing_xyz=(0.7, 0.7, 3.0))
    output = tmp_path / "union"
    with pytest.raises(HPNInputError) as error:
        union_folders(inputs, output)
    message = str(error.value)
    assert str(inputs[1] / "case_b.nii.gz") in message and str(inputs[0] / "case_b.nii.gz") in message
    assert "spacing" in message and "\n" not in message
    assert not output.exists()  # case_a succeeded but was not moved into place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred_0", "pred_1"]


def test_size_mismatch_named(tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path)
    write_label_map(np.zeros((4, 5, 7), dtype=np.uint8), inputs[1] / "case_a.nii.gz")
    with pytest.raises(HPNInputError, match="size"):
        union_folders(inputs, tmp_path / "union")


def test_missing_case_named(tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path)
    (inputs[1] / "case_a.nii.gz").unlink()
    with pytest.raises(HPNInputError, match="case_a") as error:
        union_folders(inputs, tmp_path / "union")
    assert str(inputs[1]) in str(error.value)
    assert not (tmp_path / "union").exists()


def test_bad_labels_and_bad_arguments(tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path)
    write_label_map(np.full(SHAPE, 5, dtype=np.uint8), inputs[0] / "case_b.nii.gz")
    with pytest.raises(HPNInputError, match=r"case_b\.nii\.gz: unexpected labels \[5\]"):
        union_folders(inputs, tmp_path / "union")
    assert not (tmp_path / "union").exists()
    with pytest.raises(HPNInputError, match="at least 2"):
        union_folders(inputs[:1], tmp_path / "union")
    with pytest.raises(HPNInputError, match="-o would overwrite the input"):
        union_folders(inputs, inputs[0])
    with pytest.raises(HPNInputError, match="does not exist"):
        union_folders([inputs[0], tmp_path / "nope"], tmp_path / "union")
