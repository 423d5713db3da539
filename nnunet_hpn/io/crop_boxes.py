"""Crop boxes: a case's images cut to its label's foreground box plus a margin, and pasted back.

A crop keeps world geometry: spacing and direction are unchanged and the origin moves to the box's first voxel, so
every kept voxel has the physical position it had (SimpleITK's ``RegionOfInterest``). The boxes of a dataset are
written to one JSON file (:data:`BOXES_FILE`, next to the cropped dataset or the phantom cases), which is all
:func:`nnunet_hpn.pipeline.crop.uncrop_folder` needs to paste predictions made on the crops back onto the full images.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_hpn.errors import HPNInputError
from nnunet_hpn.io.geometry import Grid, grid_difference
from nnunet_hpn.io.publish import write_text_atomically

#: File name of a dataset's crop boxes (in the raw dataset folder, or next to the phantom cases).
BOXES_FILE = "crop_boxes.json"


@dataclass(frozen=True)
class CropBox:
    """A box of voxels of the full image (x, y, z index order, as SimpleITK) and the full image's grid."""

    start_xyz: tuple[int, int, int]
    size_xyz: tuple[int, int, int]
    full_size_xyz: tuple[int, int, int]
    spacing_xyz: tuple[float, float, float]
    origin_xyz: tuple[float, float, float]
    direction: tuple[float, ...]

    def full_grid(self) -> Grid:
        return Grid(self.full_size_xyz, self.spacing_xyz, self.origin_xyz, self.direction)

    def cropped_grid(self) -> Grid:
        """The grid of the crop: the box's size, origin at the physical position of its first voxel."""
        direction = np.asarray(self.direction).reshape(3, 3)
        origin = np.asarray(self.origin_xyz) + direction @ (np.asarray(self.spacing_xyz) * np.asarray(self.start_xyz))
        return Grid(self.size_xyz, self.spacing_xyz, tuple(float(v) for v in origin), self.direction)

    def to_json(self) -> dict:
        return {"start_xyz": list(self.start_xyz), "size_xyz": list(self.size_xyz),
                "full_size_xyz": list(self.full_size_xyz), "spacing_xyz": list(self.spacing_xyz),
                "origin_xyz": list(self.origin_xyz), "direction": list(self.direction)}

    @classmethod
    def from_json(cls, entry: dict, where: str) -> "CropBox":
        try:
            box = cls(*(tuple(int(v) for v in entry[key]) for key in ("start_xyz", "size_xyz", "full_size_xyz")),
                      *(tuple(float(v) for v in entry[key]) for key in ("spacing_xyz", "origin_xyz", "direction")))
        except (KeyError, TypeError, ValueError) as error:
            raise HPNInputError(f"{where}: not a crop box ({type(error).__name__}: {error})") from None
        if (len(box.start_xyz) != 3 or len(box.size_xyz) != 3 or len(box.full_size_xyz) != 3
                or any(s < 0 for s in box.start_xyz) or any(n < 1 for n in box.size_xyz)
                or any(s + n > full for s, n, full in zip(box.start_xyz, box.size_xyz, box.full_size_xyz))):
            raise HPNInputError(f"{where}: box start {list(box.start_xyz)} size {list(box.size_xyz)} lies outside "
                                f"the image of size {list(box.full_size_xyz)}")
        return box


def label_box(label: sitk.Image, margin_mm: float, where: str) -> CropBox:
    """The bounding box of ``label > 0`` grown by ``margin_mm`` on every side (clipped to the image)."""
    if not np.isfinite(margin_mm) or margin_mm <= 0:
        raise HPNInputError(f"{where}: crop margin must be a positive number of mm, got {margin_mm}")
    foreground = np.argwhere(sitk.GetArrayViewFromImage(label) > 0)  # (n, 3) z, y, x
    if len(foreground) == 0:
        raise HPNInputError(f"{where}: label has no foreground, nothing to crop to")
    low_xyz = foreground.min(axis=0)[::-1]
    high_xyz = foreground.max(axis=0)[::-1]
    margin_voxels = np.ceil(margin_mm / np.asarray(label.GetSpacing()) - 1e-9).astype(int)
    size = np.asarray(label.GetSize())
    start = np.maximum(low_xyz - margin_voxels, 0)
    stop = np.minimum(high_xyz + margin_voxels + 1, size)
    return CropBox(tuple(int(v) for v in start), tuple(int(v) for v in stop - start), tuple(int(v) for v in size),
                   tuple(float(v) for v in label.GetSpacing()), tuple(float(v) for v in label.GetOrigin()),
                   tuple(float(v) for v in label.GetDirection()))


def _check_grid(image: sitk.Image, expected: Grid, what: str, where: str) -> None:
    """``image`` must be on the grid ``expected`` (:func:`nnunet_hpn.io.geometry.grid_difference`)."""
    difference = grid_difference(expected, image)
    if difference is not None:
        raise HPNInputError(f"{where}: grid is not the {what} ({difference}, this image vs the box's)")


def crop_image(image: sitk.Image, box: CropBox, where: str) -> sitk.Image:
    """``image`` (on the box's full grid) cut to the box; every kept voxel keeps its physical position."""
    _check_grid(image, box.full_grid(), "full grid of the crop box", where)
    return sitk.RegionOfInterest(image, list(box.size_xyz), list(box.start_xyz))


def uncrop_image(cropped: sitk.Image, box: CropBox, reference: sitk.Image, where: str) -> sitk.Image:
    """A label map on the crop pasted into zeros on ``reference``'s grid (which must be the box's full grid)."""
    _check_grid(reference, box.full_grid(), "full grid of the crop box", f"{where}: reference")
    _check_grid(cropped, box.cropped_grid(), "grid of the crop box", where)
    full = np.zeros(sitk.GetArrayViewFromImage(reference).shape, dtype=sitk.GetArrayViewFromImage(cropped).dtype)
    (x0, y0, z0), (nx, ny, nz) = box.start_xyz, box.size_xyz
    full[z0:z0 + nz, y0:y0 + ny, x0:x0 + nx] = sitk.GetArrayViewFromImage(cropped)
    result = sitk.GetImageFromArray(full)
    result.CopyInformation(reference)
    return result


def write_boxes(path: Path, boxes: dict[str, CropBox], margin_mm: float, reference_phase: str) -> None:
    """``{"margin_mm", "reference_phase", "cases": {case: box}}``, written atomically."""
    write_text_atomically(path, json.dumps({"margin_mm": margin_mm, "reference_phase": reference_phase,
                                            "cases": {case: box.to_json() for case, box in sorted(boxes.items())}},
                                           indent=2) + "\n")


def read_boxes(path: Path) -> dict[str, CropBox]:
    """The boxes of :func:`write_boxes`; one-line HPNInputError when the file is missing or malformed."""
    try:
        cases = json.loads(Path(path).read_text(encoding="utf-8"))["cases"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise HPNInputError(f"{path}: not a crop-box file ({type(error).__name__}: {error})") from None
    if not isinstance(cases, dict) or not cases:
        raise HPNInputError(f"{path}: no crop boxes in 'cases'")
    return {case: CropBox.from_json(entry, f"{path}: case {case}") for case, entry in cases.items()}
