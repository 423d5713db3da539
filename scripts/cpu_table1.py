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

``--protocol v2`` (Table 1 v2, ``--docs docs/table1_cpu_v2``): every row trained with its ``<Trainer>_balanced``
variant (``nnunet_hpn/nnunet/trainers/balanced.py``) and each of :attr:`PROTOCOL_V2.seeds <Protocol.seeds>`, seed
by seed, row by row, fold by fold; the archive is ``folds/<row>/seed_<s>/fold_<k>/``, the derived rows are built per
seed, and after each training ``table1.md`` (rows, per-fold view, seed-to-seed spread, contrasts with
hierarchical-bootstrap intervals and per-case Wilcoxon p), ``trainings.csv``, ``per_case.csv`` and one report per
seed (``seed_<s>/``) are rewritten. Its labels and split must also match the earlier run's archive.

The archive is tied to the dataset: the hash of the cropped labels and the split are stored beside it, and a run
on other data stops with an error instead of mixing folds. The generator's parameters (``nnunet_hpn.phantom``) and
this preset were frozen before the first training of the table. The constants named above, the training of one fold
and the archive's layout are ``hpn_experiments.table1``'s, which the misalignment, two-stage and liver studies
share.
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from hpn_experiments.ablation import (ROWS, TARGET_COLUMNS, evaluate_row, format_csv, format_duration,
                                      format_markdown, table_records)
from hpn_experiments.archive import (check_or_record, fold_archive, git_commit, is_archived, labels_digest,
                                     run_resumably)
from hpn_experiments.commands import nnunet_env, run_command
from hpn_experiments.table1 import (CONFIGURATION, FOLDS, ORDER, PROTOCOL_V1, RUN_ABLATION, TRAINING_ORDER,
                                    Protocol, archive_fold, assemble_rows, dice_per_case, prepare_dataset,
                                    train_fold)
from nnunet_hpn.evaluate.metrics import evaluate_folders
from nnunet_hpn.evaluate.report import paired_wilcoxon
from nnunet_hpn.evaluate.training_stats import hierarchical_bootstrap_difference, seed_spread
from nnunet_hpn.io.listing import predicted_cases

#: the budget of :data:`PRESET` as written in trainings.csv
BUDGET = "80x25"
#: report references: every row against HPN-union and against HPN (when they exist)
REFERENCES: tuple[str, ...] = ("hpn_union", "hpn")


#: Table 1 v2: every row with the balanced recipe (nnunet_hpn/nnunet/trainers/balanced.py), two training seeds
PROTOCOL_V2 = Protocol("v2", "_balanced", (1234, 2345), tuple(row for row in TRAINING_ORDER if row != "hpn_warmup"),
                       tuple(row for row in ORDER if row != "hpn_warmup"))
PROTOCOLS: dict[str, Protocol] = {protocol.name: protocol for protocol in (PROTOCOL_V1, PROTOCOL_V2)}
#: the contrasts of Table 1 v2: (what it measures, row, row it is compared with)
CONTRASTS: tuple[tuple[str, str, str], ...] = (
    ("pairing loss", "hpn", "hypernet"),
    ("dual path", "hypernet", "early_fusion"),
    ("virtual pairs (HPN)", "hpn_virtual", "hpn"),
    ("virtual pairs (HyperNet)", "hypernet_aug", "hypernet"),
    ("union", "hpn_union", "hpn_virtual"),
)
#: resamples of the hierarchical bootstrap of the contrasts
BOOTSTRAP_RESAMPLES = 10000
#: targets of the tables (run_ablation's columns)
TARGETS: tuple[str, ...] = tuple(target for target, _ in TARGET_COLUMNS)

#: the earlier run's archive: Table 1 v2 must have its labels and split
EARLIER_ARCHIVE = RUN_ABLATION.parents[1] / "docs" / "table1_cpu" / "folds"


def write_table(archive: Path, rows_dir: Path, rows: list[str], labels: Path, docs: Path) -> None:
    """``table1.md`` / ``table1.csv`` of the assembled rows and ``rows.json`` (every archived fold's record)."""
    results = {("unet", row): evaluate_row(rows_dir / row, labels, ".nii.gz") for row in rows}
    folds = {row: {f"fold_{fold}": json.loads((fold_archive(archive, row, fold) / "fold.json").read_text())
                   for fold in FOLDS if is_archived(archive, row, fold)}
             for row in ORDER if ROWS[row].trainer}
    folds = {row: value for row, value in folds.items() if value}
    recorded = [entry["training_seconds"] for value in folds.values() for entry in value.values()
                if entry["training_seconds"] is not None]
    dates = sorted(entry["archived"] for value in folds.values() for entry in value.values())
    header = (f"Budget per training: 80 epochs × 25 iterations (2 validation iterations/epoch), checkpoint every 5 "
              f"epochs, training seed 1234, no test-time mirroring; folds {' '.join(map(str, FOLDS))} of "
              f"splits_final.json (PDAC-stratified, seed 12345); configuration {CONFIGURATION} (patch 32³); "
              f"device: 2-core CPU (see rows.json); folds archived {dates[0][:10]} – {dates[-1][:10]}; training "
              f"time recorded {format_duration(sum(recorded))} over {len(recorded)} trainings "
              f"(scripts/cpu_table1.py)")
    records = table_records(results, ["unet"], rows)
    (docs / "table1.md").write_text(format_markdown(records, header), encoding="utf-8")
    (docs / "table1.csv").write_text(format_csv(records, header), encoding="utf-8")
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
            run_command(["nnunet-hpn", "report", *runs, "--gt", str(raw / "labelsTr"), "--images",
                         str(raw / "imagesTr"), "--reference", reference, "--hpn", reference, *single, "-o", str(out)],
                        env)
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


def markdown_table(first: str, columns: Sequence[str], rows: dict[str, Sequence[str]]) -> list[str]:
    """The lines of a Markdown table: a first column of row names (left-aligned), ``columns`` right-aligned."""
    return (["| " + " | ".join([first, *columns]) + " |", "|---|" + "---:|" * len(columns)]
            + [f"| {row} | " + " | ".join(cells) + " |" for row, cells in rows.items()])


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

    def cell(values: np.ndarray) -> str:
        return f"{values.mean():.1f} ± {values.std():.1f} (missed {int((values == 0).sum())})" if len(values) else "–"

    cells = {row: [cell(np.asarray(dice.get((row, kind), []))) for kind in KINDS] for row in rows}
    lines = ["# PDAC Dice (%) by kind of mass", "",
             "Mean ± population std over the cross-validation cases of each kind (missed: Dice 0); kinds from "
             "`phantoms.json` (nnunet_hpn/phantom.py).", "",
             *markdown_table("Row", [f"{kind} (n={counts[kind]})" for kind in KINDS], cells)]
    (docs / "by_kind.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------------------------- Table 1 v2

#: columns of trainings.csv: one line per training
TRAINING_FIELDS: tuple[str, ...] = ("row", "fold", "seed", "trainer", "budget", "wall_seconds",
                                    *(f"{target} mean Dice %" for target in TARGETS))
#: columns of per_case.csv (Dice of every row, seed and case; derived rows per seed)
PER_CASE_FIELDS: tuple[str, ...] = ("row", "seed", "fold", "case", "target", "Dice %")
#: Dice % per case and target of one (row, seed, fold): {case: {target: Dice %}}
CaseDice = dict[str, dict[str, float]]


def fold_dice(folder: Path, labels: Path, cases: Optional[Sequence[str]] = None) -> tuple[CaseDice, CaseDice]:
    """Dice % per case and target of the label maps in ``folder`` (those of ``cases``, default all), and whether
    the truth has each target (1.0 / 0.0), Dice only."""
    result = evaluate_folders(folder, labels, ".nii.gz", cases=cases or predicted_cases(folder), surface=False,
                              progress=False)
    present = {case: {target: float(result.truth_present[case][target]) for target in TARGETS}
               for case in result.cases}
    return dice_per_case(result, result.cases), present


def collect_dice(archive: Path, rows_dirs: dict[int, Path], rows: dict[int, list[str]], protocol: Protocol,
                 labels: Path, splits: list[dict]) -> tuple[dict[tuple[str, int, int], CaseDice], CaseDice]:
    """Dice of every archived training (trained rows, fold by fold) and of every derived row assembled per seed,
    keyed ``(row, seed, fold)``; and the truth's targets per case."""
    dice: dict[tuple[str, int, int], CaseDice] = {}
    present: CaseDice = {}
    for row in protocol.order:
        for seed in protocol.seeds:
            if ROWS[row].trainer is not None:
                for fold in FOLDS:
                    if is_archived(archive, row, fold, seed):
                        dice[(row, seed, fold)], truth = fold_dice(fold_archive(archive, row, fold, seed), labels)
                        present.update(truth)
            elif row in rows[seed]:
                for fold in FOLDS:
                    dice[(row, seed, fold)], truth = fold_dice(rows_dirs[seed] / row, labels, splits[fold]["val"])
                    present.update(truth)
    return dice, present


def training_records(archive: Path, protocol: Protocol, dice: dict[tuple[str, int, int], CaseDice]) -> list[dict]:
    """One record per archived training (:data:`TRAINING_FIELDS`), in the table's row order."""
    records = []
    for (row, seed, fold), cases in dice.items():
        if ROWS[row].trainer is None:
            continue
        info = json.loads((fold_archive(archive, row, fold, seed) / "fold.json").read_text())
        records.append({"row": row, "fold": fold, "seed": seed, "trainer": info["trainer"], "budget": BUDGET,
                        "wall_seconds": info["training_seconds"],
                        **{f"{target} mean Dice %": round(float(np.mean([value[target] for value in cases.values()])),
                                                          2) for target in TARGETS}})
    return records


def write_csv(path: Path, fields: Sequence[str], records: Sequence[dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(fields), lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)


def read_trainings_csv(path: Path) -> list[dict]:
    """trainings.csv back, with numbers as numbers (wall seconds empty: None)."""
    with path.open(encoding="utf-8") as stream:
        records = list(csv.DictReader(stream))
    for record in records:
        record["fold"], record["seed"] = int(record["fold"]), int(record["seed"])
        record["wall_seconds"] = float(record["wall_seconds"]) if record["wall_seconds"] else None
        for target in TARGETS:
            record[f"{target} mean Dice %"] = float(record[f"{target} mean Dice %"])
    return records


def scores_of(dice: dict[tuple[str, int, int], CaseDice], row: str, target: str) -> dict[int, dict[int, dict]]:
    """``{fold: {seed: {case: Dice %}}}`` of one row and target (the form of training_stats)."""
    scores: dict[int, dict[int, dict]] = {}
    for (name, seed, fold), cases in dice.items():
        if name == row:
            scores.setdefault(fold, {})[seed] = {case: values[target] for case, values in cases.items()}
    return scores


def seed_averaged(scores: dict[int, dict[int, dict]]) -> dict[str, float]:
    """``{case: mean over seeds}`` of ``{fold: {seed: {case: value}}}``, cases in name order."""
    values = {case: [by_seed[case] for by_seed in scores[fold].values()]
              for fold in scores for case in next(iter(scores[fold].values()))}
    return {case: float(np.mean(values[case])) for case in sorted(values)}


def complete_seeds(dice: dict[tuple[str, int, int], CaseDice], row: str, protocol: Protocol) -> list[int]:
    """The seeds with which ``row`` has every fold."""
    return [seed for seed in protocol.seeds if all((row, seed, fold) in dice for fold in FOLDS)]


def format_table_v2(dice: dict[tuple[str, int, int], CaseDice], present: CaseDice, records: list[dict],
                    protocol: Protocol, header: str) -> str:
    """table1.md of Table 1 v2: rows (mean ± std over cases, per-seed means), the per-fold view, the seed-to-seed
    spread and the contrasts with hierarchical-bootstrap intervals and per-case Wilcoxon p."""
    lines = ["# Table 1 v2: HPN ablation, balanced recipe, two training seeds", "", header, "",
             "## Rows", "",
             "Dice %: mean over seeds of the 24-case cross-validation mean ± population std over cases (averaged "
             "over seeds), then in brackets each seed's cross-validation mean and their population std over seeds; "
             "missed: cases with the target and Dice 0, summed over seeds; failed trainings: trainings whose mean "
             "Dice on their validation fold is 0 for some target; wall minutes: mean wall time of the row's "
             "nnUNetv2_train commands (training and nnU-Net's validation of the fold; a training resumed from a "
             "checkpoint counts its last part only).",
             "", "| row | seeds | " + " | ".join(f"{target} Dice %" for target in TARGETS) +
             " | PDAC missed | duct missed | failed trainings | wall minutes per training |",
             "|---|---|" + "---:|" * (len(TARGETS) + 4)]
    for row in protocol.order:
        seeds = complete_seeds(dice, row, protocol)
        if not seeds:
            continue
        cells = []
        for target in TARGETS:
            per_seed = [[value[target] for fold in FOLDS for value in dice[(row, seed, fold)].values()]
                        for seed in seeds]
            seed_means = [np.mean(values) for values in per_seed]
            seed_std = f"; std {np.std(seed_means):.1f}" if len(seed_means) > 1 else ""
            cells.append(f"{np.mean(seed_means):.1f} ± {np.mean([np.std(v) for v in per_seed]):.1f}"
                         f" ({' / '.join(f'{mean:.1f}' for mean in seed_means)}{seed_std})")
        for target in ("PDAC", "duct"):
            cases = [(case, value) for seed in seeds for fold in FOLDS
                     for case, value in dice[(row, seed, fold)].items() if present[case][target]]
            cells.append(f"{sum(value[target] == 0 for _, value in cases)}/{len(cases)}")
        trainings = [record for record in records if record["row"] == row and record["seed"] in seeds]
        if trainings:
            failed = sum(any(record[f"{t} mean Dice %"] == 0 for t in TARGETS) for record in trainings)
            seconds = [record["wall_seconds"] for record in trainings if record["wall_seconds"] is not None]
            cells += [f"{failed}/{len(trainings)}", f"{np.mean(seconds) / 60:.1f}" if seconds else "–"]
        else:
            cells += ["(derived)", "(derived)"]
        lines.append(f"| {ROWS[row].label} | {' '.join(map(str, seeds))} | " + " | ".join(cells) + " |")
    lines += ["", "## Per fold", "",
              "Mean Dice % of each training on its fold's validation cases (seeds " +
              " / ".join(map(str, protocol.seeds)) + "; – not trained yet; trainings.csv has every number).", "",
              "| row | " + " | ".join(f"{target} f{fold}" for target in TARGETS for fold in FOLDS) + " |",
              "|---|" + "---:|" * (len(TARGETS) * len(FOLDS))]
    for row in protocol.order:
        if not any((row, seed, fold) in dice for seed in protocol.seeds for fold in FOLDS):
            continue
        cells = [" / ".join(f"{np.mean([v[target] for v in dice[(row, seed, fold)].values()]):.1f}"
                            if (row, seed, fold) in dice else "–" for seed in protocol.seeds)
                 for target in TARGETS for fold in FOLDS]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    spread_rows = [row for row in protocol.order if len(complete_seeds(dice, row, protocol)) == len(protocol.seeds)]
    if len(protocol.seeds) > 1 and spread_rows:
        spreads = {row: [seed_spread(scores_of(dice, row, target)) for target in TARGETS] for row in spread_rows}
        lines += ["", "## Seed-to-seed spread", "",
                  "Per target: each seed's cross-validation mean Dice %, their range (max − min) and the mean over "
                  "folds of the range between the seeds' fold means.", "",
                  *markdown_table("row", [f"{target}: seed means (range; fold range)" for target in TARGETS],
                                  {row: [f"{' / '.join(f'{v:.1f}' for v in spread.per_seed.values())} (range "
                                         f"{spread.range:.1f}; fold range {spread.mean_fold_range:.1f})"
                                         for spread in values] for row, values in spreads.items()})]
    contrasts = [contrast for contrast in CONTRASTS
                 if all(complete_seeds(dice, row, protocol) for row in contrast[1:])]
    if contrasts:
        lines += ["", "## Contrasts", "",
                  "Difference of cross-validation mean Dice (percentage points, first row minus second) with the 95 % "
                  f"interval of a hierarchical bootstrap ({BOOTSTRAP_RESAMPLES:,} resamples; within each fold the "
                  "trainings of each row and the fold's cases are drawn with replacement, cases paired between the "
                  "rows; "
                  "nnunet_hpn/evaluate/training_stats.py), and the per-case paired Wilcoxon p on the 24 cases (each "
                  "case's Dice averaged over the row's seeds). With two trainings per row and fold, resampling them "
                  "gives half the training-to-training variance of their mean (a bootstrap of 2 values has variance "
                  "s²/4, the mean of 2 trainings s²/2), so the intervals are if anything too narrow: read them with "
                  "the per-fold view.", "",
                  "| contrast | rows | target | difference | 95 % interval | Wilcoxon p (cases) | trainings |",
                  "|---|---|---|---:|---:|---:|---:|"]
        for name, first, second in contrasts:
            for target in TARGETS:
                a, b = scores_of(dice, first, target), scores_of(dice, second, target)
                a = {fold: {seed: a[fold][seed] for seed in complete_seeds(dice, first, protocol)} for fold in FOLDS}
                b = {fold: {seed: b[fold][seed] for seed in complete_seeds(dice, second, protocol)} for fold in FOLDS}
                interval = hierarchical_bootstrap_difference(a, b, BOOTSTRAP_RESAMPLES)
                p_value = paired_wilcoxon(*(list(seed_averaged(scores).values()) for scores in (a, b)))
                n_a, n_b = (sum(len(s[fold]) for fold in FOLDS) for s in (a, b))
                lines.append(f"| {name} | {first} − {second} | {target} | {interval.estimate:+.1f} | "
                             f"[{interval.low:+.1f}, {interval.high:+.1f}] | {p_value:.2g} | {n_a} vs {n_b} |")
    return "\n".join(lines) + "\n"


def write_table_v2(workdir: Path, raw: Path, docs: Path, protocol: Protocol, env: dict[str, str],
                   splits: list[dict]) -> dict[int, list[str]]:
    """Table 1 v2 into ``docs``: table1.md, trainings.csv, per_case.csv and, per seed, ``nnunet-hpn report``
    of its complete rows (``seed_<s>/report_vs_*``). Returns the complete rows per seed."""
    archive = docs / "folds"
    rows_dirs = {seed: protocol.rows_dir(workdir, seed) for seed in protocol.seeds}
    rows = {seed: assemble_rows(archive, rows_dirs[seed], env, seed, protocol.order) for seed in protocol.seeds}
    dice, present = collect_dice(archive, rows_dirs, rows, protocol, raw / "labelsTr", splits)
    if not dice:
        return rows
    records = training_records(archive, protocol, dice)
    write_csv(docs / "trainings.csv", TRAINING_FIELDS, records)
    write_csv(docs / "per_case.csv", PER_CASE_FIELDS,
              [{"row": row, "seed": seed, "fold": fold, "case": case, "target": target, "Dice %": value[target]}
               for (row, seed, fold), cases in dice.items() for case, value in cases.items() for target in TARGETS])
    infos = [json.loads(path.read_text()) for path in sorted(archive.glob("*/seed_*/fold_*/fold.json"))]
    seconds = [info["training_seconds"] for info in infos if info["training_seconds"] is not None]
    dates = sorted(info["archived"] for info in infos)
    header = (f"Recipe: every row's `<Trainer>{protocol.trainer_variant}` (nnunet_hpn/nnunet/trainers/balanced.py: "
              f"cross-entropy of PDAC and duct weighted 4, every patch centred on a foreground class, initial LR "
              f"0.03, λ ramped up over 12 epochs where the row has the pairing loss). Budget per training: 80 "
              f"epochs × 25 iterations (2 validation iterations/epoch), no test-time mirroring; training seeds "
              f"{', '.join(map(str, protocol.seeds))}; folds {' '.join(map(str, FOLDS))} of splits_final.json "
              f"(PDAC-stratified, seed 12345, the earlier run's); configuration {CONFIGURATION} (patch 32³); device: "
              f"{infos[0]['device'] if infos else '?'}; {len(infos)} trainings archived {dates[0][:10]} – "
              f"{dates[-1][:10]}, training time recorded {format_duration(sum(seconds))} "
              f"(scripts/cpu_table1.py --protocol {protocol.name})")
    (docs / "table1.md").write_text(format_table_v2(dice, present, records, protocol, header), encoding="utf-8")
    for seed in protocol.seeds:
        report(raw, rows_dirs[seed], rows[seed], docs / f"seed_{seed}", env)
    return rows


#: the pilot of a per-seed protocol's recipe: fold 1 (where the earlier run failed most), a seed that is not a table
#: seed (so that the pilot, chosen on that fold, stays out of the table), the rows that learnt no duct or no PDAC
PILOT_FOLD, PILOT_SEED = 1, 4321
PILOT_ROWS: tuple[str, ...] = ("early_fusion", "hypernet_aug", "hpn")


def pilot_passed(docs: Path) -> bool:
    """Whether ``docs/pilot/pilot.json`` records a passed pilot."""
    path = docs / "pilot" / "pilot.json"
    return path.is_file() and bool(json.loads(path.read_text())["passed"])


def run_pilot(workdir: Path, raw: Path, docs: Path, env: dict[str, str], protocol: Protocol,
              before_training: Callable[[], None], commit: bool) -> bool:
    """Train (or resume) the pilot, archive each training in ``docs/pilot/folds/`` and write ``pilot.md`` and
    ``pilot.json``; returns whether every pilot training has mean Dice > 0 for every target on its validation fold."""
    pilot = docs / "pilot"
    archive = pilot / "folds"
    results_root = workdir / "nnUNet_results_pilot"
    for row in PILOT_ROWS:
        if is_archived(archive, row, PILOT_FOLD, PILOT_SEED):
            continue
        before_training()
        seconds = train_fold(workdir, row, PILOT_FOLD, env, protocol, PILOT_SEED, results_root,
                             workdir / f"pilot{protocol.trainer_variant}")
        before_training()
        archive_fold(archive, results_root / raw.name, row, PILOT_FOLD, seconds, PILOT_SEED,
                     protocol.trainer_variant)
        if commit:
            git_commit(docs, f"CPU Table 1 {protocol.name}: pilot {row} fold {PILOT_FOLD} seed {PILOT_SEED} archived")
    infos = {row: json.loads((fold_archive(archive, row, PILOT_FOLD, PILOT_SEED) / "fold.json").read_text())
             for row in PILOT_ROWS}
    means = {}
    for row in PILOT_ROWS:
        cases, _ = fold_dice(fold_archive(archive, row, PILOT_FOLD, PILOT_SEED), raw / "labelsTr")
        means[row] = {target: round(float(np.mean([value[target] for value in cases.values()])), 2)
                      for target in TARGETS}
    passed = all(value > 0 for values in means.values() for value in values.values())
    (pilot / "pilot.json").write_text(json.dumps({"passed": passed, "fold": PILOT_FOLD, "seed": PILOT_SEED,
                                                  "mean_dice_percent": means}, indent=2) + "\n")
    lines = [f"# Pilot of the {protocol.trainer_variant.strip('_')} recipe ({protocol.name})", "",
             f"Fold {PILOT_FOLD}, training seed {PILOT_SEED} (not a table seed), budget {BUDGET}; mean Dice % of each "
             f"training on the fold's validation cases. Criterion: every training, every target > 0.", "",
             "| row | trainer | " + " | ".join(TARGETS) + " | wall min | archived |",
             "|---|---|" + "---:|" * (len(TARGETS) + 1) + "---|"]
    for row in PILOT_ROWS:
        seconds = infos[row]["training_seconds"]
        lines.append(f"| {row} | {infos[row]['trainer']} | " + " | ".join(f"{means[row][t]:.1f}" for t in TARGETS) +
                     f" | {'–' if seconds is None else f'{seconds / 60:.1f}'} | {infos[row]['archived']} |")
    lines += ["", f"Criterion: **{'passed' if passed else 'failed'}**; device {infos[PILOT_ROWS[0]]['device']}."]
    (pilot / "pilot.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    if commit:
        git_commit(docs, f"CPU Table 1 {protocol.name}: pilot {'passed' if passed else 'failed'}")
    return passed


def refresh_docs(workdir: Path, raw: Path, docs: Path, env: dict[str, str],
                 protocol: Protocol = PROTOCOL_V1) -> list[str]:
    """Tables and reports of everything archived; returns the complete rows (v2: of every seed, as row/seed)."""
    if protocol.per_seed:
        splits = json.loads((docs / "folds" / "splits_final.json").read_text())
        rows = write_table_v2(workdir, raw, docs, protocol, env, splits)
        return [f"{row}/{seed}" for seed, names in rows.items() for row in names]
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
    parser.add_argument("--docs", help="archive of finished folds, reports, table1.md (default: docs/table1_cpu "
                                       "for --protocol v1, docs/table1_cpu_v2 for v2)")
    parser.add_argument("--protocol", choices=list(PROTOCOLS), default="v1",
                        help="v1: the earlier run (nnU-Net's settings, training seed 1234, --docs docs/table1_cpu); "
                             "v2: every row with the balanced recipe, training seeds 1234 and 2345, trainings.csv "
                             "and the training-level statistics (--docs docs/table1_cpu_v2)")
    parser.add_argument("--rows", nargs="+", choices=TRAINING_ORDER, default=list(TRAINING_ORDER),
                        help="trained rows to produce (default: all of the protocol, in its training order)")
    parser.add_argument("--pilot", action="store_true",
                        help="v2: train the pilot of the recipe (fold 1, seed 4321: early fusion, HyperNet-aug, HPN) "
                             "into --docs/pilot/; exit status 3 if a training has mean Dice 0 for a target. The table "
                             "run starts only once a pilot has passed")
    parser.add_argument("--git-commit", action="store_true", help="commit --docs after every archived fold")
    args = parser.parse_args(argv)
    protocol = PROTOCOLS[args.protocol]
    if args.pilot and not protocol.per_seed:
        parser.error(f"--pilot: protocol {protocol.name} has no pilot (use --protocol v2)")
    docs = Path(args.docs or ("docs/table1_cpu" if not protocol.per_seed else f"docs/table1_cpu_{protocol.name}"))
    workdir, docs = Path(args.workdir).resolve(), docs.resolve()
    if protocol.per_seed and docs == EARLIER_ARCHIVE.parent.resolve():
        parser.error(f"--docs {args.docs}: the earlier run's archive; --protocol {protocol.name} needs its own")
    archive = docs / "folds"
    env = nnunet_env(workdir)
    raw = prepare_dataset(workdir, env)
    split_file = Path(env["nnUNet_preprocessed"]) / raw.name / "splits_final.json"
    # the same data and split as the earlier run's archive, where it is there
    archives = [archive] + [path for path in (EARLIER_ARCHIVE,) if protocol.per_seed and path.is_dir()]

    def check_split() -> None:  # written by the first training (run_ablation.py), checked before every later one
        if split_file.is_file():
            for folder in archives:
                check_or_record(folder, "splits_final.json", json.loads(split_file.read_text()))

    def train_and_archive() -> int:
        for folder in archives:
            check_or_record(folder, "labels.sha256.json", {"labelsTr": labels_digest(raw / "labelsTr")})
        if args.pilot:
            passed = run_pilot(workdir, raw, docs, env, protocol, check_split, args.git_commit)
            print(f"cpu_table1: pilot {'passed' if passed else 'FAILED'}: {docs / 'pilot' / 'pilot.md'}", flush=True)
            return 0 if passed else 3
        if protocol.per_seed and not pilot_passed(docs):
            print(f"cpu_table1: error: {docs / 'pilot' / 'pilot.json'}: no passed pilot of the recipe; run "
                  f"--protocol {protocol.name} --pilot first", file=sys.stderr)
            return 1
        for seed in protocol.seeds:
            for row in [row for row in protocol.training_order if row in args.rows]:
                for fold in FOLDS:
                    name = f"{row} fold {fold}" + (f" seed {seed}" if protocol.per_seed else "")
                    stored_seed = seed if protocol.per_seed else None
                    if is_archived(archive, row, fold, stored_seed):
                        print(f"cpu_table1: {name}: archived in {archive}", flush=True)
                        continue
                    check_split()
                    seconds = train_fold(workdir, row, fold, env, protocol, seed)
                    check_split()
                    archive_fold(archive, protocol.results_root(workdir, seed) / raw.name, row, fold, seconds,
                                 stored_seed, protocol.trainer_variant)
                    rows = refresh_docs(workdir, raw, docs, env, protocol)
                    print(f"cpu_table1: {name} archived; complete rows: {' '.join(rows) or 'none'}", flush=True)
                    if args.git_commit:
                        title = "CPU Table 1" + ("" if not protocol.per_seed else f" {protocol.name}")
                        git_commit(docs, f"{title}: {name} archived (complete rows: {', '.join(rows) or 'none'})")
        refresh_docs(workdir, raw, docs, env, protocol)
        return 0

    return run_resumably("cpu_table1", train_and_archive)


if __name__ == "__main__":
    sys.exit(main())
