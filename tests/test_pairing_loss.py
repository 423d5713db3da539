"""Pairing loss (Eq. 1 of the HPN paper): value against numpy, invariances, numerical robustness."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from nnunet_hpn.model.pairing_loss import pairing_loss, pearson_correlation

SHAPE = (2, 3, 4, 5, 6)  # (B, C, *spatial)


def _features(seed: int, shape: tuple[int, ...] = SHAPE, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=dtype)


def _numpy_correlations(fa: torch.Tensor, fb: torch.Tensor) -> np.ndarray:
    """Independent reference: np.corrcoef per (b, c) over the flattened voxels -> (B, C)."""
    a = fa.detach().double().numpy().reshape(fa.shape[0], fa.shape[1], -1)
    b = fb.detach().double().numpy().reshape(fb.shape[0], fb.shape[1], -1)
    return np.array([[np.corrcoef(a[i, c], b[i, c])[0, 1] for c in range(a.shape[1])] for i in range(a.shape[0])])


def _value_and_grads(*features: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    leaves = [f.detach().clone().requires_grad_(True) for f in features]
    loss = pairing_loss(leaves)
    loss.backward()
    return loss.detach(), [leaf.grad for leaf in leaves]


def test_correlation_matches_numpy_corrcoef() -> None:
    fa = _features(0)
    fb = 0.6 * fa + 0.8 * _features(1)  # correlated, not perfectly
    correlation = pearson_correlation(fa, fb)
    assert correlation.shape == SHAPE[:2]
    assert correlation.dtype == torch.float32
    np.testing.assert_allclose(correlation.numpy(), _numpy_correlations(fa, fb), atol=1e-5)
    loss = pairing_loss([fa, fb])
    assert loss.ndim == 0
    assert loss.item() == pytest.approx(-_numpy_correlations(fa, fb).mean(), abs=1e-5)


def test_loss_averages_all_unordered_pairs_of_paths() -> None:
    features = [_features(seed) + 0.5 * _features(10) for seed in range(3)]  # three mutually correlated paths
    expected = -np.mean([_numpy_correlations(fa, fb).mean() for fa, fb in itertools.combinations(features, 2)])
    assert pairing_loss(features).item() == pytest.approx(expected, abs=1e-5)


def test_needs_two_paths_and_matching_shapes() -> None:
    with pytest.raises(ValueError, match="at least two"):
        pairing_loss([_features(0)])
    with pytest.raises(ValueError, match="same shape"):
        pearson_correlation(_features(0), _features(1, shape=(2, 3, 4, 5, 7)))


def test_perfect_correlation_gives_minus_one() -> None:
    fa = _features(0)
    assert pairing_loss([fa, 3.0 * fa + 2.0]).item() == pytest.approx(-1.0, abs=1e-6)
    assert pairing_loss([fa, -fa]).item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("scale", [1e-3, 0.37, 2.0, 1e4])
def test_invariant_to_positive_scale_and_shift_of_either_input(scale: float) -> None:
    fa = _features(0)
    fb = 0.5 * fa + _features(1)
    reference = pearson_correlation(fa, fb)
    torch.testing.assert_close(pearson_correlation(scale * fa, fb), reference, atol=1e-6, rtol=0)
    torch.testing.assert_close(pearson_correlation(fa, scale * fb), reference, atol=1e-6, rtol=0)
    torch.testing.assert_close(pearson_correlation(fa + 5.0, fb - 3.0), reference, atol=1e-6, rtol=0)
    torch.testing.assert_close(pearson_correlation(-scale * fa, fb), -reference, atol=1e-6, rtol=0)


def test_constant_features_give_zero_with_finite_gradients() -> None:
    varying = _features(0, dtype=torch.float32)
    for constant_value in (0.0, 0.1, -7.3, 1e15):
        constant = torch.full(SHAPE, constant_value)
        for pair in ((constant, varying), (varying, constant), (constant, constant.clone())):
            loss, grads = _value_and_grads(*pair)
            assert loss.item() == 0.0
            assert all(torch.isfinite(g).all() for g in grads)
    # constant in only one (b, c): that entry is 0, the others are still correct
    fa, fb = varying.clone(), 0.5 * varying + _features(1, dtype=torch.float32)
    fa[1, 2] = 4.2
    correlation = pearson_correlation(fa, fb)
    assert correlation[1, 2].item() == 0.0
    np.testing.assert_allclose(correlation.numpy()[:1], _numpy_correlations(fa[:1], fb[:1]), atol=1e-5)
    np.testing.assert_allclose(correlation.numpy()[1, :2], _numpy_correlations(fa[1:, :2], fb[1:, :2])[0], atol=1e-5)


@pytest.mark.parametrize("magnitude", [1e15, 1e-20])
def test_huge_and_tiny_magnitudes_are_finite_and_scale_invariant(magnitude: float) -> None:
    fa = _features(0, dtype=torch.float32)
    fb = 0.5 * fa + _features(1, dtype=torch.float32)
    reference, reference_grads = _value_and_grads(fa, fb)
    loss, grads = _value_and_grads(magnitude * fa, magnitude * fb)
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)
    assert loss.item() == pytest.approx(reference.item(), abs=1e-6)
    # d(loss)/d(m x) = (1/m) d(loss)/dx; compare after undoing the scale, in float64
    for grad, reference_grad in zip(grads, reference_grads):
        torch.testing.assert_close(grad.double() * magnitude, reference_grad.double(), rtol=1e-4, atol=1e-7)


def test_bf16_inputs_under_autocast_are_computed_in_float32() -> None:
    fa = _features(0, dtype=torch.float32)
    fb = 0.5 * fa + _features(1, dtype=torch.float32)
    leaves = [fa.bfloat16().requires_grad_(True), fb.bfloat16().requires_grad_(True)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = pairing_loss(leaves)
    assert loss.dtype == torch.float32
    loss.backward()
    assert all(leaf.grad.dtype == torch.bfloat16 and torch.isfinite(leaf.grad).all() for leaf in leaves)
    expected = -_numpy_correlations(leaves[0].float(), leaves[1].float()).mean()
    assert loss.item() == pytest.approx(expected, abs=1e-5)


def test_gradient_matches_float64_autograd_of_textbook_formula() -> None:
    fa = _features(0)
    fb = 0.3 * fa + _features(1)
    a64 = fa.clone().requires_grad_(True)
    b64 = fb.clone().requires_grad_(True)
    ca = a64.flatten(2) - a64.flatten(2).mean(-1, keepdim=True)
    cb = b64.flatten(2) - b64.flatten(2).mean(-1, keepdim=True)
    textbook = -((ca * cb).sum(-1) / torch.sqrt((ca**2).sum(-1) * (cb**2).sum(-1))).mean()
    textbook.backward()
    loss, grads = _value_and_grads(fa.float(), fb.float())
    assert loss.item() == pytest.approx(textbook.item(), abs=1e-6)
    torch.testing.assert_close(grads[0].double(), a64.grad, rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(grads[1].double(), b64.grad, rtol=1e-3, atol=1e-6)
