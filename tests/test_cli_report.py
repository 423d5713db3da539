"""``nnunet-hpn report`` on too few cases for a Wilcoxon test: it says so, and prints, writes and stores no p-value."""
import csv
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_hpn.cli import main
from nnunet_hpn.evaluate.report import MIN_WILCOXON_CASES

SHAPE = (6, 20, 24)  # (z, y, x)


def _write(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))


def test_two_cases_get_no_p_value_and_a_line_saying_why(tmp_path: Path, capsys) -> None:
    cases = ["case_0", "case_1"]
    assert len(cases) < MIN_WILCOXON_CASES
    for index, case in enumerate(cases):
        truth = np.zeros(SHAPE, dtype=np.uint8)
        truth[1:5, 3:15, 3:19] = 1
        truth[2:4, 5:11, 6 + index:14] = 2
        _write(truth, tmp_path / "gt" / f"{case}.nii.gz")
        _write(truth, tmp_path / "hpn" / f"{case}.nii.gz")
        _write(np.where(truth == 2, 1, truth).astype(np.uint8), tmp_path / "venous" / f"{case}.nii.gz")
    out = tmp_path / "report"
    assert main(["report", f"venous={tmp_path / 'venous'}", f"hpn={tmp_path / 'hpn'}", "--gt", str(tmp_path / "gt"),
                 "--overlays", "0", "-o", str(out)]) == 0

    printed = capsys.readouterr().out
    assert "n = 2: too few cases for a Wilcoxon test" in printed and "p: Wilcoxon" not in printed
    venous_row = next(line for line in printed.splitlines() if line.startswith("venous"))
    assert venous_row.split()[-1] == "–"
    assert "n = 2: too few cases for a Wilcoxon test" in (out / "report.md").read_text()
    saved = json.loads((out / "report.json").read_text())
    assert all(p is None for targets in saved["wilcoxon"].values() for metrics in targets.values()
               for p in metrics.values())
    assert saved["wilcoxon_note"].startswith("n = 2: too few cases")
    with open(out / "report.csv", newline="") as stream:
        assert {row["wilcoxon_p"] for row in csv.DictReader(stream)} == {""}
