"""Misalignment augmentation: residual misregistration of the non-reference phases, simulated during training.

Real arterial / venous pairs are never perfectly registered. Per training sample (drawn with ``np.random``, like
every HPN augmentation: nnU-Net re-seeds NumPy per data-loader worker), with probability ``p``, every phase channel
except the reference one is resampled through one random displacement: a shift of at most ``shift_fraction`` ×
``max_displacement_mm`` in a random direction, plus a smooth field (Gaussian values on a control grid every
``control_spacing_mm``, trilinearly interpolated) scaled so that shift + field never exceeds ``max_displacement_mm``
at any voxel. Millimetres become voxels through the patch's spacing. The label (which lives on the reference phase)
and the reference phase stay bit-identical. Training pipeline only: :func:`insert_phase_misalignment` puts it right
after nnU-Net's spatial block.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from batchgeneratorsv2.transforms.base.basic_transform import ImageOnlyTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms

from nnunet_hpn.augment.displacement import control_grid_field, scaled_to_peak
from nnunet_hpn.augment.virtual_pairs import spatial_block_end

#: largest displacement (mm) of the HPN / early-fusion ``_misalign`` trainer variants
DEFAULT_MAX_DISPLACEMENT_MM: float = 4.0


class PhaseMisalignmentTransform(ImageOnlyTransform):
    """Per sample, with probability ``p``, warp the non-reference phase channels by one random smooth displacement of
    at most ``max_displacement_mm`` (module docstring).

    ``image`` is (C, *spatial) with 2 or 3 spatial axes; ``spacing`` the patch's voxel spacing in the same axis order
    (mm); ``channels`` the phase channels (None: all C), ``reference_channel`` the one left alone.
    ``get_parameters`` returns ``{"displacement": (ndim, *spatial) voxels or None, "channels": moved channels}``.
    """

    def __init__(self, max_displacement_mm: float, spacing: Sequence[float], reference_channel: int = 0,
                 channels: Optional[Sequence[int]] = None, shift_fraction: float = 0.5,
                 control_spacing_mm: float = 30.0, p: float = 1.0) -> None:
        super().__init__()
        if not max_displacement_mm >= 0:
            raise ValueError(f"max_displacement_mm must be >= 0, got {max_displacement_mm}")
        if not 0.0 <= shift_fraction <= 1.0 or not 0.0 <= p <= 1.0:
            raise ValueError(f"shift_fraction and p must lie in [0, 1], got {shift_fraction}, {p}")
        if any(s <= 0 for s in spacing) or control_spacing_mm <= 0:
            raise ValueError(f"spacing {tuple(spacing)} and control_spacing_mm {control_spacing_mm} must be positive")
        self.max_displacement_mm = float(max_displacement_mm)
        self.spacing = tuple(float(s) for s in spacing)
        self.reference_channel = int(reference_channel)
        self.channels = None if channels is None else tuple(int(c) for c in channels)
        self.shift_fraction = float(shift_fraction)
        self.control_spacing_mm = float(control_spacing_mm)
        self.p = float(p)

    def _moved_channels(self, image: torch.Tensor) -> tuple[int, ...]:
        channels = self.channels if self.channels is not None else tuple(range(image.shape[0]))
        if self.reference_channel not in channels or max(channels) >= image.shape[0]:
            raise ValueError(f"reference channel {self.reference_channel} and channels {channels} do not fit an "
                             f"image of shape {tuple(image.shape)} (C first)")
        return tuple(c for c in channels if c != self.reference_channel)

    def get_parameters(self, **data_dict) -> dict:
        image = data_dict["image"]
        moved = self._moved_channels(image)
        spatial = tuple(image.shape[1:])
        if len(spatial) != len(self.spacing):
            raise ValueError(f"spacing {self.spacing} has {len(self.spacing)} axes, the image {len(spatial)}")
        if self.max_displacement_mm == 0 or not moved or np.random.uniform() >= self.p:
            return {"displacement": None, "channels": moved}
        ndim = len(spatial)
        direction = np.random.normal(size=ndim)
        direction /= max(np.linalg.norm(direction), 1e-12)
        shift_mm = direction * np.random.uniform(0.0, self.shift_fraction * self.max_displacement_mm)
        spacing = np.asarray(self.spacing)
        n_control = [max(2, int(np.ceil(n * s / self.control_spacing_mm)) + 1) for n, s in zip(spatial, spacing)]
        control = np.random.normal(size=(ndim, *n_control)).astype(np.float32)
        field = control_grid_field(control, spatial, degree=1)  # (ndim, *spatial), multilinear
        budget = self.max_displacement_mm - float(np.linalg.norm(shift_mm))
        view = (ndim,) + (1,) * ndim
        displacement_mm = (scaled_to_peak(field, np.random.uniform(0.0, budget))
                           + shift_mm.astype(np.float32).reshape(view))
        return {"displacement": torch.from_numpy(displacement_mm / spacing.astype(np.float32).reshape(view)),
                "channels": moved}

    def _apply_to_image(self, img: torch.Tensor, **params) -> torch.Tensor:
        """img (C, *spatial) -> the same tensor, or a copy with the moved channels sampled at x + displacement(x)."""
        displacement, moved = params["displacement"], params["channels"]
        if displacement is None:
            return img
        spatial = img.shape[1:]
        axes = [torch.arange(n, dtype=torch.float32) for n in spatial]
        points = torch.stack(torch.meshgrid(*axes, indexing="ij")) + displacement  # (ndim, *spatial) voxels
        # grid_sample wants coordinates in [-1, 1], last axis first
        normalised = [2 * points[a] / max(n - 1, 1) - 1 for a, n in enumerate(spatial)]
        grid = torch.stack(normalised[::-1], dim=-1)[None]
        out = img.clone()
        source = img[list(moved)][None].float()
        out[list(moved)] = F.grid_sample(source, grid, mode="bilinear", padding_mode="border",
                                         align_corners=True)[0].to(img.dtype)
        return out


def insert_phase_misalignment(transforms: ComposeTransforms, max_displacement_mm: float, spacing: Sequence[float],
                              reference_channel: int = 0, channels: Optional[Sequence[int]] = None
                              ) -> ComposeTransforms:
    """A copy of nnU-Net's *training* pipeline with a :class:`PhaseMisalignmentTransform` right after the spatial
    block (before every intensity augmentation). Raises ValueError if it already contains one."""
    if not isinstance(transforms, ComposeTransforms):
        raise TypeError(f"expected a ComposeTransforms, got {type(transforms).__name__}")
    steps = list(transforms.transforms)
    if any(isinstance(step, PhaseMisalignmentTransform) for step in steps):
        raise ValueError("the training pipeline already contains a PhaseMisalignmentTransform")
    steps.insert(spatial_block_end(steps), PhaseMisalignmentTransform(max_displacement_mm, spacing,
                                                                      reference_channel, channels))
    return ComposeTransforms(steps)
