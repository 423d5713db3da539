"""Virtual paired sets (HPN paper §3.2): training augmentation that interpolates the phases of a sample.

Two phases (the paper): for each training sample, ``l ~ Beta(alpha, alpha)`` and the arterial / venous channels
become::

    x̃A = l * xA + (1 - l) * xB
    x̃B = l * xB + (1 - l) * xA

``l = 1`` leaves the pair unchanged, ``l = 0`` swaps the phases, and ``x̃A + x̃B == xA + xB`` for every ``l``.
Labels are untouched (image-only transform). The paper uses ``alpha = 0.4``.

K phases: the Beta weight pair ``(l, 1 - l)`` becomes Dirichlet weights ``w ~ Dir(alpha, ..., alpha)`` over the K
cyclic shifts of the phase order: output phase ``k`` is ``x̃k = sum_s w[s] * x[(k + s) mod K]``, i.e. the mixing
matrix ``W[k, j] = w[(j - k) mod K]`` (a circulant matrix). Its rows and columns sum to 1 (so ``sum_k x̃k =
sum_k xk``), every weight has mean 1/K, ``w = (1, 0, ..., 0)`` is the identity and a one-hot ``w`` a cyclic
relabelling of the phases. For K = 2 this *is* the formula above with ``l = w[0]``, and ``l`` is drawn with
``np.random.beta(alpha, alpha)`` exactly as before (same draws for the same seed), not with ``np.random.dirichlet``.

Draws use NumPy, not torch: nnU-Net's data-loader workers start with the same torch RNG state but re-seed NumPy per
worker, so torch draws would repeat across workers.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform, ImageOnlyTransform
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.pseudo2d import Convert2DTo3DTransform

#: Beta(alpha, alpha) (K = 2) / Dirichlet(alpha, ..., alpha) (K phases) parameter of the paper (following mixup).
DEFAULT_ALPHA: float = 0.4


def draw_mixing_weights(alpha: float, n_phases: int) -> tuple[float, ...]:
    """Weights ``w`` of the K cyclic shifts, drawn with ``np.random``: ``(l, 1 - l)`` with ``l ~ Beta(alpha, alpha)``
    for 2 phases (the paper's draw, unchanged), ``Dir(alpha, ..., alpha)`` for more."""
    if n_phases < 2:
        raise ValueError(f"virtual pairs need at least 2 phases, got {n_phases}")
    if n_phases == 2:
        l = float(np.random.beta(alpha, alpha))
        return l, 1.0 - l
    return tuple(float(w) for w in np.random.dirichlet([alpha] * n_phases))


class VirtualPairTransform(ImageOnlyTransform):
    """Per sample, replace the K phases by their mixtures ``x̃k = sum_s w[s] * x[(k + s) mod K]`` (module docstring).

    ``image`` is (C, X, Y, Z) (or (C, X, Y)); only ``channels`` change (default None: all C channels are phases; the
    paper's pair is ``(0, 1)``: arterial, venous). ``w`` is drawn per call (:func:`draw_mixing_weights`), or is
    ``fixed_weights`` (K values >= 0 summing to 1) or, for two phases, ``(fixed_l, 1 - fixed_l)`` when given (tests /
    ablation). ``get_parameters`` returns ``{"weights": w}`` and, for two phases, ``{"l": w[0]}`` too. The input
    tensor is not modified; a new tensor is returned.
    """

    def __init__(self, alpha: float = DEFAULT_ALPHA, channels: Optional[Sequence[int]] = None,
                 fixed_l: float | None = None, fixed_weights: Optional[Sequence[float]] = None) -> None:
        super().__init__()
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        if channels is not None and (len(channels) < 2 or len(set(channels)) != len(channels)):
            raise ValueError(f"channels must be at least two different channel indices, got {channels}")
        if fixed_l is not None and not 0.0 <= fixed_l <= 1.0:
            raise ValueError(f"fixed_l must lie in [0, 1], got {fixed_l}")
        if fixed_l is not None and fixed_weights is not None:
            raise ValueError("give fixed_l (two phases) or fixed_weights, not both")
        if fixed_weights is not None:
            weights = np.asarray(fixed_weights, dtype=float)
            if len(weights) < 2 or np.any(weights < 0) or not np.isclose(weights.sum(), 1.0):
                raise ValueError(f"fixed_weights must be >= 2 values >= 0 summing to 1, got {list(fixed_weights)}")
        self.alpha = float(alpha)
        self.channels = None if channels is None else tuple(int(c) for c in channels)
        self.fixed_l = None if fixed_l is None else float(fixed_l)
        self.fixed_weights = None if fixed_weights is None else tuple(float(w) for w in fixed_weights)

    def _phase_channels(self, image: Optional[torch.Tensor]) -> tuple[int, ...]:
        if self.channels is not None:
            channels = self.channels
        elif image is not None:
            channels = tuple(range(image.shape[0]))
        else:
            raise ValueError("VirtualPairTransform(channels=None) takes the phases from the image: pass image=...")
        if image is not None and (len(channels) < 2 or max(channels) >= image.shape[0]):
            raise ValueError(f"VirtualPairTransform needs at least two phase channels {channels}, image has shape "
                             f"{tuple(image.shape)} (C first)")
        return channels

    def get_parameters(self, **data_dict) -> dict:
        """``{"weights": w}`` (+ ``"l"`` for two phases): fixed if set, else drawn from ``np.random``."""
        n_phases = len(self._phase_channels(data_dict.get("image")))
        if self.fixed_weights is not None:
            if len(self.fixed_weights) != n_phases:
                raise ValueError(f"fixed_weights has {len(self.fixed_weights)} values for {n_phases} phases")
            weights = self.fixed_weights
        elif self.fixed_l is not None:
            if n_phases != 2:
                raise ValueError(f"fixed_l is for two phases, the image has {n_phases}; use fixed_weights")
            weights = (self.fixed_l, 1.0 - self.fixed_l)
        else:
            weights = draw_mixing_weights(self.alpha, n_phases)
        params = {"weights": tuple(weights)}
        if n_phases == 2:
            params["l"] = weights[0]
        return params

    def _apply_to_image(self, img: torch.Tensor, **params) -> torch.Tensor:
        """img (C, *spatial) -> new (C, *spatial) tensor with the phase channels mixed."""
        channels = self._phase_channels(img)
        weights = params["weights"]
        if len(weights) != len(channels):
            raise ValueError(f"{len(weights)} mixing weights for {len(channels)} phase channels")
        phases = [img[c] for c in channels]
        n = len(channels)
        mixed = img.clone()
        for k, channel in enumerate(channels):
            # for two phases: weight * own + (1 - weight) * other, the paper's formula in the original order of ops
            value = weights[0] * phases[k]
            for shift in range(1, n):
                value = value + weights[shift] * phases[(k + shift) % n]
            mixed[channel] = value
        return mixed


def spatial_block_end(transforms: list[BasicTransform]) -> int:
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
                         channels: Optional[Sequence[int]] = None) -> ComposeTransforms:
    """A copy of nnU-Net's training pipeline with a :class:`VirtualPairTransform` right after the spatial block.

    The spatial block is ``SpatialTransform`` and, for dummy-2D augmentation, the ``Convert2DTo3DTransform`` that
    follows it; the virtual pair therefore precedes all intensity augmentations. Found by type, not position.
    ``channels`` None: every image channel is a phase (K phases mixed with Dirichlet weights; two: the paper's Beta).
    Use it on the result of ``nnUNetTrainer.get_training_transforms`` only (never on validation transforms).
    The input pipeline is not modified. Raises ValueError if it has no single SpatialTransform or already
    contains a VirtualPairTransform.
    """
    if not isinstance(transforms, ComposeTransforms):
        raise TypeError(f"expected a ComposeTransforms, got {type(transforms).__name__}")
    steps = list(transforms.transforms)
    if any(isinstance(step, VirtualPairTransform) for step in steps):
        raise ValueError("the training pipeline already contains a VirtualPairTransform")
    steps.insert(spatial_block_end(steps), VirtualPairTransform(alpha=alpha, channels=channels))
    return ComposeTransforms(steps)
