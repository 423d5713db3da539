"""Reading the images of one case: NIfTI (or any single file SimpleITK reads) and DICOM series folders.

Every problem ends in one ``HPNInputError`` line naming the file or folder: missing, unreadable, damaged gzip
stream, not 3D, more than one component, NaN/Inf voxels, an all-constant (empty) image, a folder without (or with
several) DICOM series, uneven DICOM slice spacing (missing slices). Label maps (:func:`read_label`) also refuse
non-integer values and labels outside {0, 1, 2, 3} (an all-background label map is valid).
"""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import nibabel
import numpy as np
import SimpleITK as sitk
from nibabel.filebasedimages import ImageFileError

from nnunet_hpn.errors import HPNInputError
from nnunet_hpn.io.geometry import check_3d_single_component

GZIP_MAGIC = b"\x1f\x8b"
GZIP_CHUNK_BYTES = 1 << 24
#: Largest relative deviation of one DICOM slice gap from the median gap.
SLICE_GAP_TOLERANCE = 0.05
#: File endings recognised as an image file (a folder is read as a DICOM series).
IMAGE_FILE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".gipl")


def read_header(path: Path) -> sitk.ImageFileReader:
    """Reader holding the header of a 3D single-component image file, or HPNInputError."""
    path = Path(path)
    if not path.is_file():
        raise HPNInputError(f"{path}: file is missing")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise HPNInputError(f"{path}: unreadable or corrupt image file") from None
    check_3d_single_component(reader, str(path))
    return reader


def read_voxels_verified(path: Path) -> np.ndarray:
    """Voxel values of a ``.nii.gz`` file exactly as stored, or HPNInputError for a damaged file.

    SimpleITK's NIfTI reader zero-fills truncated data and reads NaN as 0, so the gzip stream is verified up to
    its checksum and the values are read with nibabel.
    """
    path = Path(path)
    with path.open("rb") as file:
        if file.read(2) != GZIP_MAGIC:
            raise HPNInputError(f"{path}: not gzip-compressed although named *.nii.gz")
    try:
        with gzip.open(path, "rb") as stream:
            while stream.read(GZIP_CHUNK_BYTES):
                pass
        return np.asanyarray(nibabel.load(path).dataobj)
    except (OSError, EOFError, zlib.error, ValueError, ImageFileError):
        raise HPNInputError(f"{path}: unreadable or corrupt image data (truncated or damaged)") from None


def check_finite(voxels: np.ndarray, path: str) -> None:
    """Refuse NaN or Inf voxels."""
    if np.issubdtype(voxels.dtype, np.floating) and not np.isfinite(voxels).all():
        raise HPNInputError(f"{path}: {int(np.count_nonzero(~np.isfinite(voxels)))} NaN/Inf voxels")


def check_not_constant(voxels: np.ndarray, path: str) -> None:
    """Refuse an image whose voxels all have one value (a blank or failed export)."""
    if voxels.min() == voxels.max():
        raise HPNInputError(f"{path}: image is empty (every voxel is {voxels.min():g})")


def _dicom_file_names(folder: Path) -> list[str]:
    """File names of the one DICOM series in ``folder``, sorted by slice position (GDCM)."""
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise HPNInputError(f"{folder}: folder holds no DICOM series")
    if len(series) > 1:
        shown = ", ".join(series[:4]) + (", ..." if len(series) > 4 else "")
        raise HPNInputError(f"{folder}: folder holds {len(series)} DICOM series ({shown}); put each in its own folder")
    names = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0]))
    if len(names) < 2:
        raise HPNInputError(f"{folder}: DICOM series has {len(names)} slice, expected a 3D series")
    return names


def _check_slice_gaps(folder: Path, names: list[str]) -> None:
    """HPNInputError when the slice positions along the slice normal are not evenly spaced."""
    positions, normal = [], None
    for name in names:
        reader = sitk.ImageFileReader()
        reader.SetFileName(name)
        reader.ReadImageInformation()
        if not reader.HasMetaDataKey("0020|0032") or not reader.HasMetaDataKey("0020|0037"):
            return  # without ImagePositionPatient/ImageOrientationPatient GDCM falls back to the file order
        position = np.array([float(v) for v in reader.GetMetaData("0020|0032").split("\\")])
        if normal is None:
            row_col = np.array([float(v) for v in reader.GetMetaData("0020|0037").split("\\")])
            normal = np.cross(row_col[:3], row_col[3:])
        positions.append(float(position @ normal))
    gaps = np.diff(np.sort(positions))
    median = float(np.median(gaps))
    if median <= 0:
        raise HPNInputError(f"{folder}: DICOM slices share one position (duplicated slices?)")
    worst = float(np.max(np.abs(gaps - median)) / median)
    if worst > SLICE_GAP_TOLERANCE:
        raise HPNInputError(f"{folder}: uneven DICOM slice spacing (gaps {gaps.min():.3g}..{gaps.max():.3g} mm; "
                            "missing slices?)")


def read_dicom_series(folder: Path) -> sitk.Image:
    """The one DICOM series in ``folder`` as a 3D image (SimpleITK's series reader; geometry from the headers)."""
    folder = Path(folder)
    names = _dicom_file_names(folder)
    _check_slice_gaps(folder, names)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(names)
    try:
        image = reader.Execute()
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown error"
        raise HPNInputError(f"{folder}: DICOM series could not be read ({first_line})") from None
    check_3d_single_component(image, str(folder))
    return image


def read_image(path: Path | str) -> sitk.Image:
    """A 3D single-component, non-constant image from an image file (``.nii.gz`` checked for damage and NaN/Inf) or
    a DICOM series folder."""
    image = _read_3d(Path(path))
    check_not_constant(sitk.GetArrayViewFromImage(image), str(path))
    return image


def read_label(path: Path | str) -> tuple[np.ndarray, sitk.Image]:
    """A label map: its integer (z, y, x) voxels and the image (geometry), checked like :func:`read_image` except
    that a constant map is allowed; non-integer values or labels outside {0, 1, 2, 3} raise HPNInputError."""
    from nnunet_hpn import LABELS

    image = _read_3d(Path(path))
    voxels = sitk.GetArrayFromImage(image)
    if not np.issubdtype(voxels.dtype, np.integer):
        if not np.array_equal(voxels, np.round(voxels)):
            raise HPNInputError(f"{path}: label map contains non-integer values")
        voxels = voxels.astype(np.int16)
    unexpected = sorted(set(np.unique(voxels).tolist()) - set(LABELS.values()))
    if unexpected:
        shown = ", ".join(str(v) for v in unexpected[:10]) + (", ..." if len(unexpected) > 10 else "")
        raise HPNInputError(f"{path}: unexpected labels [{shown}], expected only {sorted(LABELS.values())}")
    return voxels, image


def _read_3d(path: Path) -> sitk.Image:
    """A 3D single-component image, file or DICOM folder, with finite voxels."""
    if not path.exists():
        raise HPNInputError(f"{path}: file or folder is missing")
    if path.is_dir():
        return read_dicom_series(path)
    reader = read_header(path)
    if path.name.endswith(".nii.gz"):
        check_finite(read_voxels_verified(path), str(path))
    try:
        image = reader.Execute()
    except RuntimeError:
        raise HPNInputError(f"{path}: unreadable or corrupt image data") from None
    if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        check_finite(sitk.GetArrayViewFromImage(image), str(path))
    return image


def find_phase_input(case_dir: Path, phase: str) -> Path | None:
    """``case_dir/<phase>.nii.gz`` (or another image ending) or the DICOM folder ``case_dir/<phase>/``; None if
    absent."""
    for ending in IMAGE_FILE_ENDINGS:
        candidate = case_dir / f"{phase}{ending}"
        if candidate.is_file():
            return candidate
    folder = case_dir / phase
    return folder if folder.is_dir() else None
