"""Figures as PNG: overlays of one axial slice of both CT phases with truth and prediction labels (one case, or a
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

from nnunet_hpn import LABELS
from nnunet_hpn.atomic_io import atomic_file
from nnunet_hpn.errors import HPNInputError

#: Label -> (name, RGB colour) drawn in overlays.
LABEL_COLOURS: dict[int, tuple[str, tuple[float, float, float]]] = {
    LABELS["pancreas"]: ("pancreas", (1.0, 0.85, 0.0)),   # yellow
    LABELS["PDAC"]: ("PDAC", (0.1, 0.8, 0.1)),            # green
    LABELS["duct"]: ("duct", (0.65, 0.2, 0.85)),          # purple
}
OVERLAY_ALPHA: float = 0.45
HU_WINDOW: tuple[float, float] = (-100.0, 240.0)
DPI: int = 120
PANEL_WIDTH_INCHES: float = 3.2


def pick_slice(label_map: np.ndarray) -> int:
    """Axial index (axis 0 of a (z, y, x) map) with the largest PDAC area; else largest foreground; else middle."""
    for mask in (label_map == LABELS["PDAC"], label_map > 0):
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


def label_overlay_rgba(label_slice: np.ndarray) -> np.ndarray:
    """RGBA image of a 2-D label slice: label colours at :data:`OVERLAY_ALPHA`, background transparent."""
    rgba = np.zeros((*label_slice.shape, 4), dtype=float)
    for label, (_, colour) in LABEL_COLOURS.items():
        rgba[label_slice == label] = (*colour, OVERLAY_ALPHA)
    return rgba


def _write_figure_atomically(figure: Figure, out_png: Path) -> None:
    """Render ``figure`` to a temporary PNG next to ``out_png``, then move it into place."""
    with atomic_file(out_png, suffix=".png") as temporary:
        FigureCanvasAgg(figure).print_png(str(temporary))


def save_overlay_png(arterial: np.ndarray, venous: np.ndarray, truth: np.ndarray | None,
                     prediction: np.ndarray | None, out_png: Path, title: str = "",
                     spacing_zyx: Sequence[float] | None = None) -> Path:
    """Save panels arterial / venous / truth overlay / prediction overlay of one axial slice as a PNG.

    Arrays are (z, y, x). The slice is :func:`pick_slice` of the truth (of the prediction if there is no truth;
    the middle slice if neither is given). Overlays are drawn on the venous phase; panels for a missing truth or
    prediction are left out. Pixel aspect follows ``spacing_zyx``. Written atomically; returns ``out_png``.
    """
    out_png = Path(out_png)
    for name, array in (("venous", venous), ("truth", truth), ("prediction", prediction)):
        if array is not None and array.shape != arterial.shape:
            raise ValueError(f"{name} shape {array.shape} differs from arterial shape {arterial.shape}")
    if arterial.ndim != 3:
        raise ValueError(f"expected (z, y, x) arrays, got shape {arterial.shape}")

    reference = truth if truth is not None else prediction
    z = pick_slice(reference) if reference is not None else arterial.shape[0] // 2
    spacing_y, spacing_x = (1.0, 1.0) if spacing_zyx is None else (float(spacing_zyx[1]), float(spacing_zyx[2]))
    pixel_aspect = spacing_y / spacing_x

    panels: list[tuple[str, np.ndarray, np.ndarray | None]] = [
        ("arterial", arterial, None), ("venous", venous, None)]
    if truth is not None:
        panels.append(("truth", venous, truth))
    if prediction is not None:
        panels.append(("prediction", venous, prediction))

    rows, columns = arterial.shape[1], arterial.shape[2]
    panel_height = PANEL_WIDTH_INCHES * rows * pixel_aspect / columns
    has_labels = truth is not None or prediction is not None
    legend_inches = 0.4 if has_labels else 0.0
    figure_height = panel_height + 0.6 + legend_inches
    figure = Figure(figsize=(PANEL_WIDTH_INCHES * len(panels), figure_height), dpi=DPI)
    windows = {"arterial": display_window(arterial), "venous": display_window(venous)}
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, (panel_name, ct, labels) in zip(axes, panels):
        low, high = windows["arterial" if ct is arterial else "venous"]
        ax.imshow(ct[z], cmap="gray", vmin=low, vmax=high, aspect=pixel_aspect, interpolation="nearest")
        if labels is not None:
            ax.imshow(label_overlay_rgba(labels[z]), aspect=pixel_aspect, interpolation="nearest")
        ax.set_title(panel_name)
        ax.set_axis_off()
    if has_labels:
        handles = [Patch(facecolor=colour, edgecolor="none", alpha=0.8, label=name)
                   for name, colour in LABEL_COLOURS.values()]
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


def save_overlay_from_files(arterial_path: Path, venous_path: Path, truth_path: Path | None,
                            prediction_path: Path | None, out_png: Path, title: str = "") -> Path:
    """Read the phases and (optional) label maps with SimpleITK and call :func:`save_overlay_png`."""
    arterial_image = _read_image(Path(arterial_path))
    arrays: dict[str, np.ndarray | None] = {}
    for name, path in (("venous", venous_path), ("truth", truth_path), ("prediction", prediction_path)):
        if path is None:
            arrays[name] = None
            continue
        image = _read_image(Path(path))
        if image.GetSize() != arterial_image.GetSize():
            raise HPNInputError(f"{path}: size {image.GetSize()} differs from {arterial_path} "
                                f"size {arterial_image.GetSize()}")
        arrays[name] = sitk.GetArrayFromImage(image)
    spacing_zyx = tuple(reversed(arterial_image.GetSpacing()))
    return save_overlay_png(sitk.GetArrayFromImage(arterial_image).astype(np.float32),
                            arrays["venous"].astype(np.float32), arrays["truth"], arrays["prediction"],
                            out_png, title=title, spacing_zyx=spacing_zyx)


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
    arterial: np.ndarray
    venous: np.ndarray
    truth: np.ndarray
    predictions: dict[str, np.ndarray]            # method name -> label map
    spacing_zyx: Sequence[float] = (1.0, 1.0, 1.0)
    captions: dict[str, str] = field(default_factory=dict)   # method name -> text under its title


def save_overlay_grid_png(cases: Sequence[OverlayCase], out_png: Path, title: str = "") -> Path:
    """Fig. 3/4-style grid: one row per case, columns arterial, venous, truth, then each method's prediction.

    Each row shows the axial slice :func:`pick_slice` of its truth (largest PDAC area, else largest foreground);
    labels are drawn on the venous phase with the colours of :data:`LABEL_COLOURS`. Pixel aspect follows each
    case's spacing. Written atomically; returns ``out_png``.
    """
    out_png = Path(out_png)
    if not cases:
        raise ValueError("no cases to draw")
    methods = list(cases[0].predictions)
    for case in cases:
        if list(case.predictions) != methods:
            raise ValueError(f"{case.title}: methods {list(case.predictions)} differ from {methods}")
        for name, array in (("venous", case.venous), ("truth", case.truth), *case.predictions.items()):
            if array.shape != case.arterial.shape:
                raise ValueError(f"{case.title}: {name} shape {array.shape} differs from arterial shape "
                                 f"{case.arterial.shape}")

    n_columns = 3 + len(methods)
    panel_width = PANEL_WIDTH_INCHES * 0.8
    row_heights = []
    for case in cases:
        aspect = float(case.spacing_zyx[1]) / float(case.spacing_zyx[2])
        row_heights.append(panel_width * case.arterial.shape[1] * aspect / case.arterial.shape[2] + 0.55)
    legend_inches, title_inches = 0.4, 0.45
    height = sum(row_heights) + legend_inches + title_inches
    figure = Figure(figsize=(panel_width * n_columns, height), dpi=DPI)
    axes = figure.subplots(len(cases), n_columns, squeeze=False, gridspec_kw={"height_ratios": row_heights})
    for row, case in zip(axes, cases):
        z = pick_slice(case.truth)
        aspect = float(case.spacing_zyx[1]) / float(case.spacing_zyx[2])
        windows = {"arterial": display_window(case.arterial), "venous": display_window(case.venous)}
        panels = [("arterial", case.arterial, None, ""), ("venous", case.venous, None, ""),
                  ("truth", case.venous, case.truth, "")]
        panels += [(method, case.venous, labels, case.captions.get(method, ""))
                   for method, labels in case.predictions.items()]
        for column, (ax, (name, ct, labels, caption)) in enumerate(zip(row, panels)):
            low, high = windows["arterial" if ct is case.arterial else "venous"]
            ax.imshow(ct[z], cmap="gray", vmin=low, vmax=high, aspect=aspect, interpolation="nearest")
            if labels is not None:
                ax.imshow(label_overlay_rgba(labels[z]), aspect=aspect, interpolation="nearest")
            heading = f"{case.title} (z={z})\n{name}" if column == 0 else name
            ax.set_title(f"{heading}\n{caption}" if caption else heading, fontsize=8)
            ax.set_axis_off()
    handles = [Patch(facecolor=colour, edgecolor="none", alpha=0.8, label=name)
               for name, colour in LABEL_COLOURS.values()]
    figure.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    if title:
        figure.suptitle(title)
    figure.tight_layout(rect=(0, legend_inches / height, 1, 1 - (title_inches / height if title else 0)))
    _write_figure_atomically(figure, out_png)
    return out_png
