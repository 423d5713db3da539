"""The ``"hpn"`` entry of an HPN trainer's checkpoint: what it holds, how it joins nnU-Net's checkpoint, and what a
continued training (``nnUNetv2_train --c``) checks and restores from it.

The entry holds plain Python values (JSON-compatible): the trainer's name, the network (class name and kwargs),
backbone, path channels, hyper-connections, pairing weight and warm-up, virtual pairs, test-time mirroring and the
training length. nnU-Net's own loaders ignore the entry; :class:`~nnunet_hpn.nnunet.trainers.hpn_trainer.HPNTrainer`
writes it in ``save_checkpoint`` and checks it in ``load_checkpoint``.
"""
import copy
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_hpn.budget import BUDGET_ENV, NO_TTA_ENV
from nnunet_hpn.errors import HPNInputError
from nnunet_hpn.io.publish import atomic_file

#: checkpoint entry with the HPN settings (nnU-Net's own loaders ignore unknown entries)
CHECKPOINT_KEY = "hpn"
#: settings of the ``"hpn"`` entry that define the model: a checkpoint continues only in a trainer with the same ones
MODEL_SETTINGS = ("network", "pairing_loss_weight", "pairing_warmup_epochs", "virtual_pairs")


def settings_entry(trainer_name: str, network_class_name: str, network_kwargs: Mapping[str, Any], backbone: str,
                   pairing_loss_weight: float, pairing_warmup_epochs: int, virtual_pair_alpha: Optional[float],
                   test_time_mirroring: bool, budget: Mapping[str, int]) -> Dict[str, Any]:
    """The ``"hpn"`` entry of one trainer's checkpoint (``budget``: attribute -> value of :data:`BUDGET_ENV`)."""
    return {
        "trainer": trainer_name,
        "network": {"class_name": network_class_name, "kwargs": copy.deepcopy(dict(network_kwargs))},
        "backbone": backbone,
        "path_channels": network_kwargs.get("path_channels"),  # None: one path on every channel (early fusion)
        "hyper_connections": list(network_kwargs.get("hyper_connections", [])),
        "pairing_loss_weight": float(pairing_loss_weight),
        "pairing_warmup_epochs": int(pairing_warmup_epochs),
        "virtual_pairs": {"on": virtual_pair_alpha is not None,
                          "alpha": None if virtual_pair_alpha is None else float(virtual_pair_alpha)},
        "test_time_mirroring": bool(test_time_mirroring),
        "budget": {attribute: int(value) for attribute, value in budget.items()},
    }


def save_with_settings(save_nnunet_checkpoint: Callable[[str], None], filename: Union[str, Path],
                       settings: Mapping[str, Any]) -> None:
    """nnU-Net's checkpoint (written by ``save_nnunet_checkpoint(path)``) plus ``settings`` as the ``"hpn"`` entry,
    written to a temporary file and renamed into place, so that a training killed while saving leaves the previous
    checkpoint intact."""
    with atomic_file(Path(filename)) as temporary:
        plain = temporary.with_name(f"{temporary.name}.nnunet")
        try:
            save_nnunet_checkpoint(str(plain))
            # memory-mapped: the tensors are copied file to file, not read into memory first
            checkpoint = torch.load(plain, map_location="cpu", weights_only=False, mmap=True)
            checkpoint[CHECKPOINT_KEY] = dict(settings)
            torch.save(checkpoint, temporary)
        finally:
            plain.unlink(missing_ok=True)


def read_checkpoint(filename_or_checkpoint: Union[dict, str]) -> Tuple[dict, str]:
    """(checkpoint, its name for messages) of what nnU-Net's ``load_checkpoint`` receives: a file (memory-mapped)
    or an already loaded checkpoint."""
    if isinstance(filename_or_checkpoint, dict):
        return filename_or_checkpoint, "checkpoint"
    source = str(filename_or_checkpoint)
    return torch.load(source, map_location="cpu", weights_only=False, mmap=True), source


def _differences(ours: Any, theirs: Any, prefix: str = "") -> List[str]:
    """``"key: a (checkpoint) vs b (this trainer)"`` for every leaf where two nested dicts differ."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        return [line for key in sorted(set(ours) | set(theirs), key=str)
                for line in _differences(ours.get(key), theirs.get(key), f"{prefix}{key}.")]
    if ours == theirs:
        return []
    return [f"{prefix.rstrip('.')}: {theirs!r} (checkpoint) vs {ours!r} (this trainer)"]


def check_model_settings(saved: Mapping[str, Any], ours: Mapping[str, Any], source: str, trainer_name: str) -> None:
    """HPNInputError naming ``source`` and every difference when the checkpoint's :data:`MODEL_SETTINGS` (``saved``)
    are not those of the trainer ``trainer_name`` (``ours``)."""
    differences = _differences({key: ours[key] for key in MODEL_SETTINGS},
                               {key: saved.get(key) for key in MODEL_SETTINGS})
    if differences:
        raise HPNInputError(
            f"{source}: checkpoint of {saved.get('trainer')} does not fit {trainer_name}: "
            f"{'; '.join(differences)} (continue it with -tr {saved.get('trainer')}, or start anew)")


def restore_run_settings(trainer: nnUNetTrainer, saved: Mapping[str, Any]) -> List[str]:
    """Set the checkpoint's training length and test-time mirroring on ``trainer`` where no ``HPN_*`` variable sets
    them now (a learning-rate schedule already built ends with the restored length); returns what was restored, as
    ``"<setting> <value>"`` lines."""
    restored = []
    for variable, attribute in BUDGET_ENV.items():
        if not os.environ.get(variable) and attribute in saved.get("budget", {}):
            setattr(trainer, attribute, int(saved["budget"][attribute]))
            restored.append(f"{attribute} {getattr(trainer, attribute)}")
    if trainer.was_initialized and hasattr(trainer.lr_scheduler, "max_steps"):  # nnU-Net's poly schedule, built
        trainer.lr_scheduler.max_steps = trainer.num_epochs
    if NO_TTA_ENV not in os.environ and "test_time_mirroring" in saved:
        trainer.test_time_mirroring = bool(saved["test_time_mirroring"])
        restored.append(f"test-time mirroring {'on' if trainer.test_time_mirroring else 'off'}")
    return restored
