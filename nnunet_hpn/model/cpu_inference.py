"""Batch-1 CPU inference through oneDNN's convolution kernels.

nnU-Net's sliding-window predictor feeds the network one patch at a time (batch 1). For a float32 CPU
convolution PyTorch only picks oneDNN (mkldnn) when the batch is larger than 1 or ``N * C * D * H > 20480`` (a
heuristic tuned on 2D convolutions, pytorch/pytorch#40610); otherwise it falls back to its im2col
``slow_conv3d``, many times slower for 3D convolutions with few channels (measured by
``scripts/benchmark_conv_kernels.py``, numbers in docs/BENCHMARKS.md). With its paths narrowed to the early-fusion
network's cost (``HPNTrainer_equalcost``) every HPN path is narrower than that network's stages, so this fallback
would cost HPN more than nnU-Net.

:class:`OneDNNConv3d` is ``nn.Conv3d`` with one override: a batch-1, float32, CPU call without autograd goes to
oneDNN directly (same weights, same result up to float rounding). Training (autograd on), GPUs, other dtypes and
other batch sizes take ``nn.Conv3d``'s own path, so state dicts, checkpoints and CUDA behaviour are unchanged. Under
``torch.compile`` (``nnUNet_compile=t``) the shortcut steps aside: the direct oneDNN call cannot be traced with fake
tensors, and the compiler chooses the convolution kernels itself. ``torch.utils.flop_counter`` counts the direct
oneDNN call like any convolution.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import conv_flop_count, register_flop_formula


@register_flop_formula(torch.ops.aten.mkldnn_convolution)
def _onednn_convolution_flops(x_shape: list[int], w_shape: list[int], *args, out_shape: list[int] | None = None,
                              **kwargs) -> int:
    """FLOPs of ``aten.mkldnn_convolution`` (input, weight, bias, padding, stride, dilation, groups): those of the
    same forward convolution, so FLOP counts do not depend on which kernel ran."""
    return conv_flop_count(x_shape, w_shape, out_shape, transposed=False)


def _onednn_applies(conv: nn.Conv3d, x: Tensor) -> bool:
    """True for the case PyTorch's heuristic sends to ``slow_conv3d``: CPU, float32, no autograd, batch 1,
    zero padding given as numbers, a kernel larger than 1x1x1 in-plane; never while ``torch.compile`` traces."""
    return (not torch.compiler.is_compiling() and x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 5 and x.shape[0] == 1
            and not torch.is_grad_enabled() and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str) and conv.kernel_size[-2:] != (1, 1)
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)


class OneDNNConv3d(nn.Conv3d):
    """``nn.Conv3d`` whose batch-1 float32 CPU inference runs oneDNN's kernel: (1, C_in, D, H, W) ->
    (1, C_out, D', H', W'); everything else is ``nn.Conv3d``'s."""

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if _onednn_applies(self, input):
            return torch.ops.aten.mkldnn_convolution(input, weight, bias, list(self.padding), list(self.stride),
                                                     list(self.dilation), self.groups)
        return super()._conv_forward(input, weight, bias)


def use_onednn_for_cpu_inference(network: nn.Module) -> nn.Module:
    """Turns every plain ``nn.Conv3d`` of ``network`` into :class:`OneDNNConv3d` in place (same parameters and
    state-dict keys) and returns the network."""
    for module in network.modules():
        if type(module) is nn.Conv3d:
            module.__class__ = OneDNNConv3d
    return network
