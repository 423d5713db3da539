"""Numerics of HPN training: the pairing loss and a whole nnU-Net training step stay finite under autocast for
constant, tiny and huge values; two seeded CPU trainings give identical weights.

(tests/test_pairing_loss.py covers the pairing loss in float32 and plain bfloat16; these add reduced precision at
extreme magnitudes and the step through the trainer.)
"""
import copy
import json
import random

import numpy as np
import pytest
import torch

from conftest import TINY_CONFIGURATION
from nnunet_hpn.model.pairing_loss import pairing_loss
from nnunet_hpn.nnunet.trainers import hpn_trainer

SHAPE = (2, 4, 4, 6, 6)  # (B, C, *spatial) decoder features


def _features(seed: int) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


def _pair(kind: str, dtype: torch.dtype) -> tuple:
    """Two correlated feature maps of the given kind, in ``dtype``."""
    fa = _features(0)
    fb = 0.5 * fa + _features(1)
    if kind == "constant":
        fa = torch.full(SHAPE, 3.0)
    elif kind == "zero":
        fa, fb = torch.zeros(SHAPE), torch.zeros(SHAPE)
    else:
        scale = {"tiny": 1e-20, "huge": 1e15, "fp16_tiny": 1e-6, "fp16_huge": 6e4}[kind]
        fa, fb = fa * scale / fa.abs().max(), fb * scale / fb.abs().max()
    return fa.to(dtype), fb.to(dtype)


@pytest.mark.parametrize("dtype,kinds", [
    (torch.bfloat16, ("constant", "zero", "tiny", "huge")),
    (torch.float16, ("constant", "zero", "fp16_tiny", "fp16_huge")),  # float16: 6e-8 .. 65504
])
def test_pairing_loss_under_autocast_at_extreme_values(dtype, kinds):
    for kind in kinds:
        fa, fb = (f.requires_grad_(True) for f in _pair(kind, dtype))
        with torch.autocast("cpu", dtype=dtype):
            loss = pairing_loss([fa, fb])
        loss.backward()
        assert loss.dtype == torch.float32 and torch.isfinite(loss), (kind, loss)
        assert torch.isfinite(fa.grad).all() and torch.isfinite(fb.grad).all(), kind
        if kind in ("constant", "zero"):
            assert loss.item() == 0.0  # correlation with a constant map is defined as 0
        else:  # scale-invariant: the same value as the well-scaled float32 pair
            reference = pairing_loss([fa.detach().float() / fa.detach().float().abs().max(),
                                      fb.detach().float() / fb.detach().float().abs().max()])
            assert loss.item() == pytest.approx(reference.item(), abs=1e-4), kind
            assert fa.grad.abs().max() > 0, kind  # the gradient did not underflow to zero


@pytest.fixture()
def make_trainer(planned_dataset, monkeypatch):
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(key, planned_dataset["env"][key])
    dataset_json = json.loads((planned_dataset["raw"] / "dataset.json").read_text())

    def make(name: str, initialize: bool = True):
        plans = dict(copy.deepcopy(planned_dataset["plans"]), continue_training=False)
        trainer = getattr(hpn_trainer, name)(plans=plans, configuration=TINY_CONFIGURATION, fold=0,
                                             dataset_json=dataset_json, device=torch.device("cpu"))
        if initialize:
            trainer.initialize()
        return trainer
    return make


def _batch(trainer, images: torch.Tensor) -> dict:
    rng = np.random.default_rng(0)
    labels = torch.from_numpy(rng.integers(0, 4, (images.shape[0], 1, *images.shape[2:])).astype(np.float32))
    targets = [torch.nn.functional.interpolate(labels, scale_factor=tuple(s), mode="nearest")
               for s in trainer._get_deep_supervision_scales()]
    return {"data": images, "target": targets}


@pytest.mark.parametrize("kind", ["constant", "zero", "tiny", "huge"])
def test_whole_training_step_is_finite_under_bf16_autocast(make_trainer, kind):
    trainer = make_trainer("HPNTrainer")
    shape = (trainer.batch_size, 2, *trainer.configuration_manager.patch_size)
    images = torch.from_numpy(np.random.default_rng(1).standard_normal(shape).astype(np.float32))
    images = {"constant": torch.full(shape, 5.0), "zero": torch.zeros(shape), "tiny": images * 1e-20,
              "huge": images * 1e15}[kind]
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # nnU-Net autocasts on CUDA only; forward + loss inside
        result = trainer.train_step(_batch(trainer, images))  # backward, clipping and SGD step as nnU-Net does
    assert np.isfinite(result["loss"]), result
    assert trainer.loss.pairing_count == 1  # the pairing loss was part of the step
    assert np.isfinite(trainer.loss.pop_mean_pairing_loss())
    for name, parameter in trainer.network.named_parameters():
        assert torch.isfinite(parameter).all(), name
        assert parameter.grad is None or torch.isfinite(parameter.grad).all(), name


def _seeded_training(make_trainer, seed: int) -> tuple:
    """A short in-process training (2 epochs x 3 iterations, virtual pairs and pairing loss) -> initial and final
    weights."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    trainer = make_trainer("HPNTrainer_virtual", initialize=False)
    trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch = 2, 3, 1
    trainer.initialize()
    initial = {k: v.detach().clone() for k, v in trainer.network.state_dict().items()}
    trainer.run_training()
    return initial, {k: v.detach().clone() for k, v in trainer.network.state_dict().items()}


def test_two_seeded_cpu_trainings_give_identical_weights(make_trainer, monkeypatch):
    # nnUNet_n_proc_DA=0: nnU-Net's SingleThreadedAugmenter draws from the seeded global RNGs in this process (its
    # multi-process augmenter hands batches over in arrival order, which is not reproducible)
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        initial, first = _seeded_training(make_trainer, seed=7)
        _, second = _seeded_training(make_trainer, seed=7)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], initial[k]) for k in first)  # it did train


def test_hpn_seed_gives_identical_initial_weights_and_save_every_is_read(make_trainer, monkeypatch):
    monkeypatch.setenv("HPN_SEED", "11")
    monkeypatch.setenv("HPN_SAVE_EVERY", "5")
    first, second = make_trainer("HPNTrainer"), make_trainer("HPNTrainer")
    assert first.save_every == second.save_every == 5
    assert all(torch.equal(a, b) for a, b in zip(first.network.state_dict().values(),
                                                  second.network.state_dict().values()))
    monkeypatch.setenv("HPN_SEED", "12")
    third = make_trainer("HPNTrainer")
    assert not all(torch.equal(a, b) for a, b in zip(first.network.state_dict().values(),
                                                      third.network.state_dict().values()))
