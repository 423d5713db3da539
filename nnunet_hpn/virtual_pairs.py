"""Virtual paired sets (HPN paper §3.2): training augmentation that interpolates the two phases of a sample.

For each training sample, ``l ~ Beta(alpha, alpha)`` and the arterial / venous channels become::

    x̃A = l * xA + (1 - l) * xB
    x̃B = l * xB + (1 - l) * xA

``l = 1`` leaves the pair unchanged, ``l = 0`` swaps the phases, and ``x̃A + x̃B == xA + xB`` for every ``l``.
Labels are untouched (image-only transform). The paper uses ``alpha = 0.4``.

``l`` is drawn with NumPy, not torch: nnU-Net's data-loader workers start with the same torch RNG state but
re-seed NumPy per worker, so torch draws would repeat across workers.
"""
from __future__ import annotations

import numpy as np
import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform, ImageOnlyTransform
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.pseudo2d import Convert2DTo3DTransform

#: Beta(alpha, alpha) parameter of the paper (following mixup).
DEFAULT_ALPHA: float = 0.4


class VirtualPairTransform(ImageOnlyTransform):
    """Per sample, replace the phase pair ``(xA, xB)`` by ``(l·xA + (1−l)·xB, l·xB + (1−l)·xA)``.

    ``image`` is (C, X, Y, Z) (or (C, X, Y)); only ``channels`` (default ``(0, 1)``: arterial, venous) change.
    ``l`` is drawn per call from Beta(alpha, alpha) with ``np.random``, or is ``fixed_l`` when given
    (tests / ablation). The input tensor is not modified; a new tensor is returned.
    """

    def __init__(self, alpha: float = DEFAULT_ALPHA, channels: tuple[int, int] = (0, 1),
                 fixed_l: float | None = None) -> None:
        super().__init__()
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        if len(channels) != 2 or channels[0] == channels[1]:
            raise ValueError(f"channels must be two different channel indices, got {channels}")
        if fixed_l is not None and not 0.0 <= fixed_l <= 1.0:
            raise ValueError(f"fixed_l must lie in [0, 1], got {fixed_l}")
        self.alpha = float(alpha)
        self.channels = (int(channels[0]), int(channels[1]))
        self.fixed_l = None if fixed_l is None else float(fixed_l)

    def get_parameters(self, **data_dict) -> dict:
        """``{"l": float}``: ``fixed_l`` if set, else a fresh Beta(alpha, alpha) draw from ``np.random``."""
        if self.fixed_l is not None:
            return {"l": self.fixed_l}
        return {"l": float(np.random.beta(self.alpha, self.alpha))}

    def _apply_to_image(self, img: torch.Tensor, **params) -> torch.Tensor:
        """img (C, *spatial) -> new (C, *spatial) tensor with the two phase channels interpolated."""
        channel_a, channel_b = self.channels
        if img.shape[0] <= max(channel_a, channel_b):
            raise ValueError(f"VirtualPairTransform needs channels {self.channels}, image has shape "
                             f"{tuple(img.shape)} (C first)")
        weight = params["l"]
        phase_a, phase_b = img[channel_a], img[channel_b]
        mixed = img.clone()
        mixed[channel_a] = weight * phase_a + (1.0 - weight) * phase_b
        mixed[channel_b] = weight * phase_b + (1.0 - weight) * phase_a
        return mixed


def _spatial_block_end(transforms: list[BasicTransform]) -> int:
    """Index right after nnU-Net's spatial block: ``SpatialTransform`` plus a following ``Convert2DTo3DTransform``."""
    spatial_indices = [i for i, transform in enumerate(transforms) if isinstance(transform, SpatialTransform)]
    if len(spatial_indices) != 1:
        raise ValueError(f"expected exactly one SpatialTransform in the training pipeline, found "
                         f"{len(spatial_indices)}")
    end = spatial_indices[0] + 1
    if end < len(transforms) and isinstance(transforms[end], Convert2DTo3DTransform):
        end += 1
    return end


def insert_virtual_pairs(transforms: ComposeTransforms, alpha: float = DEFAULT_ALPHA,
                         channels: tuple[int, int] = (0, 1)) -> ComposeTransforms:
    """A copy of nnU-Net's training pipeline with a :class:`VirtualPairTransform` right after the spatial block.

    The spatial block is ``SpatialTransform`` and, for dummy-2D augmentation, the ``Convert2DTo3DTransform`` that
    follows it; the virtual pair therefore precedes all intensity augmentations. Found by type, not position.
    Use it on the result of ``nnUNetTrainer.get_training_transforms`` only (never on validation transforms).
    The input pipeline is not modified. Raises ValueError if it has no single SpatialTransform or already
    contains a VirtualPairTransform.
    """
    if not isinstance(transforms, ComposeTransforms):
        raise TypeError(f"expected a ComposeTransforms, got {type(transforms).__name__}")
    steps = list(transforms.transforms)
    if any(isinstance(step, VirtualPairTransform) for step in steps):
        raise ValueError("the training pipeline already contains a VirtualPairTransform")
    steps.insert(_spatial_block_end(steps), VirtualPairTransform(alpha=alpha, channels=channels))
    return ComposeTransforms(steps)
