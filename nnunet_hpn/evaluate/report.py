"""Table-1-style comparison of several methods' predictions against one truth folder (``nnunet-hpn report``).

For each method (a folder of predicted label maps, e.g. the cross-validation outputs of one trainer), every case
is evaluated with :func:`nnunet_hpn.evaluate.metrics.evaluate_folders` (Dice, HD95 in mm, NSD; empty masks as stated
there). The report folder then holds:

* ``report.md`` / ``report.csv``: mean ± population std per target and metric per method, missed counts, paired
  Wilcoxon signed-rank p-values of each method against the reference method (``scipy.stats.wilcoxon(method,
  reference)`` with SciPy's defaults: two-sided, zero differences dropped, exact or normal approximation chosen by
  SciPy; p = 1.0 when all paired differences are zero, where the test is undefined; no p-value, and a line saying
  so, for fewer than :data:`MIN_WILCOXON_CASES` cases);
* "missed by both single-phase models / rescued by HPN": cases with the lesion target (the label scheme's, PDAC for
  the paper's) in the truth where both single-phase methods have its Dice 0, and among those the cases where the HPN
  method has Dice > 0;
* ``per_case.csv`` (case × method × target) and ``report.json`` (everything);
* ``boxplot_<target>.png``: Dice, HD95 and NSD per method;
* ``overlays_largest_gain.png`` (with an images folder): every phase, truth and every method on the slice
  with the largest truth lesion area, for the cases where the reference gains most lesion Dice over the best other
  method (cases with the lesion in the truth; the first target if no case has it).

Targets, lesion and label colours come from the label scheme (:mod:`nnunet_hpn.labels`): ``-djfile``, else the
dataset.json beside the truth or the predictions, else the paper's.

Every method must hold predictions for exactly the same cases, each with a truth file of the same geometry.
Everything is written into a staging folder and moved into place at the end.
"""
from __future__ import annotations

import csv
import datetime
import io
import json
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from nnunet_hpn.io.publish import check_outputs, published_folder
from nnunet_hpn.errors import HPNInputError
from nnunet_hpn.evaluate.metrics import (DEFAULT_TOLERANCE_MM, EMPTY_CONVENTION, METRICS, EvaluationResult,
                                         evaluate_folders)
from nnunet_hpn.io.images import read_label
from nnunet_hpn.io.listing import predicted_cases
from nnunet_hpn.labels import LabelScheme, resolve_scheme
from nnunet_hpn.phases import PHASES, channel_file_name, read_channel_names

#: Column titles of the paper's targets in report tables (its Table 1 wording); other targets keep their names.
TARGET_TITLES: dict[str, str] = {"abnormal pancreas": "Abnormal pancreas", "PDAC": "PDAC mass",
                                 "duct": "Pancreatic duct"}


def target_title(target: str) -> str:
    """Column title of a target: :data:`TARGET_TITLES`, else its name."""
    return TARGET_TITLES.get(target, target)
#: Metrics where smaller is better.
LOWER_IS_BETTER: frozenset[str] = frozenset({"HD95"})
#: Single-phase method names assumed when none are given and both are among the methods.
DEFAULT_SINGLE_PHASE: tuple[str, str] = ("arterial", "venous")
#: Marker file of a report folder: an existing output folder is replaced only if it holds this file (or nothing).
REPORT_MARKER: str = "report.md"
WILCOXON_NOTE: str = ("paired two-sided Wilcoxon signed-rank test, scipy.stats.wilcoxon(method, reference) with "
                      "SciPy's defaults (zero differences dropped); p = 1 when all paired differences are zero")
#: Fewest paired cases given a Wilcoxon p: with n cases the smallest two-sided p of the exact test is 2 / 2**n, below
#: 0.05 only from 6 cases on. Fewer cases get no p-value (None), and the report says why.
MIN_WILCOXON_CASES: int = 6


def wilcoxon_note(n_cases: int) -> str:
    """What the report's p-values are for ``n_cases`` paired cases: the test, or why there is none."""
    if n_cases < MIN_WILCOXON_CASES:
        return (f"n = {n_cases}: too few cases for a Wilcoxon test (a two-sided p below 0.05 needs at least "
                f"{MIN_WILCOXON_CASES} paired cases); no p-values")
    return f"{WILCOXON_NOTE}; n = {n_cases} paired cases"


def _p_text(p_value: float | None, spec: str) -> str:
    """A p-value for a table: formatted with ``spec``, or "–" where there is none (too few cases)."""
    return "–" if p_value is None else format(p_value, spec)


def parse_method_args(specs: Sequence[str]) -> dict[str, Path]:
    """``["NAME=DIR", "DIR", ...]`` -> ``{name: folder}``; a bare DIR is named after its folder."""
    methods: dict[str, Path] = {}
    for spec in specs:
        name, separator, folder = spec.partition("=")
        if not separator:
            name, folder = Path(spec.rstrip("/")).name, spec
        if not name or not folder:
            raise HPNInputError(f"{spec}: expected NAME=PRED_DIR")
        if name in methods:
            raise HPNInputError(f"{spec}: method name {name!r} given twice")
        methods[name] = Path(folder)
    return methods


def paired_wilcoxon(values: Sequence[float], reference: Sequence[float]) -> float:
    """Two-sided p-value of SciPy's Wilcoxon signed-rank test on paired values; 1.0 if all differences are 0."""
    from scipy.stats import wilcoxon

    values, reference = np.asarray(values, dtype=float), np.asarray(reference, dtype=float)
    if values.shape != reference.shape:
        raise ValueError(f"paired samples differ in length: {values.shape} vs {reference.shape}")
    if values.size == 0 or np.all(values - reference == 0):
        return 1.0
    return float(wilcoxon(values, reference).pvalue)


def missed_and_rescued(results: Mapping[str, EvaluationResult], single_phase: Sequence[str], hpn: str,
                       target: str = "PDAC") -> dict[str, Any]:
    """Cases with ``target`` in the truth missed (Dice 0) by every single-phase method, and those of them where
    ``hpn`` has Dice > 0 (rescued)."""
    first = results[single_phase[0]]
    present = [case for case in first.cases if first.truth_present[case][target]]
    missed = [case for case in present
              if all(results[method].value(case, target) == 0.0 for method in single_phase)]
    rescued = [case for case in missed if results[hpn].value(case, target) > 0.0]
    return {"target": target, "single_phase": list(single_phase), "hpn": hpn, "n_present": len(present),
            "missed_by_all_single_phase": missed, "rescued": rescued}


def largest_gains(results: Mapping[str, EvaluationResult], reference: str, n: int,
                  lesion: str = "PDAC") -> tuple[str, list[dict], list[str]]:
    """The ``n`` cases where ``reference`` gains most Dice over the best other method, largest gain first; only
    cases with a gain (> 0), so fewer than ``n`` or none.

    Target ``lesion`` over the cases with it in the truth; the first target over all cases if none has it. A method
    with the reference's Dice in every one of these cases (a union whose lesion is that member's) is not compared:
    no case could show a gain over it. Returns (target, [{"case", "gain", "reference_dice", "best_other",
    "best_other_dice"}], the methods not compared).
    """
    ref = results[reference]
    target = lesion if ref.present(lesion) else ref.targets[0]
    cases = [case for case, present in ref.truth_present.items() if target != lesion or present[lesion]]
    same = [method for method in results if method != reference
            and all(results[method].value(case, target) == ref.value(case, target) for case in cases)]
    others = [method for method in results if method != reference and method not in same]
    rows = []
    for case in cases if others else ():
        best_other = max(others, key=lambda method: results[method].value(case, target))
        best_dice = results[best_other].value(case, target)
        reference_dice = ref.value(case, target)
        rows.append({"case": case, "gain": reference_dice - best_dice, "reference_dice": reference_dice,
                     "best_other": best_other, "best_other_dice": best_dice})
    rows = sorted((row for row in rows if row["gain"] > 0), key=lambda row: (-row["gain"], row["case"]))
    return target, rows[:n], same


def _earlier_report_files(out_dir: Path) -> set[str]:
    """The files the report in ``out_dir`` wrote, as its ``report.json`` lists them (none without one)."""
    try:
        earlier = json.loads((out_dir / "report.json").read_text(encoding="utf-8"))
        return {REPORT_MARKER, "report.csv", "per_case.csv", "report.json", *earlier.get("boxplots", {}).values(),
                *([earlier["overlays"]] if earlier.get("overlays") else [])}
    except (OSError, ValueError, AttributeError, TypeError):
        return set()


def _check_out_dir(out_dir: Path, inputs: Sequence[Path] = ()) -> None:
    """``out_dir`` may be absent, empty, or a previous report (holding :data:`REPORT_MARKER`), and writable; never
    an input (:func:`~nnunet_hpn.io.publish.check_outputs`)."""
    check_outputs([(out_dir, "-o", "folder")], inputs)
    if out_dir.exists():
        if any(out_dir.iterdir()) and not (out_dir / REPORT_MARKER).is_file():
            raise HPNInputError(f"{out_dir}: output folder is not empty and holds no {REPORT_MARKER}; "
                                f"refusing to replace it")


def _common_cases(methods: Mapping[str, Path], file_ending: str) -> list[str]:
    """The cases every method predicts; HPNInputError naming the first method whose cases differ."""
    cases: dict[str, list[str]] = {name: predicted_cases(folder, file_ending) for name, folder in methods.items()}
    first = next(iter(methods))
    for name, folder in methods.items():
        missing = sorted(set(cases[first]) - set(cases[name]))
        extra = sorted(set(cases[name]) - set(cases[first]))
        if missing or extra:
            def listing(names: list[str]) -> str:
                return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            parts = ([f"missing {listing(missing)}"] if missing else []) + ([f"extra {listing(extra)}"] if extra
                                                                            else [])
            raise HPNInputError(f"{folder}: cases of method {name!r} differ from those of {first!r} "
                                f"({methods[first]}): {'; '.join(parts)}")
    return cases[first]


def overlay_phase_names(images_dir: Path) -> list[str]:
    """Phase names of an imagesTr-style folder in channel order: the channel names of ``images_dir/../dataset.json``
    when there is one, else :data:`nnunet_hpn.phases.PHASES`."""
    dataset_json = images_dir.parent / "dataset.json"
    return read_channel_names(dataset_json) if dataset_json.is_file() else list(PHASES)


def _load_overlay_case(case: str, images_dir: Path, truth_dir: Path, methods: Mapping[str, Path],
                       file_ending: str, caption_target: str, results: Mapping[str, dict[str, Any]],
                       scheme: LabelScheme):
    """Read every phase (``<case>_0000`` ... of ``images_dir``, named by the channel names of the dataset.json
    next to it when there is one), truth and predictions of one case."""
    from nnunet_hpn.evaluate.figures import OverlayCase

    truth, truth_image = read_label(truth_dir / f"{case}{file_ending}", scheme)
    phases = {}
    for channel, name in enumerate(overlay_phase_names(images_dir)):
        path = images_dir / channel_file_name(case, channel, file_ending)
        if not path.is_file():
            raise HPNInputError(f"{path}: missing image for the overlay of case {case!r}")
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as error:
            raise HPNInputError(f"{path}: cannot be read as an image "
                                f"({str(error).strip().splitlines()[-1]})") from None
        if image.GetSize() != truth_image.GetSize():
            raise HPNInputError(f"{path}: size {image.GetSize()} differs from truth size {truth_image.GetSize()}")
        phases[name] = sitk.GetArrayFromImage(image).astype(np.float32)
    predictions = {name: read_label(folder / f"{case}{file_ending}", scheme)[0] for name, folder in methods.items()}
    captions = {name: f"{caption_target} Dice {100 * results[name].value(case, caption_target):.1f}%"
                for name in methods}
    return OverlayCase(title=case, phases=phases, truth=truth, predictions=predictions,
                       spacing_zyx=tuple(reversed(truth_image.GetSpacing())), captions=captions)


def target_note(scheme: LabelScheme) -> str:
    """The targets' definitions in label values, e.g. ``Abnormal pancreas = 1∪2∪3, PDAC mass = 2``."""
    parts = [f"{target_title(name)} = {'∪'.join(map(str, values))}" for name, values in scheme.target_values.items()]
    return "Targets (label values): " + ", ".join(parts)


def target_slug(target: str) -> str:
    """File-name form of a target name: ``abnormal pancreas`` -> ``abnormal_pancreas``."""
    return re.sub(r"[^A-Za-z0-9]+", "_", target).strip("_")


def _scaled(metric: str, value: float) -> float:
    """Table units: Dice and NSD in %, HD95 in mm."""
    return value if metric == "HD95" else 100.0 * value


def format_report_markdown(report: dict[str, Any]) -> str:
    """The ``report.md`` text of :func:`build_report`'s result."""
    methods, reference = list(report["methods"]), report["reference"]
    tolerance = report["tolerance_mm"]
    summary, targets = report["summary"], report["targets"]
    titles = {"Dice": "Dice (%)", "HD95": "HD95 (mm)", "NSD": f"NSD at {tolerance:g} mm (%)"}
    lines = [f"# Evaluation report: {len(methods)} methods, {report['n_cases']} cases", "",
             f"Truth: `{report['truth_dir']}`; reference method: **{reference}**; NSD tolerance {tolerance:g} mm; "
             f"generated {report['date']}.", "",
             "| Method | Predictions |", "|---|---|"]
    lines += [f"| {name} | `{folder}` |" for name, folder in report["methods"].items()]

    header = "| Method | " + " | ".join(target_title(t) for t in targets) + " |"
    rule = "|---|" + "---:|" * len(targets)
    for metric in METRICS:
        lines += ["", f"## {titles[metric]}, mean ± std over cases", "", header, rule]
        best = {}
        for target in targets:
            means = [summary[m][target][metric]["mean"] for m in methods]
            best[target] = min(means) if metric in LOWER_IS_BETTER else max(means)
        for method in methods:
            cells = []
            for target in targets:
                entry = summary[method][target][metric]
                text = f"{_scaled(metric, entry['mean']):.2f} ± {_scaled(metric, entry['std']):.2f}"
                tied = all(summary[m][target][metric]["mean"] == best[target] for m in methods)
                cells.append(f"**{text}**" if entry["mean"] == best[target] and not tied else text)
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", "Best mean per column in bold (none where all methods tie).", "",
              "## Missed cases (target in the truth, Dice 0) / cases with the target", "", header, rule]
    for method in methods:
        lines.append(f"| {method} | " + " | ".join(
            f"{summary[method][t]['missed']}/{summary[method][t]['present']}" for t in targets) + " |")

    lines += ["", f"## Paired Wilcoxon signed-rank p-values against {reference}", "",
              "| Method | " + " | ".join(f"{target_title(t)} {m}" for t in targets for m in METRICS) + " |",
              "|---|" + "---:|" * (len(targets) * len(METRICS))]
    for method in methods:
        if method == reference:
            continue
        lines.append(f"| {method} | " + " | ".join(
            _p_text(report["wilcoxon"][method][t][m], ".4g") for t in targets for m in METRICS) + " |")
    lines += ["", f"{wilcoxon_note(report['n_cases'])}.", ""]

    rescue = report.get("missed_rescued")
    lines += ["## Missed by both single-phase models / rescued by HPN", ""]
    if rescue is None:
        lines.append(report["missed_rescued_note"])
    else:
        missed, rescued = rescue["missed_by_all_single_phase"], rescue["rescued"]
        lines += [f"Cases with {rescue['target']} in the truth: {rescue['n_present']}. Missed ({rescue['target']} "
                  f"Dice 0) by both {' and '.join(rescue['single_phase'])}: **{len(missed)}**"
                  + (f" ({', '.join(missed)})" if missed else "") + f". Of these, detected ({rescue['target']} "
                  f"Dice > 0) by {rescue['hpn']}: **{len(rescued)}**" + (f" ({', '.join(rescued)})" if rescued
                                                                           else "") + "."]
    lines += ["", "## Box plots", ""]
    lines += [f"![{target}]({name})" for target, name in report["boxplots"].items()]
    gain_target = report["gain_target"]
    lines += ["", f"## Cases with the largest {gain_target} Dice gain of {reference} over the best other method", ""]
    if report["gain_not_compared"]:
        lines += [f"Not compared: {', '.join(report['gain_not_compared'])} (the same {gain_target} Dice as "
                  f"{reference} in every case).", ""]
    if report["gains"] or not report["n_gain_cases"]:
        lines += [f"| Case | {reference} | best other | gain |", "|---|---:|---|---:|"]
        lines += [f"| {row['case']} | {100 * row['reference_dice']:.1f} | {row['best_other']} "
                  f"{100 * row['best_other_dice']:.1f} | {100 * row['gain']:+.1f} |" for row in report["gains"]]
    else:
        lines.append(f"None: in no case is {reference}'s {gain_target} Dice above every other method's.")
    lines.append("")
    if report.get("overlays"):
        colours = ", ".join(f"{colour} {name}" for name, colour in report["label_colours"].items())
        lines += [f"![largest gain]({report['overlays']})", "",
                  f"Columns: {', '.join(report['overlay_phases'])}, truth, then each method (labels on the "
                  f"{report['overlay_phases'][-1]} phase; {colours}), slice with the "
                  f"largest truth {report['lesion']} area.", ""]
    elif report["gains"] and report["images_dir"] is None:
        lines += ["No overlays: no images folder given (--images).", ""]
    lines += ["## Conventions", "",
              "- Dice and NSD in %, HD95 in mm; std is the population std over cases (ddof 0).",
              f"- Empty masks: {EMPTY_CONVENTION}.",
              "- HD95: MONAI compute_hausdorff_distance (95th percentile, symmetric); NSD: MONAI "
              "compute_surface_dice (boundary voxels); distances in mm from the image spacing.",
              f"- {report['target_note']}.", ""]
    return "\n".join(lines)


def format_report_csv(report: dict[str, Any]) -> str:
    """``report.csv``: one row per method × target × metric (Dice and NSD as fractions, HD95 in mm)."""
    stream = io.StringIO()
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(["method", "target", "metric", "unit", "mean", "std", "median", "n", "missed", "present",
                     "reference", "wilcoxon_p"])
    for method in report["methods"]:
        for target in report["targets"]:
            for metric in METRICS:
                entry = report["summary"][method][target][metric]
                p = None if method == report["reference"] else report["wilcoxon"][method][target][metric]
                p_value = "" if p is None else f"{p:.6g}"
                writer.writerow([method, target, metric, "mm" if metric == "HD95" else "fraction",
                                 f"{entry['mean']:.6f}", f"{entry['std']:.6f}", f"{entry['median']:.6f}",
                                 report["n_cases"], report["summary"][method][target]["missed"],
                                 report["summary"][method][target]["present"], report["reference"], p_value])
    return stream.getvalue()


def format_per_case_csv(results: Mapping[str, EvaluationResult]) -> str:
    """``per_case.csv``: case, method, target, Dice, HD95 (mm), NSD, truth_present."""
    stream = io.StringIO()
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(["case", "method", "target", "Dice", "HD95_mm", "NSD", "truth_present"])
    first = next(iter(results.values()))
    for case in first.cases:
        for method, result in results.items():
            for target in result.targets:
                writer.writerow([case, method, target, *(f"{result.value(case, target, m):.6f}" for m in METRICS),
                                 int(result.truth_present[case][target])])
    return stream.getvalue()


def build_report(methods: Mapping[str, Path], truth_dir: Path, out_dir: Path, *, images_dir: Path | None = None,
                 reference: str | None = None, single_phase: Sequence[str] | None = None, hpn: str | None = None,
                 tolerance_mm: float = DEFAULT_TOLERANCE_MM, n_overlays: int = 3, file_ending: str = ".nii.gz",
                 progress: bool | None = None, n_processes: int = 1,
                 scheme: LabelScheme | None = None) -> dict[str, Any]:
    """Evaluate every method against ``truth_dir`` and write the report folder ``out_dir`` (see module docstring).

    ``reference``: method the p-values and gains compare against (default ``hpn``, else the last method).
    ``single_phase``: the two single-phase methods (default arterial and venous when both are named so).
    ``hpn``: the method whose rescues are counted (default ``reference``). ``scheme``: the label scheme
    (``-djfile``; default: :func:`nnunet_hpn.labels.resolve_scheme` beside the truth, then the predictions).
    Returns the report as a dict (also written as ``report.json``). Bad input -> HPNInputError before anything is
    written.
    """
    methods = {name: Path(folder) for name, folder in methods.items()}
    truth_dir, out_dir = Path(truth_dir), Path(out_dir)
    images_dir = Path(images_dir) if images_dir is not None else None
    if len(methods) < 2:
        raise HPNInputError(f"{out_dir}: a report compares at least 2 methods, got {len(methods)}")
    reference = reference or hpn or list(methods)[-1]
    hpn = hpn or reference
    for role, name in (("reference", reference), ("HPN", hpn), *(("single-phase", s) for s in single_phase or ())):
        if name not in methods:
            raise HPNInputError(f"{name}: {role} method is not among the methods {list(methods)}")
    note = ""
    if single_phase is None:
        if all(name in methods for name in DEFAULT_SINGLE_PHASE):
            single_phase = DEFAULT_SINGLE_PHASE
        else:
            note = (f"Not computed: name the two single-phase methods with --single-phase (no methods named "
                    f"{' and '.join(DEFAULT_SINGLE_PHASE)}).")
    if single_phase is not None:
        single_phase = tuple(single_phase)
        if len(set(single_phase)) != 2:
            raise HPNInputError(f"{' '.join(single_phase)}: give two different single-phase methods")
        if hpn in single_phase:
            raise HPNInputError(f"{hpn}: the HPN method cannot also be a single-phase method")
    if tolerance_mm < 0 or not np.isfinite(tolerance_mm):
        raise HPNInputError(f"{tolerance_mm}: NSD tolerance must be a finite number >= 0 mm")
    if images_dir is not None and not images_dir.is_dir():
        raise HPNInputError(f"{images_dir}: images folder does not exist")
    _check_out_dir(out_dir, [truth_dir, *methods.values(), *([Path(images_dir)] if images_dir else [])])
    cases = _common_cases(methods, file_ending)
    if scheme is None:
        scheme = resolve_scheme(None, (truth_dir, *methods.values()))
    targets = list(scheme.targets)

    results = {name: evaluate_folders(folder, truth_dir, file_ending, cases=cases, tolerance_mm=tolerance_mm,
                                      progress=progress, description=f"evaluating {name}",
                                      n_processes=n_processes, scheme=scheme)
               for name, folder in methods.items()}

    summary: dict[str, dict[str, Any]] = {}
    for name, result in results.items():
        summary[name] = {}
        for target in targets:
            summary[name][target] = {"missed": result.missed(target), "present": result.present(target)}
            for metric in METRICS:
                summary[name][target][metric] = {"mean": result.mean(target, metric), "std": result.std(target, metric),
                                                 "median": float(np.median(result.values(target, metric, cases)))}
    tested = len(cases) >= MIN_WILCOXON_CASES
    wilcoxon = {name: {target: {metric: paired_wilcoxon(results[name].values(target, metric, cases),
                                                        results[reference].values(target, metric, cases))
                                if tested else None for metric in METRICS}
                       for target in targets} for name in methods if name != reference}
    rescue = missed_and_rescued(results, single_phase, hpn, scheme.lesion) if single_phase is not None else None
    gain_target, gains, not_compared = largest_gains(results, reference, max(0, n_overlays), scheme.lesion)

    overlay_cases = []
    if images_dir is not None and gains:
        overlay_cases = [_load_overlay_case(row["case"], images_dir, truth_dir, methods, file_ending, gain_target,
                                            results, scheme) for row in gains]
    from nnunet_hpn.evaluate.figures import colour_legend, save_boxplot_png, save_overlay_grid_png

    report: dict[str, Any] = {
        "methods": {name: str(folder) for name, folder in methods.items()}, "truth_dir": str(truth_dir),
        "images_dir": str(images_dir) if images_dir else None, "reference": reference, "hpn": hpn,
        "single_phase": list(single_phase) if single_phase else None, "tolerance_mm": float(tolerance_mm),
        "n_cases": len(cases), "cases": cases, "date": datetime.date.today().isoformat(),
        "empty_convention": EMPTY_CONVENTION, "wilcoxon_note": wilcoxon_note(len(cases)), "summary": summary,
        "wilcoxon": wilcoxon, "missed_rescued": rescue, "missed_rescued_note": note, "gain_target": gain_target,
        "n_gain_cases": max(0, n_overlays), "gains": gains, "gain_not_compared": not_compared,
        "boxplots": {target: f"boxplot_{target_slug(target)}.png" for target in targets},
        "targets": targets, "lesion": scheme.lesion, "target_note": target_note(scheme),
        "label_colours": colour_legend(scheme),
        "overlays": "overlays_largest_gain.png" if overlay_cases else None,
        "overlay_phases": list(overlay_cases[0].phases) if overlay_cases else None,
        "per_method": {name: result.to_json() for name, result in results.items()},
    }

    with published_folder(out_dir, "merge") as staging:
        for target, file_name in report["boxplots"].items():
            values = {metric: {name: results[name].values(target, metric, cases) for name in methods}
                      for metric in METRICS}
            save_boxplot_png(values, staging / file_name, title=f"{target_title(target)} (n = {len(cases)})",
                             axis_labels={"NSD": f"NSD at {tolerance_mm:g} mm"})
        if overlay_cases:
            save_overlay_grid_png(overlay_cases, staging / report["overlays"],
                                  title=f"Largest {gain_target} Dice gain of {reference}", scheme=scheme)
        (staging / "report.csv").write_text(format_report_csv(report), encoding="utf-8")
        (staging / "per_case.csv").write_text(format_per_case_csv(results), encoding="utf-8")
        (staging / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        (staging / REPORT_MARKER).write_text(format_report_markdown(report), encoding="utf-8")
        written = {path.name for path in staging.iterdir()}
        stale = [out_dir / name for name in sorted(_earlier_report_files(out_dir) - written)
                 if (out_dir / name).is_file()]
    for path in stale:  # an earlier report's figure this report does not draw; other files of the folder stay
        path.unlink()
    return report


def format_report_summary(report: dict[str, Any]) -> str:
    """A short terminal table: Dice % mean ± std per method and target, p against the reference, rescues."""
    methods = list(report["methods"])
    width = max(len("method"), *(len(name) for name in methods))
    targets, lesion = report["targets"], report["lesion"]
    header = "method".ljust(width) + "".join(f"  {target_title(t):>22}" for t in targets) + f"  p({lesion} Dice)"
    tested = report["n_cases"] >= MIN_WILCOXON_CASES
    lines = [f"Dice % (mean ± std) over {report['n_cases']} cases; "
             + (f"p: Wilcoxon vs {report['reference']}" if tested else wilcoxon_note(report["n_cases"])),
             header, "-" * len(header)]
    for name in methods:
        cells = "".join(f"  {100 * report['summary'][name][t]['Dice']['mean']:>10.2f} ± "
                        f"{100 * report['summary'][name][t]['Dice']['std']:<9.2f}" for t in targets)
        p_value = "ref" if name == report["reference"] else _p_text(report["wilcoxon"][name][lesion]["Dice"], ".4g")
        lines.append(name.ljust(width) + cells + f"  {p_value:>12}")
    rescue = report.get("missed_rescued")
    if rescue is not None:
        lines.append(f"{rescue['target']} missed by both {' and '.join(rescue['single_phase'])}: "
                     f"{len(rescue['missed_by_all_single_phase'])} of {rescue['n_present']}; rescued by "
                     f"{rescue['hpn']}: {len(rescue['rescued'])}")
    return "\n".join(lines)
