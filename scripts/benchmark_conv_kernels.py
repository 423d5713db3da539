#!/usr/bin/env python
"""Kernel-level measurements behind the equal-cost HPN's speed: how fast the convolutions of narrow paths run.

The equal-cost HPN (``HPNTrainer_equalcost``) has about nnU-Net's FLOPs but spends them in two paths of roughly
half nnU-Net's width, and narrow 3D convolutions run at fewer FLOP/s. This script measures, each as the median
wall time of forward + backward (sum of the output as the loss) after one warm-up:

1. ``widths``: one 3x3x3 convolution (C -> C channels, batch 2) per width, in PyTorch's default (contiguous) memory
   format and in ``channels_last_3d``; GFLOP/s from ``torch.utils.flop_counter`` (forward + backward).
2. ``grouped``: the two paths' convolutions as two ``Conv3d`` (what HPN runs) against one ``Conv3d(groups=2)`` on
   the concatenated paths (same FLOPs).
3. ``inference``: a batch-1 forward without autograd (what nnU-Net's sliding-window predictor runs) of the same
   convolutions with PyTorch's own kernel choice (it names the kernel) and through oneDNN
   (:class:`nnunet_hpn.model.cpu_inference.OneDNNConv3d`, what HPN's trainers build).
4. ``norm``: one nnU-Net stage (2 x conv, norm, LeakyReLU) with ``InstanceNorm3d(affine)`` (the plans' norm) against
   ``GroupNorm(C, C)`` (the same normalisation), in both memory formats; whether the output stays channels-last.

    python scripts/benchmark_conv_kernels.py                          # the sizes of docs/BENCHMARKS.md
    python scripts/benchmark_conv_kernels.py --append-to docs/BENCHMARKS.md
    python scripts/benchmark_conv_kernels.py --scale 0.25 --repeats 1 # smoke test
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from nnunet_hpn.model.cpu_inference import use_onednn_for_cpu_inference

#: (spatial edge, widths): the equal-cost and nnU-Net widths of the benchmark plans (patch 48^3, features
#: [16, 32, 64, 128]) at the resolution each stage runs at, plus the old multiple-of-4 widths.
WIDTH_GRID: tuple[tuple[int, tuple[int, ...]], ...] = (
    (48, (8, 9, 16, 20, 24)), (24, (32, 36, 40, 64)), (12, (76, 80, 88, 128)))
#: (spatial edge, width of one path) for the grouped-convolution and norm comparisons.
PATH_GRID: tuple[tuple[int, int], ...] = ((48, 8), (24, 24), (12, 40))


def median_seconds(step: Callable[[], None], repeats: int) -> float:
    """Median wall time of ``step`` over ``repeats`` calls after one warm-up call."""
    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def forward_backward(module: nn.Module, inputs: Sequence[torch.Tensor]) -> Callable[[], None]:
    """A closure running ``module(*inputs).sum().backward()`` (gradients accumulate; irrelevant for timing)."""
    def step() -> None:
        module(*inputs).sum().backward()
    return step


def counted_flops(step: Callable[[], None]) -> int:
    """FLOPs of one call of ``step`` (forward + backward) counted by ``torch.utils.flop_counter``."""
    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last_3d if channels_last else torch.contiguous_format


def volume(channels: int, edge: int, channels_last: bool, batch: int = 2) -> torch.Tensor:
    """A random (batch, channels, edge, edge, edge) input that requires grad, in the given memory format."""
    tensor = torch.randn(batch, channels, edge, edge, edge).contiguous(memory_format=memory_format(channels_last))
    return tensor.requires_grad_()


def width_rows(scale: float, repeats: int) -> list[str]:
    """Markdown rows: edge, width, ms and GFLOP/s contiguous, ms and GFLOP/s channels-last."""
    rows = []
    for edge, widths in WIDTH_GRID:
        edge = max(4, round(edge * scale))
        for width in widths:
            cells = [f"{edge}³", str(width)]
            for channels_last in (False, True):
                conv = nn.Conv3d(width, width, 3, padding=1).to(memory_format=memory_format(channels_last))
                step = forward_backward(conv, [volume(width, edge, channels_last)])
                seconds = median_seconds(step, repeats)
                cells += [f"{seconds * 1e3:.1f}", f"{counted_flops(step) / seconds / 1e9:.1f}"]
            rows.append("| " + " | ".join(cells) + " |")
    return rows


def pytorch_kernel(conv: nn.Module, x: torch.Tensor) -> str:
    """Name of the convolution kernel PyTorch runs for ``conv(x)`` (without autograd)."""
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        conv(x)
    names = {e.key for e in prof.key_averages()}
    for kernel in ("aten::mkldnn_convolution", "aten::slow_conv3d_forward"):
        if kernel in names:
            return kernel.removeprefix("aten::")
    return "other"


def inference_rows(scale: float, repeats: int) -> list[str]:
    """Markdown rows: edge, width, PyTorch's kernel and ms, oneDNN ms, ratio (batch 1, no autograd)."""
    rows = []
    for edge, widths in WIDTH_GRID:
        edge = max(4, round(edge * scale))
        for width in widths:
            conv = nn.Conv3d(width, width, 3, padding=1)
            onednn = use_onednn_for_cpu_inference(nn.Conv3d(width, width, 3, padding=1))
            onednn.load_state_dict(conv.state_dict())
            x = torch.randn(1, width, edge, edge, edge)
            with torch.no_grad():
                t_pytorch = median_seconds(lambda: conv(x), repeats)
                t_onednn = median_seconds(lambda: onednn(x), repeats)
            rows.append(f"| {edge}³ | {width} | {pytorch_kernel(conv, x)} | {t_pytorch * 1e3:.1f} | "
                        f"{t_onednn * 1e3:.1f} | {t_pytorch / t_onednn:.1f} |")
    return rows


class TwoPathConvs(nn.Module):
    """Two paths' convolutions, one per path: (B, C, D, H, W) x 2 -> (B, C, D, H, W) x 2, summed for the loss."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.path_a = nn.Conv3d(channels, channels, 3, padding=1)
        self.path_b = nn.Conv3d(channels, channels, 3, padding=1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.path_a(a).sum() + self.path_b(b).sum()


def grouped_rows(scale: float, repeats: int) -> list[str]:
    """Markdown rows: format, edge, path width, ms for two convolutions, ms for one grouped convolution."""
    rows = []
    for channels_last in (False, True):
        for edge, width in PATH_GRID:
            edge = max(4, round(edge * scale))
            fmt = memory_format(channels_last)
            two = TwoPathConvs(width).to(memory_format=fmt)
            grouped = nn.Conv3d(2 * width, 2 * width, 3, padding=1, groups=2).to(memory_format=fmt)
            t_two = median_seconds(forward_backward(two, [volume(width, edge, channels_last),
                                                          volume(width, edge, channels_last)]), repeats)
            t_grouped = median_seconds(forward_backward(grouped, [volume(2 * width, edge, channels_last)]), repeats)
            rows.append(f"| {'channels_last_3d' if channels_last else 'contiguous'} | {edge}³ | {width} | "
                        f"{t_two * 1e3:.1f} | {t_grouped * 1e3:.1f} | {t_grouped / t_two:.2f} |")
    return rows


def stage(width: int, norm: Callable[[int], nn.Module]) -> nn.Sequential:
    """One encoder stage as nnU-Net plans it: (conv 3x3x3, norm, LeakyReLU) x 2, C -> C channels."""
    return nn.Sequential(nn.Conv3d(width, width, 3, padding=1), norm(width), nn.LeakyReLU(inplace=True),
                         nn.Conv3d(width, width, 3, padding=1), norm(width), nn.LeakyReLU(inplace=True))


NORMS: dict[str, Callable[[int], nn.Module]] = {
    "InstanceNorm3d(affine)": lambda c: nn.InstanceNorm3d(c, eps=1e-5, affine=True),
    "GroupNorm(C, C)": lambda c: nn.GroupNorm(c, c, eps=1e-5),
}


def norm_rows(scale: float, repeats: int) -> list[str]:
    """Markdown rows: edge, width, norm, ms contiguous, ms channels-last, output still channels-last."""
    rows = []
    for edge, width in PATH_GRID:
        edge = max(4, round(edge * scale))
        for name, norm in NORMS.items():
            cells = [f"{edge}³", str(width), name]
            keeps = "–"
            for channels_last in (False, True):
                block = stage(width, norm).to(memory_format=memory_format(channels_last))
                x = volume(width, edge, channels_last)
                cells.append(f"{median_seconds(forward_backward(block, [x]), repeats) * 1e3:.1f}")
                if channels_last:
                    with torch.no_grad():
                        keeps = "yes" if block(x).is_contiguous(memory_format=torch.channels_last_3d) else "no"
            rows.append("| " + " | ".join(cells + [keeps]) + " |")
    return rows


def report(args: argparse.Namespace) -> str:
    """The markdown section: heading, settings and the four tables."""
    started = time.perf_counter()
    widths, grouped, norms = (width_rows(args.scale, args.repeats), grouped_rows(args.scale, args.repeats),
                              norm_rows(args.scale, args.repeats))
    inference = inference_rows(args.scale, args.repeats)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    command = "python scripts/benchmark_conv_kernels.py " + shlex.join(sys.argv[1:])
    lines = [
        f"## {datetime.date.today().isoformat()}: convolution kernels, CPU", "",
        f"- device: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, load "
        f"average {load} (1 / 5 / 15 min) at the end; torch {torch.__version__}; run took "
        f"{(time.perf_counter() - started) / 60:.1f} min",
        f"- command: `{command.strip()}`",
        f"- forward + backward of the sum of the output, batch 2 (last table: forward only, batch 1), median of "
        f"{args.repeats} after one warm-up", "",
        "One 3x3x3 convolution, C -> C channels (GFLOP/s: forward + backward FLOPs from torch.utils.flop_counter):",
        "", "| grid | C | contiguous ms | GFLOP/s | channels_last_3d ms | GFLOP/s |", "|---|---:|---:|---:|---:|---:|",
        *widths, "",
        "The two paths' convolutions (C channels each) as two Conv3d against one Conv3d(groups=2) on the "
        "concatenated paths:", "",
        "| memory format | grid | C per path | two convolutions ms | one grouped ms | x |",
        "|---|---|---:|---:|---:|---:|", *grouped, "",
        "Batch-1 inference (forward without autograd, as nnU-Net's predictor runs it) of the same convolutions: "
        "PyTorch's own kernel choice against oneDNN called directly (`OneDNNConv3d`):", "",
        "| grid | C | PyTorch's kernel | PyTorch ms | oneDNN ms | speed-up |", "|---|---:|---|---:|---:|---:|",
        *inference, "",
        "One stage (conv, norm, LeakyReLU) x 2 with nnU-Net's InstanceNorm3d against GroupNorm(C, C):", "",
        "| grid | C | norm | contiguous ms | channels_last_3d ms | output stays channels-last |",
        "|---|---:|---|---:|---:|---|", *norms, ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (median)")
    parser.add_argument("--scale", type=float, default=1.0, help="scale the grid edges (0.25 for a smoke test)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--append-to", type=Path, default=None, help="append the section to this markdown file")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.scale <= 0:
        parser.error("--repeats must be >= 1 and --scale > 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    text = report(args)
    print(text)
    if args.append_to:
        with args.append_to.open("a", encoding="utf-8") as handle:
            handle.write("\n" + text)


if __name__ == "__main__":
    main()
