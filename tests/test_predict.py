"""``nnunet-hpn predict``: unaligned raw phases -> registration -> a model trained with the stock nnUNetv2_train ->
label map on exactly the arterial input's grid."""
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_hpn.cli import main
from nnunet_hpn.errors import HPNInputError
from nnunet_hpn.nnunet.model_folder import ModelFolder, nnunet_properties
from nnunet_hpn.pipeline.missing_phase import MissingPhaseWarning, fill_missing_phases


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
    # as nnUNetv2_predict: the model's dataset.json and plans.json travel with the predictions (union, evaluate and
    # report read the label scheme there)
    for name in ("dataset.json", "plans.json"):
        assert (out_dir / name).read_bytes() == (predict_model / name).read_bytes()
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
    assert ModelFolder(predict_model).channel_names == ["arterial", "venous"]
    arterial, venous = _unaligned_case(planned_dataset, planned_dataset["test_cases"][1], tmp_path / "case")
    out = tmp_path / "out.nii.gz"
    assert main(["predict", "--arterial", str(arterial), "--phase", f"delayed={arterial}", "-m", str(predict_model),
                 "-o", str(out)]) == 1
    error = capsys.readouterr().err
    assert "phase 'delayed' is not a channel of the model, which takes 2 phases" in error
    assert str(arterial) in error and "\n" not in error.strip()
    assert main(["predict", "-m", str(predict_model), "-o", str(out)]) == 1
    assert "no input" in capsys.readouterr().err
    assert main(["predict", "--arterial", str(arterial), "--venous", str(arterial), "-m", str(predict_model),
                 "-o", str(out)]) == 1
    assert "given as both arterial and venous" in capsys.readouterr().err
    assert main(["predict", "--arterial", str(arterial), "--venous", str(venous), "-m", str(predict_model),
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


def test_nnunet_predict_flags_parts_continue_and_probabilities_for_the_ensemble(
        planned_dataset, predict_model, tmp_path: Path, monkeypatch, capsys: pytest.CaptureFixture) -> None:
    """nnUNetv2_predict's way of naming the model (-d -c -tr -p), -num_parts/-part_id, --continue_prediction,
    -npp/-nps and --save_probabilities, whose folders the stock nnUNetv2_ensemble reads."""
    from conftest import DATASET_ID, PREDICT_PLANS, PREDICT_TRAINER, TINY_CONFIGURATION, run_stock

    for name in ("nnUNet_raw", "nnUNet_preprocessed"):  # nnU-Net 2.8 reads its folders when it uses them
        monkeypatch.setenv(name, planned_dataset["env"][name])
    monkeypatch.setenv("nnUNet_results", str(predict_model.parents[1]))
    in_dir = tmp_path / "cases"
    cases = sorted(planned_dataset["test_cases"])
    for case in cases:
        _unaligned_case(planned_dataset, case, in_dir / case)
    out_dir = tmp_path / "pred"
    model_flags = ["-d", str(DATASET_ID), "-c", TINY_CONFIGURATION, "-tr", PREDICT_TRAINER, "-p", PREDICT_PLANS]
    common = ["predict", "-i", str(in_dir), "-o", str(out_dir), *model_flags, "--disable_tta", "--registration",
              "affine", "--save_probabilities", "-num_parts", "2"]
    assert main([*common, "-part_id", "0", "-npp", "2", "-nps", "2"]) == 0
    assert sorted(p.name for p in out_dir.iterdir() if p.is_file()) == sorted(
        [f"{cases[0]}.nii.gz", f"{cases[0]}.npz", f"{cases[0]}.pkl", "dataset.json", "plans.json"])
    first = (out_dir / f"{cases[0]}.nii.gz").stat().st_mtime_ns
    assert main([*common, "-part_id", "1", "--continue_prediction"]) == 0
    assert (out_dir / f"{cases[1]}.npz").is_file() and (out_dir / f"{cases[0]}.nii.gz").stat().st_mtime_ns == first
    capsys.readouterr()
    assert main([*common, "-part_id", "1", "--continue_prediction"]) == 0
    assert "wrote 0 label maps" in capsys.readouterr().out  # everything there already

    probabilities = np.load(out_dir / f"{cases[1]}.npz")["probabilities"]
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(out_dir / f"{cases[1]}.nii.gz")))
    assert probabilities.shape == (4, *label.shape) and np.allclose(probabilities.sum(0), 1, atol=1e-4)
    ensembled = tmp_path / "ensembled"
    run_stock(["nnUNetv2_ensemble", "-i", str(out_dir), str(out_dir), "-o", str(ensembled), "-np", "1"],
              planned_dataset["env"])
    for case in cases:
        ours = sitk.ReadImage(str(out_dir / f"{case}.nii.gz"))
        stock = sitk.ReadImage(str(ensembled / f"{case}.nii.gz"))
        _assert_same_grid(stock, ours)
        assert np.array_equal(sitk.GetArrayFromImage(stock), sitk.GetArrayFromImage(ours))


def test_predict_parses_nnunet_spellings_and_refuses_folder_flags_for_one_case(planned_dataset, tmp_path: Path,
                                                                               monkeypatch, capsys) -> None:
    from nnunet_hpn.cli import build_parser

    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(name, planned_dataset["env"][name])
    args = build_parser().parse_args(
        ["predict", "-i", "in", "-o", "out", "-d", "5", "-c", "3d_fullres", "-tr", "HPNTrainer_virtual", "-p", "P",
         "-f", "0", "1", "-chk", "checkpoint_best.pth", "-device", "cuda", "-step_size", "0.7", "--disable_tta",
         "--save_probabilities", "--continue_prediction", "-npp", "2", "-nps", "3", "-num_parts", "4",
         "-part_id", "3"])
    assert (args.dataset, args.configuration, args.trainer, args.plans, args.folds, args.checkpoint, args.device,
            args.step_size, args.disable_tta, args.save_probabilities, args.continue_prediction, args.npp, args.nps,
            args.num_parts, args.part_id) == ("5", "3d_fullres", "HPNTrainer_virtual", "P", ["0", "1"],
                                              "checkpoint_best.pth", "cuda", 0.7, True, True, True, 2, 3, 4, 3)
    out = tmp_path / "out.nii.gz"
    assert main(["predict", "--arterial", "a.nii.gz", "-m", "model", "-o", str(out), "-npp", "2"]) == 1
    assert "-npp needs folder mode" in capsys.readouterr().err
    assert main(["predict", "--arterial", "a.nii.gz", "-m", "model", "-d", "5", "-o", str(out)]) == 1
    assert "not both" in capsys.readouterr().err
    assert main(["predict", "--arterial", "a.nii.gz", "-d", "5", "-o", str(out)]) == 1
    assert "no model" in capsys.readouterr().err
    assert main(["predict", "--arterial", "a.nii.gz", "-d", "987", "-c", "3d_fullres", "-o", str(out)]) == 1
    error = capsys.readouterr().err
    assert "-d 987: no such dataset in" in error and error.count("\n") == 1
    assert not out.exists()


def test_model_folder_errors_name_the_options_that_named_it(tmp_path: Path, monkeypatch, capsys) -> None:
    """A model folder named by -d -c (-tr -p) is called so in its errors, a locator by --locator and its folds by
    --locator-folds; nothing of the model is loaded before."""
    results = tmp_path / "results"
    model = results / "Dataset005_Named" / "HPNTrainer__nnUNetHPNPlans__3d_fullres"
    model.mkdir(parents=True)
    for name in ("nnUNet_raw", "nnUNet_preprocessed"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("nnUNet_results", str(results))
    out = tmp_path / "out.nii.gz"
    assert main(["predict", "--arterial", "a.nii.gz", "-d", "5", "-c", "3d_fullres", "-device", "cpu",
                 "-o", str(out)]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"nnunet-hpn predict: error: {model / 'dataset.json'}: missing; -d 5 -c 3d_fullres -tr HPNTrainer "
        f"-p nnUNetHPNPlans must be a trained model folder "
        f"(nnUNet_results/DatasetXXX/<trainer>__<plans>__<configuration>)"]
    assert not out.exists()
    (model / "dataset.json").write_text(json.dumps({"channel_names": {"0": "arterial"},
                                                    "labels": {"background": 0, "pancreas": 1}}))
    with pytest.raises(HPNInputError, match=r"plans\.json: missing; --locator must be a trained model folder"):
        ModelFolder(model, "--locator").check_folds((0,), "checkpoint_final.pth", "--locator-folds")
    (model / "plans.json").write_text("{}")
    with pytest.raises(HPNInputError, match=r"fold_1.checkpoint_final\.pth: missing \(train fold 1 first, or pick "
                                            r"other folds with --locator-folds\)"):
        ModelFolder(model, "--locator").check_folds((1,), "checkpoint_final.pth", "--locator-folds")
