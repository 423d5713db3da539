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
from typing import Callable, NamedTuple, Optional, Sequence

import numpy as np

import run_ablation  # beside this script (its folder is on sys.path)
from nnunet_hpn.demo import console_command
from nnunet_hpn.evaluate.metrics import evaluate_folders
from nnunet_hpn.evaluate.report import paired_wilcoxon
from nnunet_hpn.evaluate.training_stats import hierarchical_bootstrap_difference, seed_spread
from nnunet_hpn.io.listing import predicted_cases

N_CASES = 24
#: seed of the phantoms: 8 of its 24 cases are subtle in both phases (33 %), inside the documented 25-35 %
PHANTOM_SEED = 8
CROP_MARGIN_MM = 20.0
DATASET_ID = 510
DATASET_NAME = "PancreasROITable1"
CONFIGURATION = "3d_cpu"
PLANS = run_ablation.BACKBONES["unet"].plans
FOLDS: tuple[int, ...] = (0, 1, 2)
#: run_ablation.py arguments shared by every training: 80 epochs × 25 iterations = 2,000 iterations (training seed
#: and trainer variant: :func:`preset`)
PRESET_WITHOUT_SEED: tuple[str, ...] = (
    "--backbones", "unet", "-c", CONFIGURATION, "--cpu-config", "32", "32", "32", "--epochs", "80", "--iterations",
    "25", "--val-iterations", "2", "--save-every", "5", "--no-tta", "--device", "cpu", "--seed", "12345", "-np", "2")
#: the earlier run's arguments (training seed 1234), which the misalignment and two-stage studies train with
PRESET: tuple[str, ...] = (*PRESET_WITHOUT_SEED, "--training-seed", "1234")
#: the budget of :data:`PRESET` as written in trainings.csv
BUDGET = "80x25"
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



class Protocol(NamedTuple):
    """One version of the table: the trainer variant every row trains with, the training seeds (one training per
    row, fold and seed) and the rows."""

    name: str
    trainer_variant: str
    seeds: tuple[int, ...]
    training_order: tuple[str, ...]
    order: tuple[str, ...]

    @property
    def per_seed(self) -> bool:
        """Archive, nnU-Net results and assembled rows one folder per seed (``seed_<s>/``)."""
        return self.name != "v1"

    def results_root(self, workdir: Path, seed: int) -> Path:
        return workdir / "nnUNet_results" if not self.per_seed else workdir / f"nnUNet_results_{self.name}_seed{seed}"

    def rows_dir(self, workdir: Path, seed: int) -> Path:
        return workdir / "rows" if not self.per_seed else workdir / f"rows_{self.name}" / f"seed_{seed}"


#: the earlier run: nnU-Net's own settings, one training seed, plus the warm-up row
PROTOCOL_V1 = Protocol("v1", "", (1234,), TRAINING_ORDER, ORDER)
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
TARGETS: tuple[str, ...] = tuple(target for target, _ in run_ablation.TARGET_COLUMNS)

SCRIPTS = Path(__file__).resolve().parent
#: the earlier run's archive: Table 1 v2 must have its labels and split
EARLIER_ARCHIVE = SCRIPTS.parent / "docs" / "table1_cpu" / "folds"
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


def preset(seed: int, variant: str = "") -> tuple[str, ...]:
    """run_ablation.py arguments of one training: :data:`PRESET`, the training seed, the trainer variant."""
    return (*PRESET_WITHOUT_SEED, "--training-seed", str(seed), *(("--trainer-variant", variant) if variant else ()))


def fold_archive(archive: Path, row: str, fold: int, seed: Optional[int] = None) -> Path:
    """``<row>/fold_<k>`` (one seed), or ``<row>/seed_<s>/fold_<k>``."""
    return archive / row / ("" if seed is None else f"seed_{seed}") / f"fold_{fold}"


def is_archived(archive: Path, row: str, fold: int, seed: Optional[int] = None) -> bool:
    return (fold_archive(archive, row, fold, seed) / "fold.json").is_file()


def model_dir(results: Path, row: str, variant: str = "") -> Path:
    return results / f"{run_ablation.trainer_name(row, variant)}__{PLANS}__{CONFIGURATION}"


def archive_fold(archive: Path, results: Path, row: str, fold: int, seconds: Optional[float],
                 seed: Optional[int] = None, variant: str = "") -> None:
    """Copy a finished fold's validation predictions, training log and model-folder JSONs into the archive
    (``seed``: the per-seed layout); ``fold.json`` is written last, so that a half-copied fold is not taken as
    archived."""
    model = model_dir(results, row, variant)
    source = model / f"fold_{fold}"
    suffixes = run_ablation.PREDICTION_SUFFIXES if row in PROBABILITY_ROWS else (".nii.gz",)
    files = sorted(path for path in (source / "validation").glob("*") if path.name.endswith(suffixes))
    target = fold_archive(archive, row, fold, seed)
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
    info = {"row": row, "fold": fold, "seed": seed, "trainer": run_ablation.trainer_name(row, variant),
            "plans": PLANS, "configuration": CONFIGURATION,
            "preset": list(PRESET if seed is None else preset(seed, variant)),
            "cases": sorted(path.name[:-len(".nii.gz")] for path in files if path.name.endswith(".nii.gz")),
            "training_seconds": seconds, "archived": datetime.datetime.now().isoformat(timespec="seconds"),
            "device": f"CPU ({os.cpu_count()} logical), {platform.processor() or platform.machine()}",
            "budget": budget}
    (target / "fold.json").write_text(json.dumps(info, indent=2) + "\n")


def train_fold(workdir: Path, row: str, fold: int, env: dict[str, str], protocol: Protocol = PROTOCOL_V1,
               seed: int = 1234, results_root: Optional[Path] = None, out: Optional[Path] = None) -> Optional[float]:
    """``run_ablation.py`` for one row, fold and seed (skips training when nnU-Net's fold folder is finished);
    returns the training wall time recorded by run_ablation (None when this fold was trained before).
    ``results_root`` / ``out``: nnU-Net's results folder and run_ablation's output (default: the protocol's)."""
    out = out or (workdir / "ablation_runs" / f"{row}_fold_{fold}" if not protocol.per_seed else
                  workdir / f"ablation_runs_{protocol.name}" / f"{row}_seed{seed}_fold_{fold}")
    env = {**env, "nnUNet_results": str(results_root or protocol.results_root(workdir, seed))}
    run([sys.executable, str(SCRIPTS / "run_ablation.py"), "-d", str(DATASET_ID),
         *preset(seed, protocol.trainer_variant), "--folds", str(fold), "--rows", row, "-o", str(out)], env)
    trainings = json.loads((out / "run_info.json").read_text())["trainings"]
    entry = trainings.get(f"unet/{row}/fold_{fold}")
    return entry["seconds"] if entry else None


def assemble_rows(archive: Path, rows_dir: Path, env: dict[str, str], seed: Optional[int] = None,
                  order: Sequence[str] = ORDER) -> list[str]:
    """Every row with all folds archived (for ``seed``, in the per-seed layout; and every derived row whose inputs
    are there) as one prediction folder ``rows_dir/<row>``; returns the rows, in ``order``."""
    complete: list[str] = []
    for row in order:
        spec = run_ablation.ROWS[row]
        folder = rows_dir / row
        if spec.trainer is not None:
            if not all(is_archived(archive, row, fold, seed) for fold in FOLDS):
                continue
            run_ablation.fresh_folder(folder)
            for name in ("plans.json", "dataset.json"):
                shutil.copy2(archive / row / name, folder / name)
            for fold in FOLDS:
                for path in fold_archive(archive, row, fold, seed).glob("*"):
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
            if run_ablation.ROWS[row].trainer is not None:
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
        if run_ablation.ROWS[row].trainer is None:
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
             "over seeds), then each seed's cross-validation mean; missed: cases with the target and Dice 0, summed "
             "over seeds; failed trainings: trainings whose mean Dice on their validation fold is 0 for some target.",
             "", "| row | seeds | " + " | ".join(f"{target} Dice %" for target in TARGETS) +
             " | PDAC missed | duct missed | failed trainings | min per training |",
             "|---|---|" + "---:|" * (len(TARGETS) + 4)]
    for row in protocol.order:
        seeds = complete_seeds(dice, row, protocol)
        if not seeds:
            continue
        cells = []
        for target in TARGETS:
            per_seed = [[value[target] for fold in FOLDS for value in dice[(row, seed, fold)].values()]
                        for seed in seeds]
            cells.append(f"{np.mean([np.mean(v) for v in per_seed]):.1f} ± "
                         f"{np.mean([np.std(v) for v in per_seed]):.1f}"
                         f" ({' / '.join(f'{np.mean(v):.1f}' for v in per_seed)})")
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
        lines.append(f"| {run_ablation.ROWS[row].label} | {' '.join(map(str, seeds))} | " + " | ".join(cells) + " |")
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
        lines += ["", "## Seed-to-seed spread", "",
                  "Per target: each seed's cross-validation mean Dice %, their range (max − min) and the mean over "
                  "folds of the range between the seeds' fold means.", "",
                  "| row | " + " | ".join(f"{target}: seed means (range; fold range)" for target in TARGETS) + " |",
                  "|---|" + "---:|" * len(TARGETS)]
        for row in spread_rows:
            cells = []
            for target in TARGETS:
                spread = seed_spread(scores_of(dice, row, target))
                cells.append(f"{' / '.join(f'{v:.1f}' for v in spread.per_seed.values())} (range {spread.range:.1f}; "
                             f"fold range {spread.mean_fold_range:.1f})")
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
    contrasts = [contrast for contrast in CONTRASTS
                 if all(complete_seeds(dice, row, protocol) for row in contrast[1:])]
    if contrasts:
        lines += ["", "## Contrasts", "",
                  "Difference of cross-validation mean Dice (percentage points, first row minus second) with the 95 % "
                  f"interval of a hierarchical bootstrap ({BOOTSTRAP_RESAMPLES:,} resamples; within each fold the "
                  "trainings of each row and the fold's cases are drawn with replacement, cases paired between the "
                  "rows; "
                  "nnunet_hpn/evaluate/training_stats.py), and the per-case paired Wilcoxon p on the 24 cases (each "
                  "case's Dice averaged over the row's seeds).", "",
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
              f"{dates[-1][:10]}, training time recorded {run_ablation.format_duration(sum(seconds))} "
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

    try:
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
