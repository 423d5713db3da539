"""End to end on the liver preset, labels of the user's own: phantom --preset liver → convert --labels →
nnUNetv2_plan_and_preprocess -pl HPNPlanner → split → a short CPU training of HPN (original and virtual pairs) →
nnUNetv2_predict → union → evaluate (equal to nnU-Net's compute_metrics_on_folder) → report."""
import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import TINY_CONFIGURATION, nnunet_env, run_stock
from nnunet_hpn.cli import main as cli_main
from nnunet_hpn.phantom_liver import LIVER_LABELS, LIVER_TARGETS, write_liver_cases

DATASET_ID = 992
DATASET_NAME = "LiverTest"
PLANS = "nnUNetHPNPlans"
#: the training budget of every model (nnunet_hpn.budget): a smoke run, not a useful model
BUDGET = {"HPN_NUM_EPOCHS": "1", "HPN_ITERATIONS_PER_EPOCH": "3", "HPN_VAL_ITERATIONS_PER_EPOCH": "1",
          "HPN_NO_TTA": "1"}
TRAINERS = {"hpn": "HPNTrainer", "hpn_virtual": "HPNTrainer_virtual"}
N_CASES, N_HELD_OUT = 7, 2


def nnunet_hpn(args: list[str]) -> str:
    """``nnunet-hpn ARGS`` in this process (the stock nnU-Net commands run as their own processes); its stdout."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = cli_main(args)
    assert status == 0, (args, out.getvalue())
    return out.getvalue()


@pytest.fixture(scope="module")
def liver_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every step of the pipeline once; the outputs for the tests below."""
    with pytest.MonkeyPatch.context() as patch:
        return _run_pipeline(tmp_path_factory.mktemp("liver"), patch)


def _run_pipeline(root: Path, patch: pytest.MonkeyPatch) -> dict:
    from nnunet_hpn.nnunet.plans_tools import add_small_configuration

    env = {**nnunet_env(root), **BUDGET}
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        Path(env[key]).mkdir()
        patch.setenv(key, env[key])
    phantoms = root / "phantoms"
    cases = write_liver_cases(phantoms, N_CASES, seed=5, shape_zyx=(24, 48, 48), progress=False)
    truth = root / "truth"
    truth.mkdir()
    for case in cases[-N_HELD_OUT:]:  # held out: no label, so convert puts them into imagesTs
        (phantoms / case / "label.nii.gz").rename(truth / f"{case}.nii.gz")
        (phantoms / case / "label_venous.nii.gz").unlink()
    nnunet_hpn(["convert", str(phantoms), "-d", str(DATASET_ID), "--name", DATASET_NAME, "--labels",
                str(phantoms / "labels.json")])
    raw = Path(env["nnUNet_raw"]) / f"Dataset{DATASET_ID}_{DATASET_NAME}"
    run_stock(["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-pl", "HPNPlanner", "-c", "3d_fullres",
               "-np", "2", "-npfp", "2"], env)
    preprocessed = Path(env["nnUNet_preprocessed"]) / raw.name
    add_small_configuration(preprocessed / f"{PLANS}.json", TINY_CONFIGURATION, patch_size=(16, 32, 32),
                            base_features=4, max_features=16)
    nnunet_hpn(["split", "-d", str(DATASET_ID), "--folds", "2"])
    predictions = {}
    for row, trainer in TRAINERS.items():
        run_stock(["nnUNetv2_train", str(DATASET_ID), TINY_CONFIGURATION, "0", "-tr", trainer, "-p", PLANS,
                   "-device", "cpu"], env)
        predictions[row] = root / f"pred_{row}"
        run_stock(["nnUNetv2_predict", "-i", str(raw / "imagesTs"), "-o", str(predictions[row]), "-d",
                   str(DATASET_ID), "-c", TINY_CONFIGURATION, "-tr", trainer, "-p", PLANS, "-f", "0", "-device",
                   "cpu", "--disable_tta", "-npp", "1", "-nps", "1"], env)
    predictions["hpn_union"] = root / "pred_union"
    nnunet_hpn(["union", "-i", str(predictions["hpn"]), str(predictions["hpn_virtual"]), "-o",
                str(predictions["hpn_union"])])
    summary = root / "summary.json"
    evaluate = nnunet_hpn(["evaluate", str(truth), str(predictions["hpn_union"]), "-o", str(summary), "-djfile",
                           str(raw / "dataset.json")])
    report = root / "report"
    nnunet_hpn(["report", *(f"{row}={path}" for row, path in predictions.items()), "--gt", str(truth),
                "--reference", "hpn_union", "--hpn", "hpn_union", "-djfile", str(raw / "dataset.json"),
                "-o", str(report)])
    return {"root": root, "raw": raw, "preprocessed": preprocessed, "truth": truth, "predictions": predictions,
            "summary": json.loads(summary.read_text()), "evaluate_output": evaluate, "report": report,
            "held_out": cases[-N_HELD_OUT:]}


def test_convert_writes_the_liver_scheme(liver_run: dict) -> None:
    dataset = json.loads((liver_run["raw"] / "dataset.json").read_text())
    assert dataset["labels"] == LIVER_LABELS
    assert dataset["hpn"]["lesion"] == "lesion" and dataset["hpn"]["reference_phase"] == "arterial"
    assert dataset["hpn"]["targets"] == LIVER_TARGETS
    plans = json.loads((liver_run["preprocessed"] / f"{PLANS}.json").read_text())
    assert plans["configurations"]["3d_fullres"]["architecture"]["network_class_name"].endswith("HyperPairedUNet")
    splits = json.loads((liver_run["preprocessed"] / "splits_final.json").read_text())
    assert len(splits) == 2 and sorted(sum((fold["val"] for fold in splits), [])) == sorted(
        path.name.removesuffix(".nii.gz") for path in (liver_run["raw"] / "labelsTr").glob("*.nii.gz"))


def test_predictions_and_union_hold_only_the_scheme_labels(liver_run: dict) -> None:
    for case in liver_run["held_out"]:
        truth = sitk.ReadImage(str(liver_run["truth"] / f"{case}.nii.gz"))
        maps = {row: sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"{case}.nii.gz")))
                for row, folder in liver_run["predictions"].items()}
        for row, array in maps.items():
            assert array.shape == sitk.GetArrayFromImage(truth).shape
            assert set(np.unique(array)) <= set(LIVER_LABELS.values()), row
        # union: wherever either model has a foreground label, the union has one
        either = (maps["hpn"] > 0) | (maps["hpn_virtual"] > 0)
        assert np.array_equal(maps["hpn_union"] > 0, either)
        lesion = LIVER_LABELS["lesion"]  # first in the union precedence
        assert np.all(maps["hpn_union"][(maps["hpn"] == lesion) | (maps["hpn_virtual"] == lesion)] == lesion)


def test_evaluate_names_the_targets_and_equals_nnunet(liver_run: dict, tmp_path: Path) -> None:
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    summary = liver_run["summary"]
    assert set(summary["mean"]) == set(LIVER_TARGETS)
    assert "lesion" in liver_run["evaluate_output"] and "liver (all)" in liver_run["evaluate_output"]
    regions = {name: tuple(LIVER_LABELS[label] for label in members) for name, members in LIVER_TARGETS.items()}
    theirs = compute_metrics_on_folder(str(liver_run["truth"]), str(liver_run["predictions"]["hpn_union"]),
                                       str(tmp_path / "nnunet.json"), SimpleITKIO(), ".nii.gz",
                                       list(regions.values()), None, 1)
    assert len(theirs["metric_per_case"]) == N_HELD_OUT
    for case_result in theirs["metric_per_case"]:
        case = Path(case_result["reference_file"]).name.removesuffix(".nii.gz")
        for name, region in regions.items():
            nnunet_dice = case_result["metrics"][region]["Dice"]
            ours = summary["per_case"][case][name]
            ours = ours["Dice"] if isinstance(ours, dict) else ours
            # nnU-Net gives NaN when truth and prediction are both empty; this plugin's convention gives 1.0
            assert ours == (1.0 if math.isnan(nnunet_dice) else pytest.approx(nnunet_dice)), (case, name)


def test_report_compares_the_rows_on_the_liver_targets(liver_run: dict) -> None:
    report = (liver_run["report"] / "report.md").read_text()
    for text in ("hpn_union", "hpn_virtual", "lesion", "liver (all)", "portal vein", "aorta"):
        assert text in report
