"""Random smooth displacement fields: random vectors on a coarse control grid, interpolated to every voxel and
scaled to a chosen largest displacement. Used by the misalignment augmentation
(:mod:`nnunet_hpn.augment.phase_misalignment`) and the phantom's per-phase deformations (:mod:`nnunet_hpn.phantom`).
NumPy and SciPy only; the caller draws the control-point vectors from its own random stream.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.interpolate import make_interp_spline

#: Einsum letters of the dense (output) axes and of the control-grid axes, up to three spatial axes.
_DENSE_AXES, _CONTROL_AXES = "uvw", "ijk"


def control_grid_field(control: np.ndarray, shape: Sequence[int], degree: int = 3) -> np.ndarray:
    """Dense field (C, *shape) through the control-point values ``control`` (C, *n_control), whose first and last
    points lie on the first and last voxel of each axis: spline interpolation of ``degree`` along each axis
    (1: multilinear; 3: cubic, needs at least 4 control points per axis). 1 to 3 spatial axes; the field has the
    dtype of ``control``."""
    spatial = len(shape)
    if control.ndim != spatial + 1 or not 1 <= spatial <= len(_DENSE_AXES):
        raise ValueError(f"control values of shape {control.shape} do not fit a field of {spatial} spatial axes "
                         f"(expected (C, n_1, ..., n_{spatial}), 1 to {len(_DENSE_AXES)} axes)")
    weights = [make_interp_spline(np.linspace(0, 1, points), np.eye(points), k=degree)(np.linspace(0, 1, size))
               .astype(control.dtype, copy=False) for points, size in zip(control.shape[1:], shape)]
    dense, coarse = _DENSE_AXES[:spatial], _CONTROL_AXES[:spatial]
    subscripts = ",".join(d + c for d, c in zip(dense, coarse)) + f",c{coarse}->c{dense}"
    return np.einsum(subscripts, *weights, control, optimize=True)


def scaled_to_peak(field: np.ndarray, peak: float) -> np.ndarray:
    """``field`` (C, *spatial) scaled so that its longest vector is ``peak`` long; a zero field stays zero."""
    longest = np.linalg.norm(field, axis=0).max()
    return field * (peak / longest) if longest > 0 else np.zeros_like(field)
