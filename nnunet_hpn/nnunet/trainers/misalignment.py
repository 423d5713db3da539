"""Trainers with misalignment augmentation (:mod:`nnunet_hpn.augment.phase_misalignment`): every training sample's
non-reference phases are warped by a random smooth displacement of up to ``misalignment_mm`` (default 4 mm), as
residual misregistration would leave them; labels and the reference phase stay as they are. Only the training
pipeline changes; network, loss and inference are the parent trainer's."""
from typing import Any

from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform

from nnunet_hpn.augment.phase_misalignment import DEFAULT_MAX_DISPLACEMENT_MM, insert_phase_misalignment
from nnunet_hpn.nnunet.planners.hpn_planner import REFERENCE_KEY
from nnunet_hpn.nnunet.trainers.hpn_trainer import EarlyFusionTrainer, HPNTrainer
from nnunet_hpn.labels import dataset_reference_phase
from nnunet_hpn.phases import channel_names


class MisalignmentMixin:
    """Put first in the bases of an HPN trainer: its training pipeline warps the non-reference phases right after
    nnU-Net's spatial block; the displacement is in mm, converted with the trainer's configuration's spacing."""

    #: largest displacement (mm) of a non-reference phase against the reference phase
    misalignment_mm: float = DEFAULT_MAX_DISPLACEMENT_MM

    def get_training_transforms(self, *args: Any, **kwargs: Any) -> BasicTransform:
        phases = channel_names(self.dataset_json)
        reference = self.plans_manager.plans.get(REFERENCE_KEY) or dataset_reference_phase(self.dataset_json)
        return insert_phase_misalignment(super().get_training_transforms(*args, **kwargs), self.misalignment_mm,
                                         self.configuration_manager.spacing, phases.index(reference),
                                         list(range(len(phases))))

    def on_train_start(self) -> None:
        super().on_train_start()
        self.print_to_log_file(f"misalignment augmentation: non-reference phases warped by up to "
                               f"{self.misalignment_mm} mm (smooth field + shift), training pipeline only")


class HPNTrainer_misalign(MisalignmentMixin, HPNTrainer):
    """HPN trained with misalignment augmentation (non-reference phases warped by up to 4 mm)."""


class EarlyFusionTrainer_misalign(MisalignmentMixin, EarlyFusionTrainer):
    """Early fusion (nnU-Net's single-path network on both phases) trained with misalignment augmentation."""
