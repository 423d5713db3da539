"""Tests of the synthetic dual-phase phantom generator."""
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_hpn import PHASES
from nnunet_hpn.errors import HPNInputError
from nnunet_hpn.phantom import PhantomCase, Tissue, generate_phantom_case, write_phantom_cases

SMALL_SHAPE = (24, 48, 48)
SPACING = (2.5, 1.5, 1.5)
CASE_FILES = ("arterial", "venous", "label", "label_venous")
N_CASES = 10


@pytest.fixture(scope="module")
def cases() -> list[PhantomCase]:
    return [generate_phantom_case(0, index, SMALL_SHAPE, SPACING) for index in range(N_CASES)]


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Case folders written with seed 3 (two cases and one case) and seed 4."""
    dirs = {}
    for key, seed, n_cases in (("seed3_n2", 3, 2), ("seed3_n1", 3, 1), ("seed4_n1", 4, 1)):
        dirs[key] = tmp_path_factory.mktemp(key)
        write_phantom_cases(dirs[key], n_cases, seed=seed, shape_zyx=SMALL_SHAPE, spacing_zyx=SPACING, progress=False)
    return dirs


def _read(path: Path) -> sitk.Image:
    return sitk.ReadImage(str(path))


def _mean_hu(case: PhantomCase, phase: str, which: Tissue) -> float:
    """Mean HU of one tissue in one phase, using the tissue map of that phase's space."""
    image, tissue = (case.arterial, case.tissue) if phase == "arterial" else (case.venous, case.tissue_venous)
    return float(image[tissue == which].mean())


def _mass_contrast(case: PhantomCase, phase: str) -> float:
    return _mean_hu(case, phase, Tissue.MASS) - _mean_hu(case, phase, Tissue.PANCREAS)


def test_writes_files_metadata_and_one_grid(written: dict[str, Path]) -> None:
    out_dir = written["seed3_n2"]
    assert sorted(p.name for p in out_dir.iterdir()) == ["hpn_000", "hpn_001", "phantoms.json"]
    for case_dir in (out_dir / "hpn_000", out_dir / "hpn_001"):
        images = {name: _read(case_dir / f"{name}.nii.gz") for name in CASE_FILES}
        reference = images["arterial"]
        assert reference.GetSize() == tuple(reversed(SMALL_SHAPE))
        assert np.allclose(reference.GetSpacing(), tuple(reversed(SPACING)))
        for image in images.values():
            assert image.GetSize() == reference.GetSize()
            assert image.GetSpacing() == reference.GetSpacing()
            assert image.GetOrigin() == reference.GetOrigin()
            assert image.GetDirection() == reference.GetDirection()
        assert images["label"].GetPixelID() == sitk.sitkUInt8
        assert images["label_venous"].GetPixelID() == sitk.sitkUInt8
    summary = json.loads((out_dir / "phantoms.json").read_text())
    assert summary["seed"] == 3
    assert [case["case_id"] for case in summary["cases"]] == ["hpn_000", "hpn_001"]
    for case in summary["cases"]:
        assert case["iso_phase"] in (None, *PHASES)
        assert case["mass_iso_attenuating"] == (case["iso_phase"] is not None)
        assert 1.0 < case["deformation_max_mm"] < 10.0


def test_same_seed_is_byte_identical_and_independent_of_n_cases(written: dict[str, Path]) -> None:
    for name in CASE_FILES:
        first = sitk.GetArrayFromImage(_read(written["seed3_n2"] / "hpn_000" / f"{name}.nii.gz"))
        again = sitk.GetArrayFromImage(_read(written["seed3_n1"] / "hpn_000" / f"{name}.nii.gz"))
        assert first.dtype == again.dtype
        assert first.tobytes() == again.tobytes()


def test_different_seeds_and_cases_differ(written: dict[str, Path]) -> None:
    for name in CASE_FILES:
        seed3 = sitk.GetArrayFromImage(_read(written["seed3_n2"] / "hpn_000" / f"{name}.nii.gz"))
        seed4 = sitk.GetArrayFromImage(_read(written["seed4_n1"] / "hpn_000" / f"{name}.nii.gz"))
        second_case = sitk.GetArrayFromImage(_read(written["seed3_n2"] / "hpn_001" / f"{name}.nii.gz"))
        assert not np.array_equal(seed3, seed4)
        assert not np.array_equal(seed3, second_case)


def test_every_case_has_all_labels_in_both_spaces(cases: list[PhantomCase]) -> None:
    for case in cases:
        for labels in (case.label, case.label_venous):
            assert labels.dtype == np.uint8
            assert set(np.unique(labels)) == {0, 1, 2, 3}


def test_phase_contrast_of_vessels_and_parenchyma(cases: list[PhantomCase]) -> None:
    for case in cases:
        assert _mean_hu(case, "arterial", Tissue.AORTA) > _mean_hu(case, "venous", Tissue.AORTA) + 50
        assert _mean_hu(case, "venous", Tissue.PORTAL_VEIN) > _mean_hu(case, "arterial", Tissue.PORTAL_VEIN) + 50
        assert _mean_hu(case, "arterial", Tissue.PANCREAS) > _mean_hu(case, "venous", Tissue.PANCREAS) + 5
        assert min(_mass_contrast(case, phase) for phase in PHASES) < -25


def test_label_follows_deformation_with_similar_volumes(cases: list[PhantomCase]) -> None:
    for case in cases:
        assert np.count_nonzero(case.label != case.label_venous) > 0
        arterial_volumes = np.bincount(case.label.ravel(), minlength=4)[1:]
        venous_volumes = np.bincount(case.label_venous.ravel(), minlength=4)[1:]
        assert np.all((venous_volumes > 0.6 * arterial_volumes) & (venous_volumes < 1.6 * arterial_volumes))
        assert case.arterial.dtype == case.venous.dtype == np.int16


def test_some_masses_are_iso_attenuating_in_one_phase_only(cases: list[PhantomCase]) -> None:
    iso_cases = [case for case in cases if case.metadata["mass_iso_attenuating"]]
    assert iso_cases, "expected at least one iso-attenuating mass among the cases"
    for case in iso_cases:
        iso_phase = case.metadata["iso_phase"]
        other_phase = next(phase for phase in PHASES if phase != iso_phase)
        assert abs(_mass_contrast(case, iso_phase)) < 10
        assert _mass_contrast(case, other_phase) < -25


def test_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(HPNInputError, match="n_cases"):
        write_phantom_cases(tmp_path, 0, progress=False)
    with pytest.raises(HPNInputError, match="shape_zyx"):
        write_phantom_cases(tmp_path, 1, shape_zyx=(8, 48, 48), progress=False)
