"""Region-of-interest crops of whole folders: predictions made on crops pasted back onto the full images.

The boxes and the cutting and pasting of one image are :mod:`nnunet_hpn.io.crop_boxes`. Used as an *oracle* ROI (the
box comes from the ground truth: for experiments where the budget must go to the pancreas region, never as a claim
about finding the pancreas) and as the training data of a second stage.
"""
from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk
from tqdm import tqdm

from nnunet_hpn.errors import HPNInputError
from nnunet_hpn.io.case_layout import phase_images
from nnunet_hpn.io.crop_boxes import read_boxes, uncrop_image
from nnunet_hpn.io.listing import predicted_cases
from nnunet_hpn.io.publish import check_outputs, published_folder
from nnunet_hpn.phases import channel_file_name


def find_reference(reference_dir: Path, case: str, file_ending: str = ".nii.gz") -> Path:
    """The full image of ``case`` in ``reference_dir``: ``<case>_0000``, ``<case>`` (nnU-Net names) or
    ``<case>/<any phase>`` (a case folder, :func:`nnunet_hpn.io.case_layout.phase_images`; its first image in name
    order)."""
    for candidate in (reference_dir / channel_file_name(case, 0, file_ending), reference_dir / f"{case}{file_ending}"):
        if candidate.is_file():
            return candidate
    folder = reference_dir / case
    images = phase_images(folder, file_ending) if folder.is_dir() else []
    if not images:
        raise HPNInputError(f"{reference_dir}: no full image of case {case!r} ({case}_0000{file_ending}, "
                            f"{case}{file_ending} or {case}/<phase>{file_ending})")
    return images[0]


def uncrop_folder(pred_dir: Path, boxes_path: Path, reference_dir: Path, out_dir: Path,
                  file_ending: str = ".nii.gz", progress: bool = True) -> list[str]:
    """Paste every ``pred_dir/<case><file_ending>`` back onto the full grid of its reference image; the label maps
    go to ``out_dir`` (built hidden, moved into place when all cases succeeded; an existing ``out_dir`` must be
    empty). Every prediction is checked as a label map of the scheme of the dataset.json beside it (default the
    paper's). Returns the cases."""
    pred_dir, reference_dir, out_dir = Path(pred_dir), Path(reference_dir), Path(out_dir)
    boxes = read_boxes(boxes_path)
    cases = predicted_cases(pred_dir, file_ending)
    unknown = [case for case in cases if case not in boxes]
    if unknown:
        raise HPNInputError(f"{pred_dir / (unknown[0] + file_ending)}: case not in {boxes_path}")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise HPNInputError(f"{out_dir}: output exists and is not an empty folder")
    check_outputs([(out_dir, "-o", "folder")], [pred_dir, Path(boxes_path), reference_dir])
    references = {case: find_reference(reference_dir, case, file_ending) for case in cases}
    from nnunet_hpn.io.images import read_label
    from nnunet_hpn.labels import resolve_scheme

    scheme = resolve_scheme(None, [pred_dir])  # values outside it, or fractional, are refused: never pasted through
    with published_folder(out_dir, "new") as built:
        for case in tqdm(cases, desc="uncrop", unit="case", disable=not progress):
            prediction_path = pred_dir / f"{case}{file_ending}"
            full = uncrop_image(read_label(prediction_path, scheme)[1], boxes[case],
                                sitk.ReadImage(str(references[case])), str(prediction_path))
            sitk.WriteImage(full, str(built / f"{case}{file_ending}"), useCompression=True)
    return cases

