"""nnunet_hpn.io.geometry: the one same-grid rule (float32 header round-off passes, a tenth of a millimetre does not),
the 3D single-component check, physical bounds under an oblique direction."""
import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_hpn.errors import HPNInputError
from nnunet_hpn.io.geometry import (Grid, check_3d_single_component, check_same_grid, grid_difference,
                                 physical_bounds)


def _image(origin=(-250.3, 120.7, 310.1), spacing=(0.8, 0.8, 2.5)) -> sitk.Image:
    image = sitk.Image(8, 6, 4, sitk.sitkInt16)
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    return image


def test_same_grid_up_to_float32_headers_but_not_a_tenth_of_a_mm(tmp_path):
    image = _image()
    sitk.WriteImage(image, str(tmp_path / "a.nii.gz"))  # NIfTI stores the header in float32
    assert grid_difference(image, sitk.ReadImage(str(tmp_path / "a.nii.gz"))) is None
    shifted = _image(origin=(-250.3, 120.8, 310.1))
    assert grid_difference(image, shifted).startswith("origin")
    assert grid_difference(Grid.of(image), _image(spacing=(0.8, 0.8, 2.0))).startswith("spacing")
    with pytest.raises(HPNInputError, match=r"^b: origin differs from a: \(-250\.3, 120\.8, 310\.1\) vs .*; hint$"):
        check_same_grid(image, "a", shifted, "b", hint="; hint")
    with pytest.raises(HPNInputError, match=r"^b: size differs from a"):
        check_same_grid(image, "a", sitk.Image(8, 6, 5, sitk.sitkInt16), "b")


def test_3d_single_component():
    check_3d_single_component(_image(), "x")
    with pytest.raises(HPNInputError, match=r"^x: 2D image, expected a 3D image$"):
        check_3d_single_component(sitk.Image(4, 4, sitk.sitkUInt8), "x")
    with pytest.raises(HPNInputError, match=r"^x: 3 components per voxel, expected 1$"):
        check_3d_single_component(sitk.Image([4, 4, 4], sitk.sitkVectorFloat32, 3), "x")


def test_physical_bounds_of_an_oblique_image():
    image = _image(origin=(0.0, 0.0, 0.0), spacing=(1.0, 1.0, 1.0))
    image.SetDirection((0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0))  # x index runs along +y, y index along -x
    low, high = physical_bounds(image)
    np.testing.assert_allclose(low, [-5.5, -0.5, -0.5])
    np.testing.assert_allclose(high, [0.5, 7.5, 3.5])
