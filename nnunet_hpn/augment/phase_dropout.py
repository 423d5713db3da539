"""Phase dropout: training augmentation that blanks whole phases, so a model learns to predict with a phase missing.

Per training sample, with probability ``p``, ``m`` of the K phase channels are set to exactly 0, with ``m`` drawn
uniformly from ``1 .. max_dropped`` (default K - 1) and the channels drawn uniformly without replacement: at least
one phase always survives. 0 is the documented missing-phase policy of :mod:`nnunet_hpn.pipeline.missing_phase`: at
prediction a missing phase is a constant image, which HPN's per-case z-scoring maps to exactly 0. The transform is
appended as the **last** step of nnU-Net's training pipeline, after every intensity augmentation and the mirroring,
so a dropped channel is exactly 0 as at prediction (noise or gamma applied after it would make it differ).
Validation and inference pipelines never contain it.

Draws use ``np.random`` (nnU-Net re-seeds NumPy per data-loader worker; torch draws would repeat across workers).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from batchgeneratorsv2.transforms.base.basic_transform import ImageOnlyTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms

from nnunet_hpn.phases import DEFAULT_FILL_POLICY, FILL_POLICIES, check_fill_policy

#: Share of training samples that lose at least one phase.
DEFAULT_DROPOUT_PROBABILITY: float = 0.3


class PhaseDropoutTransform(ImageOnlyTransform):
    """Per sample, with probability ``p``, set between 1 and ``max_dropped`` phase channels to the fill value 0.

    ``image`` is (C, X, Y, Z) (or (C, X, Y)); ``channels`` are the phase channels (None: all C but the last
    ``n_context_channels``, the previous stage's one-hot segmentation nnU-Net's cascade appends). ``max_dropped``
    (None: K - 1) is capped at K - 1, so one phase always remains. ``get_parameters`` returns ``{"dropped": tuple of
    channel indices}`` (empty: sample unchanged). The input tensor is not modified; a new tensor is returned when a
    phase is dropped.
    """

    def __init__(self, p: float = DEFAULT_DROPOUT_PROBABILITY, channels: Optional[Sequence[int]] = None,
                 max_dropped: Optional[int] = None, policy: str = DEFAULT_FILL_POLICY,
                 n_context_channels: int = 0) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must lie in [0, 1], got {p}")
        if channels is not None and (len(channels) < 2 or len(set(channels)) != len(channels)):
            raise ValueError(f"channels must be at least two different channel indices, got {channels}")
        if max_dropped is not None and max_dropped < 1:
            raise ValueError(f"max_dropped must be at least 1, got {max_dropped}")
        if n_context_channels < 0:
            raise ValueError(f"n_context_channels must be >= 0, got {n_context_channels}")
        check_fill_policy(policy)
        self.p = float(p)
        self.channels = None if channels is None else tuple(int(c) for c in channels)
        self.max_dropped = max_dropped
        self.policy = policy
        self.n_context_channels = int(n_context_channels)

    def _phase_channels(self, image: torch.Tensor) -> tuple[int, ...]:
        channels = (self.channels if self.channels is not None
                    else tuple(range(image.shape[0] - self.n_context_channels)))
        if len(channels) < 2:
            raise ValueError(f"phase dropout needs at least two phase channels, image has shape {tuple(image.shape)}")
        if max(channels) >= image.shape[0]:
            raise ValueError(f"PhaseDropoutTransform needs channels {channels}, image has shape "
                             f"{tuple(image.shape)} (C first)")
        return channels

    def get_parameters(self, **data_dict) -> dict:
        """``{"dropped": (channel, ...)}`` drawn with ``np.random``; empty with probability 1 - p."""
        channels = self._phase_channels(data_dict["image"])
        if np.random.uniform() >= self.p:
            return {"dropped": ()}
        limit = len(channels) - 1 if self.max_dropped is None else min(self.max_dropped, len(channels) - 1)
        n_dropped = int(np.random.randint(1, limit + 1))
        dropped = np.random.choice(channels, size=n_dropped, replace=False)
        return {"dropped": tuple(sorted(int(c) for c in dropped))}

    def _apply_to_image(self, img: torch.Tensor, **params) -> torch.Tensor:
        """img (C, *spatial) -> the same tensor, or a copy with the dropped channels set to the fill value."""
        if not params["dropped"]:
            return img
        out = img.clone()
        out[list(params["dropped"])] = FILL_POLICIES[self.policy]
        return out


def append_phase_dropout(transforms: ComposeTransforms, p: float = DEFAULT_DROPOUT_PROBABILITY,
                         channels: Optional[Sequence[int]] = None,
                         max_dropped: Optional[int] = None, n_context_channels: int = 0) -> ComposeTransforms:
    """A copy of nnU-Net's *training* pipeline with a :class:`PhaseDropoutTransform` as its last step.

    The input pipeline is not modified. Raises ValueError if it already contains a PhaseDropoutTransform.
    """
    if not isinstance(transforms, ComposeTransforms):
        raise TypeError(f"expected a ComposeTransforms, got {type(transforms).__name__}")
    steps = list(transforms.transforms)
    if any(isinstance(step, PhaseDropoutTransform) for step in steps):
        raise ValueError("the training pipeline already contains a PhaseDropoutTransform")
    return ComposeTransforms(steps + [PhaseDropoutTransform(p=p, channels=channels, max_dropped=max_dropped,
                                                            n_context_channels=n_context_channels)])
