"""Multi-phase CT studies in DICOM: series found, phases identified (and written for review), DICOM-SEG labels read.

One module per step, each importing only the ones before it:

* :mod:`.series`: a study folder's headers read and grouped into candidate CT volumes (:func:`scan_study`), the
  rest set aside with a reason; a candidate's volume in HU (:func:`read_candidate`);
* :mod:`.phases`: the candidates' contrast phases from timing tags, with the image as second opinion
  (:func:`identify_phases`); an assignment against the timing refused (:func:`check_named_order`);
* :mod:`.phase_map`: the assignments written as a CSV for review and read back;
* :mod:`.segmentation`: a DICOM Segmentation read as a label map on the grid of the series it references;
* :mod:`.cases`: study folders resolved and staged as ordinary case folders for ``convert`` and ``predict``.

The names other modules (and the tests) use are imported here; everything else, the rules' constants
included, is read from its module.
"""
from nnunet_hpn.io.dicom_study.cases import StagedStudies, dataset_labels, resolve_studies, review_phase_map
from nnunet_hpn.io.dicom_study.phase_map import phase_map_text
from nnunet_hpn.io.dicom_study.phases import KNOWN_PHASES, check_series_folders_order, image_evidence
from nnunet_hpn.io.dicom_study.segmentation import read_segmentation
from nnunet_hpn.io.dicom_study.series import read_candidate, scan_study

__all__ = ["KNOWN_PHASES", "StagedStudies", "check_series_folders_order", "dataset_labels", "image_evidence",
           "phase_map_text", "read_candidate", "read_segmentation", "resolve_studies", "review_phase_map",
           "scan_study"]
