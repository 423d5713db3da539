"""Interrupted HPN training: SIGKILL mid-epoch after the first checkpoint, ``nnUNetv2_train --c`` finishes it; the
checkpoint carries the HPN settings, is checked on loading, and ``nnUNetv2_predict`` needs nothing else."""
import copy
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import BIN, DATASET_ID, TINY_CONFIGURATION, run_stock
from nnunet_hpn.errors import HPNInputError
from nnunet_hpn.nnunet.trainers import hpn_trainer

TRAINER = "HPNTrainer"
PLANS = "nnUNetHPNPlans"
HPN_VARIABLES = ("HPN_NUM_EPOCHS", "HPN_ITERATIONS_PER_EPOCH", "HPN_VAL_ITERATIONS_PER_EPOCH", "HPN_SAVE_EVERY",
                 "HPN_NO_TTA", "HPN_SEED")
#: the first run's budget (3 epochs x 4 iterations, checkpoint_latest.pth after every epoch); the resumed run gets
#: no HPN_* variable and must take the budget from the checkpoint
FIRST_RUN_BUDGET = {"HPN_NUM_EPOCHS": "3", "HPN_ITERATIONS_PER_EPOCH": "4", "HPN_VAL_ITERATIONS_PER_EPOCH": "1",
                    "HPN_SAVE_EVERY": "1", "HPN_NO_TTA": "1"}


def _train_command(*extra: str) -> list:
    return [str(BIN / "nnUNetv2_train"), str(DATASET_ID), TINY_CONFIGURATION, "0", "-tr", TRAINER, "-p", PLANS,
            "-device", "cpu", *extra]


def _logs(fold: Path) -> list:
    """Training logs, oldest first (nnU-Net writes a new one per run, named by its start time)."""
    return sorted(fold.glob("training_log_*.txt"), key=lambda p: p.stat().st_mtime)


EPOCH_LINE = re.compile(r"^\S+ \S+ Epoch (\d+) ?$", flags=re.MULTILINE)  # "2026-11-27 21:05:19.681743: Epoch 1 "


def _epochs_started(log: str) -> list:
    return [int(e) for e in EPOCH_LINE.findall(log)]


@pytest.fixture(scope="module")
def interrupted_and_resumed(planned_dataset, tmp_path_factory) -> dict:
    env = {k: v for k, v in planned_dataset["env"].items() if k not in HPN_VARIABLES}
    env.update(nnUNet_n_proc_DA="1", nnUNet_def_n_proc="1")  # one augmentation worker (killed too), one exporter
    model = Path(env["nnUNet_results"]) / planned_dataset["raw"].name / f"{TRAINER}__{PLANS}__{TINY_CONFIGURATION}"
    shutil.rmtree(model, ignore_errors=True)
    fold = model / "fold_0"
    console = tmp_path_factory.mktemp("resume") / "first_run.txt"
    with console.open("w") as out:
        # own session: SIGKILL reaches the trainer and its data-augmentation workers, like a killed job would
        proc = subprocess.Popen(_train_command(), env={**env, **FIRST_RUN_BUDGET}, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            deadline = time.time() + 540
            while time.time() < deadline and proc.poll() is None:
                logs = _logs(fold) if fold.is_dir() else []
                if (fold / "checkpoint_latest.pth").is_file() and logs and \
                        1 in _epochs_started(logs[-1].read_text()):
                    break
                time.sleep(0.1)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if proc.returncode != -signal.SIGKILL:
        pytest.fail(f"the first run was not killed in epoch 1 (exit {proc.returncode}):\n{console.read_text()[-3000:]}")
    first_log = _logs(fold)[-1].read_text()
    interrupted = torch.load(fold / "checkpoint_latest.pth", map_location="cpu", weights_only=False)
    resumed = run_stock(_train_command("--c"), env)
    return {"fold": fold, "model": model, "first_log": first_log, "interrupted": interrupted,
            "resumed_output": resumed.stdout + resumed.stderr, "env": env}


def test_killed_training_resumes_from_its_checkpoint_and_finishes(interrupted_and_resumed):
    run = interrupted_and_resumed
    fold = run["fold"]
    # killed mid-epoch: epoch 1 had started, none of its losses was logged
    after_epoch_1 = run["first_log"][[m.end() for m in EPOCH_LINE.finditer(run["first_log"])][1]:]
    assert "train_loss" not in after_epoch_1, after_epoch_1
    assert run["interrupted"]["current_epoch"] == 1
    assert run["interrupted"]["hpn"]["trainer"] == TRAINER
    # --c continued at epoch 1 (not 0) and finished
    assert (fold / "checkpoint_final.pth").is_file() and not (fold / "checkpoint_latest.pth").exists()
    resumed_log = _logs(fold)[-1].read_text()
    assert _epochs_started(resumed_log) == [1, 2], resumed_log
    assert f"continuing {TRAINER} from epoch 1 with the checkpoint's settings" in resumed_log
    # the first run says where its budget came from; the resumed one (no HPN_* variable) has the checkpoint's
    assert "budget from the environment: HPN_NUM_EPOCHS=3, HPN_ITERATIONS_PER_EPOCH=4" in run["first_log"]
    assert "budget from the environment" not in resumed_log
    assert "pairing loss" in resumed_log and "Training done." in resumed_log
    final = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 3
    assert len(final["logging"]["train_losses"]) == 3  # epoch 0 from the killed run, 1 and 2 from the resumed one
    assert final["logging"]["train_losses"][0] == run["interrupted"]["logging"]["train_losses"][0]
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert np.isfinite(summary["foreground_mean"]["Dice"])


def test_checkpoint_holds_the_hpn_settings(interrupted_and_resumed, planned_dataset):
    final = torch.load(interrupted_and_resumed["fold"] / "checkpoint_final.pth", map_location="cpu",
                       weights_only=False)
    settings = final["hpn"]
    arch = planned_dataset["plans"]["configurations"][TINY_CONFIGURATION]["architecture"]
    assert settings["trainer"] == TRAINER
    assert settings["pairing_loss_weight"] == 0.5 and settings["pairing_warmup_epochs"] == 0
    assert settings["virtual_pairs"] == {"on": False, "alpha": None}
    assert settings["test_time_mirroring"] is False and final["inference_allowed_mirroring_axes"] is None
    assert settings["budget"] == {"num_epochs": 3, "num_iterations_per_epoch": 4, "num_val_iterations_per_epoch": 1,
                                  "save_every": 1}
    assert settings["backbone"] == "unet"
    assert settings["path_channels"] == [0, 1] and len(settings["hyper_connections"]) == 6
    assert settings["network"]["class_name"] == "nnunet_hpn.model.network.HyperPairedUNet"
    assert settings["network"]["kwargs"] == arch["arch_kwargs"]
    json.dumps(settings)  # plain values only
    # the network the predictor builds (trainer class method + plans.json of the model folder) takes the weights
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = PlansManager(json.loads((interrupted_and_resumed["model"] / "plans.json").read_text()))
    configuration = plans.get_configuration(TINY_CONFIGURATION)
    network = hpn_trainer.HPNTrainer.build_network_architecture(plans, configuration, 2, 4, False)
    network.load_state_dict(final["network_weights"])  # strict
    assert network.hyper_connections == tuple(settings["hyper_connections"])


def test_predict_needs_only_the_model_folder(interrupted_and_resumed, planned_dataset, tmp_path):
    env = dict(interrupted_and_resumed["env"])
    for key in ("nnUNet_raw", "nnUNet_preprocessed"):  # no dataset, plans or HPN_* variables: the model folder only
        env[key] = str(tmp_path / f"empty_{key}")
        Path(env[key]).mkdir()
    out = tmp_path / "pred"
    run_stock(["nnUNetv2_predict", "-i", str(planned_dataset["raw"] / "imagesTs"), "-o", str(out),
               "-d", str(DATASET_ID), "-c", TINY_CONFIGURATION, "-tr", TRAINER, "-p", PLANS, "-f", "0",
               "-device", "cpu", "-npp", "0", "-nps", "0"], env)
    for case in planned_dataset["test_cases"]:
        prediction = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{case}.nii.gz")))
        assert prediction.shape == (24, 48, 48) and set(np.unique(prediction)) <= {0, 1, 2, 3}


REFUSALS = {"HyperNetTrainer": "pairing_loss_weight: 0.5 (checkpoint) vs 0.0 (this trainer)",
            "SinglePhaseTrainer_venous": "network.kwargs.path_channels: [0, 1] (checkpoint) vs [1] (this trainer)",
            "HPNTrainer_virtual": "virtual_pairs.on: False (checkpoint) vs True (this trainer)",
            "HPNTrainer_demo": "pairing_warmup_epochs: 0 (checkpoint) vs 12 (this trainer)"}


@pytest.mark.parametrize("other,difference", REFUSALS.items(), ids=list(REFUSALS))
def test_checkpoint_of_another_variant_is_refused(interrupted_and_resumed, planned_dataset, monkeypatch, other,
                                                  difference):
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(key, planned_dataset["env"][key])
    dataset_json = json.loads((planned_dataset["raw"] / "dataset.json").read_text())
    plans = dict(copy.deepcopy(planned_dataset["plans"]), continue_training=True)
    trainer = getattr(hpn_trainer, other)(plans=plans, configuration=TINY_CONFIGURATION, fold=0,
                                          dataset_json=dataset_json, device=torch.device("cpu"))
    checkpoint = interrupted_and_resumed["fold"] / "checkpoint_final.pth"
    with pytest.raises(HPNInputError) as error:
        trainer.load_checkpoint(str(checkpoint))
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{checkpoint}: checkpoint of {TRAINER} does not fit {other}")
    assert difference in message and f"-tr {TRAINER}" in message


@pytest.mark.parametrize("epochs_variable,epochs", [(None, 3), ("7", 7)])
def test_same_settings_continue_in_another_trainer_with_the_checkpoints_length(
        interrupted_and_resumed, planned_dataset, monkeypatch, epochs_variable, epochs):
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(key, planned_dataset["env"][key])
    for variable in HPN_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    if epochs_variable:  # HPN_NUM_EPOCHS set now overrides the checkpoint's length
        monkeypatch.setenv("HPN_NUM_EPOCHS", epochs_variable)
    dataset_json = json.loads((planned_dataset["raw"] / "dataset.json").read_text())
    plans = dict(copy.deepcopy(planned_dataset["plans"]), continue_training=True)
    trainer = hpn_trainer.HPNTrainer(plans=plans, configuration=TINY_CONFIGURATION, fold=0,  # same model settings
                                     dataset_json=dataset_json, device=torch.device("cpu"))
    if epochs_variable is None:
        trainer.initialize()  # the LR schedule (1000 epochs) exists already; nnUNetv2_train --c initializes on loading
    trainer.load_checkpoint(str(interrupted_and_resumed["fold"] / "checkpoint_final.pth"))
    assert trainer.current_epoch == 3
    budget = (trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch)
    assert budget == (epochs, 4, 1)
    assert trainer.lr_scheduler.max_steps == epochs  # the poly learning-rate schedule ends with the training
    assert trainer.test_time_mirroring is False  # HPNTrainer mirrors by default; the checkpoint's run did not
