"""Stage-2 trainers of two-stage HPN (stage 1: :mod:`nnunet_hpn.pipeline.locator`): trained on label crops of
``STAGE2_TRAINING_MARGIN_MM`` (``convert --crop-to-label 30``) with the box jittered per sample
(:mod:`nnunet_hpn.augment.box_jitter`), so that they tolerate the locator's box being up to ``BOX_JITTER_MM`` off
on every side (the margins: :mod:`nnunet_hpn.augment.box_margins`). Only the training pipeline changes; network,
loss and inference are the parent trainer's."""
from typing import Any

from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform

from nnunet_hpn.augment.box_jitter import insert_box_jitter
from nnunet_hpn.augment.box_margins import BOX_JITTER_MM, STAGE2_MARGIN_MM
from nnunet_hpn.nnunet.trainers.hpn_trainer import HPNTrainer, HPNTrainer_virtual


class BoxJitterMixin:
    """Put first in the bases of an HPN trainer: its training pipeline blanks every patch outside a jittered box
    around its foreground right after nnU-Net's spatial block. ``get_training_transforms`` is an instance method
    here: the margins are in mm, and the patch spacing is the trainer's configuration's."""

    #: the box's margin at inference (mm) and the largest change of each side during training (mm)
    box_margin_mm: float = STAGE2_MARGIN_MM
    box_jitter_mm: float = BOX_JITTER_MM

    def get_training_transforms(self, *args: Any, **kwargs: Any) -> BasicTransform:
        return insert_box_jitter(super().get_training_transforms(*args, **kwargs), self.box_margin_mm,
                                 self.box_jitter_mm, self.configuration_manager.spacing)

    def on_train_start(self) -> None:
        super().on_train_start()
        self.print_to_log_file(f"box jitter: image outside the foreground box + {self.box_margin_mm} ± "
                               f"{self.box_jitter_mm} mm per side set to 0, training pipeline only")


class HPNTrainer_stage2(BoxJitterMixin, HPNTrainer):
    """HPN as stage 2 of two-stage inference: trained on label crops with the box jittered."""


class HPNTrainer_stage2_virtual(BoxJitterMixin, HPNTrainer_virtual):
    """HPN on virtual pairs as stage 2 (its union with HPNTrainer_stage2 is two-stage HPN's final output)."""
