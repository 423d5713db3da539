"""``nnunet-hpn predict``: unaligned raw phases -> registration -> a model trained with the stock nnUNetv2_train ->
label map on exactly the arterial input's grid."""
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_hpn.cli import main
from nnunet_hpn.pipeline.missing_phase import MissingPhaseWarning, fill_missing_phases
from nnunet_hpn.pipeline.predict import model_channel_names, nnunet_properties


def _unaligned_case(planned_dataset, case: str, out_dir: Path) -> tuple[Path, Path]:
    """The held-out phantom case with an arterial phase on a non-identity grid (spacing, origin, direction) and a
    venous phase shifted by a few mm against it."""
    source = planned_dataset["root"] / "phantoms" / case
    arterial = sitk.ReadImage(str(source / "arterial.nii.gz"))
    venous = sitk.ReadImage(str(source / "venous.nii.gz"))
    direction = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    for image in (arterial, venous):
        image.SetSpacing((1.4, 1.6, 2.7))
        image.SetDirection(direction)
        image.SetOrigin((12.5, -30.25, 101.0))
    venous.SetOrigin((15.5, -32.25, 102.5))
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = out_dir / "arterial.nii.gz", out_dir / "venous.nii.gz"
    sitk.WriteImage(arterial, str(paths[0]))
    sitk.WriteImage(venous, str(paths[1]))
    return paths


def _assert_same_grid(label: sitk.Image, reference: sitk.Image) -> None:
    assert label.GetSize() == reference.GetSize()
    assert label.GetSpacing() == reference.GetSpacing()
    assert label.GetOrigin() == reference.GetOrigin()
    assert label.GetDirection() == reference.GetDirection()


def test_predict_one_case_in_the_arterial_geometry(planned_dataset, predict_model, tmp_path: Path) -> None:
    arterial, venous = _unaligned_case(planned_dataset, planned_dataset["test_cases"][0], tmp_path / "case")
    out, qc = tmp_path / "pred" / "case.nii.gz", tmp_path / "pred" / "case_qc.json"

    assert main(["predict", "--arterial", str(arterial), "--venous", str(venous), "-m", str(predict_model),
                 "-o", str(out), "-f", "0", "--device", "cpu", "--disable-tta", "--qc", str(qc)]) == 0

    label, reference = sitk.ReadImage(str(out)), sitk.ReadImage(str(arterial))
    _assert_same_grid(label, reference)
    assert set(np.unique(sitk.GetArrayViewFromImage(label))) <= {0, 1, 2, 3}
    record = json.loads(qc.read_text())
    assert record["reference_phase"] == "arterial"
    venous_qc = record["phases"]["venous"]
    assert venous_qc["method"] == "demons"
    assert venous_qc["similarity"]["after"]["nmi"] > venous_qc["similarity"]["before"]["nmi"]


def test_predict_folder_mode_and_generic_phase_option(planned_dataset, predict_model, tmp_path: Path) -> None:
    in_dir = tmp_path / "cases"
    for case in planned_dataset["test_cases"]:
        _unaligned_case(planned_dataset, case, in_dir / case)
    out_dir = tmp_path / "pred"

    assert main(["predict", "-i", str(in_dir), "-m", str(predict_model), "-o", str(out_dir), "--disable-tta",
                 "--registration", "affine"]) == 0

    for case in planned_dataset["test_cases"]:
        _assert_same_grid(sitk.ReadImage(str(out_dir / f"{case}.nii.gz")),
                          sitk.ReadImage(str(in_dir / case / "arterial.nii.gz")))
        assert json.loads((out_dir / "registration_qc" / f"{case}.json").read_text())["phases"]["venous"]["method"] \
            == "affine"
    # --phase NAME=PATH is the same as --arterial/--venous
    case_dir = in_dir / planned_dataset["test_cases"][0]
    single = tmp_path / "single.nii.gz"
    assert main(["predict", "--phase", f"arterial={case_dir / 'arterial.nii.gz'}",
                 "--phase", f"venous={case_dir / 'venous.nii.gz'}", "-m", str(predict_model), "-o", str(single),
                 "--disable-tta", "--registration", "affine"]) == 0
    # the same inputs and model; a 3-iteration model has near-tied logits, where float summation order (threads) can
    # flip a few voxels, so: the same label map up to a handful of voxels
    folder_label = sitk.GetArrayFromImage(sitk.ReadImage(str(out_dir / f"{planned_dataset['test_cases'][0]}.nii.gz")))
    assert np.mean(sitk.GetArrayFromImage(sitk.ReadImage(str(single))) == folder_label) > 0.99


def test_missing_phase_predicts_warns_and_records_it(planned_dataset, predict_model, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    arterial, _ = _unaligned_case(planned_dataset, planned_dataset["test_cases"][1], tmp_path / "case")
    out, qc = tmp_path / "out.nii.gz", tmp_path / "qc.json"
    assert main(["predict", "--arterial", str(arterial), "-m", str(predict_model), "-o", str(out), "--disable-tta",
                 "--qc", str(qc)]) == 0
    error = capsys.readouterr().err
    warning = [line for line in error.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "venous missing" in warning[0] and str(arterial) in warning[0]
    _assert_same_grid(sitk.ReadImage(str(out)), sitk.ReadImage(str(arterial)))
    record = json.loads(qc.read_text())
    assert record["missing_phases"] == ["venous"] and "constant 0 image" in record["missing_phase_policy"]
    assert record["phases"] == {}  # nothing to register


def test_unknown_phase_no_phase_or_missing_fold_is_a_clear_error(planned_dataset, predict_model, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    assert model_channel_names(predict_model) == ["arterial", "venous"]
    arterial, _ = _unaligned_case(planned_dataset, planned_dataset["test_cases"][1], tmp_path / "case")
    out = tmp_path / "out.nii.gz"
    assert main(["predict", "--arterial", str(arterial), "--phase", f"delayed={arterial}", "-m", str(predict_model),
                 "-o", str(out)]) == 1
    error = capsys.readouterr().err
    assert "phase 'delayed' is not a channel of the model, which takes 2 phases" in error
    assert str(arterial) in error and "\n" not in error.strip()
    assert main(["predict", "-m", str(predict_model), "-o", str(out)]) == 1
    assert "no input" in capsys.readouterr().err
    assert main(["predict", "--arterial", str(arterial), "--venous", str(arterial), "-m", str(predict_model),
                 "-f", "3", "-o", str(out)]) == 1
    assert "fold_3" in capsys.readouterr().err
    assert not out.exists()


def test_filled_channels_follow_the_model_order() -> None:
    images = {name: sitk.Image([2, 2, 2], sitk.sitkInt16) + value for value, name in enumerate(["venous", "arterial"])}
    ordered, missing = fill_missing_phases(images, ["arterial", "venous"])
    assert [int(sitk.GetArrayViewFromImage(image).max()) for image in ordered] == [1, 0] and missing == []
    with pytest.warns(MissingPhaseWarning, match="delayed missing"):
        ordered, missing = fill_missing_phases(images, ["arterial", "venous", "delayed"])
    assert missing == ["delayed"] and not sitk.GetArrayViewFromImage(ordered[2]).any()


def test_nnunet_properties_match_simpleitkio(tmp_path: Path) -> None:
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    image = sitk.GetImageFromArray(np.zeros((4, 5, 6), dtype=np.float32))
    image.SetSpacing((0.7, 0.8, 2.5))
    image.SetOrigin((1.0, 2.0, 3.0))
    image.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(image, str(tmp_path / "image.nii.gz"))
    _, expected = SimpleITKIO().read_images([str(tmp_path / "image.nii.gz")])
    ours = nnunet_properties(sitk.ReadImage(str(tmp_path / "image.nii.gz")))
    assert ours["spacing"] == expected["spacing"]
    assert ours["sitk_stuff"] == expected["sitk_stuff"]
