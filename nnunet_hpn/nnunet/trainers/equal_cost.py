"""Equal-cost HPN: both paths narrowed so that the dual-path network needs no more arithmetic than nnU-Net's own
single-path network at the same plans.

An HPN at the plans' widths costs about 2.6x the forward FLOPs of nnU-Net's PlainConvUNet fed both phases as two
channels (two paths, plus the wider convolutions that take the hyper-connections). Convolution FLOPs grow with the
product of input and output channels, so scaling every path's ``features_per_stage`` by ``f`` scales the network's
FLOPs by about ``f**2``. :class:`HPNTrainer_equalcost` picks the largest ``f`` (on a grid of 1/64 steps) whose
narrowed HPN has forward FLOPs <= ``target_flop_ratio`` x those of the early-fusion network that
:class:`~nnunet_hpn.nnunet.trainers.hpn_trainer.EarlyFusionTrainer` builds from the same plans (PlainConvUNet for
``nnUNetHPNPlans``, ResidualEncoderUNet for ``nnUNetHPNResDSNPlans``), at the plans' patch size. Both networks are
built on the meta device for the count (no memory, no weights), with deep supervision off, so training and
``nnUNetv2_predict`` choose the same widths. Narrowed widths are multiples of 8 (below 8 channels: integers), the
channel counts convolution kernels run fastest at (see :data:`WIDTH_MULTIPLE`). Everything else (stages, strides,
kernels, hyper-connections, pairing loss, patch, batch) is the plans' and HPNTrainer's.
"""
from __future__ import annotations

import json
import math
from functools import lru_cache
from typing import Sequence

import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nnunet_hpn.nnunet.trainers.hpn_trainer import EarlyFusionTrainer, HPNTrainer, HPNTrainer_demo

#: the width search scans factors k / WIDTH_GRID_STEPS
WIDTH_GRID_STEPS = 64
WIDTH_GRID_MIN = 0.25
#: FlopCounterMode counts convolutions and matrix products only, so the count is made without norms and
#: non-linearities (a fraction of the time on the meta device, same result)
_NOT_COUNTED = {"norm_op": None, "norm_op_kwargs": None, "nonlin": None, "nonlin_kwargs": None,
                "dropout_op": None, "dropout_op_kwargs": None}


def forward_flops(network: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of one forward pass of ``network`` on a (B, C, *spatial) input, a multiply-add counting 2.

    The input is created on the network's device; on the meta device nothing is computed or allocated.
    """
    device = next(network.parameters()).device
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            network(torch.empty(tuple(input_shape), device=device))
    finally:
        network.train(was_training)
    return int(counter.get_total_flops())


#: narrowed widths of at least this many channels are rounded to a multiple of it: 8 fp32 lanes of AVX2, oneDNN's
#: blocked layouts and fp16 tensor-core tiles. Measured on the project's CPU (``scripts/benchmark_conv_kernels.py``,
#: docs/BENCHMARKS.md): a 3x3x3 convolution, forward + backward, runs at 40 GFLOP/s with 20 channels against 54 with
#: 24, 62 with 36 against 68 with 40; the equal-cost HPN's training step went from 1.41x to 1.2-1.4x nnU-Net's time.
WIDTH_MULTIPLE = 8


def round_width(width: float) -> int:
    """Channel count of a narrowed stage: the nearest multiple of :data:`WIDTH_MULTIPLE` from that many channels
    on, else the nearest integer (>= 1)."""
    if width >= WIDTH_MULTIPLE:
        return WIDTH_MULTIPLE * math.floor(width / WIDTH_MULTIPLE + 0.5)
    return max(1, math.floor(width + 0.5))


def narrowed_features(features_per_stage: Sequence[int], factor: float) -> list[int]:
    """``features_per_stage`` scaled by ``factor`` and rounded with :func:`round_width`."""
    return [round_width(f * factor) for f in features_per_stage]


def plans_network_flops(class_name: str, arch_kwargs: dict, req_import: Sequence[str], input_channels: int,
                        output_channels: int, patch_size: Sequence[int]) -> int:
    """Forward FLOPs (batch 1, ``patch_size``, deep supervision off) of the network the plans entry describes,
    counted on the meta device."""
    kwargs = dict(arch_kwargs, **_NOT_COUNTED)
    with torch.device("meta"):
        network = get_network_from_plans(class_name, kwargs, req_import, input_channels, output_channels,
                                         allow_init=False, deep_supervision=False)
        return forward_flops(network, (1, input_channels, *patch_size))


@lru_cache(maxsize=64)
def _equal_cost_widths(class_name: str, arch_kwargs_json: str, req_import: tuple[str, ...], input_channels: int,
                       output_channels: int, patch_size: tuple[int, ...], reference_flops: int,
                       target_ratio: float) -> tuple[tuple[int, ...], float, float]:
    """The search behind :func:`equal_cost_features` (cached: nnU-Net builds the network more than once)."""
    arch_kwargs = json.loads(arch_kwargs_json)
    full = list(arch_kwargs["features_per_stage"])

    def ratio_at(step: int) -> tuple[list[int], float]:
        features = narrowed_features(full, step / WIDTH_GRID_STEPS)
        flops = plans_network_flops(class_name, dict(arch_kwargs, features_per_stage=features), req_import,
                                    input_channels, output_channels, patch_size)
        return features, flops / reference_flops

    # FLOPs grow about quadratically with the width (and never fall when it grows): start at that guess, then
    # walk the grid to the largest factor within the budget
    _, full_ratio = ratio_at(WIDTH_GRID_STEPS)
    if full_ratio <= target_ratio:
        return tuple(full), 1.0, full_ratio
    lowest = math.ceil(WIDTH_GRID_MIN * WIDTH_GRID_STEPS)
    step = max(lowest, min(WIDTH_GRID_STEPS - 1, round(math.sqrt(target_ratio / full_ratio) * WIDTH_GRID_STEPS)))
    features, ratio = ratio_at(step)
    while ratio > target_ratio:
        if step == lowest:
            raise ValueError(f"no width factor >= {WIDTH_GRID_MIN} brings the HPN within {target_ratio}x the FLOPs "
                             f"of the early-fusion network for features {full}")
        step -= 1
        features, ratio = ratio_at(step)
    while step + 1 < WIDTH_GRID_STEPS:
        wider, wider_ratio = ratio_at(step + 1)
        if wider_ratio > target_ratio:
            break
        step, features, ratio = step + 1, wider, wider_ratio
    return tuple(features), step / WIDTH_GRID_STEPS, ratio


def equal_cost_features(class_name: str, arch_kwargs: dict, req_import: Sequence[str], input_channels: int,
                        output_channels: int, patch_size: Sequence[int], reference_flops: int,
                        target_ratio: float = 1.0) -> tuple[list[int], float, float]:
    """Largest narrowing of ``arch_kwargs['features_per_stage']`` (factor on a grid of 1/64 steps) whose network
    has forward FLOPs (batch 1, ``patch_size``) <= ``target_ratio`` x ``reference_flops``.

    Returns (features_per_stage, width factor, achieved FLOP ratio).
    """
    features, factor, ratio = _equal_cost_widths(
        class_name, json.dumps(arch_kwargs, sort_keys=True), tuple(req_import), int(input_channels),
        int(output_channels), tuple(int(p) for p in patch_size), int(reference_flops), float(target_ratio))
    return list(features), factor, ratio


def early_fusion_flops(configuration_manager: ConfigurationManager, input_channels: int,
                       output_channels: int) -> int:
    """Forward FLOPs (batch 1, the plans' patch) of nnU-Net's own network that EarlyFusionTrainer builds from these
    plans, with every phase as an input channel (built with its norms: its initialisation needs them)."""
    with torch.device("meta"):
        network = EarlyFusionTrainer.build_network_architecture(
            None, configuration_manager, input_channels, output_channels, enable_deep_supervision=False)
        return forward_flops(network, (1, input_channels, *configuration_manager.patch_size))


class HPNTrainer_equalcost(HPNTrainer):
    """HPN whose two paths are narrowed so that its forward FLOPs are <= ``target_flop_ratio`` x nnU-Net's
    early-fusion network at the same plans (see the module docstring). Hyper-connections and pairing loss as in
    HPNTrainer; the log states the chosen widths."""

    #: FLOP budget relative to the early-fusion network at the same plans (the issue's bound is 1.1)
    target_flop_ratio: float = 1.0

    @classmethod
    def equal_cost_network_kwargs(cls, configuration_manager: ConfigurationManager, num_input_channels: int,
                                  num_output_channels: int) -> tuple[dict, float, float]:
        """HPNTrainer's ``network_kwargs`` with narrowed ``features_per_stage``; also the width factor and the
        FLOP ratio to the early-fusion network."""
        kwargs = cls.network_kwargs(configuration_manager)
        reference = early_fusion_flops(configuration_manager, num_input_channels, num_output_channels)
        features, factor, ratio = equal_cost_features(
            configuration_manager.network_arch_class_name, kwargs,
            configuration_manager.network_arch_init_kwargs_req_import, num_input_channels, num_output_channels,
            configuration_manager.patch_size, reference, cls.target_flop_ratio)
        kwargs["features_per_stage"] = features
        return kwargs, factor, ratio

    @classmethod
    def network_class_and_kwargs(cls, configuration_manager: ConfigurationManager, num_input_channels: int,
                                 num_output_channels: int) -> tuple[str, dict]:
        kwargs, _, _ = cls.equal_cost_network_kwargs(configuration_manager, num_input_channels, num_output_channels)
        return configuration_manager.network_arch_class_name, kwargs

    def on_train_start(self) -> None:
        super().on_train_start()
        kwargs, factor, ratio = self.equal_cost_network_kwargs(
            self.configuration_manager, self.num_input_channels, self.label_manager.num_segmentation_heads)
        full = self.configuration_manager.network_arch_init_kwargs["features_per_stage"]
        self.print_to_log_file(
            f"equal cost: features per stage {full} x {factor:.3f} -> {kwargs['features_per_stage']}, forward FLOPs "
            f"{ratio:.3f} x the early-fusion network (target <= {self.target_flop_ratio})")



class HPNTrainer_equalcost_demo(HPNTrainer_equalcost, HPNTrainer_demo):
    """The demo's budget and settings (HPNTrainer_demo) with the equal-cost widths: for the phantom comparison in
    docs/RESULTS.md."""
