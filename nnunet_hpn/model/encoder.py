"""The K encoders of the Hyper-Pairing Network, run in lockstep and joined by ``enc->enc`` hyper-connections
(:mod:`nnunet_hpn.model.hyper_connections`)."""
from __future__ import annotations

from typing import Sequence, Type

import numpy as np
import torch
from dynamic_network_architectures.building_blocks.helper import maybe_convert_scalar_to_list
from dynamic_network_architectures.building_blocks.residual import BasicBlockD, StackedResidualBlocks
from dynamic_network_architectures.building_blocks.simple_conv_blocks import StackedConvBlocks
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd

from nnunet_hpn.model.hyper_connections import HyperConnectedPart, n_voxels, stage_output_sizes

#: The block arguments of dynamic_network_architectures' conv and residual blocks that every stage shares.
BLOCK_ARGUMENTS: tuple[str, ...] = ("conv_bias", "norm_op", "norm_op_kwargs", "dropout_op", "dropout_op_kwargs",
                                    "nonlin", "nonlin_kwargs")


class HyperPairedEncoder(HyperConnectedPart):
    """K encoders (plain conv or residual) run in lockstep, joined by ``enc{i}->enc{j}`` hyper-connections.

    ``stems[p]`` (resdsn only) and ``stages[p][s]`` are path ``p``'s modules. forward takes one
    (B, channels_per_path, *spatial) tensor per path (its phase, then any context channels) and returns
    ``skips[p][s]`` = (B, features_per_stage[s], *spatial_s). ``block_kwargs``: the
    :data:`BLOCK_ARGUMENTS` of every block (missing ones None, ``conv_bias`` False).
    """

    def __init__(
        self,
        n_paths: int,
        n_stages: int,
        features_per_stage: list[int],
        conv_op: Type[_ConvNd],
        kernel_sizes: list,
        strides: list,
        n_conv_per_stage: list[int],
        backbone: str,
        encoder_sources: list[list[int]],
        block_kwargs: dict,
        nonlin_first: bool = False,
        channels_per_path: int = 1,
    ) -> None:
        super().__init__(n_paths)
        #: encoder_sources[j] = source paths i of the built enc{i}->enc{j} connections.
        self.encoder_sources = [list(s) for s in encoder_sources]
        self._register([f"enc{i}->enc{j}" for j in range(n_paths) for i in self.encoder_sources[j]])
        self.backbone = backbone
        block_kwargs = {name: block_kwargs.get(name) for name in BLOCK_ARGUMENTS}
        block_kwargs["conv_bias"] = bool(block_kwargs["conv_bias"])
        stems: list[nn.Module] = []
        paths: list[nn.ModuleList] = []
        for target in range(n_paths):
            stages: list[nn.Module] = []
            if backbone == "resdsn":
                # like ResidualEncoder's default stem: one conv, no stride, path input -> features_per_stage[0]
                stems.append(StackedConvBlocks(1, conv_op, channels_per_path, features_per_stage[0], kernel_sizes[0],
                                               1, **block_kwargs))
            for s in range(n_stages):
                if s == 0:
                    in_channels = features_per_stage[0] if backbone == "resdsn" else channels_per_path
                else:
                    in_channels = features_per_stage[s - 1] * (1 + len(self.encoder_sources[target]))
                if backbone == "resdsn":
                    stages.append(StackedResidualBlocks(
                        n_conv_per_stage[s], conv_op, in_channels, features_per_stage[s], kernel_sizes[s], strides[s],
                        block=BasicBlockD, **block_kwargs,
                    ))
                else:  # first conv strided, like PlainConvEncoder with pool='conv'
                    stages.append(StackedConvBlocks(
                        n_conv_per_stage[s], conv_op, in_channels, features_per_stage[s], kernel_sizes[s], strides[s],
                        nonlin_first=nonlin_first, **block_kwargs,
                    ))
            paths.append(nn.ModuleList(stages))
        self.stems = nn.ModuleList(stems) if stems else None
        self.stages = nn.ModuleList(paths)

        # what a decoder needs, with the names PlainConvEncoder / ResidualEncoder use
        self.output_channels = list(features_per_stage)
        self.strides = [maybe_convert_scalar_to_list(conv_op, s) for s in strides]
        self.kernel_sizes = kernel_sizes
        self.conv_op = conv_op
        for name, value in block_kwargs.items():  # conv_bias, norm_op, ... as PlainConvEncoder names them
            setattr(self, name, value)
        self.nonlin_first = nonlin_first

    def forward(self, path_inputs: Sequence[Tensor]) -> list[list[Tensor]]:
        """path_inputs: K x (B, channels_per_path, *spatial) -> skips[path][stage] =
        (B, features_per_stage[stage], *spatial_stage)."""
        if self.stems is not None:
            current = [stem(x) for stem, x in zip(self.stems, path_inputs)]
        else:
            current = list(path_inputs)
        skips: list[list[Tensor]] = [[] for _ in range(self.n_paths)]
        for s in range(len(self.output_channels)):
            if s > 0:
                current = [
                    torch.cat((current[j], *self._incoming(current, j, self.encoder_sources[j], "enc", "enc")), 1)
                    if self.encoder_sources[j] else current[j]
                    for j in range(self.n_paths)
                ]
            current = [self.stages[j][s](current[j]) for j in range(self.n_paths)]
            for j in range(self.n_paths):
                skips[j].append(current[j])
        return skips

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        """Sum over all paths' stem/stage conv outputs of channels x voxels (ResidualEncoder's convention)."""
        output = np.int64(0)
        for j in range(self.n_paths):
            size = list(input_size)
            if self.stems is not None:
                output += self.stems[j].compute_conv_feature_map_size(size)
            for s, stride in enumerate(self.strides):
                output += self.stages[j][s].compute_conv_feature_map_size(size)
                size = [i // st for i, st in zip(size, stride)]
        return output

    def hyper_connection_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        """Channels x voxels of the other paths' features concatenated into encoder stage inputs."""
        sizes = stage_output_sizes(input_size, self.strides)
        output = np.int64(0)
        for j in range(self.n_paths):
            for s in range(1, len(self.output_channels)):
                output += len(self.encoder_sources[j]) * self.output_channels[s - 1] * n_voxels(sizes[s - 1])
        return output
