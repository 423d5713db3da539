#!/usr/bin/env python
"""The whole Table-1 ablation of the HPN paper (Zhou et al., MICCAI 2019) with the stock nnU-Net commands.

For every backbone × row × fold: plan and preprocess if needed, write a PDAC-stratified split, train with
``nnUNetv2_train ... --npz`` (resuming where a run stopped: finished folds are skipped, interrupted ones continue
with ``--c``), collect the cross-validation predictions per row into ``OUT_DIR/<backbone>/<row>/``, build the
derived rows (fusion: ``nnUNetv2_ensemble`` of the single-phase probabilities; hpn_union: union of the
original- and virtual-pair HPN predictions), evaluate every row against ``$nnUNet_raw/<dataset>/labelsTr`` and
write ``OUT_DIR/table1.md``, ``OUT_DIR/table1.csv`` and ``OUT_DIR/run_info.json``.

    python scripts/run_ablation.py -d 501                                   # everything, 3 folds, 3d_fullres
    python scripts/run_ablation.py -d 501 --rows hpn_union --backbones unet # hpn + hpn_virtual, then their union
    python scripts/run_ablation.py -d 501 -c 3d_cpu --cpu-config 32 48 48 --device cpu \\
        --epochs 5 --iterations 20 --val-iterations 2                      # a small CPU run

Re-running with everything trained only redoes collection, derived rows and evaluation.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from hpn_experiments.ablation import (BACKBONES, PAPER_ROWS, PREDICTION_SUFFIXES, ROWS, Backbone,
                                      Progress, evaluate_row, format_csv, format_duration, format_markdown,
                                      fold_state, fresh_folder, make_fusion, make_union, table_records, trainer_name)
from hpn_experiments.commands import nnunet_env, run_command
from nnunet_hpn.budget import BUDGET_ENV, NO_TTA_ENV, SEED_ENV
from nnunet_hpn.errors import HPNInputError
from nnunet_hpn.evaluate.metrics import EvaluationResult


#: --epochs / --iterations / --val-iterations / --save-every -> the trainer attribute its environment variable sets.
BUDGET_FLAGS: dict[str, str] = {"epochs": "num_epochs", "iterations": "num_iterations_per_epoch",
                                "val_iterations": "num_val_iterations_per_epoch", "save_every": "save_every"}
#: --epochs ... -> environment variable read by every HPN trainer (nnunet_hpn.budget).
BUDGET_VARIABLES: dict[str, str] = {flag: next(variable for variable, name in BUDGET_ENV.items() if name == attribute)
                                    for flag, attribute in BUDGET_FLAGS.items()}

#: nnUNetTrainer's own budget, used when neither the flags nor the environment set one.
DEFAULT_BUDGET: dict[str, int] = {"epochs": 1000, "iterations": 250, "val_iterations": 50, "save_every": 50}


class AblationError(RuntimeError):
    """A problem the user can fix; printed as one line, exit status 1."""


# --------------------------------------------------------------------------------------------------------- arguments

def _rows_help() -> str:
    lines = ["rows (paper order; derived rows pull in the rows they need):"]
    for row in ROWS.values():
        source = f"trainer {row.trainer}" if row.trainer else f"derived from {' + '.join(row.needs)}"
        lines.append(f"  {row.name:<13} {row.label}: {source}")
    lines.append("backbones:")
    for backbone in BACKBONES.values():
        lines.append(f"  {backbone.name:<13} {backbone.label}: -p {backbone.plans} (planner {backbone.planner})")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_ablation.py", description=__doc__.split("\n\n")[0],
        epilog=_rows_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", "--dataset", required=True, help="dataset id (e.g. 501) or name (Dataset501_X)")
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(PAPER_ROWS), metavar="ROW",
                        help="rows to produce (default: the paper's nine); see the list below")
    parser.add_argument("--backbones", nargs="+", choices=list(BACKBONES), default=list(BACKBONES),
                        help="default: unet resdsn")
    parser.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2], help="folds to train (default 0 1 2)")
    parser.add_argument("--n-splits", type=int, default=None,
                        help="folds of splits_final.json when it is written (default: max(3, largest fold + 1))")
    parser.add_argument("-c", "--configuration", default="3d_fullres",
                        help="nnU-Net configuration (default 3d_fullres)")
    parser.add_argument("--cpu-config", nargs=3, type=int, metavar=("PATCHZ", "PATCHY", "PATCHX"),
                        help="add configuration -c with this patch (small, narrow network) to each plans file "
                             "that lacks it (nnunet_hpn.nnunet.plans_tools.add_small_configuration)")
    parser.add_argument("--epochs", type=int, help="epochs per training (env HPN_NUM_EPOCHS); default: trainer's")
    parser.add_argument("--iterations", type=int, help="iterations per epoch (env HPN_ITERATIONS_PER_EPOCH)")
    parser.add_argument("--val-iterations", type=int,
                        help="validation iterations per epoch (env HPN_VAL_ITERATIONS_PER_EPOCH)")
    parser.add_argument("--save-every", type=int,
                        help="epochs between checkpoint_latest.pth writes (env HPN_SAVE_EVERY; nnU-Net: 50)")
    parser.add_argument("--training-seed", type=int,
                        help="seed of every training's global generators (env HPN_SEED; default: unseeded)")
    parser.add_argument("--no-tta", action="store_true",
                        help="no test-time mirroring in the final validation (env HPN_NO_TTA=1; CPU budgets)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="nnUNetv2_train -device (default: cuda if available, else cpu)")
    parser.add_argument("-o", "--out-dir", help="default: $nnUNet_results/<dataset>/hpn_ablation_<configuration>")
    parser.add_argument("--seed", type=int, default=12345, help="seed of the PDAC-stratified split (default 12345)")
    parser.add_argument("--trainer-variant", default="", metavar="SUFFIX",
                        help="appended to every row's trainer name, e.g. _balanced: every row with the balanced "
                             "recipe (nnunet_hpn/nnunet/trainers/balanced.py); default: the rows' own trainers")
    parser.add_argument("-np", "--num-processes", type=int, default=2,
                        help="processes for preprocessing and ensembling (default 2)")
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if any(fold < 0 for fold in args.folds):
        parser.error("--folds must be >= 0")
    args.folds = sorted(set(args.folds))
    if args.n_splits is None:
        args.n_splits = max(3, max(args.folds) + 1)
    if args.n_splits < 2 or args.n_splits <= max(args.folds):
        parser.error(f"--n-splits {args.n_splits} must be >= 2 and larger than the largest fold {max(args.folds)}")
    for key in BUDGET_VARIABLES:
        value = getattr(args, key)
        if value is not None and value < 1:
            parser.error(f"--{key.replace('_', '-')} must be >= 1")
    return args


def resolve_rows(requested: Sequence[str]) -> list[str]:
    """``requested`` plus every row a derived row needs (recursively), in the paper's order."""
    wanted: set[str] = set()
    pending = list(requested)
    while pending:
        name = pending.pop()
        if name not in ROWS:
            raise AblationError(f"unknown row {name!r}; choose from {', '.join(ROWS)}")
        if name not in wanted:
            wanted.add(name)
            pending.extend(ROWS[name].needs)
    return [name for name in ROWS if name in wanted]


def trained_rows(rows: Sequence[str]) -> list[str]:
    """The rows of ``rows`` that are trained (have a trainer), in the given order."""
    return [name for name in rows if ROWS[name].trainer is not None]


# ------------------------------------------------------------------------------------------------------ environment


def nnunet_folder(env: dict[str, str], variable: str) -> Path:
    value = env.get(variable)
    if not value:
        raise AblationError(f"{variable}: environment variable is not set")
    return Path(value)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def build_env(args: argparse.Namespace, base: Optional[dict[str, str]] = None) -> dict[str, str]:
    """Environment of the stock commands: inherited, plus worker counts, no torch.compile on CPU, the budget."""
    defaults = {"nnUNet_def_n_proc": str(args.num_processes)}
    if args.device == "cpu":
        defaults.update({"nnUNet_compile": "f", "nnUNet_n_proc_DA": str(max(1, min(4, os.cpu_count() or 1)))})
    settings = {variable: str(getattr(args, key)) for key, variable in BUDGET_VARIABLES.items()
                if getattr(args, key) is not None}
    if getattr(args, "no_tta", False):
        settings[NO_TTA_ENV] = "1"
    if getattr(args, "training_seed", None) is not None:
        settings[SEED_ENV] = str(args.training_seed)
    return nnunet_env(base=base, settings=settings, defaults=defaults)


def effective_budget(env: dict[str, str]) -> dict[str, Any]:
    """Epochs, iterations and validation iterations the trainers will use (environment, else nnU-Net's)."""
    budget: dict[str, Any] = {}
    for key, variable in BUDGET_VARIABLES.items():
        budget[key] = int(env[variable]) if env.get(variable) else DEFAULT_BUDGET[key]
    budget["source"] = "HPN_* environment" if any(env.get(v) for v in BUDGET_VARIABLES.values()) else "trainer default"
    budget["test_time_mirroring"] = env.get(NO_TTA_ENV) != "1"
    budget["training_seed"] = int(env[SEED_ENV]) if env.get(SEED_ENV) else None
    return budget


# ---------------------------------------------------------------------------------------------------------- dataset

@dataclass(frozen=True)
class Dataset:
    name: str
    raw: Path
    preprocessed: Path
    results: Path

    @property
    def labels(self) -> Path:
        return self.raw / "labelsTr"

    def file_ending(self) -> str:
        return json.loads((self.raw / "dataset.json").read_text()).get("file_ending", ".nii.gz")


def find_dataset(dataset: str, env: dict[str, str]) -> Dataset:
    """The dataset named ``dataset`` (``501`` or ``Dataset501_Name``) in ``$nnUNet_raw`` (labels needed there)."""
    raw_root = nnunet_folder(env, "nnUNet_raw")
    preprocessed_root = nnunet_folder(env, "nnUNet_preprocessed")
    results_root = nnunet_folder(env, "nnUNet_results")
    if dataset.isdigit():
        prefix = f"Dataset{int(dataset):03d}_"
        names = sorted({path.name for root in (raw_root, preprocessed_root) if root.is_dir()
                        for path in root.iterdir() if path.is_dir() and path.name.startswith(prefix)})
        if not names:
            raise AblationError(f"dataset {dataset}: no {prefix}* folder in {raw_root} or {preprocessed_root}")
        if len(names) > 1:
            raise AblationError(f"dataset {dataset}: several folders match {prefix}*: {', '.join(names)}")
        name = names[0]
    else:
        name = dataset
    raw = raw_root / name
    if not (raw / "dataset.json").is_file() or not (raw / "labelsTr").is_dir():
        raise AblationError(f"{raw}: dataset not found (need dataset.json and labelsTr/ in $nnUNet_raw)")
    return Dataset(name, raw, preprocessed_root / name, results_root / name)


# ------------------------------------------------------------------------------------------------ step 1: the plans

def plans_file(dataset: Dataset, backbone: Backbone) -> Path:
    return dataset.preprocessed / f"{backbone.plans}.json"


def configuration_entry(plans: dict, configuration: str) -> dict:
    """A configuration of a plans dict with its ``inherits_from`` chain resolved."""
    configurations = plans["configurations"]
    entry: dict = {}
    seen: set[str] = set()
    while configuration is not None:
        if configuration in seen or configuration not in configurations:
            raise AblationError(f"plans {plans.get('plans_name')}: configuration {configuration!r} not found")
        seen.add(configuration)
        current = configurations[configuration]
        entry = {**current, **entry}
        configuration = current.get("inherits_from")
    entry.pop("inherits_from", None)
    return entry


def data_identifier(plans_path: Path, configuration: str = "3d_fullres") -> str:
    return configuration_entry(json.loads(plans_path.read_text()), configuration)["data_identifier"]


def has_preprocessed_data(dataset: Dataset, identifier: str) -> bool:
    folder = dataset.preprocessed / identifier
    return folder.is_dir() and any(folder.iterdir())


def ensure_plans(dataset: Dataset, backbone: Backbone, env: dict[str, str], progress: Progress,
                 num_processes: int) -> None:
    """Plan (and preprocess, unless the U-Net plans' data can be reused) when the backbone's plans are missing."""
    target = plans_file(dataset, backbone)
    if target.is_file():
        progress.log(f"{backbone.name}: plans {target.name} exist")
        return
    unet_plans = plans_file(dataset, BACKBONES["unet"])
    reusable = (backbone.name != "unet" and unet_plans.is_file()
                and (dataset.preprocessed / "dataset_fingerprint.json").is_file()
                and data_identifier(unet_plans) == f"{BACKBONES['unet'].plans}_3d_fullres"
                and has_preprocessed_data(dataset, data_identifier(unet_plans)))
    dataset_id = dataset.name[len("Dataset"):].split("_")[0]
    if reusable:
        run_command(["nnUNetv2_plan_experiment", "-d", dataset_id, "-pl", backbone.planner], env, progress.log)
        if data_identifier(target) != data_identifier(unet_plans):
            raise AblationError(f"{target}: data identifier {data_identifier(target)!r} differs from "
                                f"{data_identifier(unet_plans)!r} of {unet_plans.name}; preprocess it with "
                                f"nnUNetv2_plan_and_preprocess -pl {backbone.planner}")
    else:
        run_command(["nnUNetv2_plan_and_preprocess", "-d", dataset_id, "-pl", backbone.planner, "-c", "3d_fullres",
                     "-np", str(num_processes), "-npfp", str(num_processes)], env, progress.log)
    if not target.is_file():
        raise AblationError(f"{target}: planning finished but the plans file was not written")


def ensure_configuration(dataset: Dataset, backbone: Backbone, configuration: str,
                         cpu_patch: Optional[Sequence[int]], progress: Progress) -> None:
    """Add the small configuration ``configuration`` if asked and missing; fail if the configuration is absent."""
    path = plans_file(dataset, backbone)
    plans = json.loads(path.read_text())
    if configuration not in plans["configurations"]:
        if cpu_patch is None:
            raise AblationError(f"{path}: no configuration {configuration!r} (available: "
                                f"{', '.join(plans['configurations'])}); pass --cpu-config Z Y X to add it")
        from nnunet_hpn.nnunet.plans_tools import add_small_configuration

        entry = add_small_configuration(path, configuration, patch_size=tuple(cpu_patch))
        progress.log(f"{backbone.name}: added configuration {configuration!r} to {path.name} "
                     f"(patch {entry['patch_size']})")
        plans = json.loads(path.read_text())
    identifier = configuration_entry(plans, configuration)["data_identifier"]
    if not has_preprocessed_data(dataset, identifier):
        raise AblationError(f"{dataset.preprocessed / identifier}: no preprocessed data for {backbone.plans} "
                            f"{configuration}; run nnUNetv2_preprocess -d ... -plans_name {backbone.plans} "
                            f"-c {configuration}")


# ------------------------------------------------------------------------------------------------ step 2: the split

def ensure_splits(dataset: Dataset, folds: Sequence[int], n_splits: int, seed: int, progress: Progress) -> int:
    """Write a PDAC-stratified ``splits_final.json`` if missing; check that it has every fold. Returns its folds."""
    splits_path = dataset.preprocessed / "splits_final.json"
    if not splits_path.is_file():
        from nnunet_hpn.nnunet.splits import write_crossval_splits

        write_crossval_splits(dataset.preprocessed, n_folds=n_splits, seed=seed, labels_dir=dataset.labels,
                              file_ending=dataset.file_ending())
        progress.log(f"wrote {splits_path} ({n_splits} folds, PDAC-stratified, seed {seed})")
    splits = json.loads(splits_path.read_text())
    if max(folds) >= len(splits):
        raise AblationError(f"{splits_path}: has {len(splits)} folds, fold {max(folds)} requested "
                            f"(nnU-Net would silently use a random split); delete it or choose other folds")
    progress.log(f"split {splits_path.name}: {len(splits)} folds, "
                 f"validation cases per fold {[len(split['val']) for split in splits]}")
    return len(splits)


# --------------------------------------------------------------------------------------------------- step 3: train


def model_folder(dataset: Dataset, row: str, backbone: Backbone, configuration: str, variant: str = "") -> Path:
    return dataset.results / f"{trainer_name(row, variant)}__{backbone.plans}__{configuration}"


def train_command(dataset_id: str, configuration: str, fold: int, trainer: str, plans: str, device: str,
                  state: str) -> list[str]:
    """The ``nnUNetv2_train`` arguments for a fold in ``state`` (not ``done``)."""
    command = ["nnUNetv2_train", dataset_id, configuration, str(fold), "-tr", trainer, "-p", plans, "--npz",
               "-device", device]
    if state == "resume":
        command.append("--c")
    elif state == "validate":
        command.append("--val")
    elif state != "new":
        raise ValueError(f"no training command for state {state!r}")
    return command


def train_all(dataset: Dataset, backbones: Sequence[Backbone], rows: Sequence[str], folds: Sequence[int],
              args: argparse.Namespace, env: dict[str, str], progress: Progress) -> dict[str, dict]:
    """Train every backbone × row × fold that is not finished; returns wall times of the runs made here."""
    dataset_id = dataset.name[len("Dataset"):].split("_")[0]
    jobs = [(backbone, row, fold) for backbone in backbones for row in rows for fold in folds]
    trainings: dict[str, dict] = {}
    for number, (backbone, row, fold) in enumerate(jobs, 1):
        key = f"{backbone.name}/{row}/fold_{fold}"
        trainer = trainer_name(row, args.trainer_variant)
        fold_dir = model_folder(dataset, row, backbone, args.configuration, args.trainer_variant) / f"fold_{fold}"
        state = fold_state(fold_dir)
        if state == "done":
            progress.log(f"train {number}/{len(jobs)} {key}: skip (checkpoint_final.pth and validation exist)")
            continue
        what = {"new": "training", "resume": "resuming from checkpoint_latest.pth",
                "validate": "validation only (checkpoint_final.pth exists, .npz missing)"}[state]
        progress.log(f"train {number}/{len(jobs)} {key}: {what} ({trainer}, {backbone.plans})")
        seconds = run_command(train_command(dataset_id, args.configuration, fold, trainer, backbone.plans,
                                            args.device, state), env, progress.log)
        progress.log(f"train {number}/{len(jobs)} {key}: finished in {format_duration(seconds)}")
        trainings[key] = {"seconds": round(seconds, 1), "mode": state,
                          "finished": datetime.datetime.now().isoformat(timespec="seconds")}
    return trainings


# ------------------------------------------------------------------------------------------------- step 4: collect

def _link_or_copy(source: Path, target: Path) -> None:
    """Hard link (fast, no space) where possible, else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def collect_row(dataset: Dataset, backbone: Backbone, row: str, folds: Sequence[int], configuration: str,
                out_dir: Path, variant: str = "") -> int:
    """Copy the validation predictions of every fold (plus plans.json and dataset.json of the model folder) into
    ``out_dir``, replacing what was there. Returns the number of cases."""
    model = model_folder(dataset, row, backbone, configuration, variant)
    fresh_folder(out_dir)
    for name in ("plans.json", "dataset.json"):
        if not (model / name).is_file():
            raise AblationError(f"{model / name}: missing (was the model trained?)")
        shutil.copy2(model / name, out_dir / name)
    cases = 0
    for fold in folds:
        validation = model / f"fold_{fold}" / "validation"
        files = sorted(path for path in validation.glob("*") if path.name.endswith(PREDICTION_SUFFIXES)) \
            if validation.is_dir() else []
        if not any(path.name.endswith(".npz") for path in files):
            raise AblationError(f"{validation}: no validation predictions with probabilities (.npz)")
        for path in files:
            if (out_dir / path.name).exists():
                raise AblationError(f"{path}: case predicted by more than one fold (overlapping splits?)")
            _link_or_copy(path, out_dir / path.name)
        cases += sum(path.name.endswith(".npz") for path in files)
    return cases


# ------------------------------------------------------------------------------------------------ step 5: evaluate


# --------------------------------------------------------------------------------------------------- step 6: table

def budget_line(args: argparse.Namespace, budget: dict[str, Any], wall_seconds: float,
                training_seconds: float) -> str:
    return (f"Budget: {budget['epochs']} epochs × {budget['iterations']} iterations "
            f"({budget['val_iterations']} validation iterations/epoch; {budget['source']}), "
            f"folds {' '.join(map(str, args.folds))} (of {args.n_splits_used} in splits_final.json), "
            f"configuration {args.configuration}, device {args.device}, "
            f"date {datetime.date.today().isoformat()}, wall time {format_duration(wall_seconds)} "
            f"(training time recorded over all runs: {format_duration(training_seconds)})")


# ---------------------------------------------------------------------------------------------------------- driver

def load_previous_trainings(path: Path) -> dict[str, dict]:
    try:
        return dict(json.loads(path.read_text()).get("trainings", {}))
    except (OSError, ValueError, AttributeError):
        return {}


def default_out_dir(dataset: Dataset, configuration: str) -> Path:
    return dataset.results / f"hpn_ablation_{configuration}"


def run(args: argparse.Namespace, argv: Sequence[str]) -> None:
    progress = Progress()
    started = datetime.datetime.now().isoformat(timespec="seconds")
    if args.device is None:
        args.device = default_device()
    env = build_env(args)
    budget = effective_budget(env)
    dataset = find_dataset(args.dataset, env)
    rows = resolve_rows(args.rows)
    backbones = [BACKBONES[name] for name in args.backbones]
    out_dir = Path(args.out_dir) if args.out_dir else default_out_dir(dataset, args.configuration)
    progress.log(f"dataset {dataset.name}; rows {' '.join(rows)}; backbones {' '.join(args.backbones)}; "
                 f"folds {args.folds}; configuration {args.configuration}; device {args.device}; "
                 f"budget {budget['epochs']}×{budget['iterations']} ({budget['source']}); output {out_dir}")

    start = time.monotonic()
    progress.log("step 1/5: plans")
    for backbone in backbones:
        ensure_plans(dataset, backbone, env, progress, args.num_processes)
        ensure_configuration(dataset, backbone, args.configuration, args.cpu_config, progress)
    progress.step("plans", time.monotonic() - start)

    start = time.monotonic()
    progress.log("step 2/5: cross-validation split")
    args.n_splits_used = ensure_splits(dataset, args.folds, args.n_splits, args.seed, progress)
    progress.step("splits", time.monotonic() - start)

    start = time.monotonic()
    progress.log("step 3/5: training")
    trainings = train_all(dataset, backbones, trained_rows(rows), args.folds, args, env, progress)
    progress.step("train", time.monotonic() - start)

    start = time.monotonic()
    progress.log(f"step 4/5: collecting cross-validation predictions into {out_dir}")
    file_ending = dataset.file_ending()
    row_dirs: dict[str, dict[str, Path]] = {}
    for backbone in backbones:
        dirs = row_dirs[backbone.name] = {row: out_dir / backbone.name / row for row in rows}
        for row in trained_rows(rows):
            cases = collect_row(dataset, backbone, row, args.folds, args.configuration, dirs[row],
                                args.trainer_variant)
            progress.log(f"collect {backbone.name}/{row}: {cases} cases")
        if "fusion" in rows:
            make_fusion(dirs, dirs["fusion"], env, progress, args.num_processes)
            progress.log(f"derived {backbone.name}/fusion: nnUNetv2_ensemble of arterial + venous")
        if "hpn_union" in rows:
            cases = make_union(dirs, dirs["hpn_union"], file_ending)
            progress.log(f"derived {backbone.name}/hpn_union: union of hpn + hpn_virtual, {cases} cases")
    progress.step("collect", time.monotonic() - start)

    start = time.monotonic()
    progress.log("step 5/5: evaluation")
    results: dict[tuple[str, str], EvaluationResult] = {}
    for backbone in backbones:
        for row in rows:
            result = results[(backbone.name, row)] = evaluate_row(row_dirs[backbone.name][row], dataset.labels,
                                                                  file_ending)
            dice = ", ".join(f"{target} {100 * result.mean(target):.1f}" for target in result.targets)
            progress.log(f"evaluate {backbone.name}/{row}: n={result.n_cases}, Dice % {dice}")
    progress.step("evaluate", time.monotonic() - start)

    run_info_path = out_dir / "run_info.json"
    all_trainings = {**load_previous_trainings(run_info_path), **trainings}
    wall = progress.elapsed()
    header = budget_line(args, budget, wall, sum(entry.get("seconds", 0.0) for entry in all_trainings.values()))
    records = table_records(results, args.backbones, rows)
    (out_dir / "table1.md").write_text(format_markdown(records, header), encoding="utf-8")
    (out_dir / "table1.csv").write_text(format_csv(records, header), encoding="utf-8")
    run_info = {"command": [sys.argv[0], *argv], "args": {k: v for k, v in vars(args).items()},
                "dataset": dataset.name, "rows": rows, "budget": budget, "started": started,
                "finished": datetime.datetime.now().isoformat(timespec="seconds"), "wall_seconds": round(wall, 1),
                "step_seconds": progress.steps, "trainings_this_run": sorted(trainings), "trainings": all_trainings}
    run_info_path.write_text(json.dumps(run_info, indent=2, default=str) + "\n")
    print((out_dir / "table1.md").read_text(encoding="utf-8"), flush=True)
    progress.log(f"done: {out_dir / 'table1.md'}, {out_dir / 'table1.csv'}, {run_info_path}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    try:
        run(args, argv)
    except (AblationError, HPNInputError) as error:
        print(f"run_ablation: error: {error}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as error:
        command = " ".join(Path(error.cmd[0]).name if i == 0 else str(part) for i, part in enumerate(error.cmd))
        print(f"run_ablation: error: '{command}' exited with status {error.returncode} (its output is above)",
              file=sys.stderr)
        return 1
    except FileNotFoundError as error:  # a console script of nnU-Net or nnunet-hpn that is not installed
        print(f"run_ablation: error: {error.filename}: not found (are nnunetv2 and nnunet-hpn installed in this "
              f"environment?)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("run_ablation: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
