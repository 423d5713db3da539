#!/usr/bin/env python
"""How HPN and early fusion behave when the phases are not perfectly aligned (issue 20's robustness study).

On the CPU Table 1's data (``scripts/cpu_table1.py``: 24 cropped phantoms, its split and training preset), one
fold at a time (so that a study longer than one session still lands whole):

1. **models**: early fusion and HPN (the table's rows) and the same two trained with misalignment augmentation
   (``EarlyFusionTrainer_misalign``, ``HPNTrainer_misalign``: the non-reference phase warped by up to 4 mm during
   training), all with the table's preset and budget (``hpn_experiments.table1.train_fold``; a finished fold is
   reused);
2. **injected misalignment**: the fold's held-out cases' venous phase (already registered onto the arterial one)
   warped by a known smooth field of at most L mm plus a rigid shift of L/2 mm
   (``hpn_experiments.misalignment.misaligned_copy``; one seed per case and level), L in :data:`LEVELS_MM`,
   predicted by the fold's models, so every case is predicted by models that never saw it;
3. **registration on unaligned input**: the table's phantoms converted again with the venous phase registered by
   ``none`` / ``affine`` / ``demons`` (then cut to the same label box), predicted by the HPN and early-fusion models;
4. the fold's per-case Dice of abnormal pancreas, PDAC and duct is **archived** in ``--docs``/``folds/fold_<k>.json``
   (with ``--git-commit``, committed): an archived fold is never run again, on this machine or another;
5. after each fold, from all archived folds: ``study.md`` (mean Dice per model and level, paired Wilcoxon p of
   HPN against early fusion and of each augmented model against its plain one, the registration table),
   ``study.json`` and ``dice_vs_misalignment.png`` (Dice against misalignment, one line per model).

The archive is tied to the table's cropped labels and split (hashes stored beside it, as in ``cpu_table1``).

    nice -n 10 python scripts/misalignment_study.py --workdir work_dirs/table1 --docs docs/misalignment --git-commit
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

from hpn_experiments import table1
from hpn_experiments.ablation import ROWS
from hpn_experiments.archive import check_or_record, git_commit, labels_digest, run_resumably
from hpn_experiments.commands import nnunet_env, run_command
from hpn_experiments.misalignment import misaligned_copy
from nnunet_hpn.evaluate.metrics import TARGETS, evaluate_folders
from nnunet_hpn.evaluate.report import WILCOXON_NOTE, paired_wilcoxon

#: largest smooth displacement (mm) injected into the venous phase; the rigid shift is half of it
LEVELS_MM: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0, 8.0)
#: the models compared: run_ablation rows
MODELS: tuple[str, ...] = ("early_fusion", "hpn", "early_fusion_misalign", "hpn_misalign")
REGISTRATIONS: tuple[str, ...] = ("none", "affine", "demons")
#: dataset ids of the re-converted phantoms, one per registration method
REGISTRATION_DATASET_IDS = {"none": 521, "affine": 522, "demons": 523}
#: the models predicting the registration comparison
REGISTRATION_MODELS: tuple[str, ...] = ("early_fusion", "hpn")


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
    trainer = ROWS[row].trainer
    run_command(["nnUNetv2_predict", "-i", str(inputs), "-o", str(out), "-d", str(table1.DATASET_ID), "-c",
                 table1.CONFIGURATION, "-tr", trainer, "-p", table1.PLANS, "-f", str(fold), "--disable_tta", "-device",
                 "cpu", "-npp", "1", "-nps", "1"], env)


def plot_curves(records: dict[str, dict[str, dict[str, float]]], out: Path, title: str) -> None:
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
        axis.set_xlabel("injected misalignment L (mm)")
        axis.set_ylabel("Dice %")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle(f"{title}: venous phase warped by a smooth field of at most L mm plus a shift of L/2 mm",
                    fontsize=10)
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)


def registration_dataset(workdir: Path, method: str, env: dict[str, str]) -> Path:
    """The table's phantoms converted again with the venous phase registered by ``method`` (``none``: as generated)
    and cut to the same label box; converted once per machine (deterministic, so every fold sees the same data)."""
    dataset_id = REGISTRATION_DATASET_IDS[method]
    converted = workdir / "nnUNet_raw" / f"Dataset{dataset_id}_MisalignStudy{method.capitalize()}"
    if not (converted / "dataset.json").is_file():
        command = ["nnunet-hpn", "convert", str(workdir / "phantoms"), "-d", str(dataset_id), "--name",
                   f"MisalignStudy{method.capitalize()}", "--raw-root", env["nnUNet_raw"], "--crop-to-label",
                   f"{table1.CROP_MARGIN_MM:g}"]
        if method != "none":
            command += ["--register", "--registration-method", method, "-np", "1"]
        run_command(command, env)
    return converted


def run_fold(workdir: Path, raw: Path, fold: int, cases: Sequence[str], models: Sequence[str],
             levels: Sequence[float], registrations: Sequence[str], env: dict[str, str]) -> dict:
    """Train (or reuse) ``models``' fold ``fold``, predict its validation ``cases`` at every injected level and
    after every registration method; returns the fold's archive record (per-case Dice %)."""
    seconds = {model: table1.train_fold(workdir, model, fold, env) for model in models}
    study = workdir / "misalignment_study"
    injected: dict[str, dict[str, dict]] = {model: {} for model in models}
    for level in levels:
        inputs = study / "inputs" / f"level_{level:g}" / f"fold_{fold}"
        write_misaligned_inputs(raw / "imagesTr", cases, level, inputs)
        for model in models:
            out = study / "predictions" / model / f"level_{level:g}" / f"fold_{fold}"
            predict(inputs, out, model, fold, env)
            result = evaluate_folders(out, raw / "labelsTr", cases=cases, surface=False, progress=False)
            injected[model][f"{level:g}"] = table1.dice_per_case(result, cases)
            print(f"fold {fold}: {model} at {level:g} mm: {mean_dice(injected[model][f'{level:g}'])}", flush=True)
    registration: dict[str, dict[str, dict]] = {}
    for method in registrations:
        converted = registration_dataset(workdir, method, env)
        inputs = study / "registration_inputs" / method / f"fold_{fold}"
        inputs.mkdir(parents=True, exist_ok=True)
        for case in cases:
            for channel in (0, 1):
                source = converted / "imagesTr" / f"{case}_{channel:04d}.nii.gz"
                if not (inputs / source.name).exists():
                    os.link(source, inputs / source.name)
        for model in REGISTRATION_MODELS:
            if model not in models:
                continue
            out = study / "registration_predictions" / model / method / f"fold_{fold}"
            predict(inputs, out, model, fold, env)
            result = evaluate_folders(out, converted / "labelsTr", cases=cases, surface=False, progress=False)
            registration.setdefault(model, {})[method] = table1.dice_per_case(result, cases)
            print(f"fold {fold}: {model} with {method} registration: "
                  f"{mean_dice(registration[model][method])}", flush=True)
    return {"fold": fold, "cases": list(cases), "levels_mm": [float(level) for level in levels],
            "injected": injected, "registration": registration, "training_seconds": seconds,
            "preset": list(table1.PRESET), "date": datetime.date.today().isoformat(), "device": device()}


def mean_dice(per_case: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean Dice % per target over the cases of ``per_case``."""
    return {target: round(float(np.mean([values[target] for values in per_case.values()])), 2)
            for target in TARGETS}


def device() -> str:
    return f"CPU ({os.cpu_count()} logical), {platform.processor() or platform.machine()}"


def pooled(folds: Sequence[dict], key: str) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """The archived folds' ``key`` (``injected`` / ``registration``) merged: {model: {level: {case: …}}}."""
    merged: dict = {}
    for record in folds:
        for model, per_level in record[key].items():
            for level, per_case in per_level.items():
                merged.setdefault(model, {}).setdefault(level, {}).update(per_case)
    return merged


#: paired comparisons reported at every level: (model, reference)
COMPARISONS: tuple[tuple[str, str], ...] = (("hpn", "early_fusion"), ("hpn_misalign", "hpn"),
                                           ("early_fusion_misalign", "early_fusion"),
                                           ("hpn_misalign", "early_fusion_misalign"))


#: a fold "learned" a target when its held-out mean Dice at 0 mm reaches this (%): at the table's budget some
#: trainings never segment PDAC or the duct at all, which would swamp a comparison of how Dice falls off
LEARNED_DICE = 10.0


def learned(record: dict, model: str, target: str) -> bool:
    """Whether ``model`` of the fold ``record`` segments ``target`` at all (mean Dice at 0 mm ≥ LEARNED_DICE)."""
    return mean_dice(record["injected"][model]["0"])[target] >= LEARNED_DICE


def drops(folds: Sequence[dict], model: str, target: str, level: str, reference: Optional[str] = None
          ) -> dict[str, float]:
    """Per case, Dice(level) − Dice(0 mm) of ``model`` (percentage points), over the folds where ``model`` (and
    ``reference``, when given) learned ``target``."""
    out: dict[str, float] = {}
    for record in folds:
        if all(learned(record, m, target) for m in (model, reference) if m):
            per_level = record["injected"][model]
            out.update({c: per_level[level][c][target] - per_level["0"][c][target] for c in per_level["0"]})
    return out


def falloff_lines(folds: Sequence[dict], keys: Sequence[str]) -> tuple[list[str], dict]:
    """Markdown for which fold learned what, and for how Dice falls off with misalignment where it was learned
    (mean drop per model; paired Wilcoxon of the drops per comparison); and the same as a dict."""
    models = list(folds[0]["injected"])
    info: dict = {"learned_dice": LEARNED_DICE, "fold_mean_at_0mm": {}, "mean_drop": {}, "drop_wilcoxon_p": {}}
    lines = ["", f"Mean Dice % at 0 mm per fold (a fold *learned* a target at ≥ {LEARNED_DICE:g} %)", "",
             "| model | target | " + " | ".join(f"fold {r['fold']}" for r in folds) + " |",
             "|---|---|" + "---:|" * len(folds)]
    for model in models:
        for target in TARGETS:
            values = [mean_dice(r["injected"][model]["0"])[target] for r in folds]
            info["fold_mean_at_0mm"].setdefault(model, {})[target] = values
            lines.append(f"| {model} | {target} | " + " | ".join(f"{v:.1f}" for v in values) + " |")
    lines += ["", "Fall-off: mean per-case Dice(L) − Dice(0 mm), percentage points, over the folds where the model "
              "learned the target (cases n)", "",
              "| model | target | n | " + " | ".join(f"{key} mm" for key in keys[1:]) + " |",
              "|---|---|---:|" + "---:|" * (len(keys) - 1)]
    for model in models:
        for target in TARGETS:
            per_level = {key: drops(folds, model, target, key) for key in keys[1:]}
            n = len(per_level[keys[1]])
            if not n:
                continue
            means = {key: round(float(np.mean(list(v.values()))), 2) for key, v in per_level.items()}
            info["mean_drop"].setdefault(model, {})[target] = {"n": n, **means}
            lines.append(f"| {model} | {target} | {n} | " + " | ".join(f"{means[k]:+.1f}" for k in keys[1:]) + " |")
    lines += ["", f"p of the fall-off, model against reference, over the cases of the folds where both learned the "
              f"target: {WILCOXON_NOTE}", "",
              "| comparison | target | n | " + " | ".join(f"{key} mm" for key in keys[1:]) + " |",
              "|---|---|---:|" + "---:|" * (len(keys) - 1)]
    for model, reference in COMPARISONS:
        for target in TARGETS:
            ours = {key: drops(folds, model, target, key, reference) for key in keys[1:]}
            theirs = {key: drops(folds, reference, target, key, model) for key in keys[1:]}
            cases = sorted(ours[keys[1]])
            if len(cases) < 2:
                continue
            p = {key: paired_wilcoxon([ours[key][c] for c in cases], [theirs[key][c] for c in cases])
                 for key in keys[1:]}
            info["drop_wilcoxon_p"].setdefault(f"{model} vs {reference}", {})[target] = {"n": len(cases), **p}
            lines.append(f"| {model} vs {reference} | {target} | {len(cases)} | "
                         + " | ".join(f"{p[k]:.3g}" for k in keys[1:]) + " |")
    return lines, info


def write_docs(folds: Sequence[dict], docs: Path, command: str) -> None:
    """``study.md`` / ``study.json`` / ``dice_vs_misalignment.png`` from the archived folds (interim while some
    folds are missing)."""
    injected, registration = pooled(folds, "injected"), pooled(folds, "registration")
    levels = folds[0]["levels_mm"]
    means = {model: {level: mean_dice(per_case) for level, per_case in per_level.items()}
             for model, per_level in injected.items()}
    reg_means = {model: {method: mean_dice(per_case) for method, per_case in per_method.items()}
                 for model, per_method in registration.items()}
    pvalues: dict[str, dict[str, dict[str, float]]] = {}
    for model, reference in COMPARISONS:
        if model not in injected or reference not in injected:
            continue
        for level in injected[model]:
            cases = sorted(injected[model][level])
            pvalues.setdefault(f"{model} vs {reference}", {})[level] = {
                target: paired_wilcoxon([injected[model][level][c][target] for c in cases],
                                        [injected[reference][level][c][target] for c in cases])
                for target in TARGETS}
    n_cases = len({case for record in folds for case in record["cases"]})
    plot_curves(means, docs / "dice_vs_misalignment.png", f"mean Dice over {n_cases} held-out cases")
    info = {"folds": [record["fold"] for record in folds], "n_cases": n_cases, "levels_mm": levels,
            "injected_mean_dice": means, "registration_mean_dice": reg_means, "wilcoxon_p": pvalues,
            "training_seconds": {record["fold"]: record["training_seconds"] for record in folds},
            "dates": sorted({record["date"] for record in folds}), "devices": sorted({r["device"] for r in folds}),
            "preset": folds[0]["preset"], "command": command}
    keys = [f"{level:g}" for level in levels]
    falloff, info["falloff"] = falloff_lines(folds, keys)
    lines = [f"Folds {', '.join(str(r['fold']) for r in folds)} of 3 ({n_cases} held-out cases); mean Dice %.", "",
             "| model | " + " | ".join(f"{key} mm" for key in keys) + " |", "|---|" + "---:|" * len(keys)]
    for target in TARGETS:
        lines.append(f"| **{target}** |" + " |" * len(keys))
        for model, per_level in means.items():
            lines.append(f"| {model} | " + " | ".join(f"{per_level[key][target]:.2f}" for key in keys) + " |")
    if pvalues:
        lines += ["", f"p of each comparison at each level over the {n_cases} held-out cases: {WILCOXON_NOTE}", "",
                  "| comparison | target | " + " | ".join(f"{key} mm" for key in keys) + " |",
                  "|---|---|" + "---:|" * len(keys)]
        for name, per_level in pvalues.items():
            for target in TARGETS:
                lines.append(f"| {name} | {target} | " + " | ".join(f"{per_level[key][target]:.3g}" for key in keys)
                             + " |")
    lines += falloff
    if reg_means:
        methods = [m for m in REGISTRATIONS if any(m in per for per in reg_means.values())]
        pairs = [(m, methods[-1]) for m in methods[:-1]]  # every method against the last (demons)
        lines += ["", "Registration of the raw, unaligned phantoms (mean Dice %; p: paired Wilcoxon as above)", "",
                  "| model | target | " + " | ".join(methods) + " | " + " | ".join(f"p {a} vs {b}" for a, b in pairs)
                  + " |", "|---|---|" + "---:|" * (len(methods) + len(pairs))]
        info["registration_wilcoxon_p"] = {}
        for model, per_method in reg_means.items():
            for target in TARGETS:
                cases = sorted(registration[model][methods[-1]])
                p = [paired_wilcoxon([registration[model][a][c][target] for c in cases],
                                     [registration[model][b][c][target] for c in cases]) for a, b in pairs]
                info["registration_wilcoxon_p"].setdefault(model, {})[target] = dict(
                    zip((f"{a} vs {b}" for a, b in pairs), p))
                lines.append(f"| {model} | {target} | " + " | ".join(f"{per_method[m][target]:.2f}" for m in methods)
                             + " | " + " | ".join(f"{v:.3g}" for v in p) + " |")
    (docs / "study.json").write_text(json.dumps(info, indent=2) + "\n")
    (docs / "study.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines), flush=True)


def archived_folds(archive: Path) -> list[dict]:
    """The fold records in ``archive``, in fold order."""
    return [json.loads((archive / f"fold_{k}.json").read_text()) for k in table1.FOLDS
            if (archive / f"fold_{k}.json").is_file()]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("work_dirs/table1"))
    parser.add_argument("--docs", type=Path, default=Path("docs/misalignment"))
    parser.add_argument("--folds", nargs="+", type=int, default=list(table1.FOLDS), choices=table1.FOLDS)
    parser.add_argument("--git-commit", action="store_true", help="commit --docs after every archived fold")
    parser.add_argument("--rewrite-docs", action="store_true",
                        help="only rewrite study.md / study.json / the PNG from the archived folds")
    args = parser.parse_args(argv)
    workdir, docs = args.workdir.resolve(), args.docs.resolve()
    archive = docs / "folds"
    command = "python scripts/misalignment_study.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.rewrite_docs:
        folds = archived_folds(archive)
        if not folds:
            print(f"misalignment_study: error: {archive}: no archived fold", file=sys.stderr)
            return 1
        write_docs(folds, docs, json.loads((docs / "study.json").read_text())["command"]
                   if (docs / "study.json").is_file() else command)
        return 0
    env = nnunet_env(workdir)
    raw = table1.prepare_dataset(workdir, env)

    def run_and_archive() -> int:
        check_or_record(archive, "labels.sha256.json", {"labelsTr": labels_digest(raw / "labelsTr")})
        for fold in args.folds:
            target = archive / f"fold_{fold}.json"
            if target.is_file():
                print(f"misalignment_study: fold {fold}: archived in {target}", flush=True)
                continue
            table1.train_fold(workdir, MODELS[0], fold, env)  # writes the split on the first run
            splits = json.loads((Path(env["nnUNet_preprocessed"]) / raw.name / "splits_final.json").read_text())
            check_or_record(archive, "splits_final.json", splits)
            record = run_fold(workdir, raw, fold, splits[fold]["val"], MODELS, LEVELS_MM, REGISTRATIONS, env)
            target.write_text(json.dumps(record, indent=1) + "\n")
            folds = archived_folds(archive)
            write_docs(folds, docs, command)
            if args.git_commit:
                git_commit(docs, f"Misalignment study: fold {fold} archived ({len(folds)} of {len(table1.FOLDS)} "
                                 f"folds)")
        return 0

    return run_resumably("misalignment_study", run_and_archive)


if __name__ == "__main__":
    sys.exit(main())
