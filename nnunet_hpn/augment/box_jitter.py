"""Box jitter: stage 2 of two-stage HPN learns to work inside a pancreas box that the locator got somewhat wrong.

At inference stage 2 sees the scan cut to the locator's box plus a margin (:mod:`nnunet_hpn.pipeline.locator`);
beyond the box lies nnU-Net's zero padding. Training crops are wider (``STAGE2_TRAINING_MARGIN_MM``; the margins:
:mod:`nnunet_hpn.augment.box_margins`), and per training sample (drawn with ``np.random``, with probability ``p``)
this transform blanks everything outside a box around the patch's foreground whose every side lies
``margin_mm ± jitter_mm`` from it (uniform, per side) — as a locator box would cut the scan, shifted, too tight or
too wide. Blanked voxels get 0, the value nnU-Net pads patches with; the label is untouched: the box never reaches
into the foreground (``margin_mm >= jitter_mm``). Patches without foreground are left alone (nothing tells where
the box would be). Training pipeline only: :func:`insert_box_jitter` puts it right after nnU-Net's spatial block.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from batchgeneratorsv2.transforms.base.basic_transform import ImageOnlyTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms

from nnunet_hpn.augment.virtual_pairs import spatial_block_end


class BoxJitterTransform(ImageOnlyTransform):
    """Per sample, with probability ``p``, image voxels outside a jittered box around the foreground set to 0 (the
    segmentation is read, never changed).

    ``image`` is (C, *spatial), ``segmentation`` (1, *spatial) (values > 0 are foreground; nnU-Net's -1 padding is
    not); ``spacing`` the patch's voxel spacing in the same axis order (mm). ``get_parameters`` returns
    ``{"box": ((low, high) voxel slice bounds per spatial axis) or None}``.
    """

    def __init__(self, margin_mm: float, jitter_mm: float, spacing: Sequence[float], p: float = 1.0) -> None:
        super().__init__()
        if not 0 <= jitter_mm <= margin_mm:
            raise ValueError(f"need 0 <= jitter_mm <= margin_mm (the box must not cut the foreground), got "
                             f"jitter {jitter_mm}, margin {margin_mm}")
        if any(s <= 0 for s in spacing) or not 0.0 <= p <= 1.0:
            raise ValueError(f"spacing {tuple(spacing)} must be positive and p in [0, 1], got p={p}")
        self.margin_mm, self.jitter_mm = float(margin_mm), float(jitter_mm)
        self.spacing = tuple(float(s) for s in spacing)
        self.p = float(p)

    def get_parameters(self, **data_dict) -> dict:
        segmentation = data_dict["segmentation"]
        spatial = tuple(segmentation.shape[1:])
        if len(spatial) != len(self.spacing):
            raise ValueError(f"spacing {self.spacing} has {len(self.spacing)} axes, the patch {len(spatial)}")
        foreground = torch.nonzero((segmentation > 0).any(dim=0))  # (n, ndim)
        if len(foreground) == 0 or np.random.uniform() >= self.p:
            return {"box": None}
        low, high = foreground.min(dim=0).values.tolist(), foreground.max(dim=0).values.tolist()
        box = []
        for axis, n in enumerate(spatial):
            margins = np.random.uniform(self.margin_mm - self.jitter_mm, self.margin_mm + self.jitter_mm, size=2)
            before, after = np.floor(margins / self.spacing[axis]).astype(int)
            box.append((max(0, low[axis] - int(before)), min(n, high[axis] + 1 + int(after))))
        return {"box": tuple(box)}

    def _apply_to_image(self, img: torch.Tensor, **params) -> torch.Tensor:
        """img (C, *spatial) -> the same tensor, or a copy that is 0 outside the box."""
        if params["box"] is None:
            return img
        inside = torch.zeros(img.shape[1:], dtype=torch.bool)
        inside[tuple(slice(low, high) for low, high in params["box"])] = True
        return torch.where(inside[None], img, torch.zeros((), dtype=img.dtype))


def insert_box_jitter(transforms: ComposeTransforms, margin_mm: float, jitter_mm: float, spacing: Sequence[float]
                      ) -> ComposeTransforms:
    """A copy of nnU-Net's *training* pipeline with a :class:`BoxJitterTransform` right after the spatial block.
    Raises ValueError if it already contains one."""
    if not isinstance(transforms, ComposeTransforms):
        raise TypeError(f"expected a ComposeTransforms, got {type(transforms).__name__}")
    steps = list(transforms.transforms)
    if any(isinstance(step, BoxJitterTransform) for step in steps):
        raise ValueError("the training pipeline already contains a BoxJitterTransform")
    steps.insert(spatial_block_end(steps), BoxJitterTransform(margin_mm, jitter_mm, spacing))
    return ComposeTransforms(steps)
