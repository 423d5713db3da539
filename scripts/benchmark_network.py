#!/usr/bin/env python
"""Superseded by ``scripts/benchmark.py``; a thin wrapper around it that keeps this script's old command line and
table.

``scripts/benchmark.py`` measures more (training step with nnU-Net's loss and optimizer, peak memory, whole-case
inference, HyperNet and equal-cost rows, nnU-Net's CUDA settings) and writes the project's benchmark sections. This
wrapper reports, for nnU-Net's PlainConvUNet on both phases as 2 channels and HPN with both backbones at nnU-Net's
default widths (32 .. 320 features): parameters, forward FLOPs, the feature-map size nnU-Net's planner uses as a
memory proxy, and the median training-step time, with ratios to PlainConvUNet, from ``benchmark.py``'s functions.

    python scripts/benchmark_network.py                       # 64^3, batch 2, 3 repeats
    python scripts/benchmark_network.py --patch 16 --batch 1 --repeats 1 --warmup 0   # smoke test
    python scripts/benchmark_network.py --append-to FILE.md
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import platform
import shlex
import statistics
import sys
from pathlib import Path
from typing import Sequence

import torch

_SPEC = importlib.util.spec_from_file_location("hpn_benchmark", Path(__file__).resolve().with_name("benchmark.py"))
bench = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = bench  # dataclasses look their module up there
_SPEC.loader.exec_module(bench)

BASE_FEATURES, MAX_FEATURES_3D = 32, 320  # nnU-Net's defaults
ROWS = {"nnunet": "PlainConvUNet (2-ch early fusion)",
        "hpn_unet": "HyperPairedUNet unet, 6 connections",
        "hpn_resdsn": "HyperPairedUNet resdsn, 6 connections"}


def format_table(rows: list[tuple[str, int, int, int, float]]) -> str:
    """Markdown table of (name, parameters, FLOPs, feature-map size, seconds); ratios to the first row."""
    _, base_params, base_flops, base_maps, base_seconds = rows[0]
    lines = [
        "| model | parameters (M) | x | forward GFLOPs | x | conv feature-map size (M) | x | training step s (median)"
        " | x |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, params, flops, maps, seconds in rows:
        lines.append(f"| {name} | {params / 1e6:.2f} | {params / base_params:.2f} | {flops / 1e9:.1f} "
                     f"| {flops / base_flops:.2f} | {maps / 1e6:.1f} | {maps / base_maps:.2f} | {seconds:.3f} "
                     f"| {seconds / base_seconds:.2f} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patch", type=int, nargs="+", default=[64],
                        help="patch edge (isotropic) or three edges z y x (default 64)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--classes", type=int, default=4, help="bg, pancreas, PDAC, duct")
    parser.add_argument("--repeats", type=int, default=3, help="timed training steps (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before timing")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (cuda if available)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: usable CPUs)")
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
    threads = args.threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    torch.set_num_threads(max(1, threads))
    torch.manual_seed(0)
    configurations = {backbone: bench.plans_configuration(args.patch, BASE_FEATURES, MAX_FEATURES_3D, args.batch,
                                                          backbone) for backbone in ("unet", "resdsn")}
    specs = [bench.MODELS[key] for key in ROWS]
    counts = {s.key: bench.count_forward_flops(s, configurations[s.backbone], args.classes) for s in specs}
    amp = "fp16" if device.type == "cuda" else "off"  # nnU-Net's
    setups = {s.key: bench.make_training_setup(s, configurations[s.backbone], args.classes, device, amp, False, False)
              for s in specs}
    batches = {b: bench.synthetic_batch(c, args.classes, device, False) for b, c in configurations.items()}
    times = bench.measure_training(setups, batches, args.warmup, args.repeats, device)
    rows = [(ROWS[s.key], counts[s.key][1], counts[s.key][0], counts[s.key][2], statistics.median(times[s.key]))
            for s in specs]
    table = format_table(rows)
    arch = configurations["unet"].network_arch_init_kwargs
    settings = (
        f"patch {'x'.join(map(str, configurations['unet'].patch_size))}, batch {args.batch}, {args.classes} classes, "
        f"{arch['n_stages']} stages, features {arch['features_per_stage']}, kernels 3, 2 convs per stage (resdsn: 1 "
        f"residual block per encoder stage), InstanceNorm3d, LeakyReLU, deep supervision; training step = "
        f"scripts/benchmark.py's (nnU-Net's loss, + pairing loss for HPN, SGD); median of {args.repeats} interleaved "
        f"runs after {args.warmup} warm-up per model")
    print(settings)
    print(table)
    if args.append_to is not None:
        command = "python scripts/benchmark_network.py " + " ".join(
            shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
        section = "\n".join([
            "",
            f"## {datetime.date.today().isoformat()}: {device.type.upper()} (scripts/benchmark_network.py)",
            "",
            f"- device: {bench.describe_device(device)}",
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
