"""Synthetic multi-phase abdominal CT phantoms (default: arterial + venous) with pancreas, PDAC mass and duct labels.

Each case is a small abdomen in HU: body with a subcutaneous fat layer, mesenteric fat, liver, spleen,
kidneys, vertebra, aorta, portal/splenic vein and a curved pancreas (head to tail) holding a hypo-attenuating
mass and a duct that is dilated upstream (tail side) of the mass. The parenchyma carries a smooth texture (lobulation,
fatty infiltration) that is the same in every phase. Three kinds of case (frozen before the CPU Table 1, see
docs/RESULTS.md; never tuned on results):

* **subtle in both phases** (:data:`SUBTLE_IN_BOTH_SHARE`, about 30 %): the mass differs from the parenchyma by only
  :data:`SUBTLE_CONTRAST_HU` in each phase, hypo-attenuating in the arterial and hyper-attenuating in the venous
  phase, below the parenchymal texture (:data:`TEXTURE_SD_HU`) and the noise; the texture is phase-invariant and the
  mass is not, so the pair (for example A - V) shows it clearly. No other giveaway: the duct is not dilated, the mass
  is confined to the gland (no contour change) and small (:data:`SUBTLE_DIAMETER_MM`);
* **iso-attenuating in one phase** (:data:`ISO_ATTENUATING_SHARE` of the others, about 21 % of all): clearly
  hypo-attenuating in one phase, within a few HU of the parenchyma in the other;
* **conspicuous** (the rest): hypo-attenuating by 40-60 HU in both phases, duct dilated upstream.

Phases (:data:`KNOWN_PHASES`, any subset in any order, ``phases=``), each with its own enhancement:

* ``noncontrast``: no contrast agent: vessels ~40 HU like soft tissue, parenchyma ~40 HU, mass nearly iso;
* ``arterial``: bright aorta (250-350 HU) and bright pancreatic parenchyma, hypo-attenuating mass;
* ``venous``: bright portal / splenic vein (170-190 HU), brighter liver, hypo-attenuating mass;
* ``delayed``: washout: vessels ~120 HU, parenchyma ~70 HU, the fibrotic mass retains contrast and is nearly iso.

The anatomy is painted in the space of the *reference phase* (default: arterial if simulated, else the first phase;
``label.nii.gz``). Every
other phase is the same anatomy warped by its own smooth random deformation, on the same voxel grid, with its
labels in ``label_<phase>.nii.gz``. Arterial and venous do not depend on the phase list: they draw from the
case's own random streams, the other phases from streams of their own (keyed by phase name, so a phase looks the
same in every phase list).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from scipy.interpolate import make_interp_spline
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation
from tqdm import tqdm

from nnunet_hpn.augment.displacement import control_grid_field, scaled_to_peak
from nnunet_hpn.phases import PHASES, reference_phase as reference_phase_rule
from nnunet_hpn.errors import HPNInputError
from nnunet_hpn.io.case_layout import label_file_name
from nnunet_hpn.io.crop_boxes import BOXES_FILE, CropBox, crop_image, label_box, write_boxes
from nnunet_hpn.labels import PDAC_LABELS

#: Phases the phantom simulates, in acquisition order.
KNOWN_PHASES: tuple = ("noncontrast", "arterial", "venous", "delayed")
#: Spawn keys of the per-phase random streams of noncontrast / delayed (arterial and venous use the original ones).
_PHASE_STREAM_KEY = 100
#: Share of the cases that are not subtle in both phases whose mass is iso-attenuating (within a few HU of the
#: parenchyma) in one phase.
ISO_ATTENUATING_SHARE = 0.3
#: Share of cases whose mass is subtle in each phase and clear only in the pair (drawn per case).
SUBTLE_IN_BOTH_SHARE = 0.3
#: |mass - parenchyma| in HU of a subtle mass in the arterial (hypo) and venous (hyper) phase.
SUBTLE_CONTRAST_HU = (8.0, 12.0)
#: Diameter range (mm) of a subtle mass (the others: 8-25 mm).
SUBTLE_DIAMETER_MM = (8.0, 14.0)
#: Standard deviation (HU) and correlation length (mm, Gaussian sigma) of the phase-invariant parenchymal texture.
TEXTURE_SD_HU = 12.0
TEXTURE_SIGMA_MM = 2.5
#: Samples per centre-line curve; dense enough that the distance to the samples is the distance to the curve.
CURVE_SAMPLES = 512
HU_MIN, HU_MAX = -1024, 3071


class Tissue(IntEnum):
    """Tissue classes of the phantom; each has one HU value per phase and case."""

    AIR = 0
    SOFT_TISSUE = 1
    FAT = 2
    LIVER = 3
    SPLEEN = 4
    KIDNEY = 5
    BONE = 6
    AORTA = 7
    PORTAL_VEIN = 8
    PANCREAS = 9
    DUCT = 10
    MASS = 11


#: Label of each tissue class (index = Tissue value); everything not listed is background.
TISSUE_TO_LABEL = np.zeros(len(Tissue), dtype=np.uint8)
TISSUE_TO_LABEL[Tissue.PANCREAS] = PDAC_LABELS["pancreas"]
TISSUE_TO_LABEL[Tissue.MASS] = PDAC_LABELS["PDAC"]
TISSUE_TO_LABEL[Tissue.DUCT] = PDAC_LABELS["duct"]


@dataclass
class PhantomCase:
    """One generated case. Arrays are z, y, x; each phase's image, labels and tissue map live in that phase's space
    (the reference phase's space is the painted, undeformed one)."""

    images: dict  # phase -> int16 HU
    label: np.ndarray  # uint8 labels in the reference phase's space
    labels: dict  # phase -> uint8 labels in that phase's space (the reference phase: ``label``)
    tissue: np.ndarray  # uint8 Tissue ids in the reference phase's space
    tissues: dict  # phase -> uint8 Tissue ids in that phase's space
    metadata: dict
    reference_phase: str = "arterial"

    @property
    def phases(self) -> tuple:
        return tuple(self.images)


class _Grid:
    """Voxel-centre coordinates in mm (z, y, x), with the abdomen's centre and semi-axes."""

    def __init__(self, shape_zyx: tuple[int, int, int], spacing_zyx: np.ndarray):
        self.shape = shape_zyx
        self.spacing = spacing_zyx
        self.axes_mm = [np.arange(n) * s for n, s in zip(shape_zyx, spacing_zyx)]
        self.z, self.y, self.x = np.meshgrid(*self.axes_mm, indexing="ij", sparse=True)
        self.centre = (np.asarray(shape_zyx) - 1) * spacing_zyx / 2
        self.length_z = shape_zyx[0] * spacing_zyx[0]
        self.semi_y = 0.36 * shape_zyx[1] * spacing_zyx[1]
        self.semi_x = 0.45 * shape_zyx[2] * spacing_zyx[2]

    def point(self, fz: float, fy: float, fx: float) -> np.ndarray:
        """Point given as fractions of the z length and of the body's y / x semi-axes, relative to the centre."""
        return self.centre + np.array([fz * self.length_z, fy * self.semi_y, fx * self.semi_x])

    def ellipsoid(self, centre: np.ndarray, semi_axes: np.ndarray) -> np.ndarray:
        """Mask of an axis-aligned ellipsoid (semi-axes in mm, z y x)."""
        return (((self.z - centre[0]) / semi_axes[0]) ** 2 + ((self.y - centre[1]) / semi_axes[1]) ** 2
                + ((self.x - centre[2]) / semi_axes[2]) ** 2) <= 1

    def cylinder_z(self, centre: np.ndarray, radius_y: float, radius_x: float) -> np.ndarray:
        """Mask of an elliptic cylinder along z through ``centre``."""
        mask = ((self.y - centre[1]) / radius_y) ** 2 + ((self.x - centre[2]) / radius_x) ** 2 <= 1
        return np.broadcast_to(mask, self.shape)

    def box(self, low_mm: np.ndarray, high_mm: np.ndarray) -> tuple[slice, slice, slice]:
        """Index slices of the voxels whose centres lie within [low_mm, high_mm]."""
        return tuple(slice(int(np.searchsorted(a, lo)), int(np.searchsorted(a, hi, side="right")))
                     for a, lo, hi in zip(self.axes_mm, low_mm, high_mm))

    def box_points(self, box: tuple[slice, slice, slice]) -> np.ndarray:
        """Coordinates (n, 3) in mm of the voxels in ``box``, C order."""
        zz, yy, xx = np.meshgrid(*(a[s] for a, s in zip(self.axes_mm, box)), indexing="ij")
        return np.stack([zz.ravel(), yy.ravel(), xx.ravel()], axis=1)

    def nearest_on_curve(self, curve_mm: np.ndarray, max_dist_mm: float) -> tuple[np.ndarray, np.ndarray]:
        """Distance (mm) from every voxel to the sampled curve and the index of the nearest sample.

        Voxels farther than ``max_dist_mm`` get distance inf and index ``len(curve_mm)``.
        """
        dist = np.full(self.shape, np.inf)
        nearest = np.full(self.shape, len(curve_mm))
        box = self.box(curve_mm.min(axis=0) - max_dist_mm, curve_mm.max(axis=0) + max_dist_mm)
        box_dist, box_nearest = cKDTree(curve_mm).query(self.box_points(box), distance_upper_bound=max_dist_mm)
        box_shape = tuple(s.stop - s.start for s in box)
        dist[box] = box_dist.reshape(box_shape)
        nearest[box] = box_nearest.reshape(box_shape)
        return dist, nearest


def _sample_curve(control_points: np.ndarray) -> np.ndarray:
    """Smooth cubic curve through the control points, sampled at CURVE_SAMPLES parameters in [0, 1]."""
    control_t = np.linspace(0, 1, len(control_points))
    return make_interp_spline(control_t, control_points, k=3)(np.linspace(0, 1, CURVE_SAMPLES))


def _tube(dist: np.ndarray, nearest: np.ndarray, radius_per_sample: np.ndarray) -> np.ndarray:
    """Voxels within the (varying) radius of their nearest curve sample."""
    radius = np.append(radius_per_sample, -1.0)  # index len(curve) marks voxels beyond max_dist
    return dist <= radius[nearest]


def _irregular_mass(grid: _Grid, centre: np.ndarray, diameter_mm: float, rng: np.random.Generator,
                    texture_rng: np.random.Generator) -> np.ndarray:
    """Mask of a randomly rotated ellipsoid with a smoothly perturbed surface (drawn from ``texture_rng``)."""
    semi_axes = diameter_mm / 2 * rng.uniform(0.75, 1.25, size=3)
    rotation = Rotation.random(random_state=rng).as_matrix()
    half_size = 1.3 * semi_axes.max()
    box = grid.box(centre - half_size, centre + half_size)
    box_shape = tuple(s.stop - s.start for s in box)
    local = (grid.box_points(box) - centre) @ rotation / semi_axes
    bump = ndimage.gaussian_filter(texture_rng.standard_normal(box_shape), sigma=2.5 / grid.spacing)
    bump /= bump.std()
    mask = np.zeros(grid.shape, dtype=bool)
    mask[box] = np.linalg.norm(local, axis=1).reshape(box_shape) <= 1 + 0.15 * bump
    return mask


def _random_displacement_mm(shape: tuple[int, int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random displacement field (3, z, y, x) in mm and its translation part (z, y, x)."""
    field = control_grid_field(rng.standard_normal((3, 4, 4, 4)), shape, degree=3)  # cubic through 4 x 4 x 4
    field = scaled_to_peak(field, rng.uniform(2.0, 5.0))
    translation = rng.uniform(-2.0, 2.0, size=3) * np.array([0.5, 1.0, 1.0])
    return field + translation[:, None, None, None], translation


def _phase_hu(rng: np.random.Generator) -> tuple[dict[str, np.ndarray], str | None]:
    """HU of every tissue per phase (index = Tissue value) and the phase where the mass is iso-attenuating."""
    hu = {phase: np.zeros(len(Tissue), dtype=np.float32) for phase in PHASES}
    shared = {Tissue.AIR: -1000.0, Tissue.SOFT_TISSUE: rng.uniform(35, 45), Tissue.FAT: rng.uniform(-110, -90),
              Tissue.BONE: rng.uniform(400, 550), Tissue.DUCT: rng.uniform(10, 20)}
    per_phase = {  # (arterial, venous)
        Tissue.LIVER: (rng.uniform(60, 75), rng.uniform(100, 120)),
        Tissue.SPLEEN: (rng.uniform(110, 130), rng.uniform(110, 125)),
        Tissue.KIDNEY: (rng.uniform(150, 200), rng.uniform(140, 170)),
        Tissue.AORTA: (rng.uniform(250, 350), rng.uniform(140, 160)),
        Tissue.PORTAL_VEIN: (rng.uniform(80, 100), rng.uniform(170, 190)),
        Tissue.PANCREAS: (rng.uniform(110, 130), rng.uniform(90, 100)),
    }
    for phase_index, phase in enumerate(PHASES):
        for tissue, value in shared.items():
            hu[phase][tissue] = value
        for tissue, values in per_phase.items():
            hu[phase][tissue] = values[phase_index]
        hu[phase][Tissue.MASS] = hu[phase][Tissue.PANCREAS] - rng.uniform(40, 60)
    iso_phase = str(rng.choice(PHASES)) if rng.random() < ISO_ATTENUATING_SHARE else None
    if iso_phase is not None:
        hu[iso_phase][Tissue.MASS] = hu[iso_phase][Tissue.PANCREAS] + rng.uniform(-4, 4)
    return hu, iso_phase


def _other_phase_hu(phase: str, rng: np.random.Generator, arterial_hu: np.ndarray) -> tuple[np.ndarray, float]:
    """HU of every tissue in ``noncontrast`` or ``delayed`` (tissues without contrast uptake as in ``arterial_hu``)
    and the phase's noise sigma, drawn from the phase's own stream."""
    hu = arterial_hu.copy()
    if phase == "noncontrast":
        per_tissue = {Tissue.LIVER: (50, 65), Tissue.SPLEEN: (40, 50), Tissue.KIDNEY: (28, 38), Tissue.AORTA: (35, 50),
                      Tissue.PORTAL_VEIN: (35, 50), Tissue.PANCREAS: (35, 45)}
        mass_offset = (-10, -3)  # barely hypo-attenuating without contrast
    elif phase == "delayed":
        per_tissue = {Tissue.LIVER: (75, 90), Tissue.SPLEEN: (80, 95), Tissue.KIDNEY: (120, 150),
                      Tissue.AORTA: (110, 130), Tissue.PORTAL_VEIN: (110, 130), Tissue.PANCREAS: (65, 80)}
        mass_offset = (-15, 5)  # parenchyma washes out, the fibrotic mass retains contrast
    else:
        raise ValueError(f"no enhancement model for phase {phase!r}")
    for tissue, (low, high) in per_tissue.items():
        hu[tissue] = rng.uniform(low, high)
    hu[Tissue.MASS] = hu[Tissue.PANCREAS] + rng.uniform(*mass_offset)
    return hu, float(rng.uniform(10, 20))


def _paint_body(grid: _Grid, rng: np.random.Generator,
               texture_rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, Callable[..., np.ndarray]]:
    """Tissue map (z, y, x; uint8 Tissue ids) of the body wall, subcutaneous and mesenteric fat, the mask of the
    abdominal cavity (z, y, x) and ``jittered(fz, fy, fx)``: a point given as in :meth:`_Grid.point`, randomly
    displaced (drawn from ``rng``)."""
    tissue = np.full(grid.shape, Tissue.AIR, dtype=np.uint8)
    centre = grid.centre
    semi_y, semi_x = grid.semi_y * rng.uniform(0.95, 1.05), grid.semi_x * rng.uniform(0.95, 1.05)
    fat_thickness = rng.uniform(0.06, 0.10) * grid.semi_x
    body = grid.cylinder_z(centre, semi_y, semi_x)
    inner = grid.cylinder_z(centre, semi_y - fat_thickness, semi_x - fat_thickness)
    tissue[body] = Tissue.FAT
    tissue[inner] = Tissue.SOFT_TISSUE
    mesentery = ndimage.gaussian_filter(texture_rng.standard_normal(grid.shape, dtype=np.float32),
                                        sigma=4.5 / grid.spacing)
    tissue[inner & (mesentery > 0.8 * mesentery.std())] = Tissue.FAT

    def jittered(fz: float, fy: float, fx: float) -> np.ndarray:
        return grid.point(*(np.array([fz, fy, fx]) + rng.normal(0, 0.03, size=3)))

    return tissue, inner, jittered


def _paint_organs(tissue: np.ndarray, inner: np.ndarray, grid: _Grid, rng: np.random.Generator,
                  organs: Sequence[tuple[Tissue, np.ndarray, np.ndarray]]) -> None:
    """Paint each (tissue, centre mm, semi-axes mm) ellipsoid, its size jittered, inside the cavity ``inner``, then
    the vertebra."""
    for organ, organ_centre, semi_axes in organs:
        tissue[inner & grid.ellipsoid(organ_centre, semi_axes * rng.uniform(0.9, 1.1, size=3))] = organ
    spine_radius = rng.uniform(0.14, 0.17) * grid.semi_x
    tissue[inner & grid.cylinder_z(grid.point(0, 0.68, 0), spine_radius, spine_radius)] = Tissue.BONE


def _paint_tissue(grid: _Grid, rng: np.random.Generator, texture_rng: np.random.Generator,
                  subtle: bool = False) -> tuple[np.ndarray, dict]:
    """Tissue map (uint8 Tissue ids) of one abdomen in the reference phase's space, and its pancreas/mass/duct
    parameters.

    Scalar anatomy comes from ``rng``, voxel-sized random fields from ``texture_rng``, so the anatomy's
    parameters do not depend on the grid size. A ``subtle`` case has a small mass confined to the gland and no
    duct dilation (the same draws, then overridden, so the other anatomy is that of the non-subtle case).
    """
    tissue, inner, jittered = _paint_body(grid, rng, texture_rng)
    semi = np.array([grid.length_z, grid.semi_y, grid.semi_x])
    organs = [
        (Tissue.LIVER, jittered(0.30, -0.05, -0.45), semi * [0.35, 0.75, 0.50]),
        (Tissue.SPLEEN, jittered(0.25, 0.30, 0.62), semi * [0.25, 0.35, 0.20]),
        (Tissue.KIDNEY, jittered(-0.05, 0.50, -0.50), semi * [0.28, 0.22, 0.15]),
        (Tissue.KIDNEY, jittered(-0.05, 0.50, 0.50), semi * [0.28, 0.22, 0.15]),
    ]
    _paint_organs(tissue, inner, grid, rng, organs)

    # Pancreas centre line from head (t = 0, patient right) to tail (t = 1, towards the spleen).
    pancreas_curve = _sample_curve(np.stack([jittered(-0.12, -0.05, -0.28), jittered(-0.04, -0.30, -0.05),
                                             jittered(0.04, -0.22, 0.25), jittered(0.12, 0.12, 0.50)]))
    t = np.linspace(0, 1, CURVE_SAMPLES)
    radius_fractions = [rng.uniform(0.13, 0.18), rng.uniform(0.08, 0.11), rng.uniform(0.09, 0.13),
                        rng.uniform(0.07, 0.10)]
    pancreas_radius = np.interp(t, np.linspace(0, 1, 4), radius_fractions) * grid.semi_x
    fat_rim = rng.uniform(1.5, 3.0)
    dist, nearest = grid.nearest_on_curve(pancreas_curve, pancreas_radius.max() + fat_rim)
    tissue[_tube(dist, nearest, pancreas_radius + fat_rim)] = Tissue.FAT

    aorta_radius = rng.uniform(0.09, 0.11) * grid.semi_x
    tissue[grid.cylinder_z(jittered(0, 0.30, 0.15), aorta_radius, aorta_radius)] = Tissue.AORTA

    # Splenic vein along the back of the pancreas body/tail, joining the portal vein that runs to the liver hilum.
    vein_radius = rng.uniform(0.06, 0.08) * grid.semi_x
    behind = [int(f * (CURVE_SAMPLES - 1)) for f in (0.25, 0.6, 0.92)]
    vein_control = [jittered(0.10, 0.0, -0.35)]
    vein_control += [pancreas_curve[i] + [0, pancreas_radius[i] + vein_radius + 1.0, 0] for i in behind]
    vein_dist, vein_nearest = grid.nearest_on_curve(_sample_curve(np.stack(vein_control)), vein_radius)
    tissue[_tube(vein_dist, vein_nearest, np.full(CURVE_SAMPLES, vein_radius))] = Tissue.PORTAL_VEIN

    tissue[_tube(dist, nearest, pancreas_radius)] = Tissue.PANCREAS

    # Mass on the pancreas; the duct is dilated upstream of it (towards the tail).
    mass_t = rng.uniform(0.05, 0.75)
    mass_sample = int(mass_t * (CURVE_SAMPLES - 1))
    offset_direction = rng.standard_normal(3)
    mass_centre = pancreas_curve[mass_sample] + (offset_direction / np.linalg.norm(offset_direction)
                                                 * rng.uniform(0, 0.5) * pancreas_radius[mass_sample])
    mass_diameter = rng.uniform(8, 25)
    if subtle:
        low, high = SUBTLE_DIAMETER_MM
        mass_diameter = low + (mass_diameter - 8) / (25 - 8) * (high - low)
    thinnest_duct = 0.5 * np.hypot(grid.spacing[0], grid.spacing[1])  # thinner ducts break up on this grid
    duct_radius_normal = max(rng.uniform(0.75, 1.5), thinnest_duct)
    duct_radius_dilated = max(rng.uniform(1.5, 2.5), 1.5 * duct_radius_normal)
    if subtle:
        duct_radius_dilated = duct_radius_normal
    upstream = 1 / (1 + np.exp(-(t - mass_t) / 0.03))
    duct_radius = duct_radius_normal + (duct_radius_dilated - duct_radius_normal) * upstream
    duct_radius = np.maximum(np.minimum(duct_radius, 0.6 * pancreas_radius), duct_radius_normal)
    duct_radius[(t < 0.02) | (t > 0.98)] = -1.0  # the duct stops short of both ends of the gland
    gland = _tube(dist, nearest, pancreas_radius)
    tissue[_tube(dist, nearest, duct_radius)] = Tissue.DUCT
    mass = _irregular_mass(grid, mass_centre, mass_diameter, rng, texture_rng)
    tissue[mass & gland if subtle else mass] = Tissue.MASS

    parameters = {"mass_diameter_mm": mass_diameter, "mass_position_head_to_tail": mass_t,
                  "duct_radius_mm": duct_radius_normal, "duct_radius_dilated_mm": duct_radius_dilated}
    return tissue, parameters


def check_phases(phases: Sequence[str], reference_phase: str | None, where: str) -> str:
    """Validate a phase list (known, unique, non-empty); returns the reference phase
    (:func:`nnunet_hpn.phases.reference_phase`)."""
    phases = tuple(phases)
    unknown = [phase for phase in phases if phase not in KNOWN_PHASES]
    if not phases or unknown or len(set(phases)) != len(phases):
        raise HPNInputError(f"{where}: phases must be distinct names out of {', '.join(KNOWN_PHASES)}, got "
                            f"{', '.join(phases) or 'none'}")
    return reference_phase_rule(phases, reference_phase, where)


def _phase_streams(seed: int, case_index: int, phase: str) -> tuple[np.random.Generator, ...]:
    """(contrast, deformation, noise) streams of a phase without original streams, keyed by its name."""
    phase_seed = np.random.SeedSequence([seed, case_index],
                                        spawn_key=(_PHASE_STREAM_KEY + KNOWN_PHASES.index(phase),))
    return tuple(np.random.default_rng(stream) for stream in phase_seed.spawn(3))


def _warp(tissue: np.ndarray, texture: np.ndarray, grid: _Grid,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Tissue map (nearest neighbour) and texture (linear) resampled through one smooth random deformation:
    (warped tissue, warped texture, displacement mm, translation mm)."""
    displacement_mm, translation_mm = _random_displacement_mm(grid.shape, rng)
    sample_at = np.indices(grid.shape, dtype=float) + displacement_mm / grid.spacing[:, None, None, None]
    return (ndimage.map_coordinates(tissue, sample_at, order=0, mode="nearest"),
            ndimage.map_coordinates(texture, sample_at, order=1, mode="nearest"), displacement_mm, translation_mm)


def _parenchyma_texture(grid: _Grid, rng: np.random.Generator) -> np.ndarray:
    """Smooth zero-mean field (z, y, x) in HU with standard deviation TEXTURE_SD_HU, added to the parenchyma and the
    mass in every phase alike."""
    field = ndimage.gaussian_filter(rng.standard_normal(grid.shape, dtype=np.float32),
                                    sigma=TEXTURE_SIGMA_MM / grid.spacing)
    return (TEXTURE_SD_HU * field / field.std()).astype(np.float32)


def _render(hu: np.ndarray, tissue: np.ndarray, texture: np.ndarray, textured_tissues: Sequence[Tissue],
            noise_sigma: float, noise: np.ndarray) -> np.ndarray:
    """int16 HU image (z, y, x): each tissue's HU (``hu`` indexed by Tissue value), the texture on
    ``textured_tissues``, plus ``noise_sigma`` times the standard-normal ``noise``."""
    textured = np.isin(tissue, textured_tissues)
    noisy = hu[tissue] + texture * textured + noise_sigma * noise
    return np.clip(np.rint(noisy), HU_MIN, HU_MAX).astype(np.int16)


def generate_phantom_case(seed: int, case_index: int, shape_zyx: tuple[int, int, int] = (48, 96, 96),
                          spacing_zyx: tuple[float, float, float] = (2.5, 1.5, 1.5), phases: Sequence[str] = PHASES,
                          reference_phase: str | None = None) -> PhantomCase:
    """Generate one case with the given phases; its random streams depend only on (seed, case_index) and, for
    noncontrast / delayed, the phase name. ``reference_phase`` (default: arterial if simulated, else the first) is
    not deformed."""
    phases = tuple(phases)
    reference_phase = check_phases(phases, reference_phase, f"phantom case {case_index}")
    case_seed = np.random.SeedSequence([seed, case_index])
    anatomy_rng, texture_rng, contrast_rng, deformation_rng, noise_rng, pairing_rng = (
        np.random.default_rng(stream) for stream in case_seed.spawn(6))
    grid = _Grid(tuple(int(n) for n in shape_zyx), np.asarray(spacing_zyx, dtype=float))
    subtle = bool(pairing_rng.random() < SUBTLE_IN_BOTH_SHARE)
    tissue, parameters = _paint_tissue(grid, anatomy_rng, texture_rng, subtle=subtle)
    hu, iso_phase = _phase_hu(contrast_rng)
    subtle_contrast = pairing_rng.uniform(*SUBTLE_CONTRAST_HU, size=2)
    if subtle:  # hypo in arterial, hyper in venous, each below the texture; K-phase extras keep their own model
        iso_phase = None
        hu["arterial"][Tissue.MASS] = hu["arterial"][Tissue.PANCREAS] - subtle_contrast[0]
        hu["venous"][Tissue.MASS] = hu["venous"][Tissue.PANCREAS] + subtle_contrast[1]
    texture = _parenchyma_texture(grid, pairing_rng)
    noise_sigma = {phase: contrast_rng.uniform(10, 20) for phase in PHASES}
    # the original noise stream, drawn in the original order: arterial and venous do not depend on the phase list
    noise = {phase: noise_rng.standard_normal(grid.shape, dtype=np.float32) for phase in PHASES}

    tissues, textures, deformations = {}, {}, {}
    for phase in phases:
        own_streams = None if phase in PHASES else _phase_streams(seed, case_index, phase)
        if own_streams is not None:
            hu[phase], noise_sigma[phase] = _other_phase_hu(phase, own_streams[0], hu["arterial"])
            noise[phase] = own_streams[2].standard_normal(grid.shape, dtype=np.float32)
        if phase == reference_phase:
            tissues[phase], textures[phase] = tissue, texture
            continue
        if phase == "venous":
            deformation_rng_of_phase = deformation_rng  # the original venous deformation
        else:
            deformation_rng_of_phase = (own_streams or _phase_streams(seed, case_index, phase))[1]
        tissues[phase], textures[phase], displacement_mm, translation_mm = _warp(tissue, texture, grid,
                                                                                 deformation_rng_of_phase)
        deformations[phase] = (float(np.linalg.norm(displacement_mm, axis=0).max()), translation_mm.tolist())

    images = {phase: _render(hu[phase], tissues[phase], textures[phase], (Tissue.PANCREAS, Tissue.MASS),
                             noise_sigma[phase], noise[phase]) for phase in phases}

    first_deformed = next((phase for phase in phases if phase in deformations), None)
    iso_phase = iso_phase if iso_phase in phases else None
    metadata = {
        "seed": seed,
        "case_index": case_index,
        "mass_subtle_in_both": subtle,
        "mass_iso_attenuating": iso_phase is not None,
        "iso_phase": iso_phase,
        "deformation_max_mm": max((d[0] for d in deformations.values()), default=0.0),
        "translation_mm_zyx": deformations[first_deformed][1] if first_deformed else [0.0, 0.0, 0.0],
        **{key: float(value) for key, value in parameters.items()},
        "parenchyma_hu": {phase: float(hu[phase][Tissue.PANCREAS]) for phase in phases},
        "mass_hu": {phase: float(hu[phase][Tissue.MASS]) for phase in phases},
        "noise_sigma_hu": {phase: noise_sigma[phase] for phase in phases},
    }
    if phases != PHASES:
        metadata["reference_phase"] = reference_phase
        metadata["deformation_per_phase"] = {phase: {"max_mm": d[0], "translation_mm_zyx": d[1]}
                                             for phase, d in deformations.items()}
    return PhantomCase(images=images, label=TISSUE_TO_LABEL[tissue],
                       labels={phase: TISSUE_TO_LABEL[tissues[phase]] for phase in phases}, tissue=tissue,
                       tissues=tissues, metadata=metadata, reference_phase=reference_phase)


def phantom_image(array: np.ndarray, spacing_zyx: tuple[float, float, float] = (2.5, 1.5, 1.5)) -> sitk.Image:
    """A (z, y, x) array as the image the phantom files hold: grid centred at the origin, identity direction."""
    image = sitk.GetImageFromArray(array)
    spacing_xyz = tuple(float(s) for s in reversed(spacing_zyx))
    image.SetSpacing(spacing_xyz)
    image.SetOrigin(tuple(-(n - 1) * s / 2 for n, s in zip(image.GetSize(), spacing_xyz)))
    return image


def _write_nifti(array: np.ndarray, spacing_zyx: tuple[float, float, float], path: Path,
                box: CropBox | None = None) -> None:
    """Write a z, y, x array as NIfTI on the phantom grid (:func:`phantom_image`), cut to ``box`` if given."""
    image = phantom_image(array, spacing_zyx)
    if box is not None:
        image = crop_image(image, box, str(path))
    sitk.WriteImage(image, str(path), useCompression=True)


def write_phantom_cases(out_dir: Path, n_cases: int, seed: int = 0, shape_zyx: tuple[int, int, int] = (48, 96, 96),
                        spacing_zyx: tuple[float, float, float] = (2.5, 1.5, 1.5), progress: bool = True,
                        phases: Sequence[str] = PHASES, reference_phase: str | None = None,
                        crop_margin_mm: float | None = None,
                        generate: Callable[..., PhantomCase] = generate_phantom_case) -> list[str]:
    """Write a case folder (:mod:`nnunet_hpn.io.case_layout`) per case: ``out_dir/<case>/<phase>.nii.gz`` for every
    phase, ``label.nii.gz`` (reference phase's space), ``label_<phase>.nii.gz`` for every other phase; and
    ``out_dir/phantoms.json``.

    ``crop_margin_mm``: every file of a case cut to the box of its label's foreground plus this margin
    (:mod:`nnunet_hpn.io.crop_boxes`, world positions kept), the boxes in ``out_dir/crop_boxes.json``.

    Returns the case ids (``hpn_000``, ``hpn_001``, ...). Default: ``arterial.nii.gz``, ``venous.nii.gz``,
    ``label.nii.gz`` (arterial space), ``label_venous.nii.gz``. All images share one grid. For another phase list
    phantoms.json also records ``phases`` and ``reference_phase`` (the default's file is unchanged).
    ``generate``: the preset's case generator, with :func:`generate_phantom_case`'s arguments (default: it).
    """
    if n_cases < 1:
        raise HPNInputError(f"{out_dir}: n_cases must be at least 1, got {n_cases}")
    if len(shape_zyx) != 3 or min(shape_zyx) < 16:
        raise HPNInputError(f"{out_dir}: shape_zyx must be 3 sizes of at least 16 voxels, got {shape_zyx}")
    if len(spacing_zyx) != 3 or min(spacing_zyx) <= 0:
        raise HPNInputError(f"{out_dir}: spacing_zyx must be 3 positive values, got {spacing_zyx}")
    if crop_margin_mm is not None and not crop_margin_mm > 0:
        raise HPNInputError(f"{out_dir}: crop margin must be a positive number of mm, got {crop_margin_mm}")
    phases = tuple(phases)
    reference_phase = check_phases(phases, reference_phase, str(out_dir))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    case_ids, cases_metadata, boxes = [], [], {}
    for case_index in tqdm(range(n_cases), desc="phantom cases", unit="case", disable=not progress):
        case_id = f"hpn_{case_index:03d}"
        case = generate(seed, case_index, shape_zyx, spacing_zyx, phases, reference_phase)
        case_dir = out_dir / case_id
        case_dir.mkdir(exist_ok=True)
        files = [(f"{phase}.nii.gz", case.images[phase]) for phase in phases] + [(label_file_name(), case.label)]
        files += [(label_file_name(phase), case.labels[phase]) for phase in phases if phase != reference_phase]
        box = None
        if crop_margin_mm is not None:
            box = boxes[case_id] = label_box(phantom_image(case.label, spacing_zyx), crop_margin_mm,
                                             str(case_dir / label_file_name()))
        for file_name, array in files:
            _write_nifti(array, spacing_zyx, case_dir / file_name, box)
        case_ids.append(case_id)
        cases_metadata.append({"case_id": case_id, **case.metadata})
    summary = {"seed": seed, "shape_zyx": list(shape_zyx), "spacing_zyx": list(spacing_zyx)}
    if crop_margin_mm is not None:
        summary["crop_margin_mm"] = crop_margin_mm
        write_boxes(out_dir / BOXES_FILE, boxes, crop_margin_mm, reference_phase)
    if phases != PHASES:
        summary.update({"phases": list(phases), "reference_phase": reference_phase})
    summary["cases"] = cases_metadata
    (out_dir / "phantoms.json").write_text(json.dumps(summary, indent=2))
    return case_ids
