"""Two-stage whole-scan inference, stage 1: a locator model finds the pancreas, stage 2 (HPN) segments its region.

PDAC is a few cubic centimetres inside a scan of 512×512×150+ voxels; the practice of the field is to locate the
pancreas at low resolution first and segment the tumour in a crop at full resolution. The pieces:

* **Locator dataset** (:func:`write_locator_dataset`, ``nnunet-hpn locator-dataset``): an nnU-Net dataset derived from
  an HPN dataset with one label, the union of all its foreground labels (the abnormal pancreas 1 ∪ 2 ∪ 3 for the
  paper's scheme, named "pancreas") or one named target of its label scheme (:mod:`nnunet_hpn.labels`), and the
  reference phase (or every phase) as channels, for the stock ``nnUNetv2_plan_and_preprocess`` /
  ``nnUNetv2_train`` at a coarse configuration.
* **Locator** (:class:`Locator`): any trained nnU-Net model folder of this plugin's datasets (its foreground labels
  together: the locator dataset's, HPN's own) or with a label named "pancreas" (a multi-organ model); its channels
  are phases of the case, or a single channel of any name (fed the reference phase).
* **Box** (:func:`locator_box`): the largest connected component of the locator's mask, its bounding box plus
  ``STAGE2_MARGIN_MM`` (the crop of :mod:`nnunet_hpn.pipeline.crop`, world positions kept).

Stage 2 is trained on label crops of ``STAGE2_TRAINING_MARGIN_MM`` (``convert --crop-to-label``) with the box
jittered during training (:mod:`nnunet_hpn.augment.box_jitter`), so that it tolerates a box up to
``BOX_JITTER_MM`` tighter or wider than the inference margin (the margins: :mod:`nnunet_hpn.augment.box_margins`).
``nnunet-hpn predict --locator`` puts it together (:meth:`nnunet_hpn.pipeline.predict.HPNPredictor.predict_aligned`).
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from nnunet_hpn.augment.box_margins import STAGE2_MARGIN_MM
from nnunet_hpn.errors import HPNInputError, HPNWarning
from nnunet_hpn.io.crop_boxes import CropBox, label_box
from nnunet_hpn.io.publish import check_outputs, published_folder
from nnunet_hpn.labels import HPN_KEY, PDAC_LABELS, LabelScheme, dataset_reference_phase
from nnunet_hpn.nnunet.model_folder import ModelFolder, nnunet_properties
from nnunet_hpn.phases import channel_file_name, channel_files, channel_names

#: The locator dataset's labels for the paper's scheme (another scheme's: the target's name, or "foreground").
LOCATOR_LABELS: dict[str, int] = {"background": 0, "pancreas": 1}
#: Key of a locator dataset's ``"hpn"`` facts: the dataset it was derived from (its one label is the mask to crop to).
LOCATOR_SOURCE_KEY = "locator_of"


class LocatorWarning(HPNWarning):
    """The locator found no pancreas: the case is segmented on the whole scan."""


def pancreas_label_values(dataset_json: Mapping, where: str) -> tuple[int, ...]:
    """The label values of a model's ``dataset.json`` that together make the locator's mask: every foreground label
    of the paper's label set or of a locator dataset (:func:`write_locator_dataset`, whatever its label's name),
    else the labels whose name contains "pancreas". One-line HPNInputError for region-based labels or a label set
    without a pancreas."""
    labels = dataset_json.get("labels")
    if not isinstance(labels, Mapping) or not labels:
        raise HPNInputError(f"{where}: no 'labels' in dataset.json")
    if any(not isinstance(value, int) or isinstance(value, bool) for value in labels.values()):
        raise HPNInputError(f"{where}: region-based labels ({dict(labels)}); a locator must output a label map "
                            f"with a 'pancreas' label")
    if dict(labels) == PDAC_LABELS or LOCATOR_SOURCE_KEY in (dataset_json.get(HPN_KEY) or {}):
        return tuple(value for value in labels.values() if value > 0)
    values = tuple(value for name, value in labels.items() if "pancreas" in name.lower() and value > 0)
    if not values:
        shown = ", ".join(f"{name}={value}" for name, value in labels.items())
        raise HPNInputError(f"{where}: labels {{{shown}}} have no 'pancreas' label; a locator must output a pancreas "
                            f"mask (e.g. a model trained on 'nnunet-hpn locator-dataset')")
    return values


def locator_inputs(locator_channels: Sequence[str], phases: Sequence[str], reference: str, where: str) -> list[str]:
    """The case's phases fed to the locator's channels, in its channel order: the phases its channels are named
    after, or the reference phase for a single channel of another name (e.g. "CT")."""
    if all(name in phases for name in locator_channels):
        return list(locator_channels)
    if len(locator_channels) == 1:
        return [reference]
    raise HPNInputError(f"{where}: the locator's channels ({', '.join(locator_channels)}) are not phases of the "
                        f"case ({', '.join(phases)}); a locator takes one channel or channels named after phases")


def largest_component(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """The largest 26-connected component of a boolean (z, y, x) mask and the number of components."""
    from scipy import ndimage

    labelled, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if count <= 1:
        return mask.astype(bool), count
    sizes = np.bincount(labelled.ravel())[1:]
    return labelled == (int(np.argmax(sizes)) + 1), count


def locator_box(mask: np.ndarray, reference: sitk.Image, margin_mm: float = STAGE2_MARGIN_MM,
                where: str = "locator") -> tuple[CropBox, dict]:
    """The crop box of the largest component of ``mask`` (z, y, x, on ``reference``'s grid) grown by ``margin_mm``,
    and what the QC file records of it. ``mask`` must not be empty."""
    component, count = largest_component(mask)
    image = sitk.GetImageFromArray(component.astype(np.uint8))
    image.CopyInformation(reference)
    box = label_box(image, margin_mm, where)
    voxel_ml = float(np.prod(reference.GetSpacing())) / 1000.0
    return box, {"components": int(count), "mask_volume_ml": round(float(mask.sum()) * voxel_ml, 3),
                 "component_volume_ml": round(float(component.sum()) * voxel_ml, 3), "margin_mm": margin_mm,
                 "box": {"start_xyz": list(box.start_xyz), "size_xyz": list(box.size_xyz),
                         "full_size_xyz": list(box.full_size_xyz)}}


class Locator:
    """A trained nnU-Net model folder (``--locator``) used as stage 1: :meth:`pancreas_mask` of a registered
    case."""

    def __init__(self, model_dir: Path, folds: Sequence[int | str] = (0,), device: str = "cpu",
                 checkpoint: str = "checkpoint_final.pth", disable_tta: bool = True, progress: bool = False) -> None:
        model = ModelFolder(model_dir, named_by="--locator")
        self.model_dir = model.path
        self.label_values = pancreas_label_values(model.dataset, str(model.dataset_file))  # before any checkpoint
        self.channel_names = model.channel_names
        self.predictor = model.predictor(folds, checkpoint, device, disable_tta=disable_tta, progress=progress,
                                         folds_flag="--locator-folds")

    def check_phases(self, phases: Sequence[str], reference: str) -> list[str]:
        """The phases the locator reads (:func:`locator_inputs`), checked before any case is read."""
        return locator_inputs(self.channel_names, phases, reference, str(self.model_dir / "dataset.json"))

    def pancreas_mask(self, phases: Mapping[str, sitk.Image], reference: str) -> np.ndarray:
        """Boolean (z, y, x) pancreas mask on the ``reference`` phase's grid (every phase must be on that grid)."""
        inputs = self.check_phases(list(phases), reference)
        data = np.stack([sitk.GetArrayFromImage(phases[name]).astype(np.float32) for name in inputs])
        segmentation = self.predictor.predict_single_npy_array(data, nnunet_properties(phases[reference]))
        return np.isin(np.asarray(segmentation), self.label_values)

    def locate(self, phases: Mapping[str, sitk.Image], reference: str, margin_mm: float = STAGE2_MARGIN_MM
               ) -> tuple[CropBox | None, dict]:
        """The stage-2 box of one registered case (None when the mask is empty) and its QC record (the box,
        volumes, seconds)."""
        start = time.perf_counter()
        mask = self.pancreas_mask(phases, reference)
        qc: dict = {"model": str(self.model_dir)}
        box = None
        if mask.any():
            box, record = locator_box(mask, phases[reference], margin_mm, str(self.model_dir))
            qc.update(record)
        else:
            qc.update({"components": 0, "mask_volume_ml": 0.0})
        qc["seconds"] = round(time.perf_counter() - start, 2)
        return box, qc


def write_locator_dataset(source_dir: Path, target_id: int, all_phases: bool = False, progress: bool = True,
                          target: str | None = None) -> Path:
    """``Dataset{target_id:03d}_{source name}Locator`` next to the HPN dataset ``source_dir`` (a raw dataset folder):
    the same training cases with one label, the union of every foreground label (the paper's abnormal pancreas,
    named "pancreas") or the named ``target`` of the source's label scheme, and the reference phase (the one stored
    in its dataset.json) as its only channel (``all_phases``: every phase, in the source's channel order). Images
    are copied unchanged; the folder appears complete or not at all."""
    source_dir = Path(source_dir)
    dataset_json = source_dir / "dataset.json"
    try:
        meta = json.loads(dataset_json.read_text(encoding="utf-8"))
        phases = channel_names(meta)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise HPNInputError(f"{dataset_json}: missing or no readable channel_names") from None
    scheme = LabelScheme.from_dataset_json(meta, str(dataset_json))
    if target is not None and target not in scheme.targets:
        raise HPNInputError(f"{dataset_json}: target {target!r} is not one of the targets {list(scheme.targets)}")
    mask_values = scheme.foreground_values if target is None else scheme.target_values[target]
    if target is None and scheme.labels == PDAC_LABELS:
        locator_labels, what = dict(LOCATOR_LABELS), "abnormal pancreas (pancreas, PDAC and duct of the source)"
    else:
        label_name = target or "foreground"
        locator_labels = {"background": 0, label_name: 1}
        what = f"{label_name} ({', '.join(scheme.targets[target] if target else scheme.foreground)} of the source)"
    if not 1 <= target_id <= 999:
        raise HPNInputError(f"{source_dir}: dataset id must be in 1..999, got {target_id}")
    ending = meta.get("file_ending", ".nii.gz")
    reference = dataset_reference_phase(meta, where=str(dataset_json))
    used = list(phases) if all_phases else [reference]
    cases = channel_files(source_dir / "imagesTr", len(phases), ending)
    labels_dir = source_dir / "labelsTr"
    missing = [case for case in cases if not (labels_dir / f"{case}{ending}").is_file()]
    if missing:
        raise HPNInputError(f"{labels_dir / (missing[0] + ending)}: missing (every training case needs a label)")
    raw_root = source_dir.parent
    existing = sorted(raw_root.glob(f"Dataset{target_id:03d}_*"))
    if existing:
        raise HPNInputError(f"{existing[0]}: dataset id {target_id} already exists; pick another id")
    name = source_dir.name.split("_", 1)[1] if "_" in source_dir.name else source_dir.name
    target_dir = raw_root / f"Dataset{target_id:03d}_{name}Locator"
    check_outputs([(raw_root, "--raw-root", "folder")])
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    with published_folder(target_dir, "new") as built:
        (built / "imagesTr").mkdir()
        (built / "labelsTr").mkdir()
        for case, files in tqdm(sorted(cases.items()), desc="locator dataset", unit="case", disable=not progress):
            for channel, phase in enumerate(used):
                shutil.copyfile(files[phases.index(phase)], built / "imagesTr" / channel_file_name(case, channel,
                                                                                                  ending))
            label = sitk.ReadImage(str(labels_dir / f"{case}{ending}"))
            mask = sitk.GetImageFromArray(np.isin(sitk.GetArrayViewFromImage(label), mask_values).astype(np.uint8))
            mask.CopyInformation(label)
            sitk.WriteImage(mask, str(built / "labelsTr" / f"{case}{ending}"), useCompression=True)
        generate_dataset_json(str(built), channel_names={str(i): phase for i, phase in enumerate(used)},
                              labels=locator_labels, num_training_cases=len(cases), file_ending=ending,
                              dataset_name=target_dir.name,
                              description=f"Locator (stage 1 of two-stage HPN) derived from {source_dir.name}: "
                                          f"label 1 = {what}; channels {', '.join(used)}.",
                              converted_by="nnunet_hpn.pipeline.locator", license="as the source dataset",
                              **{HPN_KEY: {"reference_phase": reference, LOCATOR_SOURCE_KEY: source_dir.name}})
    return target_dir
