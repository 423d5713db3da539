"""A known misalignment of an image (and its label): the moving side of synthetic registration pairs for
``benchmark_registration.py`` and the tests (on the stored phantoms, or on real CT without a second phase).

Import from a script in this folder with ``from misalignment import misaligned_copy`` (the script's folder is on
``sys.path``); the tests put ``scripts/`` on ``sys.path`` in ``conftest.py``.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from nnunet_hpn.io.geometry import physical_bounds


def smooth_random_displacement(reference: sitk.Image, max_mm: float, seed: int, control_points: int = 4) -> sitk.Image:
    """A smooth random displacement field (``sitkVectorFloat64``, mm) on ``reference``'s grid whose largest vector is
    ``max_mm`` long: a ``control_points``³ grid of normal random vectors, B-spline-interpolated."""
    rng = np.random.default_rng(seed)
    coarse = sitk.GetImageFromArray(rng.standard_normal((control_points,) * 3 + (3,)), isVector=True)
    size = np.asarray(reference.GetSize())
    coarse.SetSpacing(((size - 1) / (control_points - 1)).tolist())  # in the reference's index space
    dense_index_grid = sitk.Image(reference.GetSize(), sitk.sitkFloat32)
    dense = sitk.Resample(sitk.Cast(coarse, sitk.sitkVectorFloat64), dense_index_grid, sitk.Transform(),
                          sitk.sitkBSpline, 0.0, sitk.sitkVectorFloat64)
    values = sitk.GetArrayFromImage(dense)
    values *= max_mm / max(np.linalg.norm(values, axis=-1).max(), 1e-9)
    field = sitk.GetImageFromArray(values, isVector=True)
    field.CopyInformation(reference)
    return field


def misaligned_copy(image: sitk.Image, label: sitk.Image | None, *, seed: int, max_deformation_mm: float = 4.0,
                    shift_mm: float = 3.0, rotation_deg: float = 2.0, spacing_factors=(1.1, 1.1, 0.8),
                    flip_y: bool = True, extra_transform: sitk.Transform | None = None
                    ) -> tuple[sitk.Image, sitk.Image | None, sitk.Transform]:
    """``image`` (and ``label``) seen through a known misalignment, for benchmarks and tests: a smooth random
    deformation of at most ``max_deformation_mm``, a rigid shift of ``shift_mm`` and rotation of ``rotation_deg`` about
    the centre, resampled onto a different grid (spacing × ``spacing_factors``, y axis flipped in the direction matrix
    if ``flip_y``, same physical box). ``extra_transform`` (physical, applied first) may add a known deformation that
    is already present, e.g. a phantom's own. Returns (moving image, moving label, the transform ``S`` with
    ``moving(y) = image(S(y))``)."""
    rng = np.random.default_rng(seed)
    deformation = sitk.DisplacementFieldTransform(smooth_random_displacement(image, max_deformation_mm, seed))
    centre = image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()])
    rigid = sitk.Euler3DTransform()
    rigid.SetCenter(centre)
    angles = rng.standard_normal(3)
    rigid.SetRotation(*(np.deg2rad(rotation_deg) * angles / np.linalg.norm(angles)).tolist())
    shift = rng.standard_normal(3)
    rigid.SetTranslation((shift_mm * shift / np.linalg.norm(shift)).tolist())
    transforms = [deformation, rigid] if extra_transform is None else [extra_transform, deformation, rigid]
    composite = sitk.CompositeTransform(transforms)

    low, high = physical_bounds(image)
    spacing = np.asarray(image.GetSpacing()) * np.asarray(spacing_factors)
    direction = np.asarray(image.GetDirection()).reshape(3, 3).copy()
    if flip_y:
        direction[:, 1] *= -1
    # the grid covering the same physical box: voxel centres half a voxel inside the box
    size = np.maximum(np.round((high - low) / spacing).astype(int), 1)
    grid = sitk.Image([int(n) for n in size], sitk.sitkUInt8)
    grid.SetSpacing(spacing.tolist())
    grid.SetDirection(direction.ravel().tolist())
    box_centre = (low + high) / 2
    grid.SetOrigin((box_centre - direction @ ((size - 1) * spacing / 2)).tolist())
    air = float(np.min(sitk.GetArrayViewFromImage(image)))
    moving = sitk.Resample(image, grid, composite, sitk.sitkLinear, air, image.GetPixelID())
    moving_label = None if label is None else sitk.Resample(label, grid, composite, sitk.sitkNearestNeighbor, 0,
                                                            label.GetPixelID())
    return moving, moving_label, composite
