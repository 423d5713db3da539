"""A known misalignment of an image (and its label): the moving side of synthetic registration pairs for
``benchmark_registration.py``, the misalignment and two-stage studies and the tests (on the stored phantoms, or on
real CT without a second phase), and the real-CT pairs built with it."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import SimpleITK as sitk

from nnunet_hpn.augment.displacement import control_grid_field, scaled_to_peak
from nnunet_hpn.io.geometry import physical_bounds


def smooth_random_displacement(reference: sitk.Image, max_mm: float, seed: int, control_points: int = 4) -> sitk.Image:
    """A smooth random displacement field (``sitkVectorFloat64``, mm) on ``reference``'s grid whose largest vector is
    ``max_mm`` long: a ``control_points``³ grid of normal random vectors, cubic-spline-interpolated
    (:func:`nnunet_hpn.augment.displacement.control_grid_field`, the generator of the augmentation and the phantoms)."""
    draws = np.random.default_rng(seed).standard_normal((control_points,) * 3 + (3,))  # (z, y, x, xyz vector)
    field = control_grid_field(np.moveaxis(draws, -1, 0), reference.GetSize()[::-1], degree=3)
    image = sitk.GetImageFromArray(np.moveaxis(scaled_to_peak(field, max_mm), 0, -1), isVector=True)
    image.CopyInformation(reference)
    return image


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


#: the TotalSegmentator example CT and its segmentation, beside the repository (``shared/data/real``)
REAL_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "real" / "totalsegmentator"
PANCREAS_TOTALSEG = 7
CLINICAL_SPACING = (0.8, 0.8, 2.5)
#: the clinical-size pair's grid is at least this large (x, y, z): a 512 x 512 field of view, 150 slices
CLINICAL_MIN_SIZE = (512, 512, 150)
#: one registration pair: name, fixed image, fixed label, moving image, moving label
Pair = tuple[str, sitk.Image, sitk.Image, sitk.Image, sitk.Image]


def misaligned_pair_side(image: sitk.Image, label: sitk.Image, seed: int, args: argparse.Namespace,
                         noise_hu: float = 0.0, deformation_mm: Optional[float] = None
                         ) -> tuple[sitk.Image, sitk.Image]:
    """The moving image and label of a pair: :func:`misaligned_copy` with ``args``' ``deformation_mm`` (unless
    given), ``shift_mm`` and ``rotation_deg``, plus Gaussian noise of ``noise_hu`` (rounded to int16) when > 0."""
    deformation_mm = args.deformation_mm if deformation_mm is None else deformation_mm
    moving, moving_label, _ = misaligned_copy(image, label, seed=seed, max_deformation_mm=deformation_mm,
                                              shift_mm=args.shift_mm, rotation_deg=args.rotation_deg)
    if noise_hu > 0:
        noise = np.random.default_rng(seed).normal(0, noise_hu, moving.GetSize()[::-1])
        noisy = sitk.GetImageFromArray(np.rint(sitk.GetArrayFromImage(moving) + noise).astype(np.int16))
        noisy.CopyInformation(moving)
        moving = noisy
    return moving, moving_label


def real_ct() -> tuple[sitk.Image, sitk.Image]:
    """The example CT (int16) and its pancreas mask (uint8) from :data:`REAL_DIR`."""
    image = sitk.ReadImage(str(REAL_DIR / "example_ct.nii.gz"), sitk.sitkInt16)
    label = sitk.ReadImage(str(REAL_DIR / "example_seg_fast_force_split.nii.gz"))
    return image, sitk.Cast(label == PANCREAS_TOTALSEG, sitk.sitkUInt8)


def real_pairs(args: argparse.Namespace) -> Iterator[Pair]:
    """``args.real_pairs`` pairs of the 3 mm example CT with a misaligned, noisy copy of itself."""
    if args.real_pairs == 0:
        return
    image, label = real_ct()
    for index in range(args.real_pairs):
        moving, moving_label = misaligned_pair_side(image, label, 100 + index, args, noise_hu=args.noise_hu)
        yield f"real_ct_{index}", image, label, moving, moving_label


def clinical_pairs(args: argparse.Namespace) -> Iterator[Pair]:
    """``args.clinical_pairs`` pairs as :func:`real_pairs`, the CT first resampled to :data:`CLINICAL_SPACING` and
    widened with air to at least :data:`CLINICAL_MIN_SIZE` voxels."""
    if args.clinical_pairs == 0:
        return
    image, label = real_ct()
    covered = [int(round(n * s / c)) for n, s, c in zip(image.GetSize(), image.GetSpacing(), CLINICAL_SPACING)]
    size = [max(n, m) for n, m in zip(covered, CLINICAL_MIN_SIZE)]  # the CT's box, widened with air where smaller
    grid = sitk.Image(size, sitk.sitkUInt8)
    grid.SetSpacing(CLINICAL_SPACING)
    grid.SetDirection(image.GetDirection())
    # the 3 mm image's box, centred in the (larger) clinical field of view
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    corner = np.asarray(image.GetOrigin()) - direction @ (np.asarray(image.GetSpacing()) / 2)
    padding = (np.asarray(size) - np.asarray(covered)) / 2 * np.asarray(CLINICAL_SPACING)
    grid.SetOrigin((corner + direction @ (np.asarray(CLINICAL_SPACING) / 2 - padding)).tolist())
    fine = sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, -1024, sitk.sitkInt16)
    # smooth label on the fine grid: linear interpolation of the mask, thresholded at 0.5
    fine_label = sitk.Cast(sitk.Resample(sitk.Cast(label, sitk.sitkFloat32), grid, sitk.Transform(), sitk.sitkLinear,
                                         0.0) > 0.5, sitk.sitkUInt8)
    for index in range(args.clinical_pairs):
        moving, moving_label = misaligned_pair_side(fine, fine_label, 200 + index, args, noise_hu=args.noise_hu)
        yield f"real_ct_clinical_{index}", fine, fine_label, moving, moving_label
