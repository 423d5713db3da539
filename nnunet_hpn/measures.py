"""Per-case measures of two masks on one grid: Dice, HD95 and NSD, shared by the evaluation and the registration QC.

* **Dice** from nnU-Net's own helpers (``region_or_label_to_mask`` / ``compute_tp_fp_fn_tn``), so every label's and
  region's Dice equals the one ``nnunetv2.evaluation.evaluate_predictions.compute_metrics_on_folder`` reports
  wherever nnU-Net's value is defined (nnU-Net gives NaN when both masks are empty; we give 1.0).
* **HD95** (mm): MONAI's ``compute_hausdorff_distance(percentile=95)``, symmetric: the larger of the two directed
  95th percentiles of the distances between boundary voxels (mask XOR its 6-connected erosion; the image border
  counts as boundary).
* **NSD** (normalised surface Dice, 0..1): MONAI's ``compute_surface_dice`` with boundary voxels counted (no
  sub-voxel areas): the fraction of boundary voxels of both masks lying within ``tolerance_mm`` (distance <=
  tolerance) of the other mask's boundary.

Both surface measures use physical distances from the image spacing (numpy (z, y, x) order, i.e. SimpleITK's
``GetSpacing()`` reversed), so anisotropic voxels are honoured.

Convention for empty masks (every value is finite):
    both empty        -> Dice 1.0, HD95 0 mm, NSD 1.0 (correctly predicted absence);
    exactly one empty -> Dice 0.0, NSD 0.0, HD95 = the image diagonal in mm (the largest distance between two voxel
    centres of the image, ``norm((shape - 1) * spacing)``).
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
from nnunetv2.evaluation.evaluate_predictions import compute_tp_fp_fn_tn, region_or_label_to_mask

#: Default NSD tolerance in mm.
DEFAULT_TOLERANCE_MM: float = 2.0


def target_mask(label_map: np.ndarray, labels: tuple[int, ...]) -> np.ndarray:
    """Boolean mask of the voxels whose label is any of ``labels`` (same shape as ``label_map``)."""
    return region_or_label_to_mask(label_map, tuple(labels))


def dice_from_masks(truth_mask: np.ndarray, pred_mask: np.ndarray) -> float:
    """Dice of two equally shaped boolean masks: 1.0 if both are empty, 0.0 if exactly one is empty; never NaN."""
    tp, fp, fn, _ = compute_tp_fp_fn_tn(truth_mask, pred_mask)
    denominator = 2 * tp + fp + fn
    if denominator == 0:
        return 1.0
    return float(2 * tp / denominator)


def image_diagonal_mm(shape: Sequence[int], spacing_zyx: Sequence[float]) -> float:
    """Largest distance between two voxel centres of a (z, y, x) image, in mm: ``norm((shape - 1) * spacing)``."""
    return float(np.linalg.norm((np.asarray(shape, dtype=float) - 1) * np.asarray(spacing_zyx, dtype=float)))


def surface_metrics(truth_mask: np.ndarray, pred_mask: np.ndarray, spacing_zyx: Sequence[float],
                    tolerance_mm: float = DEFAULT_TOLERANCE_MM) -> tuple[float, float]:
    """(HD95 in mm, NSD) of two boolean (z, y, x) masks with MONAI, distances scaled by ``spacing_zyx`` (mm).

    Empty masks follow the module's convention: both empty -> (0, 1); exactly one empty -> (image diagonal, 0).
    """
    import torch
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    if truth_mask.shape != pred_mask.shape:
        raise ValueError(f"prediction shape {pred_mask.shape} differs from truth shape {truth_mask.shape}")
    if len(spacing_zyx) != truth_mask.ndim:
        raise ValueError(f"spacing {tuple(spacing_zyx)} does not match a {truth_mask.ndim}-D mask")
    if tolerance_mm < 0 or not np.isfinite(tolerance_mm):
        raise ValueError(f"tolerance must be a finite number >= 0 mm, got {tolerance_mm}")
    truth_any, pred_any = bool(truth_mask.any()), bool(pred_mask.any())
    if not truth_any and not pred_any:
        return 0.0, 1.0
    if truth_any != pred_any:
        return image_diagonal_mm(truth_mask.shape, spacing_zyx), 0.0

    spacing = [float(value) for value in spacing_zyx]
    truth_tensor = torch.from_numpy(np.ascontiguousarray(truth_mask, dtype=np.float32))[None, None]
    pred_tensor = torch.from_numpy(np.ascontiguousarray(pred_mask, dtype=np.float32))[None, None]
    with warnings.catch_warnings():
        # MONAI 1.5+ passes a deprecated argument to itself inside get_mask_edges; nothing for us to change.
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"monai\.")
        hd95 = compute_hausdorff_distance(pred_tensor, truth_tensor, include_background=True, percentile=95,
                                          spacing=spacing)
        nsd = compute_surface_dice(pred_tensor, truth_tensor, [float(tolerance_mm)], include_background=True,
                                   spacing=spacing, use_subvoxels=False)
    hd95_value, nsd_value = float(hd95.reshape(-1)[0]), float(nsd.reshape(-1)[0])
    if not (np.isfinite(hd95_value) and np.isfinite(nsd_value)):   # cannot happen for two non-empty masks
        raise RuntimeError(f"MONAI returned a non-finite surface metric (HD95 {hd95_value}, NSD {nsd_value})")
    return hd95_value, nsd_value
