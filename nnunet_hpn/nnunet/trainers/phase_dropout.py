"""HPN trainers with phase dropout: one model that still predicts when a phase is missing (no second model).

Phase dropout (:mod:`nnunet_hpn.augment.phase_dropout`) blanks whole phases of some training samples, filled exactly as
:func:`nnunet_hpn.pipeline.missing_phase.fill_missing_phases` fills an absent phase at prediction (0 after
normalization).
Only the training pipeline changes (``get_training_transforms``); network, loss and inference are HPNTrainer's.
"""
import inspect
from typing import Any, Optional

from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_hpn.phases import DEFAULT_FILL_POLICY
from nnunet_hpn.augment.phase_dropout import DEFAULT_DROPOUT_PROBABILITY, append_phase_dropout
from nnunet_hpn.nnunet.trainers.hpn_trainer import HPNTrainer, HPNTrainer_cpu_smoke, HPNTrainer_demo


class PhaseDropoutMixin:
    """Put first in the bases of an HPN trainer: its training pipeline ends with phase dropout.

    ``phase_dropout_probability``: share of training samples that lose 1 .. K-1 of their K phases.
    """

    phase_dropout_probability: float = DEFAULT_DROPOUT_PROBABILITY
    #: most phases dropped from one sample (None: K - 1, always capped so that one phase remains)
    phase_dropout_max_dropped: Optional[int] = None

    def get_training_transforms(self, *args: Any, **kwargs: Any) -> BasicTransform:
        """The parent's training pipeline (nnU-Net's arguments, passed on unchanged; virtual pairs included where the
        row uses them) + phase dropout last, which leaves the cascade's segmentation channels alone."""
        arguments = inspect.signature(nnUNetTrainer.get_training_transforms).bind(*args, **kwargs).arguments
        n_context = len(arguments.get("foreground_labels") or ()) if arguments.get("is_cascaded") else 0
        return append_phase_dropout(super().get_training_transforms(*args, **kwargs),
                                    p=self.phase_dropout_probability, max_dropped=self.phase_dropout_max_dropped,
                                    n_context_channels=n_context)

    def on_train_start(self) -> None:
        super().on_train_start()
        self.print_to_log_file(
            f"phase dropout: p = {self.phase_dropout_probability} per sample, 1..K-1 phases set to 0 after "
            f"normalization (missing-phase policy '{DEFAULT_FILL_POLICY}'), training pipeline only")


class HPNTrainer_phasedropout(PhaseDropoutMixin, HPNTrainer):
    """HPN (hyper-connections, pairing loss λ = 0.5) trained with phase dropout, p = 0.3."""


class HPNTrainer_phasedropout_cpu_smoke(PhaseDropoutMixin, HPNTrainer_cpu_smoke):
    """HPNTrainer_cpu_smoke (2 epochs × 10 iterations, no test-time mirroring) with phase dropout: plumbing check."""


class HPNTrainer_phasedropout_demo(PhaseDropoutMixin, HPNTrainer_demo):
    """HPNTrainer_demo's recipe (budget, sampling, learning rate, λ warm-up) with phase dropout; docs/RESULTS.md
    "Missing phase" compares the two (with the recipe its runs used)."""
