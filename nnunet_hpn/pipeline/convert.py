"""Convert a folder of multi-phase cases into an nnU-Net v2 raw dataset (``Dataset{id:03d}_{name}``).

Input layout (:mod:`nnunet_hpn.io.case_layout`, image files only): ``in_dir/<case>/<phase>.nii.gz`` (or ``.nii``)
for each phase (default ``arterial``, ``venous``) and optionally ``label.nii.gz`` (on the reference phase's grid),
``label_<phase>.nii.gz`` (optional, for registration QC); every non-hidden sub-folder of ``in_dir`` is a case, other
files in a case folder (hidden files aside) are refused.
Unaligned phases are registered onto the reference phase first with ``register=True``. Everything is validated while
the dataset is built in a hidden temporary folder inside the raw root, which is renamed into place only when
complete.
"""
from __future__ import annotations

import dataclasses
import gzip
import json
import os
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
from tqdm import tqdm

from nnunet_hpn.io.publish import check_output_not_input, check_outputs, exclusive_claim, published_folder
from nnunet_hpn.labels import PDAC_LABELS, PDAC_SCHEME, LabelScheme
from nnunet_hpn.phases import PHASES, channel_file_name, reference_phase as reference_phase_rule
from nnunet_hpn.errors import HPNInputError
from nnunet_hpn.io.case_layout import QC_FOLDER, CaseInputs, label_file_name, read_case_layout
from nnunet_hpn.io.crop_boxes import BOXES_FILE, CropBox, crop_image, label_box, write_boxes
from nnunet_hpn.io.dicom_study import StagedStudies
from nnunet_hpn.io.listing import case_folders
from nnunet_hpn.io.images import check_finite as _check_finite
from nnunet_hpn.io.images import check_distinct_phases, check_phase_voxels
from nnunet_hpn.io.images import read_header as _read_header
from nnunet_hpn.io.images import read_label
from nnunet_hpn.io.images import read_file_voxels as _read_voxels
from nnunet_hpn.io.geometry import MIN_VOXELS_PER_AXIS, check_overlap, check_same_grid
from nnunet_hpn.pipeline.registration import METHOD_DESCRIPTIONS, METHODS, register_to_reference

FILE_ENDING = ".nii.gz"
LABEL_FILE = label_file_name()
#: Appended to a phase-grid mismatch without ``register``: the usual cause is phases acquired on their own grids.
UNALIGNED_HINT = "; the phases are on different grids: --register aligns them onto the reference phase"
DATASET_DESCRIPTION = ("Dual-phase pancreas CT for the Hyper-Pairing Network: channel 0 arterial, channel 1 venous; "
                       "labels pancreas, PDAC mass and pancreatic duct. Converted by nnunet_hpn.pipeline.convert.")


@dataclass(frozen=True)
class _Layout:
    """Which phases make the channels (in order), which one is the reference grid, and whether the others are
    registered onto it."""

    phases: tuple[str, ...]
    reference: str
    register: bool
    crop_margin_mm: float | None = None
    allow_unusual_intensities: bool = False
    registration_method: str = "demons"
    #: what the label values mean (``--labels``; default the paper's scheme); dataset.json gets its fields
    scheme: LabelScheme = PDAC_SCHEME

    @property
    def reference_index(self) -> int:
        return self.phases.index(self.reference)


def _layout(in_dir: Path, phases, reference_phase: str | None, register: bool) -> _Layout:
    """Checked phase names and the reference phase (:func:`nnunet_hpn.phases.reference_phase`)."""
    phases = tuple(phases)
    if not phases:
        raise HPNInputError(f"{in_dir}: at least one phase is needed")
    for phase in phases:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", phase) or phase.startswith("label"):
            raise HPNInputError(f"{in_dir}: phase name {phase!r} must be letters, digits, '_' or '-' and not label*")
    if len(set(phases)) != len(phases):
        raise HPNInputError(f"{in_dir}: phase names {list(phases)} repeat")
    return _Layout(phases, reference_phase_rule(phases, reference_phase, where=str(in_dir)), register)


def _case_inputs(case_dir: Path, layout: _Layout = _Layout(PHASES, PHASES[0], False)) -> CaseInputs:
    """The inputs of one case folder under the case-layout rule (:mod:`nnunet_hpn.io.case_layout`): every phase
    present, labels optional (``label.nii.gz`` on the reference grid; ``label_<phase>.nii.gz``, on that phase's
    grid, for the registration QC; a ``label_<reference>`` is allowed and not used)."""
    return read_case_layout(case_dir, layout.phases, dicom_folders=False, require="all",
                            hint="; --phases sets the phase names")


def _case_files(case_dir: Path, layout: _Layout = _Layout(PHASES, PHASES[0], False)) -> tuple[list[Path], Path | None]:
    """Phase image paths (in channel order) and the label path, if any, of one case folder."""
    inputs = _case_inputs(case_dir, layout)
    return [inputs.phases[phase] for phase in layout.phases], inputs.label


def _check_headers(case_dir: Path, layout: _Layout = _Layout(PHASES, PHASES[0], False)) -> None:
    """Cheap header checks of one case: only expected file names; files present, readable, 3D; on the reference
    grid, or (when registering) overlapping it in physical space. The label is always on the reference phase's
    grid."""
    inputs = _case_inputs(case_dir, layout)
    phase_paths, label_path = [inputs.phases[phase] for phase in layout.phases], inputs.label
    headers = [_read_header(path) for path in phase_paths]
    reference_path, reference = phase_paths[layout.reference_index], headers[layout.reference_index]
    for phase, path, header in zip(layout.phases, phase_paths, headers):
        if path == reference_path:
            continue
        if layout.register:
            check_overlap(reference, header, str(reference_path), str(path))
            phase_label = inputs.phase_labels.get(phase)
            if phase_label is not None:
                check_same_grid(header, path, _read_header(phase_label), phase_label)
        else:
            check_same_grid(reference, reference_path, header, path, hint=UNALIGNED_HINT)
    if label_path is not None:
        check_same_grid(reference, reference_path, _read_header(label_path), label_path)


def _write_image(image: sitk.Image, source: Path, target: Path, box: CropBox | None) -> None:
    """``image`` (read from, or registered from, ``source``) written to ``target``, cut to ``box`` if given."""
    sitk.WriteImage(image if box is None else crop_image(image, box, str(source)), str(target), useCompression=True)


def _copy_image(source: Path, target: Path, box: CropBox | None) -> None:
    """``source`` (``.nii.gz``, ``.nii`` or another image file) as the ``.nii.gz`` file ``target``, cut to ``box`` if
    given: a ``.nii.gz`` byte for byte, a ``.nii`` compressed as it is, anything else rewritten by SimpleITK."""
    if box is not None or not source.name.endswith((".nii.gz", ".nii")):
        _write_image(sitk.ReadImage(str(source)), source, target, box)
    elif source.name.endswith(".nii.gz"):
        shutil.copyfile(source, target)
    else:
        with source.open("rb") as stream, gzip.open(target, "wb") as compressed:
            shutil.copyfileobj(stream, compressed)


def _register_phase(phase_label: Path | None, path: Path, reference_path: Path, label_path: Path | None,
                    target: Path, progress: bool, box: CropBox | None = None, method: str = "demons") -> dict:
    """Register one phase (with ``phase_label``, its own label, if any) onto the reference grid, write the warped
    image to ``target`` (cut to ``box``); its QC."""
    result = register_to_reference(
        sitk.ReadImage(str(reference_path)), sitk.ReadImage(str(path)),
        moving_label=None if phase_label is None else sitk.ReadImage(str(phase_label)),
        fixed_label=None if label_path is None or phase_label is None else sitk.ReadImage(str(label_path)),
        method=method, progress=progress, fixed_name=str(reference_path), moving_name=str(path))
    _write_image(result.warped, path, target, box)
    return result.qc


def _check_voxels_and_copy(case_dir: Path, dataset_dir: Path, layout: _Layout = _Layout(PHASES, PHASES[0], False),
                           progress: bool = False, box: CropBox | None = None) -> bool:
    """Check the voxels of one case and copy its files into ``dataset_dir`` (registering the non-reference phases
    first when ``layout.register``, QC into ``dataset_dir/registration_qc/<case>.json``; every file cut to ``box``
    if given); True if it has a label."""
    inputs = _case_inputs(case_dir, layout)
    phase_paths, label_path = [inputs.phases[phase] for phase in layout.phases], inputs.label
    reference_path = phase_paths[layout.reference_index]
    images_dir = dataset_dir / ("imagesTr" if label_path is not None else "imagesTs")
    case_qc = {}
    read: dict[str, tuple[str, np.ndarray]] = {}
    for channel, (phase, path) in enumerate(zip(layout.phases, phase_paths)):
        voxels = _read_voxels(path)
        _check_finite(voxels, str(path))
        # nibabel's arrays are in (x, y, z) order: the shape is the size, the slices along the last axis
        check_phase_voxels(voxels, voxels.shape, str(path), layout.allow_unusual_intensities, slice_axis=2)
        read[phase] = (str(path), voxels)
        check_distinct_phases(read)
        images_dir.mkdir(exist_ok=True)
        target = images_dir / channel_file_name(case_dir.name, channel, FILE_ENDING)
        if layout.register and path != reference_path:
            case_qc[phase] = _register_phase(inputs.phase_labels.get(phase), path, reference_path, label_path,
                                             target, progress, box, layout.registration_method)
        else:
            _copy_image(path, target, box)
    if layout.register:
        qc_dir = dataset_dir / QC_FOLDER
        qc_dir.mkdir(exist_ok=True)
        (qc_dir / f"{case_dir.name}.json").write_text(json.dumps(
            {"case": case_dir.name, "reference_phase": layout.reference, "phases": case_qc}, indent=2))
    if label_path is None:
        return False
    label_voxels = _read_voxels(label_path)
    _check_finite(label_voxels, str(label_path))
    layout.scheme.check_values(label_voxels, str(label_path))
    (dataset_dir / "labelsTr").mkdir(exist_ok=True)
    label_target = dataset_dir / "labelsTr" / f"{case_dir.name}{FILE_ENDING}"
    _copy_image(label_path, label_target, box)
    return True


def _convert_case_in_worker(case_dir: Path, dataset_dir: Path, layout: _Layout, box: CropBox | None
                            ) -> tuple[bool, list[tuple[str, type]]]:
    """:func:`_check_voxels_and_copy` in a worker process; its warnings are returned (message, category), so that the
    main process shows each once, in its own way."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        has_label = _check_voxels_and_copy(case_dir, dataset_dir, layout, False, box)
    return has_label, [(str(w.message), w.category) for w in caught]


def _convert_all(case_dirs: list[Path], dataset_dir: Path, layout: _Layout, boxes: dict[str, CropBox],
                 n_processes: int, progress: bool) -> int:
    """Every case checked and copied (registered) into ``dataset_dir``, in ``n_processes`` worker processes when
    more than one; one progress bar over the cases. Returns the number of labelled cases."""
    bar = dict(desc="converting cases", unit="case", disable=not progress)
    if n_processes <= 1 or len(case_dirs) <= 1:
        return sum(_check_voxels_and_copy(case_dir, dataset_dir, layout, progress, boxes.get(case_dir.name))
                   for case_dir in tqdm(case_dirs, **bar))
    from concurrent.futures import as_completed

    from nnunet_hpn.processes import worker_pool

    n_labelled = 0
    workers = min(n_processes, len(case_dirs))
    with worker_pool(workers) as pool:
        futures = [pool.submit(_convert_case_in_worker, case_dir, dataset_dir, layout, boxes.get(case_dir.name))
                   for case_dir in case_dirs]
        try:
            for future in tqdm(as_completed(futures), total=len(futures), **bar):
                has_label, caught = future.result()
                n_labelled += int(has_label)
                for message, category in caught:
                    warnings.warn(message, category, stacklevel=2)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return n_labelled


def _mean_sd(values: list) -> dict | None:
    values = [v for v in values if v is not None]
    return {"mean": round(float(np.mean(values)), 4), "std": round(float(np.std(values)), 4),
            "n": len(values)} if values else None


def _write_qc_summary(qc_dir: Path) -> None:
    """``registration_qc/summary.json``: per case and phase the key numbers, and their mean ± std per phase."""
    rows = []
    for path in sorted(qc_dir.glob("*.json")):
        case = json.loads(path.read_text(encoding="utf-8"))
        for phase, qc in case["phases"].items():
            pancreas = qc.get("pancreas", {})
            rows.append({
                "case": case["case"], "phase": phase, "seconds": qc["seconds"],
                "nmi_before": qc["similarity"]["before"]["nmi"], "nmi_after": qc["similarity"]["after"]["nmi"],
                "msd_before_mm": pancreas.get("before", {}).get("mean_surface_distance_mm"),
                "msd_after_mm": pancreas.get("after", {}).get("mean_surface_distance_mm"),
                "dice_before": pancreas.get("before", {}).get("dice"),
                "dice_after": pancreas.get("after", {}).get("dice"),
                "warnings": qc["warnings"]})
    per_phase = {}
    for phase in dict.fromkeys(row["phase"] for row in rows):
        chosen = [row for row in rows if row["phase"] == phase]
        per_phase[phase] = {key: _mean_sd([row[key] for row in chosen])
                            for key in ("seconds", "nmi_before", "nmi_after", "msd_before_mm", "msd_after_mm",
                                        "dice_before", "dice_after")}
        per_phase[phase]["cases_with_warnings"] = sorted(row["case"] for row in chosen if row["warnings"])
    (qc_dir / "summary.json").write_text(json.dumps({"per_phase": per_phase, "cases": rows}, indent=2))


def _description(layout: _Layout) -> str:
    pdac = layout.scheme.labels == PDAC_LABELS
    if layout.phases == PHASES and not layout.register and layout.crop_margin_mm is None and pdac:
        return DATASET_DESCRIPTION
    channels = ", ".join(f"channel {i} {phase}" for i, phase in enumerate(layout.phases))
    if pdac:
        text = (f"Multi-phase pancreas CT for the Hyper-Pairing Network: {channels}; labels pancreas, PDAC mass and "
                "pancreatic duct. Converted by nnunet_hpn.pipeline.convert.")
    else:
        text = (f"Multi-phase CT for the Hyper-Pairing Network: {channels}; labels "
                f"{', '.join(layout.scheme.foreground)}. Converted by nnunet_hpn.pipeline.convert.")
    if layout.register:
        text += (f" Every other phase registered onto the {layout.reference} grid "
                 f"({METHOD_DESCRIPTIONS[layout.registration_method]}, nnunet_hpn.pipeline.registration); QC in "
                 f"{QC_FOLDER}/.")
    if layout.crop_margin_mm is not None:
        text += (f" Every case cut to its label's box plus {layout.crop_margin_mm:g} mm (oracle ROI, world positions "
                 f"kept); boxes in {BOXES_FILE}.")
    return text


def _write_dataset_json(dataset_dir: Path, name: str, num_training: int,
                        layout: _Layout = _Layout(PHASES, PHASES[0], False)) -> None:
    """dataset.json written by nnU-Net's own helper: the scheme's ``labels`` (``regions_class_order``) and its
    ``"hpn"`` facts with the reference phase."""
    fields = dataclasses.replace(layout.scheme, reference_phase=layout.reference).dataset_json_fields()
    generate_dataset_json(str(dataset_dir), channel_names={str(i): phase for i, phase in enumerate(layout.phases)},
                          labels=fields.pop("labels"), num_training_cases=num_training, file_ending=FILE_ENDING,
                          regions_class_order=fields.pop("regions_class_order", None),
                          dataset_name=name, description=_description(layout),
                          converted_by="nnunet_hpn.pipeline.convert",
                          license="see the source data", **fields)


def convert_cases(in_dir: Path, dataset_id: int, name: str, raw_root: Path | None = None, overwrite: bool = False,
                  progress: bool = True, phases=PHASES, reference_phase: str | None = None,
                  register: bool = False, crop_margin_mm: float | None = None,
                  allow_unusual_intensities: bool = False, n_processes: int = 1,
                  registration_method: str = "demons", labels: LabelScheme | Path | None = None,
                  phase_map: Path | None = None, segment_map: dict[str, str] | None = None) -> Path:
    """Build ``raw_root/Dataset{id:03d}_{name}`` (raw_root defaults to ``$nnUNet_raw``) and return its path.

    Channel i is ``phases[i]`` (``channel_names`` of dataset.json = the phase names in order). Cases with
    ``label.nii.gz`` go to imagesTr/labelsTr, the others to imagesTs. The label is defined on the reference phase's
    grid (``reference_phase``, default "arterial" if among the phases, else the first). Without ``register`` all
    phases must share that grid; with it, every other phase is registered onto it with ``registration_method``
    (:mod:`nnunet_hpn.pipeline.registration`; an optional ``label_<phase>.nii.gz`` on that phase's grid is warped
    along for the surface-distance QC) and the QC of every case goes to ``<dataset>/registration_qc/<case>.json``
    with a ``summary.json``. ``crop_margin_mm``: every case (all phases, after registration, and the label) cut to
    the box of its label's foreground plus this margin in mm, world positions kept (:mod:`nnunet_hpn.io.crop_boxes`;
    an oracle ROI), the boxes in ``<dataset>/crop_boxes.json``; every case needs a label then. Nothing is left in
    the raw root when any input is invalid (HPNInputError). ``n_processes`` > 1: cases converted (registered) in that
    many worker processes; ``registration_method``: :data:`~nnunet_hpn.pipeline.registration.METHODS` but "none".
    ``labels``: the label scheme (:mod:`nnunet_hpn.labels`; a path is a ``--labels`` file), default the paper's:
    every label map is checked against it, and dataset.json gets its ``labels`` and ``"hpn"`` facts, with the
    reference phase. A case folder of DICOM files (a study, :mod:`nnunet_hpn.io.dicom_study`) stands for the case
    folder of its identified phases (``phase_map``: a reviewed phase map CSV) and its DICOM-SEG label mapped to the
    scheme (``segment_map``: segment label -> label name); ``<dataset>/dicom_study/`` records which series became
    which phase and why.
    """
    in_dir = Path(in_dir)
    layout = _layout(in_dir, phases, reference_phase, register)
    if crop_margin_mm is not None:
        if not crop_margin_mm > 0:
            raise HPNInputError(f"{in_dir}: crop margin must be a positive number of mm, got {crop_margin_mm}")
        layout = _Layout(layout.phases, layout.reference, layout.register, float(crop_margin_mm))
    if registration_method not in METHODS or registration_method == "none":
        raise HPNInputError(f"{in_dir}: registration method {registration_method!r} is not one of "
                            f"{[m for m in METHODS if m != 'none']}")
    if labels is None:
        labels = PDAC_SCHEME
    elif not isinstance(labels, LabelScheme):
        labels = LabelScheme.from_labels_file(Path(labels))
    layout = dataclasses.replace(layout, allow_unusual_intensities=allow_unusual_intensities,
                                 registration_method=registration_method, scheme=labels)
    if raw_root is None:
        if not os.environ.get("nnUNet_raw"):
            raise HPNInputError("nnUNet_raw: environment variable not set and no raw_root given")
        raw_root = Path(os.environ["nnUNet_raw"])
    raw_root = Path(raw_root)
    if not 1 <= dataset_id <= 999:
        raise HPNInputError(f"{in_dir}: dataset id must be in 1..999, got {dataset_id}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
        raise HPNInputError(f"{in_dir}: dataset name {name!r} must be letters, digits, '_' or '-'")
    case_dirs = case_folders(in_dir)
    studies = StagedStudies(case_dirs, layout.phases, layout.reference, phase_map, segment_map, nifti=True,
                            labels=layout.scheme.labels, allow_unusual_intensities=allow_unusual_intensities)
    case_dirs = studies.case_dirs
    target = raw_root / f"Dataset{dataset_id:03d}_{name}"
    check_output_not_input(target, [in_dir], "--raw-root", folder=True)
    check_outputs([(raw_root, "--raw-root", "folder")], [in_dir])
    # one claim per dataset id (nnU-Net refuses two folders with one id): a second convert of the id waits its turn
    with exclusive_claim(raw_root / f".Dataset{dataset_id:03d}.lock", f"{raw_root}: dataset id {dataset_id}"):
        existing = sorted(path for path in raw_root.glob(f"Dataset{dataset_id:03d}_*") if path.is_dir())
        if existing and not overwrite:
            raise HPNInputError(f"{existing[0]}: dataset id {dataset_id} already exists (--overwrite replaces it)")

        boxes: dict[str, CropBox] = {}
        for case_dir in case_dirs:
            _check_headers(case_dir, layout)
            if layout.crop_margin_mm is not None:
                label_path = _case_files(case_dir, layout)[1]
                if label_path is None:
                    raise HPNInputError(f"{case_dir}: no {LABEL_FILE}; --crop-to-label needs a label in every case")
                boxes[case_dir.name] = label_box(read_label(label_path, layout.scheme)[1], layout.crop_margin_mm,
                                                 str(label_path))
                if min(boxes[case_dir.name].size_xyz) < MIN_VOXELS_PER_AXIS:  # convert's own gate would refuse it
                    raise HPNInputError(f"{label_path}: the label's box + {layout.crop_margin_mm:g} mm is "
                                        f"{tuple(boxes[case_dir.name].size_xyz)} voxels; a phase needs at least "
                                        f"{MIN_VOXELS_PER_AXIS} along every axis (a larger --crop-to-label margin)")
        if all(_case_files(case_dir, layout)[1] is None for case_dir in case_dirs):
            raise HPNInputError(f"{in_dir}: no case has a {LABEL_FILE}, nothing to train on")

        with published_folder(target, "replace", replaces=existing) as built_dir:
            num_training = _convert_all(case_dirs, built_dir, layout, boxes, n_processes, progress)
            if layout.crop_margin_mm is not None:
                write_boxes(built_dir / BOXES_FILE, boxes, layout.crop_margin_mm, layout.reference)
            if layout.register:
                _write_qc_summary(built_dir / QC_FOLDER)
            _write_dataset_json(built_dir, name, num_training, layout)
            studies.write_records(built_dir)
    studies.cleanup()
    return target
