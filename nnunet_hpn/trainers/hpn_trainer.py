"""HPNTrainer: nnU-Net's trainer with the pairing loss added to Dice + CE (deep supervision kept)."""
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_hpn.pairing_loss import pairing_loss

SegmentationOutput = Union[torch.Tensor, Sequence[torch.Tensor]]


def unwrap_network(network: nn.Module) -> nn.Module:
    """The plain module behind nnU-Net's DDP and torch.compile wrappers."""
    if isinstance(network, DistributedDataParallel):
        network = network.module
    if isinstance(network, OptimizedModule):
        network = network._orig_mod
    return network


class SegmentationPlusPairingLoss(nn.Module):
    """``segmentation_loss(output, target) + weight * pairing_loss(features of each path)``.

    The features are the full-resolution decoder outputs of each path, (B, C, X, Y, Z) each, which the network keeps
    from its last forward in training mode (``pop_pairing_features``). In eval mode (nnU-Net's validation steps) the
    network keeps none and the loss is the segmentation loss alone, comparable with nnU-Net's.
    """

    def __init__(self, segmentation_loss: nn.Module, network: Callable[[], nn.Module], weight: float) -> None:
        super().__init__()
        self.segmentation_loss = segmentation_loss
        self._network = network  # a callable, not a submodule: the loss must not own the network's parameters
        self.weight = weight
        self.pairing_sum: Optional[torch.Tensor] = None  # detached running sum, read once per epoch (no host sync)
        self.pairing_count = 0

    def forward(self, output: SegmentationOutput, target: SegmentationOutput) -> torch.Tensor:
        loss = self.segmentation_loss(output, target)
        features = self._network().pop_pairing_features()
        if features is None or len(features) < 2 or self.weight == 0:
            return loss
        pairing = pairing_loss(features)
        detached = pairing.detach()
        self.pairing_sum = detached if self.pairing_sum is None else self.pairing_sum + detached
        self.pairing_count += 1
        return loss + self.weight * pairing

    def pop_mean_pairing_loss(self) -> Optional[float]:
        """Mean pairing loss since the last call (None if none was computed)."""
        if self.pairing_sum is None:
            return None
        mean = float(self.pairing_sum) / self.pairing_count
        self.pairing_sum, self.pairing_count = None, 0
        return mean


class HPNTrainer(nnUNetTrainer):
    """Hyper-Pairing Network: dual-path network with hyper-connections (from the HPN plans) + pairing loss.

    Needs plans written by ``HPNPlanner`` / ``HPNResDSNPlanner``; the network is rebuilt from the plans'
    ``architecture`` entry, so ``nnUNetv2_predict`` needs nothing else.
    """

    #: λ of the paper's Eq. 2.
    pairing_loss_weight: float = 0.5

    def _build_loss(self) -> nn.Module:
        network = unwrap_network(self.network)
        if not hasattr(network, "pop_pairing_features"):
            raise RuntimeError(
                f"{type(self).__name__} needs plans written by HPNPlanner (network "
                f"nnunet_hpn.hyper_connections.HyperPairedUNet), but the plans build "
                f"{type(network).__module__}.{type(network).__name__}. Run 'nnUNetv2_plan_and_preprocess -d D "
                f"-pl HPNPlanner' and train with '-p nnUNetHPNPlans'.")
        return SegmentationPlusPairingLoss(super()._build_loss(), lambda: unwrap_network(self.network),
                                           self.pairing_loss_weight)

    def on_train_epoch_end(self, train_outputs: list) -> None:
        super().on_train_epoch_end(train_outputs)
        mean_pairing = self.loss.pop_mean_pairing_loss()
        if mean_pairing is not None:
            self.print_to_log_file(f"pairing loss (-Pearson r, weight {self.pairing_loss_weight}): "
                                   f"{np.round(mean_pairing, decimals=4)}")


class HPNTrainer_cpu_smoke(HPNTrainer):
    """2 epochs × 10 iterations, no test-time mirroring in the final validation: a plumbing check on CPU."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 2
        self.num_iterations_per_epoch = 10
        self.num_val_iterations_per_epoch = 2

    def on_train_start(self) -> None:
        super().on_train_start()
        self.inference_allowed_mirroring_axes = None


class HPNTrainer_demo(HPNTrainer_cpu_smoke):
    """The demo's budget: 24 epochs × 25 iterations (a few minutes on 2 CPU cores at the demo's CPU configuration)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 24
        self.num_iterations_per_epoch = 25
        self.num_val_iterations_per_epoch = 4
