#!/usr/bin/env python
"""Cost of the Hyper-Pairing Network against nnU-Net's PlainConvUNet at the same settings, in one run.

Builds HyperPairedUNet (backbones "unet" and "resdsn", all hyper-connections) and dynamic_network_architectures'
PlainConvUNet with 2 input channels (early fusion of both phases), with the topology nnU-Net plans for an isotropic
patch (64^3: 5 stages, features [32, 64, 128, 256, 320], strides [1, 2, 2, 2, 2], kernels 3, 2 convs per stage,
InstanceNorm3d, LeakyReLU, deep supervision on), and reports parameters, forward FLOPs (FlopCounterMode), the
conv feature-map size nnU-Net's planner uses as a memory proxy, and the median forward+backward time of a
training step (HPN: segmentation outputs + pairing loss), with ratios against PlainConvUNet.

    python scripts/benchmark_network.py                       # 64^3, batch 2, 3 repeats
    python scripts/benchmark_network.py --patch 16 --batch 1 --repeats 1 --warmup 0   # smoke test
    python scripts/benchmark_network.py --append-to docs/BENCHMARKS.md
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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from nnunet_hpn.hyper_connections import HyperPairedUNet  # noqa: E402
from nnunet_hpn.pairing_loss import pairing_loss  # noqa: E402

MIN_FEATURE_MAP_EDGE = 4  # nnU-Net's UNet_featuremap_min_edge_length
BASE_FEATURES = 32
MAX_FEATURES_3D = 320
N_INPUT_CHANNELS = 2  # arterial + venous


@dataclass
class BenchmarkRow:
    """One model's measurements; times in seconds, FLOPs for one forward pass of the whole batch."""

    name: str
    parameters: int
    forward_flops: int
    feature_map_size: int
    step_seconds: float


def plan_isotropic_topology(patch_size: Sequence[int]) -> dict:
    """nnU-Net-like architecture kwargs for a 3D patch: halve each axis until MIN_FEATURE_MAP_EDGE, 2 convs/stage."""
    pools_per_axis = [max(0, (edge // MIN_FEATURE_MAP_EDGE).bit_length() - 1) for edge in patch_size]
    n_stages = 1 + max(pools_per_axis)
    strides = [[1, 1, 1]] + [
        [2 if pools > s else 1 for pools in pools_per_axis] for s in range(n_stages - 1)
    ]
    return dict(
        n_stages=n_stages,
        features_per_stage=[min(BASE_FEATURES * 2**s, MAX_FEATURES_3D) for s in range(n_stages)],
        conv_op=nn.Conv3d,
        kernel_sizes=[[3, 3, 3]] * n_stages,
        strides=strides,
        n_conv_per_stage=[2] * n_stages,
        n_conv_per_stage_decoder=[2] * (n_stages - 1),
        conv_bias=True,
        norm_op=nn.InstanceNorm3d,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        dropout_op=None,
        dropout_op_kwargs=None,
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
        deep_supervision=True,
    )


def build_models(n_classes: int, arch_kwargs: dict) -> dict[str, nn.Module]:
    """The compared networks, initialised like nnU-Net does (``net.apply(net.initialize)``)."""
    models: dict[str, nn.Module] = {
        "PlainConvUNet (2-ch early fusion)": PlainConvUNet(
            input_channels=N_INPUT_CHANNELS, num_classes=n_classes, **arch_kwargs),
        "HyperPairedUNet unet, 6 connections": HyperPairedUNet(
            input_channels=N_INPUT_CHANNELS, num_classes=n_classes, backbone="unet", **arch_kwargs),
        "HyperPairedUNet resdsn, 6 connections": HyperPairedUNet(
            input_channels=N_INPUT_CHANNELS, num_classes=n_classes, backbone="resdsn", **arch_kwargs),
    }
    for model in models.values():
        model.apply(model.initialize)
    return models


def _training_loss(model: nn.Module, x: Tensor) -> Tensor:
    """Stand-in training objective: mean of every output (+ pairing loss for HPN), so backward touches all."""
    outputs = model(x)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    loss = sum(o.float().mean() for o in outputs)
    if isinstance(model, HyperPairedUNet):
        loss = loss + 0.5 * pairing_loss(model.pop_pairing_features())
    return loss


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_forward_flops(model: nn.Module, x: Tensor) -> int:
    """FLOPs of one forward pass (FlopCounterMode counts a multiply-add as 2)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    if isinstance(model, HyperPairedUNet):
        model.pop_pairing_features()
    return int(counter.get_total_flops())


def time_training_step(model: nn.Module, x: Tensor, clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds of one forward + backward."""
    model.zero_grad(set_to_none=True)
    _synchronise(x.device)
    start = clock()
    _training_loss(model, x).backward()
    _synchronise(x.device)
    elapsed = clock() - start
    model.zero_grad(set_to_none=True)
    return elapsed


def measure(models: dict[str, nn.Module], patch_size: Sequence[int], batch: int, repeats: int, warmup: int,
            device: torch.device) -> list[BenchmarkRow]:
    """Measure every model on the same random batch (B, 2, *patch_size).

    Timed runs are interleaved (model 1, 2, 3, 1, 2, 3, ...) so that load from other processes on a shared
    machine hits every model alike; the median per model is reported.
    """
    x = torch.randn((batch, N_INPUT_CHANNELS, *patch_size), generator=torch.Generator().manual_seed(0)).to(device)
    for model in models.values():
        model.to(device).train()
    flops = {name: count_forward_flops(model, x) for name, model in models.items()}
    for _ in range(warmup):
        for model in models.values():
            time_training_step(model, x)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            times[name].append(time_training_step(model, x))
    return [
        BenchmarkRow(
            name=name,
            parameters=sum(p.numel() for p in model.parameters()),
            forward_flops=flops[name],
            feature_map_size=int(model.compute_conv_feature_map_size(list(patch_size))),
            step_seconds=statistics.median(times[name]),
        )
        for name, model in models.items()
    ]


def format_table(rows: list[BenchmarkRow]) -> str:
    """Markdown table; the first row is the baseline the ratios refer to."""
    base = rows[0]
    lines = [
        "| model | parameters (M) | x | forward GFLOPs | x | conv feature-map size (M) | x | fwd+bwd s (median) | x |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.name} | {row.parameters / 1e6:.2f} | {row.parameters / base.parameters:.2f} "
            f"| {row.forward_flops / 1e9:.1f} | {row.forward_flops / base.forward_flops:.2f} "
            f"| {row.feature_map_size / 1e6:.1f} | {row.feature_map_size / base.feature_map_size:.2f} "
            f"| {row.step_seconds:.3f} | {row.step_seconds / base.step_seconds:.2f} |"
        )
    return "\n".join(lines)


def describe_device(device: torch.device) -> str:
    """CPU model (from /proc/cpuinfo) and thread count, or the CUDA device name."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    cpu_model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ""
    if hasattr(os, "getloadavg"):
        load = ", load average {:.1f} / {:.1f} / {:.1f} (1 / 5 / 15 min) at the end".format(*os.getloadavg())
    return f"CPU {cpu_model}, {torch.get_num_threads()} torch threads ({os.cpu_count()} logical CPUs){load}"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patch", type=int, nargs="+", default=[64],
                        help="patch edge (isotropic) or three edges z y x (default 64)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--classes", type=int, default=4, help="bg, pancreas, PDAC, duct")
    parser.add_argument("--repeats", type=int, default=3, help="timed forward+backward runs (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (cuda if available)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: the CPUs this process may use)")
    parser.add_argument("--append-to", type=Path, default=None, help="markdown file to append a results section to")
    args = parser.parse_args(argv)
    if len(args.patch) == 1:
        args.patch = args.patch * 3
    if len(args.patch) != 3:
        parser.error("--patch takes one edge or three edges")
    if args.repeats < 1 or args.warmup < 0 or args.batch < 1:
        parser.error("need --repeats >= 1, --warmup >= 0, --batch >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> str:
    """Run the benchmark, print (and optionally append) the markdown table, and return it."""
    args = parse_args(argv)
    device_name = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    device = torch.device(device_name)
    if args.threads is not None:
        threads = args.threads
    elif hasattr(os, "sched_getaffinity"):
        threads = len(os.sched_getaffinity(0))
    else:
        threads = os.cpu_count() or 1
    torch.set_num_threads(max(1, threads))
    torch.manual_seed(0)

    arch_kwargs = plan_isotropic_topology(args.patch)
    models = build_models(args.classes, arch_kwargs)
    rows = measure(models, args.patch, args.batch, args.repeats, args.warmup, device)
    table = format_table(rows)
    settings = (
        f"patch {'x'.join(map(str, args.patch))}, batch {args.batch}, {args.classes} classes, "
        f"{arch_kwargs['n_stages']} stages, features {arch_kwargs['features_per_stage']}, "
        f"strides {[s[0] if len(set(s)) == 1 else s for s in arch_kwargs['strides']]}, kernels 3, 2 convs per "
        f"stage (resdsn: 2 residual blocks per stage), InstanceNorm3d, LeakyReLU, deep supervision on; "
        f"timing: median of {args.repeats} interleaved runs after {args.warmup} warm-up per model"
    )
    print(settings)
    print(table)
    if args.append_to is not None:
        command = "python scripts/benchmark_network.py " + " ".join(
            shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
        section = "\n".join([
            "",
            f"## {datetime.date.today().isoformat()}: {device.type.upper()}",
            "",
            f"- device: {describe_device(device)}",
            f"- torch {torch.__version__}, Python {platform.python_version()}",
            f"- command: `{command.strip()}`",
            f"- settings: {settings}",
            "",
            table,
            "",
        ])
        with open(args.append_to, "a", encoding="utf-8") as handle:
            handle.write(section)
    return table


if __name__ == "__main__":
    main()
