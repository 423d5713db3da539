"""The Table-1 trainer family: found by nnU-Net's stock lookup, a few CPU training steps each, single-phase rows
ignore the other phase, virtual pairs only in the training pipeline."""
import copy
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from conftest import TINY_CONFIGURATION
import nnunet_hpn.nnunet.trainers as trainers
from nnunet_hpn.nnunet.trainers import __all__ as TRAINER_NAMES
from nnunet_hpn.nnunet.trainers import hpn_trainer
from nnunet_hpn.augment.virtual_pairs import VirtualPairTransform


def test_every_trainer_is_found_by_the_stock_lookup_in_a_fresh_interpreter():
    code = textwrap.dedent(f"""
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
        for name in {list(TRAINER_NAMES)!r}:
            print("FOUND", name, recursive_find_trainer_class_by_name(name).__module__)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for name in TRAINER_NAMES:
        assert f"FOUND {name} {getattr(trainers, name).__module__}" in proc.stdout


@pytest.fixture()
def make_trainer(planned_dataset, monkeypatch):
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(key, planned_dataset["env"][key])
    dataset_json = json.loads((planned_dataset["raw"] / "dataset.json").read_text())

    def make(name: str):
        cls = getattr(trainers, name)
        plans = dict(copy.deepcopy(planned_dataset["plans"]), continue_training=False)  # as nnUNetv2_train passes it
        trainer = cls(plans=plans, configuration=TINY_CONFIGURATION, fold=0,
                      dataset_json=dataset_json, device=torch.device("cpu"))
        trainer.initialize()
        return trainer
    return make


def _batch(trainer, rng: np.random.Generator) -> dict:
    patch = trainer.configuration_manager.patch_size
    batch = trainer.configuration_manager.batch_size
    data = torch.from_numpy(rng.standard_normal((batch, 2, *patch)).astype(np.float32))
    labels = torch.from_numpy(rng.integers(0, 4, (batch, 1, *patch)).astype(np.float32))
    targets = [torch.nn.functional.interpolate(labels, scale_factor=tuple(s), mode="nearest")
               for s in trainer._get_deep_supervision_scales()]
    return {"data": data, "target": targets}


@pytest.mark.parametrize("name", TRAINER_NAMES)
def test_trainer_runs_cpu_training_steps(make_trainer, name):
    trainer = make_trainer(name)
    rng = np.random.default_rng(0)
    before = {n: p.detach().clone() for n, p in trainer.network.named_parameters()}
    losses = [float(trainer.train_step(_batch(trainer, rng))["loss"]) for _ in range(3)]
    assert all(np.isfinite(losses))
    unchanged = [n for n, p in trainer.network.named_parameters() if torch.equal(before[n], p.detach())]
    # outside DDP nnU-Net gives the lowest-resolution deep-supervision output the weight 0 (under DDP 1e-6), so
    # only that head (seg_layers[0]: heads are built bottom-up, like UNetDecoder's) may stay untouched
    assert all("seg_layers.0." in n for n in unchanged), unchanged
    network = hpn_trainer.unwrap_network(trainer.network)
    if name.startswith("EarlyFusionTrainer"):
        assert type(network).__name__ == "PlainConvUNet" and not hasattr(network, "path_channels")
        assert not isinstance(trainer.loss, hpn_trainer.SegmentationPlusPairingLoss)
        return
    expected_paths = list(getattr(trainers, name).phase_channels or (0, 1))  # single-phase rows: one path
    assert network.path_channels == expected_paths
    assert (len(network.hyper_connections) == 6) == (len(expected_paths) == 2)
    uses_pairing = getattr(trainers, name).pairing_loss_weight > 0 and len(expected_paths) == 2
    assert isinstance(trainer.loss, hpn_trainer.SegmentationPlusPairingLoss) == uses_pairing


@pytest.mark.parametrize("name,channel", [("SinglePhaseTrainer_arterial", 1), ("SinglePhaseTrainer_venous", 0)])
def test_single_phase_ignores_the_other_channel(make_trainer, name, channel):
    trainer = make_trainer(name)
    network = trainer.network.eval()
    trainer.set_deep_supervision_enabled(False)
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.standard_normal((1, 2, *trainer.configuration_manager.patch_size)).astype(np.float32))
    noisy = x.clone()
    noisy[:, channel] = torch.from_numpy(rng.standard_normal(noisy[:, channel].shape).astype(np.float32)) * 100
    with torch.no_grad():
        assert torch.equal(network(x), network(noisy))
        other = x.clone()
        other[:, 1 - channel] += 1.0  # the channel the model does read changes the output
        assert not torch.equal(network(x), network(other))


@pytest.mark.parametrize("name", TRAINER_NAMES)
def test_virtual_pairs_only_in_training_pipeline(make_trainer, name):
    trainer = make_trainer(name)
    patch = trainer.configuration_manager.patch_size
    training = trainer.get_training_transforms(patch, ((0, 0),) * 3, None, (0, 1, 2), False)
    validation = trainer.get_validation_transforms(None)
    has_virtual = any(isinstance(t, VirtualPairTransform) for t in training.transforms)
    assert has_virtual == (getattr(trainers, name).virtual_pair_alpha is not None)
    assert not any(isinstance(t, VirtualPairTransform) for t in validation.transforms)


def test_pairing_weight_is_constant_for_hpn_and_ramped_for_the_demo(make_trainer):
    hpn, demo = make_trainer("HPNTrainer"), make_trainer("HPNTrainer_demo")
    weights = {}
    for trainer in (hpn, demo):
        weights[type(trainer).__name__] = []
        for epoch in (0, 6, 12, 17):
            trainer.current_epoch = epoch
            weights[type(trainer).__name__].append(trainer.current_pairing_weight())
    assert weights["HPNTrainer"] == [0.5] * 4  # the paper's constant λ
    assert weights["HPNTrainer_demo"] == [0.0, 0.25, 0.5, 0.5]
    assert (demo.num_epochs, demo.num_iterations_per_epoch, demo.oversample_foreground_percent) == (40, 25, 1.0)
    assert demo.initial_lr == 0.03 and hpn.initial_lr == 0.01  # nnU-Net's default for every Table-1 row
    assert demo.optimizer.param_groups[0]["lr"] == 0.03


def test_cross_entropy_class_weights_reach_every_ce_term(make_trainer):
    """``ce_class_weights`` weights nnU-Net's CE inside Dice + CE and the deep-supervision wrapper; None keeps it."""
    plain = make_trainer("HPNTrainer")
    terms = [m for m in plain.loss.modules() if isinstance(m, torch.nn.CrossEntropyLoss)]
    assert terms and all(term.weight is None for term in terms)

    weighted = make_trainer("HPNTrainer_demo")
    terms = [m for m in weighted.loss.modules() if isinstance(m, torch.nn.CrossEntropyLoss)]
    # {"PDAC": 4, "duct": 4} by name, on the paper's labels (background, pancreas, PDAC, duct)
    assert terms and all(term.weight.tolist() == [1.0, 1.0, 4.0, 4.0] for term in terms)
    # pancreas voxels right, PDAC voxels wrong: the weighted mean leans towards the PDAC error
    target = torch.ones(1, 1, 4, 4, 4)
    target[..., 2:] = 2.0
    logits = torch.zeros(1, 4, 4, 4, 4)
    logits[:, 1, ..., :2] = 5.0
    logits[:, 0, ..., 2:] = 5.0
    plain_ce = next(m for m in plain.loss.modules() if isinstance(m, torch.nn.CrossEntropyLoss))
    assert terms[0](logits, target).item() > 1.5 * plain_ce(logits, target).item()
    with pytest.raises(ValueError, match="3 cross-entropy class weights for 4 classes"):
        hpn_trainer.weight_cross_entropy(plain.loss, (1.0, 1.0, 2.0), 4, torch.device("cpu"))


@pytest.mark.parametrize("name", ["HPNTrainer", "SinglePhaseTrainer_arterial", "HPNTrainer_phasedropout"])
def test_cascade_stage1_channels_reach_every_path(make_trainer, name):
    """3d_cascade_fullres appends the previous stage's one-hot segmentation (3 foreground labels) after the phases:
    the network reads them in every path, a single-phase row still ignores the other phase, and phase dropout never
    blanks them."""
    from nnunet_hpn.augment.phase_dropout import PhaseDropoutTransform

    trainer = make_trainer(name)
    n_phases, n_labels = 2, len(trainer.label_manager.foreground_labels)
    network = trainer.build_network_architecture(trainer.plans_manager, trainer.configuration_manager,
                                                 n_phases + n_labels, 4, enable_deep_supervision=False).eval()
    assert network.context_channels == [2, 3, 4]
    rng = np.random.default_rng(3)
    patch = trainer.configuration_manager.patch_size
    x = torch.from_numpy(rng.standard_normal((1, n_phases, *patch)).astype(np.float32))
    stage1 = torch.zeros((1, n_labels, *patch))
    other_stage1 = stage1.clone()
    other_stage1[:, 1, 2:6, 2:6, 2:6] = 1.0  # a PDAC blob in the stage-1 segmentation
    with torch.no_grad():
        reference = network(torch.cat((x, stage1), 1))
        assert not torch.equal(reference, network(torch.cat((x, other_stage1), 1)))
        if name == "SinglePhaseTrainer_arterial":
            noisy = x.clone()
            noisy[:, 1] *= 100
            assert torch.equal(reference, network(torch.cat((noisy, stage1), 1)))
    if name == "HPNTrainer_phasedropout":
        pipeline = trainer.get_training_transforms(patch, ((0, 0),) * 3, None, (0, 1, 2), False, is_cascaded=True,
                                                   foreground_labels=trainer.label_manager.foreground_labels)
        dropout = pipeline.transforms[-1]
        assert isinstance(dropout, PhaseDropoutTransform) and dropout.n_context_channels == n_labels
        image = torch.ones((n_phases + n_labels, 4, 4, 4))
        for _ in range(50):
            dropout.p = 1.0
            params = dropout.get_parameters(image=image)
            assert params["dropped"] and set(params["dropped"]) <= {0, 1}


@pytest.mark.parametrize("name", ["HPNTrainer", "HyperNetTrainer", "SinglePhaseTrainer_venous"])
def test_pairing_features_are_kept_only_where_the_pairing_loss_reads_them(make_trainer, name):
    trainer = make_trainer(name)
    network = hpn_trainer.unwrap_network(trainer.network).train()
    uses_pairing = isinstance(trainer.loss, hpn_trainer.SegmentationPlusPairingLoss)
    assert uses_pairing == (name == "HPNTrainer")
    patch = trainer.configuration_manager.patch_size
    network(torch.zeros((1, 2, *patch)))
    features = network.pop_pairing_features()
    assert (features is not None) == uses_pairing
    if uses_pairing:
        assert len(features) == 2 and features[0].shape[2:] == tuple(patch)


@pytest.mark.parametrize("name", ["HPNTrainer_balanced", "HyperNetTrainer_virtual_balanced",
                                  "SinglePhaseTrainer_arterial_balanced"])
def test_balanced_recipe_changes_only_its_settings(make_trainer, name):
    """The balanced recipe (Table 1 v2): CE of PDAC and duct weighted 4, every patch on foreground, LR 0.03, λ ramped
    up over 12 epochs; the row's network, pairing loss and virtual pairs stay its parent's."""
    trainer = make_trainer(name)
    parent = type(trainer).__mro__[2]
    assert parent.__name__ == name[:-len("_balanced")]
    assert (trainer.oversample_foreground_percent, trainer.initial_lr) == (1.0, 0.03)
    assert trainer.optimizer.param_groups[0]["lr"] == 0.03
    terms = [m for m in trainer.loss.modules() if isinstance(m, torch.nn.CrossEntropyLoss)]
    assert terms and all(term.weight.tolist() == [1.0, 1.0, 4.0, 4.0] for term in terms)
    assert (trainer.pairing_loss_weight, trainer.virtual_pair_alpha) == (parent.pairing_loss_weight,
                                                                         parent.virtual_pair_alpha)
    assert trainer.hpn_settings()["network"] == make_trainer(parent.__name__).hpn_settings()["network"]
    trainer.current_epoch = 6
    assert trainer.current_pairing_weight() == pytest.approx(parent.pairing_loss_weight / 2)
