"""HPN trainers; ``nnUNetv2_train … -tr NAME`` finds them through the shim in ``nnunet_hpn/nnunet_ext``."""
from nnunet_hpn.trainers.hpn_trainer import (
    EarlyFusionTrainer,
    HPNTrainer,
    HPNTrainer_cpu_smoke,
    HPNTrainer_demo,
    HPNTrainer_virtual,
    HyperNetTrainer,
    HyperNetTrainer_virtual,
    SinglePhaseTrainer_arterial,
    SinglePhaseTrainer_venous,
)

__all__ = ["HPNTrainer", "HPNTrainer_virtual", "HyperNetTrainer", "HyperNetTrainer_virtual",
           "SinglePhaseTrainer_arterial", "SinglePhaseTrainer_venous", "EarlyFusionTrainer",
           "HPNTrainer_cpu_smoke", "HPNTrainer_demo"]
