"""Convert a folder of dual-phase cases into an nnU-Net v2 raw dataset (``Dataset{id:03d}_{name}``).

Input layout: ``in_dir/<case>/arterial.nii.gz``, ``venous.nii.gz`` and optionally ``label.nii.gz``; every
non-hidden sub-folder of ``in_dir`` is a case, other files are ignored. Everything is validated while the dataset is
built in a hidden temporary folder inside the raw root, which is renamed into place only when complete.
"""
from __future__ import annotations

import gzip
import os
import re
import shutil
import tempfile
import zlib
from pathlib import Path

import nibabel
import numpy as np
import SimpleITK as sitk
from nibabel.filebasedimages import ImageFileError
from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
from tqdm import tqdm

from nnunet_hpn.atomic_io import staging_dir
from nnunet_hpn import LABELS, PHASES
from nnunet_hpn.errors import HPNInputError

#: Relative and absolute tolerance for spacing, origin and direction comparisons.
GEOMETRY_TOLERANCE = 1e-4
FILE_ENDING = ".nii.gz"
LABEL_FILE = "label" + FILE_ENDING
GZIP_MAGIC = b"\x1f\x8b"
GZIP_CHUNK_BYTES = 1 << 24
DATASET_DESCRIPTION = ("Dual-phase pancreas CT for the Hyper-Pairing Network: channel 0 arterial, channel 1 venous; "
                       "labels pancreas, PDAC mass and pancreatic duct. Converted by nnunet_hpn.convert.")


def _rounded(values: tuple) -> tuple:
    """Values rounded for error messages."""
    return tuple(round(float(v), 6) for v in values)


def check_same_geometry(img_a: sitk.Image | sitk.ImageFileReader, path_a: Path | str,
                        img_b: sitk.Image | sitk.ImageFileReader, path_b: Path | str) -> None:
    """Raise HPNInputError naming ``path_b`` if its size, spacing, origin or direction differ from ``img_a``.

    Accepts images or readers after ``ReadImageInformation`` (header only).
    """
    size_a, size_b = tuple(img_a.GetSize()), tuple(img_b.GetSize())
    if size_a != size_b:
        raise HPNInputError(f"{path_b}: size differs from {path_a}: {size_b} vs {size_a}")
    for what, get in (("spacing", "GetSpacing"), ("origin", "GetOrigin"), ("direction", "GetDirection")):
        value_a, value_b = getattr(img_a, get)(), getattr(img_b, get)()
        if not np.allclose(value_b, value_a, rtol=GEOMETRY_TOLERANCE, atol=GEOMETRY_TOLERANCE):
            raise HPNInputError(f"{path_b}: {what} differs from {path_a}: {_rounded(value_b)} vs {_rounded(value_a)}")


def _read_header(path: Path) -> sitk.ImageFileReader:
    """Reader holding the header of a 3D single-component image, or HPNInputError."""
    if not path.is_file():
        raise HPNInputError(f"{path}: file is missing")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise HPNInputError(f"{path}: unreadable or corrupt image file") from None
    if reader.GetDimension() != 3:
        raise HPNInputError(f"{path}: {reader.GetDimension()}D image, expected a 3D image")
    if reader.GetNumberOfComponents() != 1:
        raise HPNInputError(f"{path}: {reader.GetNumberOfComponents()} components per voxel, expected 1")
    return reader


def _read_voxels(path: Path) -> np.ndarray:
    """Voxel values exactly as stored, or HPNInputError for a damaged file.

    SimpleITK's NIfTI reader zero-fills truncated data and reads NaN as 0, so the gzip stream is verified up to
    its checksum and the values are read with nibabel.
    """
    with path.open("rb") as file:
        if file.read(2) != GZIP_MAGIC:
            raise HPNInputError(f"{path}: not gzip-compressed although named *{FILE_ENDING}")
    try:
        with gzip.open(path, "rb") as stream:
            while stream.read(GZIP_CHUNK_BYTES):
                pass
        return np.asanyarray(nibabel.load(path).dataobj)
    except (OSError, EOFError, zlib.error, ValueError, ImageFileError):
        raise HPNInputError(f"{path}: unreadable or corrupt image data (truncated or damaged)") from None


def _check_finite(voxels: np.ndarray, path: str) -> None:
    """Refuse NaN or Inf voxels."""
    if np.issubdtype(voxels.dtype, np.floating) and not np.isfinite(voxels).all():
        raise HPNInputError(f"{path}: {int(np.count_nonzero(~np.isfinite(voxels)))} NaN/Inf voxels")


def _check_label_values(voxels: np.ndarray, path: str) -> None:
    """Refuse label values outside the HPN label convention."""
    bad_values = np.setdiff1d(np.unique(voxels), list(LABELS.values()))
    if bad_values.size:
        shown = ", ".join(f"{v:g}" for v in bad_values[:10]) + (", ..." if bad_values.size > 10 else "")
        raise HPNInputError(f"{path}: label values {{{shown}}} outside {sorted(LABELS.values())}")


def _case_files(case_dir: Path) -> tuple[list[Path], Path | None]:
    """Phase image paths (in channel order) and the label path, if any, of one case folder."""
    label = case_dir / LABEL_FILE
    return [case_dir / f"{phase}{FILE_ENDING}" for phase in PHASES], (label if label.exists() else None)


def _check_headers(case_dir: Path) -> None:
    """Cheap header checks of one case: files present, readable, 3D and on one grid."""
    phase_paths, label_path = _case_files(case_dir)
    headers = [_read_header(path) for path in phase_paths]
    for path, header in zip(phase_paths[1:], headers[1:]):
        check_same_geometry(headers[0], phase_paths[0], header, path)
    if label_path is not None:
        check_same_geometry(headers[0], phase_paths[0], _read_header(label_path), label_path)


def _check_voxels_and_copy(case_dir: Path, dataset_dir: Path) -> bool:
    """Check the voxels of one case and copy its files into ``dataset_dir``; True if it has a label."""
    phase_paths, label_path = _case_files(case_dir)
    images_dir = dataset_dir / ("imagesTr" if label_path is not None else "imagesTs")
    for channel, path in enumerate(phase_paths):
        _check_finite(_read_voxels(path), str(path))
        images_dir.mkdir(exist_ok=True)
        shutil.copyfile(path, images_dir / f"{case_dir.name}_{channel:04d}{FILE_ENDING}")
    if label_path is None:
        return False
    label_voxels = _read_voxels(label_path)
    _check_finite(label_voxels, str(label_path))
    _check_label_values(label_voxels, str(label_path))
    (dataset_dir / "labelsTr").mkdir(exist_ok=True)
    shutil.copyfile(label_path, dataset_dir / "labelsTr" / f"{case_dir.name}{FILE_ENDING}")
    return True


def _write_dataset_json(dataset_dir: Path, name: str, num_training: int) -> None:
    """dataset.json written by nnU-Net's own helper."""
    generate_dataset_json(str(dataset_dir), channel_names={str(i): phase for i, phase in enumerate(PHASES)},
                          labels=dict(LABELS), num_training_cases=num_training, file_ending=FILE_ENDING,
                          dataset_name=name, description=DATASET_DESCRIPTION, converted_by="nnunet_hpn.convert",
                          license="see the source data")


def _replace_dataset(built_dir: Path, target: Path, existing: list[Path]) -> None:
    """Move ``built_dir`` to ``target``, removing the ``existing`` folders of the same dataset id."""
    if not existing:
        os.replace(built_dir, target)
        return
    trash_dir = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
    for index, old in enumerate(existing):
        os.replace(old, trash_dir / str(index))
    os.replace(built_dir, target)
    shutil.rmtree(trash_dir)


def convert_cases(in_dir: Path, dataset_id: int, name: str, raw_root: Path | None = None, overwrite: bool = False,
                  progress: bool = True) -> Path:
    """Build ``raw_root/Dataset{id:03d}_{name}`` (raw_root defaults to ``$nnUNet_raw``) and return its path.

    Cases with ``label.nii.gz`` go to imagesTr/labelsTr, the others to imagesTs. Nothing is left in the raw
    root when any input is invalid (HPNInputError).
    """
    in_dir = Path(in_dir)
    if raw_root is None:
        if not os.environ.get("nnUNet_raw"):
            raise HPNInputError("nnUNet_raw: environment variable not set and no raw_root given")
        raw_root = Path(os.environ["nnUNet_raw"])
    raw_root = Path(raw_root)
    if not 1 <= dataset_id <= 999:
        raise HPNInputError(f"{in_dir}: dataset id must be in 1..999, got {dataset_id}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
        raise HPNInputError(f"{in_dir}: dataset name {name!r} must be letters, digits, '_' or '-'")
    if not in_dir.is_dir():
        raise HPNInputError(f"{in_dir}: input folder does not exist")
    case_dirs = sorted(path for path in in_dir.iterdir() if path.is_dir() and not path.name.startswith("."))
    if not case_dirs:
        raise HPNInputError(f"{in_dir}: no case folders found")
    target = raw_root / f"Dataset{dataset_id:03d}_{name}"
    existing = sorted(path for path in raw_root.glob(f"Dataset{dataset_id:03d}_*") if path.is_dir())
    if existing and not overwrite:
        raise HPNInputError(f"{existing[0]}: dataset id {dataset_id} already exists (use overwrite to replace it)")

    for case_dir in case_dirs:
        _check_headers(case_dir)
    if all(_case_files(case_dir)[1] is None for case_dir in case_dirs):
        raise HPNInputError(f"{in_dir}: no case has a {LABEL_FILE}, nothing to train on")

    raw_root.mkdir(parents=True, exist_ok=True)
    built_dir = staging_dir(raw_root, prefix=f".{target.name}.")
    try:
        num_training = sum(_check_voxels_and_copy(case_dir, built_dir)
                           for case_dir in tqdm(case_dirs, desc="converting cases", unit="case", disable=not progress))
        _write_dataset_json(built_dir, name, num_training)
        _replace_dataset(built_dir, target, existing)
    finally:
        shutil.rmtree(built_dir, ignore_errors=True)
    return target
