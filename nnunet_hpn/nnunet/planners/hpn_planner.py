"""HPN planner: nnU-Net's default planning, with the K-path network and the paper's per-phase normalization.

One path per phase channel of dataset.json (``channel_names`` in channel order, e.g. arterial, venous or
noncontrast, arterial, venous, delayed). Which paths are hyper-connected is the planner's
``hyper_connection_pattern`` (choose it with ``-pl``):

* ``"all"`` (:class:`HPNPlanner`): every ordered pair of paths, all three kinds (enc->enc, enc->dec, dec->dec):
  3·K·(K-1) connections; for two phases the paper's six.
* ``"star"`` (:class:`HPNStarPlanner`): only between the reference phase's path (``reference_phase``; default the
  phase the others are registered to, as convert stored it) and each other path, both directions: 6·(K-1)
  connections, so every path's inputs grow by at most one other path's features, except the reference's. For
  K = 4: 18 instead of 36 connections; for K = 2 the same network as ``"all"``.
* ``"ring"`` (:func:`hyper_connection_names`, for a subclass): path i with paths i±1 (mod K): 6·K connections for
  K >= 3 (= ``"all"`` for K = 3).

The memory estimate behind nnU-Net's patch search builds the network with all K paths and exactly the
connections of the pattern, and adds the pairing loss's own float32 tensors. The pairing loss averages over every
pair of paths (``nnunet_hpn.model.pairing_loss``).
"""
from typing import List, Optional, Tuple, Union

import numpy as np
import torch
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

from nnunet_hpn.errors import HPNInputError
from nnunet_hpn.model.hyper_connections import all_hyper_connection_names, parse_connection
from nnunet_hpn.model.network import HyperPairedResDSN, HyperPairedUNet
from nnunet_hpn.model.pairing_loss import pairing_loss_float32_maps
from nnunet_hpn.nnunet.normalization import CLIP_KEY, HPNCTNormalization
from nnunet_hpn.labels import dataset_reference_phase
from nnunet_hpn.phases import HU_WINDOW, channel_names

HPN_PLANS_NAME = "nnUNetHPNPlans"
HPN_RESDSN_PLANS_NAME = "nnUNetHPNResDSNPlans"
HPN_STAR_PLANS_NAME = "nnUNetHPNStarPlans"
HYPER_CONNECTION_PATTERNS: Tuple[str, ...] = ("all", "star", "ring")
#: keys HPN's planners add to the plans (top level): phase names in channel order, pattern, reference phase
PHASES_KEY, PATTERN_KEY, REFERENCE_KEY = "hpn_phases", "hpn_hyper_connection_pattern", "hpn_reference_phase"


def hyper_connection_names(n_paths: int, pattern: str = "all", reference: int = 0) -> List[str]:
    """Names of the hyper-connections of ``pattern`` for ``n_paths`` paths, in the network's canonical order.

    ``"all"``: every ordered pair; ``"star"``: pairs of path ``reference`` with each other path, both directions;
    ``"ring"``: path i with paths i-1 and i+1 (mod n). Each pair gets all three kinds (enc->enc, enc->dec, dec->dec).
    For 2 paths every pattern gives the paper's six connections.
    """
    if pattern not in HYPER_CONNECTION_PATTERNS:
        raise ValueError(f"unknown hyper-connection pattern {pattern!r}; known: {list(HYPER_CONNECTION_PATTERNS)}")
    if not 0 <= reference < max(n_paths, 1):
        raise ValueError(f"reference path {reference} outside 0..{n_paths - 1}")
    if pattern == "all":
        return all_hyper_connection_names(n_paths)
    if pattern == "star":
        pairs = {(reference, j) for j in range(n_paths) if j != reference}
    else:
        pairs = {(i, (i + 1) % n_paths) for i in range(n_paths) if (i + 1) % n_paths != i}
    pairs |= {(j, i) for i, j in pairs}
    names = []
    for name in all_hyper_connection_names(n_paths):
        _, source, _, target = parse_connection(name)
        if (source, target) in pairs:
            names.append(name)
    return names


class HPNPlanner(ExperimentPlanner):
    """Plans the K-path HyperPairedUNet (plain 3D U-Net backbone): one path per phase channel, every pair of paths
    hyper-connected (``hyper_connection_pattern = "all"``).

    nnU-Net's own patch / batch search is kept: it shrinks the patch until the network's
    ``compute_conv_feature_map_size`` (all K paths plus the hyper-connection tensors of the pattern) plus the pairing
    loss's tensors (:meth:`pairing_loss_feature_map_size`) fits the same memory target as nnU-Net's default planner
    (``-gpu_memory_target``, 8 GB by default). Every phase is clipped to [-100, 240] HU and z-scored per case
    (:class:`~nnunet_hpn.nnunet.normalization.HPNCTNormalization`).
    """

    network_class = HyperPairedUNet
    default_plans_name = HPN_PLANS_NAME
    #: encoder blocks per stage (None: nnU-Net's default of 2 convolutions)
    encoder_blocks_per_stage: Optional[int] = None
    #: which pairs of paths are hyper-connected: one of HYPER_CONNECTION_PATTERNS
    hyper_connection_pattern: str = "all"
    #: hub of the "star" pattern, a dataset.json channel name (None: the reference phase convert stored in
    #: dataset.json, else nnunet_hpn.phases.reference_phase's rule)
    reference_phase: Optional[str] = None
    #: plans whose preprocessed data this planner reuses where the spacing cannot differ (None: its own data)
    reuses_data_of: Optional[str] = None

    def __init__(self, dataset_name_or_id: Union[str, int], gpu_memory_target_in_gb: float = 8,
                 preprocessor_name: str = "DefaultPreprocessor", plans_name: Optional[str] = None,
                 overwrite_target_spacing: Optional[Union[List[float], Tuple[float, ...]]] = None,
                 suppress_transpose: bool = False) -> None:
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name,
                         plans_name or self.default_plans_name, overwrite_target_spacing, suppress_transpose)
        self.UNet_class = self.network_class
        if self.encoder_blocks_per_stage is not None:
            self.UNet_blocks_per_stage_encoder = (self.encoder_blocks_per_stage,) * len(
                self.UNet_blocks_per_stage_encoder)
        if self.n_phases < 2:
            raise HPNInputError(
                f"{self.raw_dataset_folder}/dataset.json: HPN needs at least 2 phase channels, found {self.n_phases} "
                f"({self.dataset_json['channel_names']})")
        if self.reference_phase is not None and self.reference_phase not in self.phase_names:
            raise HPNInputError(
                f"{self.raw_dataset_folder}/dataset.json: reference phase {self.reference_phase!r} of "
                f"{type(self).__name__} is not among the channel names {self.phase_names}")
        hyper_connection_names(self.n_phases, self.hyper_connection_pattern)  # unknown pattern -> ValueError

    @property
    def n_phases(self) -> int:
        return len(self.dataset_json["channel_names"])

    @property
    def phase_names(self) -> List[str]:
        """dataset.json ``channel_names`` values in channel order (one path each)."""
        return channel_names(self.dataset_json)

    @property
    def reference_path(self) -> int:
        """Path of the reference phase (the "star" hub, ``hpn_reference_phase`` of the plans):
        :func:`nnunet_hpn.labels.dataset_reference_phase` (``reference_phase`` if set, else the one convert stored
        in dataset.json, else arterial if present, else channel 0)."""
        return self.phase_names.index(dataset_reference_phase(self.dataset_json, self.reference_phase,
                                                              f"{self.raw_dataset_folder}/dataset.json"))

    def hyper_connections(self) -> List[str]:
        """The connections of this planner's pattern for this dataset's phases."""
        return hyper_connection_names(self.n_phases, self.hyper_connection_pattern, self.reference_path)

    def determine_normalization_scheme_and_whether_mask_is_used_for_norm(self) -> Tuple[List[str], List[bool]]:
        return [HPNCTNormalization.__name__] * self.n_phases, [False] * self.n_phases

    def static_estimate_VRAM_usage(self, patch_size: Tuple[int, ...], input_channels: int, output_channels: int,
                                   arch_class_name: str, arch_kwargs: dict,
                                   arch_kwargs_req_import: Tuple[str, ...]) -> int:
        """nnU-Net's estimate for the network of these plans (one path per phase and the pattern's connections) plus
        the pairing loss's tensors, per sample, in nnU-Net's units (feature-map elements).

        An instance method here (nnU-Net calls it on the planner): the estimate needs the dataset's phases and
        the pattern. Built on the meta device: no weights are allocated or initialised, which otherwise dominates
        planning time for K full-size paths (the estimate only needs shapes).
        """
        arch_kwargs = {**arch_kwargs, "path_channels": list(range(self.n_phases)),
                       "hyper_connections": self.hyper_connections()}
        with torch.device("meta"):
            network = ExperimentPlanner.static_estimate_VRAM_usage(patch_size, input_channels, output_channels,
                                                                   arch_class_name, arch_kwargs,
                                                                   arch_kwargs_req_import)
        return network + self.pairing_loss_feature_map_size(patch_size, arch_kwargs)

    def bytes_per_estimate_unit(self, n_spatial_dims: int = 3) -> float:
        """Bytes of GPU memory per unit of the estimate and per sample, as nnU-Net's reference implies: the
        reference value at the reference batch size fills the reference memory (``UNet_reference_val_corresp_GB``,
        taken as GiB)."""
        reference, batch = ((self.UNet_reference_val_3d, self.UNet_reference_val_corresp_bs_3d) if n_spatial_dims == 3
                            else (self.UNet_reference_val_2d, self.UNet_reference_val_corresp_bs_2d))
        return self.UNet_reference_val_corresp_GB * 2 ** 30 / (reference * batch)

    def pairing_loss_feature_map_size(self, patch_size: Tuple[int, ...], arch_kwargs: dict) -> int:
        """The pairing loss's float32 tensors per sample (``pairing_loss_float32_maps(K)`` maps of
        ``features_per_stage[0]`` x patch voxels, 4 bytes each) in the estimate's units; 0 for a single path."""
        if self.n_phases < 2:
            return 0
        n_bytes = (pairing_loss_float32_maps(self.n_phases) * arch_kwargs["features_per_stage"][0]
                   * int(np.prod(patch_size)) * 4)
        return int(round(n_bytes / self.bytes_per_estimate_unit(len(patch_size))))

    def estimate_in_gib(self, estimate: float, batch_size: int, n_spatial_dims: int = 3) -> float:
        """An estimate (per sample, nnU-Net's units) as GiB of GPU memory at ``batch_size``, by nnU-Net's reference."""
        return estimate * batch_size * self.bytes_per_estimate_unit(n_spatial_dims) / 2 ** 30

    def get_plans_for_configuration(self, spacing: Union[np.ndarray, Tuple[float, ...], List[float]],
                                    median_shape: Union[np.ndarray, Tuple[int, ...]], data_identifier: str,
                                    approximate_n_voxels_dataset: float, _cache: dict) -> dict:
        """nnU-Net's search, then the HPN settings written out explicitly (they are the network's defaults)."""
        plan = super().get_plans_for_configuration(spacing, median_shape, data_identifier,
                                                   approximate_n_voxels_dataset, _cache)
        plan["architecture"]["arch_kwargs"].update({
            "path_channels": list(range(self.n_phases)),
            "hyper_connections": self.hyper_connections(),
        })
        return plan

    def generate_data_identifier(self, configuration_name: str) -> str:
        """``<plans>_<configuration>``; with ``reuses_data_of``, that plans' data for ``2d`` and ``3d_fullres``.

        Only those two have the dataset's target spacing whatever the network; ``3d_lowres``'s spacing comes out of
        the memory search, which differs per network, so it keeps its own folder (as nnU-Net's ResEnc planners do).
        """
        if self.reuses_data_of is not None and configuration_name in ("2d", "3d_fullres"):
            return f"{self.reuses_data_of}_{configuration_name}"
        return super().generate_data_identifier(configuration_name)

    def save_plans(self, plans: dict) -> None:
        """Stores the HU window per phase where the normalization reads it, and the phases / pattern (top level)."""
        for props in plans["foreground_intensity_properties_per_channel"].values():
            props[CLIP_KEY] = list(HU_WINDOW)
        plans[PHASES_KEY] = self.phase_names
        plans[PATTERN_KEY] = self.hyper_connection_pattern
        plans[REFERENCE_KEY] = self.phase_names[self.reference_path]
        super().save_plans(plans)


class HPNResDSNPlanner(HPNPlanner):
    """Same planning with the 3D-ResDSN backbone (residual encoder blocks, deep supervision).

    One residual block (two convolutions) per encoder stage, so the encoder has as many convolutions as the plain
    backbone's. Preprocessing is identical to :class:`HPNPlanner`, so the ``2d`` and ``3d_fullres`` data of
    ``nnUNetHPNPlans`` is reused (``3d_lowres`` has its own: its spacing depends on the network).
    """

    network_class = HyperPairedResDSN
    default_plans_name = HPN_RESDSN_PLANS_NAME
    encoder_blocks_per_stage = 1
    reuses_data_of = HPN_PLANS_NAME


class HPNStarPlanner(HPNPlanner):
    """HPNPlanner with the cheaper ``"star"`` pattern for many phases: hyper-connections only between the reference
    phase's path (``reference_phase``, else arterial, else channel 0) and each other path. Plans
    ``nnUNetHPNStarPlans``; preprocessing is identical to :class:`HPNPlanner`, so the ``2d`` and ``3d_fullres`` data of
    ``nnUNetHPNPlans`` is reused. For two phases it plans the same network as HPNPlanner."""

    default_plans_name = HPN_STAR_PLANS_NAME
    hyper_connection_pattern = "star"
    reuses_data_of = HPN_PLANS_NAME
