"""scripts/liver_comparison.py's contrasts.md: each training's fold mean and the bootstrap differences, from the
report's per_case.csv (the trainings themselves are the script's long run, never a test)."""
import csv
from pathlib import Path

import pytest

import liver_comparison


def test_contrasts_list_every_training_and_the_difference_of_the_cross_validation_means(tmp_path: Path) -> None:
    folds = {0: ["a", "b"], 1: ["c", "d"], 2: ["e", "f"]}
    # lesion Dice: early fusion 0.5 everywhere, HPN and the union 0.7 (fold 2: 0.9), the virtual-pair model 0
    dice = {"early_fusion": lambda case: 0.5, "hpn": lambda case: 0.9 if case in "ef" else 0.7,
            "hpn_virtual": lambda case: 0.0, "hpn_union": lambda case: 0.9 if case in "ef" else 0.7}
    (tmp_path / "report").mkdir()
    with (tmp_path / "report" / "per_case.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["case", "method", "target", "Dice"])
        writer.writeheader()
        for method, value in dice.items():
            for case in "abcdef":
                writer.writerow({"case": case, "method": method, "target": "lesion", "Dice": value(case)})
    liver_comparison.write_contrasts(tmp_path, folds)
    lines = (tmp_path / "contrasts.md").read_text(encoding="utf-8").splitlines()
    assert "| early_fusion | 50.0 / 50.0 / 50.0 |" in lines
    assert "| hpn_virtual | 0.0 / 0.0 / 0.0 |" in lines and "| hpn_union | 70.0 / 70.0 / 90.0 |" in lines
    union_row = next(line for line in lines if line.startswith("| hpn_union − early_fusion"))
    estimate, interval = union_row.split(" | ")[1].split(" [")
    assert float(estimate) == pytest.approx((20 + 20 + 40) / 3, abs=0.05)
    low, high = (float(v) for v in interval.rstrip("] |").split(", "))
    assert low == pytest.approx(26.7, abs=0.05) and high == pytest.approx(26.7, abs=0.05)  # no case varies


def test_contrasts_wait_for_the_report(tmp_path: Path, capsys) -> None:
    liver_comparison.write_contrasts(tmp_path, {0: ["a"]})
    assert not (tmp_path / "contrasts.md").exists() and "per_case.csv missing" in capsys.readouterr().err
