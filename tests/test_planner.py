"""HPNPlanner on a realistic pancreas-CT fingerprint: the dual path fits the same memory target as nnU-Net's; K phases
(K paths, hyper-connection patterns) and K = 2 unchanged."""
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


def _estimate(config: dict, channels: int = 2) -> float:
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    arch = config["architecture"]
    with torch.device("meta"):
        net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                     channels, 4, allow_init=False)
    return float(net.compute_conv_feature_map_size(config["patch_size"]))


@pytest.fixture(scope="module")
def realistic_hpn_plan(realistic_dataset, planned_dataset) -> dict:
    """HPNPlanner's 3d_fullres configuration of the realistic two-phase dataset (planned once per module)."""
    from nnunet_hpn.nnunet.planners import HPNPlanner

    with pytest.MonkeyPatch.context() as monkeypatch:
        return _plan(HPNPlanner, realistic_dataset, planned_dataset["env"], monkeypatch)


def test_dual_path_fits_the_memory_target(realistic_dataset, realistic_hpn_plan, planned_dataset, monkeypatch):
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

    from nnunet_hpn.nnunet.planners import HPNPlanner, HPNResDSNPlanner

    env = planned_dataset["env"]
    stock = _plan(ExperimentPlanner, realistic_dataset, env, monkeypatch)
    for planner_cls in (HPNPlanner, HPNResDSNPlanner):
        hpn = realistic_hpn_plan if planner_cls is HPNPlanner else _plan(planner_cls, realistic_dataset, env,
                                                                            monkeypatch)
        assert hpn["architecture"]["network_class_name"].startswith("nnunet_hpn.model.network.")
        # nnU-Net's criterion: estimate / 2 * batch <= reference (up to rounding the batch size to an integer)
        assert hpn["batch_size"] >= 2
        assert _estimate(hpn) * (hpn["batch_size"] - 0.5) / 2 <= REFERENCE_3D
        # the dual path costs more per voxel, so its patch is smaller than the stock single-path one
        assert np.prod(hpn["patch_size"]) < np.prod(stock["patch_size"])
    larger = _plan(HPNPlanner, realistic_dataset, env, monkeypatch, gpu_memory_target_in_gb=24)
    assert np.prod(larger["patch_size"]) > np.prod(hpn["patch_size"])
    assert _estimate(larger) * (larger["batch_size"] - 0.5) / 2 <= REFERENCE_3D * 24 / 8


def _as_saved(config: dict) -> dict:
    """A configuration as the plans file stores it (lists, plain numbers)."""
    return json.loads(json.dumps(config, default=lambda value: value.tolist()))


PAPER_CONNECTIONS = ["enc0->enc1", "enc1->enc0", "enc0->dec1", "enc1->dec0", "dec0->dec1", "dec1->dec0"]


@pytest.fixture(scope="module")
def realistic_four_phase_dataset(realistic_dataset, planned_dataset) -> int:
    """The realistic dataset with 4 phase channels (dataset.json and fingerprint; the images are not read)."""
    env = planned_dataset["env"]
    raw = Path(env["nnUNet_raw"]) / "Dataset992_HPNRealistic4"
    shutil.copytree(Path(env["nnUNet_raw"]) / "Dataset991_HPNRealistic", raw)
    dataset_json = json.loads((raw / "dataset.json").read_text())
    dataset_json["channel_names"] = {"0": "noncontrast", "1": "arterial", "2": "venous", "3": "delayed"}
    (raw / "dataset.json").write_text(json.dumps(dataset_json))
    pre = Path(env["nnUNet_preprocessed"]) / raw.name
    pre.mkdir()
    fingerprint = json.loads((Path(env["nnUNet_preprocessed"]) / "Dataset991_HPNRealistic" /
                              "dataset_fingerprint.json").read_text())
    properties = fingerprint["foreground_intensity_properties_per_channel"]
    fingerprint["foreground_intensity_properties_per_channel"] = {str(c): properties[str(c % 2)] for c in range(4)}
    (pre / "dataset_fingerprint.json").write_text(json.dumps(fingerprint))
    return 992


def test_two_phases_plan_exactly_the_previous_network(planned_dataset, monkeypatch):
    """K = 2: the plans name the paper's six connections (what the planner wrote before K phases), every pattern gives
    them, and the network equals HyperPairedUNet's defaults: same state_dict keys and shapes."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    from nnunet_hpn.model.network import HyperPairedUNet
    from nnunet_hpn.nnunet.planners.hpn_planner import HPNStarPlanner, hyper_connection_names

    for pattern in ("all", "star", "ring"):
        assert hyper_connection_names(2, pattern) == PAPER_CONNECTIONS
    arch = planned_dataset["plans"]["configurations"]["3d_fullres"]["architecture"]
    assert arch["arch_kwargs"]["path_channels"] == [0, 1]
    assert arch["arch_kwargs"]["hyper_connections"] == PAPER_CONNECTIONS
    star = _as_saved(_plan(HPNStarPlanner, 990, planned_dataset["env"], monkeypatch))
    assert star["architecture"]["arch_kwargs"] == arch["arch_kwargs"]
    assert star["patch_size"] == planned_dataset["plans"]["configurations"]["3d_fullres"]["patch_size"]
    planned = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"], 2,
                                     4, allow_init=False)
    defaults = {k: v for k, v in arch["arch_kwargs"].items() if k not in ("path_channels", "hyper_connections")}
    previous = get_network_from_plans(arch["network_class_name"], defaults, arch["_kw_requires_import"], 2, 4,
                                      allow_init=False)
    assert isinstance(previous, HyperPairedUNet)
    shapes = {name: tuple(t.shape) for name, t in planned.state_dict().items()}
    assert shapes == {name: tuple(t.shape) for name, t in previous.state_dict().items()}


def test_memory_estimate_counts_k_paths_and_the_pattern(realistic_dataset, planned_dataset, monkeypatch):
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    from nnunet_hpn.nnunet.planners import HPNPlanner
    from nnunet_hpn.nnunet.planners.hpn_planner import HPNStarPlanner

    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(key, planned_dataset["env"][key])
    arch = planned_dataset["plans"]["configurations"]["3d_fullres"]["architecture"]
    kwargs = {k: v for k, v in arch["arch_kwargs"].items() if k not in ("path_channels", "hyper_connections")}
    args = ((32, 64, 64), arch["network_class_name"], kwargs, arch["_kw_requires_import"])
    two = HPNPlanner(realistic_dataset)
    with torch.device("meta"):  # K = 2: nnU-Net's estimate of the default (dual-path, six connections) network
        previous = ExperimentPlanner.static_estimate_VRAM_usage(args[0], 2, 4, *args[1:])
    pairing_two = two.pairing_loss_feature_map_size(args[0], kwargs)
    assert two.static_estimate_VRAM_usage(args[0], 2, 4, *args[1:]) == previous + pairing_two
    estimates = {}
    for planner_cls in (HPNPlanner, HPNStarPlanner):
        planner = planner_cls(realistic_dataset)
        # a four-phase dataset.json: four channels, and no reference phase stored for the two-phase dataset's names
        four_phases = {key: value for key, value in planner.dataset_json.items() if key != "hpn"}
        planner.dataset_json = dict(four_phases, channel_names={str(c): f"phase{c}" for c in range(4)})
        estimates[planner_cls.__name__] = planner.static_estimate_VRAM_usage(args[0], 4, 4, *args[1:])
        with torch.device("meta"):
            network = get_network_from_plans(args[1], dict(kwargs, hyper_connections=planner.hyper_connections()),
                                             args[3], 4, 4, allow_init=False)
        assert network.n_paths == 4
        assert estimates[planner_cls.__name__] == (network.compute_conv_feature_map_size(args[0])
                                                   + planner.pairing_loss_feature_map_size(args[0], kwargs))
    assert estimates["HPNPlanner"] > estimates["HPNStarPlanner"] > 1.5 * previous


def test_four_phases_fit_the_memory_target_with_smaller_patches(realistic_hpn_plan, realistic_four_phase_dataset,
                                                                planned_dataset, monkeypatch):
    """nnU-Net's patch search with the K-path estimate: 4 paths (36 connections) fit the same memory target with a
    smaller patch than 2 (the star pattern's smaller estimate: test_memory_estimate_counts_k_paths_and_the_pattern)."""
    from nnunet_hpn.nnunet.planners import HPNPlanner

    four = _plan(HPNPlanner, realistic_four_phase_dataset, planned_dataset["env"], monkeypatch)
    assert np.prod(four["patch_size"]) < np.prod(realistic_hpn_plan["patch_size"])
    assert four["architecture"]["arch_kwargs"]["path_channels"] == [0, 1, 2, 3]
    assert len(four["architecture"]["arch_kwargs"]["hyper_connections"]) == 36
    assert _estimate(four, channels=4) * (four["batch_size"] - 0.5) / 2 <= REFERENCE_3D


def test_planners_share_data_only_where_the_spacing_is_the_same(realistic_dataset, planned_dataset, monkeypatch):
    """HPNPlanner, HPNResDSNPlanner and HPNStarPlanner on a 96×512×512 fingerprint: configurations with the same
    data identifier have the same spacing (2d, 3d_fullres reuse nnUNetHPNPlans' data), and 3d_lowres, whose spacing
    comes out of each network's memory search, gets a folder of its own where the spacings differ."""
    from nnunet_hpn.nnunet.planners import HPNPlanner, HPNResDSNPlanner
    from nnunet_hpn.nnunet.planners.hpn_planner import HPN_PLANS_NAME, HPNStarPlanner

    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(key, planned_dataset["env"][key])
    spacing_of: dict[str, list] = {}
    lowres_identifiers = {}
    for planner_cls in (HPNPlanner, HPNResDSNPlanner, HPNStarPlanner):
        planner = planner_cls(realistic_dataset)
        planner.plan_experiment()
        configurations = planner.plans["configurations"]
        assert "3d_lowres" in configurations
        assert configurations["3d_fullres"]["data_identifier"] == f"{HPN_PLANS_NAME}_3d_fullres"
        for name, config in configurations.items():
            if "data_identifier" not in config:  # the cascade inherits 3d_fullres'
                continue
            spacing = [round(float(s), 6) for s in config["spacing"]]
            assert spacing_of.setdefault(config["data_identifier"], spacing) == spacing, (planner_cls, name)
        lowres_identifiers[planner_cls.__name__] = configurations["3d_lowres"]["data_identifier"]
    # each network's memory search may end at another 3d_lowres spacing: every plans name keeps its own folder
    assert len(set(lowres_identifiers.values())) == 3


def test_memory_estimate_counts_the_pairing_loss_tensors(realistic_dataset, planned_dataset, monkeypatch):
    """The pairing loss's tensors in the estimate: as many float32 maps as the loss saves for its backward pass
    (counted with autograd's saved-tensor hooks) plus the two in flight, converted by nnU-Net's own reference."""
    from nnunet_hpn.model.pairing_loss import pairing_loss, pairing_loss_float32_maps
    from nnunet_hpn.nnunet.planners import HPNPlanner

    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(key, planned_dataset["env"][key])
    channels, patch = 4, (8, 16, 16)
    for n_paths in (2, 3):
        features = [torch.randn(1, channels, *patch, requires_grad=True) for _ in range(n_paths)]
        inputs, saved = {f.data_ptr() for f in features}, {}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            if tensor.data_ptr() not in inputs and tensor.numel() == channels * int(np.prod(patch)):
                saved[tensor.data_ptr()] = tensor.dtype
            return tensor
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            pairing_loss(features)
        assert set(saved.values()) == {torch.float32}
        assert pairing_loss_float32_maps(n_paths) == len(saved) + 2
    planner = HPNPlanner(realistic_dataset)
    kwargs = {"features_per_stage": [32, 64]}
    size = planner.pairing_loss_feature_map_size((64, 128, 128), kwargs)
    n_bytes = pairing_loss_float32_maps(2) * 32 * 64 * 128 * 128 * 4
    # nnU-Net's reference: 560e6 units per sample at batch 2 fill 8 GB
    assert size == pytest.approx(n_bytes / (8 * 2 ** 30 / (560e6 * 2)), rel=1e-6)
    assert planner.estimate_in_gib(size, 2) == pytest.approx(2 * n_bytes / 2 ** 30, rel=1e-6)
