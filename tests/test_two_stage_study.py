"""scripts/two_stage_study.py's bookkeeping: held-out inputs are the raw phantom files (linked, never copied or
changed), and the results table pools the archived folds' Dice and the seconds of each stage from the QC records."""
from pathlib import Path

import two_stage_study
from nnunet_hpn.evaluate.metrics import TARGETS


def test_held_out_inputs_link_the_raw_phases(tmp_path: Path) -> None:
    for case in ("a", "b"):
        (tmp_path / "phantoms" / case).mkdir(parents=True)
        for phase in ("arterial", "venous", "label"):
            (tmp_path / "phantoms" / case / f"{phase}.nii.gz").write_bytes(f"{case}{phase}".encode())
    out = two_stage_study.held_out_inputs(tmp_path, ["b"], tmp_path / "inputs")
    assert sorted(path.name for path in (out / "b").iterdir()) == ["arterial.nii.gz", "venous.nii.gz"]
    assert (out / "b" / "venous.nii.gz").samefile(tmp_path / "phantoms" / "b" / "venous.nii.gz")
    assert not (out / "a").exists()
    two_stage_study.held_out_inputs(tmp_path, ["b"], tmp_path / "inputs")  # resumable: links that exist are kept


def test_summary_pools_the_archived_folds() -> None:
    def fold(number: int, cases: list[str], whole: float, two: float, stage_seconds: tuple[float, float]) -> dict:
        return {"fold": number, "cases": cases,
                "dice": {"whole_scan": {c: {t: whole + i for t in TARGETS} for i, c in enumerate(cases)},
                         "two_stage": {c: {t: two + i for t in TARGETS} for i, c in enumerate(cases)}},
                "timing": {"whole_scan": {"wall_seconds": 15.0 * len(cases), "cases": len(cases), "locator": {}},
                           "two_stage": {"wall_seconds": 10.0 * len(cases), "cases": len(cases),
                                         "locator": {c: {"seconds": stage_seconds[0], "stage2_seconds":
                                                         stage_seconds[1]} for c in cases}}},
                "training_seconds": {"locator": 50.0, "whole_scan": 100.0, "stage2": 75.0}}

    lines = two_stage_study.summarize([fold(0, ["a", "b"], 40.0, 60.0, (3.0, 5.0)),
                                       fold(2, ["c", "d"], 40.0, 60.0, (1.0, 3.0))])
    assert lines[0] == "Folds 0, 2 of 3 (4 held-out cases)."
    # per fold the cases score base + 0 and base + 1: pooled mean base + 0.5, std 0.5
    assert lines[4] == "| whole_scan | " + " | ".join(["40.50 ± 0.50"] * len(TARGETS)) + " | 15.0 | – | 200 |"
    assert lines[5] == "| two_stage | " + " | ".join(["60.50 ± 0.50"] * len(TARGETS)) + " | 10.0 | 2.0 / 4.0 | 250 |"
    # two-stage better on all 4 pairs (equal differences): the signed-rank test's p, not significant at n = 4
    assert lines[7].startswith("two_stage vs whole_scan, paired two-sided Wilcoxon p: abnormal pancreas ")


def test_real_ct_table_says_what_the_locator_did() -> None:
    timing = {"whole_scan": {"real_ct_0": {"wall_seconds": 90.0, "grid": [512, 512, 150], "locator": None}},
              "two_stage": {"real_ct_0": {"wall_seconds": 95.0, "grid": [512, 512, 150],
                                          "locator": {"seconds": 4.0, "stage2_seconds": 80.0,
                                                      "fallback": "whole scan"}}},
              "stage2_on_oracle_crop": {"real_ct_0": {"wall_seconds": 12.5, "grid": [120, 90, 40], "locator": None}}}
    lines = two_stage_study.real_ct_lines(timing)
    assert lines[-1] == ("| real_ct_0 | 512x512x150 | 90.0 | 95.0 (fell back to the whole scan; locator 4.0 s, "
                         "stage 2 80.0 s) | 12.5 (120x90x40) |")
