"""Evaluation of predicted label maps against ground truth, per HPN target: Dice, HD95 and NSD.

Targets are unions of labels, named by the dataset's label scheme (:mod:`nnunet_hpn.labels`: each label or region,
or the scheme's named unions; the paper's preset: :data:`TARGETS`). The per-case measures (Dice equal to nnU-Net's,
HD95 and NSD with MONAI, in mm from the image spacing) and their empty-mask convention are those of
:mod:`nnunet_hpn.measures`; every per-case value is finite, so aggregates are never NaN, and a case where exactly one
of truth and prediction is empty stays in the mean and is counted per target in ``one_empty``.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from tqdm import tqdm

from nnunet_hpn.io.publish import write_text_atomically
from nnunet_hpn.errors import HPNInputError
from nnunet_hpn.io.case_layout import QC_FOLDER
from nnunet_hpn.io.geometry import grid_difference
from nnunet_hpn.io.images import read_label
from nnunet_hpn.io.listing import case_files
from nnunet_hpn.labels import PDAC_SCHEME, LabelScheme, resolve_scheme
from nnunet_hpn.measures import DEFAULT_TOLERANCE_MM, dice_from_masks, surface_metrics, target_mask

#: The paper's evaluated targets: name -> labels whose union forms the target mask (the preset's
#: :attr:`~nnunet_hpn.labels.LabelScheme.target_values`).
TARGETS: dict[str, tuple[int, ...]] = PDAC_SCHEME.target_values

#: Metric names in results; HD95 is in mm, Dice and NSD are fractions in [0, 1].
METRICS: tuple[str, ...] = ("Dice", "HD95", "NSD")

#: Unit of each metric as written in tables and CSV headers.
METRIC_UNITS: dict[str, str] = {"Dice": "", "HD95": "mm", "NSD": ""}

#: One-line statement of the empty-mask convention (CLI help, reports, JSON).
EMPTY_CONVENTION: str = ("both masks empty: Dice 1, HD95 0 mm, NSD 1; exactly one empty: Dice 0, NSD 0, "
                         "HD95 = image diagonal in mm (counted in one_empty); aggregates are over all cases")


def dice_per_target(pred: np.ndarray, truth: np.ndarray,
                    targets: Mapping[str, tuple[int, ...]] = TARGETS) -> dict[str, float]:
    """Dice per target of ``targets`` (each target = union of its labels; default the paper's :data:`TARGETS`).

    Both empty -> 1.0, exactly one empty -> 0.0, never NaN. ``pred`` and ``truth`` must have the same shape.
    """
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from truth shape {truth.shape}")
    return {name: dice_from_masks(target_mask(truth, labels), target_mask(pred, labels))
            for name, labels in targets.items()}


def metrics_per_target(pred: np.ndarray, truth: np.ndarray, spacing_zyx: Sequence[float],
                       tolerance_mm: float = DEFAULT_TOLERANCE_MM, surface: bool = True,
                       targets: Mapping[str, tuple[int, ...]] = TARGETS) -> dict[str, dict[str, float]]:
    """``{target: {"Dice": .., "HD95": mm, "NSD": ..}}`` for (z, y, x) label maps; only Dice if not ``surface``."""
    dice = dice_per_target(pred, truth, targets)
    result: dict[str, dict[str, float]] = {}
    for name, labels in targets.items():
        result[name] = {"Dice": dice[name]}
        if surface:
            hd95, nsd = surface_metrics(target_mask(truth, labels), target_mask(pred, labels), spacing_zyx,
                                        tolerance_mm)
            result[name].update({"HD95": hd95, "NSD": nsd})
    return result


#: what a folder of predictions holds and a folder of ground truth does not: nnUNetv2_predict's records, nnU-Net's
#: validation summary, ``nnunet-hpn predict``'s registration QC (and probabilities, ``*.npz``)
PREDICTION_FOLDER_MARKERS: tuple[str, ...] = ("predict_from_raw_data_args.json", "plans.json", "summary.json",
                                              QC_FOLDER)


def prediction_folder_marker(folder: Path) -> str | None:
    """The first entry of ``folder`` that only prediction folders hold (:data:`PREDICTION_FOLDER_MARKERS`, a
    ``.npz``), or None."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    for name in PREDICTION_FOLDER_MARKERS:
        if (folder / name).exists():
            return name
    probabilities = next(folder.glob("*.npz"), None)
    return probabilities.name if probabilities else None


def check_folder_order(truth_dir: Path, pred_dir: Path) -> None:
    """HPNInputError when ``truth_dir`` looks like a prediction folder and ``pred_dir`` does not (the folders given in
    the reverse of nnU-Net's ``GT PRED`` order)."""
    marker = prediction_folder_marker(truth_dir)
    if marker and not prediction_folder_marker(pred_dir):
        raise HPNInputError(f"{truth_dir}: given as GT_DIR but looks like a prediction folder (it holds {marker}) "
                            f"and {pred_dir} does not; the order is nnU-Net's: GT_DIR PRED_DIR")


def _mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and population std (ddof=0); (0, 0) for no values. Raises if a value is not finite."""
    array = np.asarray(list(values), dtype=float)
    if array.size == 0:
        return 0.0, 0.0
    if not np.all(np.isfinite(array)):
        raise RuntimeError("non-finite per-case metric value")
    return float(array.mean()), float(array.std(ddof=0))


@dataclass(frozen=True)
class EvaluationResult:
    """What :func:`evaluate_folders` measured: every metric per case and target, and which targets the truth has.

    ``per_case_metrics[case][target][metric]`` (cases in evaluation order, targets of the label scheme in its
    order, ``metrics`` of :data:`METRICS` or Dice only); ``truth_present[case][target]``; ``one_empty[target]``
    (every target, in order): cases where exactly one of truth / prediction is empty. Aggregates (population std, ddof=0) and counts are derived. ``to_json()``
    is the ``summary.json`` form (:func:`write_summary`), ``from_json`` reads it back.
    """

    per_case_metrics: dict[str, dict[str, dict[str, float]]]
    truth_present: dict[str, dict[str, bool]]
    one_empty: dict[str, int]
    metrics: tuple[str, ...] = METRICS
    tolerance_mm: float = DEFAULT_TOLERANCE_MM

    @property
    def cases(self) -> list[str]:
        return list(self.per_case_metrics)

    @property
    def n_cases(self) -> int:
        return len(self.per_case_metrics)

    @property
    def targets(self) -> list[str]:
        """The evaluated targets, in the label scheme's order."""
        return list(self.one_empty)

    def value(self, case: str, target: str, metric: str = "Dice") -> float:
        return self.per_case_metrics[case][target][metric]

    def values(self, target: str, metric: str = "Dice", cases: Sequence[str] | None = None) -> list[float]:
        """The per-case values of one target and metric, in ``cases`` order (default: all, evaluation order)."""
        return [self.per_case_metrics[case][target][metric] for case in (self.cases if cases is None else cases)]

    def mean(self, target: str, metric: str = "Dice") -> float:
        return _mean_std(self.values(target, metric))[0]

    def std(self, target: str, metric: str = "Dice") -> float:
        return _mean_std(self.values(target, metric))[1]

    def present(self, target: str) -> int:
        """Cases whose truth has ``target``."""
        return sum(present[target] for present in self.truth_present.values())

    def missed(self, target: str) -> int:
        """Cases whose truth has ``target`` and whose prediction scores Dice 0 on it."""
        return sum(self.truth_present[case][target] and self.value(case, target) == 0.0 for case in self.cases)

    def to_json(self) -> dict[str, Any]:
        targets = self.targets
        means, stds = {t: self.mean(t) for t in targets}, {t: self.std(t) for t in targets}
        return {"per_case": {case: {t: self.value(case, t) for t in targets} for case in self.cases},
                "mean": means, "std": stds, "n_cases": self.n_cases,
                "present": {t: self.present(t) for t in targets}, "missed": {t: self.missed(t) for t in targets},
                "one_empty": dict(self.one_empty), "metrics": list(self.metrics),
                "per_case_metrics": self.per_case_metrics, "truth_present": self.truth_present,
                "aggregate": {t: {m: {"mean": self.mean(t, m), "std": self.std(t, m)} for m in self.metrics}
                              for t in targets},
                "tolerance_mm": float(self.tolerance_mm), "empty_convention": EMPTY_CONVENTION}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "EvaluationResult":
        return cls(data["per_case_metrics"], data["truth_present"], data["one_empty"], tuple(data["metrics"]),
                   float(data["tolerance_mm"]))


def evaluate_case(truth_file: Path, pred_file: Path, tolerance_mm: float = DEFAULT_TOLERANCE_MM,
                  surface: bool = True, scheme: LabelScheme = PDAC_SCHEME
                  ) -> tuple[dict[str, dict[str, float]], dict[str, bool], dict[str, int]]:
    """One case: metrics per target of ``scheme``, whether the truth has each target, and whether exactly one of
    truth and prediction is empty per target (0/1). HPNInputError for unreadable labels, values outside the scheme
    or different geometries."""
    truth, truth_image = read_label(truth_file, scheme)
    pred, pred_image = read_label(pred_file, scheme)
    difference = grid_difference(truth_image, pred_image)
    if difference is not None:
        raise HPNInputError(f"{pred_file}: geometry differs from {truth_file}: {difference} (prediction vs truth)")
    spacing_zyx = tuple(reversed(truth_image.GetSpacing()))
    targets = scheme.target_values
    metrics = metrics_per_target(pred, truth, spacing_zyx, tolerance_mm, surface=surface, targets=targets)
    present, one_empty = {}, {}
    for name, labels in targets.items():
        truth_any, pred_any = bool(target_mask(truth, labels).any()), bool(target_mask(pred, labels).any())
        present[name] = truth_any
        one_empty[name] = int(truth_any != pred_any)
    return metrics, present, one_empty


def evaluate_folders(pred_dir: Path, truth_dir: Path, file_ending: str = ".nii.gz", *,
                     cases: Sequence[str] | None = None, tolerance_mm: float = DEFAULT_TOLERANCE_MM,
                     surface: bool = True, progress: bool | None = None,
                     description: str = "evaluating", n_processes: int = 1,
                     scheme: LabelScheme | None = None) -> EvaluationResult:
    """Dice, HD95 and NSD per case and target of ``pred_dir`` against ``truth_dir``.

    Targets and allowed label values: ``scheme`` (``-djfile``), else :func:`nnunet_hpn.labels.resolve_scheme` of the
    dataset.json beside ``truth_dir``, else beside ``pred_dir`` (nnU-Net writes the model's there), else the paper's.

    Evaluates every truth case (or only ``cases``). Each needs a truth and a prediction file ``<case><file_ending>``
    with the same geometry (size, spacing, origin, direction; tolerance 1e-4), otherwise HPNInputError. Other
    predictions are ignored. ``progress``: tqdm bar (None: only on a terminal). ``n_processes`` > 1: cases evaluated
    in that many worker processes (nnU-Net's ``-np``).

    Returns an :class:`EvaluationResult`. HD95 in mm; empty masks as in the module docstring.
    """
    pred_dir, truth_dir = Path(pred_dir), Path(truth_dir)
    truth_files = case_files(truth_dir, file_ending, "truth")
    if not pred_dir.is_dir():
        raise HPNInputError(f"{pred_dir}: prediction folder does not exist")
    if cases is not None:
        missing_truth = [case for case in cases if case not in truth_files]
        if missing_truth:
            raise HPNInputError(f"{truth_dir / (missing_truth[0] + file_ending)}: missing truth for predicted case "
                                f"{missing_truth[0]!r} ({len(missing_truth)} case(s) without truth)")
        truth_files = {case: truth_files[case] for case in cases}
    if not truth_files:
        raise HPNInputError(f"{pred_dir}: no cases to evaluate")
    metrics = METRICS if surface else ("Dice",)
    if scheme is None:
        scheme = resolve_scheme(None, (truth_dir, pred_dir))

    pairs = [(truth_file, pred_dir / truth_file.name) for truth_file in truth_files.values()]
    for truth_file, pred_file in pairs:  # before any work: one line for the first missing file
        if not pred_file.is_file():
            raise HPNInputError(f"{pred_file}: missing prediction for truth case {truth_file}")
    jobs = [(truth_file, pred_file, tolerance_mm, surface, scheme) for truth_file, pred_file in pairs]
    bar_disabled = None if progress is None else not progress
    if n_processes > 1:
        from nnunet_hpn.processes import worker_pool

        with worker_pool(n_processes) as pool:
            outcomes = list(tqdm(pool.map(evaluate_case, *zip(*jobs)), total=len(jobs), desc=description,
                                 unit="case", disable=bar_disabled, leave=False))
    else:
        outcomes = [evaluate_case(*job) for job in tqdm(jobs, desc=description, unit="case", disable=bar_disabled,
                                                         leave=False)]
    per_case_metrics = {case: outcome[0] for case, outcome in zip(truth_files, outcomes)}
    truth_present = {case: outcome[1] for case, outcome in zip(truth_files, outcomes)}
    one_empty = {name: sum(outcome[2][name] for outcome in outcomes) for name in scheme.targets}
    return EvaluationResult(per_case_metrics, truth_present, one_empty, tuple(metrics), float(tolerance_mm))


def format_dice_table(result: EvaluationResult) -> str:
    """Plain-text table for a terminal: one row per target with Dice % (and HD95 mm, NSD % when the result has
    them) as mean ± std, then missed, present, n."""
    metrics = [metric for metric in result.metrics if metric in METRICS]
    titles = {"Dice": "Dice % (mean ± std)", "HD95": "HD95 mm (mean ± std)",
              "NSD": f"NSD@{result.tolerance_mm:g}mm % (mean ± std)"}
    header = ("target", *(titles[metric] for metric in metrics), "missed", "present", "n")

    def cell(name: str, metric: str) -> str:
        scale = 1.0 if metric == "HD95" else 100.0
        return f"{scale * result.mean(name, metric):.2f} ± {scale * result.std(name, metric):.2f}"

    rows = [(name, *(cell(name, metric) for metric in metrics), str(result.missed(name)), str(result.present(name)),
             str(result.n_cases)) for name in result.targets]
    widths = [max(len(row[column]) for row in (header, *rows)) for column in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:])]
        return "  ".join([first, *rest])

    rule = "-" * len(line(header))
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def metric_column(metric: str, target: str) -> str:
    """CSV column name of one metric of one target, e.g. ``Dice PDAC`` or ``HD95 mm duct``."""
    unit = METRIC_UNITS.get(metric, "")
    return f"{metric} {unit} {target}" if unit else f"{metric} {target}"


def write_summary(result: EvaluationResult, path_json: Path) -> tuple[Path, Path]:
    """Write ``result.to_json()`` to ``path_json`` and the per-case metrics as CSV next to it (same stem, ``.csv``).

    CSV columns: ``case``, then per target ``Dice <target>`` and, when computed, ``HD95 mm <target>`` and
    ``NSD <target>``. Returns (json path, csv path).
    """
    path_json = Path(path_json)
    path_json.parent.mkdir(parents=True, exist_ok=True)
    path_csv = path_json.with_suffix(".csv")
    write_text_atomically(path_json, json.dumps(result.to_json(), indent=2) + "\n")

    metrics = [metric for metric in result.metrics if metric in METRICS]
    lines = io.StringIO()
    writer = csv.writer(lines, lineterminator="\n")
    targets = result.targets
    writer.writerow(["case", *(metric_column(metric, name) for name in targets for metric in metrics)])
    for case in result.cases:
        writer.writerow([case, *(f"{result.value(case, name, metric):.6f}" for name in targets for metric in metrics)])
    write_text_atomically(path_csv, lines.getvalue())
    return path_json, path_csv
