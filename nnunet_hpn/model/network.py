"""The Hyper-Pairing Network (Zhou et al., MICCAI 2019, §2.1) for nnU-Net v2: :class:`HyperPairedUNet` (plain
conv encoder stages) and :class:`HyperPairedResDSN` (3D-ResDSN: residual encoder stages), built from the encoder and
decoder of this package; the hyper-connections are described in :mod:`nnunet_hpn.model.hyper_connections`."""
from __future__ import annotations

from typing import Sequence, Type, Union

import numpy as np
from dynamic_network_architectures.building_blocks.helper import convert_conv_op_to_dim
from dynamic_network_architectures.building_blocks.residual import BasicBlockD
from dynamic_network_architectures.initialization.weight_init import InitWeights_He, init_last_bn_before_add_to_0
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.dropout import _DropoutNd

from nnunet_hpn.model.decoder import HyperPairedDecoder
from nnunet_hpn.model.encoder import HyperPairedEncoder
from nnunet_hpn.model.hyper_connections import (CONNECTION_KINDS, IntOrSeq, all_hyper_connection_names,
                                                parse_connection, per_stage)

#: backbone -> the single-path network of dynamic_network_architectures with the same encoder stages (the
#: early-fusion baseline of that backbone)
SINGLE_PATH_NETWORKS: dict[str, str] = {
    "unet": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "resdsn": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"}
BACKBONES: tuple[str, ...] = tuple(SINGLE_PATH_NETWORKS)


class HyperPairedUNet(nn.Module):
    """Hyper-Pairing Network: one U-Net path per phase, hyper-connections between paths, shared classifier.

    Constructor: PlainConvUNet's keyword arguments plus

    * ``backbone``: "unet" (plain conv encoder stages) or "resdsn" (residual encoder stages of BasicBlockD with a
      stem, ``n_conv_per_stage`` = residual blocks per stage); the decoder is StackedConvBlocks in both. Default:
      the class's :attr:`default_backbone`.
    * ``path_channels``: input channel of every path (default: every input channel). One path = a plain
      single-path U-Net on that channel that ignores the other channels.
    * ``hyper_connections``: names of the connections to build (see :func:`all_hyper_connection_names`);
      None = all.
    * ``context_channels``: input channels every path reads next to its own phase channel (nnU-Net's cascade: the
      previous stage's one-hot segmentation, appended after the phases); default none.

    forward: x (B, C, *spatial) with C > max(path_channels, context_channels) -> logits (B, num_classes, *spatial), or
    with deep supervision a list of n_stages-1 logits tensors, highest resolution first. In training mode it also stores
    ``pairing_features``: per path the last decoder output (B, features_per_stage[0], *spatial), which feeds the
    shared classifier and the pairing loss; in eval mode, or with ``keep_pairing_features`` False (no pairing loss
    reads them), that attribute is None.
    """

    #: backbone when the plans give none (``HyperPairedResDSN``: "resdsn")
    default_backbone: str = "unet"

    def __init__(
        self,
        input_channels: int,
        n_stages: int,
        features_per_stage: IntOrSeq,
        conv_op: Type[_ConvNd],
        kernel_sizes: Union[int, Sequence[IntOrSeq]],
        strides: Union[int, Sequence[IntOrSeq]],
        n_conv_per_stage: IntOrSeq,
        num_classes: int,
        n_conv_per_stage_decoder: IntOrSeq,
        conv_bias: bool = False,
        norm_op: Union[None, Type[nn.Module]] = None,
        norm_op_kwargs: dict | None = None,
        dropout_op: Union[None, Type[_DropoutNd]] = None,
        dropout_op_kwargs: dict | None = None,
        nonlin: Union[None, Type[nn.Module]] = None,
        nonlin_kwargs: dict | None = None,
        deep_supervision: bool = False,
        nonlin_first: bool = False,
        backbone: str | None = None,
        path_channels: Sequence[int] | None = None,
        hyper_connections: Sequence[str] | None = None,
        context_channels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        backbone = backbone or self.default_backbone
        if backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {list(BACKBONES)}, got {backbone!r}")
        if n_stages < 2:
            raise ValueError(f"n_stages must be at least 2, got {n_stages}")
        if path_channels is None:
            path_channels = list(range(input_channels))
        path_channels = [int(c) for c in path_channels]
        if not path_channels:
            raise ValueError("path_channels must name at least one input channel")
        bad_channels = [c for c in path_channels if not 0 <= c < input_channels]
        if bad_channels:
            raise ValueError(
                f"path_channels {path_channels} name channels {bad_channels} outside the {input_channels} input "
                f"channels (valid: 0..{input_channels - 1})"
            )
        context_channels = [int(c) for c in context_channels or ()]
        bad_context = [c for c in context_channels if not 0 <= c < input_channels or c in path_channels]
        if bad_context:
            raise ValueError(
                f"context_channels {context_channels}: {bad_context} are outside the {input_channels} input channels "
                f"or also path channels {path_channels}")
        n_paths = len(path_channels)
        valid_names = all_hyper_connection_names(n_paths)
        if hyper_connections is None:
            hyper_connections = valid_names
        unknown = [name for name in hyper_connections if name not in valid_names]
        if unknown:
            raise ValueError(
                f"unknown hyper-connection(s) {unknown} for {n_paths} path(s); valid names: {valid_names}"
            )
        built = [name for name in valid_names if name in set(hyper_connections)]  # canonical order, no repeats

        features_per_stage = per_stage(features_per_stage, n_stages, "features_per_stage")
        kernel_sizes = per_stage(kernel_sizes, n_stages, "kernel_sizes")
        strides = per_stage(strides, n_stages, "strides")
        n_conv_per_stage = per_stage(n_conv_per_stage, n_stages, "n_conv_per_stage")
        n_conv_per_stage_decoder = per_stage(n_conv_per_stage_decoder, n_stages - 1, "n_conv_per_stage_decoder")

        sources: dict[tuple[str, str], list[list[int]]] = {kind: [[] for _ in range(n_paths)] for kind in
                                                           CONNECTION_KINDS}
        for name in built:
            source_kind, i, target_kind, j = parse_connection(name)
            sources[(source_kind, target_kind)][j].append(i)

        self.input_channels = input_channels
        self.num_classes = num_classes
        self.backbone = backbone
        self.path_channels: list[int] = path_channels
        self.context_channels: list[int] = context_channels
        self.hyper_connections: tuple[str, ...] = tuple(built)
        self.pairing_features: tuple[Tensor, ...] | None = None
        #: False: a training forward does not keep the full-resolution features (no pairing loss needs them)
        self.keep_pairing_features: bool = True
        self.encoder = HyperPairedEncoder(
            n_paths, n_stages, features_per_stage, conv_op, kernel_sizes, strides, n_conv_per_stage, backbone,
            sources[("enc", "enc")],
            dict(conv_bias=conv_bias, norm_op=norm_op, norm_op_kwargs=norm_op_kwargs, dropout_op=dropout_op,
                 dropout_op_kwargs=dropout_op_kwargs, nonlin=nonlin, nonlin_kwargs=nonlin_kwargs),
            nonlin_first, channels_per_path=1 + len(context_channels),
        )
        self.decoder = HyperPairedDecoder(
            self.encoder, num_classes, n_conv_per_stage_decoder, deep_supervision,
            sources[("enc", "dec")], sources[("dec", "dec")],
        )

    @property
    def n_paths(self) -> int:
        return len(self.path_channels)

    def set_hyper_connection_active(self, name: str, active: bool) -> None:
        """Switch a built connection on or off at run time; off feeds zeros in place of the other path's feature."""
        for part in (self.encoder, self.decoder):
            if name in part.active:
                part.active[name] = bool(active)
                return
        raise ValueError(
            f"hyper-connection {name!r} is not built in this network; built: {list(self.hyper_connections)} "
            f"(valid names for {self.n_paths} path(s): {all_hyper_connection_names(self.n_paths)})"
        )

    def is_hyper_connection_active(self, name: str) -> bool:
        """Whether the built connection ``name`` currently passes the other path's feature."""
        for part in (self.encoder, self.decoder):
            if name in part.active:
                return part.active[name]
        raise ValueError(f"hyper-connection {name!r} is not built; built: {list(self.hyper_connections)}")

    def forward(self, x: Tensor) -> Union[Tensor, list[Tensor]]:
        """x: (B, C, *spatial) -> (B, num_classes, *spatial), or a list of those (deep supervision)."""
        n_spatial = convert_conv_op_to_dim(self.encoder.conv_op)
        if x.ndim != n_spatial + 2:
            raise ValueError(f"expected input (B, C, {n_spatial} spatial dims), got shape {tuple(x.shape)}")
        needed = max(self.path_channels + self.context_channels) + 1
        if x.shape[1] < needed:
            raise ValueError(
                f"input has {x.shape[1]} channel(s) but path_channels {self.path_channels} and context_channels "
                f"{self.context_channels} need at least {needed} (channel 0 arterial, channel 1 venous)"
            )
        if self.context_channels:
            path_inputs = [x[:, [c, *self.context_channels]] for c in self.path_channels]
        else:
            path_inputs = [x[:, c:c + 1] for c in self.path_channels]
        skips = self.encoder(path_inputs)
        logits, last_decoder_outputs = self.decoder(skips)
        self.pairing_features = last_decoder_outputs if self.training and self.keep_pairing_features else None
        return logits

    def pop_pairing_features(self) -> tuple[Tensor, ...] | None:
        """Return the features stored by the last training-mode forward (K x (B, F0, *spatial)) and clear them."""
        features, self.pairing_features = self.pairing_features, None
        return features

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        """Activation-memory proxy for nnU-Net's planner, in channels x voxels (PlainConvUNet's convention).

        Sums, over every path, the encoder (stem, stage) and decoder (transposed conv, conv block) outputs, plus
        the shared seg head outputs that run, plus the extra stored tensors the hyper-connections add: for each
        concatenation, the channels x voxels of the other paths' features in it (including the other paths'
        share of the shared heads' input). With one path this equals PlainConvUNet / ResidualEncoderUNet on one
        input channel. ``input_size`` is spatial only, e.g. (64, 64, 64).
        """
        if len(input_size) != convert_conv_op_to_dim(self.encoder.conv_op):
            raise ValueError(f"give the spatial size only, e.g. (x, y, z); got {tuple(input_size)}")
        return (
            self.encoder.compute_conv_feature_map_size(input_size)
            + self.decoder.compute_conv_feature_map_size(input_size)
            + self.encoder.hyper_connection_feature_map_size(input_size)
            + self.decoder.hyper_connection_feature_map_size(input_size)
        )

    @staticmethod
    def initialize(module: nn.Module) -> None:
        """He init of convs (like PlainConvUNet); residual blocks start as identity (like ResidualEncoderUNet)."""
        InitWeights_He(1e-2)(module)
        if isinstance(module, BasicBlockD) and not hasattr(module.conv2, "norm"):
            return  # no norm layer to zero
        init_last_bn_before_add_to_0(module)


class HyperPairedResDSN(HyperPairedUNet):
    """HyperPairedUNet with the residual ("resdsn") encoder by default.

    Takes HyperPairedUNet's arguments; also accepts ``n_blocks_per_stage`` (the key nnU-Net's ResEnc planners
    write) as an alias of ``n_conv_per_stage`` (residual blocks per encoder stage).
    """

    default_backbone = "resdsn"

    def __init__(self, *args, backbone: str | None = None, n_blocks_per_stage: IntOrSeq | None = None,
                 **kwargs) -> None:
        if n_blocks_per_stage is not None:
            given = kwargs.get("n_conv_per_stage")
            if given is not None and given != n_blocks_per_stage:
                raise ValueError(
                    f"n_blocks_per_stage {n_blocks_per_stage} and n_conv_per_stage {given} disagree; give one of them"
                )
            kwargs["n_conv_per_stage"] = n_blocks_per_stage
        super().__init__(*args, backbone=backbone, **kwargs)
