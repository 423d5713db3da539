"""The ``"hpn"`` checkpoint entry on its own (no training): its fields, the model-settings check of a continued
training, the restore of the run settings, and the atomic write next to nnU-Net's checkpoint."""
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from nnunet_hpn.budget import BUDGET_ENV, NO_TTA_ENV
from nnunet_hpn.errors import HPNInputError
from nnunet_hpn.nnunet.trainers.checkpoint_schema import (CHECKPOINT_KEY, MODEL_SETTINGS, check_model_settings,
                                                          read_checkpoint, restore_run_settings, save_with_settings,
                                                          settings_entry)

BUDGET = {"num_epochs": 3, "num_iterations_per_epoch": 4, "num_val_iterations_per_epoch": 1, "save_every": 1}


def _entry(**changes) -> dict:
    arguments = dict(trainer_name="HPNTrainer", network_class_name="nnunet_hpn.model.network.HyperPairedUNet",
                     network_kwargs={"path_channels": [0, 1], "hyper_connections": ["enc0->enc1"]}, backbone="unet",
                     pairing_loss_weight=0.5, pairing_warmup_epochs=0, virtual_pair_alpha=None,
                     test_time_mirroring=False, budget=BUDGET)
    return settings_entry(**{**arguments, **changes})


def test_the_entry_holds_plain_values() -> None:
    entry = _entry(virtual_pair_alpha=0.4)
    assert entry["virtual_pairs"] == {"on": True, "alpha": 0.4} and entry["path_channels"] == [0, 1]
    assert entry["hyper_connections"] == ["enc0->enc1"] and entry["budget"] == BUDGET
    assert set(MODEL_SETTINGS) <= set(entry)
    assert json.loads(json.dumps(entry)) == entry


def test_other_model_settings_are_refused_in_one_line() -> None:
    check_model_settings(_entry(), _entry(trainer_name="HPNTrainer_cpu_smoke", budget={}), "ckpt.pth", "Other")
    with pytest.raises(HPNInputError) as error:
        check_model_settings(_entry(), _entry(trainer_name="HyperNetTrainer", pairing_loss_weight=0.0), "ckpt.pth",
                             "HyperNetTrainer")
    message = str(error.value)
    assert message.startswith("ckpt.pth: checkpoint of HPNTrainer does not fit HyperNetTrainer: ")
    assert "pairing_loss_weight: 0.5 (checkpoint) vs 0.0 (this trainer)" in message and "\n" not in message


def test_run_settings_restored_unless_the_environment_sets_them(monkeypatch) -> None:
    for variable in (*BUDGET_ENV, NO_TTA_ENV):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HPN_ITERATIONS_PER_EPOCH", "9")
    trainer = SimpleNamespace(num_epochs=1000, num_iterations_per_epoch=9, num_val_iterations_per_epoch=50,
                              save_every=50, test_time_mirroring=True, was_initialized=True,
                              lr_scheduler=SimpleNamespace(max_steps=1000))
    restored = restore_run_settings(trainer, _entry())
    assert (trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.lr_scheduler.max_steps) == (3, 9, 3)
    assert trainer.test_time_mirroring is False and "test-time mirroring off" in restored
    assert "num_epochs 3" in restored and not any(line.startswith("num_iterations_per_epoch") for line in restored)


def test_the_entry_joins_the_checkpoint_atomically(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint_latest.pth"
    save_with_settings(lambda path: torch.save({"network_weights": {"w": torch.ones(2)}}, path), target, _entry())
    checkpoint, source = read_checkpoint(str(target))
    assert source == str(target) and checkpoint[CHECKPOINT_KEY] == _entry()
    assert torch.equal(checkpoint["network_weights"]["w"], torch.ones(2))
    assert read_checkpoint(checkpoint) == (checkpoint, "checkpoint")

    def failing_save(path: str) -> None:
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        save_with_settings(failing_save, target, _entry(pairing_loss_weight=0.0))
    assert read_checkpoint(str(target))[0][CHECKPOINT_KEY] == _entry()  # the previous checkpoint is intact
    assert sorted(path.name for path in tmp_path.iterdir()) == [target.name]  # no temporary left behind
