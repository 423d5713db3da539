"""HPN trainers; ``nnUNetv2_train … -tr NAME`` finds them through the shim in ``nnunet_hpn/nnunet_ext``."""
from nnunet_hpn.trainers.hpn_trainer import HPNTrainer, HPNTrainer_cpu_smoke, HPNTrainer_demo

__all__ = ["HPNTrainer", "HPNTrainer_cpu_smoke", "HPNTrainer_demo"]
