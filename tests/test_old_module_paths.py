"""Plans and checkpoints written before the package was regrouped name the network by its old module path
(``nnunet_hpn.hyper_connections.HyperPairedUNet``): they still train, continue with ``--c`` and predict."""
import copy
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from conftest import DATASET_ID, TINY_CONFIGURATION, run_stock

OLD_CLASS = "nnunet_hpn.hyper_connections.HyperPairedUNet"
PLANS = "nnUNetHPNPlansOldPaths"
TRAINER = "HPNTrainer"
BUDGET = {"HPN_ITERATIONS_PER_EPOCH": "2", "HPN_VAL_ITERATIONS_PER_EPOCH": "1", "HPN_NO_TTA": "1"}


def test_old_module_path_trains_continues_and_predicts(planned_dataset, tmp_path: Path) -> None:
    env = {key: value for key, value in planned_dataset["env"].items() if not key.startswith("HPN_")}
    plans = copy.deepcopy(planned_dataset["plans"])
    plans["plans_name"] = PLANS
    for configuration in plans["configurations"].values():
        if "architecture" in configuration:
            configuration["architecture"]["network_class_name"] = OLD_CLASS
    planned_dataset["plans_file"].with_name(f"{PLANS}.json").write_text(json.dumps(plans, indent=2))
    train = ["nnUNetv2_train", str(DATASET_ID), TINY_CONFIGURATION, "0", "-tr", TRAINER, "-p", PLANS, "-device", "cpu"]

    run_stock(train, {**env, **BUDGET, "HPN_NUM_EPOCHS": "1"})
    fold = Path(env["nnUNet_results"]) / planned_dataset["raw"].name / f"{TRAINER}__{PLANS}__{TINY_CONFIGURATION}" \
        / "fold_0"
    first = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert first["hpn"]["network"]["class_name"] == OLD_CLASS and first["current_epoch"] == 1

    run_stock([*train, "--c"], {**env, **BUDGET, "HPN_NUM_EPOCHS": "2"})
    resumed = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert resumed["current_epoch"] == 2 and len(resumed["logging"]["train_losses"]) == 2

    out = tmp_path / "predictions"
    run_stock(["nnUNetv2_predict", "-i", str(planned_dataset["raw"] / "imagesTs"), "-o", str(out), "-d",
               str(DATASET_ID), "-c", TINY_CONFIGURATION, "-tr", TRAINER, "-p", PLANS, "-f", "0", "-device", "cpu",
               "-npp", "0", "-nps", "0"], env)
    for case in planned_dataset["test_cases"]:
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{case}.nii.gz")))
        assert labels.shape == (24, 48, 48) and set(np.unique(labels)) <= {0, 1, 2, 3}
