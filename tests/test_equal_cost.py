"""HPNTrainer_equalcost: narrower paths, forward FLOPs within nnU-Net's at the same plans, found by the stock lookup,
trains on CPU, and the predictor rebuilds the same network."""
import copy
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch.utils.flop_counter import FlopCounterMode

from conftest import TINY_CONFIGURATION
from nnunet_hpn.nnunet.trainers import __all__ as TRAINER_NAMES
from nnunet_hpn.nnunet.trainers.equal_cost import (
    HPNTrainer_equalcost,
    HPNTrainer_equalcost_demo,
    narrowed_features,
    round_width,
)
from nnunet_hpn.nnunet.trainers.hpn_trainer import (EarlyFusionTrainer, HPNTrainer, HPNTrainer_demo,
                                             SegmentationPlusPairingLoss)

N_CLASSES = 4


def _real_flops(network: torch.nn.Module, patch) -> int:
    """FLOPs of one forward pass of a real (CPU) network, batch 1, counted independently of the module's helper."""
    network.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        network(torch.zeros(1, 2, *patch))
    return counter.get_total_flops()


def _resdsn(configuration: ConfigurationManager) -> ConfigurationManager:
    """The same plans entry as HPNResDSNPlanner would write it (residual encoder, 1 block per stage)."""
    entry = copy.deepcopy(configuration.configuration)
    entry["architecture"]["network_class_name"] = "nnunet_hpn.model.network.HyperPairedResDSN"
    kwargs = entry["architecture"]["arch_kwargs"]
    kwargs["n_conv_per_stage"] = [1] * kwargs["n_stages"]
    return ConfigurationManager(entry)


def test_width_rounding() -> None:
    widths = (0.2, 1.4, 2.5, 7.4, 7.6, 11.9, 12.1, 19.9, 20.1, 201.0)
    assert [round_width(w) for w in widths] == [1, 1, 3, 7, 8, 8, 16, 16, 24, 200]
    assert narrowed_features([32, 64, 128, 256, 320], 0.625) == [24, 40, 80, 160, 200]
    assert narrowed_features([8, 16], 1.0) == [8, 16]


@pytest.mark.parametrize("configuration_name", ["3d_fullres", TINY_CONFIGURATION])
@pytest.mark.parametrize("backbone", ["unet", "resdsn"])
def test_flops_within_nnunet_at_the_same_plans(planned_dataset, configuration_name: str, backbone: str) -> None:
    configuration = PlansManager(planned_dataset["plans"]).get_configuration(configuration_name)
    if backbone == "resdsn":
        configuration = _resdsn(configuration)
    patch = configuration.patch_size
    torch.manual_seed(0)
    nnunet = EarlyFusionTrainer.build_network_architecture(None, configuration, 2, N_CLASSES, False)
    full = HPNTrainer.build_network_architecture(None, configuration, 2, N_CLASSES, False)
    narrow = HPNTrainer_equalcost.build_network_architecture(None, configuration, 2, N_CLASSES, False)
    nnunet_flops, full_flops, narrow_flops = (_real_flops(n, patch) for n in (nnunet, full, narrow))
    assert full_flops > 2 * nnunet_flops  # what the variant is for
    assert narrow_flops <= HPNTrainer_equalcost.target_flop_ratio * nnunet_flops <= 1.1 * nnunet_flops
    assert narrow_flops > 0.6 * nnunet_flops  # not narrowed further than the budget needs
    full_features = configuration.network_arch_init_kwargs["features_per_stage"]
    narrow_features = list(narrow.encoder.output_channels)
    assert all(n < f for n, f in zip(narrow_features, full_features)) or full_features[0] < 2
    # everything but the widths is HPN's: two paths, all hyper-connections, same depth
    assert narrow.n_paths == 2 and narrow.hyper_connections == full.hyper_connections
    assert len(narrow_features) == len(full_features) and type(narrow) is type(full)
    kwargs, factor, ratio = HPNTrainer_equalcost.equal_cost_network_kwargs(configuration, 2, N_CLASSES)
    assert kwargs["features_per_stage"] == narrow_features and 0.25 <= factor < 1
    assert ratio == pytest.approx(narrow_flops / nnunet_flops)


def test_trainers_are_exported_and_found_by_the_stock_lookup() -> None:
    assert {"HPNTrainer_equalcost", "HPNTrainer_equalcost_demo"} <= set(TRAINER_NAMES)
    code = textwrap.dedent("""
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
        for name in ("HPNTrainer_equalcost", "HPNTrainer_equalcost_demo"):
            cls = recursive_find_trainer_class_by_name(name)
            print("FOUND", name, cls.__module__, cls.target_flop_ratio)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for name in ("HPNTrainer_equalcost", "HPNTrainer_equalcost_demo"):
        assert f"FOUND {name} nnunet_hpn.nnunet.trainers.equal_cost 1.0" in proc.stdout


def test_demo_variant_keeps_the_demo_budget() -> None:
    assert HPNTrainer_equalcost_demo.short_budget == HPNTrainer_demo.short_budget
    assert HPNTrainer_equalcost_demo.pairing_warmup_epochs == 12
    assert HPNTrainer_equalcost_demo.build_network_architecture.__func__ is \
        HPNTrainer_equalcost.build_network_architecture.__func__


def test_trains_on_cpu_and_the_predictor_rebuilds_the_same_network(planned_dataset, monkeypatch) -> None:
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(key, planned_dataset["env"][key])
    dataset_json = json.loads((planned_dataset["raw"] / "dataset.json").read_text())
    plans = dict(copy.deepcopy(planned_dataset["plans"]), continue_training=False)
    trainer = HPNTrainer_equalcost(plans=plans, configuration=TINY_CONFIGURATION, fold=0, dataset_json=dataset_json,
                                   device=torch.device("cpu"))
    trainer.initialize()
    assert isinstance(trainer.loss, SegmentationPlusPairingLoss)  # the pairing loss stays
    configuration = trainer.configuration_manager
    rng = np.random.default_rng(0)
    patch, batch = configuration.patch_size, configuration.batch_size
    labels = torch.from_numpy(rng.integers(0, N_CLASSES, (batch, 1, *patch)).astype(np.float32))
    targets = [torch.nn.functional.interpolate(labels, scale_factor=tuple(s), mode="nearest")
               for s in trainer._get_deep_supervision_scales()]
    data = torch.from_numpy(rng.standard_normal((batch, 2, *patch)).astype(np.float32))
    losses = [float(trainer.train_step({"data": data, "target": targets})["loss"]) for _ in range(2)]
    assert all(np.isfinite(losses))
    # nnUNetv2_predict rebuilds with deep supervision off: same widths, so the checkpoint loads strictly
    for_inference = HPNTrainer_equalcost.build_network_architecture(
        trainer.plans_manager, configuration, trainer.num_input_channels, N_CLASSES, enable_deep_supervision=False)
    for_inference.load_state_dict(trainer.network.state_dict(), strict=True)
    assert list(for_inference.encoder.output_channels) == list(trainer.network.encoder.output_channels)
    assert list(trainer.network.encoder.output_channels) != configuration.network_arch_init_kwargs[
        "features_per_stage"]
