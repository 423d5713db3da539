"""The dual-path (K-path) Hyper-Pairing Network of Zhou et al., MICCAI 2019, §2.1, for nnU-Net v2.

One U-shaped path per input phase (channel 0 arterial = path 0, channel 1 venous = path 1 by default). The paths
run in lockstep and exchange features through *hyper-connections*: concatenations (as in U-Net skips and
HyperDenseNet) of another path's feature map of the same resolution into the input of a layer of this path.

Connection names, for a source path ``i`` and a target path ``j != i``:

* ``enc{i}->enc{j}``: encoder stage ``s`` of path ``j`` takes ``cat(own stage s-1, stage s-1 of path i)``;
* ``enc{i}->dec{j}``: the decoder of path ``j`` at the resolution of encoder stage ``s`` takes
  ``cat(upsampled own, own skip s, skip s of path i)``; at the bottom, its first transposed conv takes
  ``cat(own bottleneck, bottleneck of path i)``;
* ``dec{i}->dec{j}``: every transposed conv of decoder ``j`` after the first takes
  ``cat(own previous decoder output, previous decoder output of path i)``.

For two paths these are the paper's six directions (encoder A<->B, encoder A->decoder B, encoder B->decoder A,
decoder A<->B). The in-path U-Net skips stay. One shared 1x1(x1) classifier takes the concatenation of all paths'
last decoder outputs; with deep supervision each lower decoder resolution has its own shared head.
"""
from __future__ import annotations

import re
from typing import Sequence, Type, Union

import numpy as np
import torch
from dynamic_network_architectures.building_blocks.helper import (
    convert_conv_op_to_dim,
    get_matching_convtransp,
    maybe_convert_scalar_to_list,
)
from dynamic_network_architectures.building_blocks.residual import BasicBlockD, StackedResidualBlocks
from dynamic_network_architectures.building_blocks.simple_conv_blocks import StackedConvBlocks
from dynamic_network_architectures.initialization.weight_init import InitWeights_He, init_last_bn_before_add_to_0
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.dropout import _DropoutNd

IntOrSeq = Union[int, Sequence[int]]
#: backbone -> the single-path network of dynamic_network_architectures with the same encoder stages (the
#: early-fusion baseline of that backbone)
SINGLE_PATH_NETWORKS: dict[str, str] = {
    "unet": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "resdsn": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"}
BACKBONES: tuple[str, ...] = tuple(SINGLE_PATH_NETWORKS)
_CONNECTION_KINDS: tuple[tuple[str, str], ...] = (("enc", "enc"), ("enc", "dec"), ("dec", "dec"))
_CONNECTION_PATTERN = re.compile(r"^(enc|dec)(\d+)->(enc|dec)(\d+)$")


def all_hyper_connection_names(n_paths: int) -> list[str]:
    """Every valid hyper-connection name for ``n_paths`` paths: enc->enc, then enc->dec, then dec->dec.

    For 2 paths: ``enc0->enc1, enc1->enc0, enc0->dec1, enc1->dec0, dec0->dec1, dec1->dec0``. Empty for 1 path.
    """
    return [
        f"{source_kind}{i}->{target_kind}{j}"
        for source_kind, target_kind in _CONNECTION_KINDS
        for i in range(n_paths)
        for j in range(n_paths)
        if i != j
    ]


def _parse_connection(name: str) -> tuple[str, int, str, int]:
    """``"enc0->dec1"`` -> ``("enc", 0, "dec", 1)``; the name must already be known to be valid."""
    match = _CONNECTION_PATTERN.match(name)
    assert match is not None, name
    return match.group(1), int(match.group(2)), match.group(3), int(match.group(4))


def _per_stage(value: IntOrSeq, n_stages: int, what: str) -> list:
    """Broadcast an int to ``n_stages`` entries, or check a sequence has ``n_stages`` entries."""
    if isinstance(value, int):
        return [value] * n_stages
    value = list(value)
    if len(value) != n_stages:
        raise ValueError(f"{what} needs {n_stages} entries (one per stage), got {len(value)}: {value}")
    return value


def _n_voxels(size: Sequence[int]) -> np.int64:
    return np.prod(list(size), dtype=np.int64)


def _stage_output_sizes(input_size: Sequence[int], strides: Sequence[Sequence[int]]) -> list[list[int]]:
    """Spatial size of every encoder stage's output (same padding, ``size // stride`` per stage)."""
    sizes = []
    size = list(input_size)
    for stride in strides:
        size = [edge // step for edge, step in zip(size, stride)]
        sizes.append(size)
    return sizes


class _HyperConnectedPart(nn.Module):
    """Base of encoder and decoder: knows which built hyper-connections it consumes and which are active."""

    def __init__(self, n_paths: int) -> None:
        super().__init__()
        self.n_paths = n_paths
        #: name -> active flag, for the connections this part consumes (a plain dict: not in the state_dict).
        self.active: dict[str, bool] = {}

    def _register(self, names: Sequence[str]) -> None:
        for name in names:
            self.active[name] = True

    def _incoming(
        self, features: Sequence[Tensor], target: int, sources: Sequence[int], source_kind: str, target_kind: str
    ) -> list[Tensor]:
        """Features of the source paths that ``target`` concatenates; zeros for an inactive connection.

        ``features[i]`` is (B, C, *spatial) of path ``i``; returns one such tensor per source, in source order.
        """
        return [
            features[i] if self.active[f"{source_kind}{i}->{target_kind}{target}"] else torch.zeros_like(features[i])
            for i in sources
        ]


class HyperPairedEncoder(_HyperConnectedPart):
    """K encoders (plain conv or residual) run in lockstep, joined by ``enc{i}->enc{j}`` hyper-connections.

    ``stems[p]`` (resdsn only) and ``stages[p][s]`` are path ``p``'s modules. forward takes one (B, 1, *spatial)
    tensor per path and returns ``skips[p][s]`` = (B, features_per_stage[s], *spatial_s).
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
        conv_bias: bool = False,
        norm_op: Union[None, Type[nn.Module]] = None,
        norm_op_kwargs: dict | None = None,
        dropout_op: Union[None, Type[_DropoutNd]] = None,
        dropout_op_kwargs: dict | None = None,
        nonlin: Union[None, Type[nn.Module]] = None,
        nonlin_kwargs: dict | None = None,
        nonlin_first: bool = False,
    ) -> None:
        super().__init__(n_paths)
        #: encoder_sources[j] = source paths i of the built enc{i}->enc{j} connections.
        self.encoder_sources = [list(s) for s in encoder_sources]
        self._register([f"enc{i}->enc{j}" for j in range(n_paths) for i in self.encoder_sources[j]])
        self.backbone = backbone
        block_kwargs = dict(
            conv_bias=conv_bias, norm_op=norm_op, norm_op_kwargs=norm_op_kwargs, dropout_op=dropout_op,
            dropout_op_kwargs=dropout_op_kwargs, nonlin=nonlin, nonlin_kwargs=nonlin_kwargs,
        )
        stems: list[nn.Module] = []
        paths: list[nn.ModuleList] = []
        for target in range(n_paths):
            stages: list[nn.Module] = []
            if backbone == "resdsn":
                # like ResidualEncoder's default stem: one conv, no stride, phase channel -> features_per_stage[0]
                stems.append(StackedConvBlocks(1, conv_op, 1, features_per_stage[0], kernel_sizes[0], 1,
                                               **block_kwargs))
            for s in range(n_stages):
                if s == 0:
                    in_channels = features_per_stage[0] if backbone == "resdsn" else 1
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
        self.conv_bias = conv_bias
        self.norm_op = norm_op
        self.norm_op_kwargs = norm_op_kwargs
        self.dropout_op = dropout_op
        self.dropout_op_kwargs = dropout_op_kwargs
        self.nonlin = nonlin
        self.nonlin_kwargs = nonlin_kwargs
        self.nonlin_first = nonlin_first

    def forward(self, path_inputs: Sequence[Tensor]) -> list[list[Tensor]]:
        """path_inputs: K x (B, 1, *spatial) -> skips[path][stage] = (B, features_per_stage[stage], *spatial_stage)."""
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
        sizes = _stage_output_sizes(input_size, self.strides)
        output = np.int64(0)
        for j in range(self.n_paths):
            for s in range(1, len(self.output_channels)):
                output += len(self.encoder_sources[j]) * self.output_channels[s - 1] * _n_voxels(sizes[s - 1])
        return output


class HyperPairedDecoder(_HyperConnectedPart):
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
        sizes = _stage_output_sizes(input_size, self.encoder_strides)
        n_decoder_stages = len(self.seg_layers)
        output = np.int64(0)
        for d in range(n_decoder_stages):
            s = n_decoder_stages - 1 - d
            for j in range(self.n_paths):
                output += self.stages[j][d].compute_conv_feature_map_size(sizes[s])
                output += self.encoder_output_channels[s] * _n_voxels(sizes[s])  # transposed conv
            if self.deep_supervision or d == n_decoder_stages - 1:
                output += self.num_classes * _n_voxels(sizes[s])
        return output

    def hyper_connection_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        """Channels x voxels of other paths' features concatenated into decoder inputs and the shared heads."""
        sizes = _stage_output_sizes(input_size, self.encoder_strides)
        features = self.encoder_output_channels
        n_decoder_stages = len(self.seg_layers)
        output = np.int64(0)
        for j in range(self.n_paths):
            n_enc_in = len(self.encoder_to_decoder_sources[j])
            n_dec_in = len(self.decoder_to_decoder_sources[j])
            output += n_enc_in * features[-1] * _n_voxels(sizes[-1])  # bottleneck into first transposed conv
            for d in range(n_decoder_stages):
                s = n_decoder_stages - 1 - d
                output += n_enc_in * features[s] * _n_voxels(sizes[s])  # other paths' skips
                if d > 0:  # other paths' previous decoder outputs into the transposed conv
                    output += n_dec_in * features[s + 1] * _n_voxels(sizes[s + 1])
        for d in range(n_decoder_stages):
            s = n_decoder_stages - 1 - d
            if self.deep_supervision or d == n_decoder_stages - 1:
                output += (self.n_paths - 1) * features[s] * _n_voxels(sizes[s])  # shared head input
        return output


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

    forward: x (B, C, *spatial) with C > max(path_channels) -> logits (B, num_classes, *spatial), or with deep
    supervision a list of n_stages-1 logits tensors, highest resolution first. In training mode it also stores
    ``pairing_features``: per path the last decoder output (B, features_per_stage[0], *spatial), which feeds the
    shared classifier and the pairing loss; in eval mode that attribute is None.
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

        features_per_stage = _per_stage(features_per_stage, n_stages, "features_per_stage")
        kernel_sizes = _per_stage(kernel_sizes, n_stages, "kernel_sizes")
        strides = _per_stage(strides, n_stages, "strides")
        n_conv_per_stage = _per_stage(n_conv_per_stage, n_stages, "n_conv_per_stage")
        n_conv_per_stage_decoder = _per_stage(n_conv_per_stage_decoder, n_stages - 1, "n_conv_per_stage_decoder")

        sources: dict[tuple[str, str], list[list[int]]] = {kind: [[] for _ in range(n_paths)] for kind in
                                                           _CONNECTION_KINDS}
        for name in built:
            source_kind, i, target_kind, j = _parse_connection(name)
            sources[(source_kind, target_kind)][j].append(i)

        self.input_channels = input_channels
        self.num_classes = num_classes
        self.backbone = backbone
        self.path_channels: list[int] = path_channels
        self.hyper_connections: tuple[str, ...] = tuple(built)
        self.pairing_features: tuple[Tensor, ...] | None = None
        self.encoder = HyperPairedEncoder(
            n_paths, n_stages, features_per_stage, conv_op, kernel_sizes, strides, n_conv_per_stage, backbone,
            sources[("enc", "enc")], conv_bias, norm_op, norm_op_kwargs, dropout_op, dropout_op_kwargs, nonlin,
            nonlin_kwargs, nonlin_first,
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
        if x.shape[1] <= max(self.path_channels):
            raise ValueError(
                f"input has {x.shape[1]} channel(s) but path_channels {self.path_channels} need at least "
                f"{max(self.path_channels) + 1} (channel 0 arterial, channel 1 venous)"
            )
        skips = self.encoder([x[:, c:c + 1] for c in self.path_channels])
        logits, last_decoder_outputs = self.decoder(skips)
        self.pairing_features = last_decoder_outputs if self.training else None
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
