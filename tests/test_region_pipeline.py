"""A region-based dataset through the whole pipeline with the stock nnU-Net commands: convert --labels (regions,
reference phase venous) -> nnUNetv2_plan_and_preprocess -pl HPNPlanner -> a short HPN training (cross-entropy
weights by region name, nnU-Net's Dice + BCE region loss) -> nnUNetv2_predict and nnunet-hpn predict -> union ->
evaluate -> report. Evaluate's numbers equal nnU-Net's own compute_metrics_on_folder for every region; the prediction
of raw phases on their own grids has the venous input's geometry."""
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import nnunet_env, run_stock
from nnunet_hpn.cli import main
from nnunet_hpn.labels import LabelScheme

DATASET_ID = 987
CONFIGURATION = "3d_tiny"
TRAINER = "HPNTrainer_demo"  # its cross-entropy weights are by name: {"PDAC": 4, "duct": 4}, here regions
PLANS = "nnUNetHPNPlans"
#: the phantom's labels (1 pancreas, 2 PDAC, 3 duct) read as nested regions, painted in nnU-Net's order
REGIONS = {"labels": {"background": 0, "abnormal pancreas": [1, 2, 3], "PDAC": [2], "duct": [3]},
           "regions_class_order": [1, 2, 3], "lesion": "PDAC"}


@pytest.fixture(scope="module")
def region_run(tmp_path_factory) -> dict:
    from nnunet_hpn.nnunet.plans_tools import add_small_configuration
    from nnunet_hpn.phantom import write_phantom_cases

    root = tmp_path_factory.mktemp("regions")
    env = nnunet_env(root)
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        Path(env[key]).mkdir()
    env.update({"HPN_NUM_EPOCHS": "1", "HPN_ITERATIONS_PER_EPOCH": "3", "HPN_VAL_ITERATIONS_PER_EPOCH": "1"})
    cases = write_phantom_cases(root / "phantoms", 8, seed=5, shape_zyx=(24, 48, 48), progress=False,
                                reference_phase="venous")  # label.nii.gz on the venous phase
    truth, raw_test = root / "test_labels", root / "raw_test"
    truth.mkdir()
    raw_test.mkdir()
    for case in cases[-2:]:  # held out: labels aside, the raw phases kept for nnunet-hpn predict
        (root / "phantoms" / case / "label.nii.gz").rename(truth / f"{case}.nii.gz")
        (root / "phantoms" / case).rename(raw_test / case)
    labels_file = root / "regions.json"
    labels_file.write_text(json.dumps(REGIONS))
    assert main(["convert", str(root / "phantoms"), "-d", str(DATASET_ID), "--name", "Regions", "--raw-root",
                 env["nnUNet_raw"], "--labels", str(labels_file), "--reference-phase", "venous"]) == 0
    raw = Path(env["nnUNet_raw"]) / f"Dataset{DATASET_ID}_Regions"
    run_stock(["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-pl", "HPNPlanner", "-c", "3d_fullres",
               "-np", "1", "-npfp", "1"], env)
    plans_file = Path(env["nnUNet_preprocessed"]) / raw.name / f"{PLANS}.json"
    add_small_configuration(plans_file, CONFIGURATION, patch_size=(16, 32, 32), base_features=4, max_features=16)
    run_stock(["nnUNetv2_train", str(DATASET_ID), CONFIGURATION, "0", "-tr", TRAINER, "-p", PLANS,
               "-device", "cpu"], env)
    model = Path(env["nnUNet_results"]) / raw.name / f"{TRAINER}__{PLANS}__{CONFIGURATION}"
    images_ts = root / "imagesTs"
    images_ts.mkdir()
    for case in cases[-2:]:
        for channel, phase in enumerate(("arterial", "venous")):
            sitk.WriteImage(sitk.ReadImage(str(raw_test / case / f"{phase}.nii.gz")),
                            str(images_ts / f"{case}_{channel:04d}.nii.gz"))
    predictions = {}
    for name, step in (("step_half", "0.5"), ("step_full", "1")):  # two prediction folders to take the union of
        predictions[name] = root / name
        run_stock(["nnUNetv2_predict", "-i", str(images_ts), "-o", str(predictions[name]), "-d", str(DATASET_ID),
                   "-c", CONFIGURATION, "-tr", TRAINER, "-p", PLANS, "-f", "0", "-device", "cpu", "-step_size",
                   step, "-npp", "1", "-nps", "1"], env)
    return {"root": root, "env": env, "raw": raw, "model": model, "truth": truth, "raw_test": raw_test,
            "cases": cases[-2:], "predictions": predictions, "plans": json.loads(plans_file.read_text())}


def test_regions_train_with_weights_by_name_and_plans_use_the_venous_reference(region_run):
    dataset_json = json.loads((region_run["raw"] / "dataset.json").read_text())
    assert dataset_json["labels"] == REGIONS["labels"] and dataset_json["regions_class_order"] == [1, 2, 3]
    assert dataset_json["hpn"]["reference_phase"] == "venous"
    assert region_run["plans"]["hpn_reference_phase"] == "venous"
    log = "".join(p.read_text() for p in (region_run["model"] / "fold_0").glob("training_log_*.txt"))
    assert "pairing loss" in log  # HPN trained on nnU-Net's region loss
    checkpoint = region_run["model"] / "fold_0" / "checkpoint_final.pth"
    assert checkpoint.is_file()
    # the region weights {"PDAC": 4, "duct": 4} reached nnU-Net's BCE term, one per region channel
    from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss

    from nnunet_hpn.nnunet.trainers.hpn_trainer import weight_cross_entropy

    scheme = LabelScheme.read(region_run["raw"] / "dataset.json")
    weights = scheme.per_class({"PDAC": 4.0, "duct": 4.0})
    assert weights == [1.0, 4.0, 4.0]
    import torch

    loss = DC_and_BCE_loss({}, {"batch_dice": False, "do_bg": True, "smooth": 1e-5})
    logits, target = torch.zeros(1, 3, 2, 2, 2), torch.zeros(1, 3, 2, 2, 2)
    target[:, 1] = 1.0  # every voxel PDAC, the prediction says nothing
    plain = loss.ce(logits, target).item()
    weight_cross_entropy(loss, weights, 3, torch.device("cpu"))
    assert loss.ce.weight.shape == (3, 1, 1, 1)
    assert loss.ce(logits, target).item() == pytest.approx(plain * 3)  # the mean of the weights 1, 4, 4


def test_union_evaluate_and_report_match_nnunet_for_every_region(region_run, tmp_path):
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    union = tmp_path / "union"
    assert main(["union", "-i", *(str(folder) for folder in region_run["predictions"].values()), "-o",
                 str(union)]) == 0
    summary = tmp_path / "summary.json"
    assert main(["evaluate", str(region_run["truth"]), str(union), "-o", str(summary)]) == 0
    ours = json.loads(summary.read_text())
    assert list(ours["mean"]) == ["abnormal pancreas", "PDAC", "duct"]
    regions = LabelScheme.read(region_run["raw"] / "dataset.json").nnunet_regions_or_labels
    nnunet = compute_metrics_on_folder(str(region_run["truth"]), str(union), None, SimpleITKIO(), ".nii.gz",
                                       list(regions.values()), num_processes=1)
    compared = 0
    for entry in nnunet["metric_per_case"]:
        case = Path(entry["prediction_file"]).name[:-len(".nii.gz")]
        for name, region in regions.items():
            theirs = entry["metrics"][region]["Dice"]
            if np.isnan(theirs):  # both empty: nnU-Net's NaN, our 1
                assert ours["per_case"][case][name] == 1.0
            else:
                assert ours["per_case"][case][name] == pytest.approx(theirs, abs=1e-12)
                compared += 1
    assert compared >= 4
    # the union holds every region either folder found (regions nest, painted in regions_class_order)
    for case in region_run["cases"]:
        maps = [sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"{case}.nii.gz")))
                for folder in [*region_run["predictions"].values(), union]]
        for values in ((1, 2, 3), (2,), (3,)):
            assert np.array_equal(np.isin(maps[2], values), np.isin(maps[0], values) | np.isin(maps[1], values))

    report = tmp_path / "report"
    assert main(["report", *(f"{name}={folder}" for name, folder in region_run["predictions"].items()),
                 f"union={union}", "--gt", str(region_run["truth"]), "--images", str(region_run["root"] / "imagesTs"),
                 "-o", str(report)]) == 0
    text = (report / "report.md").read_text()
    assert "| Method | Abnormal pancreas | PDAC mass | Pancreatic duct |" in text
    report_json = json.loads((report / "report.json").read_text())
    assert report_json["per_method"]["union"]["mean"] == pytest.approx(ours["mean"])


def test_raw_phases_are_predicted_on_the_venous_grid(region_run, tmp_path):
    """The arterial phase on a grid of its own: nnunet-hpn predict resamples it onto the stored reference phase
    (venous), and the label map has exactly the venous input's geometry."""
    case = region_run["raw_test"] / region_run["cases"][0]
    arterial = sitk.ReadImage(str(case / "arterial.nii.gz"))
    other_grid = sitk.Resample(arterial, [s + 4 for s in arterial.GetSize()], sitk.Transform(), sitk.sitkLinear,
                               [o - 3.0 for o in arterial.GetOrigin()], [s * 0.9 for s in arterial.GetSpacing()],
                               arterial.GetDirection(), -1000.0)
    moved = tmp_path / "arterial_other_grid.nii.gz"
    sitk.WriteImage(other_grid, str(moved))
    out = tmp_path / "label.nii.gz"
    assert main(["predict", "--arterial", str(moved), "--venous", str(case / "venous.nii.gz"), "-m",
                 str(region_run["model"]), "-o", str(out), "--registration", "none", "--qc",
                 str(tmp_path / "qc.json")]) == 0
    label, venous = sitk.ReadImage(str(out)), sitk.ReadImage(str(case / "venous.nii.gz"))
    assert label.GetSize() == venous.GetSize() and label.GetOrigin() == venous.GetOrigin()
    assert label.GetSpacing() == venous.GetSpacing() and label.GetDirection() == venous.GetDirection()
    assert label.GetSize() != other_grid.GetSize()
    assert json.loads((tmp_path / "qc.json").read_text())["reference_phase"] == "venous"
    assert set(np.unique(sitk.GetArrayFromImage(label)).tolist()) <= {0, 1, 2, 3}
