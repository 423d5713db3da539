"""Tests of nnunet_hpn.nnunet.splits: PDAC-stratified folds written as nnU-Net's splits_final.json."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk
from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_hpn.errors import HPNInputError
from nnunet_hpn.nnunet.splits import assign_folds, resolve_preprocessed_dir, write_crossval_splits

DATASET_NAME = "Dataset991_SplitTest"
N_CASES = 11
PDAC_CASES = {f"HPN_{i:03d}" for i in (0, 2, 3, 7, 10)}  # 5 positive, 6 negative


def write_label(path: Path, with_pdac: bool) -> None:
    label = np.zeros((3, 4, 4), dtype=np.uint8)
    label[1, 1:3, 1:3] = 1
    label[0, 0, 0] = 3
    if with_pdac:
        label[1, 2, 2] = 2
    sitk.WriteImage(sitk.GetImageFromArray(label), str(path))


@pytest.fixture
def nnunet_dirs(tmp_path: Path, monkeypatch) -> dict:
    """Fake nnUNet_raw (labelsTr + dataset.json) and an empty preprocessed dataset folder, env vars set."""
    raw = tmp_path / "raw" / DATASET_NAME
    (raw / "labelsTr").mkdir(parents=True)
    (raw / "dataset.json").write_text(json.dumps({"file_ending": ".nii.gz"}))
    cases = [f"HPN_{i:03d}" for i in range(N_CASES)]
    for case in cases:
        write_label(raw / "labelsTr" / f"{case}.nii.gz", case in PDAC_CASES)
    (raw / "labelsTr" / ".DS_Store").write_text("")
    preprocessed = tmp_path / "preprocessed" / DATASET_NAME
    preprocessed.mkdir(parents=True)
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "preprocessed"))
    monkeypatch.delenv("nnUNet_results", raising=False)
    return {"raw": raw, "preprocessed": preprocessed, "cases": cases}


def test_three_disjoint_stratified_folds(nnunet_dirs: dict) -> None:
    splits = write_crossval_splits(nnunet_dirs["preprocessed"], n_folds=3, seed=12345)
    assert load_json(str(nnunet_dirs["preprocessed"] / "splits_final.json")) == splits
    assert len(splits) == 3
    vals = [set(split["val"]) for split in splits]
    assert set().union(*vals) == set(nnunet_dirs["cases"])
    assert sum(len(v) for v in vals) == N_CASES  # disjoint
    for split, val in zip(splits, vals):
        assert set(split["train"]) == set(nnunet_dirs["cases"]) - val
        assert len(val) in (N_CASES // 3, -(-N_CASES // 3))
        assert len(val & PDAC_CASES) in (len(PDAC_CASES) // 3, -(-len(PDAC_CASES) // 3))
        assert split["val"] == sorted(split["val"]) and split["train"] == sorted(split["train"])


def test_deterministic_and_seed_dependent(nnunet_dirs: dict, tmp_path: Path) -> None:
    first = write_crossval_splits(nnunet_dirs["preprocessed"], seed=7)
    again = write_crossval_splits(tmp_path / "other" / DATASET_NAME, seed=7)  # creates the folder
    assert first == again
    other_seed = write_crossval_splits(tmp_path / "third" / DATASET_NAME, seed=8)
    assert first != other_seed


@pytest.mark.parametrize("n_positive, n_negative, n_folds", [(5, 6, 3), (1, 9, 5), (0, 4, 2), (7, 0, 3), (9, 14, 4)])
def test_assign_folds_balanced(n_positive: int, n_negative: int, n_folds: int) -> None:
    flags = {f"p{i}": True for i in range(n_positive)} | {f"n{i}": False for i in range(n_negative)}
    folds = assign_folds(flags, n_folds, seed=3)
    assert sorted(sum(folds, [])) == sorted(flags)
    for wanted in (True, False):
        total = sum(flag == wanted for flag in flags.values())
        counts = [sum(flags[case] == wanted for case in fold) for fold in folds]
        assert min(counts) >= total // n_folds and max(counts) <= -(-total // n_folds)
    sizes = [len(fold) for fold in folds]
    assert max(sizes) - min(sizes) <= 1
    assert folds == assign_folds(dict(reversed(list(flags.items()))), n_folds, seed=3)  # order-independent


def test_nnunet_do_split_reads_the_file(nnunet_dirs: dict) -> None:
    """nnU-Net's own ``nnUNetTrainer.do_split`` picks up our folds (run on a stand-in trainer)."""
    splits = write_crossval_splits(nnunet_dirs["preprocessed"], n_folds=3)
    log: list[str] = []

    class FakeDataset:
        def __init__(self, folder, identifiers=None, folder_with_segs_from_previous_stage=None):
            self.identifiers = nnunet_dirs["cases"]

    for fold in range(3):
        trainer = SimpleNamespace(dataset_class=FakeDataset, fold=fold,
                                  preprocessed_dataset_folder_base=str(nnunet_dirs["preprocessed"]),
                                  preprocessed_dataset_folder=str(nnunet_dirs["preprocessed"] / "data"),
                                  folder_with_segs_from_previous_stage=None,
                                  print_to_log_file=lambda *args, **kwargs: log.append(" ".join(map(str, args))))
        train_keys, val_keys = nnUNetTrainer.do_split(trainer)
        assert (train_keys, val_keys) == (splits[fold]["train"], splits[fold]["val"])
    assert any("Using splits from existing split file" in line for line in log)
    assert not any("WARNING" in line for line in log)


def test_refuses_to_overwrite_different_split(nnunet_dirs: dict) -> None:
    splits_file = nnunet_dirs["preprocessed"] / "splits_final.json"
    first = write_crossval_splits(nnunet_dirs["preprocessed"], seed=1)
    assert write_crossval_splits(nnunet_dirs["preprocessed"], seed=1) == first  # identical: fine
    with pytest.raises(HPNInputError, match=r"nnunet-hpn split --overwrite \(overwrite=True\) replaces it") as error:
        write_crossval_splits(nnunet_dirs["preprocessed"], seed=2)
    assert str(splits_file) in str(error.value)
    assert json.loads(splits_file.read_text()) == first
    second = write_crossval_splits(nnunet_dirs["preprocessed"], seed=2, overwrite=True)
    assert json.loads(splits_file.read_text()) == second != first
    assert sorted(p.name for p in nnunet_dirs["preprocessed"].iterdir()) == ["splits_final.json"]  # no temp files


def test_explicit_labels_dir_without_nnunet_raw(nnunet_dirs: dict, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("nnUNet_raw")
    splits = write_crossval_splits(tmp_path / "elsewhere", n_folds=2, labels_dir=nnunet_dirs["raw"] / "labelsTr")
    assert len(splits) == 2 and sorted(splits[0]["val"] + splits[1]["val"]) == nnunet_dirs["cases"]
    with pytest.raises(HPNInputError, match="nnUNet_raw"):
        write_crossval_splits(nnunet_dirs["preprocessed"])


def test_bad_input(nnunet_dirs: dict, tmp_path: Path) -> None:
    with pytest.raises(HPNInputError, match="labels folder does not exist"):
        write_crossval_splits(tmp_path / "preprocessed" / "Dataset992_Missing")
    with pytest.raises(HPNInputError, match="fewer than 20 folds"):
        write_crossval_splits(nnunet_dirs["preprocessed"], n_folds=20)
    with pytest.raises(HPNInputError, match="at least 2"):
        write_crossval_splits(nnunet_dirs["preprocessed"], n_folds=1)
    bad = sitk.GetImageFromArray(np.full((3, 4, 4), 7, dtype=np.uint8))
    sitk.WriteImage(bad, str(nnunet_dirs["raw"] / "labelsTr" / "HPN_bad.nii.gz"))
    with pytest.raises(HPNInputError, match=r"HPN_bad\.nii\.gz: unexpected labels \[7\]"):
        write_crossval_splits(nnunet_dirs["preprocessed"])
    assert not (nnunet_dirs["preprocessed"] / "splits_final.json").exists()


def test_resolve_preprocessed_dir(nnunet_dirs: dict) -> None:
    expected = nnunet_dirs["preprocessed"]
    assert resolve_preprocessed_dir(991) == expected
    assert resolve_preprocessed_dir("991") == expected
    assert resolve_preprocessed_dir(DATASET_NAME) == expected
    with pytest.raises(HPNInputError, match="993"):
        resolve_preprocessed_dir(993)
