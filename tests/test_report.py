"""Tests of nnunet_hpn.evaluate.report (``nnunet-hpn report``) on three tiny hand-made methods with known answers."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import shutil
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import scipy.stats
import SimpleITK as sitk

from nnunet_hpn.cli import main
from nnunet_hpn.errors import HPNInputError
from nnunet_hpn.evaluate.metrics import TARGETS
from nnunet_hpn.evaluate.report import build_report, paired_wilcoxon, parse_method_args

SHAPE = (6, 20, 24)          # (z, y, x)
SPACING_XYZ = (0.8, 0.8, 2.5)
METHODS = ("arterial", "venous", "hpn")
CASES = [f"case_{i}" for i in range(6)]


def write_image(array: np.ndarray, path: Path, spacing_xyz=SPACING_XYZ) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing_xyz)
    image.SetOrigin((1.0, 2.0, 3.0))
    sitk.WriteImage(image, str(path))


def make_truth(index: int) -> np.ndarray:
    truth = np.zeros(SHAPE, dtype=np.uint8)
    truth[1:5, 3:15, 3 + index:19] = 1
    if index != 3:                                        # case_3 has no PDAC
        truth[2:4, 5:11, 6 + index:14] = 2
    truth[3, 13, 4:12] = 3
    return truth


def pdac_as_pancreas(truth: np.ndarray) -> np.ndarray:
    """The prediction that finds the pancreas but misses the PDAC (labelled pancreas instead)."""
    return np.where(truth == 2, 1, truth).astype(np.uint8)


def half_pdac(truth: np.ndarray) -> np.ndarray:
    pred = truth.copy()
    pdac_z = np.nonzero((truth == 2).any(axis=(1, 2)))[0]
    pred[pdac_z[0]][pred[pdac_z[0]] == 2] = 1             # PDAC lost on its first slice
    return pred


def make_predictions(index: int, truth: np.ndarray) -> dict[str, np.ndarray]:
    """Per case: case_0 missed by both single phases and rescued by hpn; case_1 missed by all three;
    case_2 partly found in arterial; case_3 has no PDAC (arterial false positive); case_4/5 varied."""
    if index == 0:
        return {"arterial": pdac_as_pancreas(truth), "venous": pdac_as_pancreas(truth), "hpn": truth.copy()}
    if index == 1:
        return {name: pdac_as_pancreas(truth) for name in METHODS}
    if index == 2:
        return {"arterial": half_pdac(truth), "venous": pdac_as_pancreas(truth), "hpn": truth.copy()}
    if index == 3:
        false_positive = truth.copy()
        false_positive[2, 6:8, 8:10] = 2
        return {"arterial": false_positive, "venous": truth.copy(), "hpn": truth.copy()}
    shifted = np.roll(truth, index - 3, axis=2)
    return {"arterial": shifted, "venous": np.roll(truth, 1, axis=0),
            "hpn": np.where(np.roll(truth, 1, axis=1) == 3, 0, truth).astype(np.uint8)}


def reference_dice(truth: np.ndarray, pred: np.ndarray, labels: tuple[int, ...]) -> float:
    truth_mask, pred_mask = np.isin(truth, labels), np.isin(pred, labels)
    total = truth_mask.sum() + pred_mask.sum()
    return 1.0 if total == 0 else float(2 * (truth_mask & pred_mask).sum() / total)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("report")
    dirs = {name: root / name for name in ("labels", "images", *METHODS)}
    for folder in dirs.values():
        folder.mkdir()
    rng = np.random.default_rng(0)
    dice = {name: {target: [] for target in TARGETS} for name in METHODS}
    for index, case in enumerate(CASES):
        truth = make_truth(index)
        write_image(truth, dirs["labels"] / f"{case}.nii.gz")
        arterial = rng.normal(60, 20, SHAPE).astype(np.float32) + 80 * (truth > 0)
        write_image(arterial, dirs["images"] / f"{case}_0000.nii.gz")
        write_image(arterial + 30, dirs["images"] / f"{case}_0001.nii.gz")
        for name, pred in make_predictions(index, truth).items():
            write_image(pred, dirs[name] / f"{case}.nii.gz")
            for target, labels in TARGETS.items():
                dice[name][target].append(reference_dice(truth, pred, labels))
    return {"root": root, "dirs": dirs, "dice": dice}


@pytest.fixture(scope="module")
def report(folders: dict) -> dict:
    """``nnunet-hpn report`` run once on the three methods (reference hpn, single phases found by name)."""
    dirs = folders["dirs"]
    out = folders["root"] / "out" / "report"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = main(["report", *(f"{name}={dirs[name]}" for name in METHODS), "--gt", str(dirs["labels"]),
                       "--images", str(dirs["images"]), "--reference", "hpn", "--tolerance-mm", "2",
                       "--overlays", "2", "-o", str(out)])
    assert status == 0
    return {"result": json.loads((out / "report.json").read_text()), "out": out, "printed": printed.getvalue()}


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


# ---------------------------------------------------------------- statistics helpers

def test_paired_wilcoxon_equals_scipy() -> None:
    rng = np.random.default_rng(4)
    a = rng.random(15)
    b = a + rng.normal(0.05, 0.1, 15)
    b[:3] = a[:3]                                         # some zero differences
    assert paired_wilcoxon(a, b) == scipy.stats.wilcoxon(a, b).pvalue
    assert paired_wilcoxon([0.5, 0.2, 0.9], [0.5, 0.2, 0.9]) == 1.0      # all differences zero: stated p = 1
    assert paired_wilcoxon([], []) == 1.0
    with pytest.raises(ValueError, match="length"):
        paired_wilcoxon([1.0, 2.0], [1.0])


def test_parse_method_args(tmp_path: Path) -> None:
    assert parse_method_args(["a=x/y", "z/venous/"]) == {"a": Path("x/y"), "venous": Path("z/venous/")}
    with pytest.raises(HPNInputError, match="twice"):
        parse_method_args(["a=x", "a=y"])
    with pytest.raises(HPNInputError, match="NAME=PRED_DIR"):
        parse_method_args(["=x"])


# ---------------------------------------------------------------- the report

def test_report_numbers_match_independent_dice_and_scipy(folders: dict, report: dict) -> None:
    rows = read_csv(report["out"] / "report.csv")
    assert len(rows) == len(METHODS) * len(TARGETS) * 3
    by_key = {(row["method"], row["target"], row["metric"]): row for row in rows}
    for name in METHODS:
        for target in TARGETS:
            expected = folders["dice"][name][target]
            row = by_key[(name, target, "Dice")]
            assert float(row["mean"]) == pytest.approx(np.mean(expected), abs=1e-6)
            assert float(row["std"]) == pytest.approx(np.std(expected, ddof=0), abs=1e-6)
            assert int(row["n"]) == len(CASES)
            for metric in ("HD95", "NSD"):
                assert math.isfinite(float(by_key[(name, target, metric)]["mean"]))
            if name == "hpn":
                assert row["wilcoxon_p"] == ""
                continue
            reference = folders["dice"]["hpn"][target]
            differences = np.subtract(expected, reference)
            scipy_p = 1.0 if np.all(differences == 0) else scipy.stats.wilcoxon(expected, reference).pvalue
            assert float(row["wilcoxon_p"]) == pytest.approx(scipy_p, rel=1e-5)
            assert report["result"]["wilcoxon"][name][target]["Dice"] == pytest.approx(scipy_p, rel=1e-12)
    # the paired test is real here (not the all-zero special case) for PDAC arterial vs hpn
    assert not np.all(np.subtract(folders["dice"]["arterial"]["PDAC"], folders["dice"]["hpn"]["PDAC"]) == 0)
    # missed counts: PDAC present in 5 cases; arterial misses case_0 and case_1; hpn misses case_1
    assert by_key[("arterial", "PDAC", "Dice")]["missed"] == "2"
    assert by_key[("venous", "PDAC", "Dice")]["missed"] == "3"
    assert by_key[("hpn", "PDAC", "Dice")]["missed"] == "1"
    assert by_key[("hpn", "PDAC", "Dice")]["present"] == "5"

    per_case = read_csv(report["out"] / "per_case.csv")
    assert len(per_case) == len(CASES) * len(METHODS) * len(TARGETS)
    saved = json.loads((report["out"] / "report.json").read_text())
    assert saved["n_cases"] == len(CASES) and saved["reference"] == "hpn"


def test_missed_by_both_and_rescued(report: dict) -> None:
    rescue = report["result"]["missed_rescued"]
    assert rescue["single_phase"] == ["arterial", "venous"] and rescue["hpn"] == "hpn"   # defaults by name
    assert rescue["n_present"] == 5
    assert rescue["missed_by_all_single_phase"] == ["case_0", "case_1"]
    assert rescue["rescued"] == ["case_0"]
    text = (report["out"] / "report.md").read_text()
    assert "by both arterial and venous: **2** (case_0, case_1)" in text
    assert "by hpn: **1** (case_0)" in text
    assert "| Method | Abnormal pancreas | PDAC mass | Pancreatic duct |" in text


def test_largest_gain_cases_and_pictures(report: dict) -> None:
    gains = report["result"]["gains"]
    assert report["result"]["gain_target"] == "PDAC"
    assert [row["case"] for row in gains] == ["case_0", "case_5"]       # gains 1 - 0 and 1 - 1/2
    assert gains[0]["gain"] == pytest.approx(1.0) and gains[1]["gain"] == pytest.approx(0.5)
    assert gains[1]["best_other"] == "venous"
    assert "| case_0 | 100.0 | arterial 0.0 | +100.0 |" in (report["out"] / "report.md").read_text()
    names = sorted(path.name for path in report["out"].iterdir())
    assert names == sorted(["report.md", "report.csv", "per_case.csv", "report.json", "overlays_largest_gain.png",
                            "boxplot_abnormal_pancreas.png", "boxplot_PDAC.png", "boxplot_duct.png"])
    for name in names:
        if name.endswith(".png"):
            image = matplotlib.image.imread(report["out"] / name)
            assert image.ndim == 3 and min(image.shape[:2]) > 100 and image.std() > 0.05
    overlay = matplotlib.image.imread(report["out"] / "overlays_largest_gain.png")
    assert overlay.shape[1] > 2 * overlay.shape[0]        # 2 rows × 6 columns (arterial, venous, truth, 3 methods)
    assert not [path for path in report["out"].parent.iterdir() if path.name.startswith(".")]  # no staging left


def test_cli_report_prints_summary(report: dict) -> None:
    printed = report["printed"]
    assert "PDAC missed by both arterial and venous: 2 of 5; rescued by hpn: 1" in printed
    assert f"wrote {report['out'] / 'report.md'}" in printed
    hpn_line = next(line for line in printed.splitlines() if line.startswith("hpn "))
    assert hpn_line.split()[-1] == "ref"


def test_cli_report_replaces_an_earlier_report(folders: dict, report: dict, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    dirs = folders["dirs"]
    out = Path(shutil.copytree(report["out"], tmp_path / "rep"))
    (out / "notes.txt").write_text("the user's, not the report's")
    argv = ["report", *(f"{name}={dirs[name]}" for name in METHODS), "--gt", str(dirs["labels"]),
            "--single-phase", "venous", "arterial", "--hpn", "hpn", "--reference", "arterial", "--overlays", "0",
            "-o", str(out)]
    assert main(argv) == 0
    assert "rescued by hpn: 1" in capsys.readouterr().out
    assert (out / "notes.txt").read_text() == "the user's, not the report's"  # a report removes only its own files
    assert (out / "report.md").is_file()
    saved = json.loads((out / "report.json").read_text())
    assert saved["reference"] == "arterial" and saved["single_phase"] == ["venous", "arterial"]
    assert not (out / "overlays_largest_gain.png").exists()  # the earlier report's, not drawn this time
    assert sorted(path.name for path in tmp_path.iterdir()) == ["rep"]               # no staging or backup left


@pytest.mark.parametrize("problem", ["missing case", "geometry", "foreign output"])
def test_cli_report_errors_leave_output_unchanged(problem: str, folders: dict, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    dirs = dict(folders["dirs"])
    dirs["venous"] = Path(shutil.copytree(dirs["venous"], tmp_path / "venous"))
    out = tmp_path / "rep"
    out.mkdir()
    if problem == "foreign output":
        (out / "notes.txt").write_text("mine")
        expected = "holds no report.md"
    else:
        (out / "report.md").write_text("earlier report")
        if problem == "missing case":
            (dirs["venous"] / "case_4.nii.gz").unlink()
            expected = "cases of method 'venous' differ from those of 'arterial'"
        else:
            write_image(make_truth(2), dirs["venous"] / "case_2.nii.gz", spacing_xyz=(0.8, 0.8, 3.0))
            expected = "case_2.nii.gz: geometry differs"
    before = {path.name: path.read_text() for path in out.iterdir()}
    argv = ["report", *(f"{name}={dirs[name]}" for name in METHODS), "--gt", str(dirs["labels"]), "-o", str(out)]
    assert main(argv) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and error.startswith("nnunet-hpn report: error: ")
    assert expected in error
    assert {path.name: path.read_text() for path in out.iterdir()} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["rep", "venous"]     # no staging folder left


def test_report_argument_errors(folders: dict, tmp_path: Path) -> None:
    dirs = folders["dirs"]
    methods = {name: dirs[name] for name in METHODS}
    with pytest.raises(HPNInputError, match="at least 2 methods"):
        build_report({"hpn": dirs["hpn"]}, dirs["labels"], tmp_path / "r")
    with pytest.raises(HPNInputError, match="reference method is not among"):
        build_report(methods, dirs["labels"], tmp_path / "r", reference="nope")
    with pytest.raises(HPNInputError, match="cannot also be a single-phase"):
        build_report(methods, dirs["labels"], tmp_path / "r", single_phase=["hpn", "venous"], hpn="hpn")
    assert not (tmp_path / "r").exists()


def test_overlays_show_every_phase_named_by_the_dataset_json(folders: dict, tmp_path: Path) -> None:
    """Three phases (names from the dataset.json beside the images folder): one overlay column per phase."""
    dirs = folders["dirs"]
    dataset = tmp_path / "Dataset999_K3"
    images = dataset / "imagesTr"
    images.mkdir(parents=True)
    for case in CASES:
        for channel in range(2):
            (images / f"{case}_{channel:04d}.nii.gz").symlink_to(dirs["images"] / f"{case}_{channel:04d}.nii.gz")
        (images / f"{case}_0002.nii.gz").symlink_to(dirs["images"] / f"{case}_0001.nii.gz")
    (dataset / "dataset.json").write_text(json.dumps(
        {"channel_names": {"0": "arterial", "1": "venous", "2": "delayed"}, "labels": {}}))
    out = tmp_path / "report"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["report", *(f"{name}={dirs[name]}" for name in METHODS), "--gt", str(dirs["labels"]),
                     "--images", str(images), "--reference", "hpn", "--overlays", "2", "-o", str(out)]) == 0
    result = json.loads((out / "report.json").read_text())
    assert result["overlay_phases"] == ["arterial", "venous", "delayed"]
    assert "Columns: arterial, venous, delayed, truth" in (out / "report.md").read_text()
    two = matplotlib.image.imread(folders["root"] / "out" / "report" / "overlays_largest_gain.png")
    three = matplotlib.image.imread(out / "overlays_largest_gain.png")
    assert three.shape[1] > two.shape[1] * 1.1  # 7 columns instead of 6


def test_largest_gains_list_only_cases_with_a_gain(folders: dict, tmp_path: Path) -> None:
    """case_1 (PDAC missed by all three) and case_3 (no PDAC) gain nothing and are never listed; a method with the
    reference's Dice in every case (a union's member) is left out of the comparison, and with nothing else to
    compare there are no rows and no overlays."""
    dirs = folders["dirs"]
    methods = {name: dirs[name] for name in METHODS}
    result = build_report(methods, dirs["labels"], tmp_path / "all", reference="hpn", images_dir=dirs["images"],
                          n_overlays=6)
    assert [row["case"] for row in result["gains"]] == ["case_0", "case_5", "case_2", "case_4"]
    assert all(row["gain"] > 0 for row in result["gains"])
    union_like = build_report({**methods, "hpn_copy": dirs["hpn"]}, dirs["labels"], tmp_path / "union_like",
                              reference="hpn_copy", images_dir=dirs["images"], n_overlays=6)
    assert union_like["gain_not_compared"] == ["hpn"]          # the copy is compared with arterial and venous only
    assert [row["case"] for row in union_like["gains"]] == ["case_0", "case_5", "case_2", "case_4"]
    assert "Not compared: hpn (the same PDAC Dice as hpn_copy in every case)." in \
        (tmp_path / "union_like" / "report.md").read_text()
    copy = build_report({"hpn": dirs["hpn"], "hpn_copy": dirs["hpn"]}, dirs["labels"], tmp_path / "copy",
                        reference="hpn_copy", images_dir=dirs["images"])
    assert copy["gains"] == [] and copy["overlays"] is None
    text = (tmp_path / "copy" / "report.md").read_text()
    assert "None: in no case is hpn_copy's PDAC Dice above every other method's." in text
    assert "| Case | hpn_copy |" not in text and not (tmp_path / "copy" / "overlays_largest_gain.png").exists()
