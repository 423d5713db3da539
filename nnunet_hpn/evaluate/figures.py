"""Figures as PNG: overlays of one axial slice of every CT phase with truth and prediction labels (one case, or a
grid of cases × methods for reports), and box plots of per-case metrics per method.

Uses matplotlib's Agg canvas directly (no pyplot, no display, no global backend change).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import SimpleITK as sitk
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from nnunet_hpn.io.publish import atomic_file
from nnunet_hpn.errors import HPNInputError
from nnunet_hpn.labels import PDAC_SCHEME, LabelScheme
from nnunet_hpn.phases import HU_WINDOW

RGB = tuple[float, float, float]
#: Colours of the foreground labels in dataset.json order (the paper's: pancreas yellow, PDAC green, duct purple).
PALETTE: tuple[tuple[str, RGB], ...] = (
    ("yellow", (1.0, 0.85, 0.0)), ("green", (0.1, 0.8, 0.1)), ("purple", (0.65, 0.2, 0.85)),
    ("red", (0.9, 0.1, 0.1)), ("cyan", (0.0, 0.8, 0.9)), ("blue", (0.15, 0.35, 1.0)), ("orange", (1.0, 0.5, 0.0)),
    ("magenta", (1.0, 0.2, 0.7)), ("brown", (0.6, 0.35, 0.15)), ("white", (1.0, 1.0, 1.0)))


def label_colours(scheme: LabelScheme = PDAC_SCHEME) -> dict[int, tuple[str, RGB]]:
    """Value in a label map -> (label name, RGB colour) for each foreground label of ``scheme``, colours of
    :data:`PALETTE` in dataset.json order (repeating after ten); a region-based scheme's regions by the value nnU-Net
    paints them with (``regions_class_order``)."""
    return {value: (name, PALETTE[i % len(PALETTE)][1]) for i, (value, name) in enumerate(scheme.output_values.items())}


def colour_legend(scheme: LabelScheme = PDAC_SCHEME) -> dict[str, str]:
    """Label name -> colour name of :func:`label_colours` (for captions)."""
    return {name: PALETTE[i % len(PALETTE)][0] for i, name in enumerate(scheme.foreground)}


#: The paper's labels: value -> (name, RGB colour) drawn in overlays.
LABEL_COLOURS: dict[int, tuple[str, RGB]] = label_colours(PDAC_SCHEME)
OVERLAY_ALPHA: float = 0.45
DPI: int = 120
PANEL_WIDTH_INCHES: float = 3.2


def pick_slice(label_map: np.ndarray, lesion_values: Sequence[int] = PDAC_SCHEME.lesion_values) -> int:
    """Axial index (axis 0 of a (z, y, x) map) with the largest lesion area (values ``lesion_values``, default PDAC);
    else largest foreground; else middle."""
    for mask in (np.isin(label_map, lesion_values), label_map > 0):
        area_per_slice = mask.reshape(mask.shape[0], -1).sum(axis=1)
        if area_per_slice.max() > 0:
            return int(np.argmax(area_per_slice))
    return label_map.shape[0] // 2


def looks_like_hu(volume: np.ndarray) -> bool:
    """True if intensities look like Hounsfield units (clearly negative low end, range of hundreds)."""
    low, high = np.percentile(volume, [0.5, 99.5])
    return bool(low < -50 and high - low > 200)


def display_window(volume: np.ndarray) -> tuple[float, float]:
    """Grey window: [-100, 240] HU for CT in HU, else the 1st-99th percentile of the volume."""
    if looks_like_hu(volume):
        return HU_WINDOW
    low, high = (float(v) for v in np.percentile(volume, [1, 99]))
    return (low, high) if high > low else (low, low + 1.0)


def label_overlay_rgba(label_slice: np.ndarray,
                       colours: Mapping[int, tuple[str, RGB]] = LABEL_COLOURS) -> np.ndarray:
    """RGBA image of a 2-D label slice: label colours (:func:`label_colours`) at :data:`OVERLAY_ALPHA`, background
    transparent."""
    rgba = np.zeros((*label_slice.shape, 4), dtype=float)
    for label, (_, colour) in colours.items():
        rgba[label_slice == label] = (*colour, OVERLAY_ALPHA)
    return rgba


def _write_figure_atomically(figure: Figure, out_png: Path) -> None:
    """Render ``figure`` to a temporary PNG next to ``out_png``, then move it into place."""
    with atomic_file(out_png, suffix=".png") as temporary:
        FigureCanvasAgg(figure).print_png(str(temporary))


def _check_phase_arrays(phases: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray | None],
                        where: str) -> tuple[int, int, int]:
    """The (z, y, x) shape shared by every phase and label map; ValueError otherwise."""
    if not phases:
        raise ValueError(f"{where}: no phase to draw")
    first, shape = next(iter(phases.items()))[0], next(iter(phases.values())).shape
    if len(shape) != 3:
        raise ValueError(f"{where}: expected (z, y, x) arrays, got shape {shape}")
    for name, array in {**phases, **labels}.items():
        if array is not None and array.shape != shape:
            raise ValueError(f"{where}: {name} shape {array.shape} differs from {first} shape {shape}")
    return shape


def save_overlay_png(phases: Mapping[str, np.ndarray], truth: np.ndarray | None, prediction: np.ndarray | None,
                     out_png: Path, title: str = "", spacing_zyx: Sequence[float] | None = None,
                     scheme: LabelScheme = PDAC_SCHEME) -> Path:
    """Save one panel per phase (channel order), then truth and prediction overlays, of one axial slice as a PNG.

    ``phases``: phase name -> (z, y, x) CT; label maps (z, y, x) on the same grid. The slice is :func:`pick_slice`
    of the truth (of the prediction if there is no truth; the middle slice if neither is given). Labels are drawn
    on the last phase (venous for the arterial/venous pair); panels for a missing truth or prediction are left out.
    Pixel aspect follows ``spacing_zyx``; one colour per label of ``scheme`` and a legend of their names. Written
    atomically; returns ``out_png``.
    """
    out_png = Path(out_png)
    shape = _check_phase_arrays(phases, {"truth": truth, "prediction": prediction}, str(out_png))
    reference = truth if truth is not None else prediction
    z = pick_slice(reference, scheme.lesion_values) if reference is not None else shape[0] // 2
    colours = label_colours(scheme)
    spacing_y, spacing_x = (1.0, 1.0) if spacing_zyx is None else (float(spacing_zyx[1]), float(spacing_zyx[2]))
    pixel_aspect = spacing_y / spacing_x

    underlay = list(phases)[-1]
    panels: list[tuple[str, str, np.ndarray | None]] = [(name, name, None) for name in phases]
    panels += [(name, underlay, labels) for name, labels in (("truth", truth), ("prediction", prediction))
               if labels is not None]
    panel_height = PANEL_WIDTH_INCHES * shape[1] * pixel_aspect / shape[2]
    has_labels = truth is not None or prediction is not None
    legend_inches = 0.4 if has_labels else 0.0
    figure_height = panel_height + 0.6 + legend_inches
    figure = Figure(figsize=(PANEL_WIDTH_INCHES * len(panels), figure_height), dpi=DPI)
    windows = {name: display_window(ct) for name, ct in phases.items()}
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, (panel_name, phase, labels) in zip(axes, panels):
        low, high = windows[phase]
        ax.imshow(phases[phase][z], cmap="gray", vmin=low, vmax=high, aspect=pixel_aspect, interpolation="nearest")
        if labels is not None:
            ax.imshow(label_overlay_rgba(labels[z], colours), aspect=pixel_aspect, interpolation="nearest")
        ax.set_title(panel_name)
        ax.set_axis_off()
    if has_labels:
        handles = [Patch(facecolor=colour, edgecolor="none", alpha=0.8, label=name)
                   for name, colour in colours.values()]
        figure.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    figure.suptitle(f"{title}  (axial slice z={z})" if title else f"axial slice z={z}")
    figure.tight_layout(rect=(0, legend_inches / figure_height, 1, 1))
    _write_figure_atomically(figure, out_png)
    return out_png


def _read_image(path: Path) -> sitk.Image:
    """Read a NIfTI (or any SimpleITK format) image, turning read failures into HPNInputError."""
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise HPNInputError(f"{path}: cannot be read as an image ({str(error).strip().splitlines()[-1]})") from None


def save_overlay_from_files(phase_paths: Mapping[str, Path], truth_path: Path | None, prediction_path: Path | None,
                            out_png: Path, title: str = "", scheme: LabelScheme = PDAC_SCHEME) -> Path:
    """Read the phases (phase name -> file, channel order) and the optional label maps with SimpleITK and call
    :func:`save_overlay_png` (labels coloured by ``scheme``); HPNInputError naming the file for one that cannot be read or has another size."""
    phase_files = {name: Path(path) for name, path in phase_paths.items()}
    label_files = {name: Path(path) for name, path in (("truth", truth_path), ("prediction", prediction_path))
                   if path is not None}
    if not phase_files:
        raise ValueError(f"{out_png}: no phase to draw")
    first = next(iter(phase_files.values()))
    size, spacing = None, None
    arrays: list[dict[str, np.ndarray]] = [{}, {}]
    for files, target in zip((phase_files, label_files), arrays):
        for name, path in files.items():
            image = _read_image(path)
            if size is None:
                size, spacing = image.GetSize(), image.GetSpacing()
            elif image.GetSize() != size:
                raise HPNInputError(f"{path}: size {image.GetSize()} differs from {first} size {size}")
            target[name] = sitk.GetArrayFromImage(image)
    phases, labels = arrays
    return save_overlay_png({name: array.astype(np.float32) for name, array in phases.items()}, labels.get("truth"),
                            labels.get("prediction"), out_png, title=title, spacing_zyx=tuple(reversed(spacing)),
                            scheme=scheme)


# ------------------------------------------------------------------------------------- report figures

#: Axis label per metric in box plots.
METRIC_AXIS_LABELS: dict[str, str] = {"Dice": "Dice", "HD95": "HD95 (mm)", "NSD": "NSD"}


def save_boxplot_png(values: Mapping[str, Mapping[str, Sequence[float]]], out_png: Path, title: str = "",
                     axis_labels: Mapping[str, str] | None = None) -> Path:
    """Box plots of per-case values, one panel per metric, methods on the x axis, cases drawn as dots.

    ``values``: ``{metric: {method: per-case values}}`` (every metric lists the same methods). Written atomically;
    returns ``out_png``.
    """
    out_png = Path(out_png)
    labels = {**METRIC_AXIS_LABELS, **(axis_labels or {})}
    metrics = list(values)
    if not metrics:
        raise ValueError("no metrics to plot")
    methods = list(values[metrics[0]])
    width = max(3.2, 0.9 * len(methods) + 1.2)
    figure = Figure(figsize=(width * len(metrics), 3.8), dpi=DPI)
    axes = figure.subplots(1, len(metrics), squeeze=False)[0]
    jitter = np.random.default_rng(0)
    for ax, metric in zip(axes, metrics):
        data = [np.asarray(values[metric][method], dtype=float) for method in methods]
        ax.boxplot(data, tick_labels=methods, showmeans=True, medianprops={"color": "black"},
                   meanprops={"marker": "^", "markerfacecolor": "white", "markeredgecolor": "black"})
        for position, column in enumerate(data, start=1):
            ax.scatter(position + jitter.uniform(-0.12, 0.12, column.size), column, s=10, alpha=0.6,
                       color="tab:blue", zorder=3)
        ax.set_ylabel(labels.get(metric, metric))
        ax.tick_params(axis="x", labelrotation=30)
        ax.grid(axis="y", alpha=0.3)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    _write_figure_atomically(figure, out_png)
    return out_png


@dataclass
class OverlayCase:
    """One row of :func:`save_overlay_grid_png`: (z, y, x) arrays of one case on the same grid."""

    title: str
    phases: dict[str, np.ndarray]                 # phase name -> CT, in channel order
    truth: np.ndarray
    predictions: dict[str, np.ndarray]            # method name -> label map
    spacing_zyx: Sequence[float] = (1.0, 1.0, 1.0)
    captions: dict[str, str] = field(default_factory=dict)   # method name -> text under its title


def save_overlay_grid_png(cases: Sequence[OverlayCase], out_png: Path, title: str = "",
                          scheme: LabelScheme = PDAC_SCHEME) -> Path:
    """Fig. 3/4-style grid: one row per case, columns one per phase, truth, then each method's prediction.

    Each row shows the axial slice :func:`pick_slice` of its truth (largest lesion area, else largest foreground);
    labels are drawn on the last phase (venous for the arterial/venous pair) with the colours of
    :func:`label_colours` of ``scheme`` and a legend of their names. Pixel aspect follows each case's spacing.
    Written atomically; returns ``out_png``.
    """
    colours = label_colours(scheme)
    out_png = Path(out_png)
    if not cases:
        raise ValueError("no cases to draw")
    methods, phase_names = list(cases[0].predictions), list(cases[0].phases)
    shapes = []
    for case in cases:
        if list(case.predictions) != methods or list(case.phases) != phase_names:
            raise ValueError(f"{case.title}: methods {list(case.predictions)} / phases {list(case.phases)} differ "
                             f"from {methods} / {phase_names}")
        shapes.append(_check_phase_arrays(case.phases, {"truth": case.truth, **case.predictions}, case.title))

    n_columns = len(phase_names) + 1 + len(methods)
    panel_width = PANEL_WIDTH_INCHES * 0.8
    row_heights = [panel_width * shape[1] * (float(case.spacing_zyx[1]) / float(case.spacing_zyx[2])) / shape[2]
                   + 0.55 for case, shape in zip(cases, shapes)]
    legend_inches, title_inches = 0.4, 0.45
    height = sum(row_heights) + legend_inches + title_inches
    figure = Figure(figsize=(panel_width * n_columns, height), dpi=DPI)
    axes = figure.subplots(len(cases), n_columns, squeeze=False, gridspec_kw={"height_ratios": row_heights})
    underlay = phase_names[-1]
    for row, case in zip(axes, cases):
        z = pick_slice(case.truth, scheme.lesion_values)
        aspect = float(case.spacing_zyx[1]) / float(case.spacing_zyx[2])
        windows = {name: display_window(ct) for name, ct in case.phases.items()}
        panels = [(name, name, None, "") for name in phase_names] + [("truth", underlay, case.truth, "")]
        panels += [(method, underlay, labels, case.captions.get(method, ""))
                   for method, labels in case.predictions.items()]
        for column, (ax, (name, phase, labels, caption)) in enumerate(zip(row, panels)):
            low, high = windows[phase]
            ax.imshow(case.phases[phase][z], cmap="gray", vmin=low, vmax=high, aspect=aspect,
                      interpolation="nearest")
            if labels is not None:
                ax.imshow(label_overlay_rgba(labels[z], colours), aspect=aspect, interpolation="nearest")
            heading = f"{case.title} (z={z})\n{name}" if column == 0 else name
            ax.set_title(f"{heading}\n{caption}" if caption else heading, fontsize=8)
            ax.set_axis_off()
    handles = [Patch(facecolor=colour, edgecolor="none", alpha=0.8, label=name)
               for name, colour in colours.values()]
    figure.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    if title:
        figure.suptitle(title)
    figure.tight_layout(rect=(0, legend_inches / height, 1, 1 - (title_inches / height if title else 0)))
    _write_figure_atomically(figure, out_png)
    return out_png
