"""Multi-GPU readiness without GPUs: one nnU-Net DDP training step of every trainer, 2 processes, gloo on CPU.

nnU-Net's ``-num_gpus`` path needs CUDA/NCCL; here each rank runs nnU-Net's own DDP set-up instead (the trainer sees
an initialised process group: ``is_ddp``, per-rank batch size, deep-supervision weight 1e-6 on the lowest output,
``DistributedDataParallel`` with nnU-Net's ``find_unused_parameters=False``), with two CPU substitutions: the CPU
device in place of ``cuda:<rank>`` and no ``device_ids`` for the DDP wrapper. DDP with ``find_unused_parameters=False``
fails on the step after one in which a parameter got no gradient, so two ``train_step`` calls per trainer prove that
every parameter is used (e.g. that no single-phase trainer carries an unused path).
"""
import copy
import json
import os
import socket
import sys
import time
import traceback
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import TINY_CONFIGURATION
from nnunet_hpn.nnunet.trainers import __all__ as TRAINER_NAMES

WORLD_SIZE = 2
RESDSN_CONFIGURATION = "3d_tiny_resdsn"
#: every trainer on the plain backbone; on the ResDSN backbone one trainer per kind of network and loss
JOBS = [(name, TINY_CONFIGURATION) for name in TRAINER_NAMES] + [
    (name, RESDSN_CONFIGURATION) for name in ("HPNTrainer", "HyperNetTrainer", "SinglePhaseTrainer_arterial",
                                              "EarlyFusionTrainer")]


def _with_resdsn_configuration(plans: dict) -> dict:
    """The fixture's plans plus ``3d_tiny`` with the 3D-ResDSN backbone (as ``HPNResDSNPlanner`` writes it: one
    residual block per encoder stage), sharing the preprocessed data; both with the smallest patch their strides
    allow (the steps use random batches, and parameter use does not depend on the patch size)."""
    plans = copy.deepcopy(plans)
    plans["configurations"][TINY_CONFIGURATION]["patch_size"] = [8, 16, 16]
    entry = copy.deepcopy(plans["configurations"][TINY_CONFIGURATION])
    entry["architecture"]["network_class_name"] = "nnunet_hpn.model.network.HyperPairedResDSN"
    entry["architecture"]["arch_kwargs"]["n_conv_per_stage"] = [1] * entry["architecture"]["arch_kwargs"]["n_stages"]
    plans["configurations"][RESDSN_CONFIGURATION] = entry
    return plans


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch(trainer, rng: np.random.Generator) -> dict:
    """Random (batch, 2, *patch) images and 4-class labels at every deep-supervision scale."""
    patch = trainer.configuration_manager.patch_size
    data = torch.from_numpy(rng.standard_normal((trainer.batch_size, 2, *patch)).astype(np.float32))
    labels = torch.from_numpy(rng.integers(0, 4, (trainer.batch_size, 1, *patch)).astype(np.float32))
    targets = [torch.nn.functional.interpolate(labels, scale_factor=tuple(s), mode="nearest")
               for s in trainer._get_deep_supervision_scales()]
    return {"data": data, "target": targets}


def _ddp_steps(rank: int, name: str, configuration: str, plans: dict, dataset_json: dict,
               compile_network: bool = False) -> dict:
    """Two nnU-Net DDP training steps of trainer ``name`` on this rank's random batch; what rank 0 checks.
    ``compile_network``: torch.compile as nnU-Net does on CUDA (before the DDP wrapper), here with inductor on CPU."""
    from torch._dynamo import OptimizedModule
    from torch.nn.parallel import DistributedDataParallel

    from nnunet_hpn.nnunet import trainers
    from nnunet_hpn.nnunet.trainers.hpn_trainer import SegmentationPlusPairingLoss

    trainer = getattr(trainers, name)(plans=dict(copy.deepcopy(plans), continue_training=False),
                                      configuration=configuration, fold=0, dataset_json=dataset_json,
                                      device=torch.device("cpu"))
    assert trainer.is_ddp and trainer.local_rank == rank
    trainer.device, trainer.grad_scaler = torch.device("cpu"), None  # nnU-Net forces cuda:<rank> under DDP
    trainer._do_i_compile = lambda: compile_network  # nnU-Net compiles on CUDA only
    trainer.initialize()
    assert isinstance(trainer.network, DistributedDataParallel)
    assert trainer.network.find_unused_parameters is False
    rng = np.random.default_rng(1000 + rank)  # every rank its own data, as in nnU-Net
    parameters = list(trainer.network.module.named_parameters())
    missing, losses = [], []
    for _ in range(2):
        losses.append(float(trainer.train_step(_batch(trainer, rng))["loss"]))
        missing += [n for n, p in parameters if p.grad is None]
    gradients = torch.cat([p.grad.flatten() for _, p in parameters if p.grad is not None])
    weights = torch.cat([p.detach().flatten() for _, p in parameters])
    gathered_gradients = [torch.empty_like(gradients) for _ in range(WORLD_SIZE)]
    gathered_weights = [torch.empty_like(weights) for _ in range(WORLD_SIZE)]
    dist.all_gather(gathered_gradients, gradients)
    dist.all_gather(gathered_weights, weights)
    network = trainer.network.module
    return {
        "losses": losses,
        "missing_gradients": sorted(set(missing)),
        "finite": bool(torch.isfinite(gradients).all() and torch.isfinite(weights).all()),
        "gradients_equal_across_ranks": all(torch.equal(g, gathered_gradients[0]) for g in gathered_gradients),
        "weights_equal_across_ranks": all(torch.equal(w, gathered_weights[0]) for w in gathered_weights),
        "n_parameters": len(parameters),
        "network": type(network).__name__,
        "path_channels": getattr(network, "path_channels", None),
        "pairing": isinstance(trainer.loss, SegmentationPlusPairingLoss),
        "pairing_steps": getattr(trainer.loss, "pairing_count", 0),
        "compiled": isinstance(network, OptimizedModule),
        "lowest_output_weight": float(trainer.loss.weight_factors[-1]) if hasattr(trainer.loss, "weight_factors")
        else float(trainer.loss.segmentation_loss.weight_factors[-1]),
    }


def _worker(rank: int, port: int, env: dict, plans: dict, dataset_json: dict, jobs: list, out_dir: str) -> None:
    os.environ.update(env)
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    from nnunetv2.training.nnUNetTrainer import nnUNetTrainer as trainer_module
    from torch.nn.parallel import DistributedDataParallel

    # nnU-Net wraps with DDP(network, device_ids=[local_rank]) (a GPU); a CPU module takes no device_ids
    trainer_module.DDP = lambda module, device_ids=None: DistributedDataParallel(module)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE, timeout=timedelta(seconds=120))
    results = {}
    try:
        for name, configuration, *options in jobs:  # options: "compile"
            key = "/".join((name, configuration, *options))
            start = time.perf_counter()
            try:
                results[key] = _ddp_steps(rank, name, configuration, plans, dataset_json, "compile" in options)
                results[key]["seconds"] = time.perf_counter() - start
            except Exception:  # the same error on both ranks (a DDP reduction error is symmetric)
                results[key] = {"error": traceback.format_exc()[-3000:]}
    finally:
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
        dist.destroy_process_group()
    # Everything is written and the group is gone; skip interpreter finalisation, where a C++ thread of the
    # distributed stack was once destroyed while still joinable ("terminate called without an active exception",
    # SIGABRT) after both ranks had finished every job (fresh-clone CI, 2026-12-03).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@pytest.fixture(scope="module")
def ddp_results(planned_dataset, tmp_path_factory) -> dict:
    plans = _with_resdsn_configuration(planned_dataset["plans"])
    dataset_json = json.loads((planned_dataset["raw"] / "dataset.json").read_text())
    env = {k: v for k, v in planned_dataset["env"].items() if k.startswith("nnUNet_")}
    env["nnUNet_results"] = str(tmp_path_factory.mktemp("ddp_results"))  # the ranks' trainer logs
    out_dir = tmp_path_factory.mktemp("ddp")
    mp.start_processes(_worker, args=(_free_port(), env, plans, dataset_json, JOBS, str(out_dir)),
                       nprocs=WORLD_SIZE, join=True, start_method="spawn")
    return {rank: json.loads((out_dir / f"rank{rank}.json").read_text()) for rank in range(WORLD_SIZE)}


@pytest.mark.parametrize("name,configuration", JOBS)
def test_one_ddp_training_step_per_trainer(ddp_results, name, configuration):
    key = f"{name}/{configuration}"
    for rank in range(WORLD_SIZE):
        assert "error" not in ddp_results[rank][key], ddp_results[rank][key].get("error")
    result = ddp_results[0][key]
    assert result["missing_gradients"] == []  # every parameter got a gradient in both steps
    assert result["gradients_equal_across_ranks"] and result["weights_equal_across_ranks"]
    assert result["finite"] and all(np.isfinite(result["losses"]))
    assert ddp_results[1][key]["losses"] != result["losses"]  # the ranks did see different data
    assert result["lowest_output_weight"] > 0  # nnU-Net's DDP weighting (0 outside DDP)
    single_phase = {"SinglePhaseTrainer_arterial": [0], "SinglePhaseTrainer_venous": [1]}
    if name in single_phase:
        assert result["path_channels"] == single_phase[name]  # one path only: nothing unused to carry
