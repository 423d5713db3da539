"""Tests of nnunet_hpn.augment.virtual_pairs: Beta draws (two phases, unchanged), Dirichlet weights (K phases), the
mixing formula, placement in nnU-Net's pipeline."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from batchgeneratorsv2.transforms.utils.pseudo2d import Convert2DTo3DTransform
from batchgeneratorsv2.transforms.utils.random import RandomTransform
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from scipy.stats import beta as beta_distribution

from nnunet_hpn.augment.virtual_pairs import VirtualPairTransform, draw_mixing_weights, insert_virtual_pairs

PATCH_SIZE = (16, 16, 16)
ROTATION = (-np.pi / 6, np.pi / 6)  # nnU-Net's 3D default range


def mixing_matrix(weights) -> np.ndarray:
    """(K, K) circulant matrix ``W[k, j] = weights[(j - k) mod K]``: output phase k = sum_j W[k, j] * input phase j
    (the transform's formula as one matrix, the tests' oracle)."""
    weights = np.asarray(weights, dtype=float)
    n = len(weights)
    return np.array([[weights[(j - k) % n] for j in range(n)] for k in range(n)])


def draw_many(transform: VirtualPairTransform, n: int, key: str = "l", n_channels: int = 2) -> np.ndarray:
    image = torch.zeros((n_channels, 1, 1, 1))
    return np.array([transform.get_parameters(image=image)[key] for _ in range(n)])


def random_pair(n_channels: int = 2, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((n_channels, *PATCH_SIZE), generator=generator)


def stock_training_pipeline(do_dummy_2d_data_aug: bool = False):
    return nnUNetTrainer.get_training_transforms(patch_size=PATCH_SIZE, rotation_for_DA=ROTATION,
                                                 deep_supervision_scales=None, mirror_axes=(0, 1, 2),
                                                 do_dummy_2d_data_aug=do_dummy_2d_data_aug)


# ---------------------------------------------------------------- draws of l

def test_draws_follow_beta_0_4() -> None:
    np.random.seed(0)
    draws = draw_many(VirtualPairTransform(alpha=0.4), 20000)
    assert np.all((draws >= 0) & (draws <= 1))
    assert abs(draws.mean() - 0.5) < 0.01
    expected_below = beta_distribution.cdf(0.1, 0.4, 0.4)  # ~0.27: U-shaped, mass near 0 and 1
    assert abs(np.mean(draws < 0.1) - expected_below) < 0.015
    assert abs(np.mean(draws > 0.9) - (1 - beta_distribution.cdf(0.9, 0.4, 0.4))) < 0.015
    assert abs(np.mean((draws > 0.4) & (draws < 0.6)) - (beta_distribution.cdf(0.6, 0.4, 0.4)
                                                          - beta_distribution.cdf(0.4, 0.4, 0.4))) < 0.015


def test_draws_use_numpy_rng_not_torch() -> None:
    transform = VirtualPairTransform()
    torch.manual_seed(7)
    np.random.seed(1)
    first = draw_many(transform, 8)
    torch.manual_seed(7)
    np.random.seed(2)
    second = draw_many(transform, 8)
    torch.manual_seed(123)
    np.random.seed(1)
    third = draw_many(transform, 8)
    assert not np.allclose(first, second)     # same torch state, different numpy seed -> different draws
    np.testing.assert_array_equal(first, third)  # numpy seed alone determines the draws


def test_fixed_l_is_returned_and_validated() -> None:
    assert VirtualPairTransform(fixed_l=0.25, channels=(0, 1)).get_parameters()["l"] == 0.25
    with pytest.raises(ValueError):
        VirtualPairTransform(fixed_l=1.5)
    with pytest.raises(ValueError):
        VirtualPairTransform(alpha=0)
    with pytest.raises(ValueError):
        VirtualPairTransform(channels=(1, 1))


def test_two_phases_draw_exactly_the_previous_beta_values():
    """K = 2: the same np.random.beta(0.4, 0.4) draw per sample as before K phases, and the same image, bit for bit."""
    image = random_pair(seed=5)
    for seed in range(5):
        np.random.seed(seed)
        expected = [float(np.random.beta(0.4, 0.4)) for _ in range(6)]
        np.random.seed(seed)
        assert list(draw_many(VirtualPairTransform(), 6)) == expected
        np.random.seed(seed)
        assert list(draw_many(VirtualPairTransform(), 6, key="weights")[:, 1]) == [1.0 - l for l in expected]
        np.random.seed(seed)
        mixed = VirtualPairTransform()(image=image.clone())["image"]
        l = expected[0]
        assert torch.equal(mixed[0], l * image[0] + (1.0 - l) * image[1])
        assert torch.equal(mixed[1], l * image[1] + (1.0 - l) * image[0])


def test_three_phases_dirichlet_weights():
    np.random.seed(0)
    weights = draw_many(VirtualPairTransform(alpha=0.4), 6000, key="weights", n_channels=3)
    assert weights.shape == (6000, 3) and np.all(weights >= 0)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)
    np.testing.assert_allclose(weights.mean(axis=0), 1 / 3, atol=0.015)
    # Dir(0.4, 0.4, 0.4): each weight is Beta(0.4, 0.8), mostly near 0 or 1
    assert abs(np.mean(weights[:, 0] < 0.1) - beta_distribution.cdf(0.1, 0.4, 0.8)) < 0.02
    matrix = mixing_matrix(weights[0])
    np.testing.assert_allclose(matrix.sum(axis=0), 1.0)
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0)
    with pytest.raises(ValueError):
        draw_mixing_weights(0.4, 1)


def test_three_phases_mixing_formula_labels_untouched():
    image = random_pair(n_channels=3, seed=6)
    segmentation = torch.randint(0, 4, (1, *PATCH_SIZE), dtype=torch.int16)
    weights = (0.5, 0.3, 0.2)
    out = VirtualPairTransform(fixed_weights=weights)(image=image.clone(), segmentation=segmentation)
    assert out["segmentation"] is segmentation
    expected = torch.einsum("kj,j...->k...", torch.tensor(mixing_matrix(weights), dtype=torch.float32), image)
    torch.testing.assert_close(out["image"], expected)
    torch.testing.assert_close(out["image"].sum(0), image.sum(0))  # the sum of the phases is kept
    shifted = VirtualPairTransform(fixed_weights=(0, 1, 0))(image=image.clone())["image"]
    torch.testing.assert_close(shifted, image[[1, 2, 0]], rtol=0, atol=0)  # a one-hot w relabels the phases
    identity = VirtualPairTransform(fixed_weights=(1, 0, 0))(image=image.clone())["image"]
    torch.testing.assert_close(identity, image, rtol=0, atol=0)
    with pytest.raises(ValueError, match="fixed_l is for two phases"):
        VirtualPairTransform(fixed_l=0.5)(image=image)
    with pytest.raises(ValueError, match="fixed_weights"):
        VirtualPairTransform(fixed_weights=(0.5, 0.6))


# ---------------------------------------------------------------- the interpolation

def test_l_one_is_identity_and_l_zero_swaps() -> None:
    image = random_pair()
    unchanged = VirtualPairTransform(fixed_l=1.0)(image=image.clone())["image"]
    torch.testing.assert_close(unchanged, image, rtol=0, atol=0)
    swapped = VirtualPairTransform(fixed_l=0.0)(image=image.clone())["image"]
    torch.testing.assert_close(swapped[0], image[1], rtol=0, atol=0)
    torch.testing.assert_close(swapped[1], image[0], rtol=0, atol=0)


def test_exact_formula_sum_preserved_other_channels_untouched() -> None:
    image = random_pair(n_channels=3, seed=1)
    original = image.clone()
    weight = 0.3
    mixed = VirtualPairTransform(fixed_l=weight, channels=(0, 1))(image=image)["image"]
    torch.testing.assert_close(image, original, rtol=0, atol=0)  # input not modified
    torch.testing.assert_close(mixed[0], weight * original[0] + (1 - weight) * original[1])
    torch.testing.assert_close(mixed[1], weight * original[1] + (1 - weight) * original[0])
    torch.testing.assert_close(mixed[0] + mixed[1], original[0] + original[1])
    torch.testing.assert_close(mixed[2], original[2], rtol=0, atol=0)


def test_custom_channels() -> None:
    image = random_pair(n_channels=3, seed=2)
    swapped = VirtualPairTransform(channels=(2, 0), fixed_l=0.0)(image=image.clone())["image"]
    torch.testing.assert_close(swapped, image[[2, 1, 0]], rtol=0, atol=0)
    with pytest.raises(ValueError, match="channels"):
        VirtualPairTransform(channels=(0, 3), fixed_l=0.5)(image=image)


def test_segmentation_is_not_touched() -> None:
    segmentation = torch.randint(0, 4, (1, *PATCH_SIZE), dtype=torch.int16)
    out = VirtualPairTransform(fixed_l=0.0)(image=random_pair(), segmentation=segmentation)
    assert out["segmentation"] is segmentation


# ---------------------------------------------------------------- nnU-Net's pipeline

@pytest.mark.parametrize("dummy_2d", [False, True])
def test_inserted_right_after_spatial_block(dummy_2d: bool) -> None:
    stock = stock_training_pipeline(do_dummy_2d_data_aug=dummy_2d)
    n_stock = len(stock.transforms)
    pipeline = insert_virtual_pairs(stock, alpha=0.4)
    steps = pipeline.transforms
    assert len(stock.transforms) == n_stock  # input pipeline left alone
    assert len(steps) == n_stock + 1
    position = [i for i, step in enumerate(steps) if isinstance(step, VirtualPairTransform)]
    assert len(position) == 1
    index = position[0]
    assert steps[index].alpha == 0.4
    previous = steps[index - 1]
    assert isinstance(previous, Convert2DTo3DTransform if dummy_2d else SpatialTransform)
    first_intensity = next(i for i, step in enumerate(steps) if isinstance(step, RandomTransform))
    assert first_intensity == index + 1
    with pytest.raises(ValueError, match="already"):
        insert_virtual_pairs(pipeline)


def test_never_in_validation_transforms() -> None:
    validation = nnUNetTrainer.get_validation_transforms(deep_supervision_scales=None)
    assert not any(isinstance(step, VirtualPairTransform) for step in validation.transforms)


def test_labels_identical_through_full_pipeline() -> None:
    """Same torch/numpy seeds with and without the virtual pair: identical labels, different images."""
    image = random_pair(seed=3)
    segmentation = torch.randint(0, 4, (1, *PATCH_SIZE), dtype=torch.int16)
    stock = stock_training_pipeline()
    with_pairs = insert_virtual_pairs(stock)
    for seed in range(3):
        outputs = []
        for pipeline in (stock, with_pairs):
            torch.manual_seed(seed)
            np.random.seed(seed)
            outputs.append(pipeline(image=image.clone(), segmentation=segmentation.clone()))
        torch.testing.assert_close(outputs[0]["segmentation"], outputs[1]["segmentation"], rtol=0, atol=0)
        assert outputs[1]["image"].shape == (2, *PATCH_SIZE)
        assert not torch.allclose(outputs[0]["image"], outputs[1]["image"])


def test_three_phases_through_full_pipeline_labels_identical() -> None:
    image = random_pair(n_channels=3, seed=7)
    segmentation = torch.randint(0, 4, (1, *PATCH_SIZE), dtype=torch.int16)
    stock = stock_training_pipeline()
    outputs = []
    for pipeline in (stock, insert_virtual_pairs(stock)):
        torch.manual_seed(0)
        np.random.seed(0)
        outputs.append(pipeline(image=image.clone(), segmentation=segmentation.clone()))
    torch.testing.assert_close(outputs[0]["segmentation"], outputs[1]["segmentation"], rtol=0, atol=0)
    assert outputs[1]["image"].shape == (3, *PATCH_SIZE)
    assert not torch.allclose(outputs[0]["image"], outputs[1]["image"])


def test_phases_swap_through_spatial_block() -> None:
    """Spatial block then l = 0: the spatially augmented phases, swapped; labels as after the spatial block."""
    image = random_pair(seed=4)
    segmentation = torch.randint(0, 4, (1, *PATCH_SIZE), dtype=torch.int16)
    stock = stock_training_pipeline()
    spatial = [step for step in stock.transforms if isinstance(step, SpatialTransform)][0]
    torch.manual_seed(0)
    np.random.seed(0)  # the spatial transform draws its parameters with NumPy
    reference = spatial(image=image.clone(), segmentation=segmentation.clone())
    torch.manual_seed(0)
    np.random.seed(0)
    swapped = VirtualPairTransform(fixed_l=0.0)(**spatial(image=image.clone(), segmentation=segmentation.clone()))
    torch.testing.assert_close(swapped["image"], reference["image"][[1, 0]])
    torch.testing.assert_close(swapped["segmentation"], reference["segmentation"], rtol=0, atol=0)
