"""Reading the images of one case: NIfTI (or any single file SimpleITK reads) and DICOM series folders; the one
input gate every subcommand reads its images through.

Every problem ends in one ``HPNInputError`` line naming the file or folder: missing, unreadable, damaged gzip
stream or an uncompressed NIfTI shorter than its header says, not 3D, more than one component, spacing not finite
and positive, NaN/Inf voxels (NIfTI values are read with nibabel, which sees them), a folder without (or with
several) DICOM series, uneven DICOM slice spacing (missing slices). Phase images (:func:`read_image`,
:func:`check_phase_voxels`) also refuse an all-constant image, fewer than 4 voxels along an axis, and values that do
not look like CT in HU (:func:`ct_value_problem`: a label map or mask, the rescale intercept missing or applied
twice, a rescale slope above or below 1, values far outside any CT range) unless ``allow_unusual_intensities``.
Label maps (:func:`read_label`) refuse non-integer values and labels outside the label scheme (default the paper's
{0, 1, 2, 3}; an all-background label map is valid).
"""
from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

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
    if path.name.endswith((".nii.gz", ".nii")):
        check_nifti_geometry(path)  # before ITK, which warns on stderr about such a header and reads on
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise HPNInputError(f"{path}: unreadable or corrupt image file") from None
    check_3d_single_component(reader, str(path))
    check_spacing(reader, str(path))
    return reader


#: Largest disagreement between a NIfTI file's sform and its pixdim (relative) or qform (mm) that is float noise.
HEADER_TOLERANCE = (1e-3, 1e-2)


def check_nifti_geometry(path: Path) -> None:
    """HPNInputError when a NIfTI header disagrees with itself: sform voxel sizes other than pixdim, or sform and
    qform that place the voxels differently (readers differ in which they believe: ITK may take 1 mm where the sform
    says 2.5 mm, with a warning on stderr only)."""
    if path.name.endswith(".gz"):
        check_gzip_magic(path)
    try:
        header = nibabel.load(path).header
        sform_code, qform_code = int(header["sform_code"]), int(header["qform_code"])
        pixdim = np.asarray(header["pixdim"][1:4], dtype=float)
        sform, qform = header.get_sform(), header.get_qform()
    except (OSError, EOFError, zlib.error, ValueError, ImageFileError):
        raise HPNInputError(f"{path}: unreadable or corrupt image file") from None
    if sform_code <= 0:
        return
    sform_spacing = np.linalg.norm(sform[:3, :3], axis=0)
    if not np.allclose(sform_spacing, pixdim, rtol=HEADER_TOLERANCE[0], atol=0):
        raise HPNInputError(f"{path}: NIfTI header disagrees with itself: the sform gives voxel sizes "
                            f"{tuple(np.round(sform_spacing, 4).tolist())} mm, pixdim "
                            f"{tuple(np.round(pixdim, 4).tolist())}; readers differ in which they use (fix the "
                            f"header, e.g. with nibabel)")
    if qform_code > 0 and not np.allclose(sform, qform, rtol=0, atol=HEADER_TOLERANCE[1]):
        offset = float(np.abs(sform - qform).max())
        raise HPNInputError(f"{path}: NIfTI header disagrees with itself: sform and qform place the voxels up to "
                            f"{offset:.3g} mm apart; readers differ in which they use (fix the header, e.g. with "
                            f"nibabel)")


def check_gzip_magic(path: Path) -> None:
    """HPNInputError for a file named ``*.gz`` that is not gzip-compressed: a renamed ``.nii`` (NIfTI-1 magic at
    byte 344) is named as such, anything else is a corrupt file."""
    with Path(path).open("rb") as file:
        head = file.read(348)
    if head[:2] != GZIP_MAGIC:
        if head[344:348] in (b"n+1\0", b"ni1\0"):
            raise HPNInputError(f"{path}: not gzip-compressed although named *.nii.gz")
        raise HPNInputError(f"{path}: unreadable or corrupt image file (neither gzip-compressed nor a NIfTI file)")


def read_voxels_verified(path: Path) -> np.ndarray:
    """Voxel values of a NIfTI file (``.nii.gz`` or ``.nii``) exactly as stored, or HPNInputError for a damaged file.

    SimpleITK's NIfTI reader zero-fills truncated data and reads NaN as 0, so a gzip stream is verified up to its
    checksum, an uncompressed file's size is checked against its header, and the values are read with nibabel.
    """
    path = Path(path)
    compressed = path.name.endswith(".gz")
    if compressed:
        check_gzip_magic(path)
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


#: Below this (HU) no tissue and no air lies (air is about -1000 HU; scanners clip at -1024): values here, beyond
#: the padding outside the field of view, are in other units.
AIR_FLOOR_HU = -1124.0
#: Share of the voxels (outside the padding) that must lie beyond a plausibility limit for the check to fire.
IMPLAUSIBLE_SHARE = 0.01
#: Air and lung lie here (HU); a slope below 1 (HU / 2: air at -500) leaves this range empty.
AIR_RANGE_HU: tuple[float, float] = (AIR_FLOOR_HU, -700.0)
#: Between air and fat (HU): partial volumes of air, lung edges, or air itself under a slope below 1.
BELOW_FAT_RANGE_HU: tuple[float, float] = (-700.0, -300.0)
#: Fewest air voxels per voxel of :data:`BELOW_FAT_RANGE_HU` in a CT in HU (air next to its partial volumes).
MIN_AIR_RATIO = 0.1
#: The share of the voxels one exact value must hold to count as padding outside the field of view.
PADDING_SHARE = 0.01


#: Values this close to the lowest one (HU) count as its padding (resampling spreads -3024 to -3026 ... -3020).
PADDING_SPREAD = 16.0


def _without_padding(sample: np.ndarray) -> np.ndarray:
    """``sample`` without what the scanner put outside the field of view (any value: -3024, -2048, -1024, 0 ...):
    everything up to :data:`PADDING_SPREAD` above the padding value, which is the most frequent value when it holds
    at least :data:`PADDING_SHARE` of the voxels and lies in the lowest tenth (values below it are resampling's
    blend of padding and air), else the lowest value when the values near it hold that share."""
    values, counts = np.unique(sample, return_counts=True)
    mode = values[np.argmax(counts)]
    if counts.max() >= PADDING_SHARE * sample.size and mode <= np.percentile(sample, 10):
        padding = mode
    elif np.mean(sample <= values[0] + PADDING_SPREAD) >= PADDING_SHARE:
        padding = values[0]
    else:
        return sample
    kept = sample[sample > padding + PADDING_SPREAD]
    return kept if kept.size else sample


def ct_value_problem(voxels: np.ndarray) -> str | None:
    """What makes ``voxels`` not look like a CT in HU, or None: fewer than :data:`MIN_DISTINCT_CT_VALUES` distinct
    values, values outside :data:`CT_RANGE_HU`, and, whatever the padding outside the field of view
    (:func:`_without_padding`), the signs of a rescale mistake: no value below 0 in 95 % of the volume with a median
    above 500 or 1 % above 1000 (the intercept missing, HU + 1024), 99 % of it below 0 (the intercept applied twice,
    HU - 1024), 1 % of it below :data:`AIR_FLOOR_HU` (a slope above 1), or 1 % of the whole volume between air and
    fat (:data:`BELOW_FAT_RANGE_HU`) with less than :data:`MIN_AIR_RATIO` as much at air and lung
    (:data:`AIR_RANGE_HU`; a slope below 1, such as HU / 2 with air at -500)."""
    sample = np.asarray(voxels).ravel()[:: max(1, voxels.size // 2_000_000)]  # up to 2 M voxels, evenly spread
    distinct = np.unique(sample).size
    if distinct < MIN_DISTINCT_CT_VALUES:
        return f"only {distinct} distinct values: looks like a label map or a mask, not a CT phase"
    low, high = float(sample.min()), float(sample.max())
    if low < CT_RANGE_HU[0] or high > CT_RANGE_HU[1]:
        return (f"values {low:g}..{high:g} lie outside any CT range in HU ({CT_RANGE_HU[0]:g}..{CT_RANGE_HU[1]:g}); "
                f"scaled or not a CT")
    body = _without_padding(sample)
    p5, median, p99 = (float(v) for v in np.percentile(body, [5, 50, 99]))
    if p5 >= 0 and (median > 500 or p99 > 1000):
        return (f"5th percentile {p5:g}, median {median:g} and 99th percentile {p99:g}: no air or fat below 0 HU; "
                f"looks like stored values without the rescale intercept (HU + 1024)")
    if p99 < 0:
        return (f"99th percentile {p99:g}: no soft tissue above 0 HU; looks like the rescale intercept applied twice "
                f"(HU - 1024)")
    below_air = float(np.mean(body < AIR_FLOOR_HU))
    if below_air >= IMPLAUSIBLE_SHARE:
        return (f"{below_air:.0%} of the values below {AIR_FLOOR_HU:g} (air is -1000 HU); looks like values in other "
                f"units (a wrong rescale slope)")
    # on the whole sample: under HU / 2 the air itself can be the most frequent value, which the padding rule drops
    below_fat = int(np.count_nonzero((sample > BELOW_FAT_RANGE_HU[0]) & (sample <= BELOW_FAT_RANGE_HU[1])))
    air = int(np.count_nonzero((sample >= AIR_RANGE_HU[0]) & (sample <= AIR_RANGE_HU[1])))
    if below_fat >= IMPLAUSIBLE_SHARE * sample.size and air < MIN_AIR_RATIO * below_fat:
        return (f"{below_fat / sample.size:.0%} of the values between {BELOW_FAT_RANGE_HU[0]:g} and "
                f"{BELOW_FAT_RANGE_HU[1]:g} and almost none at air (-1000 HU) or lung; looks like a rescale slope "
                f"below 1 (HU / 2 puts air at -500)")
    return None


#: Fewest exactly constant slices at the head or tail of a volume that look like a partial copy or a blanked part
#: (also at least this share of the slices: :data:`BLANK_SLICE_SHARE`).
MIN_BLANK_SLICES = 2
BLANK_SLICE_SHARE = 0.1


def blank_slice_problem(voxels: np.ndarray, slice_axis: int) -> str | None:
    """What looks wrong when the first or last slices along ``slice_axis`` (the slowest axis in the file: a partial
    copy ends there) are one block of exactly one value, or None."""
    slices = np.moveaxis(np.asarray(voxels), slice_axis, 0).reshape(voxels.shape[slice_axis], -1)
    constant = slices.min(axis=1) == slices.max(axis=1)
    n = constant.size
    for where, flags, values in (("last", constant[::-1], slices[::-1, 0]), ("first", constant, slices[:, 0])):
        run = int(np.argmin(flags)) if not flags.all() else n
        while run > 0 and (values[:run] != values[0]).any():
            run -= 1
        if run >= max(MIN_BLANK_SLICES, BLANK_SLICE_SHARE * n):
            return (f"the {where} {run} of {n} slices are all exactly {float(values[0]):g}: looks like a partial copy "
                    f"or a blanked part of the scan")
    return None


def check_phase_voxels(voxels: np.ndarray, size_xyz: Sequence[int], path: str,
                       allow_unusual_intensities: bool = False, slice_axis: int = 0) -> None:
    """The checks of a phase image beyond readability: not constant, at least 4 voxels per axis of ``size_xyz``
    and, unless ``allow_unusual_intensities``, CT values in HU (:func:`ct_value_problem`) and no block of constant
    slices at the head or tail along ``slice_axis`` of ``voxels`` (:func:`blank_slice_problem`; 0 for SimpleITK's
    (z, y, x) arrays, 2 for nibabel's (x, y, z))."""
    check_not_constant(voxels, path)
    check_volume_size(size_xyz, path)
    if not allow_unusual_intensities:
        problem = ct_value_problem(voxels) or blank_slice_problem(voxels, slice_axis)
        if problem is not None:
            raise HPNInputError(f"{path}: {problem} (--allow-unusual-intensities accepts it)")


def _same_file(first: str, second: str) -> bool:
    first_path, second_path = Path(first), Path(second)
    if not (first_path.exists() and second_path.exists()):
        return False
    return first_path.resolve() == second_path.resolve() or os.path.samefile(first_path, second_path)


def check_distinct_phases(phases: Mapping[str, tuple[str, np.ndarray | None]]) -> None:
    """HPNInputError when two phases (phase -> (file or folder, voxels or None)) are one file or hold exactly the
    same voxels: one scan given twice, which a multi-phase model would take for two."""
    seen: list[tuple[str, str, np.ndarray | None]] = []
    for phase, (path, voxels) in phases.items():
        for other, other_path, other_voxels in seen:
            if _same_file(str(path), other_path):
                raise HPNInputError(f"{path}: given as both {other} and {phase}; each phase needs its own scan")
            if voxels is not None and other_voxels is not None and voxels.shape == other_voxels.shape \
                    and np.array_equal(voxels, other_voxels):
                raise HPNInputError(f"{path}: the same voxels as {other_path} ({other}); the {phase} phase must be "
                                    f"its own scan")
        seen.append((phase, str(path), voxels))


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

    image = _read_3d(Path(path))
    voxels = sitk.GetArrayFromImage(image)
    (scheme or PDAC_SCHEME).check_label_map(voxels, str(path))
    if not np.issubdtype(voxels.dtype, np.integer):
        voxels = voxels.astype(np.int16)
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
