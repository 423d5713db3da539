"""Final HPN output (paper §3.2): the union of the regions predicted by the original-pair and virtual-pair models.

Union rule, voxel by voxel, for the label scheme (:mod:`nnunet_hpn.labels`) of the predictions: the voxel is
foreground if either map says foreground; where the maps give different labels, the label first in the scheme's
``union_precedence`` wins (the paper's, :data:`LABEL_PRIORITY`: PDAC 2 > duct 3 > pancreas 1), and any foreground
label beats background 0. For a region-based scheme each region is the union of the maps' regions, painted in
``regions_class_order`` as nnU-Net exports region predictions. The rule is symmetric and associative, so more than
two maps (e.g. several folds or models) can be merged in any order.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_hpn.io.publish import check_outputs, published_folder
from nnunet_hpn.errors import HPNInputError
from nnunet_hpn.io.geometry import grid_difference
from nnunet_hpn.io.images import read_label
from nnunet_hpn.io.listing import case_files
from nnunet_hpn.labels import PDAC_SCHEME, LabelScheme, resolve_scheme

#: The paper's foreground labels from highest to lowest priority where two maps disagree: PDAC, duct, pancreas.
LABEL_PRIORITY: tuple[int, ...] = tuple(PDAC_SCHEME.labels[name] for name in PDAC_SCHEME.union_precedence)


def _ranks(scheme: LabelScheme) -> np.ndarray:
    """rank[value] -> priority (higher wins) of each label value of ``scheme``; background 0 ranks lowest."""
    rank = np.zeros(max(scheme.values) + 1, dtype=np.int32)
    for position, name in enumerate(scheme.union_precedence):
        rank[scheme.labels[name]] = len(scheme.union_precedence) - position
    return rank


def _check_label_array(label_map: np.ndarray, name: str, scheme: LabelScheme) -> np.ndarray:
    """``label_map`` as an integer array with values of ``scheme``; ValueError (HPNInputError for values outside the
    scheme) otherwise."""
    label_map = np.asarray(label_map)
    if label_map.dtype == bool or not np.issubdtype(label_map.dtype, np.integer):
        raise ValueError(f"{name}: label map must have an integer dtype, got {label_map.dtype}")
    scheme.check_label_map(label_map, name)
    return label_map


def union_label_maps(original: np.ndarray, virtual: np.ndarray, scheme: LabelScheme = PDAC_SCHEME) -> np.ndarray:
    """Union of two label maps of the same shape (any shape, e.g. (z, y, x)) -> uint8 map of that shape.

    Foreground where either is foreground; where both are foreground with different labels the label first in
    ``scheme.union_precedence`` wins (the paper's :data:`LABEL_PRIORITY`: PDAC (2) > duct (3) > pancreas (1)).
    Region-based ``scheme``: every region the union of both maps' regions, painted in ``regions_class_order``.
    Symmetric in its arguments. Raises ValueError for different shapes, non-integer arrays or values outside the
    scheme.
    """
    original = _check_label_array(original, "original", scheme)
    virtual = _check_label_array(virtual, "virtual", scheme)
    if original.shape != virtual.shape:
        raise ValueError(f"label maps differ in shape: original {original.shape}, virtual {virtual.shape}")
    if scheme.has_regions:
        union = np.zeros(original.shape, dtype=np.uint8)
        for value, name in scheme.output_values.items():
            region = scheme.label_values(name)
            union[np.isin(original, region) | np.isin(virtual, region)] = value
        return union
    rank = _ranks(scheme)
    virtual_wins = rank[virtual] > rank[original]
    return np.where(virtual_wins, virtual, original).astype(np.uint8)


def _matched_cases(input_dirs: list[Path], file_ending: str) -> dict[str, list[Path]]:
    """Case name -> its file in each input folder; HPNInputError if a case is missing from any folder."""
    cases_per_dir = [case_files(folder, file_ending, "input", required=False) for folder in input_dirs]
    all_cases = sorted(set().union(*cases_per_dir))
    if not all_cases:
        raise HPNInputError(f"{input_dirs[0]}: no files ending in {file_ending!r} in any input folder")
    for case in all_cases:
        for folder, cases in zip(input_dirs, cases_per_dir):
            if case not in cases:
                present = next(c[case] for c in cases_per_dir if case in c)
                raise HPNInputError(f"{folder / (case + file_ending)}: case {case!r} is missing "
                                    f"(present as {present})")
    return {case: [cases[case] for cases in cases_per_dir] for case in all_cases}


def _union_of_files(files: list[Path], scheme: LabelScheme = PDAC_SCHEME) -> sitk.Image:
    """Read the label maps ``files``, check their geometry against the first, return their union (uint8 image
    with the first file's geometry)."""
    union, reference = read_label(files[0], scheme)
    for path in files[1:]:
        label_map, image = read_label(path, scheme)
        difference = grid_difference(reference, image)
        if difference is not None:
            raise HPNInputError(f"{path}: geometry differs from {files[0]}: {difference} (this file vs the first)")
        union = union_label_maps(union, label_map, scheme)
    result = sitk.GetImageFromArray(union.astype(np.uint8))
    result.CopyInformation(reference)
    return result


def union_folders(input_dirs: list[Path], output_dir: Path, file_ending: str = ".nii.gz",
                  scheme: LabelScheme | None = None) -> list[str]:
    """Write the union (:func:`union_label_maps`) of the label maps in 2 or more folders; returns the case names.

    Every case (file ending in ``file_ending``) must be present in all folders with the same geometry (size,
    spacing, origin, direction; tolerance as in :mod:`nnunet_hpn.evaluate.metrics`), otherwise HPNInputError naming the
    files; values outside the label scheme also raise HPNInputError (``scheme``: ``-djfile``, default
    :func:`nnunet_hpn.labels.resolve_scheme` beside the input folders: nnUNetv2_predict writes the model's
    dataset.json into them; else the paper's). Outputs are uint8 with the first folder's
    geometry, named like the inputs. All outputs are written to a temporary folder next to ``output_dir`` and
    moved in only once every case succeeded: on error nothing is written. ``output_dir`` may already exist; files
    in it with other names are left alone, files with the same names are replaced.
    """
    input_dirs = [Path(folder) for folder in input_dirs]
    output_dir = Path(output_dir)
    if len(input_dirs) < 2:
        raise HPNInputError(f"{input_dirs[0] if input_dirs else output_dir}: need at least 2 input folders for "
                            f"a union, got {len(input_dirs)}")
    check_outputs([(output_dir, "-o", "folder")], input_dirs)
    cases = _matched_cases(input_dirs, file_ending)
    if scheme is None:
        scheme = resolve_scheme(None, input_dirs)

    with published_folder(output_dir, "merge") as staging:
        for case, files in cases.items():
            sitk.WriteImage(_union_of_files(files, scheme), str(staging / f"{case}{file_ending}"), True)
    return list(cases)
