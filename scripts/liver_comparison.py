#!/usr/bin/env python
"""The liver preset's small CPU comparison: early fusion vs HPN union (the HPN original-pair model ∪ the HPN
virtual-pair model), 3 folds, with the CPU Table 1's protocol and budget (``scripts/cpu_table1.py``).

One command, resumable (re-run it to continue where it stopped; finished folds are never trained again):

    nice -n 10 python scripts/liver_comparison.py --workdir work_dirs/liver --docs docs/liver_cpu --git-commit

1. phantoms: ``nnunet-hpn phantom --preset liver`` (:data:`N_CASES` cases, seed :data:`PHANTOM_SEED`, full
   48×96×96 grid), which writes ``labels.json`` (liver, lesion, portal vein, aorta; targets, lesion target, union
   precedence);
2. ``nnunet-hpn convert --labels labels.json --register --crop-to-label`` :data:`CROP_MARGIN_MM`;
3. ``scripts/run_ablation.py`` with the Table 1's preset (``hpn_experiments.table1.PRESET``: ``HPNPlanner``,
   ``3d_cpu`` patch 32³, 80 × 25 iterations, training seed 1234, no test-time mirroring, 3-fold split stratified on
   the lesion target, seed 12345), one row and fold at a time, fold by fold (early fusion, HPN, HPN virtual pairs),
   so that the first folds of all three land first;
4. every finished fold is archived into ``--docs``/``folds/<row>/fold_<k>/``
   (``hpn_experiments.table1.archive_fold``) and, with ``--git-commit``, committed;
5. after each fold: for every fold whose three rows are archived, the HPN union of that fold and
   ``nnunet-hpn report`` of its cases (``fold_<k>/``); once every fold is in, the report over all cases
   (``report/``: mean ± std per target, paired Wilcoxon p against HPN union, lesions missed and rescued) and
   ``contrasts.md``: each training's mean Dice on its fold (one training per row and fold) and the differences
   HPN union − early fusion and HPN − early fusion with a 95 % hierarchical-bootstrap interval
   (``nnunet_hpn.evaluate.training_stats``; with one training per fold it resamples the cases within folds only).

``--docs-only`` redoes step 5 from the archive without training.
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from hpn_experiments.ablation import fold_state, fresh_folder, make_union
from hpn_experiments.archive import check_or_record, fold_archive, git_commit, is_archived, labels_digest, run_resumably
from hpn_experiments.commands import nnunet_env, run_command
from hpn_experiments.table1 import (FOLDS, PRESET, RUN_ABLATION, archive_fold, assemble_rows, model_dir,
                                    prepare_phantom_dataset)
from nnunet_hpn.errors import HPNInputError
from nnunet_hpn.evaluate.training_stats import hierarchical_bootstrap_difference

N_CASES = 24
PHANTOM_SEED = 0
CROP_MARGIN_MM = 20.0
DATASET_ID = 531
DATASET_NAME = "LiverROIComparison"
#: rows trained for every fold, in this order
TRAINED_ROWS: tuple[str, ...] = ("early_fusion", "hpn", "hpn_virtual")
#: rows of the comparison (the union derived from hpn + hpn_virtual); the report's reference is HPN union
REPORT_ROWS: tuple[str, ...] = ("early_fusion", "hpn", "hpn_virtual", "hpn_union")
REFERENCE = "hpn_union"
#: (row, baseline) pairs of contrasts.md
CONTRASTS: tuple[tuple[str, str], ...] = (("hpn_union", "early_fusion"), ("hpn", "early_fusion"))


def prepare_dataset(workdir: Path, env: dict[str, str]) -> Path:
    """Liver phantoms and the cropped, registered raw dataset with the phantoms' labels (skipped when present)."""
    return prepare_phantom_dataset(workdir, env, DATASET_ID, DATASET_NAME, N_CASES, PHANTOM_SEED, CROP_MARGIN_MM,
                                   preset="liver")


def train_fold(workdir: Path, results: Path, row: str, fold: int, env: dict[str, str]) -> Optional[float]:
    """``run_ablation.py`` with the Table 1's preset for one row and fold; the wall time of the call when it
    trained (None when the fold was finished before). run_ablation's own table after the training is not needed
    here: when only that step fails, the finished fold is kept."""
    fold_dir = model_dir(results, row) / f"fold_{fold}"
    if fold_state(fold_dir) == "done":
        return None
    out = workdir / "ablation_runs" / f"{row}_fold_{fold}"
    start = time.perf_counter()
    try:
        run_command([sys.executable, str(RUN_ABLATION), "-d", str(DATASET_ID), *PRESET, "--folds", str(fold),
                     "--rows", row, "-o", str(out)], env)
    except subprocess.CalledProcessError:
        if fold_state(fold_dir) != "done":
            raise
        print(f"liver_comparison: {row} fold {fold} trained; run_ablation failed after the training (its table), "
              f"which this comparison does not use", file=sys.stderr, flush=True)
    return round(time.perf_counter() - start, 1)


def fold_cases(archive: Path, fold: int) -> list[str]:
    return json.loads((fold_archive(archive, TRAINED_ROWS[0], fold) / "fold.json").read_text())["cases"]


def truth_subset(raw: Path, cases: Sequence[str], out: Path) -> Path:
    """``out`` with links to the truth of ``cases``."""
    fresh_folder(out)
    for case in cases:
        (out / f"{case}.nii.gz").symlink_to(raw / "labelsTr" / f"{case}.nii.gz")
    return out


def report(raw: Path, rows: dict[str, Path], truth: Path, out: Path, env: dict[str, str]) -> None:
    """``nnunet-hpn report`` of ``rows`` against HPN union into ``out``; a failure is printed, not fatal (the
    report is redone after the next fold and by ``--docs-only``)."""
    try:
        run_command(["nnunet-hpn", "report", *(f"{row}={path}" for row, path in rows.items()), "--gt", str(truth),
                     "--images", str(raw / "imagesTr"), "--reference", REFERENCE, "--hpn", REFERENCE, "-djfile",
                     str(raw / "dataset.json"), "-o", str(out)], env)
    except subprocess.CalledProcessError as error:
        print(f"liver_comparison: report {out} failed (exit {error.returncode})", file=sys.stderr, flush=True)


def refresh_docs(workdir: Path, raw: Path, docs: Path, env: dict[str, str]) -> list[int]:
    """Per-fold reports of the folds whose rows are all archived, and the report over every case once all folds
    are; returns those folds. A union that fails is printed, not fatal (redone after the next fold)."""
    archive = docs / "folds"
    complete = [fold for fold in FOLDS if all(is_archived(archive, row, fold) for row in TRAINED_ROWS)]
    try:
        write_reports(workdir, raw, docs, complete, env)
    except (ValueError, HPNInputError) as error:
        print(f"liver_comparison: reports not written: {error}", file=sys.stderr, flush=True)
    return complete


def write_reports(workdir: Path, raw: Path, docs: Path, complete: Sequence[int], env: dict[str, str]) -> None:
    """``docs/fold_<k>/`` for every fold in ``complete``; ``docs/report/`` when that is every fold."""
    archive = docs / "folds"
    for fold in complete:
        rows_dir = workdir / "rows" / f"fold_{fold}"
        dirs = {}
        for row in TRAINED_ROWS:
            dirs[row] = fresh_folder(rows_dir / row)
            for path in fold_archive(archive, row, fold).glob("*.nii.gz"):
                shutil.copy2(path, dirs[row] / path.name)
            shutil.copy2(archive / row / "dataset.json", dirs[row] / "dataset.json")
        dirs["hpn_union"] = rows_dir / "hpn_union"
        make_union(dirs, dirs["hpn_union"], ".nii.gz")
        truth = truth_subset(raw, fold_cases(archive, fold), workdir / "truth" / f"fold_{fold}")
        report(raw, {row: dirs[row] for row in REPORT_ROWS}, truth, docs / f"fold_{fold}", env)
    if len(complete) == len(FOLDS):
        rows = assemble_rows(archive, workdir / "rows" / "all", env)
        report(raw, {row: workdir / "rows" / "all" / row for row in REPORT_ROWS if row in rows}, raw / "labelsTr",
               docs / "report", env)
        write_contrasts(docs, {fold: fold_cases(archive, fold) for fold in FOLDS})


def write_contrasts(docs: Path, cases_of_fold: dict[int, list[str]]) -> None:
    """``docs/contrasts.md`` from ``docs/report/per_case.csv``: per row, target and fold the training's mean Dice
    on its validation cases; per contrast and target the cross-validation mean difference with a 95 %
    hierarchical-bootstrap interval (folds kept, cases resampled within them; one training per row and fold)."""
    per_case = docs / "report" / "per_case.csv"
    if not per_case.is_file():
        print(f"liver_comparison: {per_case} missing, contrasts not written", file=sys.stderr, flush=True)
        return
    dice: dict[tuple[str, str], dict[str, float]] = {}
    with per_case.open(newline="", encoding="utf-8") as handle:
        for line in csv.DictReader(handle):
            dice.setdefault((line["method"], line["target"]), {})[line["case"]] = 100 * float(line["Dice"])
    targets = list(dict.fromkeys(target for _, target in dice))

    def scores(row: str, target: str) -> dict[int, dict[int, dict[str, float]]]:  # {fold: {seed: {case: Dice %}}}
        return {fold: {0: {case: dice[(row, target)][case] for case in cases}}  # one training: seed key 0
                for fold, cases in cases_of_fold.items()}

    lines = ["# Liver comparison: trainings and contrasts", "",
             "Dice % of each training on its fold's validation cases (one training per row and fold; the union is "
             "built per fold from that fold's HPN and HPN virtual-pair models).", "",
             "| row | " + " | ".join(f"{target}: fold {' / '.join(map(str, cases_of_fold))}" for target in targets)
             + " |", "|---|" + "---:|" * len(targets)]
    for row in REPORT_ROWS:
        lines.append(f"| {row} | " + " | ".join(
            " / ".join(f"{np.mean(list(by_seed[0].values())):.1f}"
                       for by_seed in scores(row, target).values()) for target in targets) + " |")
    lines += ["", "Cross-validation mean Dice difference (percentage points) with a 95 % hierarchical-bootstrap "
              "interval (10,000 resamples; within each fold its cases drawn with replacement, the same for both "
              "rows; with one training per row and fold the trainings' own variation is not in the interval).", "",
              "| contrast | " + " | ".join(targets) + " |", "|---|" + "---:|" * len(targets)]
    for row, baseline in CONTRASTS:
        cells = []
        for target in targets:
            interval = hierarchical_bootstrap_difference(scores(row, target), scores(baseline, target))
            cells.append(f"{interval.estimate:+.1f} [{interval.low:+.1f}, {interval.high:+.1f}]")
        lines.append(f"| {row} − {baseline} | " + " | ".join(cells) + " |")
    (docs / "contrasts.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="work_dirs/liver", help="nnU-Net folders, phantoms, run_ablation output")
    parser.add_argument("--docs", default="docs/liver_cpu", help="archive of finished folds and the reports")
    parser.add_argument("--git-commit", action="store_true", help="commit --docs after every archived fold")
    parser.add_argument("--docs-only", action="store_true", help="only redo the reports from the archive")
    args = parser.parse_args(argv)
    workdir, docs = Path(args.workdir).resolve(), Path(args.docs).resolve()
    archive = docs / "folds"
    env = nnunet_env(workdir)

    def train_and_archive() -> int:
        raw = prepare_dataset(workdir, env)
        results = Path(env["nnUNet_results"]) / raw.name
        check_or_record(archive, "labels.sha256.json", {"labelsTr": labels_digest(raw / "labelsTr")})
        for fold in FOLDS if not args.docs_only else ():
            for row in TRAINED_ROWS:
                if is_archived(archive, row, fold):
                    print(f"liver_comparison: {row} fold {fold}: archived in {archive}", flush=True)
                    continue
                seconds = train_fold(workdir, results, row, fold, env)
                check_or_record(archive, "splits_final.json",
                                json.loads((Path(env["nnUNet_preprocessed"]) / raw.name /
                                            "splits_final.json").read_text()))
                archive_fold(archive, results, row, fold, seconds)
                complete = refresh_docs(workdir, raw, docs, env)
                print(f"liver_comparison: {row} fold {fold} archived; folds with every row: "
                      f"{' '.join(map(str, complete)) or 'none'}", flush=True)
                if args.git_commit:
                    git_commit(docs, f"Liver comparison: {row} fold {fold} archived (folds with every row: "
                                     f"{', '.join(map(str, complete)) or 'none'})")
        refresh_docs(workdir, raw, docs, env)
        return 0

    return run_resumably("liver_comparison", train_and_archive)


if __name__ == "__main__":
    sys.exit(main())
