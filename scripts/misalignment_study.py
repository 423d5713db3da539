#!/usr/bin/env python
"""How HPN and early fusion behave when the phases are not perfectly aligned (issue 20's robustness study).

On the CPU Table 1's data (``scripts/cpu_table1.py``: 24 cropped phantoms, its split and training preset):

1. **models**: early fusion and HPN (the table's rows; trained here only if their folds are missing) and the same
   two trained with misalignment augmentation (``EarlyFusionTrainer_misalign``, ``HPNTrainer_misalign``: the
   non-reference phase warped by up to 4 mm during training), all at the table's budget;
2. **injected misalignment**: every held-out case's venous phase (already registered onto the arterial one) warped
   by a known smooth field of at most L mm plus a rigid shift of L/2 mm (``misalignment.misaligned_copy``, beside
   this script; one seed per case and level), L in :data:`LEVELS_MM`; each fold's model predicts its own validation
   cases, so every case is predicted by a model that never saw it;
3. **registration on unaligned input**: the table's phantoms converted again with the venous phase registered by
   ``none`` / ``affine`` / ``demons`` (then cut to the same label box), predicted by the HPN and early-fusion models;
4. Dice of abnormal pancreas, PDAC and duct per model and level (``nnunet-hpn evaluate``), one PNG with the curves
   (Dice against misalignment, one line per model), ``study.md`` / ``study.json`` in ``--docs``.

Resumable: trained folds, predicted folders and evaluations that exist are kept.

    nice -n 10 python scripts/misalignment_study.py --workdir work_dirs/table1 --docs docs/misalignment
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import zlib
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk

import cpu_table1  # beside this script
from misalignment import misaligned_copy
from nnunet_hpn.demo import console_command
from nnunet_hpn.evaluate.metrics import TARGETS, evaluate_folders

#: largest smooth displacement (mm) injected into the venous phase; the rigid shift is half of it
LEVELS_MM: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0, 8.0)
#: the models compared: run_ablation rows
MODELS: tuple[str, ...] = ("early_fusion", "hpn", "early_fusion_misalign", "hpn_misalign")
REGISTRATIONS: tuple[str, ...] = ("none", "affine", "demons")
#: dataset ids of the re-converted phantoms, one per registration method
REGISTRATION_DATASET_IDS = {"none": 521, "affine": 522, "demons": 523}


def case_seed(case: str, level_mm: float) -> int:
    """A seed fixed by the case name and the level (the same misalignment on every machine and for every model)."""
    return zlib.crc32(f"{case}:{level_mm:g}".encode())


def misaligned_venous(arterial: sitk.Image, venous: sitk.Image, level_mm: float, seed: int) -> sitk.Image:
    """``venous`` (on ``arterial``'s grid) through a smooth field of at most ``level_mm`` and a shift of
    ``level_mm / 2``, resampled back onto ``arterial``'s grid; level 0 returns ``venous`` itself."""
    if level_mm == 0:
        return venous
    moved, _, _ = misaligned_copy(venous, None, seed=seed, max_deformation_mm=level_mm, shift_mm=level_mm / 2,
                                  rotation_deg=0.0, spacing_factors=(1.0, 1.0, 1.0), flip_y=False)
    air = float(np.min(sitk.GetArrayViewFromImage(venous)))
    return sitk.Resample(moved, arterial, sitk.Transform(), sitk.sitkLinear, air, venous.GetPixelID())


def write_misaligned_inputs(images: Path, cases: Sequence[str], level_mm: float, out: Path) -> None:
    """nnU-Net input files (``<case>_0000``: arterial as is, ``<case>_0001``: venous misaligned) of ``cases``."""
    out.mkdir(parents=True, exist_ok=True)
    for case in cases:
        arterial_path, venous_path = images / f"{case}_0000.nii.gz", images / f"{case}_0001.nii.gz"
        target = out / f"{case}_0001.nii.gz"
        if target.is_file() and (out / f"{case}_0000.nii.gz").is_file():
            continue
        arterial, venous = sitk.ReadImage(str(arterial_path)), sitk.ReadImage(str(venous_path))
        sitk.WriteImage(arterial, str(out / f"{case}_0000.nii.gz"), useCompression=True)
        sitk.WriteImage(misaligned_venous(arterial, venous, level_mm, case_seed(case, level_mm)), str(target),
                        useCompression=True)


def predict(inputs: Path, out: Path, row: str, fold: int, env: dict[str, str]) -> None:
    """``nnUNetv2_predict`` with fold ``fold`` of ``row``'s model (skipped when every input has its prediction)."""
    cases = sorted({path.name[:-len("_0000.nii.gz")] for path in inputs.glob("*_0000.nii.gz")})
    if out.is_dir() and all((out / f"{case}.nii.gz").is_file() for case in cases):
        return
    trainer = cpu_table1.run_ablation.ROWS[row].trainer
    cpu_table1.run([console_command("nnUNetv2_predict"), "-i", str(inputs), "-o", str(out), "-d",
                    str(cpu_table1.DATASET_ID), "-c", cpu_table1.CONFIGURATION, "-tr", trainer, "-p",
                    cpu_table1.PLANS, "-f", str(fold), "--disable_tta", "-device", "cpu", "-npp", "1", "-nps", "1"],
                   env)


def gather(folds_out: Sequence[Path], merged: Path) -> Path:
    """The per-fold prediction folders linked into one folder of all cases."""
    merged.mkdir(parents=True, exist_ok=True)
    for folder in folds_out:
        for path in folder.glob("*.nii.gz"):
            target = merged / path.name
            if not target.exists():
                os.link(path, target)
    return merged


def dice_row(result) -> dict[str, float]:
    return {name: round(100 * result.mean(name, "Dice"), 2) for name in TARGETS}


def plot_curves(records: dict[str, dict[str, dict[str, float]]], out: Path) -> None:
    """One panel per target: Dice against injected misalignment, one line per model."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(TARGETS), figsize=(4.2 * len(TARGETS), 3.6))
    for axis, target in zip(axes, TARGETS):
        for model, per_level in records.items():
            levels = sorted(per_level, key=float)
            axis.plot([float(level) for level in levels], [per_level[level][target] for level in levels],
                      marker="o", label=model)
        axis.set_title(target)
        axis.set_xlabel("injected misalignment: smooth field max (mm), + half as much shift")
        axis.set_ylabel("Dice %")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("work_dirs/table1"))
    parser.add_argument("--docs", type=Path, default=Path("docs/misalignment"))
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--levels", nargs="+", type=float, default=list(LEVELS_MM))
    parser.add_argument("--no-registration", action="store_true", help="skip the none/affine/demons comparison")
    args = parser.parse_args(argv)
    workdir, docs = args.workdir.resolve(), args.docs.resolve()
    env = cpu_table1.nnunet_env(workdir)
    raw = cpu_table1.prepare_dataset(workdir, env)
    splits_file = workdir / "nnUNet_preprocessed" / raw.name / "splits_final.json"
    for row in args.models:  # the table's preset; finished folds are skipped
        for fold in cpu_table1.FOLDS:
            cpu_table1.train_fold(workdir, row, fold, env)
    splits = json.loads(splits_file.read_text())
    study = workdir / "misalignment_study"
    labels = raw / "labelsTr"
    records: dict[str, dict[str, dict[str, float]]] = {model: {} for model in args.models}
    for level in args.levels:
        for model in args.models:
            fold_outputs = []
            for fold in cpu_table1.FOLDS:
                inputs = study / "inputs" / f"level_{level:g}" / f"fold_{fold}"
                write_misaligned_inputs(raw / "imagesTr", splits[fold]["val"], level, inputs)
                out = study / "predictions" / model / f"level_{level:g}" / f"fold_{fold}"
                predict(inputs, out, model, fold, env)
                fold_outputs.append(out)
            merged = gather(fold_outputs, study / "predictions" / model / f"level_{level:g}" / "all")
            records[model][f"{level:g}"] = dice_row(evaluate_folders(merged, labels, progress=False))
            print(f"{model} at {level:g} mm: {records[model][f'{level:g}']}", flush=True)

    registration: dict[str, dict[str, dict[str, float]]] = {}
    if not args.no_registration:
        phantoms = workdir / "phantoms"
        for method in REGISTRATIONS:
            dataset_id = REGISTRATION_DATASET_IDS[method]
            converted = workdir / "nnUNet_raw" / f"Dataset{dataset_id}_MisalignStudy{method.capitalize()}"
            if not (converted / "dataset.json").is_file():
                command = [console_command("nnunet-hpn"), "convert", str(phantoms), "-d", str(dataset_id), "--name",
                           f"MisalignStudy{method.capitalize()}", "--raw-root", env["nnUNet_raw"],
                           "--crop-to-label", f"{cpu_table1.CROP_MARGIN_MM:g}"]
                if method != "none":
                    command += ["--register", "--registration-method", method, "-np", "1"]
                cpu_table1.run(command, env)
            for model in ("early_fusion", "hpn"):
                fold_outputs = []
                for fold in cpu_table1.FOLDS:
                    inputs = study / "registration_inputs" / method / f"fold_{fold}"
                    inputs.mkdir(parents=True, exist_ok=True)
                    for case in splits[fold]["val"]:
                        for channel in (0, 1):
                            source = converted / "imagesTr" / f"{case}_{channel:04d}.nii.gz"
                            if not (inputs / source.name).exists():
                                os.link(source, inputs / source.name)
                    out = study / "registration_predictions" / model / method / f"fold_{fold}"
                    predict(inputs, out, model, fold, env)
                    fold_outputs.append(out)
                merged = gather(fold_outputs, study / "registration_predictions" / model / method / "all")
                registration.setdefault(model, {})[method] = dice_row(
                    evaluate_folders(merged, converted / "labelsTr", progress=False))
                print(f"{model} with {method} registration: {registration[model][method]}", flush=True)

    docs.mkdir(parents=True, exist_ok=True)
    plot_curves(records, docs / "dice_vs_misalignment.png")
    info = {"date": datetime.date.today().isoformat(), "device": f"CPU ({os.cpu_count()} logical), "
                                                               f"{platform.processor() or platform.machine()}",
            "preset": list(cpu_table1.PRESET), "levels_mm": args.levels, "injected": records,
            "registration": registration,
            "command": "python scripts/misalignment_study.py " + " ".join(argv or sys.argv[1:])}
    (docs / "study.json").write_text(json.dumps(info, indent=2) + "\n")
    lines = ["| model | " + " | ".join(f"{level:g} mm" for level in args.levels) + " |",
             "|---|" + "---:|" * len(args.levels)]
    for target in TARGETS:
        lines.append(f"| **{target}** |" + " |" * len(args.levels))
        for model, per_level in records.items():
            lines.append(f"| {model} | " + " | ".join(f"{per_level[f'{level:g}'][target]:.2f}"
                                                     for level in args.levels) + " |")
    if registration:
        lines += ["", "| model | target | " + " | ".join(REGISTRATIONS) + " |", "|---|---|" + "---:|" * 3]
        for model, per_method in registration.items():
            for target in TARGETS:
                lines.append(f"| {model} | {target} | " + " | ".join(f"{per_method[m][target]:.2f}"
                                                                    for m in REGISTRATIONS) + " |")
    (docs / "study.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
