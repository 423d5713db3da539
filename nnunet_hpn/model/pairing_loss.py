"""Pairing loss of the Hyper-Pairing Network (Zhou et al., MICCAI 2019, §2.2, Eq. 1).

The negative Pearson correlation between the high-level features of two paths, with the voxels of one sample
as the observations, computed per sample and per channel, then averaged. Computed in float32 with autocast
off, and made robust to constant features (correlation 0, finite gradient) and to any magnitude (each
(sample, channel) is rescaled by its max-abs value before products are formed).
"""
from __future__ import annotations

from itertools import combinations
from typing import Sequence

import torch
from torch import Tensor

_FLOAT32_TINY = torch.finfo(torch.float32).tiny


def _normalised_deviations(features: Tensor) -> Tensor:
    """(B, C, N) float32 -> deviations from the per-(b, c) mean, scaled so that max |value| is 1 (or all 0).

    The values are first divided by their max-abs (so the mean cannot overflow and a constant row becomes exactly
    +-1, whose mean is exact), then centred, then divided by the max-abs of the deviations. Both scales are
    detached: correlation is invariant to them, so their true gradient contribution is zero, and detaching keeps
    the backward pass free of 1/scale^2 terms that overflow for constant or tiny inputs.
    """
    scale = features.detach().abs().amax(dim=-1, keepdim=True).clamp_min(_FLOAT32_TINY)
    features = features / scale
    deviations = features - features.mean(dim=-1, keepdim=True)
    deviation_scale = deviations.detach().abs().amax(dim=-1, keepdim=True).clamp_min(_FLOAT32_TINY)
    return deviations / deviation_scale


def pearson_correlation(fa: Tensor, fb: Tensor) -> Tensor:
    """Pearson correlation over voxels, per sample and channel: (B, C, *spatial) x 2 -> (B, C) float32.

    A (b, c) whose features are constant in either input has correlation 0 (value and gradient finite).
    """
    if fa.shape != fb.shape:
        raise ValueError(f"pairing features must have the same shape, got {tuple(fa.shape)} and {tuple(fb.shape)}")
    if fa.ndim < 3:
        raise ValueError(f"expected features (B, C, *spatial), got shape {tuple(fa.shape)}")
    with torch.autocast(device_type=fa.device.type, enabled=False):
        a = _normalised_deviations(fa.float().flatten(2))
        b = _normalised_deviations(fb.float().flatten(2))
        covariance = (a * b).sum(dim=-1)
        variance_a = (a * a).sum(dim=-1)  # >= 1 unless the row is constant (then exactly 0)
        variance_b = (b * b).sum(dim=-1)
        defined = (variance_a > 0) & (variance_b > 0)
        # "double where": the sqrt never sees 0, so no inf/NaN gradient leaks through the masked branch
        safe_denominator = torch.sqrt(torch.where(defined, variance_a * variance_b, torch.ones_like(variance_a)))
        return torch.where(defined, covariance / safe_denominator, torch.zeros_like(covariance))


def pairing_loss_float32_maps(n_paths: int) -> int:
    """How many float32 tensors of one path's features' size (C x voxels, per sample) :func:`pairing_loss` holds at
    its peak, on top of the features themselves: each of the K·(K-1)/2 pairs keeps its two normalised deviations for
    the backward pass (K·(K-1)), and the pair being computed has up to two more in flight (the float32 copy or the
    rescaled features before centring, and a product)."""
    return n_paths * (n_paths - 1) + 2


def pairing_loss(features: Sequence[Tensor]) -> Tensor:
    """Eq. 1: minus the mean Pearson correlation over samples, channels and unordered pairs of paths.

    features: K >= 2 tensors (B, C, *spatial), e.g. ``HyperPairedUNet.pop_pairing_features()``. Returns a
    float32 scalar in [-1, 1] (-1 = perfectly correlated).
    """
    features = list(features)
    if len(features) < 2:
        raise ValueError(f"the pairing loss needs the features of at least two paths, got {len(features)}")
    correlations = [pearson_correlation(fa, fb).mean() for fa, fb in combinations(features, 2)]
    return -torch.stack(correlations).mean()
