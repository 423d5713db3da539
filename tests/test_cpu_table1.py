"""scripts/cpu_table1.py's fold archive, without training: a fold counts as archived only once fold.json is
written, complete rows are assembled from the archive (derived rows once their inputs are there), a case predicted
by two folds or an archive made on other data stops the run."""
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "cpu_table1.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("cpu_table1", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["cpu_table1"] = module
    spec.loader.exec_module(module)
    return module


table = _load_script()
#: validation cases per fold of the fake cross-validation
CASES = {0: ["case_a", "case_b"], 1: ["case_c"], 2: ["case_d", "case_e"]}


def _write_label(path: Path, value: int) -> None:
    array = np.zeros((4, 4, 4), dtype=np.uint8)
    array[1:3, 1:3, 1:3] = value
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))


def _fake_model(results: Path, row: str, value: int, folds=(0, 1, 2)) -> None:
    """nnU-Net model folder of ``row`` with finished folds whose validation predicts ``value`` in a cube."""
    model = table.model_dir(results, row)
    for fold in folds:
        validation = model / f"fold_{fold}" / "validation"
        validation.mkdir(parents=True)
        for case in CASES[fold]:
            _write_label(validation / f"{case}.nii.gz", value)
            np.savez_compressed(validation / f"{case}.npz", probabilities=np.zeros((2, 4, 4, 4), np.float32))
        (model / f"fold_{fold}" / "training_log_x.txt").write_text("epoch 0\n")
        (model / f"fold_{fold}" / "debug.json").write_text(json.dumps({"num_epochs": "80", "other": "x"}))
    for name in ("plans.json", "dataset.json"):
        (model / name).write_text("{}")


def test_record_once_then_refuse_other_values(tmp_path):
    table.check_or_record(tmp_path / "folds", "splits_final.json", [{"train": ["a"], "val": ["b"]}])
    table.check_or_record(tmp_path / "folds", "splits_final.json", [{"train": ["a"], "val": ["b"]}])
    with pytest.raises(table.ArchiveMismatch, match="splits_final.json"):
        table.check_or_record(tmp_path / "folds", "splits_final.json", [{"train": ["b"], "val": ["a"]}])


def test_labels_digest_changes_with_a_label(tmp_path):
    _write_label(tmp_path / "case_a.nii.gz", 1)
    before = table.labels_digest(tmp_path)
    _write_label(tmp_path / "case_a.nii.gz", 2)
    assert table.labels_digest(tmp_path) != before


def test_archived_folds_assemble_into_rows_and_derived_rows(tmp_path):
    results, archive, rows_dir = tmp_path / "results", tmp_path / "docs" / "folds", tmp_path / "rows"
    _fake_model(results, "hpn", 1)
    _fake_model(results, "hpn_virtual", 2, folds=(0, 1))
    _fake_model(results, "arterial", 3)
    for row, folds in (("hpn", (0, 1, 2)), ("hpn_virtual", (0, 1)), ("arterial", (0, 1, 2))):
        for fold in folds:
            table.archive_fold(archive, results, row, fold, seconds=12.5)
    fold_json = json.loads((archive / "hpn" / "fold_1" / "fold.json").read_text())
    assert fold_json["cases"] == ["case_c"] and fold_json["training_seconds"] == 12.5
    assert fold_json["budget"] == {"num_epochs": "80"}
    # single-phase rows keep the probabilities late fusion averages; the others only label maps
    assert (archive / "arterial" / "fold_0" / "case_a.npz").is_file()
    assert not (archive / "hpn" / "fold_0" / "case_a.npz").exists()
    assert (archive / "hpn" / "fold_0" / "training_log_x.txt").is_file()

    assert table.assemble_rows(archive, rows_dir, env={}) == ["arterial", "hpn"]  # fusion needs venous
    assert sorted(path.name for path in (rows_dir / "hpn").glob("*.nii.gz")) == [
        f"{case}.nii.gz" for fold in CASES.values() for case in fold]

    _fake_model(results, "hpn_virtual", 2, folds=(2,))
    table.archive_fold(archive, results, "hpn_virtual", 2, seconds=None)
    assert table.assemble_rows(archive, rows_dir, env={}) == ["arterial", "hpn", "hpn_virtual", "hpn_union"]
    union = sitk.GetArrayFromImage(sitk.ReadImage(str(rows_dir / "hpn_union" / "case_d.nii.gz")))
    expected = np.zeros((4, 4, 4), np.uint8)
    expected[1:3, 1:3, 1:3] = 2  # pancreas (hpn) and PDAC (hpn_virtual) on the same voxels: PDAC wins
    np.testing.assert_array_equal(union, expected)


def test_fold_without_fold_json_is_not_archived_and_a_case_in_two_folds_is_refused(tmp_path):
    results, archive = tmp_path / "results", tmp_path / "docs" / "folds"
    _fake_model(results, "hpn", 1)
    for fold in (0, 1, 2):
        table.archive_fold(archive, results, "hpn", fold, seconds=1.0)
    (archive / "hpn" / "fold_2" / "fold.json").unlink()  # a copy interrupted before its last file
    assert not table.is_archived(archive, "hpn", 2)
    assert table.assemble_rows(archive, tmp_path / "rows", env={}) == []
    table.archive_fold(archive, results, "hpn", 2, seconds=1.0)
    _write_label(archive / "hpn" / "fold_2" / "case_a.nii.gz", 1)  # case_a is fold 0's
    with pytest.raises(table.ArchiveMismatch, match="more than one fold"):
        table.assemble_rows(archive, tmp_path / "rows", env={})
