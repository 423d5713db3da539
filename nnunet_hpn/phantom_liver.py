"""The liver preset of the phantom (``nnunet-hpn phantom --preset liver``): a liver with hypervascular lesions, the
portal vein and the aorta, in the phases of :mod:`nnunet_hpn.phantom` (default: arterial + venous).

Labels (:data:`LIVER_LABELS`): background 0, liver 1, lesion 2, portal vein 3, aorta 4. ``write_liver_cases``
writes them with the evaluation targets, the lesion target and the union precedence to ``OUT_DIR/labels.json``,
the file ``nnunet-hpn convert --labels`` takes (convert adds the reference phase).

The body, organs, shapes, deformation, texture and noise are :mod:`nnunet_hpn.phantom`'s; what this preset adds
is the anatomy of the liver and its enhancement, with the textbook values of hepatocellular carcinoma (HCC;
docs: multiphase-ct-facts, "Lesions and why the pair of phases matters"; HU ranges in :data:`TISSUE_HU`):

* liver ~70-85 HU arterial, 100-130 HU portal-venous; aorta 250-350 HU arterial, 150-200 HU portal-venous; portal
  vein 100-160 HU arterial, 160-220 HU portal-venous (the aorta is brighter than the portal vein only in the
  arterial phase);
* 1 to :data:`MAX_LESIONS` lesions per case (8-25 mm, apart from each other and from the liver's border), each of
  one kind (:data:`LESION_KINDS`, drawn per lesion with :data:`LESION_KIND_SHARES`), its HU = liver HU + the kind's
  contrast (:data:`LESION_CONTRAST_HU`):

  ============================  =========================  =========================  ================================
  kind                          arterial (vs liver)        portal-venous (vs liver)   conspicuous in
  ============================  =========================  =========================  ================================
  ``enhancing and washout``     +30 to +50 HU (brighter)   -15 to -30 HU (darker)     both phases, opposite signs
  ``arterial only``             +30 to +50 HU (brighter)   within 3 HU (iso)          the arterial phase only
  ``washout only``              within 3 HU (iso)          -15 to -30 HU (darker)     the portal-venous phase only
  ============================  =========================  =========================  ================================

  In ``noncontrast`` every lesion is slightly hypo-attenuating (-5 to -12 HU), in ``delayed`` the lesions that wash
  out stay darker (-10 to -20 HU) and the ``arterial only`` ones are iso. The phase-invariant parenchymal texture
  (SD :data:`nnunet_hpn.phantom.TEXTURE_SD_HU`) covers the liver and its lesions alike, so an iso lesion is not
  seen in that phase. ``phantoms.json`` records per lesion its kind, size, centre, contrast per phase and the
  phases it is conspicuous in (|contrast| >= :data:`CONSPICUOUS_HU`).

Tissue maps (``PhantomCase.tissue``) hold :class:`nnunet_hpn.phantom.Tissue` ids, and lesion ``k`` as
:data:`LESION_TISSUE_BASE` + ``k``, so that each lesion keeps its own HU through the phases' deformations.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage

from nnunet_hpn.phases import PHASES
from nnunet_hpn.phantom import (KNOWN_PHASES, CURVE_SAMPLES, PhantomCase, Tissue, _Grid, _irregular_mass,
                                _paint_body, _paint_organs, _parenchyma_texture, _render, _sample_curve, _tube,
                                _warp, check_phases, write_phantom_cases)

#: Label values of the preset (dataset.json ``labels``).
LIVER_LABELS: dict[str, int] = {"background": 0, "liver": 1, "lesion": 2, "portal vein": 3, "aorta": 4}
#: Evaluation targets: each foreground label, and the whole liver (parenchyma and lesions).
LIVER_TARGETS: dict[str, list[str]] = {"liver (all)": ["liver", "lesion"], "lesion": ["lesion"],
                                       "portal vein": ["portal vein"], "aorta": ["aorta"]}
#: Where an original- and a virtual-pair model disagree on a foreground label, the earlier one wins.
LIVER_UNION_PRECEDENCE: tuple[str, ...] = ("lesion", "portal vein", "aorta", "liver")

#: Lesion kinds and their shares (drawn per lesion).
LESION_KINDS: tuple[str, ...] = ("enhancing and washout", "arterial only", "washout only")
LESION_KIND_SHARES: tuple[float, ...] = (0.5, 0.25, 0.25)
MAX_LESIONS = 3
LESION_DIAMETER_MM = (8.0, 25.0)
#: Tissue id of lesion k (0 <= k < MAX_LESIONS) in the preset's tissue maps.
LESION_TISSUE_BASE = len(Tissue)
#: |lesion - liver| (HU) from which a lesion counts as conspicuous in a phase (phantoms.json ``conspicuous_in``).
CONSPICUOUS_HU = 10.0

#: HU range (low, high) per tissue and phase (KNOWN_PHASES order: noncontrast, arterial, venous, delayed).
TISSUE_HU: dict[Tissue, tuple[tuple[float, float], ...]] = {
    Tissue.LIVER: ((50, 65), (70, 85), (100, 130), (85, 105)),
    Tissue.AORTA: ((35, 50), (250, 350), (150, 200), (100, 130)),
    Tissue.PORTAL_VEIN: ((35, 50), (100, 160), (160, 220), (110, 140)),
    Tissue.SPLEEN: ((40, 55), (100, 150), (110, 130), (90, 110)),
    Tissue.KIDNEY: ((30, 40), (150, 200), (150, 180), (100, 130)),
}
#: HU range of the tissues without contrast uptake (the same in every phase).
UNENHANCED_HU: dict[Tissue, tuple[float, float]] = {Tissue.AIR: (-1000, -1000), Tissue.SOFT_TISSUE: (35, 45),
                                                    Tissue.FAT: (-110, -90), Tissue.BONE: (400, 550)}
#: Lesion - liver (HU range) per kind and phase (KNOWN_PHASES order).
LESION_CONTRAST_HU: dict[str, tuple[tuple[float, float], ...]] = {
    "enhancing and washout": ((-12, -5), (30, 50), (-30, -15), (-20, -10)),
    "arterial only": ((-12, -5), (30, 50), (-3, 3), (-3, 3)),
    "washout only": ((-12, -5), (-3, 3), (-30, -15), (-20, -10)),
}
#: Noise standard deviation (HU range) of every phase.
NOISE_SIGMA_HU = (10.0, 20.0)
#: Entropy added to (seed, case index) so that the preset's streams differ from the pancreas preset's.
_LIVER_STREAM_KEY = 31


def liver_labels_file() -> dict:
    """The preset's labels in the form ``nnunet-hpn convert --labels`` reads (written as ``labels.json``)."""
    return {"labels": dict(LIVER_LABELS), "targets": {name: list(parts) for name, parts in LIVER_TARGETS.items()},
            "lesion": "lesion", "union_precedence": list(LIVER_UNION_PRECEDENCE)}


def _paint_liver(grid: _Grid, rng: np.random.Generator, texture_rng: np.random.Generator,
                 lesion_rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    """Tissue map (z, y, x; Tissue ids, lesion k as LESION_TISSUE_BASE + k) and the lesions' kind, diameter and
    centre."""
    tissue, inner, jittered = _paint_body(grid, rng, texture_rng)
    semi = np.array([grid.length_z, grid.semi_y, grid.semi_x])
    _paint_organs(tissue, inner, grid, rng, [
        (Tissue.LIVER, jittered(0.05, -0.10, -0.40), semi * [0.40, 0.65, 0.50]),
        (Tissue.SPLEEN, jittered(0.20, 0.30, 0.62), semi * [0.22, 0.30, 0.18]),
        (Tissue.KIDNEY, jittered(-0.15, 0.50, -0.50), semi * [0.25, 0.22, 0.15]),
        (Tissue.KIDNEY, jittered(-0.15, 0.50, 0.50), semi * [0.25, 0.22, 0.15]),
    ])
    aorta_radius = rng.uniform(0.09, 0.11) * grid.semi_x
    tissue[grid.cylinder_z(jittered(0, 0.30, 0.15), aorta_radius, aorta_radius)] = Tissue.AORTA

    # Portal vein: trunk from below the liver to the hilum, then a right and a left branch into the liver.
    vein_radius = rng.uniform(0.06, 0.08) * grid.semi_x
    hilum = jittered(0.0, -0.02, -0.30)
    branches = [(np.stack([jittered(-0.40, 0.05, 0.02), jittered(-0.20, 0.02, -0.15), hilum,
                           jittered(0.12, 0.05, -0.55)]), np.linspace(1.0, 0.6, CURVE_SAMPLES)),
                (np.stack([hilum, jittered(0.05, -0.15, -0.25), jittered(0.10, -0.28, -0.15),
                           jittered(0.15, -0.35, -0.05)]), np.linspace(0.8, 0.5, CURVE_SAMPLES))]
    for control, taper in branches:
        dist, nearest = grid.nearest_on_curve(_sample_curve(control), vein_radius)
        tissue[_tube(dist, nearest, vein_radius * taper)] = Tissue.PORTAL_VEIN

    # Lesions inside the liver, at least their radius + 2 mm from its border and from each other.
    liver = tissue == Tissue.LIVER
    inside_mm = ndimage.distance_transform_edt(liver, sampling=grid.spacing)
    n_lesions = int(lesion_rng.integers(1, MAX_LESIONS + 1))
    lesions: list[dict] = []
    for index in range(n_lesions):
        kind = str(lesion_rng.choice(LESION_KINDS, p=LESION_KIND_SHARES))
        diameter = float(lesion_rng.uniform(*LESION_DIAMETER_MM))
        allowed = inside_mm >= diameter / 2 + 2.0
        for other in lesions:
            other_dist = np.sqrt((grid.z - other["centre_mm_zyx"][0]) ** 2 + (grid.y - other["centre_mm_zyx"][1]) ** 2
                                 + (grid.x - other["centre_mm_zyx"][2]) ** 2)
            allowed &= other_dist >= 1.5 * (diameter + other["diameter_mm"]) / 2 + 2.0
        candidates = np.flatnonzero(allowed)
        if len(candidates) == 0:
            if lesions:  # no room for another lesion
                break
            candidates = np.array([int(np.argmax(inside_mm))])
            diameter = min(diameter, 2 * float(inside_mm.max()))
        voxel = np.unravel_index(int(lesion_rng.choice(candidates)), grid.shape)
        centre = np.array([axis[i] for axis, i in zip(grid.axes_mm, voxel)])
        mask = _irregular_mass(grid, centre, diameter, lesion_rng, texture_rng) & liver
        tissue[mask] = LESION_TISSUE_BASE + index
        lesions.append({"kind": kind, "diameter_mm": diameter, "centre_mm_zyx": centre.tolist()})
    return tissue, lesions


def _liver_hu(rng: np.random.Generator, lesions: Sequence[dict]) -> dict[str, np.ndarray]:
    """HU per tissue id (Tissue values, then the lesions) for every phase of KNOWN_PHASES; each lesion's
    ``contrast_hu`` (phase -> lesion - liver) is added to its record."""
    n_ids = LESION_TISSUE_BASE + MAX_LESIONS
    hu = {phase: np.zeros(n_ids, dtype=np.float32) for phase in KNOWN_PHASES}
    for tissue, (low, high) in UNENHANCED_HU.items():
        value = rng.uniform(low, high)
        for phase in KNOWN_PHASES:
            hu[phase][tissue] = value
    for tissue, ranges in TISSUE_HU.items():
        for phase, (low, high) in zip(KNOWN_PHASES, ranges):
            hu[phase][tissue] = rng.uniform(low, high)
    for index, lesion in enumerate(lesions):
        lesion["contrast_hu"] = {phase: float(rng.uniform(low, high))
                                 for phase, (low, high) in zip(KNOWN_PHASES, LESION_CONTRAST_HU[lesion["kind"]])}
        for phase in KNOWN_PHASES:
            hu[phase][LESION_TISSUE_BASE + index] = hu[phase][Tissue.LIVER] + lesion["contrast_hu"][phase]
    return hu


def _tissue_to_label() -> np.ndarray:
    """Label of every tissue id of the preset (index = tissue id)."""
    table = np.zeros(LESION_TISSUE_BASE + MAX_LESIONS, dtype=np.uint8)
    table[Tissue.LIVER] = LIVER_LABELS["liver"]
    table[Tissue.PORTAL_VEIN] = LIVER_LABELS["portal vein"]
    table[Tissue.AORTA] = LIVER_LABELS["aorta"]
    table[LESION_TISSUE_BASE:] = LIVER_LABELS["lesion"]
    return table


def generate_liver_case(seed: int, case_index: int, shape_zyx: tuple[int, int, int] = (48, 96, 96),
                        spacing_zyx: tuple[float, float, float] = (2.5, 1.5, 1.5), phases: Sequence[str] = PHASES,
                        reference_phase: str | None = None) -> PhantomCase:
    """One liver case (arguments as :func:`nnunet_hpn.phantom.generate_phantom_case`); its streams depend only on
    (seed, case_index) and, for the deformation and noise of a phase, the phase's name, so a phase looks the same
    in every phase list."""
    phases = tuple(phases)
    reference_phase = check_phases(phases, reference_phase, f"liver phantom case {case_index}")
    case_seed = np.random.SeedSequence([seed, case_index, _LIVER_STREAM_KEY])
    anatomy_rng, texture_rng, contrast_rng, lesion_rng, *phase_seeds = case_seed.spawn(4 + len(KNOWN_PHASES))
    anatomy_rng, texture_rng, contrast_rng, lesion_rng = (np.random.default_rng(stream) for stream in
                                                          (anatomy_rng, texture_rng, contrast_rng, lesion_rng))
    grid = _Grid(tuple(int(n) for n in shape_zyx), np.asarray(spacing_zyx, dtype=float))
    tissue, lesions = _paint_liver(grid, anatomy_rng, texture_rng, lesion_rng)
    hu = _liver_hu(contrast_rng, lesions)
    noise_sigma = {phase: float(contrast_rng.uniform(*NOISE_SIGMA_HU)) for phase in KNOWN_PHASES}
    texture = _parenchyma_texture(grid, texture_rng)
    textured = (Tissue.LIVER, *range(LESION_TISSUE_BASE, LESION_TISSUE_BASE + MAX_LESIONS))

    images, tissues, deformation_max = {}, {}, {}
    for phase in phases:
        deformation_rng, noise_rng = (np.random.default_rng(stream)
                                      for stream in phase_seeds[KNOWN_PHASES.index(phase)].spawn(2))
        phase_tissue, phase_texture = tissue, texture
        if phase != reference_phase:
            phase_tissue, phase_texture, displacement_mm, _ = _warp(tissue, texture, grid, deformation_rng)
            deformation_max[phase] = float(np.linalg.norm(displacement_mm, axis=0).max())
        noise = noise_rng.standard_normal(grid.shape, dtype=np.float32)
        images[phase] = _render(hu[phase], phase_tissue, phase_texture, textured, noise_sigma[phase], noise)
        tissues[phase] = phase_tissue

    for lesion in lesions:
        lesion["contrast_hu"] = {phase: lesion["contrast_hu"][phase] for phase in phases}
        lesion["conspicuous_in"] = [phase for phase in phases if abs(lesion["contrast_hu"][phase]) >= CONSPICUOUS_HU]
    to_label = _tissue_to_label()
    metadata = {"seed": seed, "case_index": case_index, "preset": "liver", "reference_phase": reference_phase,
                "lesions": lesions, "liver_hu": {phase: float(hu[phase][Tissue.LIVER]) for phase in phases},
                "noise_sigma_hu": {phase: noise_sigma[phase] for phase in phases},
                "deformation_max_mm": max(deformation_max.values(), default=0.0)}
    return PhantomCase(images=images, label=to_label[tissue],
                       labels={phase: to_label[tissues[phase]] for phase in phases}, tissue=tissue,
                       tissues=tissues, metadata=metadata, reference_phase=reference_phase)


def write_liver_cases(out_dir: Path, n_cases: int, seed: int = 0, shape_zyx: tuple[int, int, int] = (48, 96, 96),
                      spacing_zyx: tuple[float, float, float] = (2.5, 1.5, 1.5), progress: bool = True,
                      phases: Sequence[str] = PHASES, reference_phase: str | None = None,
                      crop_margin_mm: float | None = None) -> list[str]:
    """:func:`nnunet_hpn.phantom.write_phantom_cases` with liver cases, and ``out_dir/labels.json``
    (:func:`liver_labels_file`) for ``convert --labels``; returns the case ids."""
    case_ids = write_phantom_cases(out_dir, n_cases, seed, shape_zyx, spacing_zyx, progress, phases,
                                   reference_phase, crop_margin_mm, generate=generate_liver_case)
    (Path(out_dir) / "labels.json").write_text(json.dumps(liver_labels_file(), indent=2) + "\n")
    return case_ids
