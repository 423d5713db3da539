"""Image geometry: one "same grid?" rule, the 3D single-component check, physical bounds and overlap.

Every comparison of two voxel grids in nnunet-hpn (phases of a case, label and image, prediction and truth, the
inputs of a union, a crop and its full image) goes through :func:`grid_difference`: sizes equal, and spacing,
origin and direction equal within :data:`GRID_TOLERANCE` (relative and absolute, per component: spacing and origin
in mm, direction cosines), enough for NIfTI's float32 headers and far below any voxel size.
Functions accept images or readers after ``ReadImageInformation`` (header only).
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk

from nnunet_hpn.errors import HPNInputError

#: Tolerance (relative and absolute, per component) of spacing, origin and direction in :func:`grid_difference`.
GRID_TOLERANCE: float = 1e-4

ImageOrHeader = Union[sitk.Image, sitk.ImageFileReader]


class Grid(NamedTuple):
    """A voxel grid: size and spacing (x, y, z), origin (mm), direction (9 cosines, row-major)."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: ImageOrHeader) -> "Grid":
        return cls(tuple(int(v) for v in image.GetSize()), tuple(float(v) for v in image.GetSpacing()),
                   tuple(float(v) for v in image.GetOrigin()), tuple(float(v) for v in image.GetDirection()))


def _rounded(values: tuple) -> tuple:
    return tuple(round(float(v), 6) for v in values)


def grid_difference(a: Union[Grid, ImageOrHeader], b: Union[Grid, ImageOrHeader]) -> Optional[str]:
    """The first property in which grid ``b`` differs from grid ``a`` (``"size (2, 3, 4) vs (2, 3, 5)"``), or None
    when they are the same grid (:data:`GRID_TOLERANCE`)."""
    a, b = (grid if isinstance(grid, Grid) else Grid.of(grid) for grid in (a, b))
    if a.size != b.size:
        return f"size {b.size} vs {a.size}"
    for name in ("spacing", "origin", "direction"):
        value_a, value_b = getattr(a, name), getattr(b, name)
        if len(value_a) != len(value_b) or not np.allclose(value_b, value_a, rtol=GRID_TOLERANCE,
                                                            atol=GRID_TOLERANCE):
            return f"{name} {_rounded(value_b)} vs {_rounded(value_a)}"
    return None


def check_same_grid(a: Union[Grid, ImageOrHeader], name_a: str, b: Union[Grid, ImageOrHeader], name_b: str,
                    hint: str = "") -> None:
    """HPNInputError naming ``name_b`` when its grid differs from ``a``'s (:func:`grid_difference`; ``hint``
    appended to the message)."""
    difference = grid_difference(a, b)
    if difference is not None:
        what, _, values = difference.partition(" ")
        raise HPNInputError(f"{name_b}: {what} differs from {name_a}: {values}{hint}")


def check_3d_single_component(image: ImageOrHeader, name: str) -> None:
    """HPNInputError naming ``name`` unless the image is 3D with one component per voxel."""
    if image.GetDimension() != 3:
        raise HPNInputError(f"{name}: {image.GetDimension()}D image, expected a 3D image")
    components = (image.GetNumberOfComponentsPerPixel() if isinstance(image, sitk.Image)
                  else image.GetNumberOfComponents())
    if components != 1:
        raise HPNInputError(f"{name}: {components} components per voxel, expected 1")


#: Fewest voxels along any axis of a phase image: a 3D network and the registration need a volume, not a slice.
MIN_VOXELS_PER_AXIS = 4


def check_spacing(image: ImageOrHeader, name: str) -> None:
    """HPNInputError naming ``name`` unless every voxel spacing is finite and > 0."""
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    if not (np.isfinite(spacing).all() and (spacing > 0).all()):
        raise HPNInputError(f"{name}: voxel spacing {tuple(spacing.tolist())} mm is not finite and positive")


def check_volume_size(size_xyz: Sequence[int], name: str) -> None:
    """HPNInputError naming ``name`` when an axis of ``size_xyz`` has fewer than :data:`MIN_VOXELS_PER_AXIS`
    voxels."""
    size = tuple(int(n) for n in size_xyz)
    if min(size) < MIN_VOXELS_PER_AXIS:
        raise HPNInputError(f"{name}: size {size} voxels; a phase needs at least {MIN_VOXELS_PER_AXIS} voxels along "
                            f"every axis (a single slice or a thumbnail is not a 3D CT)")


def physical_bounds(image: ImageOrHeader) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest physical coordinates (mm, x y z) of the image's voxel boxes (half a voxel around the
    centres), over all 8 corners, so any direction matrix works."""
    corners = np.array(np.meshgrid(*[[-0.5, n - 0.5] for n in image.GetSize()], indexing="ij")).reshape(3, -1)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    points = np.asarray(image.GetOrigin())[:, None] + direction @ (np.asarray(image.GetSpacing())[:, None] * corners)
    return points.min(axis=1), points.max(axis=1)


def overlap_fraction(fixed: ImageOrHeader, moving: ImageOrHeader) -> float:
    """Volume of the intersection of the two bounding boxes over the fixed image's bounding-box volume."""
    low_f, high_f = physical_bounds(fixed)
    low_m, high_m = physical_bounds(moving)
    extent = np.clip(np.minimum(high_f, high_m) - np.maximum(low_f, low_m), 0, None)
    return float(np.prod(extent) / np.prod(high_f - low_f))


def check_overlap(fixed: ImageOrHeader, moving: ImageOrHeader, fixed_name: str, moving_name: str) -> float:
    """HPNInputError naming both images when their physical bounding boxes do not intersect; else the overlap
    fraction (see :func:`overlap_fraction`)."""
    fraction = overlap_fraction(fixed, moving)
    if fraction <= 0:
        low_f, high_f = physical_bounds(fixed)
        low_m, high_m = physical_bounds(moving)

        def box(low: np.ndarray, high: np.ndarray) -> str:
            return f"{np.round(low, 1).tolist()}..{np.round(high, 1).tolist()} mm"

        raise HPNInputError(f"{moving_name}: does not overlap {fixed_name} in physical space (bounding box "
                            f"{box(low_m, high_m)} vs {box(low_f, high_f)}); check the origin/direction in the headers")
    return fraction
