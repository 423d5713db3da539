"""scripts/two_stage_study.py's bookkeeping: held-out inputs are the raw phantom files (linked, never copied or
changed), and the results table reports Dice and the seconds of each stage from the QC records."""
from pathlib import Path

import two_stage_study
from nnunet_hpn.evaluate.metrics import TARGETS, EvaluationResult


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


def test_summary_reports_dice_and_stage_seconds() -> None:
    def result(dice: float) -> EvaluationResult:
        cases = {case: {target: {"Dice": dice} for target in TARGETS} for case in ("a", "b")}
        return EvaluationResult(cases, {case: {t: True for t in TARGETS} for case in cases}, {t: 0 for t in TARGETS},
                                metrics=("Dice",))

    timings = {"whole_scan": [{"wall_seconds": 30.0, "cases": 2, "locator": {}}],
               "two_stage": [{"wall_seconds": 20.0, "cases": 2,
                              "locator": {"a": {"seconds": 3.0, "stage2_seconds": 5.0},
                                          "b": {"seconds": 1.0, "stage2_seconds": 3.0}}}]}
    lines = two_stage_study.summarize({"whole_scan": result(0.5), "two_stage": result(0.75)}, timings,
                                      {"whole_scan": "100", "two_stage": "250"})
    assert lines[2] == "| whole_scan | " + " | ".join(["50.00 ± 0.00"] * len(TARGETS)) + " | 15.0 | – | 100 |"
    assert lines[3] == "| two_stage | " + " | ".join(["75.00 ± 0.00"] * len(TARGETS)) + " | 10.0 | 2.0 / 4.0 | 250 |"
