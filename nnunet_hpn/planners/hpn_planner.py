"""HPN planner: nnU-Net's default planning, with the dual-path network and the paper's per-phase normalization."""
from typing import List, Optional, Tuple, Union

import numpy as np
import torch
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

from nnunet_hpn.errors import HPNInputError
from nnunet_hpn.hyper_connections import HyperPairedResDSN, HyperPairedUNet, all_hyper_connection_names
from nnunet_hpn.normalization import CLIP_KEY, DEFAULT_CLIP_HU, HPNCTNormalization

HPN_PLANS_NAME = "nnUNetHPNPlans"
HPN_RESDSN_PLANS_NAME = "nnUNetHPNResDSNPlans"


class HPNPlanner(ExperimentPlanner):
    """Plans the dual-path HyperPairedUNet (plain 3D U-Net backbone): one path per phase channel.

    nnU-Net's own patch / batch search is kept: it shrinks the patch until the network's
    ``compute_conv_feature_map_size`` (both paths plus the hyper-connection tensors) fits the same memory target as
    nnU-Net's default planner (``-gpu_memory_target``, 8 GB by default). Every phase is clipped to [-100, 240] HU and
    z-scored per case (:class:`~nnunet_hpn.normalization.HPNCTNormalization`).
    """

    network_class = HyperPairedUNet
    default_plans_name = HPN_PLANS_NAME
    #: encoder blocks per stage (None: nnU-Net's default of 2 convolutions)
    encoder_blocks_per_stage: Optional[int] = None

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

    @property
    def n_phases(self) -> int:
        return len(self.dataset_json["channel_names"])

    def determine_normalization_scheme_and_whether_mask_is_used_for_norm(self) -> Tuple[List[str], List[bool]]:
        return [HPNCTNormalization.__name__] * self.n_phases, [False] * self.n_phases

    @staticmethod
    def static_estimate_VRAM_usage(patch_size: Tuple[int, ...], input_channels: int, output_channels: int,
                                   arch_class_name: str, arch_kwargs: dict,
                                   arch_kwargs_req_import: Tuple[str, ...]) -> int:
        """nnU-Net's estimate with the network built on the meta device: no weights are allocated or initialised,
        which otherwise dominates planning time for two full-size paths (the estimate only needs shapes)."""
        with torch.device("meta"):
            return ExperimentPlanner.static_estimate_VRAM_usage(patch_size, input_channels, output_channels,
                                                                arch_class_name, arch_kwargs, arch_kwargs_req_import)

    def get_plans_for_configuration(self, spacing: Union[np.ndarray, Tuple[float, ...], List[float]],
                                    median_shape: Union[np.ndarray, Tuple[int, ...]], data_identifier: str,
                                    approximate_n_voxels_dataset: float, _cache: dict) -> dict:
        """nnU-Net's search, then the HPN settings written out explicitly (they are the network's defaults)."""
        plan = super().get_plans_for_configuration(spacing, median_shape, data_identifier,
                                                   approximate_n_voxels_dataset, _cache)
        plan["architecture"]["arch_kwargs"].update({
            "path_channels": list(range(self.n_phases)),
            "hyper_connections": all_hyper_connection_names(self.n_phases),
        })
        return plan

    def save_plans(self, plans: dict) -> None:
        """Stores the HU window per phase where the normalization reads it."""
        for props in plans["foreground_intensity_properties_per_channel"].values():
            props[CLIP_KEY] = list(DEFAULT_CLIP_HU)
        super().save_plans(plans)


class HPNResDSNPlanner(HPNPlanner):
    """Same planning with the 3D-ResDSN backbone (residual encoder blocks, deep supervision).

    One residual block (two convolutions) per encoder stage, so the encoder has as many convolutions as the plain
    backbone's. Preprocessing is identical to :class:`HPNPlanner`, so the data of ``nnUNetHPNPlans`` is reused.
    """

    network_class = HyperPairedResDSN
    default_plans_name = HPN_RESDSN_PLANS_NAME
    encoder_blocks_per_stage = 1

    def generate_data_identifier(self, configuration_name: str) -> str:
        return f"{HPN_PLANS_NAME}_{configuration_name}"
