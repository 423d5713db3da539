"""The CPU Table 1's data and training preset (``cpu_table1.py``), on which the misalignment, two-stage and liver
studies build: its phantoms and cropped, registered dataset, its ``run_ablation.py`` preset, one training per row
and fold, and the fold archive's layout (``folds/<row>/fold_<k>/`` or ``folds/<row>/seed_<s>/fold_<k>/``)."""
from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import sys
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

from hpn_experiments.ablation import (BACKBONES, PREDICTION_SUFFIXES, ROWS, Progress, fresh_folder, make_fusion,
                                      make_union, trainer_name)
from hpn_experiments.archive import ArchiveMismatch, fold_archive, is_archived
from hpn_experiments.commands import run_command
from nnunet_hpn.evaluate.metrics import EvaluationResult

#: the script that trains and evaluates the rows, run as a command
RUN_ABLATION = Path(__file__).resolve().parents[1] / "run_ablation.py"
N_CASES = 24
#: seed of the phantoms: 8 of its 24 cases are subtle in both phases (33 %), inside the documented 25-35 %
PHANTOM_SEED = 8
CROP_MARGIN_MM = 20.0
DATASET_ID = 510
DATASET_NAME = "PancreasROITable1"
CONFIGURATION = "3d_cpu"
PLANS = BACKBONES["unet"].plans
FOLDS: tuple[int, ...] = (0, 1, 2)
#: run_ablation.py arguments shared by every training: 80 epochs × 25 iterations = 2,000 iterations (training seed
#: and trainer variant: :func:`preset`)
PRESET_WITHOUT_SEED: tuple[str, ...] = (
    "--backbones", "unet", "-c", CONFIGURATION, "--cpu-config", "32", "32", "32", "--epochs", "80", "--iterations",
    "25", "--val-iterations", "2", "--save-every", "5", "--no-tta", "--device", "cpu", "--seed", "12345", "-np", "2")
#: the earlier run's arguments (training seed 1234), which the misalignment and two-stage studies train with
PRESET: tuple[str, ...] = (*PRESET_WITHOUT_SEED, "--training-seed", "1234")
#: rows of the table, in the paper's order (then the warm-up row)
ORDER: tuple[str, ...] = ("arterial", "venous", "fusion", "early_fusion", "hypernet", "hypernet_aug", "hpn",
                          "hpn_virtual", "hpn_union", "hpn_warmup")
#: order of training: the baselines, then the rows of the headline comparison (HPN, virtual pairs, their union),
#: then the other ablation rows
TRAINING_ORDER: tuple[str, ...] = ("arterial", "venous", "early_fusion", "hpn", "hpn_virtual", "hypernet",
                                   "hypernet_aug", "hpn_warmup")
#: rows whose probabilities (.npz/.pkl) are archived too: late fusion averages them
PROBABILITY_ROWS: frozenset[str] = frozenset(ROWS["fusion"].needs)


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


#: trainer attributes of nnU-Net's debug.json recorded with each archived fold
BUDGET_KEYS: tuple[str, ...] = ("num_epochs", "num_iterations_per_epoch", "num_val_iterations_per_epoch",
                                "save_every", "initial_lr", "batch_size", "patch_size")


def prepare_phantom_dataset(workdir: Path, env: dict[str, str], dataset_id: int, dataset_name: str, n_cases: int,
                            seed: int, crop_margin_mm: float, preset: Optional[str] = None) -> Path:
    """``nnunet-hpn phantom`` (``preset``, default pancreas) into ``workdir/phantoms`` and ``nnunet-hpn convert
    --register --crop-to-label`` into ``workdir/nnUNet_raw`` (a preset's ``labels.json`` as ``--labels``); each step
    skipped when its output is there. Returns the raw dataset's folder."""
    raw = workdir / "nnUNet_raw" / f"Dataset{dataset_id:03d}_{dataset_name}"
    if (raw / "dataset.json").is_file():
        print(f"dataset {raw} exists", flush=True)
        return raw
    phantoms = workdir / "phantoms"
    if not (phantoms / ("labels.json" if preset else "phantoms.json")).is_file():
        run_command(["nnunet-hpn", "phantom", str(phantoms), *(("--preset", preset) if preset else ()), "--cases",
                     str(n_cases), "--seed", str(seed)], env)
    labels = ("--labels", str(phantoms / "labels.json")) if preset else ()
    run_command(["nnunet-hpn", "convert", str(phantoms), "--dataset-id", str(dataset_id), "--name", dataset_name,
                 "--raw-root", env["nnUNet_raw"], *labels, "--register", "--crop-to-label", f"{crop_margin_mm:g}"],
                env)
    return raw


def prepare_dataset(workdir: Path, env: dict[str, str]) -> Path:
    """The table's phantoms and their cropped, registered raw dataset (skipped when present)."""
    return prepare_phantom_dataset(workdir, env, DATASET_ID, DATASET_NAME, N_CASES, PHANTOM_SEED, CROP_MARGIN_MM)


def preset(seed: int, variant: str = "") -> tuple[str, ...]:
    """run_ablation.py arguments of one training: :data:`PRESET`, the training seed, the trainer variant."""
    return (*PRESET_WITHOUT_SEED, "--training-seed", str(seed), *(("--trainer-variant", variant) if variant else ()))


def model_dir(results: Path, row: str, variant: str = "") -> Path:
    """nnU-Net's model folder of ``row`` (trainer with ``variant``) under the preset's plans and configuration."""
    return results / f"{trainer_name(row, variant)}__{PLANS}__{CONFIGURATION}"


def archive_fold(archive: Path, results: Path, row: str, fold: int, seconds: Optional[float],
                 seed: Optional[int] = None, variant: str = "") -> None:
    """Copy a finished fold's validation predictions, training log and model-folder JSONs into the archive
    (``seed``: the per-seed layout); ``fold.json`` is written last, so that a half-copied fold is not taken as
    archived."""
    model = model_dir(results, row, variant)
    source = model / f"fold_{fold}"
    suffixes = PREDICTION_SUFFIXES if row in PROBABILITY_ROWS else (".nii.gz",)
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
    info = {"row": row, "fold": fold, "seed": seed, "trainer": trainer_name(row, variant),
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
    run_command([sys.executable, str(RUN_ABLATION), "-d", str(DATASET_ID), *preset(seed, protocol.trainer_variant),
                 "--folds", str(fold), "--rows", row, "-o", str(out)], env)
    trainings = json.loads((out / "run_info.json").read_text())["trainings"]
    entry = trainings.get(f"unet/{row}/fold_{fold}")
    return entry["seconds"] if entry else None


def assemble_rows(archive: Path, rows_dir: Path, env: dict[str, str], seed: Optional[int] = None,
                  order: Sequence[str] = ORDER) -> list[str]:
    """Every row with all folds archived (for ``seed``, in the per-seed layout; and every derived row whose inputs
    are there) as one prediction folder ``rows_dir/<row>``; returns the rows, in ``order``."""
    complete: list[str] = []
    for row in order:
        spec = ROWS[row]
        folder = rows_dir / row
        if spec.trainer is not None:
            if not all(is_archived(archive, row, fold, seed) for fold in FOLDS):
                continue
            fresh_folder(folder)
            for name in ("plans.json", "dataset.json"):
                shutil.copy2(archive / row / name, folder / name)
            for fold in FOLDS:
                for path in fold_archive(archive, row, fold, seed).glob("*"):
                    if path.name.endswith(PREDICTION_SUFFIXES):
                        if (folder / path.name).exists():
                            raise ArchiveMismatch(f"{path}: case predicted by more than one fold")
                        shutil.copy2(path, folder / path.name)
        elif all(need in complete for need in spec.needs):
            dirs = {need: rows_dir / need for need in spec.needs}
            if row == "fusion":
                make_fusion(dirs, folder, env, Progress(), 2)
            else:
                make_union(dirs, folder, ".nii.gz")
        else:
            continue
        complete.append(row)
    return complete


def dice_per_case(result: EvaluationResult, cases: Sequence[str]) -> dict[str, dict[str, float]]:
    """``{case: {target: Dice %}}`` of an ``EvaluationResult`` (the studies' per-fold archive records)."""
    return {case: {target: round(100 * result.per_case_metrics[case][target]["Dice"], 4)
                   for target in result.per_case_metrics[case]} for case in cases}

