"""HPN trainers: nnU-Net's trainer with the dual-path network from the HPN plans, the pairing loss and, optionally,
virtual pairs. Each row of the paper's Table 1 is a small subclass that changes class attributes only.

The backbone comes from the plans: ``-p nnUNetHPNPlans`` (plain 3D U-Net, ``HPNPlanner``) or
``-p nnUNetHPNResDSNPlans`` (3D-ResDSN, ``HPNResDSNPlanner``); every trainer trains on the same dual-phase data.

Checkpoints are nnU-Net's, written atomically, plus an ``"hpn"`` entry with the trainer's settings
(:mod:`nnunet_hpn.nnunet.trainers.checkpoint_schema`): ``--c`` checks it against the trainer and continues with the
same settings; ``nnUNetv2_predict`` needs nothing but the model folder.
"""
import os
import pydoc
import random
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel

from nnunet_hpn.model.cpu_inference import use_onednn_for_cpu_inference
from nnunet_hpn.budget import BUDGET_ENV, NO_TTA_ENV, SEED_ENV
from nnunet_hpn.errors import HPNInputError
from nnunet_hpn.labels import LabelScheme
from nnunet_hpn.model.network import SINGLE_PATH_NETWORKS, HyperPairedUNet
from nnunet_hpn.model.pairing_loss import pairing_loss
from nnunet_hpn.augment.virtual_pairs import insert_virtual_pairs
from nnunet_hpn.nnunet.trainers.checkpoint_schema import (CHECKPOINT_KEY, check_model_settings, read_checkpoint,
                                                          restore_run_settings, save_with_settings,
                                                          settings_entry)

SegmentationOutput = Union[torch.Tensor, Sequence[torch.Tensor]]


def apply_seed_environment() -> None:
    """Seed the global generators from ``HPN_SEED``, where set."""
    if os.environ.get(SEED_ENV):
        seed = int(os.environ[SEED_ENV])
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)


def environment_overrides() -> list[str]:
    """``NAME=value`` of every ``HPN_*`` budget, seed and test-time-mirroring variable that is set."""
    return [f"{name}={os.environ[name]}" for name in (*BUDGET_ENV, SEED_ENV, NO_TTA_ENV) if os.environ.get(name)]


def apply_budget_environment(trainer: nnUNetTrainer) -> None:
    """Training length from the ``HPN_*`` variables, where set."""
    for variable, attribute in BUDGET_ENV.items():
        if os.environ.get(variable):
            setattr(trainer, attribute, int(os.environ[variable]))


def plans_backbone(configuration_manager: ConfigurationManager) -> str:
    """The backbone ("unet" / "resdsn") of the HPN network the plans build: its ``backbone`` argument, else the
    network class's :attr:`~nnunet_hpn.model.network.HyperPairedUNet.default_backbone`."""
    network_class = pydoc.locate(configuration_manager.network_arch_class_name)
    if not (isinstance(network_class, type) and issubclass(network_class, HyperPairedUNet)):
        raise RuntimeError(f"the plans build {configuration_manager.network_arch_class_name}, not an HPN network "
                           f"(plans of HPNPlanner / HPNResDSNPlanner: -p nnUNetHPNPlans)")
    return configuration_manager.network_arch_init_kwargs.get("backbone") or network_class.default_backbone


def weight_cross_entropy(loss: nn.Module, weights: Sequence[float], n_classes: int, device: torch.device,
                         spatial_dims: int = 3) -> None:
    """Give every cross-entropy term inside nnU-Net's loss (Dice + CE; for regions Dice + BCE, one channel per
    region; deep-supervision wrapper) a weight per class (output channel). A BCE term's weight has shape
    (C, 1, ..., 1) with ``spatial_dims`` ones, so that it scales each channel of (B, C, *spatial) outputs."""
    if len(weights) != n_classes:
        raise ValueError(f"{len(weights)} cross-entropy class weights for {n_classes} classes")
    terms = [module for module in loss.modules() if isinstance(module, (nn.CrossEntropyLoss, nn.BCEWithLogitsLoss))]
    if not terms:
        raise ValueError(f"no cross-entropy term in {type(loss).__name__}")
    vector = torch.tensor(weights, dtype=torch.float32, device=device)
    for term in terms:
        term.weight = vector.view(-1, *(1,) * spatial_dims) if isinstance(term, nn.BCEWithLogitsLoss) else vector


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
        if features is None or len(features) < 2:
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
    """Hyper-Pairing Network: every phase its own path, hyper-connections as listed in the plans, pairing loss.

    Subclasses choose a Table-1 row with four class attributes; ``build_network_architecture`` is a class method so
    that ``nnUNetv2_predict`` rebuilds exactly the trained network. ``get_training_transforms`` is an instance method
    (nnU-Net calls it on the trainer, with nnU-Net's arguments), so that the mixins that extend the training pipeline
    (phase dropout, misalignment, box jitter) compose in any order through ``super()`` and may read the trainer's
    configuration.
    """

    #: input channels that get a path (None: every phase of the plans); a single channel = single-phase model
    phase_channels: Optional[Tuple[int, ...]] = None
    #: False: no hyper-connections (independent paths joined only by the shared classifier)
    use_hyper_connections: bool = True
    #: λ of the paper's Eq. 2; 0 switches the pairing loss off
    pairing_loss_weight: float = 0.5
    #: Beta(α, α) of the virtual pairs; None: train on the original pairs
    virtual_pair_alpha: Optional[float] = None
    #: epochs over which λ ramps linearly from 0 to ``pairing_loss_weight`` (0: the paper's constant λ)
    pairing_warmup_epochs: int = 0
    #: cross-entropy weight per label (or region) name of the dataset, e.g. ``{"PDAC": 4.0, "duct": 4.0}``; labels not
    #: named weigh 1 (:meth:`nnunet_hpn.labels.LabelScheme.per_class`); None: nnU-Net's unweighted cross-entropy
    ce_class_weights: Optional[Mapping[str, float]] = None
    #: False: no test-time mirroring in the final validation and later predictions (``HPN_NO_TTA=1`` also sets it)
    test_time_mirroring: bool = True
    #: batch-1 CPU inference through oneDNN's convolutions (see :mod:`nnunet_hpn.model.cpu_inference`); False: PyTorch's
    #: own choice, as stock nnU-Net runs
    onednn_cpu_inference: bool = True

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        apply_budget_environment(self)
        apply_seed_environment()
        self.test_time_mirroring = self.test_time_mirroring and os.environ.get(NO_TTA_ENV) != "1"

    @classmethod
    def network_kwargs(cls, configuration_manager: ConfigurationManager) -> dict:
        """The plans' ``arch_kwargs`` with this row's paths and hyper-connections."""
        kwargs = dict(configuration_manager.network_arch_init_kwargs)
        if "path_channels" not in kwargs:
            raise RuntimeError(
                f"{cls.__name__} needs plans written by HPNPlanner / HPNResDSNPlanner, but the plans build "
                f"{configuration_manager.network_arch_class_name}. Run 'nnUNetv2_plan_and_preprocess -d D "
                f"-pl HPNPlanner' and train with '-p nnUNetHPNPlans'.")
        if cls.phase_channels is not None:
            kwargs["path_channels"] = list(cls.phase_channels)
        if not cls.use_hyper_connections or len(kwargs["path_channels"]) < 2:
            kwargs["hyper_connections"] = []
        return kwargs

    @classmethod
    def network_class_and_kwargs(cls, configuration_manager: ConfigurationManager, num_input_channels: int,
                                 num_output_channels: int) -> Tuple[str, dict]:
        """Dotted class name and keyword arguments of this row's network: ``build_network_architecture`` builds it
        and the checkpoint records it, so a variant with another network overrides this method.

        Input channels beyond the plans' phases (``3d_cascade_fullres``: the previous stage's one-hot segmentation)
        reach every path as ``context_channels``.
        """
        kwargs = cls.network_kwargs(configuration_manager)
        n_phases = len(configuration_manager.network_arch_init_kwargs["path_channels"])
        if num_input_channels > n_phases:
            kwargs["context_channels"] = list(range(n_phases, num_input_channels))
        return configuration_manager.network_arch_class_name, kwargs

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        class_name, kwargs = cls.network_class_and_kwargs(configuration_manager, num_input_channels,
                                                          num_output_channels)
        network = get_network_from_plans(class_name, kwargs, configuration_manager.network_arch_init_kwargs_req_import,
                                         num_input_channels, num_output_channels, allow_init=True,
                                         deep_supervision=enable_deep_supervision)
        if hasattr(network, "keep_pairing_features"):  # only the pairing loss reads them
            network.keep_pairing_features = cls.pairing_loss_weight > 0 and network.n_paths >= 2
        return use_onednn_for_cpu_inference(network) if cls.onednn_cpu_inference else network

    def get_training_transforms(self, patch_size: Union[np.ndarray, Tuple[int]], rotation_for_DA,
                                deep_supervision_scales: Union[List, Tuple, None], mirror_axes: Tuple[int, ...],
                                do_dummy_2d_data_aug: bool, use_mask_for_norm: List[bool] = None,
                                is_cascaded: bool = False, foreground_labels: Union[Tuple[int, ...], List[int]] = None,
                                regions: List[Union[List[int], Tuple[int, ...], int]] = None,
                                ignore_label: int = None) -> BasicTransform:
        """nnU-Net's training pipeline, plus virtual pairs right after the spatial block when the row uses them
        (validation and inference never see them)."""
        transforms = super().get_training_transforms(
            patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes, do_dummy_2d_data_aug,
            use_mask_for_norm, is_cascaded, foreground_labels, regions, ignore_label)
        if self.virtual_pair_alpha is None:
            return transforms
        return insert_virtual_pairs(transforms, alpha=self.virtual_pair_alpha)

    def _build_loss(self) -> nn.Module:
        segmentation_loss = super()._build_loss()
        if self.ce_class_weights is not None:
            scheme = LabelScheme.from_dataset_json(self.dataset_json)
            try:
                weights = scheme.per_class(self.ce_class_weights, where=f"{type(self).__name__}.ce_class_weights")
            except KeyError as error:
                raise HPNInputError(error.args[0]) from None
            weight_cross_entropy(segmentation_loss, weights, self.label_manager.num_segmentation_heads, self.device,
                                 len(self.configuration_manager.patch_size))
        if self.pairing_loss_weight == 0 or getattr(unwrap_network(self.network), "n_paths", 1) < 2:
            return segmentation_loss
        return SegmentationPlusPairingLoss(segmentation_loss, lambda: unwrap_network(self.network),
                                           self.pairing_loss_weight)

    def hpn_settings(self) -> Dict[str, Any]:
        """The ``"hpn"`` checkpoint entry of this trainer (:func:`checkpoint_schema.settings_entry`)."""
        class_name, kwargs = self.network_class_and_kwargs(
            self.configuration_manager,
            determine_num_input_channels(self.plans_manager, self.configuration_manager, self.dataset_json),
            self.label_manager.num_segmentation_heads)
        return settings_entry(type(self).__name__, class_name, kwargs, plans_backbone(self.configuration_manager),
                              self.pairing_loss_weight, self.pairing_warmup_epochs, self.virtual_pair_alpha,
                              self.test_time_mirroring,
                              {attribute: getattr(self, attribute) for attribute in BUDGET_ENV.values()})

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint plus the ``"hpn"`` entry, written atomically
        (:func:`checkpoint_schema.save_with_settings`)."""
        if self.local_rank != 0 or self.disable_checkpointing:
            super().save_checkpoint(filename)
            return
        save_with_settings(super().save_checkpoint, filename, self.hpn_settings())

    def load_checkpoint(self, filename_or_checkpoint: Union[dict, str]) -> None:
        """nnU-Net's loading, after checking that the checkpoint's model settings are this trainer's
        (:class:`HPNInputError` otherwise); a continued training keeps the checkpoint's length and test-time
        mirroring unless the ``HPN_*`` variables set them now."""
        checkpoint, source = read_checkpoint(filename_or_checkpoint)
        saved = checkpoint.get(CHECKPOINT_KEY)
        if saved is None:
            self.print_to_log_file(f"{source}: no HPN settings in the checkpoint (written before nnunet-hpn stored "
                                   f"them); not checked")
        else:
            check_model_settings(saved, self.hpn_settings(), source, type(self).__name__)
        restored = restore_run_settings(self, saved) if saved is not None else []  # before the LR schedule is built
        super().load_checkpoint(filename_or_checkpoint)
        if saved is not None:
            self.print_to_log_file(f"continuing {saved.get('trainer')} from epoch {self.current_epoch} with the "
                                   f"checkpoint's settings: {', '.join(restored) or 'none to restore'}")

    def on_train_start(self) -> None:
        super().on_train_start()
        if not self.test_time_mirroring:
            self.inference_allowed_mirroring_axes = None
        network = unwrap_network(self.network)
        virtual = f"Beta({self.virtual_pair_alpha}, {self.virtual_pair_alpha})" if self.virtual_pair_alpha else "off"
        self.print_to_log_file(
            f"HPN settings: network {type(network).__name__}, paths on channels "
            f"{getattr(network, 'path_channels', 'all (one path)')}, hyper-connections "
            f"{list(getattr(network, 'hyper_connections', ())) or 'none'}, pairing loss weight "
            f"{self.pairing_loss_weight}, virtual pairs {virtual}")
        overrides = environment_overrides()
        if overrides:  # the budget differs from the trainer's own: say so where the user looks
            self.print_to_log_file(f"budget from the environment: {', '.join(overrides)} (num_epochs "
                                   f"{self.num_epochs}, iterations per epoch {self.num_iterations_per_epoch})")

    def current_pairing_weight(self) -> float:
        """λ for the current epoch: constant, or ramped up over ``pairing_warmup_epochs``."""
        if self.pairing_warmup_epochs <= 0:
            return self.pairing_loss_weight
        return self.pairing_loss_weight * min(1.0, self.current_epoch / self.pairing_warmup_epochs)

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        if isinstance(self.loss, SegmentationPlusPairingLoss):
            self.loss.weight = self.current_pairing_weight()

    def on_train_epoch_end(self, train_outputs: list) -> None:
        super().on_train_epoch_end(train_outputs)
        if isinstance(self.loss, SegmentationPlusPairingLoss):
            mean_pairing = self.loss.pop_mean_pairing_loss()
            if mean_pairing is not None:
                self.print_to_log_file(f"pairing loss (-Pearson r, weight {self.loss.weight:.3g}): "
                                       f"{np.round(mean_pairing, decimals=4)}")


class HPNTrainer_virtual(HPNTrainer):
    """HPN trained on virtual pairs; ``nnunet-hpn union`` of its and HPNTrainer's predictions is the paper's HPN."""

    virtual_pair_alpha = 0.4


class HPNTrainer_warmup(HPNTrainer):
    """HPN with λ ramped linearly from 0 to 0.5 over the first 12 epochs: the pairing term delays the first
    foreground predictions (docs/RESULTS.md), which costs a visible share of a short budget."""

    pairing_warmup_epochs = 12


class HyperNetTrainer(HPNTrainer):
    """Table 1 "HyperNet": dual path with hyper-connections, no pairing loss."""

    pairing_loss_weight = 0.0


class HyperNetTrainer_virtual(HyperNetTrainer):
    """Table 1 "HyperNet-aug": HyperNet trained on virtual pairs."""

    virtual_pair_alpha = 0.4


class SinglePhaseTrainer_arterial(HPNTrainer):
    """Table 1 "single-phase (Arterial)": one path on channel 0; the venous channel is never read by the network."""

    phase_channels = (0,)
    use_hyper_connections = False
    pairing_loss_weight = 0.0


class SinglePhaseTrainer_venous(SinglePhaseTrainer_arterial):
    """Table 1 "single-phase (Venous)": one path on channel 1."""

    phase_channels = (1,)


class EarlyFusionTrainer(HPNTrainer):
    """Early-fusion baseline: nnU-Net's own single-path network (PlainConvUNet, or ResidualEncoderUNet with the
    ResDSN plans) with both phases as input channels, on the same HPN plans, data and normalization."""

    pairing_loss_weight = 0.0

    @classmethod
    def network_class_and_kwargs(cls, configuration_manager: ConfigurationManager, num_input_channels: int,
                                 num_output_channels: int) -> Tuple[str, dict]:
        kwargs = cls.network_kwargs(configuration_manager)
        for hpn_only in ("path_channels", "hyper_connections", "backbone"):
            kwargs.pop(hpn_only, None)
        backbone = plans_backbone(configuration_manager)
        if backbone == "resdsn":  # ResidualEncoderUNet's name for the residual blocks per stage
            kwargs["n_blocks_per_stage"] = kwargs.pop("n_conv_per_stage")
        return SINGLE_PATH_NETWORKS[backbone], kwargs


class _ShortTraining:
    """Mixin: a short budget and no test-time mirroring in the final validation (CPU runs)."""

    short_budget = (2, 10, 2)  # epochs, iterations per epoch, validation iterations per epoch
    test_time_mirroring = False

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = self.short_budget
        apply_budget_environment(self)


class HPNTrainer_cpu_smoke(_ShortTraining, HPNTrainer):
    """2 epochs × 10 iterations, no test-time mirroring: a plumbing check on CPU."""


class HPNTrainer_demo(_ShortTraining, HPNTrainer):
    """The demo's recipe: 40 epochs × 25 iterations, every patch centred on a foreground class (nnU-Net's default at
    batch 2: one of the two), initial learning rate 0.03 (nnU-Net: 0.01), λ ramped up over the first 12 epochs, and
    the cross-entropy of PDAC and duct weighted 4: on so short a budget the higher learning rate and the weights make
    it less likely that the small PDAC class stays all background (the runs behind the recipe: docs/RESULTS.md)."""

    short_budget = (40, 25, 1)
    pairing_warmup_epochs = 12
    demo_initial_lr = 0.03
    ce_class_weights = {"PDAC": 4.0, "duct": 4.0}

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.oversample_foreground_percent = 1.0
        self.initial_lr = self.demo_initial_lr

