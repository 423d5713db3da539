#!/usr/bin/env python
"""Two-stage vs whole-scan HPN on whole (uncropped) phantoms (issue 21's measurement).

On the CPU Table 1's phantoms (``scripts/cpu_table1.py``: 24 cases, seed 8, full 48×96×96 grids) and its
PDAC-stratified 3-fold split, per fold:

1. **whole-scan HPN**: ``convert --register`` (no crop) → ``HPNTrainer`` at the table's preset (3d_cpu, patch 32³,
   80 × 25 iterations);
2. **stage 2**: ``convert --register --crop-to-label 30`` (``STAGE2_TRAINING_MARGIN_MM``) → ``HPNTrainer_stage2``
   (box jitter 20 ± 10 mm) at the same preset;
3. **locator**: ``nnunet-hpn locator-dataset`` of the whole-scan dataset (arterial phase, label abnormal pancreas) →
   the stock ``nnUNetv2_plan_and_preprocess`` and ``nnUNetTrainer_5epochs`` (5 × 250 iterations) on a coarse CPU
   configuration of the stock ``nnUNetPlans`` (``cpu-config --spacing-factor 2``, as ``3d_lowres``: 5×3×3 mm, the
   phantom's 24×48×48 grid in one 24×48×48 patch), preprocessed by ``nnUNetv2_preprocess``;
4. every fold's held-out cases predicted from the raw, unregistered phantom files by ``nnunet-hpn predict`` — once on
   the whole scan, once with ``--locator`` — and evaluated on the full grid (Dice of abnormal pancreas, PDAC, duct;
   seconds per case from the wall time and the QC files; training seconds per model).

Each finished fold is **archived** as ``--docs``/``folds/fold_<k>.json`` (per-case Dice, timings, training seconds;
with ``--git-commit``, committed), never run again, on this machine or another; after each fold ``study.md``
(Dice mean ± std over the archived folds' held-out cases, seconds, paired Wilcoxon p of two-stage against
whole-scan) is rewritten. Within a fold, trained models and predictions that exist are kept. ``--real-ct``: the
first fold whose models are on this machine is also timed on the registration benchmark's real-CT pairs (3 mm and
clinical-size; whole scan, two-stage, stage 2 on an oracle pancreas crop; seconds only: no model is trained on real
CT), kept in ``real_ct.json`` (right after the first fold, so that it lands early).

    nice -n 10 python scripts/two_stage_study.py --workdir work_dirs/table1 --docs docs/two_stage --git-commit --real-ct
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from hpn_experiments import table1
from hpn_experiments.ablation import ROWS
from hpn_experiments.archive import check_or_record, git_commit, labels_digest, run_resumably
from hpn_experiments.commands import nnunet_env, run_command
from nnunet_hpn.augment.box_margins import STAGE2_MARGIN_MM, STAGE2_TRAINING_MARGIN_MM
from nnunet_hpn.evaluate.metrics import TARGETS, evaluate_folders
from nnunet_hpn.evaluate.report import paired_wilcoxon

WHOLE_ID, STAGE2_ID, LOCATOR_ID = 531, 532, 533
WHOLE_NAME, STAGE2_NAME = "PancreasWholeTable1", "PancreasStage2Table1"
LOCATOR_TRAINER, LOCATOR_PLANS = "nnUNetTrainer_5epochs", "nnUNetPlans"
#: the locator's coarse configuration: its name, spacing factor over 3d_fullres and patch (z, y, x)
LOCATOR_CONFIG, LOCATOR_SPACING_FACTOR, LOCATOR_PATCH = "3d_cpu_coarse", 2.0, ("24", "48", "48")
#: model name -> (dataset id, run_ablation row)
HPN_MODELS: dict[str, tuple[int, str]] = {"whole_scan": (WHOLE_ID, "hpn"), "stage2": (STAGE2_ID, "hpn_stage2")}
#: the inference methods compared
METHODS: tuple[str, ...] = ("whole_scan", "two_stage")


def raw_dataset(workdir: Path, dataset_id: int) -> Path:
    found = sorted((workdir / "nnUNet_raw").glob(f"Dataset{dataset_id:03d}_*"))
    return found[0] if found else workdir / "nnUNet_raw" / f"Dataset{dataset_id:03d}_missing"


def prepare(workdir: Path, env: dict[str, str]) -> None:
    """The three raw datasets (skipped when present), the locator's plans and CPU configuration, and the table's
    split copied into every preprocessed dataset, so that each fold holds out the same cases as the table."""
    phantoms = workdir / "phantoms"
    table1.prepare_dataset(workdir, env)  # the table's phantoms and split
    for dataset_id, name, crop in ((WHOLE_ID, WHOLE_NAME, None), (STAGE2_ID, STAGE2_NAME, STAGE2_TRAINING_MARGIN_MM)):
        if not (raw_dataset(workdir, dataset_id) / "dataset.json").is_file():
            command = ["nnunet-hpn", "convert", str(phantoms), "-d", str(dataset_id), "--name", name, "--raw-root",
                       env["nnUNet_raw"], "--register"]
            run_command(command + (["--crop-to-label", f"{crop:g}"] if crop else []), env)
    if not (raw_dataset(workdir, LOCATOR_ID) / "dataset.json").is_file():
        run_command(["nnunet-hpn", "locator-dataset", "-d", str(WHOLE_ID), "--target-id", str(LOCATOR_ID)], env)
    locator_raw = raw_dataset(workdir, LOCATOR_ID)
    preprocessed = workdir / "nnUNet_preprocessed"
    plans = preprocessed / locator_raw.name / f"{LOCATOR_PLANS}.json"
    if not plans.is_file():  # planned only: the locator's data is its coarse configuration's
        run_command(["nnUNetv2_plan_and_preprocess", "-d", str(LOCATOR_ID), "-c", "3d_fullres", "-npfp", "2",
                     "--no_pp"], env)
    configurations = json.loads(plans.read_text())["configurations"]
    if LOCATOR_CONFIG not in configurations:
        run_command(["nnunet-hpn", "cpu-config", "-d", str(LOCATOR_ID), "-p", LOCATOR_PLANS, "-c", LOCATOR_CONFIG,
                     "--patch-size", *LOCATOR_PATCH, "--spacing-factor", f"{LOCATOR_SPACING_FACTOR:g}"], env)
        configurations = json.loads(plans.read_text())["configurations"]
    data = plans.parent / configurations[LOCATOR_CONFIG]["data_identifier"]
    n_cases = len(list((locator_raw / "labelsTr").glob("*.nii.gz")))
    if len(list(data.glob("*_seg.b2nd"))) < n_cases:
        run_command(["nnUNetv2_preprocess", "-d", str(LOCATOR_ID), "-plans_name", LOCATOR_PLANS, "-c",
                     LOCATOR_CONFIG, "-np", "2"], env)
    split = (preprocessed / f"Dataset{table1.DATASET_ID}_{table1.DATASET_NAME}" / "splits_final.json")
    if not split.is_file():
        raise SystemExit(f"{split}: missing; run scripts/cpu_table1.py first (the study holds out the table's cases)")
    for dataset_id in (WHOLE_ID, STAGE2_ID, LOCATOR_ID):
        target = preprocessed / raw_dataset(workdir, dataset_id).name / "splits_final.json"
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(split.read_text())


def train_locator(workdir: Path, fold: int, env: dict[str, str], trainer: str = LOCATOR_TRAINER) -> Optional[float]:
    """The stock locator training of ``fold`` (resumed from checkpoint_latest.pth; skipped when finished);
    returns its wall time here (None when it was trained before)."""
    fold_dir = locator_model(workdir, trainer) / f"fold_{fold}"
    if (fold_dir / "checkpoint_final.pth").is_file():
        return None
    command = ["nnUNetv2_train", str(LOCATOR_ID), LOCATOR_CONFIG, str(fold), "-tr", trainer,
               "-p", LOCATOR_PLANS, "-device", "cpu"]
    start = time.perf_counter()
    run_command(command + (["--c"] if (fold_dir / "checkpoint_latest.pth").is_file() else []), env)
    return time.perf_counter() - start


def locator_model(workdir: Path, trainer: str = LOCATOR_TRAINER) -> Path:
    return (workdir / "nnUNet_results" / raw_dataset(workdir, LOCATOR_ID).name
            / f"{trainer}__{LOCATOR_PLANS}__{LOCATOR_CONFIG}")


def train_hpn(workdir: Path, model: str, fold: int, env: dict[str, str], budget: Sequence[str] = ()
              ) -> Optional[float]:
    """``run_ablation.py`` with the table's preset (``budget``: run_ablation arguments that override it) for one
    HPN model and fold; its wall time (None: trained before)."""
    dataset_id, row = HPN_MODELS[model]
    out = workdir / "two_stage" / "runs" / f"{model}_fold_{fold}"
    run_command([sys.executable, str(table1.RUN_ABLATION), "-d", str(dataset_id), *table1.PRESET, *budget,
                 "--folds", str(fold), "--rows", row, "-o", str(out)], env)
    entry = json.loads((out / "run_info.json").read_text())["trainings"].get(f"unet/{row}/fold_{fold}")
    return entry["seconds"] if entry else None


def hpn_model(workdir: Path, model: str) -> Path:
    dataset_id, row = HPN_MODELS[model]
    trainer = ROWS[row].trainer
    return workdir / "nnUNet_results" / raw_dataset(workdir, dataset_id).name / f"{trainer}__{table1.PLANS}__3d_cpu"


def held_out_inputs(workdir: Path, cases: Sequence[str], out: Path) -> Path:
    """``predict``'s folder input: ``out/<case>/{arterial,venous}.nii.gz`` linked to the raw, unregistered
    phantom files."""
    for case in cases:
        (out / case).mkdir(parents=True, exist_ok=True)
        for phase in ("arterial", "venous"):
            target = out / case / f"{phase}.nii.gz"
            if not target.exists():
                os.link(workdir / "phantoms" / case / f"{phase}.nii.gz", target)
    return out


def predict(workdir: Path, method: str, fold: int, cases: Sequence[str], env: dict[str, str],
            locator_trainer: str = LOCATOR_TRAINER) -> dict:
    """One fold's held-out cases predicted by ``method`` (whole_scan | two_stage); the wall time and the per-case
    seconds of the QC files (kept in ``timing.json`` beside the predictions)."""
    out = workdir / "two_stage" / "predictions" / method / f"fold_{fold}"
    timing_file = out.parent / f"timing_fold_{fold}.json"
    if timing_file.is_file() and all((out / f"{case}.nii.gz").is_file() for case in cases):
        return json.loads(timing_file.read_text())
    inputs = held_out_inputs(workdir, cases, workdir / "two_stage" / "inputs" / f"fold_{fold}")
    model = hpn_model(workdir, "stage2" if method == "two_stage" else "whole_scan")
    command = ["nnunet-hpn", "predict", "-i", str(inputs), "-o", str(out), "-m", str(model),
               "-f", str(fold), "--disable-tta"]
    if method == "two_stage":
        command += ["--locator", str(locator_model(workdir, locator_trainer)), "--locator-folds", str(fold)]
    start = time.perf_counter()
    run_command(command, env)
    timing = {"wall_seconds": round(time.perf_counter() - start, 1), "cases": len(cases), "locator": {}}
    for case in cases:
        record = json.loads((out / "registration_qc" / f"{case}.json").read_text()).get("locator")
        if record:
            timing["locator"][case] = record
    timing_file.write_text(json.dumps(timing, indent=2) + "\n")
    return timing


def run_fold(workdir: Path, fold: int, cases: Sequence[str], env: dict[str, str], budget: Sequence[str],
             locator_trainer: str) -> dict:
    """Train (or reuse) the fold's locator, whole-scan and stage-2 HPN, predict its held-out ``cases`` both ways;
    the fold's archive record (per-case Dice %, timings, training seconds)."""
    state_file = workdir / "two_stage" / "training_seconds.json"
    state_file.parent.mkdir(parents=True, exist_ok=True)
    seconds = json.loads(state_file.read_text()) if state_file.is_file() else {}
    for name, train in (("locator", lambda: train_locator(workdir, fold, env, locator_trainer)),
                        ("whole_scan", lambda: train_hpn(workdir, "whole_scan", fold, env, budget)),
                        ("stage2", lambda: train_hpn(workdir, "stage2", fold, env, budget))):
        spent = train()
        if spent is not None:  # a training resumed after a kill: the time of its last run only
            seconds[f"{name}/fold_{fold}"] = round(spent, 1)
            state_file.write_text(json.dumps(seconds, indent=2) + "\n")
    labels = raw_dataset(workdir, WHOLE_ID) / "labelsTr"
    dice, timings = {}, {}
    for method in METHODS:
        timings[method] = predict(workdir, method, fold, cases, env, locator_trainer)
        out = workdir / "two_stage" / "predictions" / method / f"fold_{fold}"
        result = evaluate_folders(out, labels, cases=cases, surface=False, progress=False)
        dice[method] = table1.dice_per_case(result, cases)
    return {"fold": fold, "cases": list(cases), "dice": dice, "timing": timings,
            "training_seconds": {name: seconds.get(f"{name}/fold_{fold}") for name in ("locator", "whole_scan",
                                                                                       "stage2")},
            "budget": list(budget) or "the table's preset", "preset": list(table1.PRESET),
            "locator": {"trainer": locator_trainer, "plans": LOCATOR_PLANS, "configuration": LOCATOR_CONFIG,
                        "spacing_factor": LOCATOR_SPACING_FACTOR, "patch": [int(p) for p in LOCATOR_PATCH]},
            "date": datetime.date.today().isoformat(),
            "device": f"CPU ({os.cpu_count()} logical), {platform.processor() or platform.machine()}"}


def summarize(folds: Sequence[dict]) -> list[str]:
    """The markdown of ``study.md`` from the archived fold records: Dice mean ± std over the pooled held-out cases,
    seconds per case, training seconds, paired Wilcoxon p of two-stage against whole-scan."""
    cases = [case for record in folds for case in record["cases"]]
    dice = {method: {case: record["dice"][method][case] for record in folds for case in record["cases"]}
            for method in METHODS}
    training = {"whole_scan": ("whole_scan",), "two_stage": ("locator", "stage2")}
    lines = [f"Folds {', '.join(str(r['fold']) for r in folds)} of 3 ({len(cases)} held-out cases).", "",
             "| method | " + " | ".join(f"{target} Dice %" for target in TARGETS)
             + " | inference s/case (wall, incl. registration) | stage 1 / stage 2 s/case | training s (folds run) |",
             "|---|" + "---:|" * (len(TARGETS) + 3)]
    for method in METHODS:
        wall = (sum(r["timing"][method]["wall_seconds"] for r in folds)
                / max(1, sum(r["timing"][method]["cases"] for r in folds)))
        records = [q for r in folds for q in r["timing"][method]["locator"].values()]
        stages = (f"{sum(q['seconds'] for q in records) / len(records):.1f} / "
                  f"{sum(q['stage2_seconds'] for q in records) / len(records):.1f}") if records else "–"
        spent = [r["training_seconds"][name] for r in folds for name in training[method]]
        values = {t: [dice[method][c][t] for c in cases] for t in TARGETS}
        cells = [f"{np.mean(values[t]):.2f} ± {np.std(values[t]):.2f}" for t in TARGETS]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {wall:.1f} | {stages} | "
                     + (f"{sum(spent):.0f}" if None not in spent else "–") + " |")
    pvalues = {t: paired_wilcoxon([dice["two_stage"][c][t] for c in cases], [dice["whole_scan"][c][t] for c in cases])
               for t in TARGETS}
    lines += ["", "two_stage vs whole_scan, paired two-sided Wilcoxon p: "
              + ", ".join(f"{t} {p:.3g}" for t, p in pvalues.items())]
    return lines


def real_ct_pairs(out: Path) -> dict[str, Path]:
    """The registration benchmark's real-CT pairs (``hpn_experiments.misalignment``: the 3 mm TotalSegmentator
    example CT and its clinical-size resampling, the venous-like copy misaligned and noisy), as
    ``out/<case>/{arterial,venous,label}.nii.gz`` (label: the pancreas of the TotalSegmentator output), plus
    ``<case>_oracle_crop``: both phases cut to their own pancreas box + :data:`STAGE2_MARGIN_MM` (stage 2 on a box a
    perfect locator would give). Written once; an empty dict when the real CT is absent."""
    import argparse as _argparse

    import SimpleITK as sitk
    from hpn_experiments.misalignment import REAL_DIR, clinical_pairs, real_pairs
    from nnunet_hpn.io.crop_boxes import crop_image, label_box

    if not (REAL_DIR / "example_ct.nii.gz").is_file():
        print(f"two_stage_study: {REAL_DIR}: absent; no real-CT timing", flush=True)
        return {}
    settings = _argparse.Namespace(real_pairs=1, clinical_pairs=1, deformation_mm=4.0, shift_mm=3.0, rotation_deg=2.0,
                                   noise_hu=10.0)
    cases: dict[str, Path] = {}
    pairs = (*real_pairs(settings), *clinical_pairs(settings))
    for name, fixed, fixed_label, moving, moving_label in pairs:
        whole = {"arterial": (fixed, fixed_label), "venous": (moving, moving_label)}
        oracle = {}
        for phase, (image, label) in whole.items():
            box = label_box(label, STAGE2_MARGIN_MM, f"{name} {phase} pancreas")
            oracle[phase] = (crop_image(image, box, phase), crop_image(label, box, phase))
        for case, images in ((name, whole), (f"{name}_oracle_crop", oracle)):
            folder = out / case / case  # predict's folder input: one case folder inside
            cases[case] = folder.parent
            if (folder / "venous.nii.gz").is_file():
                continue
            folder.mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(images["arterial"][1], str(folder / "label.nii.gz"), useCompression=True)
            for phase, (image, _) in images.items():
                sitk.WriteImage(image, str(folder / f"{phase}.nii.gz"), useCompression=True)
    return cases


def real_ct_timing(workdir: Path, fold: int, env: dict[str, str], locator_trainer: str) -> dict:
    """Seconds per case of fold ``fold``'s models on the real-CT pairs (no real-CT training data: timing only; the
    locator trained on phantoms may find nothing there, its QC record says what it did): whole-scan HPN, two-stage
    (locator + stage 2 on its box, or its whole-scan fallback) and stage 2 alone on the oracle crop."""
    root = workdir / "two_stage" / "real_ct"
    cases = real_ct_pairs(root / "inputs")
    runs = {"whole_scan": ("whole_scan", False), "two_stage": ("stage2", True),
            "stage2_on_oracle_crop": ("stage2", False)}
    timing: dict[str, dict] = {}
    for case, inputs in cases.items():
        oracle = case.endswith("_oracle_crop")
        for run_name, (model, with_locator) in runs.items():
            if oracle != (run_name == "stage2_on_oracle_crop"):
                continue
            out = root / "predictions" / run_name / case
            record_file = out / "timing.json"
            if not record_file.is_file():
                command = ["nnunet-hpn", "predict", "-i", str(inputs), "-o", str(out / "labels"),
                           "-m", str(hpn_model(workdir, model)), "-f", str(fold), "--disable-tta"]
                if with_locator:
                    command += ["--locator", str(locator_model(workdir, locator_trainer)), "--locator-folds",
                                str(fold)]
                start = time.perf_counter()
                run_command(command, env)
                qc = json.loads((out / "labels" / "registration_qc" / f"{case}.json").read_text())
                record = {"wall_seconds": round(time.perf_counter() - start, 1), "locator": qc.get("locator"),
                          "grid": sitk_size(inputs / case / "arterial.nii.gz")}
                record_file.write_text(json.dumps(record, indent=2) + "\n")
            timing.setdefault(run_name, {})[case.removesuffix("_oracle_crop")] = json.loads(record_file.read_text())
    return timing


def sitk_size(path: Path) -> list[int]:
    """The (x, y, z) voxel size of an image file, from its header."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return list(reader.GetSize())


def real_ct_lines(timing: dict) -> list[str]:
    """The real-CT timing table of ``study.md``."""
    lines = ["", "Real-CT pairs (the models of one fold, trained on phantoms: seconds only, no Dice; wall time of one "
             "`nnunet-hpn predict` per case, model loading and registration included)", "",
             "| case | grid (x,y,z) | whole scan s | two-stage s (what the locator did) | stage 2 on the oracle crop s "
             "(crop grid) |", "|---|---|---:|---:|---:|"]
    for case, whole in timing.get("whole_scan", {}).items():
        two = timing.get("two_stage", {}).get(case, {})
        locator = two.get("locator") or {}
        seconds = f"locator {locator.get('seconds', '–')} s, stage 2 {locator.get('stage2_seconds', '–')} s"
        did = f"fell back to the whole scan; {seconds}" if locator.get("fallback") else f"box found; {seconds}"
        oracle = timing.get("stage2_on_oracle_crop", {}).get(case, {})
        lines.append(f"| {case} | {'x'.join(map(str, whole['grid']))} | {whole['wall_seconds']:.1f} | "
                     f"{two.get('wall_seconds', float('nan')):.1f} ({did}) | "
                     f"{oracle.get('wall_seconds', float('nan')):.1f} ({'x'.join(map(str, oracle.get('grid', [])))}) |")
    return lines


def models_present(workdir: Path, fold: int, locator_trainer: str) -> bool:
    """Whether fold ``fold``'s locator, whole-scan and stage-2 models are trained on this machine."""
    return all((model / f"fold_{fold}" / "checkpoint_final.pth").is_file()
               for model in (hpn_model(workdir, "whole_scan"), hpn_model(workdir, "stage2"),
                             locator_model(workdir, locator_trainer)))


def time_real_ct(workdir: Path, docs: Path, fold: int, env: dict[str, str], locator_trainer: str, command: str,
                 commit: bool) -> None:
    """:func:`real_ct_timing` with fold ``fold``'s models, kept in ``docs/real_ct.json`` (once)."""
    timing = real_ct_timing(workdir, fold, env, locator_trainer)
    if not timing:
        return
    (docs / "real_ct.json").write_text(json.dumps(
        {"fold": fold, "timing": timing, "date": datetime.date.today().isoformat(),
         "device": f"CPU ({os.cpu_count()} logical), {platform.processor() or platform.machine()}"}, indent=2) + "\n")
    write_study(docs, command)
    if commit:
        git_commit(docs, "Two-stage study: real-CT timing")


def write_study(docs: Path, command: str) -> int:
    """``study.md`` / ``study.json`` from the archived folds (and the real-CT timing, once measured); the number of
    archived folds."""
    archive = docs / "folds"
    folds = [json.loads((archive / f"fold_{k}.json").read_text()) for k in table1.FOLDS
             if (archive / f"fold_{k}.json").is_file()]
    if not folds:
        return 0
    lines = summarize(folds)
    if (docs / "real_ct.json").is_file():
        lines += real_ct_lines(json.loads((docs / "real_ct.json").read_text())["timing"])
    (docs / "study.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (docs / "study.json").write_text(json.dumps({"folds": [r["fold"] for r in folds], "command": command,
                                                 "records": "folds/fold_<k>.json, real_ct.json"}, indent=2) + "\n")
    print("\n".join(lines), flush=True)
    return len(folds)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("work_dirs/table1"))
    parser.add_argument("--docs", type=Path, default=Path("docs/two_stage"))
    parser.add_argument("--folds", nargs="+", type=int, default=list(table1.FOLDS), choices=table1.FOLDS)
    parser.add_argument("--budget", nargs=2, type=int, metavar=("EPOCHS", "ITERATIONS"),
                        help="quick check: HPN models at EPOCHS × ITERATIONS instead of the table's 80 × 25, the "
                             "locator with nnUNetTrainer_1epoch (archived in --docs like a real run: use another)")
    parser.add_argument("--git-commit", action="store_true", help="commit --docs after every archived fold")
    parser.add_argument("--real-ct", action="store_true",
                        help="then time the first trained fold's models on the real-CT pairs (docs: real_ct.json)")
    args = parser.parse_args(argv)
    budget = ("--epochs", str(args.budget[0]), "--iterations", str(args.budget[1])) if args.budget else ()
    locator_trainer = "nnUNetTrainer_1epoch" if args.budget else LOCATOR_TRAINER
    workdir, docs = args.workdir.resolve(), args.docs.resolve()
    archive = docs / "folds"
    command = "python scripts/two_stage_study.py " + " ".join(sys.argv[1:] if argv is None else argv)
    env = nnunet_env(workdir)
    prepare(workdir, env)
    splits = json.loads((workdir / "nnUNet_preprocessed" / raw_dataset(workdir, WHOLE_ID).name
                         / "splits_final.json").read_text())

    def run_and_archive() -> int:
        check_or_record(archive, "labels.sha256.json",
                        {"labelsTr": labels_digest(raw_dataset(workdir, WHOLE_ID) / "labelsTr")})
        check_or_record(archive, "splits_final.json", splits)
        for fold in args.folds:
            target = archive / f"fold_{fold}.json"
            if target.is_file():
                print(f"two_stage_study: fold {fold}: archived in {target}", flush=True)
            else:
                record = run_fold(workdir, fold, splits[fold]["val"], env, budget, locator_trainer)
                target.write_text(json.dumps(record, indent=1) + "\n")
                n_folds = write_study(docs, command)
                if args.git_commit:
                    git_commit(docs, f"Two-stage study: fold {fold} archived ({n_folds} of {len(table1.FOLDS)} "
                                     f"folds)")
            if args.real_ct and not (docs / "real_ct.json").is_file() and models_present(workdir, fold,
                                                                                          locator_trainer):
                time_real_ct(workdir, docs, fold, env, locator_trainer, command, args.git_commit)
        if args.real_ct and not (docs / "real_ct.json").is_file():
            print("two_stage_study: --real-ct: no fold of --folds has its three models on this machine",
                  file=sys.stderr)
            return 1
        return 0

    return run_resumably("two_stage_study", run_and_archive)


if __name__ == "__main__":
    sys.exit(main())
