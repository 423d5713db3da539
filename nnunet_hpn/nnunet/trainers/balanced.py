"""The "balanced" recipe of the CPU Table 1 v2: one set of training settings applied to every Table-1 row, so that
a short CPU budget does not decide by chance whether the small classes (PDAC, duct) are learnt at all.

:class:`BalancedRecipeMixin` overrides nnU-Net's own hooks only: the class weights of the cross-entropy
(``HPNTrainer.ce_class_weights``), foreground sampling (``oversample_foreground_percent``), the initial learning
rate (``initial_lr``) and the pairing-loss warm-up (``HPNTrainer.pairing_warmup_epochs``, a no-op for rows without the
pairing loss). Network, data, augmentation and the budget are the row's own. Every trained row of Table 1 has a
``<Trainer>_balanced`` trainer.
"""
import torch

from nnunet_hpn.nnunet.trainers.hpn_trainer import (
    EarlyFusionTrainer,
    HPNTrainer,
    HPNTrainer_demo,
    HPNTrainer_virtual,
    HyperNetTrainer,
    HyperNetTrainer_virtual,
    SinglePhaseTrainer_arterial,
    SinglePhaseTrainer_venous,
)


class BalancedRecipeMixin:
    """Put first in the bases of an HPN trainer: cross-entropy of PDAC and duct weighted 4, every patch centred on a
    foreground class, initial learning rate 0.03, λ ramped up over the first 12 epochs."""

    #: cross-entropy of PDAC and duct weighted 4 (the others 1): the demo's weights, the lever that made its short runs
    #: find PDAC
    ce_class_weights = HPNTrainer_demo.ce_class_weights
    #: epochs over which λ ramps linearly from 0 (only rows with the pairing loss use it)
    pairing_warmup_epochs = 12
    #: share of the patches centred on a voxel of a foreground class (nnU-Net picks the class uniformly among those
    #: the case has, so PDAC and duct each get about a third of the patches; nnU-Net's default: 0.33)
    balanced_oversample_foreground: float = 1.0
    #: initial learning rate of nnU-Net's poly schedule (nnU-Net: 0.01)
    balanced_initial_lr: float = 0.03

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.oversample_foreground_percent = self.balanced_oversample_foreground
        self.initial_lr = self.balanced_initial_lr

    def on_train_start(self) -> None:
        super().on_train_start()
        self.print_to_log_file(
            f"balanced recipe: cross-entropy class weights {self.ce_class_weights}, foreground patches "
            f"{self.oversample_foreground_percent}, initial LR {self.initial_lr}, pairing warm-up "
            f"{self.pairing_warmup_epochs} epochs")


class SinglePhaseTrainer_arterial_balanced(BalancedRecipeMixin, SinglePhaseTrainer_arterial):
    """Single-phase (arterial) with the balanced recipe."""


class SinglePhaseTrainer_venous_balanced(BalancedRecipeMixin, SinglePhaseTrainer_venous):
    """Single-phase (venous) with the balanced recipe."""


class EarlyFusionTrainer_balanced(BalancedRecipeMixin, EarlyFusionTrainer):
    """Early fusion with the balanced recipe."""


class HyperNetTrainer_balanced(BalancedRecipeMixin, HyperNetTrainer):
    """HyperNet with the balanced recipe."""


class HyperNetTrainer_virtual_balanced(BalancedRecipeMixin, HyperNetTrainer_virtual):
    """HyperNet-aug with the balanced recipe."""


class HPNTrainer_balanced(BalancedRecipeMixin, HPNTrainer):
    """HPN (original pairs) with the balanced recipe."""


class HPNTrainer_virtual_balanced(BalancedRecipeMixin, HPNTrainer_virtual):
    """HPN on virtual pairs with the balanced recipe."""

