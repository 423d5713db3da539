"""Clinical output: an HPN label map as a DICOM Segmentation object (highdicom) referencing the input series.

The label map must lie on the grid of the DICOM series it was predicted from (``predict``'s output does: it is on the
arterial input's grid). Frame ``z`` of the label map belongs to the series' slice file ``z`` in SimpleITK's reading
order (:func:`nnunet_hpn.io.images.dicom_file_names`), so every frame references the source instance it was
computed from. One segment per label of the model's label scheme (:mod:`nnunet_hpn.labels`; a region-based one: per
region, by the value nnU-Net paints it with), named after it, with SNOMED CT codes where the name is known
(:data:`KNOWN_SEGMENTS`: the paper's pancreas (Anatomical Structure / Pancreas), PDAC (Morphologically Abnormal
Structure / Adenocarcinoma of pancreas) and duct (Anatomical Structure / Pancreatic duct), and a few organs), else
Tissue / Tissue.
Needs the ``dicom`` extra (``pip install nnunet-hpn[dicom]``: highdicom).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_hpn.errors import HPNInputError
from nnunet_hpn.io.geometry import check_same_grid
from nnunet_hpn.io.images import dicom_file_names
from nnunet_hpn.labels import PDAC_SCHEME, LabelScheme
from nnunet_hpn.version import __version__

#: Label name (lower case) -> (segment label, category code name, type code name) in pydicom's SCT code dictionary.
KNOWN_SEGMENTS: dict[str, tuple[str, str, str]] = {
    "pancreas": ("pancreas", "AnatomicalStructure", "Pancreas"),
    "pdac": ("PDAC", "MorphologicallyAbnormalStructure", "AdenocarcinomaOfPancreas"),
    "duct": ("pancreatic duct", "AnatomicalStructure", "PancreaticDuct"),
    "pancreatic duct": ("pancreatic duct", "AnatomicalStructure", "PancreaticDuct"),
    "liver": ("liver", "AnatomicalStructure", "Liver"),
    "portal vein": ("portal vein", "AnatomicalStructure", "PortalVein"),
    "aorta": ("aorta", "AnatomicalStructure", "Aorta"),
}
#: category and type of a label with no known code
GENERIC_SEGMENT: tuple[str, str] = ("Tissue", "Tissue")


def segments(scheme: LabelScheme = PDAC_SCHEME) -> dict[int, tuple[str, str, str]]:
    """Segment number (the value in the label map) -> (segment label, category code name, type code name)."""
    return {value: KNOWN_SEGMENTS.get(name.lower(), (name, *GENERIC_SEGMENT))
            for value, name in scheme.output_values.items()}


#: The paper's segments (label value -> segment label, category, type).
SEGMENTS: dict[int, tuple[str, str, str]] = segments(PDAC_SCHEME)
#: File ending of the DICOM Segmentation written next to a label map ``<case>.nii.gz``: ``<case>.seg.dcm``.
DICOM_SEG_ENDING = ".seg.dcm"


def import_highdicom():
    """The highdicom module, or one HPNInputError line naming the missing package."""
    try:
        import highdicom
    except ImportError:
        raise HPNInputError("--output-format dicom-seg needs the package 'highdicom' "
                            "(pip install 'nnunet-hpn[dicom]' or pip install highdicom)") from None
    return highdicom


def dicom_seg_for(label: sitk.Image, series_folder: Path, scheme: LabelScheme = PDAC_SCHEME):
    """The DICOM Segmentation (a highdicom ``Segmentation``) of ``label`` (values of ``scheme`` on the series' grid)
    referencing the series in ``series_folder``."""
    import pydicom
    from pydicom.sr.codedict import codes

    hd = import_highdicom()
    from nnunet_hpn.io.images import read_dicom_series

    series_folder = Path(series_folder)
    check_same_grid(read_dicom_series(series_folder), str(series_folder), label, "label map",
                    " (a DICOM Segmentation needs the label map on the series' own grid)")
    sources = [pydicom.dcmread(name) for name in dicom_file_names(series_folder)]
    voxels = sitk.GetArrayFromImage(label).astype(np.uint8)  # (z, y, x): frame z <-> sources[z]
    known = segments(scheme)
    unknown = sorted(set(np.unique(voxels).tolist()) - {0, *known})
    if unknown:
        raise HPNInputError(f"{series_folder}: label values {unknown} are not labels of the scheme {sorted(known)}")
    algorithm = hd.AlgorithmIdentificationSequence(name="nnunet-hpn", version=__version__,
                                                   family=codes.cid7162.ArtificialIntelligence)
    descriptions = [hd.seg.SegmentDescription(segment_number=number, segment_label=name,
                                              segmented_property_category=getattr(codes.SCT, category),
                                              segmented_property_type=getattr(codes.SCT, kind),
                                              algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                                              algorithm_identification=algorithm)
                    for number, (name, category, kind) in sorted(known.items())]
    try:
        return hd.seg.Segmentation(
            source_images=sources, pixel_array=voxels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=901,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="nnunet-hpn",
            manufacturer_model_name="Hyper-Pairing Network", software_versions=__version__,
            device_serial_number="none", series_description="HPN " + " / ".join(
                segment[0] for _, segment in sorted(known.items())))
    except (ValueError, AttributeError, TypeError) as error:  # source headers highdicom cannot reference
        raise HPNInputError(f"{series_folder}: cannot build a DICOM Segmentation referencing this series "
                            f"({str(error).splitlines()[0]})") from None

