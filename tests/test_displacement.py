"""Random smooth displacement fields (augment/displacement.py): the field passes through its control points, degree 1
is torch's multilinear interpolation, and scaling gives the chosen longest vector."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nnunet_hpn.augment.displacement import control_grid_field, scaled_to_peak


@pytest.mark.parametrize("degree", [1, 3])
def test_the_field_passes_through_its_control_points(degree: int) -> None:
    control = np.random.default_rng(0).standard_normal((3, 4, 4, 4))
    field = control_grid_field(control, (10, 7, 13), degree)
    assert field.shape == (3, 10, 7, 13) and field.dtype == control.dtype
    np.testing.assert_allclose(field[:, ::3, ::2, ::4], control, atol=1e-12)


def test_degree_one_is_multilinear_interpolation_in_two_and_three_dimensions() -> None:
    rng = np.random.default_rng(1)
    for control, shape, mode in ((rng.standard_normal((3, 3, 4, 2)).astype(np.float32), (9, 11, 6), "trilinear"),
                                 (rng.standard_normal((2, 5, 3)).astype(np.float32), (17, 8), "bilinear")):
        expected = F.interpolate(torch.from_numpy(control)[None], size=shape, mode=mode, align_corners=True)[0]
        field = control_grid_field(control, shape, degree=1)
        assert field.dtype == np.float32
        np.testing.assert_allclose(field, expected.numpy(), atol=1e-5)


def test_scaled_to_peak() -> None:
    field = control_grid_field(np.random.default_rng(2).standard_normal((3, 4, 4, 4)), (8, 8, 8))
    scaled = scaled_to_peak(field, 2.5)
    assert np.linalg.norm(scaled, axis=0).max() == pytest.approx(2.5)
    assert not scaled_to_peak(np.zeros((3, 2, 2, 2)), 4.0).any()
    with pytest.raises(ValueError, match="spatial axes"):
        control_grid_field(np.zeros((3, 4, 4)), (8, 8, 8))
