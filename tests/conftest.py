"""Shared fixtures: a tiny dual-phase phantom dataset, converted and planned with the STOCK nnU-Net commands."""
import json
import locale
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


def write_dicom_series(volume, folder: Path, spacing, origin, direction) -> None:
    """A minimal CT series, one file per slice, with position/orientation tags, patient, study, series, frame of
    reference and per-slice SOP instance UIDs (what a DICOM Segmentation needs to reference it)."""
    import pydicom
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(volume)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    orientation = "\\".join(f"{v:.6f}" for v in (direction[0], direction[3], direction[6],
                                                    direction[1], direction[4], direction[7]))
    for z in range(volume.shape[0]):
        slice_image = image[:, :, z]
        position = image.TransformIndexToPhysicalPoint((0, 0, z))
        for tag, value in (("0008|0060", "CT"), ("0020|000e", DICOM_SERIES_UID), ("0020|000d", DICOM_STUDY_UID),
                           ("0020|0052", DICOM_FRAME_UID), ("0008|0016", "1.2.840.10008.5.1.4.1.1.2"),
                           ("0008|0018", f"{DICOM_SERIES_UID}.{z + 1}"), ("0010|0020", "HPN-TEST"),
                           ("0010|0010", "Phantom^HPN"), ("0020|0037", orientation),
                           ("0020|0032", "\\".join(f"{v:.6f}" for v in position)), ("0020|0013", str(z + 1)),
                           ("0028|0030", f"{spacing[1]:.6f}\\{spacing[0]:.6f}"), ("0018|0050", f"{spacing[2]:.6f}")):
            slice_image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice_{z:03d}.dcm"))
        saved_locale = locale.setlocale(locale.LC_ALL)
        try:
            writer.Execute(slice_image)
        finally:  # GDCM's DICOM writer leaves the process in the "C" locale (ASCII text files for later tests)
            locale.setlocale(locale.LC_ALL, saved_locale)
        # once any series has been read in this process, GDCM writes a 2D slice's spacing (1) as Spacing Between
        # Slices, which DICOM-SEG readers then trust: the series' own spacing, set with pydicom
        written = pydicom.dcmread(folder / f"slice_{z:03d}.dcm")
        written.SpacingBetweenSlices = f"{spacing[2]:.6f}"
        written.save_as(folder / f"slice_{z:03d}.dcm")


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
