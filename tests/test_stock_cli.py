"""End to end with the STOCK nnU-Net commands on a tiny phantom dataset: plan and preprocess (-np 2, spawned
workers), train, predict (-npp 2 -nps 2, spawned workers), find_best_configuration."""
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

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
