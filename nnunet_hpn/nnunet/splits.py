"""Cross-validation splits stratified by the presence of the lesion target, written as nnU-Net's
``splits_final.json``.

nnU-Net's own split (5-fold KFold over all cases) ignores which cases contain the lesion (the label scheme's lesion
target, :mod:`nnunet_hpn.labels`: the PDAC mass, label 2, for the paper's); with few lesion-positive cases a fold can
end up with none. Here the positive and negative cases are each shuffled with a seeded RNG and dealt round-robin
over the folds (negatives continue where the positives stopped), so every fold gets floor/ceil of the positives, of
the negatives and of all cases.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import nnunetv2.paths as nnunet_paths

from nnunet_hpn.io.publish import write_text_atomically
from nnunet_hpn.errors import HPNInputError
from nnunet_hpn.io.images import read_label
from nnunet_hpn.io.listing import case_files
from nnunet_hpn.labels import PDAC_SCHEME, LabelScheme, resolve_scheme

SPLITS_FILE_NAME: str = "splits_final.json"
DEFAULT_FILE_ENDING: str = ".nii.gz"


def _nnunet_folder(variable: str) -> Path:
    """The folder nnU-Net's environment variable ``variable`` (``nnUNet_raw`` / ``nnUNet_preprocessed``) names."""
    value = getattr(nnunet_paths, variable)
    try:
        return Path(os.fspath(value))
    except (RuntimeError, TypeError):  # nnU-Net 2.8.1 raises RuntimeError when the variable is unset
        raise HPNInputError(f"{variable}: environment variable is not set") from None


def resolve_preprocessed_dir(dataset: str | int) -> Path:
    """``$nnUNet_preprocessed/DatasetXXX_Name`` for a dataset id (``990``, ``"990"``) or name."""
    from nnunet_hpn.nnunet.dataset_names import dataset_name

    folder = _nnunet_folder("nnUNet_preprocessed")
    return folder / dataset_name(dataset)


def _file_ending(json_candidates: list[Path]) -> str:
    """``file_ending`` of the first existing dataset.json among ``json_candidates``; ``.nii.gz`` if none."""
    for path in json_candidates:
        if path.is_file():
            try:
                return json.loads(path.read_text(encoding="utf-8"))["file_ending"]
            except (ValueError, KeyError):
                raise HPNInputError(f"{path}: not a dataset.json with a 'file_ending' entry") from None
    return DEFAULT_FILE_ENDING


def lesion_positive_cases(labels_dir: Path, file_ending: str = DEFAULT_FILE_ENDING,
                          scheme: LabelScheme = PDAC_SCHEME) -> dict[str, bool]:
    """Case id -> whether its label map (``labels_dir/<case><file_ending>``) contains the lesion target of
    ``scheme`` (default the paper's PDAC, label 2)."""
    return {case: bool(np.isin(read_label(path, scheme)[0], scheme.lesion_values).any())
            for case, path in case_files(labels_dir, file_ending, "labels").items()}


def assign_folds(lesion_positive: dict[str, bool], n_folds: int, seed: int) -> list[list[str]]:
    """Validation cases of each fold (sorted): positives then negatives, each seeded-shuffled, dealt round-robin.

    Deterministic for (cases, n_folds, seed) and independent of the dict's order. Each fold gets floor or ceil
    of n/n_folds positives, negatives and cases.
    """
    # Not sklearn's StratifiedKFold: for the same seed it deals the cases into other folds, and trainings continue
    # (--c) and are compared against splits_final.json files written by this rule.
    rng = np.random.RandomState(seed)  # legacy generator: stream frozen across NumPy versions
    positives = sorted(case for case, positive in lesion_positive.items() if positive)
    negatives = sorted(case for case, positive in lesion_positive.items() if not positive)
    order = [positives[i] for i in rng.permutation(len(positives))] + \
            [negatives[i] for i in rng.permutation(len(negatives))]
    folds: list[list[str]] = [[] for _ in range(n_folds)]
    for position, case in enumerate(order):
        folds[position % n_folds].append(case)
    return [sorted(fold) for fold in folds]


def write_crossval_splits(preprocessed_dataset_dir: Path, n_folds: int = 3, seed: int = 12345,
                          labels_dir: Path | None = None, overwrite: bool = False,
                          file_ending: str | None = None, scheme: LabelScheme | None = None) -> list[dict]:
    """Write ``splits_final.json`` (nnU-Net format: ``[{"train": [...], "val": [...]}, ...]``) into
    ``preprocessed_dataset_dir`` and return the splits.

    Cases are the training labels: ``labels_dir`` if given, else ``$nnUNet_raw/<same dataset name>/labelsTr``.
    ``file_ending`` defaults to the dataset.json's (preprocessed folder, then the labels' parent folder), else
    ``.nii.gz``. Folds are disjoint, cover all cases and are stratified by the presence of the lesion target
    (:func:`assign_folds`) of ``scheme`` (``-djfile``; default: :func:`nnunet_hpn.labels.resolve_scheme` of the
    preprocessed folder, then of the labels' dataset, else the paper's).
    An existing identical file is left as is; an existing different one raises HPNInputError unless ``overwrite``.
    """
    preprocessed_dataset_dir = Path(preprocessed_dataset_dir)
    if n_folds < 2:
        raise HPNInputError(f"{preprocessed_dataset_dir}: n_folds must be at least 2, got {n_folds}")
    if labels_dir is None:
        labels_dir = _nnunet_folder("nnUNet_raw") / preprocessed_dataset_dir.name / "labelsTr"
    labels_dir = Path(labels_dir)
    if file_ending is None:
        file_ending = _file_ending([preprocessed_dataset_dir / "dataset.json", labels_dir.parent / "dataset.json"])

    if scheme is None:
        scheme = resolve_scheme(None, (preprocessed_dataset_dir, labels_dir))
    positive = lesion_positive_cases(labels_dir, file_ending, scheme)
    if len(positive) < n_folds:
        raise HPNInputError(f"{labels_dir}: {len(positive)} labelled cases, fewer than {n_folds} folds")
    folds = assign_folds(positive, n_folds, seed)
    all_cases = sorted(positive)
    splits = []
    for fold in folds:
        val_cases = set(fold)
        splits.append({"train": [case for case in all_cases if case not in val_cases], "val": fold})

    splits_file = preprocessed_dataset_dir / SPLITS_FILE_NAME
    if splits_file.exists():
        try:
            existing = json.loads(splits_file.read_text(encoding="utf-8"))
        except ValueError:
            existing = None
        if existing == splits:
            return splits
        if not overwrite:
            raise HPNInputError(f"{splits_file}: a different split file already exists; "
                                f"nnunet-hpn split --overwrite (overwrite=True) replaces it")
    preprocessed_dataset_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomically(splits_file, json.dumps(splits, indent=4))
    return splits
