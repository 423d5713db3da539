"""The K decoders of the Hyper-Pairing Network with their ``enc->dec`` and ``dec->dec`` hyper-connections and the
shared classifier (:mod:`nnunet_hpn.model.hyper_connections`)."""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch
from dynamic_network_architectures.building_blocks.helper import get_matching_convtransp
from dynamic_network_architectures.building_blocks.simple_conv_blocks import StackedConvBlocks
from torch import Tensor, nn

from nnunet_hpn.model.encoder import HyperPairedEncoder
from nnunet_hpn.model.hyper_connections import HyperConnectedPart, n_voxels, stage_output_sizes

class HyperPairedDecoder(HyperConnectedPart):
    """K U-Net decoders (StackedConvBlocks) in lockstep plus shared seg heads.

    ``transpconvs[p][d]`` / ``stages[p][d]``: decoder stage ``d`` (0 = lowest resolution) of path ``p``;
    ``seg_layers[d]``: shared 1x1 head on cat(all paths' outputs of stage d) -> num_classes. Set
    ``deep_supervision`` to switch between one logits tensor and a list (highest resolution first).
    """

    def __init__(
        self,
        encoder: HyperPairedEncoder,
        num_classes: int,
        n_conv_per_stage: list[int],
        deep_supervision: bool,
        encoder_to_decoder_sources: list[list[int]],
        decoder_to_decoder_sources: list[list[int]],
    ) -> None:
        super().__init__(encoder.n_paths)
        n_paths = encoder.n_paths
        self.deep_supervision = deep_supervision
        self.num_classes = num_classes
        #: source paths i of the built enc{i}->dec{j} and dec{i}->dec{j} connections, per target path j
        self.encoder_to_decoder_sources = [list(s) for s in encoder_to_decoder_sources]
        self.decoder_to_decoder_sources = [list(s) for s in decoder_to_decoder_sources]
        self._register([f"enc{i}->dec{j}" for j in range(n_paths) for i in self.encoder_to_decoder_sources[j]])
        self._register([f"dec{i}->dec{j}" for j in range(n_paths) for i in self.decoder_to_decoder_sources[j]])
        # kept for compute_conv_feature_map_size; plain lists, not submodules (no duplicate state_dict keys)
        self.encoder_output_channels = list(encoder.output_channels)
        self.encoder_strides = list(encoder.strides)

        features = encoder.output_channels
        n_stages = len(features)
        transpconv_op = get_matching_convtransp(conv_op=encoder.conv_op)
        transpconv_paths: list[nn.ModuleList] = []
        stage_paths: list[nn.ModuleList] = []
        for target in range(n_paths):
            n_enc_in = len(self.encoder_to_decoder_sources[target])
            n_dec_in = len(self.decoder_to_decoder_sources[target])
            transpconvs: list[nn.Module] = []
            stages: list[nn.Module] = []
            for d in range(n_stages - 1):
                s = n_stages - 2 - d  # encoder stage whose resolution this decoder stage has
                below_channels = features[s + 1] * (1 + (n_enc_in if d == 0 else n_dec_in))
                stride = encoder.strides[s + 1]
                transpconvs.append(transpconv_op(below_channels, features[s], stride, stride, bias=encoder.conv_bias))
                stages.append(StackedConvBlocks(
                    n_conv_per_stage[d], encoder.conv_op, features[s] * (2 + n_enc_in), features[s],
                    encoder.kernel_sizes[s], 1, encoder.conv_bias, encoder.norm_op, encoder.norm_op_kwargs,
                    encoder.dropout_op, encoder.dropout_op_kwargs, encoder.nonlin, encoder.nonlin_kwargs,
                    encoder.nonlin_first,
                ))
            transpconv_paths.append(nn.ModuleList(transpconvs))
            stage_paths.append(nn.ModuleList(stages))
        self.transpconvs = nn.ModuleList(transpconv_paths)
        self.stages = nn.ModuleList(stage_paths)
        # built always, so that a checkpoint trained with deep supervision loads strictly without it
        self.seg_layers = nn.ModuleList(
            encoder.conv_op(n_paths * features[n_stages - 2 - d], num_classes, 1, 1, 0, bias=True)
            for d in range(n_stages - 1)
        )

    def forward(self, skips: Sequence[Sequence[Tensor]]) -> tuple[Union[Tensor, list[Tensor]], tuple[Tensor, ...]]:
        """skips[path][stage] from the encoder -> (logits, last decoder output of every path).

        logits: (B, num_classes, *spatial) or, with deep supervision, a list of n_stages-1 such tensors at
        decreasing resolution. Last outputs: K x (B, features_per_stage[0], *spatial).
        """
        n_paths = self.n_paths
        n_decoder_stages = len(self.seg_layers)
        below = [skips[j][-1] for j in range(n_paths)]
        seg_outputs: list[Tensor] = []
        for d in range(n_decoder_stages):
            s = n_decoder_stages - 1 - d
            below_sources = self.encoder_to_decoder_sources if d == 0 else self.decoder_to_decoder_sources
            below_kind = "enc" if d == 0 else "dec"
            transpconv_inputs = [
                torch.cat((below[j], *self._incoming(below, j, below_sources[j], below_kind, "dec")), 1)
                if below_sources[j] else below[j]
                for j in range(n_paths)
            ]
            skips_at_level = [skips[j][s] for j in range(n_paths)]
            below = [
                self.stages[j][d](torch.cat((
                    self.transpconvs[j][d](transpconv_inputs[j]),
                    skips_at_level[j],
                    *self._incoming(skips_at_level, j, self.encoder_to_decoder_sources[j], "enc", "dec"),
                ), 1))
                for j in range(n_paths)
            ]
            if self.deep_supervision or d == n_decoder_stages - 1:
                head_input = torch.cat(below, 1) if n_paths > 1 else below[0]
                seg_outputs.append(self.seg_layers[d](head_input))
        seg_outputs = seg_outputs[::-1]  # highest resolution first, like UNetDecoder
        logits = seg_outputs if self.deep_supervision else seg_outputs[0]
        return logits, tuple(below)

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        """All paths' transposed-conv and conv-block outputs plus the (shared) seg head outputs that run.

        ``input_size`` is the encoder's input size (UNetDecoder's convention).
        """
        sizes = stage_output_sizes(input_size, self.encoder_strides)
        n_decoder_stages = len(self.seg_layers)
        output = np.int64(0)
        for d in range(n_decoder_stages):
            s = n_decoder_stages - 1 - d
            for j in range(self.n_paths):
                output += self.stages[j][d].compute_conv_feature_map_size(sizes[s])
                output += self.encoder_output_channels[s] * n_voxels(sizes[s])  # transposed conv
            if self.deep_supervision or d == n_decoder_stages - 1:
                output += self.num_classes * n_voxels(sizes[s])
        return output

    def hyper_connection_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        """Channels x voxels of other paths' features concatenated into decoder inputs and the shared heads."""
        sizes = stage_output_sizes(input_size, self.encoder_strides)
        features = self.encoder_output_channels
        n_decoder_stages = len(self.seg_layers)
        output = np.int64(0)
        for j in range(self.n_paths):
            n_enc_in = len(self.encoder_to_decoder_sources[j])
            n_dec_in = len(self.decoder_to_decoder_sources[j])
            output += n_enc_in * features[-1] * n_voxels(sizes[-1])  # bottleneck into first transposed conv
            for d in range(n_decoder_stages):
                s = n_decoder_stages - 1 - d
                output += n_enc_in * features[s] * n_voxels(sizes[s])  # other paths' skips
                if d > 0:  # other paths' previous decoder outputs into the transposed conv
                    output += n_dec_in * features[s + 1] * n_voxels(sizes[s + 1])
        for d in range(n_decoder_stages):
            s = n_decoder_stages - 1 - d
            if self.deep_supervision or d == n_decoder_stages - 1:
                output += (self.n_paths - 1) * features[s] * n_voxels(sizes[s])  # shared head input
        return output
