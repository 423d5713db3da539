"""HPNPlanner on a realistic pancreas-CT fingerprint: the dual path fits the same memory target as nnU-Net's."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

REFERENCE_3D = 560e6  # nnU-Net's UNet_reference_val_3d for its 8 GB reference


@pytest.fixture(scope="module")
def realistic_dataset(planned_dataset) -> int:
    """A copy of the phantom dataset whose fingerprint says: 2 phases, spacing 2.5×0.8×0.8 mm, 96×512×512 voxels."""
    env = planned_dataset["env"]
    raw = Path(env["nnUNet_raw"]) / "Dataset991_HPNRealistic"
    shutil.copytree(planned_dataset["raw"], raw)
    pre = Path(env["nnUNet_preprocessed"]) / raw.name
    pre.mkdir()
    fingerprint = json.loads((Path(env["nnUNet_preprocessed"]) / planned_dataset["raw"].name /
                              "dataset_fingerprint.json").read_text())
    n = len(fingerprint["spacings"])
    fingerprint["spacings"] = [[2.5, 0.8, 0.8]] * n
    fingerprint["shapes_after_crop"] = [[96, 512, 512]] * n
    (pre / "dataset_fingerprint.json").write_text(json.dumps(fingerprint))
    return 991


def _plan(planner_cls, dataset_id: int, env: dict, monkeypatch, **kwargs) -> dict:
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(key, env[key])
    planner = planner_cls(dataset_id, plans_name=f"test_{planner_cls.__name__}_{kwargs}", **kwargs)
    planner.plan_experiment()
    return planner.plans["configurations"]["3d_fullres"]


def _estimate(config: dict) -> float:
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    arch = config["architecture"]
    with torch.device("meta"):
        net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"], 2, 4,
                                     allow_init=False)
    return float(net.compute_conv_feature_map_size(config["patch_size"]))


def test_dual_path_fits_the_memory_target(realistic_dataset, planned_dataset, monkeypatch):
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

    from nnunet_hpn.planners import HPNPlanner, HPNResDSNPlanner

    env = planned_dataset["env"]
    stock = _plan(ExperimentPlanner, realistic_dataset, env, monkeypatch)
    for planner_cls in (HPNPlanner, HPNResDSNPlanner):
        hpn = _plan(planner_cls, realistic_dataset, env, monkeypatch)
        assert hpn["architecture"]["network_class_name"].startswith("nnunet_hpn.hyper_connections.")
        # nnU-Net's criterion: estimate / 2 * batch <= reference (up to rounding the batch size to an integer)
        assert hpn["batch_size"] >= 2
        assert _estimate(hpn) * (hpn["batch_size"] - 0.5) / 2 <= REFERENCE_3D
        # the dual path costs more per voxel, so its patch is smaller than the stock single-path one
        assert np.prod(hpn["patch_size"]) < np.prod(stock["patch_size"])
    larger = _plan(HPNPlanner, realistic_dataset, env, monkeypatch, gpu_memory_target_in_gb=24)
    assert np.prod(larger["patch_size"]) > np.prod(hpn["patch_size"])
    assert _estimate(larger) * (larger["batch_size"] - 0.5) / 2 <= REFERENCE_3D * 24 / 8
