"""End to end with the STOCK nnU-Net commands on a tiny phantom dataset: plan and preprocess (-np 2, spawned
workers), train, predict (-npp 2 -nps 2, spawned workers), find_best_configuration."""
import json
from pathlib import Path

import blosc2
import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_hpn.errors import HPNInputError
from conftest import DATASET_ID, TINY_CONFIGURATION, run_stock

TRAINER = "HPNTrainer_cpu_smoke"
PLANS = "nnUNetHPNPlans"


def test_plan_and_preprocess_writes_hpn_plans(planned_dataset):
    plans = planned_dataset["plans"]
    fullres = plans["configurations"]["3d_fullres"]
    assert fullres["architecture"]["network_class_name"] == "nnunet_hpn.model.network.HyperPairedUNet"
    assert fullres["architecture"]["arch_kwargs"]["path_channels"] == [0, 1]
    assert len(fullres["architecture"]["arch_kwargs"]["hyper_connections"]) == 6
    assert fullres["normalization_schemes"] == ["HPNCTNormalization", "HPNCTNormalization"]
    assert plans["foreground_intensity_properties_per_channel"]["0"]["hpn_clip_hu"] == [-100.0, 240.0]
    # the spawned preprocessing workers found HPNCTNormalization: the data exists and is z-scored per case
    data_dir = Path(planned_dataset["env"]["nnUNet_preprocessed"]) / planned_dataset["raw"].name / f"{PLANS}_3d_fullres"
    assert len(list(data_dir.glob("*.b2nd"))) >= 6


@pytest.fixture(scope="module")
def trained_model(planned_dataset) -> Path:
    env = planned_dataset["env"]
    run_stock(["nnUNetv2_train", str(DATASET_ID), TINY_CONFIGURATION, "0", "-tr", TRAINER, "-p", PLANS,
               "-device", "cpu", "--npz"], env)
    return Path(env["nnUNet_results"]) / planned_dataset["raw"].name / f"{TRAINER}__{PLANS}__{TINY_CONFIGURATION}"


def test_train_logs_pairing_loss_and_validates(trained_model):
    fold = trained_model / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file()
    # every log of the fold: a trainer created by another test in the same results folder may add a header-only one
    log = "".join(path.read_text() for path in fold.glob("training_log_*.txt"))
    assert "pairing loss" in log
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert np.isfinite(summary["foreground_mean"]["Dice"])


def test_predict_with_worker_processes(planned_dataset, trained_model, tmp_path):
    out = tmp_path / "pred"
    run_stock(["nnUNetv2_predict", "-i", str(planned_dataset["raw"] / "imagesTs"), "-o", str(out),
               "-d", str(DATASET_ID), "-c", TINY_CONFIGURATION, "-tr", TRAINER, "-p", PLANS, "-f", "0",
               "-device", "cpu", "-npp", "2", "-nps", "2"], planned_dataset["env"])
    for case in planned_dataset["test_cases"]:
        pred = sitk.ReadImage(str(out / f"{case}.nii.gz"))
        image = sitk.ReadImage(str(planned_dataset["raw"] / "imagesTs" / f"{case}_0000.nii.gz"))
        assert pred.GetSize() == image.GetSize() and pred.GetSpacing() == image.GetSpacing()
        assert set(np.unique(sitk.GetArrayFromImage(pred))) <= {0, 1, 2, 3}


def test_find_best_configuration(planned_dataset, trained_model):
    proc = run_stock(["nnUNetv2_find_best_configuration", str(DATASET_ID), "-c", TINY_CONFIGURATION,
                      "-tr", TRAINER, "-p", PLANS, "-f", "0", "-np", "2"], planned_dataset["env"])
    assert f"-tr {TRAINER}" in proc.stdout and f"-p {PLANS}" in proc.stdout


def test_plot_overlay_pngs_reads_the_cpu_configuration(planned_dataset, tmp_path):
    """``cpu-config``'s configuration is complete enough for stock commands that read it without resolving
    ``inherits_from``: nnUNetv2_plot_overlay_pngs finds its data and draws one PNG per case."""
    plans = json.loads(planned_dataset["plans_file"].read_text())
    tiny = plans["configurations"][TINY_CONFIGURATION]
    assert tiny["data_identifier"] == plans["configurations"]["3d_fullres"]["data_identifier"]
    out = tmp_path / "overlays"
    run_stock(["nnUNetv2_plot_overlay_pngs", "-d", str(DATASET_ID), "-o", str(out), "-c", TINY_CONFIGURATION,
               "-p", "nnUNetHPNPlans", "-np", "1"], planned_dataset["env"])
    n_cases = len(list((planned_dataset["raw"] / "labelsTr").glob("*.nii.gz")))
    assert len(list(out.glob("*.png"))) == n_cases


def test_a_coarse_cpu_configuration_is_preprocessed_by_the_stock_command(planned_dataset):
    """``cpu-config --spacing-factor 2`` is a 3d_lowres-like configuration: twice the spacing, half the median size,
    data of its own, which ``nnUNetv2_preprocess -c`` writes at about half the grid (in a plans file of its own, so
    the session's plans stay as they are)."""
    from nnunet_hpn.nnunet.plans_tools import add_small_configuration

    plans_file = planned_dataset["plans_file"].with_name("nnUNetHPNPlansCoarseTest.json")
    plans = json.loads(planned_dataset["plans_file"].read_text())
    plans_file.write_text(json.dumps({**plans, "plans_name": "nnUNetHPNPlansCoarseTest"}))
    fine = plans["configurations"]["3d_fullres"]
    coarse = add_small_configuration(plans_file, "3d_coarse", patch_size=(16, 32, 32), spacing_factor=2.0)
    assert coarse["spacing"] == [2 * s for s in fine["spacing"]]
    assert coarse["median_image_size_in_voxels"] == [round(m / 2) for m in fine["median_image_size_in_voxels"]]
    assert coarse["data_identifier"] == "nnUNetHPNPlansCoarseTest_3d_coarse" != fine["data_identifier"]
    with pytest.raises(HPNInputError, match="spacing factor 0.5: must be a number ≥ 1"):
        add_small_configuration(plans_file, "3d_fine", spacing_factor=0.5)
    run_stock(["nnUNetv2_preprocess", "-d", str(DATASET_ID), "-plans_name", "nnUNetHPNPlansCoarseTest",
               "-c", "3d_coarse", "-np", "1"], planned_dataset["env"])
    coarse_dir = plans_file.parent / "nnUNetHPNPlansCoarseTest_3d_coarse"
    fine_dir = plans_file.parent / fine["data_identifier"]
    cases = sorted(p.name for p in fine_dir.glob("*_seg.b2nd"))
    assert cases and sorted(p.name for p in coarse_dir.glob("*_seg.b2nd")) == cases
    for case in cases:
        fine_shape = np.array(blosc2.open(str(fine_dir / case), mode="r").shape[1:])
        coarse_shape = np.array(blosc2.open(str(coarse_dir / case), mode="r").shape[1:])
        assert np.all(np.abs(coarse_shape - fine_shape / 2) <= 1), (case, fine_shape, coarse_shape)


def test_one_channel_dataset_planned_with_hpn_planner_is_one_error_line(tmp_path):
    """HPN's planner meets bad input inside the stock command (after nnU-Net's fingerprint): one error line naming
    the dataset.json, exit status 1, no traceback and no plans written."""
    import subprocess

    from conftest import BIN, nnunet_env

    env = nnunet_env(tmp_path)
    raw = Path(env["nnUNet_raw"]) / "Dataset977_OnePhase"
    for folder in ("imagesTr", "labelsTr"):
        (raw / folder).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for case in ("case_a", "case_b"):
        label = np.zeros((12, 24, 24), np.uint8)
        label[4:8, 8:16, 8:16] = 1
        image = rng.normal(40, 10, label.shape).astype(np.float32) + 60 * label
        for array, path in ((image, raw / "imagesTr" / f"{case}_0000.nii.gz"),
                            (label, raw / "labelsTr" / f"{case}.nii.gz")):
            item = sitk.GetImageFromArray(array)
            item.SetSpacing((1.0, 1.0, 2.5))
            sitk.WriteImage(item, str(path))
    (raw / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0, "organ": 1},
                                                  "numTraining": 2, "file_ending": ".nii.gz"}))
    proc = subprocess.run([str(BIN / "nnUNetv2_plan_and_preprocess"), "-d", "977", "-pl", "HPNPlanner", "-c",
                           "3d_fullres", "--no_pp", "-npfp", "1"], env=env, capture_output=True, text=True,
                          encoding="utf-8", errors="replace")
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert errors == [f"nnUNetv2_plan_and_preprocess: error: {raw / 'dataset.json'}: HPN needs at least 2 phase "
                      f"channels, found 1 ({{'0': 'CT'}})"], proc.stderr[-3000:]
    assert not list(Path(env["nnUNet_preprocessed"]).rglob("nnUNetHPNPlans.json"))
