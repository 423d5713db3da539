"""HPN trainers; ``nnUNetv2_train … -tr NAME`` finds them through the shim in ``nnunet_hpn/nnunet/ext``."""
from nnunet_hpn.nnunet.trainers.balanced import (
    EarlyFusionTrainer_balanced,
    HPNTrainer_balanced,
    HPNTrainer_virtual_balanced,
    HyperNetTrainer_balanced,
    HyperNetTrainer_virtual_balanced,
    SinglePhaseTrainer_arterial_balanced,
    SinglePhaseTrainer_venous_balanced,
)
from nnunet_hpn.nnunet.trainers.equal_cost import HPNTrainer_equalcost, HPNTrainer_equalcost_demo
from nnunet_hpn.nnunet.trainers.hpn_trainer import (
    EarlyFusionTrainer,
    HPNTrainer,
    HPNTrainer_cpu_smoke,
    HPNTrainer_demo,
    HPNTrainer_virtual,
    HPNTrainer_warmup,
    HyperNetTrainer,
    HyperNetTrainer_virtual,
    SinglePhaseTrainer_arterial,
    SinglePhaseTrainer_venous,
)
from nnunet_hpn.nnunet.trainers.misalignment import EarlyFusionTrainer_misalign, HPNTrainer_misalign
from nnunet_hpn.nnunet.trainers.stage2 import HPNTrainer_stage2, HPNTrainer_stage2_virtual
from nnunet_hpn.nnunet.trainers.phase_dropout import (
    HPNTrainer_phasedropout,
    HPNTrainer_phasedropout_cpu_smoke,
    HPNTrainer_phasedropout_demo,
)

__all__ = ["HPNTrainer", "HPNTrainer_virtual", "HPNTrainer_warmup", "HyperNetTrainer", "HyperNetTrainer_virtual",
           "SinglePhaseTrainer_arterial", "SinglePhaseTrainer_venous", "EarlyFusionTrainer",
           "HPNTrainer_cpu_smoke", "HPNTrainer_demo", "HPNTrainer_phasedropout",
           "HPNTrainer_phasedropout_cpu_smoke", "HPNTrainer_phasedropout_demo", "HPNTrainer_equalcost",
           "HPNTrainer_equalcost_demo", "HPNTrainer_misalign", "EarlyFusionTrainer_misalign",
           "HPNTrainer_stage2", "HPNTrainer_stage2_virtual", "SinglePhaseTrainer_arterial_balanced",
           "SinglePhaseTrainer_venous_balanced", "EarlyFusionTrainer_balanced", "HyperNetTrainer_balanced",
           "HyperNetTrainer_virtual_balanced", "HPNTrainer_balanced", "HPNTrainer_virtual_balanced"]
