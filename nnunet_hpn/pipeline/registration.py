"""Register one contrast phase onto another (venous onto arterial) before the two are used as channels.

nnU-Net assumes co-registered channels; the paper aligns the venous phase to the arterial phase with diffeomorphic
demons (pancreas surface distance 1.01 ± 0.52 mm). :func:`register_to_reference` does this with SimpleITK:

1. overlap check of the two images' physical bounding boxes (``HPNInputError`` naming both when they are
   disjoint);
2. a *working grid*: the fixed grid cropped to the body and to the moving image's box, coarsened to at least
   ``working_spacing_mm`` and to at most ``max_working_voxels`` voxels; both images windowed, rescaled to [0, 1],
   anti-aliased and resampled onto it;
3. ``method="affine"`` / ``"demons"``: initial alignment (the better, by Mattes mutual information, of the scanner's
   own physical alignment and ``CenteredTransformInitializer`` on moments), then rigid and affine registration with
   Mattes MI in a multi-resolution pyramid, on images windowed to [-100, 240] HU, on one ITK thread
   (:func:`one_itk_thread`: ITK's Mattes metric adds its threads' histograms in the order they finish, so with
   more threads the same pair would register differently from run to run and with another ``-np``);
4. ``method="demons"``: multi-resolution symmetric-forces demons (``FastSymmetricForcesDemonsRegistrationFilter``;
   ``DiffeomorphicDemonsRegistrationFilter`` with ``demons_filter="diffeomorphic"``), Gaussian smoothing of the
   displacement field, on the affinely aligned images windowed to [-100, 60] HU (fat to parenchyma: organs whose
   enhancement differs between the phases look alike, the fat/organ borders drive it); or ``method="syn"``: ANTs
   SyN (antspyx) on the same images. The field falls to 0 at the working grid's border (:func:`tapered_to_the_border`)
   and a field that folds (Jacobian determinant ≤ 0 somewhere) is smoothed until it does not (:func:`unfolded`);
   ``qc["stages"]`` says which, and ``qc["displacement"]`` holds the smallest Jacobian determinant and the folded
   share of the displacement written out, on the whole fixed grid;
5. the transforms composed into one transform, the moving image warped onto the fixed grid with linear, its label
   with nearest-neighbour interpolation, and the displacement field written on the fixed grid.

A stage that lowers the normalised mutual information (NMI, [-100, 240] HU window) is dropped with a
:class:`RegistrationWarning`; every warning is also in ``qc["warnings"]``. With both labels the QC holds the
pancreas (label > 0) Dice, mean surface distance and HD95 (mm), before and after (:func:`alignment_metrics`).
"""
from __future__ import annotations

import re
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from nnunet_hpn.errors import HPNInputError, HPNWarning
from nnunet_hpn.io.geometry import check_3d_single_component, check_overlap, check_same_grid, physical_bounds
from nnunet_hpn.phases import HU_WINDOW

METHODS = ("none", "affine", "demons", "syn")
#: What each method of :data:`METHODS` does, in words (e.g. for a dataset's description).
METHOD_DESCRIPTIONS: dict[str, str] = {
    "none": "resampled in physical space, not registered",
    "affine": "rigid then affine, Mattes mutual information",
    "demons": "affine, then SimpleITK demons",
    "syn": "affine, then ANTs SyN",
}
#: the deformable methods: each runs after the affine stage, on the working grid, and yields a displacement field
DEFORMABLE_METHODS = ("demons", "syn")
#: A stage must not lower the NMI by more than this to be kept.
SIMILARITY_TOLERANCE = 1e-3
#: a deformable field whose Jacobian determinant is below this somewhere is smoothed (:func:`unfolded`): invertible
#: with a margin, not only just
MIN_JACOBIAN = 0.01
#: Voxels above this HU belong to the body (for cropping the working grid).
BODY_THRESHOLD_HU = -500.0


#: Fraction of the fixed image's bounding box the moving image should cover; less is warned about.
MIN_COVERAGE = 0.8


class RegistrationWarning(HPNWarning):
    """A registration result that needs a look (worse similarity or surface distance, little overlap, folding)."""


@dataclass
class RegistrationSettings:
    """Parameters of :func:`register_to_reference`; the defaults are the benchmarked ones (docs/BENCHMARKS.md)."""

    window_hu: tuple[float, float] = HU_WINDOW
    #: Finest spacing (mm) of the working grid, and its largest number of voxels (coarser spacing beyond): enough
    #: to keep a 3 mm abdominal CT on its own grid.
    working_spacing_mm: float = 1.5
    max_working_voxels: int = 1_500_000
    #: Gaussian pre-smoothing of the working images (mm), against CT noise.
    image_sigma_mm: float = 0.5
    #: Rigid and affine stages: pyramid shrink factors of the working grid, iterations per level, sampled share.
    affine_shrink_factors: tuple[int, ...] = (4, 2)
    affine_iterations: int = 100
    affine_sampling: float = 0.15
    #: "symmetric" (FastSymmetricForcesDemonsRegistrationFilter) or "diffeomorphic"
    #: (DiffeomorphicDemonsRegistrationFilter, symmetric gradient): equally accurate on the benchmark pairs, the
    #: diffeomorphic one costs more CPU time.
    demons_filter: str = "symmetric"
    #: HU window of the demons images: fat (-100 HU -> 0) to parenchyma (60 HU -> 1), so organs whose enhancement
    #: differs between the phases look alike and the fat/organ borders drive the deformation.
    demons_window_hu: tuple[float, float] = (-100.0, 60.0)
    #: Demons pyramid (shrink factors of the working grid, coarse to fine) and iterations per level.
    demons_shrink_factors: tuple[int, ...] = (4, 2, 1)
    demons_iterations: tuple[int, ...] = (60, 40, 10)
    #: Gaussian smoothing of the displacement field (voxels of each level) and the largest update step (voxels).
    demons_field_sigma: float = 2.0
    demons_max_step: float = 2.0
    #: ANTs SyN (``method="syn"``, package antspyx): iterations per level (coarse to fine), metric, gradient step,
    #: smoothing of the update and of the total field (voxels)
    syn_iterations: tuple[int, ...] = (40, 20, 0)
    syn_metric: str = "mattes"
    syn_gradient_step: float = 0.2
    syn_flow_sigma: float = 3.0
    syn_total_sigma: float = 0.0
    #: the deformable field falls to 0 over this margin (at least 3 working voxels) at the working grid's border
    #: (which lies 10 mm outside the body), so that it continues without a jump onto the whole fixed grid
    field_taper_mm: float = 8.0
    seed: int = 12345


@dataclass
class RegistrationResult:
    """The moving image and label on the fixed grid, the displacement field and the quality record.

    ``warped``: the moving image's pixel type on the fixed grid. ``warped_label``: uint8 on the fixed grid (None
    without a moving label). ``displacement``: ``sitkVectorFloat32`` (3 components, mm, physical x y z) on the fixed
    grid; a fixed point ``p`` is sampled in the moving image at ``p + displacement(p)`` (cast to
    ``sitkVectorFloat64`` for ``sitk.DisplacementFieldTransform``). ``qc``: JSON-serialisable dict. ``transform``:
    the same mapping as a SimpleITK transform (fixed → moving physical points).
    """

    warped: sitk.Image
    warped_label: sitk.Image | None
    displacement: sitk.Image
    qc: dict = field(default_factory=dict)
    transform: sitk.Transform | None = None


# ----------------------------------------------------------------------------------------------- working grid


def _body_index_box(image: sitk.Image, margin_mm: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive index range (x y z) of the voxels above BODY_THRESHOLD_HU, widened by ``margin_mm``; the whole
    image when there are none."""
    size = np.asarray(image.GetSize())
    body = sitk.GetArrayFromImage(image) > BODY_THRESHOLD_HU  # z y x
    if not body.any():
        return np.zeros(3, dtype=int), size - 1
    low, high = [], []
    for axis in (2, 1, 0):  # x, y, z
        occupied = np.flatnonzero(body.any(axis=tuple(a for a in range(3) if a != axis)))
        low.append(occupied[0])
        high.append(occupied[-1])
    margin = np.ceil(margin_mm / np.asarray(image.GetSpacing())).astype(int)
    return np.maximum(np.array(low) - margin, 0), np.minimum(np.array(high) + margin, size - 1)


def working_grid(image: sitk.Image, other: sitk.Image | None, settings: "RegistrationSettings") -> sitk.Image:
    """Empty float image on ``image``'s axes: cropped to its body and to ``other``'s bounding box (+10 mm), spacing
    at least ``working_spacing_mm`` and coarse enough for ``max_working_voxels``."""
    size = np.asarray(image.GetSize())
    low, high = _body_index_box(image)
    if other is not None:
        low_o, high_o = physical_bounds(other)
        corners = np.array(np.meshgrid(*zip(low_o - 10, high_o + 10), indexing="ij")).reshape(3, -1).T
        index = np.array([image.TransformPhysicalPointToContinuousIndex(c.tolist()) for c in corners])
        low = np.maximum(low, np.clip(np.floor(index.min(axis=0)), 0, size - 1).astype(int))
        high = np.minimum(high, np.clip(np.ceil(index.max(axis=0)), 0, size - 1).astype(int))
        high = np.maximum(high, low)
    image_spacing = np.asarray(image.GetSpacing())
    start_mm, length_mm = (low - 0.5) * image_spacing, (high - low + 1) * image_spacing
    spacing = np.maximum(image_spacing, settings.working_spacing_mm)
    n_voxels = np.prod(np.maximum(length_mm / spacing, 1))
    if n_voxels > settings.max_working_voxels:
        spacing = np.maximum(spacing, spacing * (n_voxels / settings.max_working_voxels) ** (1 / 3))
    grid_size = np.maximum(np.round(length_mm / spacing).astype(int), 1)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    grid = sitk.Image([int(n) for n in grid_size], sitk.sitkFloat32)
    grid.SetSpacing(spacing.tolist())
    grid.SetDirection(image.GetDirection())
    grid.SetOrigin((np.asarray(image.GetOrigin()) + direction @ (start_mm + spacing / 2)).tolist())
    return grid


def _prepared(image: sitk.Image, window: tuple[float, float], grid: sitk.Image, sigma_mm: float) -> sitk.Image:
    """``image`` clipped to ``window`` and rescaled to [0, 1] (float32), block-averaged and smoothed down to the
    grid's spacing (plus ``sigma_mm`` of denoising) and resampled onto ``grid``; 0 outside the image."""
    work = sitk.IntensityWindowing(sitk.Cast(image, sitk.sitkFloat32), window[0], window[1], 0.0, 1.0)
    spacing = np.asarray(image.GetSpacing())
    # grid spacing along the grid axis closest to each image axis
    alignment = np.abs(np.asarray(image.GetDirection()).reshape(3, 3).T @ np.asarray(grid.GetDirection()).reshape(3, 3))
    target = np.asarray(grid.GetSpacing())[alignment.argmax(axis=1)]
    factors = np.maximum(np.floor(target / spacing).astype(int), 1)
    if factors.max() > 1:
        work = sitk.BinShrink(work, factors.tolist())
        spacing = np.asarray(work.GetSpacing())
    sigma = np.sqrt(np.maximum(target ** 2 - spacing ** 2, 0) / 4 + sigma_mm ** 2)
    if sigma.max() > 0:
        work = sitk.SmoothingRecursiveGaussian(work, sigma.tolist())
    return sitk.Resample(work, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)


def _domain_mask(image: sitk.Image, grid: sitk.Image, transform: sitk.Transform | None = None) -> np.ndarray:
    """Boolean z, y, x array on ``grid``: voxels whose (transformed) position lies inside ``image``."""
    ones = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(image)
    inside = sitk.Resample(ones, grid, transform or sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(inside) > 0


# ------------------------------------------------------------------------------------------------- similarity


def normalized_mutual_information(a: np.ndarray, b: np.ndarray, bins: int = 64) -> float:
    """(H(a) + H(b)) / H(a, b) of two equally shaped value arrays in [0, 1]; 1 = independent, 2 = identical."""
    # not skimage.metrics.normalized_mutual_information: it bins each call's own value range, so the NMI before and
    # after a stage would be measured on different bins; here every call bins the fixed range [0, 1] (values outside
    # it, from interpolation overshoot, are left out), which makes the before/after comparison of a stage fair
    joint, _, _ = np.histogram2d(a.ravel(), b.ravel(), bins=bins, range=[[0, 1], [0, 1]])
    joint = joint / max(joint.sum(), 1)

    def entropy(p: np.ndarray) -> float:
        p = p[p > 0]
        return float(-(p * np.log(p)).sum())

    joint_entropy = entropy(joint.ravel())
    return (entropy(joint.sum(axis=1)) + entropy(joint.sum(axis=0))) / joint_entropy if joint_entropy > 0 else 1.0


def _similarity(fixed_w: sitk.Image, moving_w: sitk.Image, mask: np.ndarray) -> dict:
    """NMI and normalised cross-correlation of two working images inside ``mask`` (z, y, x)."""
    a = sitk.GetArrayFromImage(fixed_w)[mask]
    b = sitk.GetArrayFromImage(moving_w)[mask]
    if a.size < 10:
        return {"nmi": float("nan"), "ncc": float("nan"), "voxels": int(a.size)}
    ncc = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else 0.0
    return {"nmi": round(normalized_mutual_information(a, b), 5), "ncc": round(ncc, 5), "voxels": int(a.size)}


# ----------------------------------------------------------------------------------------------- label metrics


def alignment_metrics(reference: sitk.Image, test: sitk.Image) -> dict:
    """Dice, symmetric mean surface distance and 95 % Hausdorff distance (mm) of two masks (> 0) on one grid: how
    well a warped label matches the fixed one (registration QC).

    Dice and HD95: the definitions of the evaluation (:mod:`nnunet_hpn.measures`); Dice is None where both masks
    are empty. Mean surface distance: the masks' boundary voxels (``LabelContour``, face connectivity), the distance
    of each boundary voxel of one mask to the nearest boundary voxel of the other, pooled over both masks. Distances
    are None where a mask is empty.
    """
    from nnunet_hpn.measures import dice_from_masks, surface_metrics  # nnU-Net's and MONAI's helpers load torch

    ref = sitk.Cast(reference > 0, sitk.sitkUInt8)
    tst = sitk.Cast(test > 0, sitk.sitkUInt8)
    ref_array, tst_array = sitk.GetArrayFromImage(ref) > 0, sitk.GetArrayFromImage(tst) > 0
    n_ref, n_tst = int(ref_array.sum()), int(tst_array.sum())
    dice = round(dice_from_masks(ref_array, tst_array), 5) if n_ref + n_tst else None
    if not n_ref or not n_tst:
        return {"dice": dice, "mean_surface_distance_mm": None, "hd95_mm": None}
    # distances only involve boundary voxels: crop both masks to their joint bounding box plus one voxel (no more
    # than the image, so a mask touching the image border keeps ITK's border semantics)
    occupied = np.logical_or(ref_array, tst_array)
    box = [np.flatnonzero(occupied.any(axis=tuple(a for a in range(3) if a != axis))) for axis in (2, 1, 0)]
    low = [max(int(b[0]) - 1, 0) for b in box]
    size = [min(int(b[-1]) + 2, n) - lo for b, lo, n in zip(box, low, ref.GetSize())]
    ref, tst = sitk.RegionOfInterest(ref, size, low), sitk.RegionOfInterest(tst, size, low)
    # not MONAI's compute_average_surface_distance: it gives other values on the same masks (its boundary and
    # distance conventions differ), and the QC records written so far are compared with this definition
    distances = []
    for a, b in ((ref, tst), (tst, ref)):
        contour_a = sitk.GetArrayFromImage(sitk.LabelContour(a, fullyConnected=False)) > 0
        distance_to_b = sitk.SignedMaurerDistanceMap(sitk.LabelContour(b, fullyConnected=False), insideIsPositive=False,
                                                     squaredDistance=False, useImageSpacing=True)
        distances.append(np.abs(sitk.GetArrayFromImage(distance_to_b)[contour_a]))
    pooled = np.concatenate(distances)
    hd95, _ = surface_metrics(sitk.GetArrayFromImage(ref) > 0, sitk.GetArrayFromImage(tst) > 0,
                              tuple(reversed(ref.GetSpacing())))
    return {"dice": dice, "mean_surface_distance_mm": round(float(pooled.mean()), 4), "hd95_mm": round(hd95, 4)}


def label_on_grid(label: sitk.Image, reference: sitk.Image, transform: sitk.Transform | None = None) -> sitk.Image:
    """``label`` (uint8) resampled onto ``reference``'s grid with nearest-neighbour interpolation, 0 outside."""
    return sitk.Resample(sitk.Cast(label, sitk.sitkUInt8), reference, transform or sitk.Transform(),
                         sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


# -------------------------------------------------------------------------------------------------- stages


class _LevelProgress:
    """One tqdm bar per pyramid level, fed by SimpleITK iteration events."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: tqdm | None = None

    def start(self, description: str, total: int) -> None:
        self.close()
        self.bar = tqdm(total=total, desc=description, unit="it", leave=False, disable=not self.enabled)

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@contextmanager
def one_itk_thread() -> Iterator[None]:
    """ITK filters and metrics created inside run on one thread (SimpleITK's global default, restored on exit)."""
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)


def _mattes(fixed_w: sitk.Image, moving_w: sitk.Image, transform: sitk.Transform, seed: int) -> float:
    """Mattes mutual information (SimpleITK's sign: lower is better) of the pair under ``transform``."""
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.REGULAR)
    method.SetMetricSamplingPercentage(0.2, seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetInitialTransform(transform)
    try:
        return float(method.MetricEvaluate(fixed_w, moving_w))
    except RuntimeError:  # too few samples inside the moving image
        return float("inf")


def _initial_transform(fixed_w: sitk.Image, moving_w: sitk.Image, seed: int) -> tuple[sitk.Euler3DTransform, str]:
    """The better (Mattes MI) of the scanner alignment (identity about the working grid's centre) and
    ``CenteredTransformInitializer`` on intensity moments."""
    centre = fixed_w.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in fixed_w.GetSize()])
    identity = sitk.Euler3DTransform()
    identity.SetCenter(centre)
    candidates = {"physical": identity}
    try:
        candidates["moments"] = sitk.Euler3DTransform(sitk.CenteredTransformInitializer(
            fixed_w, moving_w, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS))
    except RuntimeError:
        pass
    scores = {name: _mattes(fixed_w, moving_w, transform, seed) for name, transform in candidates.items()}
    best = min(scores, key=scores.get)
    return candidates[best], best


def _run_linear(fixed_w: sitk.Image, moving_w: sitk.Image, transform: sitk.Transform, settings: RegistrationSettings,
                progress: _LevelProgress, name: str) -> None:
    """Mattes-MI registration of ``transform`` (optimised in place) over the affine pyramid."""
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(settings.affine_sampling, settings.seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3,
                                                    numberOfIterations=settings.affine_iterations,
                                                    relaxationFactor=0.5)
    method.SetOptimizerScalesFromPhysicalShift()
    shrink = [max(1, int(s)) for s in settings.affine_shrink_factors]
    method.SetShrinkFactorsPerLevel(shrink)
    method.SetSmoothingSigmasPerLevel([s / 2 for s in shrink])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    method.SetInitialTransform(transform, inPlace=True)
    level = [0]

    def new_level() -> None:
        level[0] += 1
        progress.start(f"{name} level {level[0]}/{len(shrink)} (1/{shrink[level[0] - 1]})", settings.affine_iterations)

    method.AddCommand(sitk.sitkMultiResolutionIterationEvent, new_level)
    method.AddCommand(sitk.sitkIterationEvent, progress.step)
    method.Execute(fixed_w, moving_w)
    progress.close()


def _affine_stage(fixed_w: sitk.Image, moving_w: sitk.Image, settings: RegistrationSettings,
                  progress: _LevelProgress) -> tuple[sitk.AffineTransform, str]:
    """Initial alignment, rigid, then affine registration, on one ITK thread (reproducible); the affine transform
    (fixed → moving points) and the name of the initialisation."""
    with one_itk_thread():
        rigid, init = _initial_transform(fixed_w, moving_w, settings.seed)
        _run_linear(fixed_w, moving_w, rigid, settings, progress, "rigid")
        affine = sitk.AffineTransform(3)
        affine.SetCenter(rigid.GetCenter())
        affine.SetMatrix(rigid.GetMatrix())
        affine.SetTranslation(rigid.GetTranslation())
        _run_linear(fixed_w, moving_w, affine, settings, progress, "affine")
    return affine, init


def _demons_stage(fixed_d: sitk.Image, moving_d: sitk.Image, settings: RegistrationSettings,
                  progress: _LevelProgress) -> sitk.Image:
    """Multi-resolution demons of ``moving_d`` onto ``fixed_d`` (both on the working grid); the displacement field
    (``sitkVectorFloat64``, mm) on the working grid."""
    if len(settings.demons_shrink_factors) != len(settings.demons_iterations):
        raise ValueError("demons_shrink_factors and demons_iterations need the same length")
    if settings.demons_filter not in ("diffeomorphic", "symmetric"):
        raise ValueError(f"demons_filter {settings.demons_filter!r} is not 'diffeomorphic' or 'symmetric'")
    displacement: sitk.Image | None = None
    n_levels = len(settings.demons_shrink_factors)
    for level, (shrink, iterations) in enumerate(zip(settings.demons_shrink_factors, settings.demons_iterations)):
        factors = [max(1, min(int(shrink), n // 8)) for n in fixed_d.GetSize()]
        fixed_l = sitk.BinShrink(fixed_d, factors) if max(factors) > 1 else fixed_d
        moving_l = sitk.BinShrink(moving_d, factors) if max(factors) > 1 else moving_d
        if displacement is None:
            initial = sitk.Image(fixed_l.GetSize(), sitk.sitkVectorFloat64, 3)
            initial.CopyInformation(fixed_l)
        else:
            initial = sitk.Resample(displacement, fixed_l, sitk.Transform(), sitk.sitkLinear, 0.0,
                                    sitk.sitkVectorFloat64)
        if settings.demons_filter == "diffeomorphic":
            demons = sitk.DiffeomorphicDemonsRegistrationFilter()
            demons.SetUseGradientType(demons.Symmetric)
        else:
            demons = sitk.FastSymmetricForcesDemonsRegistrationFilter()
        demons.SetNumberOfIterations(int(iterations))
        demons.SetSmoothDisplacementField(True)
        demons.SetStandardDeviations(settings.demons_field_sigma)
        demons.SetMaximumUpdateStepLength(settings.demons_max_step)
        demons.SetUseImageSpacing(True)
        progress.start(f"demons level {level + 1}/{n_levels} (1/{shrink})", int(iterations))
        demons.AddCommand(sitk.sitkIterationEvent, progress.step)
        displacement = demons.Execute(fixed_l, moving_l, initial)
        progress.close()
    if displacement.GetSize() != fixed_d.GetSize():
        displacement = sitk.Resample(displacement, fixed_d, sitk.Transform(), sitk.sitkLinear, 0.0,
                                     sitk.sitkVectorFloat64)
    return displacement


def _syn_stage(fixed_d: sitk.Image, moving_d: sitk.Image, settings: RegistrationSettings, moving_name: str,
               progress: _LevelProgress) -> sitk.Image:
    """ANTs SyN (symmetric normalisation, diffeomorphic; antspyx) of ``moving_d`` onto ``fixed_d`` (both on the working
    grid, affinely aligned): the forward displacement field (``sitkVectorFloat64``, mm) on the working grid.
    HPNInputError naming the package when antspyx is not installed."""
    try:
        import ants
    except ImportError:
        raise HPNInputError(f"{moving_name}: registration method 'syn' needs the package antspyx "
                            "(pip install antspyx)") from None
    import tempfile

    def to_ants(image: sitk.Image):
        return ants.from_numpy(sitk.GetArrayFromImage(image).T.astype(np.float32), origin=image.GetOrigin(),
                               spacing=image.GetSpacing(), direction=np.asarray(image.GetDirection()).reshape(3, 3))

    progress.start("SyN", 1)
    with tempfile.TemporaryDirectory(prefix="hpn_syn_") as folder:
        result = ants.registration(to_ants(fixed_d), to_ants(moving_d), type_of_transform="SyNOnly",
                                   outprefix=str(Path(folder) / "syn_"), syn_metric=settings.syn_metric,
                                   reg_iterations=tuple(settings.syn_iterations), grad_step=settings.syn_gradient_step,
                                   flow_sigma=settings.syn_flow_sigma, total_sigma=settings.syn_total_sigma,
                                   random_seed=settings.seed, verbose=False)
        warp = next(path for path in result["fwdtransforms"] if path.endswith(".nii.gz"))
        displacement = sitk.ReadImage(warp, sitk.sitkVectorFloat64)
    progress.step()
    progress.close()
    if displacement.GetSize() != fixed_d.GetSize():
        displacement = sitk.Resample(displacement, fixed_d, sitk.Transform(), sitk.sitkLinear, 0.0,
                                     sitk.sitkVectorFloat64)
    return displacement


def tapered_to_the_border(field: sitk.Image, width_mm: float) -> sitk.Image:
    """``field`` (a vector image) multiplied by a window that is 1 inside and falls to 0 at the grid's border along
    a half cosine over ``width_mm``: outside its grid a displacement field transform moves nothing, so a field that is
    0 at the border continues without a jump (which would fold the displacement on a larger grid)."""
    spacing = np.asarray(field.GetSpacing())
    window = np.ones(field.GetSize()[::-1])
    for axis_xyz, (n, step) in enumerate(zip(field.GetSize(), spacing)):
        distance = np.minimum(np.arange(n), np.arange(n)[::-1]) * step  # mm to the nearest border voxel
        ramp = 0.5 - 0.5 * np.cos(np.pi * np.clip(distance / max(width_mm, 1e-6), 0.0, 1.0))
        shape = [1, 1, 1]
        shape[2 - axis_xyz] = n
        window = window * ramp.reshape(shape)
    tapered = sitk.GetImageFromArray(sitk.GetArrayViewFromImage(field) * window[..., None], isVector=True)
    tapered.CopyInformation(field)
    return sitk.Cast(tapered, field.GetPixelID())


def unfolded(field: sitk.Image, max_rounds: int = 6) -> tuple[sitk.Image, int]:
    """``field`` (``sitkVectorFloat64``, mm) smoothed with Gaussians of 1, 2, 4, … voxels until its Jacobian
    determinant is at least :data:`MIN_JACOBIAN` everywhere (smoothing lowers every derivative; a constant field
    never folds), the first (narrowest) that suffices. Returns the field and the number of rounds (0: it did not
    fold); still folded after ``max_rounds``: the last field, -1."""
    spacing = np.asarray(field.GetSpacing(), dtype=float)
    current = field
    for rounds in range(max_rounds + 1):
        if float(jacobian_determinant(current).min()) >= MIN_JACOBIAN:
            return current, rounds
        if rounds < max_rounds:
            current = sitk.Cast(sitk.SmoothingRecursiveGaussian(field, (spacing * 2.0 ** rounds).tolist()),
                                sitk.sitkVectorFloat64)
    return current, -1


def jacobian_determinant(field: sitk.Image) -> np.ndarray:
    """Jacobian determinant of ``p -> p + field(p)`` per voxel, (z, y, x)."""
    return sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(field))


def _field_qc(displacement_w: sitk.Image, jacobian: np.ndarray | None = None) -> dict:
    """Size of the displacements, smallest Jacobian determinant of ``p -> p + d(p)`` and the folded (≤ 0) share
    (``jacobian``: :func:`jacobian_determinant` of the field, where already computed)."""
    magnitude = np.linalg.norm(sitk.GetArrayFromImage(displacement_w), axis=-1)
    jacobian = jacobian_determinant(displacement_w) if jacobian is None else jacobian
    return {"displacement_mm": {"mean": round(float(magnitude.mean()), 3), "max": round(float(magnitude.max()), 3)},
            "jacobian_min": round(float(jacobian.min()), 4), "folded_fraction": round(float((jacobian <= 0).mean()), 6)}


# ----------------------------------------------------------------------------------------------------- main


def _not_worse(nmi_after: float, nmi_before: float) -> bool:
    """A finite NMI that is not lower than before (by more than SIMILARITY_TOLERANCE)."""
    return bool(np.isfinite(nmi_after) and (not np.isfinite(nmi_before)
                                            or nmi_after >= nmi_before - SIMILARITY_TOLERANCE))


def _stage_failed(stage: str, error: RuntimeError, fixed: sitk.Image, fixed_name: str,
                  moving_name: str) -> HPNInputError:
    """One line for an ITK failure inside a registration stage."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    # "ITK ERROR: SomeFilter(0x55d0...): what went wrong." -> "what went wrong"
    reason = re.sub(r"^(ITK ERROR: )?\w+\(0x[0-9a-f]+\):\s*", "", lines[-1]).rstrip(".") if lines else \
        type(error).__name__
    return HPNInputError(f"{moving_name}: the {stage} registration onto {fixed_name} failed ({reason}); images of "
                         f"{list(fixed.GetSize())} voxels may be too small for its resolution pyramid (try "
                         f"--registration-method none)")


def register_to_reference(fixed: sitk.Image, moving: sitk.Image, *, moving_label: sitk.Image | None = None,
                          fixed_label: sitk.Image | None = None, method: str = "demons", progress: bool = True,
                          fixed_name: str = "fixed image", moving_name: str = "moving image",
                          settings: RegistrationSettings | None = None) -> RegistrationResult:
    """Register ``moving`` onto ``fixed``'s grid; ``method`` one of :data:`METHODS` ("none": resample in physical
    space only; "affine"; the deformable "demons" or "syn" after the affine stage).

    ``moving_label`` (on the moving grid) is warped with nearest-neighbour interpolation; with ``fixed_label`` (on
    the fixed grid) as well, ``qc["pancreas"]`` holds the label > 0 surface distance and Dice before and after.
    Disjoint bounding boxes raise HPNInputError naming ``moving_name`` and ``fixed_name``; a stage that lowers the
    similarity is dropped, and a result worse than before is flagged, with a :class:`RegistrationWarning` (also in
    ``qc["warnings"]``).
    """
    if method not in METHODS:
        raise HPNInputError(f"{moving_name}: registration method {method!r} is not one of {list(METHODS)}")
    settings = settings or RegistrationSettings()
    started = time.perf_counter()
    check_3d_single_component(fixed, fixed_name)
    check_3d_single_component(moving, moving_name)
    if moving_label is not None:
        check_same_grid(moving, moving_name, moving_label, f"label of {moving_name}")
    if fixed_label is not None:
        check_same_grid(fixed, fixed_name, fixed_label, f"label of {fixed_name}")
    overlap = check_overlap(fixed, moving, fixed_name, moving_name)
    qc: dict = {"method": method, "fixed": fixed_name, "moving": moving_name, "overlap_fraction": round(overlap, 4),
                "settings": asdict(settings), "stages": [], "warnings": []}

    def warn(message: str) -> None:
        qc["warnings"].append(message)
        warnings.warn(f"{moving_name}: {message}", RegistrationWarning, stacklevel=3)

    if overlap < MIN_COVERAGE:
        warn(f"the moving image covers only {overlap:.0%} of the fixed image's bounding box; outside it the "
             f"registered image is empty")

    grid = working_grid(fixed, moving, settings)
    moving_grid = working_grid(moving, fixed, settings)
    qc["working_grid"] = {"size": list(grid.GetSize()), "spacing_mm": [round(s, 4) for s in grid.GetSpacing()]}
    fixed_w = _prepared(fixed, settings.window_hu, grid, settings.image_sigma_mm)
    moving_own = _prepared(moving, settings.window_hu, moving_grid, settings.image_sigma_mm)

    def similarity(transform: sitk.Transform) -> dict:
        """NMI/NCC over the working grid's voxels that map into the moving image's (body-cropped) region."""
        resampled = sitk.Resample(moving_own, grid, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        return _similarity(fixed_w, resampled, _domain_mask(moving_grid, grid, transform))

    identity = sitk.Transform()
    transform: sitk.Transform = identity
    similarity_before = similarity(identity)
    similarity_now = similarity_before
    bar = _LevelProgress(progress)
    if method == "affine" or method in DEFORMABLE_METHODS:
        stage_start = time.perf_counter()
        try:
            affine, init = _affine_stage(fixed_w, moving_own, settings, bar)
        except RuntimeError as error:  # ITK: e.g. too few voxels left at a coarse pyramid level
            bar.close()
            raise _stage_failed("affine", error, fixed, fixed_name, moving_name) from None
        after = similarity(affine)
        kept = _not_worse(after["nmi"], similarity_now["nmi"])
        qc["stages"].append({"stage": "affine", "initialisation": init, "similarity": after, "kept": kept,
                             "seconds": round(time.perf_counter() - stage_start, 2),
                             "matrix": [round(v, 6) for v in affine.GetMatrix()],
                             "translation_mm": [round(v, 4) for v in affine.GetTranslation()]})
        if kept:
            transform, similarity_now = affine, after
        else:
            warn(f"the affine stage lowered the similarity (NMI {similarity_now['nmi']} -> {after['nmi']}); "
                 "kept the scanner alignment")
    if method in DEFORMABLE_METHODS:
        stage_start = time.perf_counter()
        fixed_d = _prepared(fixed, settings.demons_window_hu, grid, settings.image_sigma_mm)
        moving_d = sitk.Resample(_prepared(moving, settings.demons_window_hu, moving_grid, settings.image_sigma_mm),
                                 grid, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        try:
            displacement_w = (_demons_stage(fixed_d, moving_d, settings, bar) if method == "demons" else
                              _syn_stage(fixed_d, moving_d, settings, moving_name, bar))
        except RuntimeError as error:
            bar.close()
            raise _stage_failed(method, error, fixed, fixed_name, moving_name) from None
        taper_mm = max(settings.field_taper_mm, 3 * max(grid.GetSpacing()))  # at least 3 working voxels
        displacement_w = tapered_to_the_border(displacement_w, taper_mm)
        jacobian = jacobian_determinant(displacement_w)
        if float(jacobian.min()) >= MIN_JACOBIAN:
            field_qc = {**_field_qc(displacement_w, jacobian), "field": method}
        else:
            folded = float((jacobian <= 0).mean())
            displacement_w, rounds = unfolded(displacement_w)
            how = (f"smoothed with a {2 ** (rounds - 1)}-voxel Gaussian" if rounds > 0 else "still folding after "
                   "smoothing")
            field_qc = {**_field_qc(displacement_w), "field": f"the {method} field {how} (it folded in "
                                                              f"{folded:.3%} of the working grid)"}
        candidate = sitk.CompositeTransform([transform, sitk.DisplacementFieldTransform(displacement_w)])
        after = similarity(candidate)
        kept = _not_worse(after["nmi"], similarity_now["nmi"])
        qc["stages"].append({"stage": method, "similarity": after, "kept": kept,
                             "seconds": round(time.perf_counter() - stage_start, 2), **field_qc})
        if kept:
            transform, similarity_now = candidate, after
        else:
            warn(f"the {method} stage lowered the similarity (NMI {similarity_now['nmi']} -> {after['nmi']}); "
                 "kept the previous stage")
        if kept and field_qc["folded_fraction"] > 0:
            warn(f"the {method} displacement folds in {field_qc['folded_fraction']:.3%} of the working grid")
    bar.close()
    qc["similarity"] = {"before": similarity_before, "after": similarity_now}

    extrema = sitk.MinimumMaximumImageFilter()
    extrema.Execute(moving)
    air = float(extrema.GetMinimum())
    warped = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, air, moving.GetPixelID())
    warped_label = None if moving_label is None else label_on_grid(moving_label, fixed, transform)
    displacement = sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat32, fixed.GetSize(),
                                                     fixed.GetOrigin(), fixed.GetSpacing(), fixed.GetDirection())
    if method != "none":  # of the displacement written out, on the whole fixed grid
        qc["displacement"] = _field_qc(displacement)
    if moving_label is not None and fixed_label is not None:
        before = alignment_metrics(fixed_label, label_on_grid(moving_label, fixed))
        after = alignment_metrics(fixed_label, warped_label)
        qc["pancreas"] = {"before": before, "after": after}
        msd_before, msd_after = before["mean_surface_distance_mm"], after["mean_surface_distance_mm"]
        if msd_before is not None and msd_after is not None and msd_after > msd_before:
            warn(f"the pancreas mean surface distance got worse ({msd_before} -> {msd_after} mm)")
    qc["worse_than_before"] = not _not_worse(similarity_now["nmi"], similarity_before["nmi"])
    if qc["worse_than_before"]:
        warn(f"the similarity after registration is worse than before (NMI {similarity_before['nmi']} -> "
             f"{similarity_now['nmi']})")
    qc["seconds"] = round(time.perf_counter() - started, 2)
    return RegistrationResult(warped=warped, warped_label=warped_label, displacement=displacement, qc=qc,
                              transform=transform)


# ----------------------------------------------------------------------------------------------------- files

#: Files written by :func:`register_files` into its output folder.
OUTPUT_FILES = {"warped": "warped.nii.gz", "displacement": "displacement.nii.gz", "warped_label": "warped_label.nii.gz",
                "qc": "qc.json"}


def register_files(fixed_path: Path, moving_path: Path, out_dir: Path, *, moving_label_path: Path | None = None,
                   fixed_label_path: Path | None = None, method: str = "demons", progress: bool = True,
                   allow_unusual_intensities: bool = False) -> RegistrationResult:
    """``nnunet-hpn register``: read the images (NIfTI files or DICOM series folders), register the moving one onto
    the fixed grid, write ``out_dir/{warped,displacement,warped_label}.nii.gz`` and ``qc.json`` (together or not at
    all, an earlier run's file this run does not write removed; nothing is written when registration fails)."""
    import json

    from nnunet_hpn.io.images import check_distinct_phases, read_image, read_label
    from nnunet_hpn.io.publish import atomic_files, check_outputs

    inputs = [Path(path) for path in (fixed_path, moving_path, moving_label_path, fixed_label_path) if path is not None]
    check_outputs([(Path(out_dir), "-o", "folder")], inputs)
    check_distinct_phases({"fixed": (str(fixed_path), None), "moving": (str(moving_path), None)})
    fixed = read_image(fixed_path, allow_unusual_intensities)
    moving = read_image(moving_path, allow_unusual_intensities)
    check_distinct_phases({"fixed": (str(fixed_path), sitk.GetArrayViewFromImage(fixed)),
                           "moving": (str(moving_path), sitk.GetArrayViewFromImage(moving))})
    labels = {}
    for key, path, image, image_path in (("moving", moving_label_path, moving, moving_path),
                                         ("fixed", fixed_label_path, fixed, fixed_path)):
        if path is not None:
            labels[key] = read_label(path)[1]
            check_same_grid(image, str(image_path), labels[key], str(path))
    result = register_to_reference(fixed, moving, moving_label=labels.get("moving"), fixed_label=labels.get("fixed"),
                                   method=method, progress=progress, fixed_name=str(fixed_path),
                                   moving_name=str(moving_path))
    out_dir = Path(out_dir)
    images = {key: getattr(result, key) for key in ("warped", "displacement", "warped_label")
              if getattr(result, key) is not None}
    targets = [out_dir / OUTPUT_FILES[key] for key in images] + [out_dir / OUTPUT_FILES["qc"]]
    with atomic_files(targets, remove=[out_dir / name for name in OUTPUT_FILES.values()]) as temporaries:
        for image, temporary in zip(images.values(), temporaries):
            sitk.WriteImage(image, str(temporary), useCompression=True)
        temporaries[-1].write_text(json.dumps(result.qc, indent=2), encoding="utf-8")
    return result
