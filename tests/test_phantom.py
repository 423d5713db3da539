"""Tests of the synthetic phantom generator: the dual-phase default (frozen for the CPU Table 1) and K phases."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_hpn import PHASES
from nnunet_hpn.cli import main as cli_main
from nnunet_hpn.errors import HPNInputError
from nnunet_hpn.phantom import (KNOWN_PHASES, SUBTLE_CONTRAST_HU, SUBTLE_IN_BOTH_SHARE, TEXTURE_SD_HU, PhantomCase,
                                Tissue, generate_phantom_case, write_phantom_cases)

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
    return float(case.images[phase][case.tissues[phase] == which].mean())


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
        for labels in (case.label, case.labels["venous"]):
            assert labels.dtype == np.uint8
            assert set(np.unique(labels)) == {0, 1, 2, 3}


def test_phase_contrast_of_vessels_and_parenchyma(cases: list[PhantomCase]) -> None:
    for case in cases:
        assert _mean_hu(case, "arterial", Tissue.AORTA) > _mean_hu(case, "venous", Tissue.AORTA) + 50
        assert _mean_hu(case, "venous", Tissue.PORTAL_VEIN) > _mean_hu(case, "arterial", Tissue.PORTAL_VEIN) + 50
        assert _mean_hu(case, "arterial", Tissue.PANCREAS) > _mean_hu(case, "venous", Tissue.PANCREAS) + 5
        if not case.metadata["mass_subtle_in_both"]:
            assert min(_mass_contrast(case, phase) for phase in PHASES) < -25


def test_label_follows_deformation_with_similar_volumes(cases: list[PhantomCase]) -> None:
    for case in cases:
        assert np.count_nonzero(case.label != case.labels["venous"]) > 0
        arterial_volumes = np.bincount(case.label.ravel(), minlength=4)[1:]
        venous_volumes = np.bincount(case.labels["venous"].ravel(), minlength=4)[1:]
        assert np.all((venous_volumes > 0.6 * arterial_volumes) & (venous_volumes < 1.6 * arterial_volumes))
        assert case.images["arterial"].dtype == case.images["venous"].dtype == np.int16


def test_some_masses_are_iso_attenuating_in_one_phase_only(cases: list[PhantomCase]) -> None:
    iso_cases = [case for case in cases if case.metadata["mass_iso_attenuating"]]
    assert iso_cases, "expected at least one iso-attenuating mass among the cases"
    for case in iso_cases:
        iso_phase = case.metadata["iso_phase"]
        other_phase = next(phase for phase in PHASES if phase != iso_phase)
        assert abs(_mass_contrast(case, iso_phase)) < 10
        assert _mass_contrast(case, other_phase) < -25


def test_a_share_of_masses_is_subtle_in_each_phase_and_clear_in_the_pair() -> None:
    # the CPU Table 1's phantoms: seed 8, 24 cases (the flag is the case's first draw, independent of the grid)
    subtle = [generate_phantom_case(8, index, SMALL_SHAPE, SPACING) for index in range(24)]
    subtle = [case for case in subtle if case.metadata["mass_subtle_in_both"]]
    assert len(subtle) == 8 and 0.25 <= len(subtle) / 24 <= 0.35 and SUBTLE_IN_BOTH_SHARE == 0.3
    for case in subtle:
        meta = case.metadata
        offsets = {phase: meta["mass_hu"][phase] - meta["parenchyma_hu"][phase] for phase in PHASES}
        # below the parenchymal texture in each phase, hypo in arterial, hyper in venous
        assert -SUBTLE_CONTRAST_HU[1] <= offsets["arterial"] <= -SUBTLE_CONTRAST_HU[0]
        assert SUBTLE_CONTRAST_HU[0] <= offsets["venous"] <= SUBTLE_CONTRAST_HU[1] <= TEXTURE_SD_HU
        # the texture is the same in both phases, so the difference of the phases shows the mass
        assert _mass_contrast(case, "arterial") - _mass_contrast(case, "venous") < -12
        # no giveaway: no duct dilation, no iso-attenuating phase
        assert meta["duct_radius_dilated_mm"] == meta["duct_radius_mm"] and meta["iso_phase"] is None


def test_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(HPNInputError, match="n_cases"):
        write_phantom_cases(tmp_path, 0, progress=False)
    with pytest.raises(HPNInputError, match="shape_zyx"):
        write_phantom_cases(tmp_path, 1, shape_zyx=(8, 48, 48), progress=False)


# ---------------------------------------------------------------- K phases

#: sha256 (first 16 hex digits) of generate_phantom_case(3, 0, SMALL_SHAPE, SPACING): the generator behind the
#: CPU Table 1 (docs/RESULTS.md), frozen before its first training. A change here invalidates that table.
TWO_PHASE_SHA256 = {"arterial": "2a2ae8f9bb2b2379", "venous": "81a8be0826823a6d", "label": "f432fd1c9f4c414f",
                    "label_venous": "bcdb68db29545795"}


@pytest.fixture(scope="module")
def four_phase_cases() -> list[PhantomCase]:
    return [generate_phantom_case(0, index, SMALL_SHAPE, SPACING, phases=KNOWN_PHASES, reference_phase="noncontrast")
            for index in range(6)]


def test_default_reference_is_arterial_among_k_phases() -> None:
    case = generate_phantom_case(0, 0, SMALL_SHAPE, SPACING, phases=KNOWN_PHASES)
    assert case.reference_phase == "arterial"  # as convert and predict assume (nnunet_hpn.phases.reference_phase)
    assert np.array_equal(case.labels["arterial"], case.label)
    no_arterial = generate_phantom_case(0, 0, SMALL_SHAPE, SPACING, phases=("venous", "delayed"))
    assert no_arterial.reference_phase == "venous"


def test_default_two_phase_output_is_unchanged() -> None:
    case = generate_phantom_case(3, 0, SMALL_SHAPE, SPACING)
    assert case.phases == PHASES and case.reference_phase == "arterial"
    for name, digest in TWO_PHASE_SHA256.items():
        array = {"arterial": case.images["arterial"], "venous": case.images["venous"], "label": case.label,
                 "label_venous": case.labels["venous"]}[name]
        assert hashlib.sha256(array.tobytes()).hexdigest()[:16] == digest, name


def test_four_phases_share_streams_with_the_default(four_phase_cases: list[PhantomCase]) -> None:
    for index, case in enumerate(four_phase_cases[:2]):
        two_phase = generate_phantom_case(0, index, SMALL_SHAPE, SPACING)
        assert case.reference_phase == "noncontrast"
        np.testing.assert_array_equal(case.label, two_phase.label)  # same anatomy in the reference space
        np.testing.assert_array_equal(case.images["venous"], two_phase.images["venous"])  # venous: the original streams
        np.testing.assert_array_equal(case.tissues["venous"], two_phase.tissues["venous"])
        three = generate_phantom_case(0, index, SMALL_SHAPE, SPACING, phases=("noncontrast", "venous", "delayed"),
                                      reference_phase="noncontrast")
        np.testing.assert_array_equal(three.images["delayed"], case.images["delayed"])  # keyed by phase name
        np.testing.assert_array_equal(three.images["noncontrast"], case.images["noncontrast"])


def test_every_phase_but_the_reference_is_deformed(four_phase_cases: list[PhantomCase]) -> None:
    for case in four_phase_cases:
        assert np.array_equal(case.labels["noncontrast"], case.label)
        warped = [case.labels[phase] for phase in ("arterial", "venous", "delayed")]
        for i, labels in enumerate(warped):
            assert np.count_nonzero(labels != case.label) > 0
            assert set(np.unique(labels)) == {0, 1, 2, 3}
            for other in warped[i + 1:]:
                assert not np.array_equal(labels, other)  # each phase has its own deformation
        assert set(case.metadata["deformation_per_phase"]) == {"arterial", "venous", "delayed"}


def test_phase_specific_enhancement(four_phase_cases: list[PhantomCase]) -> None:
    for case in four_phase_cases:
        hu = {phase: {tissue: _mean_hu(case, phase, tissue) for tissue in (Tissue.AORTA, Tissue.PORTAL_VEIN,
                                                                          Tissue.PANCREAS, Tissue.LIVER)}
              for phase in KNOWN_PHASES}
        # no contrast: vessels like soft tissue, parenchyma darkest of all phases
        assert hu["noncontrast"][Tissue.AORTA] < 70 and hu["noncontrast"][Tissue.PORTAL_VEIN] < 70
        assert hu["noncontrast"][Tissue.PANCREAS] == min(hu[phase][Tissue.PANCREAS] for phase in KNOWN_PHASES)
        # arterial: brightest aorta and pancreas; venous: brightest portal vein and liver
        assert hu["arterial"][Tissue.AORTA] == max(hu[phase][Tissue.AORTA] for phase in KNOWN_PHASES)
        assert hu["arterial"][Tissue.PANCREAS] == max(hu[phase][Tissue.PANCREAS] for phase in KNOWN_PHASES)
        assert hu["venous"][Tissue.PORTAL_VEIN] == max(hu[phase][Tissue.PORTAL_VEIN] for phase in KNOWN_PHASES)
        assert hu["venous"][Tissue.LIVER] == max(hu[phase][Tissue.LIVER] for phase in KNOWN_PHASES)
        # delayed: washout of the parenchyma, the mass nearly iso-attenuating
        assert hu["delayed"][Tissue.PANCREAS] < hu["venous"][Tissue.PANCREAS] - 5
        assert abs(_mass_contrast(case, "delayed")) < 25 and abs(_mass_contrast(case, "noncontrast")) < 20
        if not case.metadata["mass_subtle_in_both"]:
            assert min(_mass_contrast(case, phase) for phase in PHASES) < -25


def test_writes_k_phase_files_on_one_grid(tmp_path: Path) -> None:
    assert cli_main([
        "phantom", str(tmp_path), "--cases", "1", "--seed", "2", "--phases", "venous", "arterial", "delayed"]) == 0
    case_dir = tmp_path / "hpn_000"
    expected = {"venous", "arterial", "delayed", "label", "label_venous", "label_delayed"}
    assert {p.name.removesuffix(".nii.gz") for p in case_dir.iterdir()} == expected
    reference = _read(case_dir / "arterial.nii.gz")
    for path in case_dir.iterdir():
        image = _read(path)
        assert image.GetSize() == reference.GetSize() and image.GetOrigin() == reference.GetOrigin()
    summary = json.loads((tmp_path / "phantoms.json").read_text())
    assert summary["phases"] == ["venous", "arterial", "delayed"] and summary["reference_phase"] == "arterial"


def test_rejects_unknown_or_repeated_phases(tmp_path: Path, capsys) -> None:
    for phases in (("arterial", "portal"), ("venous", "venous"), ()):
        with pytest.raises(HPNInputError, match="phases must be distinct names"):
            write_phantom_cases(tmp_path, 1, phases=phases, progress=False)
    with pytest.raises(HPNInputError, match="reference phase 'delayed'"):
        write_phantom_cases(tmp_path, 1, phases=PHASES, reference_phase="delayed", progress=False)
    assert cli_main(["phantom", str(tmp_path / "x"), "--cases", "1", "--phases", "arterial", "portal"]) == 1
    assert "nnunet-hpn phantom: error:" in capsys.readouterr().err
