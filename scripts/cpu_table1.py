#!/usr/bin/env python
"""The CPU Table-1 protocol: the paper's whole U-Net ablation on cropped phantoms, sized for 2 CPU cores.

One command, resumable across sessions and machines (re-run it to continue where it stopped):

    nice -n 10 python scripts/cpu_table1.py --workdir work_dirs/table1 --docs docs/table1_cpu --git-commit

1. phantoms: ``nnunet-hpn phantom`` (:data:`N_CASES` cases, seed :data:`PHANTOM_SEED`, full 48×96×96 grid);
2. ``nnunet-hpn convert --register --crop-to-label`` :data:`CROP_MARGIN_MM` (venous registered onto arterial on the
   full grid, then every case cut to its label's box + margin: an oracle ROI, so that the budget goes to the
   pancreas region);
3. ``scripts/run_ablation.py`` with one preset (:data:`PRESET`), one fold at a time: ``HPNPlanner``, CPU
   configuration ``3d_cpu`` (patch 32³, features 8-64, batch 2), PDAC-stratified 3-fold split (seed 12345), the same
   budget and training seed for every row, no test-time mirroring;
4. every finished fold is **archived** into ``--docs``/``folds/<row>/fold_<k>/`` (its validation label maps, the
   probabilities of the single-phase rows that late fusion averages, nnU-Net's training log, ``fold.json`` with wall
   time, date and budget) and, with ``--git-commit``, committed: a fold in the archive is never trained again, on
   this machine or another, so a table that takes longer than one session still lands whole;
5. after each fold: every row whose three folds are archived is assembled, the derived rows are built (late
   fusion, HPN union), and ``table1.md``, ``rows.json`` and ``nnunet-hpn report`` (mean ± std, HD95, NSD, paired
   Wilcoxon p against HPN-union and against HPN, PDAC missed by both single-phase models and rescued, box plots,
   overlays; ``report_interim/`` before HPN exists) and ``by_kind.md`` are rewritten.

The archive is tied to the dataset: the hash of the cropped labels and the split are stored beside it, and a run
on other data stops with an error instead of mixing folds. The generator's parameters (``nnunet_hpn.phantom``) and
this preset were frozen before the first training of the table.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

import run_ablation  # beside this script (its folder is on sys.path)
from nnunet_hpn.demo import console_command

N_CASES = 24
#: seed of the phantoms: 8 of its 24 cases are subtle in both phases (33 %), inside the documented 25-35 %
PHANTOM_SEED = 8
CROP_MARGIN_MM = 20.0
DATASET_ID = 510
DATASET_NAME = "PancreasROITable1"
CONFIGURATION = "3d_cpu"
PLANS = run_ablation.BACKBONES["unet"].plans
FOLDS: tuple[int, ...] = (0, 1, 2)
#: run_ablation.py arguments shared by every training: 80 epochs × 25 iterations = 2,000 iterations
PRESET: tuple[str, ...] = ("--backbones", "unet", "-c", CONFIGURATION, "--cpu-config", "32", "32", "32",
                           "--epochs", "80", "--iterations", "25", "--val-iterations", "2", "--save-every", "5",
                           "--training-seed", "1234", "--no-tta", "--device", "cpu", "--seed", "12345", "-np", "2")
#: rows of the table, in the paper's order (then the warm-up row)
ORDER: tuple[str, ...] = ("arterial", "venous", "fusion", "early_fusion", "hypernet", "hypernet_aug", "hpn",
                          "hpn_virtual", "hpn_union", "hpn_warmup")
#: order of training: the baselines, then the rows of the headline comparison (HPN, virtual pairs, their union),
#: then the other ablation rows
TRAINING_ORDER: tuple[str, ...] = ("arterial", "venous", "early_fusion", "hpn", "hpn_virtual", "hypernet",
                                   "hypernet_aug", "hpn_warmup")
#: rows whose probabilities (.npz/.pkl) are archived too: late fusion averages them
PROBABILITY_ROWS: frozenset[str] = frozenset(run_ablation.ROWS["fusion"].needs)
#: report references: every row against HPN-union and against HPN (when they exist)
REFERENCES: tuple[str, ...] = ("hpn_union", "hpn")

SCRIPTS = Path(__file__).resolve().parent
#: trainer attributes of nnU-Net's debug.json recorded with each archived fold
BUDGET_KEYS: tuple[str, ...] = ("num_epochs", "num_iterations_per_epoch", "num_val_iterations_per_epoch",
                                "save_every", "initial_lr", "batch_size", "patch_size")


def nnunet_env(workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({name: str(workdir / name) for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")})
    env.setdefault("nnUNet_compile", "f")
    return env


def run(command: Sequence[str], env: dict[str, str]) -> None:
    print("$ " + " ".join(command), flush=True)
    subprocess.run(list(command), env=env, check=True)


def prepare_dataset(workdir: Path, env: dict[str, str]) -> Path:
    """Phantoms and the cropped, registered raw dataset (skipped when present)."""
    raw = workdir / "nnUNet_raw" / f"Dataset{DATASET_ID:03d}_{DATASET_NAME}"
    if (raw / "dataset.json").is_file():
        print(f"dataset {raw} exists", flush=True)
        return raw
    phantoms = workdir / "phantoms"
    if not (phantoms / "phantoms.json").is_file():
        run([console_command("nnunet-hpn"), "phantom", str(phantoms), "--cases", str(N_CASES),
             "--seed", str(PHANTOM_SEED)], env)
    run([console_command("nnunet-hpn"), "convert", str(phantoms), "--dataset-id", str(DATASET_ID),
         "--name", DATASET_NAME, "--raw-root", env["nnUNet_raw"], "--register", "--crop-to-label",
         f"{CROP_MARGIN_MM:g}"], env)
    return raw


class ArchiveMismatch(RuntimeError):
    """The archive in --docs belongs to other data or another split."""


def labels_digest(labels: Path) -> str:
    """sha256 over the names and bytes of the label maps, in name order."""
    digest = hashlib.sha256()
    for path in sorted(labels.glob("*.nii.gz")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def check_or_record(archive: Path, name: str, value: object) -> None:
    """Record ``value`` as ``archive/name`` (JSON) the first time; afterwards it must be equal."""
    path = archive / name
    if path.is_file():
        recorded = json.loads(path.read_text())
        if recorded != value:
            raise ArchiveMismatch(f"{path}: the archive was made with other {name.split('.')[0]} than "
                                  f"{archive.parent} now has; use another --docs folder")
        return
    archive.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n")


def fold_archive(archive: Path, row: str, fold: int) -> Path:
    return archive / row / f"fold_{fold}"


def is_archived(archive: Path, row: str, fold: int) -> bool:
    return (fold_archive(archive, row, fold) / "fold.json").is_file()


def model_dir(results: Path, row: str) -> Path:
    return results / f"{run_ablation.ROWS[row].trainer}__{PLANS}__{CONFIGURATION}"


def archive_fold(archive: Path, results: Path, row: str, fold: int, seconds: Optional[float]) -> None:
    """Copy a finished fold's validation predictions, training log and model-folder JSONs into the archive;
    ``fold.json`` is written last, so that a half-copied fold is not taken as archived."""
    model = model_dir(results, row)
    source = model / f"fold_{fold}"
    suffixes = run_ablation.PREDICTION_SUFFIXES if row in PROBABILITY_ROWS else (".nii.gz",)
    files = sorted(path for path in (source / "validation").glob("*") if path.name.endswith(suffixes))
    target = fold_archive(archive, row, fold)
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for path in files:
        shutil.copy2(path, target / path.name)
    for log in sorted(source.glob("training_log_*.txt")):
        shutil.copy2(log, target / log.name)
    for name in ("plans.json", "dataset.json"):
        shutil.copy2(model / name, archive / row / name)
    debug = json.loads((source / "debug.json").read_text()) if (source / "debug.json").is_file() else {}
    budget = {key: debug[key] for key in BUDGET_KEYS if key in debug}
    info = {"row": row, "fold": fold, "trainer": run_ablation.ROWS[row].trainer, "plans": PLANS,
            "configuration": CONFIGURATION, "preset": list(PRESET),
            "cases": sorted(path.name[:-len(".nii.gz")] for path in files if path.name.endswith(".nii.gz")),
            "training_seconds": seconds, "archived": datetime.datetime.now().isoformat(timespec="seconds"),
            "device": f"CPU ({os.cpu_count()} logical), {platform.processor() or platform.machine()}",
            "budget": budget}
    (target / "fold.json").write_text(json.dumps(info, indent=2) + "\n")


def train_fold(workdir: Path, row: str, fold: int, env: dict[str, str]) -> Optional[float]:
    """``run_ablation.py`` for one row and fold (skips training when nnU-Net's fold folder is finished);
    returns the training wall time recorded by run_ablation (None when this fold was trained before)."""
    out = workdir / "ablation_runs" / f"{row}_fold_{fold}"
    run([sys.executable, str(SCRIPTS / "run_ablation.py"), "-d", str(DATASET_ID), *PRESET, "--folds", str(fold),
         "--rows", row, "-o", str(out)], env)
    trainings = json.loads((out / "run_info.json").read_text())["trainings"]
    entry = trainings.get(f"unet/{row}/fold_{fold}")
    return entry["seconds"] if entry else None


def assemble_rows(archive: Path, rows_dir: Path, env: dict[str, str]) -> list[str]:
    """Every row with all folds archived (and every derived row whose inputs are there) as one prediction
    folder ``rows_dir/<row>``; returns the rows, in :data:`ORDER`."""
    complete: list[str] = []
    for row in ORDER:
        spec = run_ablation.ROWS[row]
        folder = rows_dir / row
        if spec.trainer is not None:
            if not all(is_archived(archive, row, fold) for fold in FOLDS):
                continue
            run_ablation.fresh_folder(folder)
            for name in ("plans.json", "dataset.json"):
                shutil.copy2(archive / row / name, folder / name)
            for fold in FOLDS:
                for path in fold_archive(archive, row, fold).glob("*"):
                    if path.name.endswith(run_ablation.PREDICTION_SUFFIXES):
                        if (folder / path.name).exists():
                            raise ArchiveMismatch(f"{path}: case predicted by more than one fold")
                        shutil.copy2(path, folder / path.name)
        elif all(need in complete for need in spec.needs):
            dirs = {need: rows_dir / need for need in spec.needs}
            if row == "fusion":
                run_ablation.make_fusion(dirs, folder, env, run_ablation.Progress(), 2)
            else:
                run_ablation.make_union(dirs, folder, ".nii.gz")
        else:
            continue
        complete.append(row)
    return complete


def write_table(archive: Path, rows_dir: Path, rows: list[str], labels: Path, docs: Path) -> None:
    """``table1.md`` / ``table1.csv`` of the assembled rows and ``rows.json`` (every archived fold's record)."""
    results = {("unet", row): run_ablation.evaluate_row(rows_dir / row, labels, ".nii.gz") for row in rows}
    folds = {row: {f"fold_{fold}": json.loads((fold_archive(archive, row, fold) / "fold.json").read_text())
                   for fold in FOLDS if is_archived(archive, row, fold)}
             for row in ORDER if run_ablation.ROWS[row].trainer}
    folds = {row: value for row, value in folds.items() if value}
    recorded = [entry["training_seconds"] for value in folds.values() for entry in value.values()
                if entry["training_seconds"] is not None]
    dates = sorted(entry["archived"] for value in folds.values() for entry in value.values())
    header = (f"Budget per training: 80 epochs × 25 iterations (2 validation iterations/epoch), checkpoint every 5 "
              f"epochs, training seed 1234, no test-time mirroring; folds {' '.join(map(str, FOLDS))} of "
              f"splits_final.json (PDAC-stratified, seed 12345); configuration {CONFIGURATION} (patch 32³); "
              f"device: 2-core CPU (see rows.json); folds archived {dates[0][:10]} – {dates[-1][:10]}; training "
              f"time recorded {run_ablation.format_duration(sum(recorded))} over {len(recorded)} trainings "
              f"(scripts/cpu_table1.py)")
    records = run_ablation.table_records(results, ["unet"], rows)
    (docs / "table1.md").write_text(run_ablation.format_markdown(records, header), encoding="utf-8")
    (docs / "table1.csv").write_text(run_ablation.format_csv(records, header), encoding="utf-8")
    (docs / "rows.json").write_text(json.dumps(folds, indent=2) + "\n")


def report(raw: Path, rows_dir: Path, rows: list[str], docs: Path, env: dict[str, str]) -> None:
    """``nnunet-hpn report`` of the assembled rows against each available reference, into ``docs``; before HPN
    exists, one interim report against the last row (``report_interim/``, removed once HPN is there)."""
    if len(rows) < 2:  # a report compares methods
        return
    runs = [f"{row}={rows_dir / row}" for row in rows]
    references = [reference for reference in REFERENCES if reference in rows]
    interim = docs / "report_interim"
    targets = [(reference, docs / f"report_vs_{reference}") for reference in references] or [(rows[-1], interim)]
    for reference, out in targets:
        single = (["--single-phase", "arterial", "venous"]
                  if {"arterial", "venous"} <= set(rows) and reference not in ("arterial", "venous") else [])
        try:
            run([console_command("nnunet-hpn"), "report", *runs, "--gt", str(raw / "labelsTr"), "--images",
                 str(raw / "imagesTr"), "--reference", reference, "--hpn", reference, *single, "-o", str(out)], env)
        except subprocess.CalledProcessError as error:  # the table goes on; the report is redone after the next fold
            print(f"cpu_table1: report against {reference} failed (exit {error.returncode})", file=sys.stderr)
    if references and interim.is_dir():
        shutil.rmtree(interim)


#: kind of mass of a phantom case (phantoms.json), in the order of the breakdown table
KINDS: tuple[str, ...] = ("subtle in both phases", "iso-attenuating in one phase", "conspicuous")


def case_kinds(phantoms_json: Path) -> dict[str, str]:
    kinds = {}
    for case in json.loads(phantoms_json.read_text())["cases"]:
        kinds[case["case_id"]] = (KINDS[0] if case.get("mass_subtle_in_both") else
                                  KINDS[1] if case["mass_iso_attenuating"] else KINDS[2])
    return kinds


def write_by_kind(workdir: Path, rows: list[str], docs: Path) -> None:
    """``by_kind.md``: PDAC Dice (mean ± std, cases with Dice 0) per row and kind of mass, from a report's
    per_case.csv (every report holds every assembled row)."""
    reports = sorted(docs.glob("report_*/per_case.csv"))
    if not reports:
        return
    kinds = case_kinds(workdir / "phantoms" / "phantoms.json")
    dice: dict[tuple[str, str], list[float]] = {}
    with reports[0].open() as stream:
        for record in csv.DictReader(stream):
            if record["target"] == "PDAC" and record["method"] in rows:
                dice.setdefault((record["method"], kinds[record["case"]]), []).append(100 * float(record["Dice"]))
    counts = {kind: sum(1 for value in kinds.values() if value == kind) for kind in KINDS}
    lines = ["# PDAC Dice (%) by kind of mass", "",
             "Mean ± population std over the cross-validation cases of each kind (missed: Dice 0); kinds from "
             "`phantoms.json` (nnunet_hpn/phantom.py).", "",
             "| Row | " + " | ".join(f"{kind} (n={counts[kind]})" for kind in KINDS) + " |",
             "|---|" + "---:|" * len(KINDS)]
    for row in rows:
        cells = []
        for kind in KINDS:
            values = np.asarray(dice.get((row, kind), []))
            cells.append(f"{values.mean():.1f} ± {values.std():.1f} (missed {int((values == 0).sum())})"
                         if len(values) else "–")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    (docs / "by_kind.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def dice_per_case(result, cases: Sequence[str]) -> dict[str, dict[str, float]]:
    """``{case: {target: Dice %}}`` of an ``EvaluationResult`` (the studies' per-fold archive records)."""
    return {case: {target: round(100 * result.per_case_metrics[case][target]["Dice"], 4)
                   for target in result.per_case_metrics[case]} for case in cases}


def git_commit(docs: Path, message: str) -> None:
    """Commit ``docs`` only (other staged or unstaged changes stay as they are); a failure is printed, not fatal."""
    try:
        subprocess.run(["git", "add", "--", str(docs)], cwd=docs, check=True)
        subprocess.run(["git", "commit", "-q", "-m", message, "--", str(docs)], cwd=docs, check=True)
    except (subprocess.CalledProcessError, OSError) as error:
        print(f"cpu_table1: git commit of {docs} failed ({error}); commit it by hand", file=sys.stderr)


def refresh_docs(workdir: Path, raw: Path, docs: Path, env: dict[str, str]) -> list[str]:
    archive = docs / "folds"
    rows_dir = workdir / "rows"
    rows = assemble_rows(archive, rows_dir, env)
    if rows:
        write_table(archive, rows_dir, rows, raw / "labelsTr", docs)
        report(raw, rows_dir, rows, docs, env)
        write_by_kind(workdir, rows, docs)
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="work_dirs/table1", help="nnU-Net folders, phantoms, ablation output")
    parser.add_argument("--docs", default="docs/table1_cpu", help="archive of finished folds, reports, table1.md")
    parser.add_argument("--rows", nargs="+", choices=TRAINING_ORDER, default=list(TRAINING_ORDER),
                        help="trained rows to produce (default: all, in TRAINING_ORDER)")
    parser.add_argument("--git-commit", action="store_true", help="commit --docs after every archived fold")
    args = parser.parse_args(argv)
    workdir, docs = Path(args.workdir).resolve(), Path(args.docs).resolve()
    archive = docs / "folds"
    env = nnunet_env(workdir)
    raw = prepare_dataset(workdir, env)
    results = Path(env["nnUNet_results"]) / raw.name
    try:
        check_or_record(archive, "labels.sha256.json", {"labelsTr": labels_digest(raw / "labelsTr")})
        for row in [row for row in TRAINING_ORDER if row in args.rows]:
            for fold in FOLDS:
                if is_archived(archive, row, fold):
                    print(f"cpu_table1: {row} fold {fold}: archived in {archive}", flush=True)
                    continue
                seconds = train_fold(workdir, row, fold, env)
                check_or_record(archive, "splits_final.json",
                                json.loads((Path(env["nnUNet_preprocessed"]) / raw.name /
                                            "splits_final.json").read_text()))
                archive_fold(archive, results, row, fold, seconds)
                rows = refresh_docs(workdir, raw, docs, env)
                print(f"cpu_table1: {row} fold {fold} archived; complete rows: {' '.join(rows) or 'none'}",
                      flush=True)
                if args.git_commit:
                    git_commit(docs, f"CPU Table 1: {row} fold {fold} archived (complete rows: "
                                     f"{', '.join(rows) or 'none'})")
        refresh_docs(workdir, raw, docs, env)
    except ArchiveMismatch as error:
        print(f"cpu_table1: error: {error}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as error:
        print(f"cpu_table1: {' '.join(map(str, error.cmd[:3]))} … failed (exit {error.returncode}); "
              f"re-run to resume", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
