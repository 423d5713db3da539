"""Dice evaluation of predicted label maps against ground truth, per HPN target.

Targets are unions of labels (see :data:`TARGETS`). The per-case overlap counts come from nnU-Net's own
helpers (``region_or_label_to_mask`` / ``compute_tp_fp_fn_tn``), so the abnormal-pancreas Dice equals the
region Dice that ``nnunetv2.evaluation.evaluate_predictions.compute_metrics_on_folder`` reports for
``(1, 2, 3)`` wherever nnU-Net's value is defined (nnU-Net gives NaN when both masks are empty; we give 1.0).

Convention for empty masks (never NaN):
    truth and prediction both empty -> Dice 1.0 (correctly predicted absence);
    exactly one of them empty       -> Dice 0.0.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from nnunetv2.evaluation.evaluate_predictions import compute_tp_fp_fn_tn, region_or_label_to_mask

from nnunet_hpn import LABELS
from nnunet_hpn.atomic_io import write_text_atomically
from nnunet_hpn.errors import HPNInputError

#: Evaluated targets: name -> labels whose union forms the target mask.
TARGETS: dict[str, tuple[int, ...]] = {"abnormal pancreas": (1, 2, 3), "PDAC": (2,), "duct": (3,)}

#: Largest absolute difference allowed between spacing / origin / direction entries of truth and prediction.
GEOMETRY_TOLERANCE: float = 1e-4


def target_mask(label_map: np.ndarray, labels: tuple[int, ...]) -> np.ndarray:
    """Boolean mask of the voxels whose label is any of ``labels``."""
    return region_or_label_to_mask(label_map, tuple(labels))


def dice_from_masks(truth_mask: np.ndarray, pred_mask: np.ndarray) -> float:
    """Dice of two boolean masks: 1.0 if both are empty, 0.0 if exactly one is empty; never NaN."""
    tp, fp, fn, _ = compute_tp_fp_fn_tn(truth_mask, pred_mask)
    denominator = 2 * tp + fp + fn
    if denominator == 0:
        return 1.0
    return float(2 * tp / denominator)


def dice_per_target(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Dice per target of :data:`TARGETS` (each target = union of its labels).

    Both empty -> 1.0, exactly one empty -> 0.0, never NaN. ``pred`` and ``truth`` must have the same shape.
    """
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from truth shape {truth.shape}")
    return {name: dice_from_masks(target_mask(truth, labels), target_mask(pred, labels))
            for name, labels in TARGETS.items()}


def _read_label_map(path: Path) -> tuple[np.ndarray, sitk.Image]:
    """Read a label map as an integer (z, y, x) array plus its image (for geometry)."""
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise HPNInputError(f"{path}: cannot be read as an image ({str(error).strip().splitlines()[-1]})") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise HPNInputError(f"{path}: label map must have one component per voxel, "
                            f"found {image.GetNumberOfComponentsPerPixel()}")
    array = sitk.GetArrayFromImage(image)
    if not np.issubdtype(array.dtype, np.integer):
        if not np.array_equal(array, np.round(array)):
            raise HPNInputError(f"{path}: label map contains non-integer values")
        array = array.astype(np.int16)
    unexpected = sorted(set(np.unique(array).tolist()) - set(LABELS.values()))
    if unexpected:
        raise HPNInputError(f"{path}: unexpected labels {unexpected}, expected only {sorted(LABELS.values())}")
    return array, image


def _geometry_difference(truth: sitk.Image, pred: sitk.Image) -> str | None:
    """Describe the first geometry property in which ``pred`` differs from ``truth``; None if they match."""
    if truth.GetSize() != pred.GetSize():
        return f"size {pred.GetSize()} vs {truth.GetSize()}"
    for name in ("Spacing", "Origin", "Direction"):
        truth_value = np.asarray(getattr(truth, f"Get{name}")(), dtype=float)
        pred_value = np.asarray(getattr(pred, f"Get{name}")(), dtype=float)
        if truth_value.shape != pred_value.shape or not np.allclose(pred_value, truth_value, rtol=0,
                                                                      atol=GEOMETRY_TOLERANCE):
            return (f"{name.lower()} {tuple(np.round(pred_value, 6).tolist())} "
                    f"vs {tuple(np.round(truth_value, 6).tolist())}")
    return None


def _truth_cases(truth_dir: Path, file_ending: str) -> dict[str, Path]:
    """Case name -> truth file, for every file in ``truth_dir`` ending in ``file_ending``."""
    if not truth_dir.is_dir():
        raise HPNInputError(f"{truth_dir}: truth folder does not exist")
    cases = {path.name[: -len(file_ending)]: path for path in sorted(truth_dir.iterdir())
             if path.is_file() and path.name.endswith(file_ending)}
    if not cases:
        raise HPNInputError(f"{truth_dir}: no truth files ending in {file_ending!r}")
    return cases


def _aggregate(per_case: dict[str, dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and population std (ddof=0) over cases, per target."""
    means, stds = {}, {}
    for name in TARGETS:
        values = np.array([case_scores[name] for case_scores in per_case.values()], dtype=float)
        means[name] = float(values.mean())
        stds[name] = float(values.std(ddof=0))
    return means, stds


def evaluate_folders(pred_dir: Path, truth_dir: Path, file_ending: str = ".nii.gz") -> dict[str, Any]:
    """Dice per case and target for every truth label map in ``truth_dir`` against ``pred_dir``.

    Every truth case needs a prediction with the same file name and geometry (size, spacing, origin, direction;
    tolerance 1e-4), otherwise HPNInputError. Predictions without truth are ignored.

    Returns ``{"per_case": {case: {target: dice}}, "mean": {target: float}, "std": {target: float},
    "n_cases": int, "present": {target: cases with the target in truth},
    "missed": {target: cases with the target in truth but Dice == 0}}``. ``std`` is the population standard
    deviation (ddof=0). Empty-mask convention as in :func:`dice_per_target`.
    """
    pred_dir, truth_dir = Path(pred_dir), Path(truth_dir)
    truth_files = _truth_cases(truth_dir, file_ending)
    if not pred_dir.is_dir():
        raise HPNInputError(f"{pred_dir}: prediction folder does not exist")

    per_case: dict[str, dict[str, float]] = {}
    present = {name: 0 for name in TARGETS}
    missed = {name: 0 for name in TARGETS}
    for case, truth_file in truth_files.items():
        pred_file = pred_dir / truth_file.name
        if not pred_file.is_file():
            raise HPNInputError(f"{pred_file}: missing prediction for truth case {truth_file}")
        truth, truth_image = _read_label_map(truth_file)
        pred, pred_image = _read_label_map(pred_file)
        difference = _geometry_difference(truth_image, pred_image)
        if difference is not None:
            raise HPNInputError(f"{pred_file}: geometry differs from {truth_file}: {difference} (prediction vs truth)")

        per_case[case] = dice_per_target(pred, truth)
        for name, labels in TARGETS.items():
            if target_mask(truth, labels).any():
                present[name] += 1
                if per_case[case][name] == 0.0:
                    missed[name] += 1

    means, stds = _aggregate(per_case)
    return {"per_case": per_case, "mean": means, "std": stds, "n_cases": len(per_case),
            "present": present, "missed": missed}


def format_dice_table(result: dict[str, Any]) -> str:
    """Plain-text table for a terminal: one row per target, Dice mean ± std in %, missed, present, n."""
    header = ("target", "Dice % (mean ± std)", "missed", "present", "n")
    rows = [(name,
             f"{100 * result['mean'][name]:.2f} ± {100 * result['std'][name]:.2f}",
             str(result["missed"][name]),
             str(result["present"][name]) if "present" in result else "-",
             str(result["n_cases"]))
            for name in TARGETS if name in result["mean"]]
    widths = [max(len(row[column]) for row in (header, *rows)) for column in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:])]
        return "  ".join([first, *rest])

    rule = "-" * len(line(header))
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def write_summary(result: dict[str, Any], path_json: Path) -> tuple[Path, Path]:
    """Write ``result`` as JSON to ``path_json`` and the per-case Dice as CSV next to it (same stem, ``.csv``).

    CSV columns: ``case`` then ``Dice <target>`` per target. Returns (json path, csv path).
    """
    path_json = Path(path_json)
    path_json.parent.mkdir(parents=True, exist_ok=True)
    path_csv = path_json.with_suffix(".csv")
    write_text_atomically(path_json, json.dumps(result, indent=2) + "\n")

    lines = io.StringIO()
    writer = csv.writer(lines, lineterminator="\n")
    writer.writerow(["case", *(f"Dice {name}" for name in TARGETS)])
    for case, scores in result["per_case"].items():
        writer.writerow([case, *(f"{scores[name]:.6f}" for name in TARGETS)])
    write_text_atomically(path_csv, lines.getvalue())
    return path_json, path_csv
