"""Tests of nnunet_hpn.evaluate.metrics (Dice per target, folder evaluation, summaries) and
nnunet_hpn.evaluate.figures."""
from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_hpn.cli import main
from nnunet_hpn.errors import HPNInputError
from nnunet_hpn.evaluate.metrics import (TARGETS, EvaluationResult, dice_per_target, evaluate_folders,
                                         format_dice_table, write_summary)
from nnunet_hpn.measures import image_diagonal_mm, surface_metrics
from nnunet_hpn.evaluate.figures import pick_slice, save_overlay_from_files, save_overlay_png

SHAPE = (8, 10, 12)  # (z, y, x)
SPACING_XYZ = (0.8, 0.8, 2.5)


def reference_dice(truth: np.ndarray, pred: np.ndarray, labels: tuple[int, ...]) -> float:
    """Independent Dice from voxel index sets, with the same empty-mask convention."""
    truth_voxels = set(zip(*np.nonzero(np.isin(truth, labels))))
    pred_voxels = set(zip(*np.nonzero(np.isin(pred, labels))))
    if not truth_voxels and not pred_voxels:
        return 1.0
    return 2 * len(truth_voxels & pred_voxels) / (len(truth_voxels) + len(pred_voxels))


def write_label_map(array: np.ndarray, path: Path, spacing_xyz=SPACING_XYZ) -> None:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(spacing_xyz)
    image.SetOrigin((10.0, -5.0, 3.0))
    sitk.WriteImage(image, str(path))


# ---------------------------------------------------------------- dice_per_target

def test_dice_of_two_shifted_cubes_is_exact() -> None:
    truth = np.zeros(SHAPE, dtype=np.uint8)
    pred = np.zeros(SHAPE, dtype=np.uint8)
    truth[0:4, 0:4, 0:4] = 2          # 64 voxels
    pred[0:4, 0:4, 2:6] = 2           # 64 voxels, 32 shared
    scores = dice_per_target(pred, truth)
    assert scores["PDAC"] == 0.5
    assert scores["abnormal pancreas"] == 0.5
    assert scores["duct"] == 1.0      # both empty


def test_union_target_vs_single_labels() -> None:
    truth = np.zeros(SHAPE, dtype=np.uint8)
    truth[1:5, 1:5, 1:5] = 1
    truth[2:4, 2:4, 2:4] = 2
    truth[1, 1, 1:5] = 3
    pred = truth.copy()
    pred[truth == 2] = 1              # PDAC predicted as pancreas: union unchanged
    pred[truth == 3] = 2              # duct predicted as PDAC
    scores = dice_per_target(pred, truth)
    assert scores["abnormal pancreas"] == 1.0
    assert scores["duct"] == 0.0      # truth duct present, predicted duct empty
    # PDAC: truth 8 voxels, prediction 4 (other) voxels, none shared
    assert scores["PDAC"] == 0.0

    pred2 = truth.copy()
    pred2[2:4, 2:4, 2] = 1            # half of the PDAC (4 of 8 voxels) lost to pancreas
    scores2 = dice_per_target(pred2, truth)
    assert scores2["PDAC"] == pytest.approx(2 * 4 / (8 + 4))
    assert scores2["abnormal pancreas"] == 1.0
    assert scores2["duct"] == 1.0


def test_empty_mask_convention() -> None:
    empty = np.zeros(SHAPE, dtype=np.uint8)
    some_pdac = empty.copy()
    some_pdac[3, 3, 3] = 2
    assert dice_per_target(empty, empty) == {name: 1.0 for name in TARGETS}
    assert dice_per_target(some_pdac, empty)["PDAC"] == 0.0        # empty truth, non-empty prediction
    assert dice_per_target(empty, some_pdac)["PDAC"] == 0.0        # non-empty truth, empty prediction
    assert dice_per_target(some_pdac, empty)["duct"] == 1.0
    for scores in (dice_per_target(empty, empty), dice_per_target(some_pdac, empty)):
        assert not any(math.isnan(value) for value in scores.values())


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="shape"):
        dice_per_target(np.zeros((2, 3, 4)), np.zeros((2, 3, 5)))


# ---------------------------------------------------------------- surface metrics (HD95, NSD) with known answers

ANISOTROPIC_ZYX = (3.0, 0.7, 0.7)


def brute_force_surface(truth: np.ndarray, pred: np.ndarray, spacing_zyx, tolerance_mm: float) -> tuple[float, float]:
    """Independent HD95 / NSD: boundary = mask minus its 6-connected erosion (image border outside), all pairwise
    physical distances, symmetric HD95 = max of the directed 95th percentiles, NSD = boundary fraction within
    tolerance."""
    from scipy.ndimage import binary_erosion

    def boundary_mm(mask: np.ndarray) -> np.ndarray:
        return np.argwhere(mask & ~binary_erosion(mask, border_value=0)) * np.asarray(spacing_zyx)

    truth_points, pred_points = boundary_mm(truth), boundary_mm(pred)
    distances = np.linalg.norm(pred_points[:, None, :] - truth_points[None, :, :], axis=-1)
    pred_to_truth, truth_to_pred = distances.min(axis=1), distances.min(axis=0)
    hd95 = max(np.percentile(pred_to_truth, 95), np.percentile(truth_to_pred, 95))
    nsd = (np.sum(pred_to_truth <= tolerance_mm) + np.sum(truth_to_pred <= tolerance_mm)) / (
        len(pred_to_truth) + len(truth_to_pred))
    return float(hd95), float(nsd)


def test_plates_offset_along_z_with_anisotropic_spacing() -> None:
    """One-voxel-thick plates two slices apart: every boundary distance is 2 × 3.0 mm, so HD95 = 6 mm and NSD
    jumps from 0 to 1 at a tolerance of 6 mm."""
    truth = np.zeros(SHAPE, dtype=bool)
    pred = np.zeros(SHAPE, dtype=bool)
    truth[2, 2:8, 2:9] = True
    pred[4, 2:8, 2:9] = True
    hd95, nsd = surface_metrics(truth, pred, ANISOTROPIC_ZYX, tolerance_mm=2.0)
    assert hd95 == pytest.approx(6.0, abs=1e-5)
    assert nsd == 0.0
    assert surface_metrics(truth, pred, ANISOTROPIC_ZYX, tolerance_mm=5.9)[1] == 0.0
    assert surface_metrics(truth, pred, ANISOTROPIC_ZYX, tolerance_mm=6.0)[1] == pytest.approx(1.0)
    # the same plates shifted in-plane by 3 voxels along x instead: 3 × 0.7 mm
    pred_x = np.zeros(SHAPE, dtype=bool)
    pred_x[:, :, 5] = True
    truth_x = np.zeros(SHAPE, dtype=bool)
    truth_x[:, :, 2] = True
    hd95_x, nsd_x = surface_metrics(truth_x, pred_x, ANISOTROPIC_ZYX, tolerance_mm=2.0)
    assert hd95_x == pytest.approx(2.1, abs=1e-5)
    assert nsd_x == 0.0
    assert surface_metrics(truth_x, pred_x, ANISOTROPIC_ZYX, tolerance_mm=2.2)[1] == pytest.approx(1.0)


def test_single_voxels_distance_in_mm() -> None:
    truth = np.zeros(SHAPE, dtype=bool)
    pred = np.zeros(SHAPE, dtype=bool)
    truth[1, 1, 1] = True
    pred[3, 4, 6] = True                                     # offset (2, 3, 5) voxels
    expected = math.sqrt((2 * 3.0) ** 2 + (3 * 0.7) ** 2 + (5 * 0.7) ** 2)
    hd95, nsd = surface_metrics(truth, pred, ANISOTROPIC_ZYX, tolerance_mm=2.0)
    assert hd95 == pytest.approx(expected, abs=1e-4)
    assert nsd == 0.0
    assert surface_metrics(truth, pred, ANISOTROPIC_ZYX, tolerance_mm=expected + 1e-3)[1] == pytest.approx(1.0)
    assert surface_metrics(truth, truth, ANISOTROPIC_ZYX) == (pytest.approx(0.0), pytest.approx(1.0))


@pytest.mark.parametrize("shift", [1, 2, 3])
def test_cubes_offset_along_z_match_brute_force(shift: int) -> None:
    shape = (12, 12, 12)
    truth = np.zeros(shape, dtype=bool)
    pred = np.zeros(shape, dtype=bool)
    truth[2:7, 3:9, 2:10] = True
    pred[2 + shift:7 + shift, 3:9, 2:10] = True
    for tolerance in (1.0, 3.05, 6.5):
        hd95, nsd = surface_metrics(truth, pred, ANISOTROPIC_ZYX, tolerance_mm=tolerance)
        expected_hd95, expected_nsd = brute_force_surface(truth, pred, ANISOTROPIC_ZYX, tolerance)
        assert hd95 == pytest.approx(expected_hd95, abs=1e-4)
        assert nsd == pytest.approx(expected_nsd, abs=1e-6)
        assert 0 < hd95 <= shift * 3.0 + 1e-5                # nothing is farther than the shift itself


def test_surface_metrics_of_irregular_masks_match_brute_force() -> None:
    rng = np.random.default_rng(1)
    truth = np.zeros((8, 14, 14), dtype=bool)
    truth[2:6, 3:11, 3:11] = True
    pred = truth.copy()
    pred[rng.random(pred.shape) < 0.15] ^= True              # noisy prediction
    for tolerance in (0.5, 1.3, 2.1, 4.1):                   # no voxel distance within 0.004 mm of these
        hd95, nsd = surface_metrics(truth, pred, (2.5, 0.8, 0.6), tolerance_mm=tolerance)
        expected = brute_force_surface(truth, pred, (2.5, 0.8, 0.6), tolerance)
        assert (hd95, nsd) == (pytest.approx(expected[0], abs=1e-4), pytest.approx(expected[1], abs=1e-6))


def test_surface_metrics_empty_convention() -> None:
    empty = np.zeros(SHAPE, dtype=bool)
    some = empty.copy()
    some[3, 3, 3] = True
    diagonal = math.sqrt((7 * 3.0) ** 2 + (9 * 0.7) ** 2 + (11 * 0.7) ** 2)
    assert image_diagonal_mm(SHAPE, ANISOTROPIC_ZYX) == pytest.approx(diagonal)
    assert surface_metrics(empty, empty, ANISOTROPIC_ZYX) == (0.0, 1.0)
    assert surface_metrics(some, empty, ANISOTROPIC_ZYX) == (pytest.approx(diagonal), 0.0)   # prediction empty
    assert surface_metrics(empty, some, ANISOTROPIC_ZYX) == (pytest.approx(diagonal), 0.0)   # truth empty
    with pytest.raises(ValueError, match="spacing"):
        surface_metrics(some, some, (1.0, 1.0))


# ---------------------------------------------------------------- evaluate_folders

def make_cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Three cases (truth, prediction) with known misses: see comments."""
    cases = {}
    # case_a: everything present, partial overlaps; nothing missed.
    truth = np.zeros(SHAPE, dtype=np.uint8)
    truth[1:6, 2:8, 2:9] = 1
    truth[2:4, 3:6, 3:6] = 2
    truth[4, 4, 3:8] = 3
    pred = np.zeros(SHAPE, dtype=np.uint8)
    pred[1:5, 2:8, 3:10] = 1
    pred[2:4, 3:5, 3:7] = 2
    pred[4, 4, 5:9] = 3
    cases["case_a"] = (truth, pred)
    # case_b: PDAC predicted as pancreas (PDAC missed), duct predicted elsewhere (duct missed).
    truth = np.zeros(SHAPE, dtype=np.uint8)
    truth[2:7, 1:7, 1:7] = 1
    truth[3:5, 2:4, 2:4] = 2
    truth[6, 5, 1:6] = 3
    pred = np.zeros(SHAPE, dtype=np.uint8)
    pred[2:7, 1:7, 2:8] = 1
    pred[0, 0, 0:4] = 3
    cases["case_b"] = (truth, pred)
    # case_c: normal pancreas, nothing predicted (abnormal pancreas missed); PDAC/duct empty in both -> 1.0.
    truth = np.zeros(SHAPE, dtype=np.uint8)
    truth[3:6, 3:7, 3:7] = 1
    cases["case_c"] = (truth, np.zeros(SHAPE, dtype=np.uint8))
    return cases


@pytest.fixture(scope="module")
def case_folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("eval")
    truth_dir, pred_dir = root / "truth", root / "pred"
    truth_dir.mkdir()
    pred_dir.mkdir()
    for case, (truth, pred) in make_cases().items():
        write_label_map(truth, truth_dir / f"{case}.nii.gz")
        write_label_map(pred, pred_dir / f"{case}.nii.gz")
    write_label_map(np.ones(SHAPE), pred_dir / "extra_without_truth.nii.gz")
    return truth_dir, pred_dir


def copy_folders(case_folders: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    truth_dir, pred_dir = case_folders
    return (Path(shutil.copytree(truth_dir, tmp_path / "truth")),
            Path(shutil.copytree(pred_dir, tmp_path / "pred")))


def test_evaluate_folders_matches_numpy(case_folders: tuple[Path, Path]) -> None:
    truth_dir, pred_dir = case_folders
    evaluated = evaluate_folders(pred_dir, truth_dir)
    result = evaluated.to_json()  # the summary.json form, every number derived from the per-case metrics
    assert EvaluationResult.from_json(json.loads(json.dumps(result))) == evaluated
    assert evaluated.mean("PDAC", "HD95") == result["aggregate"]["PDAC"]["HD95"]["mean"]
    assert evaluated.values("duct", "NSD", ["case_b"]) == [result["per_case_metrics"]["case_b"]["duct"]["NSD"]]
    cases = make_cases()
    assert result["n_cases"] == 3
    assert sorted(result["per_case"]) == sorted(cases)          # prediction without truth ignored
    for name, labels in TARGETS.items():
        expected = [reference_dice(truth, pred, labels) for truth, pred in cases.values()]
        assert [result["per_case"][case][name] for case in cases] == pytest.approx(expected)
        assert result["mean"][name] == pytest.approx(np.mean(expected))
        assert result["std"][name] == pytest.approx(np.std(expected, ddof=0))
        assert not math.isnan(result["mean"][name]) and not math.isnan(result["std"][name])
    assert result["missed"] == {"abnormal pancreas": 1, "PDAC": 1, "duct": 1}
    assert result["present"] == {"abnormal pancreas": 3, "PDAC": 2, "duct": 2}
    assert result["per_case"]["case_c"]["PDAC"] == 1.0
    assert result["per_case"]["case_c"]["abnormal pancreas"] == 0.0

    # surface metrics: finite everywhere, empty-mask convention per case, aggregates never NaN
    diagonal = image_diagonal_mm(SHAPE, tuple(reversed(SPACING_XYZ)))
    case_c = result["per_case_metrics"]["case_c"]
    assert case_c["abnormal pancreas"] == {"Dice": 0.0, "HD95": pytest.approx(diagonal), "NSD": 0.0}
    assert case_c["PDAC"] == {"Dice": 1.0, "HD95": 0.0, "NSD": 1.0}
    # case_b: PDAC in truth, none predicted; duct predicted elsewhere (both non-empty)
    assert result["per_case_metrics"]["case_b"]["PDAC"]["HD95"] == pytest.approx(diagonal)
    assert 0 < result["per_case_metrics"]["case_b"]["duct"]["HD95"] < diagonal
    assert result["one_empty"] == {"abnormal pancreas": 1, "PDAC": 1, "duct": 0}
    assert result["truth_present"]["case_c"] == {"abnormal pancreas": True, "PDAC": False, "duct": False}
    for name in TARGETS:
        for metric in ("Dice", "HD95", "NSD"):
            values = [result["per_case_metrics"][case][name][metric] for case in cases]
            assert result["aggregate"][name][metric]["mean"] == pytest.approx(np.mean(values))
            assert result["aggregate"][name][metric]["std"] == pytest.approx(np.std(values))
            assert all(math.isfinite(value) for value in values)
        assert result["aggregate"][name]["Dice"]["mean"] == result["mean"][name]


def test_evaluate_folders_uses_physical_spacing_in_zyx_order(tmp_path: Path) -> None:
    """Spacing (x, y, z) = (0.8, 0.8, 2.5) on disk: a 2-slice shift is 5 mm, a 2-column shift 1.6 mm."""
    (tmp_path / "truth").mkdir()
    (tmp_path / "pred").mkdir()
    truth = np.zeros(SHAPE, dtype=np.uint8)
    truth[3, 2:8, 2:9] = 2
    shifted_z = np.roll(truth, 2, axis=0)
    shifted_x = np.roll(truth, 2, axis=2)
    for case, pred in (("z", shifted_z), ("x", shifted_x)):
        write_label_map(truth, tmp_path / "truth" / f"{case}.nii.gz")
        write_label_map(pred, tmp_path / "pred" / f"{case}.nii.gz")
    result = evaluate_folders(tmp_path / "pred", tmp_path / "truth", tolerance_mm=2.0).to_json()
    assert result["per_case_metrics"]["z"]["PDAC"]["HD95"] == pytest.approx(5.0, abs=1e-5)
    assert result["per_case_metrics"]["z"]["PDAC"]["NSD"] == 0.0
    assert result["per_case_metrics"]["x"]["PDAC"]["HD95"] == pytest.approx(1.6, abs=1e-5)
    assert result["per_case_metrics"]["x"]["PDAC"]["NSD"] == pytest.approx(1.0)
    assert result["tolerance_mm"] == 2.0 and result["metrics"] == ["Dice", "HD95", "NSD"]


def test_evaluate_folders_selected_cases(case_folders: tuple[Path, Path]) -> None:
    truth_dir, pred_dir = case_folders
    result = evaluate_folders(pred_dir, truth_dir, cases=["case_b"], surface=False).to_json()
    assert list(result["per_case"]) == ["case_b"] and result["metrics"] == ["Dice"]
    with pytest.raises(HPNInputError, match=r"extra_without_truth\.nii\.gz: missing truth"):
        evaluate_folders(pred_dir, truth_dir, cases=["case_a", "extra_without_truth"])


def test_geometry_mismatch_names_the_file(case_folders: tuple[Path, Path], tmp_path: Path) -> None:
    truth_dir, pred_dir = copy_folders(case_folders, tmp_path)
    truth, pred = make_cases()["case_b"]
    write_label_map(pred, pred_dir / "case_b.nii.gz", spacing_xyz=(0.8, 0.8, 3.0))
    with pytest.raises(HPNInputError, match=r"case_b\.nii\.gz.*spacing"):
        evaluate_folders(pred_dir, truth_dir)


def test_size_mismatch_names_the_file(case_folders: tuple[Path, Path], tmp_path: Path) -> None:
    truth_dir, pred_dir = copy_folders(case_folders, tmp_path)
    write_label_map(np.zeros((8, 10, 11)), pred_dir / "case_a.nii.gz")
    with pytest.raises(HPNInputError, match=r"case_a\.nii\.gz.*size"):
        evaluate_folders(pred_dir, truth_dir)


def test_missing_prediction_is_an_error(case_folders: tuple[Path, Path], tmp_path: Path) -> None:
    truth_dir, pred_dir = copy_folders(case_folders, tmp_path)
    (pred_dir / "case_c.nii.gz").unlink()
    with pytest.raises(HPNInputError, match=r"case_c\.nii\.gz.*missing|missing.*case_c\.nii\.gz"):
        evaluate_folders(pred_dir, truth_dir)


def test_unexpected_label_is_an_error(case_folders: tuple[Path, Path], tmp_path: Path) -> None:
    truth_dir, pred_dir = copy_folders(case_folders, tmp_path)
    bad = make_cases()["case_a"][1].copy()
    bad[0, 0, 0] = 7
    write_label_map(bad, pred_dir / "case_a.nii.gz")
    with pytest.raises(HPNInputError, match=r"case_a\.nii\.gz.*unexpected labels \[7\]"):
        evaluate_folders(pred_dir, truth_dir)


def test_abnormal_pancreas_dice_equals_nnunet(case_folders: tuple[Path, Path], tmp_path: Path) -> None:
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    truth_dir, pred_dir = copy_folders(case_folders, tmp_path)
    (pred_dir / "extra_without_truth.nii.gz").unlink()      # nnU-Net iterates over predictions
    ours = evaluate_folders(pred_dir, truth_dir).to_json()["per_case"]
    theirs = compute_metrics_on_folder(str(truth_dir), str(pred_dir), str(tmp_path / "nnunet.json"), SimpleITKIO(),
                                       ".nii.gz", [(1, 2, 3), (2,)], None, 1)
    assert len(theirs["metric_per_case"]) == 3
    for case_result in theirs["metric_per_case"]:
        case = Path(case_result["reference_file"]).name.removesuffix(".nii.gz")
        assert ours[case]["abnormal pancreas"] == pytest.approx(case_result["metrics"][(1, 2, 3)]["Dice"])
        nnunet_pdac = case_result["metrics"][(2,)]["Dice"]
        # nnU-Net gives NaN when truth and prediction are both empty; our convention gives 1.0.
        assert ours[case]["PDAC"] == (1.0 if math.isnan(nnunet_pdac) else pytest.approx(nnunet_pdac))


def test_table_and_summary_files(case_folders: tuple[Path, Path], tmp_path: Path) -> None:
    truth_dir, pred_dir = case_folders
    evaluated = evaluate_folders(pred_dir, truth_dir)
    result = evaluated.to_json()
    table = format_dice_table(evaluated)
    lines = table.splitlines()
    assert len(lines) == 2 + len(TARGETS)
    pdac_row = next(line for line in lines if line.startswith("PDAC"))
    assert f"{100 * result['mean']['PDAC']:.2f} ± {100 * result['std']['PDAC']:.2f}" in pdac_row
    assert pdac_row.split()[-3:] == ["1", "2", "3"]           # missed, present, n

    json_path, csv_path = write_summary(evaluated, tmp_path / "out" / "summary.json")
    assert csv_path == tmp_path / "out" / "summary.csv"
    assert json.loads(json_path.read_text()) == json.loads(json.dumps(result))
    with csv_path.open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["case"] for row in rows] == ["case_a", "case_b", "case_c"]
    assert float(rows[0]["Dice PDAC"]) == pytest.approx(result["per_case"]["case_a"]["PDAC"], abs=1e-6)
    assert float(rows[1]["HD95 mm duct"]) == pytest.approx(result["per_case_metrics"]["case_b"]["duct"]["HD95"],
                                                           abs=1e-6)
    assert float(rows[2]["NSD PDAC"]) == 1.0
    hd95_cell = f"{result['aggregate']['PDAC']['HD95']['mean']:.2f} ± {result['aggregate']['PDAC']['HD95']['std']:.2f}"
    assert hd95_cell in pdac_row


# ---------------------------------------------------------------- evaluate CLI

def test_cli_evaluate_writes_json_csv_and_table(case_folders: tuple[Path, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    truth_dir, pred_dir = case_folders
    out = tmp_path / "out" / "summary.json"
    assert main(["evaluate", str(truth_dir), str(pred_dir), "-o", str(out), "--tolerance-mm", "1.5"]) == 0
    printed = capsys.readouterr().out
    assert "NSD@1.5mm" in printed and "HD95 mm" in printed and f"wrote {out}" in printed
    summary = json.loads(out.read_text())
    assert summary["tolerance_mm"] == 1.5 and summary["n_cases"] == 3
    assert out.with_suffix(".csv").is_file()


@pytest.mark.parametrize("problem", ["geometry", "missing"])
def test_cli_evaluate_error_is_one_line_and_writes_nothing(problem: str, case_folders: tuple[Path, Path],
                                                           tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    truth_dir, pred_dir = copy_folders(case_folders, tmp_path)
    if problem == "geometry":
        write_label_map(make_cases()["case_b"][1], pred_dir / "case_b.nii.gz", spacing_xyz=(0.8, 0.8, 3.0))
    else:
        (pred_dir / "case_b.nii.gz").unlink()
    out = tmp_path / "out" / "summary.json"
    assert main(["evaluate", str(truth_dir), str(pred_dir), "-o", str(out)]) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and error.startswith("nnunet-hpn evaluate: error: ")
    assert "case_b.nii.gz" in error and ("spacing" if problem == "geometry" else "missing") in error
    assert not (tmp_path / "out").exists()


def test_cli_evaluate_only_predicted(case_folders: tuple[Path, Path], tmp_path: Path,
                                     capsys: pytest.CaptureFixture) -> None:
    truth_dir, pred_dir = copy_folders(case_folders, tmp_path)
    (pred_dir / "extra_without_truth.nii.gz").unlink()
    (pred_dir / "case_c.nii.gz").unlink()
    out = tmp_path / "summary.json"
    assert main(["evaluate", str(truth_dir), str(pred_dir), "--only-predicted", "-o", str(out)]) == 0
    assert json.loads(out.read_text())["n_cases"] == 2
    capsys.readouterr()


# ---------------------------------------------------------------- figures

def make_phases(shape=(6, 32, 40)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    arterial = rng.normal(40, 30, shape).astype(np.float32)
    arterial[:, :4] = -1000.0                                   # air: values look like HU
    venous = arterial + 30
    return arterial, venous


def make_truth(shape=(6, 32, 40)) -> np.ndarray:
    truth = np.zeros(shape, dtype=np.uint8)
    truth[1, 5:30, 5:35] = 1          # largest foreground on slice 1
    truth[3, 10:20, 10:20] = 1
    truth[3, 12:15, 12:15] = 2        # PDAC 9 voxels on slice 3
    truth[4, 10:20, 10:20] = 2        # PDAC 100 voxels on slice 4: the largest
    truth[4, 15, 10:20] = 3
    return truth


def test_pick_slice() -> None:
    truth = make_truth()
    assert pick_slice(truth) == 4
    no_pdac = np.where(truth == 2, 1, truth)
    assert pick_slice(no_pdac) == 1                             # largest foreground
    assert pick_slice(np.zeros((7, 4, 4), dtype=np.uint8)) == 3  # middle


def test_overlay_png(tmp_path: Path) -> None:
    arterial, venous = make_phases()
    truth = make_truth()
    prediction = np.roll(truth, 2, axis=2)
    out = save_overlay_png({"arterial": arterial, "venous": venous}, truth, prediction, tmp_path / "fig" / "case.png",
                           title="case", spacing_zyx=(2.5, 0.8, 0.8))
    assert out == tmp_path / "fig" / "case.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(out)
    height, width = image.shape[:2]
    assert width > 2.5 * height                                 # four side-by-side panels
    assert image.std() > 0.05                                   # not blank
    assert [path.name for path in out.parent.iterdir()] == ["case.png"]   # no temporary left behind

    # anisotropic in-plane spacing makes the panels taller
    tall = save_overlay_png({"arterial": arterial, "venous": venous}, truth, None, tmp_path / "tall.png",
                            spacing_zyx=(2.5, 1.6, 0.8))
    tall_height, tall_width = matplotlib.image.imread(tall).shape[:2]
    assert tall_height > height and tall_width < width          # 3 panels, each twice as tall

    # K phases: one panel per phase
    three = save_overlay_png({"noncontrast": arterial - 50, "arterial": arterial, "venous": venous}, truth,
                             prediction, tmp_path / "three.png", spacing_zyx=(2.5, 0.8, 0.8))
    three_height, three_width = matplotlib.image.imread(three).shape[:2]
    assert three_height == height and three_width > width * 1.15  # five panels instead of four


def test_overlay_from_files(tmp_path: Path) -> None:
    arterial, venous = make_phases()
    paths = {}
    for name, array in (("arterial", arterial), ("venous", venous), ("truth", make_truth())):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((0.8, 0.8, 2.5))
        paths[name] = tmp_path / f"{name}.nii.gz"
        sitk.WriteImage(image, str(paths[name]))
    phases = {"arterial": paths["arterial"], "venous": paths["venous"]}
    out = save_overlay_from_files(phases, paths["truth"], None, tmp_path / "x.png")
    assert matplotlib.image.imread(out).shape[1] > matplotlib.image.imread(out).shape[0]

    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((6, 32, 41), dtype=np.uint8)), str(paths["truth"]))
    with pytest.raises(HPNInputError, match=r"truth\.nii\.gz.*size"):
        save_overlay_from_files(phases, paths["truth"], None, tmp_path / "y.png")


@pytest.mark.parametrize("marker", ["predict_from_raw_data_args.json", "registration_qc", "case_a.npz"])
def test_cli_evaluate_refuses_swapped_folders(marker: str, case_folders: tuple[Path, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    """``evaluate GT PRED`` is nnU-Net's order; a prediction folder (what nnUNetv2_predict or nnunet-hpn predict
    leave in it) given as GT_DIR next to a plain label folder is refused with one line, nothing written."""
    truth_dir, pred_dir = copy_folders(case_folders, tmp_path)
    (pred_dir / marker).mkdir() if "." not in marker else (pred_dir / marker).write_text("{}")
    out = tmp_path / "out" / "summary.json"
    assert main(["evaluate", str(pred_dir), str(truth_dir), "-o", str(out)]) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and f"{pred_dir}: given as GT_DIR but looks like a prediction folder" in error
    assert marker in error and "GT_DIR PRED_DIR" in error and not out.parent.exists()
    assert main(["evaluate", str(truth_dir), str(pred_dir), "-o", str(out)]) == 0  # the right order


def test_cli_evaluate_in_worker_processes_gives_the_same_summary(case_folders: tuple[Path, Path], tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    truth_dir, pred_dir = case_folders
    summaries = []
    for n in ("1", "2"):
        out = tmp_path / f"np{n}" / "summary.json"
        assert main(["evaluate", str(truth_dir), str(pred_dir), "-o", str(out), "-np", n]) == 0
        summaries.append(json.loads(out.read_text()))
    assert summaries[0] == summaries[1] and summaries[0]["n_cases"] == 3
    capsys.readouterr()
