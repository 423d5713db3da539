"""scripts/misalignment_study.py's injected misalignment: the arterial phase is copied bit-identically, the venous one
moves by at most the level (field + half as much shift) and not at all at level 0, the same for every run."""
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

import misalignment_study
from nnunet_hpn.phantom import generate_phantom_case, phantom_image


def test_injected_misalignment_moves_only_the_venous_phase(tmp_path: Path) -> None:
    case = generate_phantom_case(3, 0, (24, 48, 48))
    images = tmp_path / "imagesTr"
    images.mkdir()
    sitk.WriteImage(phantom_image(case.images["arterial"]), str(images / "c_0000.nii.gz"))
    sitk.WriteImage(phantom_image(case.images["venous"]), str(images / "c_0001.nii.gz"))
    outputs = {}
    for level in (0.0, 4.0):
        out = tmp_path / f"level_{level:g}"
        misalignment_study.write_misaligned_inputs(images, ["c"], level, out)
        outputs[level] = [sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"c_000{c}.nii.gz"))) for c in (0, 1)]
    arterial, venous = case.images["arterial"], case.images["venous"]
    assert np.array_equal(outputs[0.0][0], arterial) and np.array_equal(outputs[4.0][0], arterial)
    assert np.array_equal(outputs[0.0][1], venous)
    assert not np.array_equal(outputs[4.0][1], venous)
    # deterministic: the seed is the case's and the level's
    again = tmp_path / "again"
    misalignment_study.write_misaligned_inputs(images, ["c"], 4.0, again)
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(again / "c_0001.nii.gz"))), outputs[4.0][1])
    assert misalignment_study.case_seed("c", 4.0) != misalignment_study.case_seed("c", 8.0)


def synthetic_fold(fold: int, cases: list[str], offset: float) -> dict:
    """A fold record as run_fold writes it: HPN beats early fusion by ``offset`` + i/100 Dice points on case i."""
    targets = list(misalignment_study.TARGETS)
    injected = {model: {f"{level:g}": {case: {t: 50.0 - 2 * level + (offset + i / 100 if model == "hpn" else 0.0) + i
                                              for t in targets} for i, case in enumerate(cases)}
                        for level in misalignment_study.LEVELS_MM}
                for model in misalignment_study.MODELS}
    registration = {model: {method: {case: {t: 40.0 + k for t in targets} for case in cases}
                            for k, method in enumerate(misalignment_study.REGISTRATIONS)}
                    for model in misalignment_study.REGISTRATION_MODELS}
    return {"fold": fold, "cases": cases, "levels_mm": list(misalignment_study.LEVELS_MM), "injected": injected,
            "registration": registration, "training_seconds": {m: 1.0 for m in misalignment_study.MODELS},
            "preset": ["--epochs", "80"], "date": "2026-12-03", "device": "CPU (2 logical), x86_64"}


def test_study_docs_pool_the_archived_folds(tmp_path: Path) -> None:
    folds = [synthetic_fold(0, ["a0", "a1", "a2", "a3", "a4", "a5", "a6", "a7"], 3.0),
             synthetic_fold(1, ["b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7"], 3.0)]
    misalignment_study.write_docs(folds, tmp_path, "python scripts/misalignment_study.py")
    info = json.loads((tmp_path / "study.json").read_text())
    assert info["n_cases"] == 16 and info["folds"] == [0, 1]
    # cases 0..7 in each fold: mean offset 3.5; level 4 mm costs 8 points
    assert info["injected_mean_dice"]["early_fusion"]["4"]["PDAC"] == 50.0 - 8 + 3.5
    assert info["injected_mean_dice"]["hpn"]["4"]["PDAC"] == round(50.0 - 8 + 3.5 + 3.035, 2)
    assert info["registration_mean_dice"]["hpn"]["demons"]["duct"] == 42.0
    # HPN better on all 16 paired cases: the signed-rank test says so; no difference at all: p = 1
    assert info["wilcoxon_p"]["hpn vs early_fusion"]["0"]["PDAC"] < 1e-3
    assert info["wilcoxon_p"]["early_fusion_misalign vs early_fusion"]["8"]["duct"] == 1.0
    study = (tmp_path / "study.md").read_text(encoding="utf-8")
    assert "Folds 0, 1 of 3 (16 held-out cases)" in study and "| hpn | 56.53 |" in study
    assert (tmp_path / "dice_vs_misalignment.png").stat().st_size > 10_000


def test_fall_off_counts_only_the_folds_that_learned_the_target(tmp_path: Path) -> None:
    """A fold whose early-fusion model never segments PDAC (Dice 0 at every level) is left out of early fusion's
    fall-off and out of every comparison with it; the fall-off is Dice(L) − Dice(0 mm) per case."""
    folds = [synthetic_fold(0, [f"a{i}" for i in range(8)], 3.0), synthetic_fold(1, [f"b{i}" for i in range(8)], 3.0)]
    for per_case in folds[1]["injected"]["early_fusion"].values():
        for values in per_case.values():
            values["PDAC"] = 0.0
    misalignment_study.write_docs(folds, tmp_path, "python scripts/misalignment_study.py")
    falloff = json.loads((tmp_path / "study.json").read_text())["falloff"]
    assert falloff["fold_mean_at_0mm"]["early_fusion"]["PDAC"][1] == 0.0
    assert falloff["mean_drop"]["early_fusion"]["PDAC"] == {"n": 8, "1": -2.0, "2": -4.0, "4": -8.0, "8": -16.0}
    assert falloff["mean_drop"]["hpn"]["PDAC"]["n"] == 16
    # both fall off by 2 points per mm on the 8 cases of fold 0: no difference, p = 1
    assert falloff["drop_wilcoxon_p"]["hpn vs early_fusion"]["PDAC"] == {"n": 8, "1": 1.0, "2": 1.0, "4": 1.0,
                                                                         "8": 1.0}
    registration_p = json.loads((tmp_path / "study.json").read_text())["registration_wilcoxon_p"]
    assert registration_p["hpn"]["PDAC"]["none vs demons"] < 1e-3  # 40 against 42 on all 16 cases
    assert "learned the target" in (tmp_path / "study.md").read_text(encoding="utf-8")
