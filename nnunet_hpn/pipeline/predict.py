"""``nnunet-hpn predict``: raw, unaligned phases of a case -> registration -> the trained nnU-Net model -> label map in
the reference (arterial) image's original space and geometry.

The model folder (``nnUNet_results/DatasetXXX/<trainer>__<plans>__<configuration>``,
:class:`nnunet_hpn.nnunet.model_folder.ModelFolder`) decides which phases are needed: its dataset.json
``channel_names`` in channel order. The reference phase is the model's (the one its dataset.json stores, else
"arterial" when the model has it, else its first channel) when it is given, else the same rule among the given
phases; every other phase is registered onto the reference image's grid
(:func:`nnunet_hpn.pipeline.registration.register_to_reference`), the channels are put in model order
(:func:`nnunet_hpn.pipeline.missing_phase.fill_missing_phases`) and handed to nnU-Net's own
``nnUNetPredictor.predict_single_npy_array`` with the properties nnU-Net's ``SimpleITKIO`` would have read from the
reference image, so nnU-Net's preprocessing and its export (resampling back, un-cropping) put the result on exactly
the reference image's grid. :mod:`nnunet_hpn.pipeline.outputs` writes the results.

A phase the model has but the input lacks is filled by the documented missing-phase policy of
:mod:`nnunet_hpn.pipeline.missing_phase` (a constant 0 image on the reference grid, exactly 0 after HPN's
normalization, as phase dropout trains with): the prediction goes ahead, a
:class:`~nnunet_hpn.pipeline.missing_phase.MissingPhaseWarning` says so, and the QC file records the missing phases.
At least one of the model's phases must be given.

Folder mode stages every output in a hidden folder next to ``OUT_DIR`` and moves the files in only when every case
succeeded: a bad case leaves ``OUT_DIR`` as it was. nnU-Net's predict options keep their meaning: ``-npp`` cases read
and registered in parallel processes, ``-nps`` threads writing the outputs, ``--save_probabilities`` nnU-Net's
``<case>.npz`` / ``<case>.pkl`` (``nnUNetv2_ensemble`` reads such a folder: folder mode copies the model's
``dataset.json`` and ``plans.json`` into it, as ``nnUNetv2_predict`` does), ``--continue_prediction`` skips cases
already in ``OUT_DIR``, ``-num_parts`` / ``-part_id`` predict one share of the cases.
"""
from __future__ import annotations

import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from nnunet_hpn.augment.box_margins import STAGE2_MARGIN_MM
from nnunet_hpn.errors import HPNInputError
from nnunet_hpn.io.case_layout import QC_FOLDER, read_case_layout
from nnunet_hpn.io.crop_boxes import CropBox, crop_image, uncrop_image
from nnunet_hpn.io.dicom_seg import import_highdicom
from nnunet_hpn.io.dicom_study import StagedStudies, check_series_folders_order
from nnunet_hpn.io.images import check_distinct_phases, read_image
from nnunet_hpn.io.listing import case_folders
from nnunet_hpn.io.publish import check_outputs, published_folder, write_text_atomically
from nnunet_hpn.nnunet.model_folder import ModelFolder, nnunet_properties
from nnunet_hpn.phases import reference_phase
from nnunet_hpn.pipeline.locator import Locator, LocatorWarning
from nnunet_hpn.pipeline.missing_phase import MissingPhaseWarning, fill_missing_phases, missing_phase_message
from nnunet_hpn.pipeline.outputs import (OUTPUT_FORMATS, CasePrediction, case_outputs, dicom_seg_file, image_suffix,
                                         probability_files, truncated_name, write_case_outputs)
from nnunet_hpn.pipeline.registration import METHODS, register_to_reference
from nnunet_hpn.processes import worker_pool


def prediction_reference(channel_names: Sequence[str], available: Sequence[str], preferred: str | None = None
                         ) -> str:
    """The phase whose grid the prediction is made on: ``preferred`` (the model's reference phase,
    :attr:`nnunet_hpn.nnunet.model_folder.ModelFolder.reference_phase`) when given, else
    :func:`nnunet_hpn.phases.reference_phase` among the given phases, in the model's channel order."""
    given = [phase for phase in channel_names if phase in available]
    if not given:
        raise HPNInputError(f"none of the model's phases ({', '.join(channel_names)}) was given")
    return preferred if preferred in given else reference_phase(given)


def align_phases(phases: Mapping[str, sitk.Image], reference: str, method: str = "demons",
                 names: Mapping[str, str] | None = None, progress: bool = True) -> tuple[dict[str, sitk.Image], dict]:
    """Every phase on the ``reference`` phase's grid: the reference as is, the others registered onto it.
    Returns the images and the registration QC per registered phase."""
    names = dict(names or {})
    fixed = phases[reference]
    aligned, qc = {reference: fixed}, {}
    for phase, image in phases.items():
        if phase == reference:
            continue
        result = register_to_reference(fixed, image, method=method, progress=progress,
                                       fixed_name=names.get(reference, reference), moving_name=names.get(phase, phase))
        aligned[phase], qc[phase] = result.warped, result.qc
    return aligned, qc


@dataclass
class AlignedCase:
    """One case ready for the network: every given phase on the reference phase's grid, the registration QC per
    registered phase, and the inputs' names (file paths) per phase."""

    phases: dict[str, sitk.Image]
    reference_phase: str
    qc: dict
    names: dict[str, str]

    def cropped(self, box: CropBox) -> "AlignedCase":
        """The same case cut to ``box`` (a box on the reference grid; world positions kept)."""
        where = self.names.get(self.reference_phase, self.reference_phase)
        return AlignedCase({phase: crop_image(image, box, self.names.get(phase, where))
                            for phase, image in self.phases.items()}, self.reference_phase, self.qc, self.names)


def align_case(phases: Mapping[str, sitk.Image], channel_names: Sequence[str], method: str = "demons",
               names: Mapping[str, str] | None = None, progress: bool = True,
               preferred_reference: str | None = None) -> AlignedCase:
    """The phases of one case (names among the model's ``channel_names``, :func:`check_phase_names`) registered onto
    the reference phase (:func:`prediction_reference`)."""
    reference = prediction_reference(channel_names, list(phases), preferred_reference)
    aligned, qc = align_phases(phases, reference, method, names, progress)
    return AlignedCase(aligned, reference, qc, {phase: str(name) for phase, name in (names or {}).items()})


def read_and_align_case(phase_paths: Mapping[str, Path], channel_names: Sequence[str], method: str,
                        allow_unusual_intensities: bool, progress: bool = False,
                        preferred_reference: str | None = None) -> AlignedCase:
    """Read (input gate of :func:`read_image`) and register one case; the unit of work of ``-npp`` processes."""
    images = read_distinct_phases(phase_paths, allow_unusual_intensities)
    return align_case(images, channel_names, method, {phase: str(path) for phase, path in phase_paths.items()},
                      progress, preferred_reference)


def check_phase_names(phases: Sequence[str] | Mapping[str, Path], channel_names: Sequence[str]) -> None:
    """HPNInputError for a phase the model does not have (more or other channels than the model was trained on),
    naming its file where ``phases`` maps names to paths."""
    unknown = [phase for phase in phases if phase not in channel_names]
    if unknown:
        where = f"{phases[unknown[0]]}: " if isinstance(phases, Mapping) else ""
        raise HPNInputError(f"{where}phase {unknown[0]!r} is not a channel of the model, which takes "
                            f"{len(channel_names)} phases ({', '.join(channel_names)})")
    if not phases:
        raise HPNInputError(f"no phase given; the model takes {', '.join(channel_names)}")


def read_phase_images(phase_paths: Mapping[str, Path], out_path: Path, allow_unusual_intensities: bool = False
                      ) -> dict[str, sitk.Image]:
    """The phase images of one case (names already checked, :func:`check_phase_names`), checked (the input gate of
    :func:`nnunet_hpn.io.images.read_image`, ``out_path`` an image file name), keyed by phase."""
    image_suffix(Path(out_path))
    check_series_folders_order(phase_paths)
    return read_distinct_phases(phase_paths, allow_unusual_intensities)


def read_distinct_phases(phase_paths: Mapping[str, Path], allow_unusual_intensities: bool = False
                         ) -> dict[str, sitk.Image]:
    """Every phase read through the input gate (:func:`nnunet_hpn.io.images.read_image`); no two of them one file
    or the same voxels (:func:`nnunet_hpn.io.images.check_distinct_phases`)."""
    check_distinct_phases({phase: (str(path), None) for phase, path in phase_paths.items()})
    images = {phase: read_image(path, allow_unusual_intensities) for phase, path in phase_paths.items()}
    check_distinct_phases({phase: (str(phase_paths[phase]), sitk.GetArrayViewFromImage(image))
                           for phase, image in images.items()})
    return images


def _case_inputs(case_dir: Path, channel_names: Sequence[str]) -> dict[str, Path]:
    """Phase name -> input of one folder-mode case under the case-layout rule
    (:func:`nnunet_hpn.io.case_layout.read_case_layout`: the model's phases as image files or DICOM folders, labels
    allowed and not used); at least one of the model's phases."""
    return read_case_layout(case_dir, channel_names, require="any", hint="; the model's phases").phases


def uncrop_probabilities(probabilities: np.ndarray, box: CropBox) -> np.ndarray:
    """Class probabilities (num_classes, z, y, x) on ``box``'s crop pasted into its full grid; outside the box the
    background (class 0) has probability 1."""
    (nx, ny, nz), (x0, y0, z0) = box.full_size_xyz, box.start_xyz
    full = np.zeros((probabilities.shape[0], nz, ny, nx), dtype=probabilities.dtype)
    full[0] = 1
    sx, sy, sz = box.size_xyz
    full[:, z0:z0 + sz, y0:y0 + sy, x0:x0 + sx] = probabilities
    return full


def check_dicom_seg_input(phase_paths: Mapping[str, Path], channel_names: Sequence[str],
                          preferred_reference: str | None = None) -> None:
    """``--output-format dicom-seg`` needs highdicom and the reference phase given as a DICOM series folder."""
    import_highdicom()
    reference = prediction_reference(channel_names, list(phase_paths), preferred_reference)
    if not Path(phase_paths[reference]).is_dir():
        raise HPNInputError(f"{phase_paths[reference]}: --output-format dicom-seg needs the {reference} phase as a "
                            f"DICOM series folder (the Segmentation references its instances)")


class HPNPredictor:
    """nnU-Net's ``nnUNetPredictor`` for one trained model folder (a path, or a
    :class:`~nnunet_hpn.nnunet.model_folder.ModelFolder` already read), fed with registered phase images."""

    def __init__(self, model: Path | ModelFolder, folds: Sequence[int | str] = (0,), device: str = "cpu",
                 disable_tta: bool = False, checkpoint: str = "checkpoint_final.pth", registration: str = "demons",
                 progress: bool = True, allow_unusual_intensities: bool = False, step_size: float = 0.5,
                 save_probabilities: bool = False, locator: Locator | None = None,
                 locator_margin_mm: float = STAGE2_MARGIN_MM, strict: bool = False,
                 output_format: str = "nifti") -> None:
        import torch

        model = model if isinstance(model, ModelFolder) else ModelFolder(Path(model))
        model.check_folds(folds, checkpoint)
        self.channel_names = model.channel_names
        self.reference_phase = model.reference_phase
        self.scheme = model.label_scheme  # the DICOM Segmentation's segments
        if registration not in METHODS:
            raise HPNInputError(f"{model.path}: registration {registration!r} is not one of {list(METHODS)}")
        if device not in ("cpu", "cuda"):
            raise HPNInputError(f"{device}: device must be cpu or cuda")
        if device == "cuda" and not torch.cuda.is_available():
            raise HPNInputError("cuda: no CUDA device available (use --device cpu)")
        self.registration = registration
        self.save_probabilities = save_probabilities
        if output_format not in OUTPUT_FORMATS:
            raise HPNInputError(f"--output-format {output_format}: not one of {', '.join(OUTPUT_FORMATS)}")
        self.output_format = output_format
        self.locator, self.locator_margin_mm, self.strict = locator, locator_margin_mm, strict
        if locator is not None:
            locator.check_phases(self.channel_names, self.reference_phase)
        self.allow_unusual_intensities = allow_unusual_intensities
        self.progress = progress
        if not 0 < step_size <= 1:
            raise HPNInputError(f"-step_size {step_size}: must be in (0, 1] (fraction of the patch size)")
        self.predictor = model.predictor(folds, checkpoint, device, step_size, disable_tta, progress)

    def predict_images(self, phases: Mapping[str, sitk.Image], names: Mapping[str, str] | None = None
                       ) -> CasePrediction:
        """Label map (uint8) of one case given its phase images (any grids that overlap in physical space)."""
        check_phase_names(list(phases), self.channel_names)
        return self.predict_aligned(align_case(phases, self.channel_names, self.registration, names, self.progress,
                                               self.reference_phase))

    def predict_aligned(self, case: AlignedCase) -> CasePrediction:
        """Label map (uint8) of one registered case (:func:`align_case`) on its reference grid. With a locator: HPN
        on the locator's box (:meth:`Locator.locate`) pasted back into zeros, or on the whole scan when the locator
        finds nothing (a :class:`LocatorWarning`; an HPNInputError with ``strict``)."""
        if self.locator is None:
            return self.predict_on_grid(case)
        box, record = self.locator.locate(case.phases, case.reference_phase, self.locator_margin_mm)
        start = time.perf_counter()
        if box is None:
            where = case.names.get(case.reference_phase, case.reference_phase)
            message = f"{where}: the locator {self.locator.model_dir} found no pancreas"
            if self.strict:
                raise HPNInputError(f"{message} (--strict: no whole-scan fallback)")
            warnings.warn(f"{message}; segmenting the whole scan instead", LocatorWarning, stacklevel=2)
            result = self.predict_on_grid(case)
            record["fallback"] = "whole scan"
        else:
            result = self.predict_on_grid(case.cropped(box))
            full = case.phases[case.reference_phase]
            result.label = uncrop_image(result.label, box, full, "stage 2 label map")
            if result.probabilities is not None:
                result.probabilities = uncrop_probabilities(result.probabilities, box)
                result.properties = nnunet_properties(full)
        record["stage2_seconds"] = round(time.perf_counter() - start, 2)
        result.locator = record
        return result

    def predict_on_grid(self, case: AlignedCase) -> CasePrediction:
        """Label map (uint8) of one registered case on its reference grid, HPN on the whole of it."""
        aligned, reference, qc, names = case.phases, case.reference_phase, case.qc, case.names
        # the reference phase first: a filled channel takes its grid
        ordered = {reference: aligned[reference], **aligned}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MissingPhaseWarning)  # warned once below, with the case's file names
            channels, missing = fill_missing_phases(ordered, self.channel_names)
        if missing:
            where = names.get(reference, reference) if names else reference
            warnings.warn(f"{where}: {missing_phase_message(missing, self.channel_names)}", MissingPhaseWarning,
                          stacklevel=2)
        data = np.stack([sitk.GetArrayFromImage(channel).astype(np.float32) for channel in channels])
        properties = nnunet_properties(aligned[reference])
        output = self.predictor.predict_single_npy_array(data, properties,
                                                         save_or_return_probabilities=self.save_probabilities)
        segmentation, probabilities = output if self.save_probabilities else (output, None)
        label = sitk.GetImageFromArray(np.asarray(segmentation).astype(np.uint8))
        label.CopyInformation(aligned[reference])
        return CasePrediction(label=label, reference_phase=reference, qc=qc, missing_phases=missing,
                              probabilities=probabilities, properties=properties if self.save_probabilities else None)

    def predict_and_write(self, images: Mapping[str, sitk.Image], phase_paths: Mapping[str, Path], out_path: Path,
                          qc_path: Path | None = None) -> CasePrediction:
        """Predict from phase images already read from ``phase_paths`` (names checked, :func:`read_phase_images`);
        write ``out_path`` (and ``qc_path``)."""
        names = {phase: str(path) for phase, path in phase_paths.items()}
        result = self.predict_aligned(align_case(images, self.channel_names, self.registration, names, self.progress,
                                                 self.reference_phase))
        self.write(result, phase_paths, out_path, qc_path)
        return result

    def write(self, result: CasePrediction, phase_paths: Mapping[str, Path], out_path: Path,
              qc_path: Path | None = None) -> None:
        """The outputs of one case, all of them or none (:func:`nnunet_hpn.pipeline.outputs.write_case_outputs`)."""
        write_case_outputs(result, phase_paths, out_path, qc_path, self.output_format, self.scheme,
                           self.channel_names)


@dataclass(frozen=True)
class TwoStage:
    """The two-stage options of ``predict``: the locator model folder (None: HPN on the whole scan), its folds,
    the margin (mm) around its box, and ``strict`` (an empty locator mask is an error, not a whole-scan fallback)."""

    locator_dir: Path | None = None
    folds: tuple[int | str, ...] = (0,)
    margin_mm: float = STAGE2_MARGIN_MM
    strict: bool = False

    def load(self, device: str, checkpoint: str) -> tuple[Locator | None, float, bool]:
        """HPNPredictor's ``locator``, ``locator_margin_mm`` and ``strict`` arguments (the locator model loaded)."""
        if not self.margin_mm > 0:
            raise HPNInputError(f"--locator-margin {self.margin_mm}: must be a positive number of mm")
        locator = None if self.locator_dir is None else Locator(self.locator_dir, self.folds, device, checkpoint)
        return locator, self.margin_mm, self.strict


def predict_case(phase_paths: Mapping[str, Path], model_dir: Path, out_path: Path, folds: Sequence[int | str] = (0,),
                 device: str = "cpu", disable_tta: bool = False, checkpoint: str = "checkpoint_final.pth",
                 registration: str = "demons", qc_path: Path | None = None, progress: bool = True,
                 allow_unusual_intensities: bool = False, step_size: float = 0.5,
                 save_probabilities: bool = False, two_stage: TwoStage | None = None,
                 output_format: str = "nifti", model_named_by: str = "-m") -> CasePrediction:
    """One case: ``phase_paths`` (phase name -> NIfTI file or DICOM folder) -> label map at ``out_path`` (and with
    ``save_probabilities`` nnU-Net's ``.npz`` / ``.pkl`` beside it; with ``dicom-seg`` a DICOM Segmentation). The
    inputs are read and checked before the models are loaded; no output may be an input. ``model_named_by``: the
    options that named ``model_dir`` (``-m``, or ``-d … -c …``), as error messages cite them."""
    outputs = [(out_path, "-o")]
    if save_probabilities:
        outputs += [(path, "--save_probabilities") for path in probability_files(truncated_name(Path(out_path)))]
    if output_format == "dicom-seg":
        outputs.append((dicom_seg_file(truncated_name(Path(out_path))), "--output-format dicom-seg"))
    if qc_path is not None:
        outputs.append((qc_path, "--qc"))
    check_outputs([(Path(path), flag, "file") for path, flag in outputs], phase_paths.values())
    model = ModelFolder(Path(model_dir), model_named_by)
    check_phase_names(phase_paths, model.channel_names)
    if output_format == "dicom-seg":
        check_dicom_seg_input(phase_paths, model.channel_names, model.reference_phase)
    images = read_phase_images(phase_paths, out_path, allow_unusual_intensities)  # before the models
    predictor = HPNPredictor(model, folds, device, disable_tta, checkpoint, registration, progress,
                             allow_unusual_intensities, step_size, save_probabilities,
                             *(two_stage or TwoStage()).load(device, checkpoint), output_format=output_format)
    return predictor.predict_and_write(images, phase_paths, out_path, qc_path)


def select_part(cases: Sequence[str], num_parts: int, part_id: int) -> list[str]:
    """nnU-Net's ``-num_parts`` / ``-part_id``: every ``num_parts``-th case of the sorted list, from ``part_id``."""
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise HPNInputError(f"-part_id {part_id} -num_parts {num_parts}: need num_parts >= 1 and "
                            f"0 <= part_id < num_parts")
    return sorted(cases)[part_id::num_parts]


def _aligned_cases(inputs: Mapping[str, Mapping[str, Path]], channel_names: Sequence[str], registration: str,
                   allow_unusual_intensities: bool, n_processes: int, progress: bool,
                   preferred_reference: str | None = None) -> Iterator[AlignedCase]:
    """The cases of ``inputs`` read and registered in order: in this process, or ``n_processes`` worker processes
    working at most ``2 × n_processes`` cases ahead (so a long folder is never all in memory)."""
    if n_processes <= 1:
        for phase_paths in inputs.values():
            yield read_and_align_case(phase_paths, channel_names, registration, allow_unusual_intensities, progress,
                                      preferred_reference)
        return
    with worker_pool(n_processes) as pool:
        pending: list[Future] = []
        for phase_paths in inputs.values():
            pending.append(pool.submit(read_and_align_case, phase_paths, channel_names, registration,
                                       allow_unusual_intensities, False, preferred_reference))
            if len(pending) >= 2 * n_processes:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()


def predict_folder(in_dir: Path, out_dir: Path, model_dir: Path, folds: Sequence[int | str] = (0,),
                   device: str = "cpu", disable_tta: bool = False, checkpoint: str = "checkpoint_final.pth",
                   registration: str = "demons", progress: bool = True,
                   allow_unusual_intensities: bool = False, step_size: float = 0.5, save_probabilities: bool = False,
                   n_processes_preprocessing: int = 1, n_processes_export: int = 1,
                   continue_prediction: bool = False, num_parts: int = 1, part_id: int = 0,
                   two_stage: TwoStage | None = None, output_format: str = "nifti",
                   phase_map: Path | None = None, model_named_by: str = "-m") -> list[str]:
    """Every case folder ``in_dir/<case>/`` (``<phase>.nii.gz`` files or ``<phase>/`` DICOM folders, like
    ``convert``'s input, or a DICOM study folder whose phases are identified, ``phase_map`` a reviewed phase map:
    :mod:`nnunet_hpn.io.dicom_study`) -> ``out_dir/<case>.nii.gz``, QC in ``out_dir/registration_qc/<case>.json``
    (for a study also which series became which phase and why, under ``"dicom_study"``). The model is loaded once.
    ``model_named_by``: as :func:`predict_case`. Returns the names of the cases predicted (without those
    ``continue_prediction`` skipped)."""
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    case_dirs = case_folders(in_dir)
    model = ModelFolder(Path(model_dir), model_named_by)
    channel_names, reference = model.channel_names, model.reference_phase
    studies = StagedStudies(case_dirs, channel_names, reference, phase_map, nifti=False)
    case_dirs = studies.case_dirs
    inputs = {case_dir.name: _case_inputs(case_dir, channel_names) for case_dir in case_dirs}
    inputs = {case: inputs[case] for case in select_part(list(inputs), num_parts, part_id)}
    if continue_prediction:
        inputs = {case: paths for case, paths in inputs.items()
                  if not all(path.is_file() for path in case_outputs(out_dir, case, save_probabilities,
                                                                     output_format))}
    for phase_paths in inputs.values():
        check_series_folders_order(phase_paths)  # phases named by DICOM folder: acquired in their order
    if output_format == "dicom-seg":
        for phase_paths in inputs.values():
            check_dicom_seg_input(phase_paths, channel_names, reference)
    check_outputs([(out_dir, "-o", "folder")], [in_dir])
    predictor = HPNPredictor(model, folds, device, disable_tta, checkpoint, registration, progress,
                             allow_unusual_intensities, step_size, save_probabilities,
                             *(two_stage or TwoStage()).load(device, checkpoint), output_format=output_format)
    if out_dir.exists() and not out_dir.is_dir():
        raise HPNInputError(f"{out_dir}: output path exists and is not a folder")
    with published_folder(out_dir, "merge") as staging, ThreadPoolExecutor(max(1, n_processes_export)) as writers:
        # as nnUNetv2_predict: the model's label scheme travels with its predictions (union, evaluate and report
        # read it there), and nnUNetv2_ensemble reads both files from each folder
        for name in ("dataset.json", "plans.json"):
            write_text_atomically(staging / name, (model.path / name).read_text(encoding="utf-8"))
        aligned = _aligned_cases(inputs, channel_names, registration, allow_unusual_intensities,
                                 n_processes_preprocessing, progress and n_processes_preprocessing <= 1, reference)
        writes = []
        for (case, phase_paths), case_data in tqdm(zip(inputs.items(), aligned), total=len(inputs),
                                                   desc="predicting cases", unit="case", disable=not progress):
            result = predictor.predict_aligned(case_data)
            writes.append(writers.submit(predictor.write, result, phase_paths, staging / f"{case}.nii.gz",
                                         staging / QC_FOLDER / f"{case}.json"))
        for write in writes:
            write.result()  # an error in a writer fails the folder before anything is published
        studies.add_to_qc(staging / QC_FOLDER)
    studies.cleanup()
    return list(inputs)
