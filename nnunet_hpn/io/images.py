"""Reading the images of one case: NIfTI (or any single file SimpleITK reads) and DICOM series folders; the one
input gate every subcommand reads its images through.

Every problem ends in one ``HPNInputError`` line naming the file or folder: missing, unreadable, damaged gzip
stream or an uncompressed NIfTI shorter than its header says, not 3D, more than one component, spacing not finite
and positive, NaN/Inf voxels (NIfTI values are read with nibabel, which sees them), a folder without (or with
several) DICOM series, uneven DICOM slice spacing (missing slices). Phase images (:func:`read_image`,
:func:`check_phase_voxels`) also refuse an all-constant image, fewer than 4 voxels along an axis, and values that do
not look like CT in HU (:func:`ct_value_problem`: a label map or mask, stored values without the rescale intercept,
values far outside any CT range) unless ``allow_unusual_intensities``. Label maps (:func:`read_label`) refuse
non-integer values and labels outside the label scheme (default the paper's {0, 1, 2, 3}; an all-background label map
is valid).
"""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import nibabel
import numpy as np
import SimpleITK as sitk
from nibabel.filebasedimages import ImageFileError

from nnunet_hpn.errors import HPNInputError
from nnunet_hpn.io.geometry import check_3d_single_component, check_spacing, check_volume_size

if TYPE_CHECKING:
    from nnunet_hpn.labels import LabelScheme

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
    check_spacing(reader, str(path))
    return reader


def read_voxels_verified(path: Path) -> np.ndarray:
    """Voxel values of a NIfTI file (``.nii.gz`` or ``.nii``) exactly as stored, or HPNInputError for a damaged file.

    SimpleITK's NIfTI reader zero-fills truncated data and reads NaN as 0, so a gzip stream is verified up to its
    checksum, an uncompressed file's size is checked against its header, and the values are read with nibabel.
    """
    path = Path(path)
    compressed = path.name.endswith(".gz")
    if compressed:
        with path.open("rb") as file:
            if file.read(2) != GZIP_MAGIC:
                raise HPNInputError(f"{path}: not gzip-compressed although named *.nii.gz")
    try:
        if compressed:
            with gzip.open(path, "rb") as stream:
                while stream.read(GZIP_CHUNK_BYTES):
                    pass
        image = nibabel.load(path)
        header = image.header
        expected = int(header.get_data_offset()) + int(np.prod(header.get_data_shape())) * \
            header.get_data_dtype().itemsize
    except (OSError, EOFError, zlib.error, ValueError, ImageFileError):
        raise HPNInputError(f"{path}: unreadable or corrupt image data (truncated or damaged)") from None
    if not compressed and path.stat().st_size < expected:
        raise HPNInputError(f"{path}: file has {path.stat().st_size} bytes, its header needs {expected} "
                            f"(truncated copy or download)")
    try:
        return np.asanyarray(image.dataobj)
    except (OSError, EOFError, zlib.error, ValueError):
        raise HPNInputError(f"{path}: unreadable or corrupt image data (truncated or damaged)") from None


def read_file_voxels(path: Path) -> np.ndarray:
    """Voxel values of an image file in (x, y, z) order: a NIfTI file through :func:`read_voxels_verified` (damage
    and NaN seen), any other through SimpleITK (:func:`read_header` checks first)."""
    path = Path(path)
    if path.name.endswith((".nii.gz", ".nii")):
        return read_voxels_verified(path)
    try:
        return sitk.GetArrayFromImage(read_header(path).Execute()).transpose()
    except RuntimeError:
        raise HPNInputError(f"{path}: unreadable or corrupt image data") from None


def check_finite(voxels: np.ndarray, path: str) -> None:
    """Refuse NaN or Inf voxels."""
    if np.issubdtype(voxels.dtype, np.floating) and not np.isfinite(voxels).all():
        raise HPNInputError(f"{path}: {int(np.count_nonzero(~np.isfinite(voxels)))} NaN/Inf voxels")


def check_not_constant(voxels: np.ndarray, path: str) -> None:
    """Refuse an image whose voxels all have one value (a blank or failed export)."""
    if voxels.min() == voxels.max():
        raise HPNInputError(f"{path}: image is empty (every voxel is {voxels.min():g})")


#: Fewest distinct values of a CT phase: a label map or a binary mask has a handful.
MIN_DISTINCT_CT_VALUES = 16
#: Values beyond this range (HU) are not a CT in Hounsfield units (padding below -1024 HU goes down to about -3024).
CT_RANGE_HU: tuple[float, float] = (-4096.0, 40000.0)


def ct_value_problem(voxels: np.ndarray) -> str | None:
    """What makes ``voxels`` not look like a CT in HU, or None: fewer than :data:`MIN_DISTINCT_CT_VALUES` distinct
    values, values outside :data:`CT_RANGE_HU`, or no value below 0 in 99 % of the volume with a median above
    500 (stored values without the DICOM rescale intercept, HU + 1024)."""
    sample = np.asarray(voxels).ravel()[:: max(1, voxels.size // 2_000_000)]  # up to 2 M voxels, evenly spread
    distinct = np.unique(sample).size
    if distinct < MIN_DISTINCT_CT_VALUES:
        return f"only {distinct} distinct values: looks like a label map or a mask, not a CT phase"
    low, high = float(sample.min()), float(sample.max())
    if low < CT_RANGE_HU[0] or high > CT_RANGE_HU[1]:
        return (f"values {low:g}..{high:g} lie outside any CT range in HU ({CT_RANGE_HU[0]:g}..{CT_RANGE_HU[1]:g}); "
                f"scaled or not a CT")
    p1, median = (float(v) for v in np.percentile(sample, [1, 50]))
    if p1 >= 0 and median > 500:
        return (f"1st percentile {p1:g} and median {median:g}: no air or fat below 0 HU; looks like stored values "
                f"without the rescale intercept (HU + 1024)")
    return None


def check_phase_voxels(voxels: np.ndarray, size_xyz: Sequence[int], path: str,
                       allow_unusual_intensities: bool = False) -> None:
    """The checks of a phase image beyond readability: not constant, at least 4 voxels per axis of ``size_xyz``
    and, unless ``allow_unusual_intensities``, CT values in HU (:func:`ct_value_problem`)."""
    check_not_constant(voxels, path)
    check_volume_size(size_xyz, path)
    if not allow_unusual_intensities:
        problem = ct_value_problem(voxels)
        if problem is not None:
            raise HPNInputError(f"{path}: {problem} (--allow-unusual-intensities accepts it)")


def dicom_file_names(folder: Path) -> list[str]:
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
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            raise HPNInputError(f"{name}: DICOM slice of {folder} cannot be read (damaged file)") from None
        if not reader.HasMetaDataKey("0020|0032") or not reader.HasMetaDataKey("0020|0037"):
            return  # without ImagePositionPatient/ImageOrientationPatient GDCM falls back to the file order
        position = np.array([float(v) for v in reader.GetMetaData("0020|0032").split("\\")])
        if normal is None:
            row_col = np.array([float(v) for v in reader.GetMetaData("0020|0037").split("\\")])
            normal = np.cross(row_col[:3], row_col[3:])
        positions.append(float(position @ normal))
    order = np.argsort(positions)
    ordered = [names[i] for i in order]
    gaps = np.diff(np.asarray(positions)[order])
    median = float(np.median(gaps))
    if median <= 0 or (gaps < SLICE_GAP_TOLERANCE * median).any():
        at = int(np.argmin(gaps))
        raise HPNInputError(f"{ordered[at + 1]}: same slice position as {Path(ordered[at]).name} in {folder} "
                            f"(duplicated slice)")
    deviation = np.abs(gaps - median) / median
    if deviation.max() > SLICE_GAP_TOLERANCE:
        at = int(np.argmax(deviation))
        in_series = set(names)
        unused = sorted(path.name for path in Path(folder).iterdir()
                        if path.is_file() and str(path) not in in_series and not path.name.startswith("."))
        hint = f"; files of the folder that are no readable slice of the series: {', '.join(unused[:3])}" \
            if unused else ""
        raise HPNInputError(f"{folder}: uneven DICOM slice spacing: {gaps[at]:.3g} mm between "
                            f"{Path(ordered[at]).name} and {Path(ordered[at + 1]).name}, {median:.3g} mm elsewhere "
                            f"(missing slices?{hint})")


def read_dicom_series(folder: Path) -> sitk.Image:
    """The one DICOM series in ``folder`` as a 3D image (SimpleITK's series reader; geometry from the headers)."""
    folder = Path(folder)
    names = dicom_file_names(folder)
    _check_slice_gaps(folder, names)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(names)
    try:
        image = reader.Execute()
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown error"
        raise HPNInputError(f"{folder}: DICOM series could not be read ({first_line})") from None
    check_3d_single_component(image, str(folder))
    check_spacing(image, str(folder))
    return image


def read_image(path: Path | str, allow_unusual_intensities: bool = False) -> sitk.Image:
    """A phase image from an image file (NIfTI checked for damage and NaN/Inf) or a DICOM series folder: 3D, one
    component, :func:`check_phase_voxels`."""
    image = _read_3d(Path(path))
    check_phase_voxels(sitk.GetArrayViewFromImage(image), image.GetSize(), str(path), allow_unusual_intensities)
    return image


def read_label(path: Path | str, scheme: LabelScheme | None = None) -> tuple[np.ndarray, sitk.Image]:
    """A label map: its integer (z, y, x) voxels and the image (geometry), checked like :func:`read_image` except
    that a constant map is allowed; non-integer values or values outside the label scheme's
    (:class:`nnunet_hpn.labels.LabelScheme`, default the paper's {0, 1, 2, 3}) raise HPNInputError."""
    from nnunet_hpn.labels import PDAC_SCHEME

    allowed = (scheme or PDAC_SCHEME).values
    image = _read_3d(Path(path))
    voxels = sitk.GetArrayFromImage(image)
    if not np.issubdtype(voxels.dtype, np.integer):
        if not np.array_equal(voxels, np.round(voxels)):
            raise HPNInputError(f"{path}: label map contains non-integer values")
        voxels = voxels.astype(np.int16)
    unexpected = sorted(set(np.unique(voxels).tolist()) - set(allowed))
    if unexpected:
        shown = ", ".join(str(v) for v in unexpected[:10]) + (", ..." if len(unexpected) > 10 else "")
        raise HPNInputError(f"{path}: unexpected labels [{shown}], expected only {allowed}")
    return voxels, image


def _read_3d(path: Path) -> sitk.Image:
    """A 3D single-component image, file or DICOM folder, with finite voxels."""
    if not path.exists():
        raise HPNInputError(f"{path}: file or folder is missing")
    if path.is_dir():
        return read_dicom_series(path)
    reader = read_header(path)
    if path.name.endswith((".nii.gz", ".nii")):
        check_finite(read_voxels_verified(path), str(path))
    try:
        image = reader.Execute()
    except RuntimeError:
        raise HPNInputError(f"{path}: unreadable or corrupt image data") from None
    if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        check_finite(sitk.GetArrayViewFromImage(image), str(path))
    return image
