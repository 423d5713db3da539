"""scripts/cpu_table1.py's fold archive, without training: a fold counts as archived only once fold.json is
written, complete rows are assembled from the archive (derived rows once their inputs are there), a case predicted
by two folds or an archive made on other data stops the run; Table 1 v2's per-seed archive, trainings.csv and its
training-level statistics (nnunet_hpn/evaluate/training_stats.py) on synthetic numbers."""
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import cpu_table1 as table
from hpn_experiments.ablation import ROWS
from hpn_experiments.archive import ArchiveMismatch, check_or_record, is_archived, labels_digest
from hpn_experiments.table1 import archive_fold, assemble_rows, model_dir

#: validation cases per fold of the fake cross-validation
CASES = {0: ["case_a", "case_b"], 1: ["case_c"], 2: ["case_d", "case_e"]}


def _write_label(path: Path, value: int) -> None:
    array = np.zeros((4, 4, 4), dtype=np.uint8)
    array[1:3, 1:3, 1:3] = value
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))


def _fake_model(results: Path, row: str, value: int, folds=(0, 1, 2), variant: str = "") -> None:
    """nnU-Net model folder of ``row`` with finished folds whose validation predicts ``value`` in a cube."""
    model = model_dir(results, row, variant)
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
    check_or_record(tmp_path / "folds", "splits_final.json", [{"train": ["a"], "val": ["b"]}])
    check_or_record(tmp_path / "folds", "splits_final.json", [{"train": ["a"], "val": ["b"]}])
    with pytest.raises(ArchiveMismatch, match="splits_final.json"):
        check_or_record(tmp_path / "folds", "splits_final.json", [{"train": ["b"], "val": ["a"]}])


def test_labels_digest_changes_with_a_label(tmp_path):
    _write_label(tmp_path / "case_a.nii.gz", 1)
    before = labels_digest(tmp_path)
    _write_label(tmp_path / "case_a.nii.gz", 2)
    assert labels_digest(tmp_path) != before


def test_archived_folds_assemble_into_rows_and_derived_rows(tmp_path):
    results, archive, rows_dir = tmp_path / "results", tmp_path / "docs" / "folds", tmp_path / "rows"
    _fake_model(results, "hpn", 1)
    _fake_model(results, "hpn_virtual", 2, folds=(0, 1))
    _fake_model(results, "arterial", 3)
    for row, folds in (("hpn", (0, 1, 2)), ("hpn_virtual", (0, 1)), ("arterial", (0, 1, 2))):
        for fold in folds:
            archive_fold(archive, results, row, fold, seconds=12.5)
    fold_json = json.loads((archive / "hpn" / "fold_1" / "fold.json").read_text())
    assert fold_json["cases"] == ["case_c"] and fold_json["training_seconds"] == 12.5
    assert fold_json["budget"] == {"num_epochs": "80"}
    # single-phase rows keep the probabilities late fusion averages; the others only label maps
    assert (archive / "arterial" / "fold_0" / "case_a.npz").is_file()
    assert not (archive / "hpn" / "fold_0" / "case_a.npz").exists()
    assert (archive / "hpn" / "fold_0" / "training_log_x.txt").is_file()

    assert assemble_rows(archive, rows_dir, env={}) == ["arterial", "hpn"]  # fusion needs venous
    assert sorted(path.name for path in (rows_dir / "hpn").glob("*.nii.gz")) == [
        f"{case}.nii.gz" for fold in CASES.values() for case in fold]

    _fake_model(results, "hpn_virtual", 2, folds=(2,))
    archive_fold(archive, results, "hpn_virtual", 2, seconds=None)
    assert assemble_rows(archive, rows_dir, env={}) == ["arterial", "hpn", "hpn_virtual", "hpn_union"]
    union = sitk.GetArrayFromImage(sitk.ReadImage(str(rows_dir / "hpn_union" / "case_d.nii.gz")))
    expected = np.zeros((4, 4, 4), np.uint8)
    expected[1:3, 1:3, 1:3] = 2  # pancreas (hpn) and PDAC (hpn_virtual) on the same voxels: PDAC wins
    np.testing.assert_array_equal(union, expected)


def test_fold_without_fold_json_is_not_archived_and_a_case_in_two_folds_is_refused(tmp_path):
    results, archive = tmp_path / "results", tmp_path / "docs" / "folds"
    _fake_model(results, "hpn", 1)
    for fold in (0, 1, 2):
        archive_fold(archive, results, "hpn", fold, seconds=1.0)
    (archive / "hpn" / "fold_2" / "fold.json").unlink()  # a copy interrupted before its last file
    assert not is_archived(archive, "hpn", 2)
    assert assemble_rows(archive, tmp_path / "rows", env={}) == []
    archive_fold(archive, results, "hpn", 2, seconds=1.0)
    _write_label(archive / "hpn" / "fold_2" / "case_a.nii.gz", 1)  # case_a is fold 0's
    with pytest.raises(ArchiveMismatch, match="more than one fold"):
        assemble_rows(archive, tmp_path / "rows", env={})


# ------------------------------------------------------------------------------------------------ Table 1 v2

from nnunet_hpn.evaluate.training_stats import (cross_validation_mean, hierarchical_bootstrap_difference,  # noqa: E402
                                                seed_spread)


def _scores(per_training, cases=("a", "b", "c")):
    """{fold: {seed: {case: value}}} from {(fold, seed): value or list of per-case values}."""
    scores = {}
    for (fold, seed), values in per_training.items():
        values = values if isinstance(values, list) else [values] * len(cases)
        scores.setdefault(fold, {})[seed] = {f"f{fold}_{case}": value for case, value in zip(cases, values)}
    return scores


def test_bootstrap_of_a_constant_shift_is_exactly_the_shift():
    """Cases differ widely but every training of a fold agrees: the case draw is shared by both methods (paired),
    so the interval of a constant per-case shift has no width."""
    rng = np.random.default_rng(1)
    per_fold = {fold: list(rng.uniform(0, 90, 3)) for fold in range(3)}
    b = _scores({(fold, seed): per_fold[fold] for fold in range(3) for seed in (1, 2)})
    a = {fold: {seed: {case: value + 5.0 for case, value in cases.items()} for seed, cases in by_seed.items()}
         for fold, by_seed in b.items()}
    interval = hierarchical_bootstrap_difference(a, b, n_resamples=500)
    assert interval.estimate == pytest.approx(5.0)
    assert interval.low == pytest.approx(5.0) and interval.high == pytest.approx(5.0)


def test_bootstrap_resamples_trainings_a_failed_seed_widens_the_interval():
    """Cases agree within every training, so only the resampling of trainings can make the interval wide: one
    method whose two seeds give 0 and 60 in every fold, against one that gives 30 with both."""
    steady = _scores({(fold, seed): 30.0 for fold in range(3) for seed in (1, 2)})
    erratic = _scores({(fold, seed): 0.0 if seed == 1 else 60.0 for fold in range(3) for seed in (1, 2)})
    interval = hierarchical_bootstrap_difference(erratic, steady, n_resamples=4000, seed=3)
    assert interval.estimate == pytest.approx(0.0)
    assert interval.low < -15 and interval.high > 15  # three folds, each 0 / 30 / 60 with prob. 1/4, 1/2, 1/4
    assert interval.confidence == 0.95 and interval.n_resamples == 4000
    again = hierarchical_bootstrap_difference(erratic, steady, n_resamples=4000, seed=3)
    assert (again.low, again.high) == (interval.low, interval.high)  # reproducible with its seed


def test_bootstrap_estimate_is_the_difference_of_cross_validation_means_and_methods_may_differ_in_seeds():
    a = _scores({(0, 1): [10, 20, 30], (0, 2): [20, 30, 40], (1, 1): [50, 50, 50], (1, 2): [0, 0, 0]})
    b = _scores({(0, 7): [10, 10, 10], (1, 7): [40, 40, 40]})  # one seed only
    assert cross_validation_mean(a) == pytest.approx(((20 + 30) / 2 + 25) / 2)
    interval = hierarchical_bootstrap_difference(a, b, n_resamples=2000)
    assert interval.estimate == pytest.approx(cross_validation_mean(a) - 25.0)
    assert interval.low <= interval.estimate <= interval.high


def test_bootstrap_refuses_unpaired_inputs():
    a = _scores({(0, 1): 1.0, (1, 1): 1.0})
    with pytest.raises(ValueError, match="different folds"):
        hierarchical_bootstrap_difference(a, _scores({(0, 1): 1.0}))
    with pytest.raises(ValueError, match="different cases"):
        hierarchical_bootstrap_difference(a, _scores({(0, 1): 1.0, (1, 1): 1.0}, cases=("x", "y", "z")))


def test_seed_spread_per_seed_means_and_ranges():
    spread = seed_spread(_scores({(0, 1): 10.0, (0, 2): 30.0, (1, 1): 50.0, (1, 2): 50.0}))
    assert spread.per_seed == {1: 30.0, 2: 40.0}
    assert spread.range == pytest.approx(10.0) and spread.mean_fold_range == pytest.approx(10.0)
    with pytest.raises(ValueError, match="no training"):
        seed_spread(_scores({(0, 1): 10.0, (0, 2): 30.0, (1, 1): 50.0}))


def _v2_dice(failed=("hpn", 2345, 1)):
    """Synthetic Dice of every Table 1 v2 row: {(row, seed, fold): {case: {target: Dice %}}}, one failed training."""
    rng = np.random.default_rng(0)
    dice = {}
    for row in table.PROTOCOL_V2.order:
        for seed in table.PROTOCOL_V2.seeds:
            for fold, cases in CASES.items():
                dice[(row, seed, fold)] = {case: {target: 0.0 if (row, seed, fold) == failed and target == "PDAC"
                                                  else float(rng.uniform(10, 90)) for target in table.TARGETS}
                                           for case in cases}
    present = {case: {target: 1.0 for target in table.TARGETS} for cases in CASES.values() for case in cases}
    return dice, present


def test_v2_archive_per_seed_and_trainings_csv_round_trip(tmp_path):
    results, archive = tmp_path / "results", tmp_path / "docs" / "folds"
    _fake_model(results, "hpn", 2, variant="_balanced")
    for fold in (0, 1, 2):
        archive_fold(archive, results, "hpn", fold, seconds=60.0 + fold, seed=2345, variant="_balanced")
    fold_json = json.loads((archive / "hpn" / "seed_2345" / "fold_1" / "fold.json").read_text())
    assert fold_json["seed"] == 2345 and fold_json["trainer"] == "HPNTrainer_balanced"
    assert fold_json["preset"][-4:] == ["--training-seed", "2345", "--trainer-variant", "_balanced"]
    assert is_archived(archive, "hpn", 1, 2345) and not is_archived(archive, "hpn", 1)

    dice, _ = _v2_dice()
    dice = {key: value for key, value in dice.items() if key[0] == "hpn" and key[1] == 2345}
    records = table.training_records(archive, table.PROTOCOL_V2, dice)
    assert [(r["row"], r["fold"], r["seed"], r["wall_seconds"]) for r in records] == [
        ("hpn", 0, 2345, 60.0), ("hpn", 1, 2345, 61.0), ("hpn", 2, 2345, 62.0)]
    assert records[1]["PDAC mean Dice %"] == 0.0  # the failed training is kept, not dropped
    expected = np.mean([dice[("hpn", 2345, 0)][case]["duct"] for case in CASES[0]])
    assert records[0]["duct mean Dice %"] == pytest.approx(expected, abs=0.005)
    table.write_csv(tmp_path / "trainings.csv", table.TRAINING_FIELDS, records)
    header = (tmp_path / "trainings.csv").read_text().splitlines()[0]
    assert header == "row,fold,seed,trainer,budget,wall_seconds," + ",".join(
        f"{target} mean Dice %" for target in table.TARGETS)
    assert table.read_trainings_csv(tmp_path / "trainings.csv") == records


def test_v2_table_counts_failed_trainings_and_lists_every_contrast():
    dice, present = _v2_dice()
    records = [{"row": row, "fold": fold, "seed": seed, "wall_seconds": 120.0,
                **{f"{t} mean Dice %": float(np.mean([v[t] for v in cases.values()])) for t in table.TARGETS}}
               for (row, seed, fold), cases in dice.items() if ROWS[row].trainer]
    text = table.format_table_v2(dice, present, records, table.PROTOCOL_V2, "header")
    hpn_line = next(line for line in text.splitlines() if line.startswith("| HPN (original pairs) |"))
    assert "| 1/6 | 2.0 |" in hpn_line and "| 1/10 | 0/10 |" in hpn_line  # 1 failed training: its case missed
    seed_means = [np.mean([v["PDAC"] for fold in CASES for v in dice[("hpn", seed, fold)].values()])
                  for seed in table.PROTOCOL_V2.seeds]
    pdac_cell = hpn_line.split(" | ")[3]
    assert pdac_cell.endswith(f"({seed_means[0]:.1f} / {seed_means[1]:.1f}; std {np.std(seed_means):.1f})")
    for name, first, second in table.CONTRASTS:
        assert sum(line.startswith(f"| {name} | {first} − {second} |") for line in text.splitlines()) == len(
            table.TARGETS)
    assert "| hpn | " in text.split("## Per fold")[1]  # per-fold view: seed 1234 / seed 2345 per fold


def _fake_v2_run(tmp_path, monkeypatch):
    """A v2 work dir with fake labels and split, training replaced by fake models; returns argv, the docs folder, the
    list of trainings made and the split."""
    workdir, docs = tmp_path / "work", tmp_path / "docs_v2"
    raw = workdir / "nnUNet_raw" / "Dataset510_X"
    (raw / "labelsTr").mkdir(parents=True)
    for cases in CASES.values():
        for case in cases:
            _write_label(raw / "labelsTr" / f"{case}.nii.gz", 2)
    split = [{"train": [], "val": CASES[fold]} for fold in sorted(CASES)]
    (workdir / "nnUNet_preprocessed" / raw.name).mkdir(parents=True)
    (workdir / "nnUNet_preprocessed" / raw.name / "splits_final.json").write_text(json.dumps(split))
    trained = []

    def fake_train(workdir_, row, fold, env, protocol, seed, results_root=None, out=None):
        trained.append((seed, row, fold))
        _fake_model((results_root or protocol.results_root(workdir_, seed)) / raw.name, row, 2 if row == "hpn" else 1,
                    folds=(fold,), variant=protocol.trainer_variant)
        return 30.0

    monkeypatch.setattr(table, "prepare_dataset", lambda workdir_, env: raw)
    monkeypatch.setattr(table, "train_fold", fake_train)
    monkeypatch.setattr(table, "report", lambda *args, **kwargs: None)
    monkeypatch.setattr(table, "BOOTSTRAP_RESAMPLES", 200)
    monkeypatch.setattr(table, "EARLIER_ARCHIVE", tmp_path / "earlier" / "folds")
    check_or_record(table.EARLIER_ARCHIVE, "splits_final.json", split)
    argv = ["--protocol", "v2", "--workdir", str(workdir), "--docs", str(docs), "--rows", "hpn", "hpn_virtual"]
    return argv, docs, trained, split


def test_v2_pilot_archives_its_trainings_and_a_failed_pilot_blocks_the_table(tmp_path, monkeypatch):
    argv, docs, trained, _ = _fake_v2_run(tmp_path, monkeypatch)
    assert table.main([*argv, "--pilot"]) == 3  # the fake models never predict the duct
    assert trained == [(table.PILOT_SEED, row, table.PILOT_FOLD) for row in table.PILOT_ROWS]
    record = json.loads((docs / "pilot" / "pilot.json").read_text())
    assert record["passed"] is False and record["mean_dice_percent"]["hpn"]["PDAC"] == 100.0
    assert record["mean_dice_percent"]["early_fusion"]["PDAC"] == 0.0
    assert "Criterion: **failed**" in (docs / "pilot" / "pilot.md").read_text()
    assert table.main(argv) == 1 and len(trained) == 3  # no table without a passed pilot
    assert table.main([*argv, "--pilot"]) == 3 and len(trained) == 3  # archived: not trained again


def test_v2_run_trains_seed_by_seed_archives_each_training_and_resumes(tmp_path, monkeypatch):
    """main(--protocol v2) with the training replaced by a fake model: every (row, fold, seed) archived once, the
    tables rewritten after each, a second run trains nothing; an earlier archive with another split stops it."""
    argv, docs, trained, split = _fake_v2_run(tmp_path, monkeypatch)
    (docs / "pilot").mkdir(parents=True)
    (docs / "pilot" / "pilot.json").write_text(json.dumps({"passed": True}))
    assert table.main(argv) == 0
    assert trained == [(seed, row, fold) for seed in (1234, 2345) for row in ("hpn", "hpn_virtual")
                       for fold in (0, 1, 2)]
    assert is_archived(docs / "folds", "hpn_virtual", 2, 2345)
    records = table.read_trainings_csv(docs / "trainings.csv")
    assert len(records) == 12
    assert {r["trainer"] for r in records} == {"HPNTrainer_balanced", "HPNTrainer_virtual_balanced"}
    assert all(r["PDAC mean Dice %"] == 100.0 for r in records if r["row"] == "hpn")  # predicts the truth's PDAC
    text = (docs / "table1.md").read_text()
    assert "| union | hpn_union − hpn_virtual | PDAC | +100.0 | [+100.0, +100.0] |" in text
    assert table.main(argv) == 0 and len(trained) == 12  # everything archived: nothing trained again

    check_or_record(table.EARLIER_ARCHIVE.parent / "other", "x.json", 1)
    (table.EARLIER_ARCHIVE / "splits_final.json").write_text(json.dumps(split[::-1]))
    (docs / "folds" / "hpn" / "seed_1234" / "fold_0" / "fold.json").unlink()
    assert table.main(argv) == 1  # the split differs from the earlier run's
