"""The rows and backbones of the HPN paper's Table 1 (Zhou et al., MICCAI 2019), the derived rows (late fusion,
HPN union) and the Table-1 files (``table1.md`` / ``table1.csv``): shared by ``run_ablation.py``, which trains and
evaluates them, and the scripts that archive and assemble its folds."""
from __future__ import annotations

import csv
import io
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from hpn_experiments.commands import run_command
from nnunet_hpn.evaluate.metrics import EvaluationResult, evaluate_folders, write_summary
from nnunet_hpn.io.listing import predicted_cases


@dataclass(frozen=True)
class Row:
    """One row of Table 1: trained by ``trainer``, or derived from the rows in ``needs``."""

    name: str
    label: str
    trainer: Optional[str] = None
    needs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Backbone:
    """A backbone: the plans it trains with and the planner that writes them."""

    name: str
    label: str
    plans: str
    planner: str


#: The paper's nine rows, in its order.
_PAPER: tuple[Row, ...] = (
    Row("arterial", "single-phase (arterial)", "SinglePhaseTrainer_arterial"),
    Row("venous", "single-phase (venous)", "SinglePhaseTrainer_venous"),
    Row("fusion", "late fusion (mean of A + V probabilities)", needs=("arterial", "venous")),
    Row("early_fusion", "early fusion (2 channels, one path)", "EarlyFusionTrainer"),
    Row("hypernet", "HyperNet", "HyperNetTrainer"),
    Row("hypernet_aug", "HyperNet-aug", "HyperNetTrainer_virtual"),
    Row("hpn", "HPN (original pairs)", "HPNTrainer"),
    Row("hpn_virtual", "HPN (virtual pairs)", "HPNTrainer_virtual"),
    Row("hpn_union", "HPN (union of original + virtual)", needs=("hpn", "hpn_virtual")),
)
#: This project's additions to the paper's rows.
_EXTRA: tuple[Row, ...] = (
    Row("hpn_warmup", "HPN, λ ramped up over 12 epochs (original pairs)", "HPNTrainer_warmup"),
    Row("hpn_misalign", "HPN, misalignment augmentation (≤ 4 mm)", "HPNTrainer_misalign"),
    Row("early_fusion_misalign", "early fusion, misalignment augmentation (≤ 4 mm)", "EarlyFusionTrainer_misalign"),
    Row("hpn_stage2", "HPN as stage 2 of two-stage inference (label crops, box jitter)", "HPNTrainer_stage2"),
)
#: Table-1 rows: the paper's in its order, then this project's.
ROWS: dict[str, Row] = {row.name: row for row in (*_PAPER, *_EXTRA)}
#: The paper's nine rows (the default).
PAPER_ROWS: tuple[str, ...] = tuple(row.name for row in _PAPER)

#: The backbones: the plans each trains with and the planner that writes them.
BACKBONES: dict[str, Backbone] = {backbone.name: backbone for backbone in (
    Backbone("unet", "3D U-Net", "nnUNetHPNPlans", "HPNPlanner"),
    Backbone("resdsn", "3D-ResDSN", "nnUNetHPNResDSNPlans", "HPNResDSNPlanner"),
)}
#: Files of a fold's ``validation/`` folder that make up the cross-validation predictions.
PREDICTION_SUFFIXES: tuple[str, ...] = (".nii.gz", ".npz", ".pkl")
#: The targets of the paper's scheme: (evaluation target, column name). A table takes its targets from the
#: evaluation (the dataset's label scheme), so another scheme gets its own columns.
TARGET_COLUMNS: tuple[tuple[str, str], ...] = (("abnormal pancreas", "abnormal pancreas"), ("PDAC", "PDAC"),
                                               ("duct", "duct"))


class Progress:
    """Progress lines with the elapsed time, and wall time per step."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.steps: dict[str, float] = {}

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def log(self, message: str) -> None:
        print(f"[ablation {format_duration(self.elapsed()):>8}] {message}", flush=True)

    def step(self, name: str, seconds: float) -> None:
        self.steps[name] = round(self.steps.get(name, 0.0) + seconds, 2)


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


def trainer_name(row: str, variant: str = "") -> str:
    """The trainer of a trained row, with the ``--trainer-variant`` suffix (e.g. ``HPNTrainer_balanced``)."""
    return f"{ROWS[row].trainer}{variant}"


def fold_state(fold_dir: Path) -> str:
    """``done`` (final checkpoint and validation with probabilities), ``validate`` (final checkpoint, validation
    or its .npz missing), ``resume`` (checkpoint_latest.pth) or ``new``."""
    if (fold_dir / "checkpoint_final.pth").is_file():
        validation = fold_dir / "validation"
        if validation.is_dir() and any(validation.glob("*.npz")):
            return "done"
        return "validate"
    if (fold_dir / "checkpoint_latest.pth").is_file():
        return "resume"
    return "new"


def fresh_folder(folder: Path) -> Path:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def make_fusion(row_dirs: dict[str, Path], out_dir: Path, env: dict[str, str], progress: Progress,
                num_processes: int) -> None:
    fresh_folder(out_dir)
    run_command(["nnUNetv2_ensemble", "-i", str(row_dirs["arterial"]), str(row_dirs["venous"]), "-o", str(out_dir),
                 "-np", str(num_processes)], env, progress.log)


def make_union(row_dirs: dict[str, Path], out_dir: Path, file_ending: str) -> int:
    from nnunet_hpn.pipeline.union import union_folders

    fresh_folder(out_dir)
    return len(union_folders([row_dirs["hpn"], row_dirs["hpn_virtual"]], out_dir, file_ending))


def evaluate_row(pred_dir: Path, labels_dir: Path, file_ending: str) -> EvaluationResult:
    """``evaluate_folders`` on the predicted cases only; writes ``pred_dir/summary.json`` and ``summary.csv``."""
    result = evaluate_folders(pred_dir, labels_dir, file_ending, cases=predicted_cases(pred_dir, file_ending))
    write_summary(result, pred_dir / "summary.json")
    return result


def table_records(results: dict[tuple[str, str], EvaluationResult], backbones: Sequence[str],
                  rows: Sequence[str]) -> list[dict[str, Any]]:
    """One record per backbone × row (backbone blocks, rows in the paper's order)."""
    records = []
    for backbone in backbones:
        for row in rows:
            result = results[(backbone, row)]
            record: dict[str, Any] = {"backbone": BACKBONES[backbone].label, "row": row, "method": ROWS[row].label,
                                      "n": result.n_cases}
            for target in result.targets:
                record[f"{target} dice mean %"] = round(100 * result.mean(target), 2)
                record[f"{target} dice std %"] = round(100 * result.std(target), 2)
                record[f"{target} missed"] = result.missed(target)
                record[f"{target} present"] = result.present(target)
            records.append(record)
    return records


def record_targets(record: dict[str, Any]) -> list[str]:
    """The target columns of a :func:`table_records` record, in order."""
    return [key[: -len(" dice mean %")] for key in record if key.endswith(" dice mean %")]


def format_markdown(records: list[dict[str, Any]], header: str) -> str:
    targets = record_targets(records[0])
    columns = ["Backbone", "Method", "n", *(f"{column} DSC % (mean ± std)" for column in targets),
               *(f"{column} missed" for column in targets)]
    lines = ["# Table 1: HPN ablation (cross-validation)", "", header, "",
             "| " + " | ".join(columns) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(columns) - 2)) + "|"]
    for record in records:
        cells = [record["backbone"], record["method"], str(record["n"])]
        cells += [f"{record[f'{c} dice mean %']:.2f} ± {record[f'{c} dice std %']:.2f}" for c in targets]
        cells += [f"{record[f'{c} missed']}/{record[f'{c} present']}" for c in targets]
        lines.append("| " + " | ".join(cells) + " |")
    union = " (abnormal pancreas = labels 1∪2∪3)" if "abnormal pancreas" in targets else ""
    lines += ["", f"DSC: Dice similarity coefficient per case{union}, mean ± "
                  "population std over the cross-validation cases; missed: cases with the target in the truth and "
                  "Dice 0 / cases with the target."]
    return "\n".join(lines) + "\n"


def format_csv(records: list[dict[str, Any]], header: str) -> str:
    stream = io.StringIO()
    stream.write(f"# {header}\n")
    writer = csv.DictWriter(stream, fieldnames=list(records[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return stream.getvalue()
