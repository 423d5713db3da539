"""scripts/misalignment_study.py's injected misalignment: the arterial phase is copied bit-identically, the venous one
moves by at most the level (field + half as much shift) and not at all at level 0, the same for every run."""
from pathlib import Path

import numpy as np
import SimpleITK as sitk

import misalignment_study
from nnunet_hpn.phantom import generate_phantom_case, phantom_image


def test_injected_misalignment_moves_only_the_venous_phase(tmp_path: Path) -> None:
    case = generate_phantom_case(3, 0, (24, 48, 48))
    images = tmp_path / "imagesTr"
    images.mkdir()
    sitk.WriteImage(phantom_image(case.images["arterial"]), str(images / "c_0000.nii.gz"))
    sitk.WriteImage(phantom_image(case.images["venous"]), str(images / "c_0001.nii.gz"))
    outputs = {}
    for level in (0.0, 4.0):
        out = tmp_path / f"level_{level:g}"
        misalignment_study.write_misaligned_inputs(images, ["c"], level, out)
        outputs[level] = [sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"c_000{c}.nii.gz"))) for c in (0, 1)]
    arterial, venous = case.images["arterial"], case.images["venous"]
    assert np.array_equal(outputs[0.0][0], arterial) and np.array_equal(outputs[4.0][0], arterial)
    assert np.array_equal(outputs[0.0][1], venous)
    assert not np.array_equal(outputs[4.0][1], venous)
    # deterministic: the seed is the case's and the level's
    again = tmp_path / "again"
    misalignment_study.write_misaligned_inputs(images, ["c"], 4.0, again)
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(again / "c_0001.nii.gz"))), outputs[4.0][1])
    assert misalignment_study.case_seed("c", 4.0) != misalignment_study.case_seed("c", 8.0)
