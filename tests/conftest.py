"""Shared fixtures: a tiny dual-phase phantom dataset, converted and planned with the STOCK nnU-Net commands."""
import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

BIN = Path(sys.executable).parent
TINY_CONFIGURATION = "3d_tiny"
DATASET_ID = 990
DATASET_NAME = "HPNTest"


def nnunet_env(root: Path) -> Dict[str, str]:
    """The demo's environment for stock nnU-Net commands (folders under ``root``, 2 workers), without any
    ``nnUNet_extTrainer`` of the caller: only the package's start-up hook may set it."""
    from nnunet_hpn.demo import nnunet_env as demo_env

    env = demo_env(root)
    env.pop("nnUNet_extTrainer", None)
    return env


def run_stock(args: List[str], env: Dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs a console script of this environment; fails the test with its output if it exits non-zero."""
    proc = subprocess.run([str(BIN / args[0])] + args[1:], env=env, capture_output=True, text=True, timeout=timeout,
                          encoding="utf-8", errors="replace")  # progress bars print non-ASCII blocks
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {proc.returncode}\nSTDOUT:\n{proc.stdout[-4000:]}\n"
                    f"STDERR:\n{proc.stderr[-4000:]}")
    return proc


#: Study / series / frame-of-reference UIDs of the series :func:`write_dicom_series` writes.
DICOM_STUDY_UID, DICOM_SERIES_UID, DICOM_FRAME_UID = ("1.2.826.0.1.3680043.2.1125.1.41",
                                                      "1.2.826.0.1.3680043.2.1125.1.42",
                                                      "1.2.826.0.1.3680043.2.1125.1.43")


#: Rescale intercept of the CT slices :func:`ct_slice_dataset` writes (stored value = HU - intercept).
CT_RESCALE_INTERCEPT = -1024


def dicom_file_dataset(sop_class: str, sop_uid: str):
    """An empty DICOM file (pydicom FileDataset, explicit VR little endian) of one SOP class and instance UID."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    return ds


def ct_slice_dataset(plane, *, position, orientation, pixel_spacing, thickness: float, study_uid: str,
                     series_uid: str, frame_uid: str, sop_uid: str, instance_number: int,
                     patient=("Phantom^HPN", "HPN-TEST")):
    """One CT image (pydicom FileDataset) of ``plane`` (rows, columns; HU): position / orientation, pixel spacing
    (row, column mm), slice thickness, study / series / frame / SOP UIDs; HU stored as signed 16 bit with
    :data:`CT_RESCALE_INTERCEPT`."""
    import numpy as np
    from pydicom.uid import CTImageStorage

    stored = np.asarray(plane, dtype=np.int64) - CT_RESCALE_INTERCEPT
    if stored.min() < np.iinfo(np.int16).min or stored.max() > np.iinfo(np.int16).max:
        raise ValueError(f"HU {plane.min()}..{plane.max()} do not fit 16 bits with intercept {CT_RESCALE_INTERCEPT}")
    ds = dicom_file_dataset(CTImageStorage, sop_uid)
    ds.Modality = "CT"
    ds.PatientName, ds.PatientID = patient
    # type-2 attributes of the patient and study modules (present, possibly empty), which a DICOM-SEG copies
    ds.PatientBirthDate = ds.PatientSex = ds.StudyDate = ds.StudyTime = ds.StudyID = ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
    ds.InstanceNumber = instance_number
    ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
    ds.PixelSpacing, ds.SliceThickness = [f"{v:.6f}" for v in pixel_spacing], f"{thickness:.6f}"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope = CT_RESCALE_INTERCEPT, 1
    ds.PixelData = stored.astype("<i2").tobytes()
    return ds


def write_dicom_series(volume, folder: Path, spacing, origin, direction) -> None:
    """A minimal CT series of ``volume`` (z, y, x; HU) on the grid of ``spacing`` / ``origin`` / ``direction``
    (SimpleITK's order), one file per slice, with position / orientation, patient, study, series, frame of reference
    (:data:`DICOM_STUDY_UID` ...) and per-slice SOP instance UIDs (what a DICOM Segmentation needs to reference it)."""
    import numpy as np

    axes = np.asarray(direction, dtype=float).reshape(3, 3)  # columns: the x, y, z axes
    folder.mkdir()
    for z, plane in enumerate(volume):
        position = np.asarray(origin) + axes[:, 2] * spacing[2] * z
        ds = ct_slice_dataset(plane, position=position, orientation=(*axes[:, 0], *axes[:, 1]),
                              pixel_spacing=(spacing[1], spacing[0]), thickness=spacing[2],
                              study_uid=DICOM_STUDY_UID, series_uid=DICOM_SERIES_UID, frame_uid=DICOM_FRAME_UID,
                              sop_uid=f"{DICOM_SERIES_UID}.{z + 1}", instance_number=z + 1)
        ds.SpacingBetweenSlices = f"{spacing[2]:.6f}"
        ds.save_as(folder / f"slice_{z:03d}.dcm", enforce_file_format=True)


@pytest.fixture(scope="session")
def planned_dataset(tmp_path_factory) -> dict:
    """6 labelled + 2 unlabelled phantom cases → Dataset990_HPNTest, planned and preprocessed by
    ``nnUNetv2_plan_and_preprocess -pl HPNPlanner -np 2`` (spawned workers), plus a tiny CPU configuration."""
    from nnunet_hpn.pipeline.convert import convert_cases
    from nnunet_hpn.phantom import write_phantom_cases
    from nnunet_hpn.nnunet.plans_tools import add_small_configuration

    root = tmp_path_factory.mktemp("nnunet")
    env = nnunet_env(root)
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        Path(env[key]).mkdir()
    cases = write_phantom_cases(root / "phantoms", 8, seed=3, shape_zyx=(24, 48, 48), progress=False)
    truth = root / "test_labels"
    truth.mkdir()
    for case in cases[-2:]:
        (root / "phantoms" / case / "label.nii.gz").rename(truth / f"{case}.nii.gz")
    raw = convert_cases(root / "phantoms", DATASET_ID, DATASET_NAME, raw_root=Path(env["nnUNet_raw"]), progress=False)
    plan = run_stock(["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-pl", "HPNPlanner", "-c", "3d_fullres",
                      "-np", "2", "-npfp", "2"], env)
    plans_file = Path(env["nnUNet_preprocessed"]) / raw.name / "nnUNetHPNPlans.json"
    add_small_configuration(plans_file, TINY_CONFIGURATION, patch_size=(16, 32, 32), base_features=4,
                            max_features=16)
    return {"root": root, "env": env, "raw": raw, "plans_file": plans_file, "test_cases": cases[-2:],
            "test_labels": truth, "plan_output": plan.stdout + plan.stderr,
            "plans": json.loads(plans_file.read_text())}


PREDICT_TRAINER = "HPNTrainer_cpu_smoke"
PREDICT_PLANS = "nnUNetHPNPlans"


@pytest.fixture(scope="session")
def predict_model(planned_dataset, tmp_path_factory) -> Path:
    """``nnUNetv2_train 990 3d_tiny 0 -tr HPNTrainer_cpu_smoke`` (1 epoch × 3 iterations, no TTA) into a results
    folder of its own, so other tests' models are not touched."""
    env = dict(planned_dataset["env"])
    env.update({"nnUNet_results": str(tmp_path_factory.mktemp("predict_results")), "HPN_NUM_EPOCHS": "1",
                "HPN_ITERATIONS_PER_EPOCH": "3", "HPN_VAL_ITERATIONS_PER_EPOCH": "1", "HPN_NO_TTA": "1"})
    run_stock(["nnUNetv2_train", str(DATASET_ID), TINY_CONFIGURATION, "0", "-tr", PREDICT_TRAINER,
               "-p", PREDICT_PLANS, "-device", "cpu"], env)
    model_dir = (Path(env["nnUNet_results"]) / planned_dataset["raw"].name
                 / f"{PREDICT_TRAINER}__{PREDICT_PLANS}__{TINY_CONFIGURATION}")
    assert (model_dir / "fold_0" / "checkpoint_final.pth").is_file()
    return model_dir
