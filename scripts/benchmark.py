#!/usr/bin/env python
"""What HPN costs next to nnU-Net at the same plans, every ratio measured in one run (CPU or CUDA).

Every network is built by the trainer that trains it, from ONE plans entry (patch, batch, features per stage;
topology from nnU-Net's ``get_pool_and_conv_props``); the first row is the baseline:

* ``nnunet``: nnU-Net's PlainConvUNet on both phases as 2 input channels, as stock nnU-Net runs it;
* ``nnunet_onednn``: the same network as ``EarlyFusionTrainer`` builds it, with the batch-1 CPU inference through
  oneDNN that every HPN trainer uses (``nnunet_hpn.model.cpu_inference``; training and CUDA are unaffected);
* ``hpn_unet``: HPN, U-Net backbone (``HPNTrainer``: HyperPairedUNet, six hyper-connections, pairing loss 0.5);
* ``hypernet``: HyperNet (``HyperNetTrainer``: the same network, no pairing loss; inference = ``hpn_unet``'s);
* ``hpn_resdsn``: HPN, ResDSN backbone (HyperPairedResDSN, 1 residual block per encoder stage, as
  ``HPNResDSNPlanner`` plans it);
* ``hpn_equalcost``: ``HPNTrainer_equalcost`` (both paths narrowed to nnU-Net's FLOPs).

Per network: parameters; forward FLOPs of one training batch (``torch.utils.flop_counter``, multiply-add = 2);
nnU-Net's planner memory proxy (``compute_conv_feature_map_size``); training-step time (nnU-Net's ``train_step``:
forward + Dice/CE deep-supervision loss (+ pairing loss) + backward + gradient clipping + SGD step, with nnU-Net's
fp16 autocast + GradScaler and ``torch.compile`` on CUDA; median of steps interleaved over the networks after
warm-up); peak memory of 2 training steps (CUDA: ``torch.cuda.max_memory_allocated`` above what was allocated
before the network was built; CPU: peak RSS of a fresh process above its RSS before the network was built);
whole-case sliding-window inference time through ``nnUNetPredictor.predict_sliding_window_return_logits``, without
and with test-time mirroring. Time ratios are checked against the target time ratio <= 1.1 x FLOP ratio. Also the
pairing loss's share of the HPN step; on CUDA the host-device syncs per step; optionally grouped torch.profiler
times (``--profile``), the HPN planner's configurations for memory targets with their measured peak memory on CUDA
(``--planner-targets``), and the stages of ``nnunet-hpn demo`` (``--demo``, CPU, ~8 min on an idle machine).

    python scripts/benchmark.py --threads 1 --profile /tmp/prof --planner-targets 8 40   # the CPU run in the docs
    python scripts/benchmark.py --device cuda --planner-targets 8 40 --profile /tmp/prof  # GPU (CUDA defaults)
    python scripts/benchmark.py --patch 16 --features 4 16 --repeats 1 --warmup 0 --case 16 32 32 --no-doc  # smoke

The report is printed and appended to ``--doc`` (default docs/BENCHMARKS.md) unless ``--no-doc``.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.utilities.label_handling.label_handling import LabelManager
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from hpn_experiments.commands import nnunet_env
from nnunet_hpn.labels import PDAC_LABELS as LABELS
from nnunet_hpn.model.hyper_connections import all_hyper_connection_names
from nnunet_hpn.model.pairing_loss import pairing_loss
from nnunet_hpn.phases import PHASES
from nnunet_hpn.nnunet.trainers.equal_cost import HPNTrainer_equalcost
from nnunet_hpn.nnunet.trainers.hpn_trainer import (
    EarlyFusionTrainer, HPNTrainer, HyperNetTrainer, unwrap_network)

REPO_ROOT = Path(__file__).resolve().parents[1]
N_PHASES = len(PHASES)
TIME_TARGET = 1.1  # the issue: time ratio <= 1.1 x FLOP ratio
PAIRING_SHARE_TARGET = 0.05
UNET_CLASS = "nnunet_hpn.model.network.HyperPairedUNet"
RESDSN_CLASS = "nnunet_hpn.model.network.HyperPairedResDSN"
DEFAULT_DOC = REPO_ROOT / "docs" / "BENCHMARKS.md"
PROBE_PREFIX = "BENCHMARK_PROBE_RESULT "
OVERHEAD_KEY = "predictor_overhead"
#: The operation entries nnU-Net's 3D plans hold in ``arch_kwargs`` (3D convolution with bias, InstanceNorm, no
#: dropout, LeakyReLU), for building plans entries by hand; ``deepcopy`` before changing them.
NNUNET_3D_OPERATIONS: dict = {
    "conv_op": "torch.nn.modules.conv.Conv3d",
    "conv_bias": True,
    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
    "norm_op_kwargs": {"eps": 1e-05, "affine": True},
    "dropout_op": None,
    "dropout_op_kwargs": None,
    "nonlin": "torch.nn.LeakyReLU",
    "nonlin_kwargs": {"inplace": True},
}


@dataclass(frozen=True)
class ModelSpec:
    """One benchmarked network: the trainer that builds and trains it and the plans backbone it reads."""

    key: str
    label: str
    trainer: type
    backbone: str  # "unet" or "resdsn" plans
    inference_as: Optional[str] = None  # same network as another row: its inference times are reused


class StockEarlyFusionTrainer(EarlyFusionTrainer):
    """EarlyFusionTrainer's network exactly as stock nnU-Net runs it: PyTorch's own CPU convolution choice."""

    onednn_cpu_inference = False


MODELS: dict[str, ModelSpec] = {spec.key: spec for spec in (
    ModelSpec("nnunet", "nnU-Net PlainConvUNet, 2 channels", StockEarlyFusionTrainer, "unet"),
    ModelSpec("nnunet_onednn", "nnU-Net PlainConvUNet, 2 channels, oneDNN batch-1 CPU convolutions "
              "(EarlyFusionTrainer)", EarlyFusionTrainer, "unet"),
    ModelSpec("hpn_unet", "HPN, U-Net backbone", HPNTrainer, "unet"),
    ModelSpec("hypernet", "HyperNet, U-Net backbone (no pairing loss)", HyperNetTrainer, "unet", "hpn_unet"),
    ModelSpec("hpn_resdsn", "HPN, ResDSN backbone", HPNTrainer, "resdsn"),
    ModelSpec("hpn_equalcost", "HPN equal-cost (HPNTrainer_equalcost), U-Net", HPNTrainer_equalcost, "unet"),
)}
BASELINE = "nnunet"


# ----------------------------------------------------------------------------------------------------- plans, nets
def plans_configuration(patch_size: Sequence[int], base_features: int, max_features: int, batch_size: int,
                        backbone: str, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> ConfigurationManager:
    """An HPN plans entry (what HPNPlanner / HPNResDSNPlanner write) for ``patch_size``: nnU-Net's topology for that
    patch, features ``min(max, base * 2**stage)``, 2 convs per stage (ResDSN: 1 residual block per encoder stage),
    2 convs per decoder stage, InstanceNorm, LeakyReLU, all six hyper-connections."""
    _, strides, kernel_sizes, patch, _ = get_pool_and_conv_props(list(spacing), list(patch_size), 4, 999999)
    n_stages = len(strides)
    arch_kwargs = {
        "n_stages": n_stages,
        "features_per_stage": [min(max_features, base_features * 2 ** s) for s in range(n_stages)],
        "kernel_sizes": kernel_sizes,
        "strides": strides,
        "n_conv_per_stage": [1 if backbone == "resdsn" else 2] * n_stages,
        "n_conv_per_stage_decoder": [2] * (n_stages - 1),
        **deepcopy(NNUNET_3D_OPERATIONS),
        "path_channels": list(range(N_PHASES)),
        "hyper_connections": all_hyper_connection_names(N_PHASES),
    }
    return ConfigurationManager({
        "patch_size": [int(p) for p in patch],
        "batch_size": int(batch_size),
        "batch_dice": False,
        "architecture": {"network_class_name": RESDSN_CLASS if backbone == "resdsn" else UNET_CLASS,
                         "arch_kwargs": arch_kwargs,
                         "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
    })


def build_network(spec: ModelSpec, configuration: ConfigurationManager, n_classes: int,
                  deep_supervision: bool = True) -> nn.Module:
    """The network ``spec.trainer`` trains on these plans (weights initialised as nnU-Net does)."""
    return spec.trainer.build_network_architecture(None, configuration, N_PHASES, n_classes,
                                                   enable_deep_supervision=deep_supervision)


def deep_supervision_scales(configuration: ConfigurationManager) -> list[list[float]]:
    """The scales of nnU-Net's deep-supervision targets for this plans entry (the trainer's own method)."""
    return loss_trainer(HPNTrainer, configuration, None, torch.device("cpu"))._get_deep_supervision_scales()


def loss_trainer(trainer_class: type, configuration: ConfigurationManager, network: Optional[nn.Module],
                 device: torch.device) -> HPNTrainer:
    """A trainer object holding only what ``_build_loss`` and ``_get_deep_supervision_scales`` read (plans entry,
    labels, network, device): the benchmark's loss is the trainer's own, without a dataset on disk."""
    trainer = object.__new__(trainer_class)
    trainer.configuration_manager = configuration
    trainer.label_manager = LabelManager(LABELS, None)
    trainer.is_ddp = False
    trainer.enable_deep_supervision = True
    trainer.device = device
    trainer.network = network
    return trainer


def build_loss(spec: ModelSpec, configuration: ConfigurationManager, network: nn.Module,
               compile_loss: bool) -> nn.Module:
    """``spec.trainer``'s own ``_build_loss``: nnU-Net's Dice + CE with deep supervision (+ HPN's pairing term);
    ``compile_loss``: the Dice term compiled as nnU-Net does on CUDA (``nnUNet_compile``)."""
    device = next(network.parameters()).device
    previous = os.environ.get("nnUNet_compile")
    os.environ["nnUNet_compile"] = "t" if compile_loss and device.type == "cuda" else "f"  # nnU-Net: CUDA only
    try:
        return loss_trainer(spec.trainer, configuration, network, device)._build_loss()
    finally:
        if previous is None:
            os.environ.pop("nnUNet_compile")
        else:
            os.environ["nnUNet_compile"] = previous


def synthetic_batch(configuration: ConfigurationManager, n_classes: int, device: torch.device,
                    channels_last: bool, seed: int = 0) -> tuple[Tensor, list[Tensor]]:
    """(B, 2, *patch) normal data and random labels at every deep-supervision scale (nearest, like nnU-Net)."""
    generator = torch.Generator().manual_seed(seed)
    shape = (configuration.batch_size, N_PHASES, *configuration.patch_size)
    data = torch.randn(shape, generator=generator)
    labels = torch.randint(0, n_classes, (shape[0], 1, *shape[2:]), generator=generator).float()
    targets = []
    for scale in deep_supervision_scales(configuration):
        step = [round(1 / s) for s in scale]
        targets.append(labels[:, :, ::step[0], ::step[1], ::step[2]].contiguous().to(device))
    data = data.to(device)
    if channels_last:
        data = data.contiguous(memory_format=torch.channels_last_3d)
    return data, targets


@dataclass
class TrainingSetup:
    """Everything nnUNetTrainer.train_step touches, for one network."""

    spec: ModelSpec
    network: nn.Module  # possibly torch.compile'd
    loss: nn.Module
    optimizer: torch.optim.Optimizer
    grad_scaler: Optional[torch.amp.GradScaler]
    amp_dtype: Optional[torch.dtype]
    device: torch.device

    def step(self, data: Tensor, targets: list[Tensor]) -> Tensor:
        """nnUNetTrainer.train_step without its final ``loss.cpu()`` (a host sync for logging): the loss stays on the
        device."""
        self.optimizer.zero_grad(set_to_none=True)
        autocast = (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
                    else contextlib.nullcontext())
        with autocast:
            output = self.network(data)
            loss = self.loss(output, targets)
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.optimizer.step()
        return loss.detach()


def make_training_setup(spec: ModelSpec, configuration: ConfigurationManager, n_classes: int, device: torch.device,
                        amp: str, compile_network: bool, channels_last: bool) -> TrainingSetup:
    """Network, loss, SGD (nnU-Net's settings), GradScaler (fp16 on CUDA) for one row."""
    network = build_network(spec, configuration, n_classes).to(device)
    if channels_last:
        network = network.to(memory_format=torch.channels_last_3d)
    network.train()
    trained = torch.compile(network) if compile_network else network
    loss = build_loss(spec, configuration, network, compile_network)
    optimizer = torch.optim.SGD(network.parameters(), 1e-2, weight_decay=3e-5, momentum=0.99, nesterov=True)
    amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "off": None}[amp]
    scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None
    return TrainingSetup(spec, trained, loss, optimizer, scaler, amp_dtype, device)


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of ``function()``, device work included."""
    synchronise(device)
    start = time.perf_counter()
    function()
    synchronise(device)
    return time.perf_counter() - start


def count_forward_flops(spec: ModelSpec, configuration: ConfigurationManager,
                        n_classes: int) -> tuple[int, int, int]:
    """(forward FLOPs of one training batch with deep supervision, parameters, nnU-Net planner's feature-map size
    ``compute_conv_feature_map_size(patch)``), from the network built on the meta device."""
    with torch.device("meta"):
        network = build_network(spec, configuration, n_classes)
        network.train()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            network(torch.empty(configuration.batch_size, N_PHASES, *configuration.patch_size))
        parameters = sum(p.numel() for p in network.parameters())
        feature_map_size = network.compute_conv_feature_map_size(configuration.patch_size)
    return int(counter.get_total_flops()), int(parameters), int(feature_map_size)


# ------------------------------------------------------------------------------------------------------ inference
def make_predictor(network: nn.Module, configuration: ConfigurationManager, device: torch.device,
                   mirroring: bool) -> nnUNetPredictor:
    """nnU-Net's predictor around an in-memory network: tile step 0.5, Gaussian weighting, results on the device,
    all three axes mirrored when ``mirroring`` (nnU-Net's defaults for a 3D model)."""
    with contextlib.redirect_stdout(None):  # it prints a notice for every CPU predictor
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring,
                                    perform_everything_on_device=device.type == "cuda", device=device, verbose=False,
                                    verbose_preprocessing=False, allow_tqdm=False)
    predictor.network = network
    predictor.configuration_manager = configuration
    predictor.label_manager = LabelManager(LABELS, None)
    predictor.allowed_mirroring_axes = (0, 1, 2)
    return predictor


def set_deep_supervision(network: nn.Module, enabled: bool) -> None:
    unwrap_network(network).decoder.deep_supervision = enabled


# ----------------------------------------------------------------------------------------------------- probes
def rss_kib(field_name: str = "VmRSS") -> int:
    """This process's resident set size (or its peak, ``VmHWM``) in KiB, from /proc/self/status (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field_name} not in /proc/self/status")


def memory_probe(request: dict) -> dict:
    """In a fresh process: peak memory of ``steps`` training steps of one row (CUDA: max_memory_allocated and
    max_memory_reserved; CPU: peak RSS above the RSS before the network was built), in MiB."""
    device = torch.device(request["device"])
    configuration = ConfigurationManager(request["configuration"])
    spec = MODELS[request["model"]]
    torch.manual_seed(0)
    baseline_kib = rss_kib() if device.type == "cpu" else 0
    setup = make_training_setup(spec, configuration, request["classes"], device, request["amp"], request["compile"],
                                request["channels_last"])
    data, targets = synthetic_batch(configuration, request["classes"], device, request["channels_last"])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(request["steps"]):
        setup.step(data, targets)
    synchronise(device)
    if device.type == "cuda":
        return {"peak_mib": torch.cuda.max_memory_allocated(device) / 2 ** 20,
                "reserved_mib": torch.cuda.max_memory_reserved(device) / 2 ** 20}
    return {"peak_mib": (rss_kib("VmHWM") - baseline_kib) / 1024}


def plan_probe(request: dict) -> dict:
    """In a fresh process whose nnUNet_* folders hold a synthetic dataset: HPNPlanner's 3d_fullres entry for
    ``gpu_memory_target_in_gb`` (nnU-Net's own patch / batch search)."""
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape

    from nnunet_hpn.nnunet.planners.hpn_planner import HPNPlanner, HPNResDSNPlanner

    planner_class = HPNResDSNPlanner if request["backbone"] == "resdsn" else HPNPlanner
    planner = planner_class(request["dataset"], gpu_memory_target_in_gb=request["target_gb"])
    transpose_forward, _ = planner.determine_transpose()
    spacing = planner.determine_fullres_target_spacing()
    shapes = [compute_new_shape(s, sp, spacing) for sp, s in zip(planner.dataset_fingerprint["spacings"],
                                                                 planner.dataset_fingerprint["shapes_after_crop"])]
    median_shape = np.median(shapes, 0)[transpose_forward]
    n_voxels = float(np.prod(median_shape, dtype=np.float64) * planner.dataset_json["numTraining"])
    plan = planner.get_plans_for_configuration(spacing[transpose_forward], median_shape,
                                               planner.generate_data_identifier("3d_fullres"), n_voxels, {})
    estimate = planner.static_estimate_VRAM_usage(
        tuple(plan["patch_size"]), N_PHASES, len(LABELS), plan["architecture"]["network_class_name"],
        plan["architecture"]["arch_kwargs"], tuple(plan["architecture"]["_kw_requires_import"]))
    return {"plan": json.loads(json.dumps(plan, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))),
            "estimate": int(estimate)}


def run_probe(request: dict, env: Optional[dict] = None, timeout: float = 1800) -> dict:
    """Runs ``request`` in a fresh interpreter (this script with ``--probe``) and returns its result."""
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--probe", json.dumps(request)],
                          capture_output=True, text=True, env=env, timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith(PROBE_PREFIX):
            return json.loads(line[len(PROBE_PREFIX):])
    raise RuntimeError(f"probe {request.get('kind')} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n"
                       f"{proc.stderr[-3000:]}")


# A pancreas-like CT dataset for the planner check: spacing 2.5 x 0.8 x 0.8 mm, median shape 96 x 512 x 512
PLANNER_DATASET = {"id": 998, "name": "HPNBenchmarkPlanning", "n_cases": 40, "spacing": [2.5, 0.8, 0.8],
                   "shape": [96, 512, 512]}


def write_planner_dataset(root: Path) -> dict:
    """dataset.json and dataset_fingerprint.json of PLANNER_DATASET under ``root`` (no images: only the fingerprint
    is read by the patch / batch search); returns the nnUNet_* environment for it."""
    name = f"Dataset{PLANNER_DATASET['id']:03d}_{PLANNER_DATASET['name']}"
    raw, preprocessed = root / "nnUNet_raw" / name, root / "nnUNet_preprocessed" / name
    (raw / "imagesTr").mkdir(parents=True)
    preprocessed.mkdir(parents=True)
    n = PLANNER_DATASET["n_cases"]
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "arterial", "1": "venous"}, "labels": LABELS, "numTraining": n,
        "file_ending": ".nii.gz"}))
    intensity = {"max": 400.0, "mean": 100.0, "median": 100.0, "min": -100.0, "percentile_00_5": -50.0,
                 "percentile_99_5": 300.0, "std": 50.0}
    (preprocessed / "dataset_fingerprint.json").write_text(json.dumps({
        "foreground_intensity_properties_per_channel": {"0": intensity, "1": intensity},
        "median_relative_size_after_cropping": 1.0,
        "shapes_after_crop": [PLANNER_DATASET["shape"]] * n,
        "spacings": [PLANNER_DATASET["spacing"]] * n}))
    return nnunet_env(root, defaults={})


# ------------------------------------------------------------------------------------------------------ results
@dataclass
class Row:
    spec: ModelSpec
    parameters: int
    flops: int
    step_s: float
    peak_mib: Optional[float] = None
    inference_s: Optional[float] = None
    mirrored_s: Optional[float] = None
    extra: dict = field(default_factory=dict)


def _ratio_cell(value: Optional[float], base: Optional[float], bound: Optional[float]) -> str:
    if value is None or base is None:
        return "–"
    ratio = value / base
    if bound is None:
        return f"{ratio:.2f}"
    return f"{ratio:.2f} {'✓' if ratio <= bound else '✗'}"


def format_table(rows: list[Row]) -> str:
    """One markdown table; ratios (x) are to the first row; ✓ / ✗: time ratio <= / > 1.1 x FLOP ratio."""
    base = rows[0]
    lines = [
        "| model | parameters (M) | forward GFLOPs | FLOPs x | target: time x <= | training step s | x | "
        "planner's feature-map size (M) | peak memory MiB | x | inference s | x | inference + mirroring s | x |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        flop_ratio = row.flops / base.flops
        bound = TIME_TARGET * flop_ratio if row is not base else None
        memory = f"{row.peak_mib:.0f}" if row.peak_mib is not None else "–"
        feature_maps = f"{row.extra['feature_map_size'] / 1e6:.2f}" if "feature_map_size" in row.extra else "–"
        inference = f"{row.inference_s:.2f}" if row.inference_s is not None else "–"
        mirrored = f"{row.mirrored_s:.2f}" if row.mirrored_s is not None else "–"
        lines.append(
            f"| {row.spec.label} | {row.parameters / 1e6:.2f} | {row.flops / 1e9:.2f} | {flop_ratio:.2f} "
            f"| {'–' if bound is None else f'{bound:.2f}'} | {row.step_s:.3f} "
            f"| {_ratio_cell(row.step_s, base.step_s, bound)} | {feature_maps} | {memory} "
            f"| {_ratio_cell(row.peak_mib, base.peak_mib, None)} | {inference} "
            f"| {_ratio_cell(row.inference_s, base.inference_s, bound)} | {mirrored} "
            f"| {_ratio_cell(row.mirrored_s, base.mirrored_s, bound)} |")
    return "\n".join(lines)


def describe_device(device: torch.device) -> str:
    """CUDA device name, or CPU model, threads and load average."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    cpu_model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    load = ""
    if hasattr(os, "getloadavg"):
        load = ", load average {:.1f} / {:.1f} / {:.1f} (1 / 5 / 15 min) at the end".format(*os.getloadavg())
    return f"CPU {cpu_model}, {torch.get_num_threads()} torch threads ({os.cpu_count()} logical CPUs){load}"


# ------------------------------------------------------------------------------------------------------- measuring
def measure_training(setups: dict[str, TrainingSetup], batches: dict[str, tuple[Tensor, list[Tensor]]],
                     warmup: int, repeats: int, device: torch.device) -> dict[str, list[float]]:
    """Interleaved (A B C A B C ...) so that load from other processes hits every network alike."""
    times: dict[str, list[float]] = {key: [] for key in setups}
    for round_index in range(warmup + repeats):
        for key, setup in setups.items():
            seconds = timed(lambda s=setup: s.step(*batches[s.spec.backbone]), device)
            if round_index >= warmup:
                times[key].append(seconds)
    return times


def count_host_syncs(setup: TrainingSetup, batch: tuple[Tensor, list[Tensor]]) -> int:
    """Host-device synchronisations in one CUDA training step, as reported by ``torch.cuda.set_sync_debug_mode``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            setup.step(*batch)
            torch.cuda.synchronize()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def measure_pairing_share(configuration: ConfigurationManager, device: torch.device, repeats: int,
                          channels_last: bool) -> float:
    """Seconds of the pairing loss's forward + backward on two (B, F0, *patch) feature maps (median)."""
    shape = (configuration.batch_size, configuration.network_arch_init_kwargs["features_per_stage"][0],
             *configuration.patch_size)
    generator = torch.Generator().manual_seed(1)
    features = [torch.randn(shape, generator=generator).to(device) for _ in range(N_PHASES)]
    if channels_last:
        features = [f.contiguous(memory_format=torch.channels_last_3d) for f in features]
    for f in features:
        f.requires_grad_(True)

    def run() -> None:
        pairing_loss(features).backward()
    run()
    return statistics.median(timed(run, device) for _ in range(max(3, repeats)))


def measure_inference(networks: dict[str, nn.Module], configuration_by_key: dict[str, ConfigurationManager],
                      case: Tensor, device: torch.device,
                      repeats: dict[bool, int]) -> dict[tuple[str, bool], list[float]]:
    """Whole-case sliding-window inference through nnUNetPredictor; ``repeats[mirroring]`` timed predictions per
    network and setting, interleaved over the networks; one untimed prediction per network first (warm-up,
    compilation)."""
    options = [mirroring for mirroring, n in repeats.items() if n > 0]
    predictors = {(key, mirroring): make_predictor(net, configuration_by_key[key], device, mirroring)
                  for key, net in networks.items() for mirroring in options}
    for key in networks:
        predictors[(key, options[0])].predict_sliding_window_return_logits(case)
    times: dict[tuple[str, bool], list[float]] = {k: [] for k in predictors}
    for round_index in range(max(repeats.values())):
        for mirroring in options:
            if round_index >= repeats[mirroring]:
                continue
            for key in networks:
                predictor = predictors[(key, mirroring)]
                times[(key, mirroring)].append(
                    timed(lambda p=predictor: p.predict_sliding_window_return_logits(case), device))
    return times


#: op groups of the profile summary: (name, test on the lower-case op name), first match wins
PROFILE_GROUPS: tuple[tuple[str, Callable[[str], bool]], ...] = (
    ("convolution backward", lambda n: "convolution_backward" in n or ("conv" in n and "backward" in n)),
    ("convolution forward", lambda n: "conv" in n or "mkldnn" in n or "cudnn" in n),
    ("concatenation (torch.cat)", lambda n: n.startswith("aten::cat") or "catbackward" in n),
    ("instance norm", lambda n: "norm" in n),
    ("LeakyReLU", lambda n: "leaky" in n),
    ("copies, fills", lambda n: n in ("aten::copy_", "aten::fill_", "aten::zero_", "aten::clone",
                                      "torch::autograd::copyslices")),
    ("optimizer, clipping", lambda n: "sgd" in n or "_foreach" in n or "optimizer" in n),
)


def profile_steps(setups: dict[str, TrainingSetup], batches: dict, out_dir: Path, device: torch.device,
                  n_steps: int = 3, row_limit: int = 30) -> dict[str, dict[str, float]]:
    """``n_steps`` profiled training steps per network, interleaved over the networks (load from other processes
    hits all alike). The op table of each network's last step (by self time) goes to ``out_dir/profile_<key>.txt``;
    returns per network the median over the steps of the self seconds per PROFILE_GROUPS group (+ "other",
    "total")."""
    from torch.profiler import ProfilerActivity, profile

    out_dir.mkdir(parents=True, exist_ok=True)
    on_cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    per_step: dict[str, list[dict[str, float]]] = {key: [] for key in setups}
    for _ in range(n_steps):
        for key, setup in setups.items():
            with profile(activities=activities) as prof:
                setup.step(*batches[setup.spec.backbone])
                synchronise(device)
            events = prof.key_averages()
            groups = {name: 0.0 for name, _ in PROFILE_GROUPS} | {"other": 0.0}
            for event in events:
                seconds = (event.self_device_time_total if on_cuda else event.self_cpu_time_total) / 1e6
                name = event.key.lower()
                groups[next((g for g, test in PROFILE_GROUPS if test(name)), "other")] += seconds
            groups["total"] = sum(groups.values())
            per_step[key].append(groups)
            table = events.table(sort_by="self_device_time_total" if on_cuda else "self_cpu_time_total",
                                 row_limit=row_limit)
            (out_dir / f"profile_{key}.txt").write_text(table, encoding="utf-8")
    return {key: {group: statistics.median(step[group] for step in steps) for group in steps[0]}
            for key, steps in per_step.items()}


def format_profile_table(summaries: dict[str, dict[str, float]]) -> str:
    """Self time per op group and network, with each group's ratio to the baseline."""
    keys = list(summaries)
    base = summaries[keys[0]]
    header = "| op group (self time per step) | " + " | ".join(f"{MODELS[k].label} s | x" for k in keys) + " |"
    lines = [header, "|---|" + "---:|---:|" * len(keys)]
    for group in base:
        cells = []
        for key in keys:
            value = summaries[key][group]
            cells.append(f"{value:.2f} | {value / base[group]:.2f}" if base[group] > 0 else f"{value:.2f} | –")
        lines.append(f"| {group} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_demo_stages(workdir: Path) -> dict[str, float]:
    """``nnunet-hpn demo`` once; seconds per stage parsed from its '=== STEP: done in N s' lines, and in total."""
    log = workdir / "demo.log"
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as handle:
        subprocess.run([sys.executable, "-m", "nnunet_hpn.cli", "demo", "--workdir", str(workdir / "demo")],
                       stdout=handle, stderr=subprocess.STDOUT, check=True, cwd=REPO_ROOT)
    total = time.perf_counter() - start
    stages = {}
    for match in re.finditer(r"^=== \d/6 (.+?): done in (\d+) s$", log.read_text(encoding="utf-8"), re.MULTILINE):
        stages[match.group(1)] = float(match.group(2))
    stages["total (incl. phantoms, conversion, evaluation, figures)"] = total
    return stages


# ------------------------------------------------------------------------------------------------------------ CLI
def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--patch", type=int, nargs="+", default=None,
                        help="patch edge or Z Y X (default: CPU 48, CUDA 128)")
    parser.add_argument("--features", type=int, nargs=2, default=None, metavar=("BASE", "MAX"),
                        help="features of stage 0 and the cap (default: CPU 16 256, CUDA 32 320 = nnU-Net's)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--case", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"),
                        help="whole-case size for inference (default: CPU 48 72 72, CUDA 160 320 320)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS),
                        help=f"rows (the first is the baseline; default all, baseline {BASELINE})")
    parser.add_argument("--repeats", type=int, default=7, help="timed training steps per network (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed training steps per network first")
    parser.add_argument("--inference-repeats", type=int, default=3, help="timed whole-case predictions per network")
    parser.add_argument("--mirrored-repeats", type=int, default=None,
                        help="timed whole-case predictions with mirroring (8 forward passes per tile) per network "
                             "(default: 2; 0: none)")
    parser.add_argument("--no-inference", action="store_true")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory probes")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: usable CPUs)")
    parser.add_argument("--amp", choices=("auto", "off", "fp16", "bf16"), default="auto",
                        help="autocast: auto = nnU-Net's (fp16 + GradScaler on CUDA, off on CPU)")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                        help="torch.compile: auto = nnU-Net's training default (on for CUDA, off for CPU)")
    parser.add_argument("--channels-last", action="store_true", help="channels_last_3d networks and inputs")
    parser.add_argument("--profile", type=Path, default=None,
                        help="profile training steps (torch.profiler) and write each network's op table here")
    parser.add_argument("--profile-steps", type=int, default=3, help="profiled steps per network (median reported)")
    parser.add_argument("--planner-targets", type=float, nargs="*", default=None, metavar="GB",
                        help="HPNPlanner memory targets to plan (and on CUDA, measure) (default: CUDA 8 40, CPU none)")
    parser.add_argument("--demo", action="store_true", help="also time the stages of `nnunet-hpn demo` (CPU, ~8 min)")
    parser.add_argument("--demo-workdir", type=Path, default=None)
    parser.add_argument("--doc", type=Path, default=DEFAULT_DOC, help="markdown file the results are appended to")
    parser.add_argument("--no-doc", action="store_true", help="print only")
    parser.add_argument("--title", default=None, help="heading of the appended section")
    parser.add_argument("--probe", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe is not None:
        return args
    cuda = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
    args.device = ("cuda" if args.device == "auto" else args.device) if cuda else "cpu"
    patch = args.patch or ([128] if cuda else [48])
    args.patch = patch * 3 if len(patch) == 1 else patch
    if len(args.patch) != 3:
        parser.error("--patch takes one edge or three edges")
    args.features = args.features or ([32, 320] if cuda else [16, 256])
    args.case = args.case or ([160, 320, 320] if cuda else [48, 72, 72])
    if args.planner_targets is None:
        args.planner_targets = [8.0, 40.0] if cuda else []
    if args.amp == "auto":
        args.amp = "fp16" if cuda else "off"
    args.compile = {"auto": cuda, "on": True, "off": False}[args.compile]
    if args.mirrored_repeats is None:
        args.mirrored_repeats = 2
    if args.repeats < 1 or args.warmup < 0 or args.batch < 1 or args.inference_repeats < 1 or args.mirrored_repeats < 0:
        parser.error("need --repeats >= 1, --warmup >= 0, --batch >= 1, --inference-repeats >= 1, "
                     "--mirrored-repeats >= 0")
    if BASELINE not in args.models:
        args.models = [BASELINE] + list(args.models)
    args.models = [BASELINE] + [m for m in args.models if m != BASELINE]
    return args


def main(argv: Optional[Sequence[str]] = None) -> str:
    """Runs the benchmark, prints the report, appends it to ``--doc`` (unless ``--no-doc``) and returns it."""
    args = parse_args(argv)
    if args.probe is not None:
        request = json.loads(args.probe)
        result = {"memory": memory_probe, "plan": plan_probe}[request["kind"]](request)
        print(PROBE_PREFIX + json.dumps(result), flush=True)
        return ""
    started = time.perf_counter()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as nnU-Net's training and prediction set it
    threads = args.threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    torch.set_num_threads(max(1, threads))
    torch.manual_seed(0)
    n_classes = len(LABELS)
    specs = [MODELS[key] for key in args.models]
    configurations = {backbone: plans_configuration(args.patch, *args.features, args.batch, backbone)
                      for backbone in {spec.backbone for spec in specs}}
    unet_plan = configurations.get("unet") or next(iter(configurations.values()))
    arch = unet_plan.network_arch_init_kwargs

    print(f"building {len(specs)} networks on {device} ...", flush=True)
    counts = {spec.key: count_forward_flops(spec, configurations[spec.backbone], n_classes) for spec in specs}
    batches = {backbone: synthetic_batch(configuration, n_classes, device, args.channels_last)
               for backbone, configuration in configurations.items()}
    setups: dict[str, TrainingSetup] = {}
    gpu_peak_mib: dict[str, float] = {}
    for spec in specs:
        # on CUDA each network's peak memory is measured here, while it is the newest one on the device: peak
        # allocated during 2 steps (which also compile it) above what was allocated before it was built
        before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        setups[spec.key] = make_training_setup(spec, configurations[spec.backbone], n_classes, device, args.amp,
                                               args.compile, args.channels_last)
        if device.type == "cuda" and not args.no_memory:
            torch.cuda.reset_peak_memory_stats(device)
            for _ in range(2):
                setups[spec.key].step(*batches[spec.backbone])
            synchronise(device)
            gpu_peak_mib[spec.key] = (torch.cuda.max_memory_allocated(device) - before) / 2 ** 20

    print(f"training steps: {args.warmup} warm-up + {args.repeats} timed per network, interleaved ...", flush=True)
    step_times = measure_training(setups, batches, args.warmup, args.repeats, device)
    rows = [Row(spec, counts[spec.key][1], counts[spec.key][0], statistics.median(step_times[spec.key]),
                extra={"steps": step_times[spec.key], "feature_map_size": counts[spec.key][2]}) for spec in specs]
    by_key = {row.spec.key: row for row in rows}

    pairing_s = measure_pairing_share(unet_plan, device, args.repeats, args.channels_last)
    if device.type == "cuda":
        for key, setup in setups.items():
            by_key[key].extra["host_syncs"] = count_host_syncs(setup, batches[setup.spec.backbone])
    profiles = profile_steps(setups, batches, args.profile, device, args.profile_steps) if args.profile else {}

    for key, peak in gpu_peak_mib.items():
        by_key[key].peak_mib = peak
    if not args.no_memory and device.type == "cpu":
        print("peak memory: one fresh process per network ...", flush=True)
        for spec in specs:
            result = run_probe({"kind": "memory", "model": spec.key, "device": args.device,
                                "configuration": configurations[spec.backbone].configuration, "classes": n_classes,
                                "amp": args.amp, "compile": args.compile, "channels_last": args.channels_last,
                                "steps": 2})
            by_key[spec.key].peak_mib = result["peak_mib"]
            by_key[spec.key].extra["reserved_mib"] = result.get("reserved_mib")

    inference_times: dict = {}
    if not args.no_inference:
        print(f"whole-case inference, case 2 x {'x'.join(map(str, args.case))} ...", flush=True)
        networks = {}
        for spec in specs:
            if spec.inference_as is None:
                set_deep_supervision(setups[spec.key].network, False)
                networks[spec.key] = setups[spec.key].network
        # the predictor's own work (tiling, Gaussian weighting, accumulation), with a network that does almost none
        networks[OVERHEAD_KEY] = nn.Conv3d(N_PHASES, n_classes, 1).to(device)
        case = torch.randn((N_PHASES, *args.case), generator=torch.Generator().manual_seed(2))
        inference_configurations = {k: configurations[MODELS[k].backbone] if k in MODELS else unet_plan
                                    for k in networks}
        inference_times = measure_inference(networks, inference_configurations, case, device,
                                            {False: args.inference_repeats, True: args.mirrored_repeats})
        overhead = {mirroring: statistics.median(inference_times[(OVERHEAD_KEY, mirroring)])
                    for mirroring in (False, True) if (OVERHEAD_KEY, mirroring) in inference_times}
        for row in rows:
            source = row.spec.inference_as or row.spec.key
            if (source, False) in inference_times:
                row.inference_s = statistics.median(inference_times[(source, False)])
            if (source, True) in inference_times:
                row.mirrored_s = statistics.median(inference_times[(source, True)])

    planner_rows = []
    if args.planner_targets:
        print(f"HPN planner at memory targets {args.planner_targets} GB ...", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            env = write_planner_dataset(Path(tmp))
            for target in args.planner_targets:
                planned = run_probe({"kind": "plan", "backbone": "unet", "dataset": PLANNER_DATASET["id"],
                                     "target_gb": target}, env=env)
                plan = planned["plan"]
                entry = {"target_gb": target, "patch": plan["patch_size"], "batch": plan["batch_size"],
                         "features": plan["architecture"]["arch_kwargs"]["features_per_stage"],
                         "estimate": planned["estimate"], "measured_mib": None, "reserved_mib": None}
                if device.type == "cuda":
                    configuration = {"patch_size": plan["patch_size"], "batch_size": plan["batch_size"],
                                     "batch_dice": plan.get("batch_dice", False),
                                     "architecture": plan["architecture"]}
                    measured = run_probe({"kind": "memory", "model": "hpn_unet", "device": args.device,
                                          "configuration": configuration, "classes": n_classes, "amp": args.amp,
                                          "compile": args.compile, "channels_last": args.channels_last,
                                          "steps": 3})
                    entry["measured_mib"] = measured["peak_mib"]
                    entry["reserved_mib"] = measured.get("reserved_mib")
                planner_rows.append(entry)

    demo_stages = run_demo_stages(args.demo_workdir or Path(tempfile.mkdtemp(prefix="hpn_demo_bench_"))) \
        if args.demo else {}

    report = format_report(args, device, rows, unet_plan, arch, pairing_s, profiles, planner_rows, demo_stages,
                           time.perf_counter() - started, argv, overhead if not args.no_inference else {})
    print(report)
    if not args.no_doc:
        with open(args.doc, "a", encoding="utf-8") as handle:
            handle.write("\n" + report + "\n")
    return report


def format_report(args: argparse.Namespace, device: torch.device, rows: list[Row], plan: ConfigurationManager,
                  arch: dict, pairing_s: float, profiles: dict, planner_rows: list, demo_stages: dict,
                  wall_s: float, argv: Optional[Sequence[str]], overhead: Optional[dict] = None) -> str:
    """The markdown section: heading, settings, the table, the pairing-loss share, planner and demo tables."""
    command = "python scripts/benchmark.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    strides = [s[0] if len(set(s)) == 1 else s for s in arch["strides"]]
    settings = (
        f"plans: patch {'x'.join(map(str, plan.patch_size))}, batch {plan.batch_size}, {len(LABELS)} classes, "
        f"{arch['n_stages']} stages, features {arch['features_per_stage']}, strides {strides}, 3x3x3 kernels, "
        f"2 convs per stage (ResDSN: 1 residual block per encoder stage), InstanceNorm3d, LeakyReLU, deep "
        f"supervision; autocast {args.amp}, torch.compile {'on' if args.compile else 'off'}, channels_last_3d "
        f"{'on' if args.channels_last else 'off'}; training step: median of {args.repeats} interleaved steps "
        f"after {args.warmup} warm-up per network")
    inference_settings = "–" if args.no_inference else (
        f"case 2 x {'x'.join(map(str, args.case))} voxels, nnUNetPredictor (tile step 0.5, Gaussian, "
        f"{'results on the device' if device.type == 'cuda' else 'CPU'}), median of {args.inference_repeats} "
        f"(with mirroring: {args.mirrored_repeats}) runs interleaved over the networks after one warm-up each; "
        f"mirroring = nnU-Net's test-time mirroring, all 8 flips of the 3 axes")
    base = rows[0]
    lines = [
        f"## {args.title or f'{datetime.date.today().isoformat()}: {device.type.upper()}'}",
        "",
        f"- device: {describe_device(device)}",
        f"- torch {torch.__version__}, Python {platform.python_version()}; run took {wall_s / 60:.1f} min",
        f"- command: `{command.strip()}`",
        f"- {settings}",
        f"- inference: {inference_settings}",
        "- x = ratio to the first row in this run; ✓ / ✗ = time ratio within / above 1.1 x the FLOP ratio; "
        "peak memory over 2 training steps: " + (
            "`torch.cuda.max_memory_allocated` above the memory allocated before the network was built"
            if device.type == "cuda" else "peak RSS of a fresh process above its RSS before the network was built"),
        "",
        format_table(rows),
        "",
    ]
    if len(rows) > 1:
        per_round = [
            f"{row.spec.label} " + " / ".join(f"{t / b:.2f}" for t, b in zip(row.extra["steps"], base.extra["steps"]))
            for row in rows[1:]]
        lines += ["Training-step time ratio to the first row, round by round (each round times every network once, "
                  "so a round's networks saw similar load): " + "; ".join(per_round) + ".", ""]
    if overhead:
        parts = []
        for mirroring, attribute in ((False, "inference_s"), (True, "mirrored_s")):
            if mirroring not in overhead or getattr(base, attribute) is None:
                continue
            net = getattr(base, attribute) - overhead[mirroring]
            ratios = ", ".join(f"{row.spec.label} {(getattr(row, attribute) - overhead[mirroring]) / net:.2f}"
                               for row in rows[1:] if row.spec.inference_as is None and net > 0)
            parts.append(f"{'with' if mirroring else 'without'} mirroring {overhead[mirroring]:.2f} s "
                         f"({100 * overhead[mirroring] / getattr(base, attribute):.0f} % of the first row's time); "
                         f"ratios of the times minus it: {ratios}")
        lines += ["nnUNetPredictor's own work on this case (the same prediction with a 1x1x1-convolution network): "
                  + "; ".join(parts) + ".", ""]
    fair = next((row for row in rows if row.spec.key == "nnunet_onednn"), None)
    if fair is not None and fair.inference_s is not None and device.type == "cpu":
        parts = []
        for row in rows:
            if row.spec.inference_as is not None or row is fair or row is base:
                continue
            bound = TIME_TARGET * row.flops / fair.flops
            parts.append(f"{row.spec.label} {_ratio_cell(row.inference_s, fair.inference_s, bound)} / "
                         f"{_ratio_cell(row.mirrored_s, fair.mirrored_s, bound)} (target <= {bound:.2f})")
        lines += ["Inference ratios without / with mirroring against nnU-Net's network with the same oneDNN batch-1 "
                  "convolutions (`nnunet_onednn` row; HPN's trainers all use them): " + "; ".join(parts) + ".", ""]
    hpn = next((row for row in rows if row.spec.key == "hpn_unet"), None)
    if hpn is not None:
        share = pairing_s / hpn.step_s
        lines.append(f"Pairing loss (forward + backward on two {plan.batch_size} x "
                     f"{arch['features_per_stage'][0]} x {'x'.join(map(str, plan.patch_size))} feature maps, fp32): "
                     f"{pairing_s * 1e3:.1f} ms = {100 * share:.1f} % of the HPN U-Net training step "
                     f"(target < {100 * PAIRING_SHARE_TARGET:.0f} %: "
                     f"{'met' if share < PAIRING_SHARE_TARGET else 'MISSED'}).")
        lines.append("")
    if any("host_syncs" in row.extra for row in rows):
        lines.append("Host-device synchronisations in one training step (`torch.cuda.set_sync_debug_mode`; the "
                     "GradScaler's inf check is one): " + ", ".join(
                         f"{row.spec.label} {row.extra['host_syncs']}" for row in rows) + ".")
        lines.append("")
    equal = next((row for row in rows if row.spec.key == "hpn_equalcost"), None)
    if equal is not None:
        kwargs, factor, ratio = HPNTrainer_equalcost.equal_cost_network_kwargs(plan, N_PHASES, len(LABELS))
        lines.append(f"Equal-cost widths: {arch['features_per_stage']} x {factor:.3f} -> {kwargs['features_per_stage']}"
                     f" (forward FLOPs {ratio:.3f} x nnU-Net's at batch 1; {equal.flops / base.flops:.3f} x with deep "
                     f"supervision at batch {plan.batch_size}).")
        lines.append("")
    if planner_rows:
        lines += [
            f"HPNPlanner (3d_fullres) on a synthetic pancreas-like dataset (2 phases, spacing "
            f"{PLANNER_DATASET['spacing']}, median shape {PLANNER_DATASET['shape']}), peak memory of 3 training steps "
            f"of the planned HPN (U-Net) at the planned patch and batch:",
            "",
            "| memory target GB | patch | batch | features | planner estimate | measured peak allocated GiB | "
            "reserved GiB | within target |",
            "|---:|---|---:|---|---:|---:|---:|---|",
        ]
        for entry in planner_rows:
            measured, reserved = entry["measured_mib"], entry["reserved_mib"]
            within = "not measured (no GPU)" if measured is None else (
                "yes" if measured / 1024 <= entry["target_gb"] else "NO")
            lines.append(
                f"| {entry['target_gb']:g} | {'x'.join(map(str, entry['patch']))} | {entry['batch']} "
                f"| {entry['features']} | {entry['estimate'] / 1e6:.0f} M "
                f"| {'–' if measured is None else f'{measured / 1024:.2f}'} "
                f"| {'–' if reserved is None else f'{reserved / 1024:.2f}'} | {within} |")
        lines.append("")
    if demo_stages:
        lines += ["`nnunet-hpn demo` stages (one run, same machine):", "", "| stage | s |", "|---|---:|"]
        lines += [f"| {name} | {seconds:.0f} |" for name, seconds in demo_stages.items()]
        lines.append("")
    if profiles:
        lines += [f"torch.profiler, median over {args.profile_steps} profiled training steps per network, interleaved "
                  f"(op tables of the last step: `{args.profile}`):", "",
                  format_profile_table(profiles), ""]
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    main()
