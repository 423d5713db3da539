"""Tests of the liver preset of the phantom: the lesions' phase behaviour measured on the generated volumes,
determinism, the labels file, and that the pancreas default is untouched."""
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_hpn.cli import main as cli_main
from nnunet_hpn.phantom import KNOWN_PHASES, PhantomCase, Tissue
from nnunet_hpn.phantom_liver import (CONSPICUOUS_HU, LESION_KINDS, LESION_TISSUE_BASE, LIVER_LABELS,
                                      generate_liver_case)

SMALL_SHAPE = (32, 64, 64)
SPACING = (2.5, 1.5, 1.5)
N_CASES = 8
#: lesions with fewer voxels are left out of the HU measurements (their mean carries too much texture and noise)
MIN_LESION_VOXELS = 150


@pytest.fixture(scope="module")
def cases() -> list[PhantomCase]:
    return [generate_liver_case(0, index, SMALL_SHAPE, SPACING) for index in range(N_CASES)]


def _lesion_minus_liver(case: PhantomCase, phase: str, index: int) -> tuple[float, int]:
    """Measured mean HU of lesion ``index`` minus that of the liver parenchyma in ``phase`` (its own space), and
    the lesion's voxel count."""
    lesion = case.tissues[phase] == LESION_TISSUE_BASE + index
    liver = case.tissues[phase] == Tissue.LIVER
    return float(case.images[phase][lesion].mean() - case.images[phase][liver].mean()), int(lesion.sum())


def test_labels_and_every_structure_present(cases: list[PhantomCase]) -> None:
    for case in cases:
        assert set(np.unique(case.label)) == set(LIVER_LABELS.values())
        assert case.reference_phase == "arterial" and np.array_equal(case.labels["arterial"], case.label)
        assert set(np.unique(case.labels["venous"])) == set(LIVER_LABELS.values())
        assert 1 <= len(case.metadata["lesions"])


def test_lesions_enhance_arterial_and_wash_out_venous_by_kind(cases: list[PhantomCase]) -> None:
    """Measured on the images: arterial hyperenhancement where the kind has it, washout in the venous phase where
    it has it, iso (not conspicuous) otherwise; and the recorded ``conspicuous_in`` says the same."""
    measured_kinds = set()
    for case in cases:
        for index, lesion in enumerate(case.metadata["lesions"]):
            arterial, size = _lesion_minus_liver(case, "arterial", index)
            venous, _ = _lesion_minus_liver(case, "venous", index)
            expected = {"enhancing and washout": ["arterial", "venous"], "arterial only": ["arterial"],
                        "washout only": ["venous"]}[lesion["kind"]]
            assert lesion["conspicuous_in"] == expected
            if size < MIN_LESION_VOXELS:
                continue
            measured_kinds.add(lesion["kind"])
            assert (arterial >= 20) == ("arterial" in expected), (case.metadata["case_index"], lesion, arterial)
            assert (venous <= -10) == ("venous" in expected), (case.metadata["case_index"], lesion, venous)
            if "arterial" not in expected:
                assert abs(arterial) < 7
            if "venous" not in expected:
                assert abs(venous) < 7
    assert measured_kinds == set(LESION_KINDS)  # lesions seen in one phase only exist, of both kinds


def test_hu_ranges_of_vessels_and_liver(cases: list[PhantomCase]) -> None:
    """The aorta outshines the portal vein in the arterial phase only; the liver is brighter portal-venous."""
    for case in cases:
        mean = {(phase, tissue): float(case.images[phase][case.tissues[phase] == tissue].mean())
                for phase in case.phases for tissue in (Tissue.AORTA, Tissue.PORTAL_VEIN, Tissue.LIVER)}
        assert mean["arterial", Tissue.AORTA] > mean["arterial", Tissue.PORTAL_VEIN] + 80
        assert mean["venous", Tissue.AORTA] < mean["venous", Tissue.PORTAL_VEIN] + 30
        assert 60 < mean["arterial", Tissue.LIVER] < 95 and 95 < mean["venous", Tissue.LIVER] < 140


def test_extra_phases_follow_the_model() -> None:
    case = generate_liver_case(0, 1, SMALL_SHAPE, SPACING, phases=KNOWN_PHASES)
    assert case.reference_phase == "arterial"
    for index, lesion in enumerate(case.metadata["lesions"]):
        contrast, size = _lesion_minus_liver(case, "noncontrast", index)
        assert lesion["contrast_hu"]["noncontrast"] < 0 and "noncontrast" not in lesion["conspicuous_in"]
        if size >= MIN_LESION_VOXELS:
            assert abs(contrast - lesion["contrast_hu"]["noncontrast"]) < 7
        assert ("delayed" in lesion["conspicuous_in"]) == (lesion["kind"] != "arterial only")
        assert abs(lesion["contrast_hu"]["delayed"]) >= CONSPICUOUS_HU or lesion["kind"] == "arterial only"
    # the arterial and venous phases look the same in every phase list
    two = generate_liver_case(0, 1, SMALL_SHAPE, SPACING)
    assert np.array_equal(two.images["venous"], case.images["venous"])


def test_same_seed_is_identical_other_seeds_differ() -> None:
    first, again = (generate_liver_case(7, 2, SMALL_SHAPE, SPACING) for _ in range(2))
    for phase in first.phases:
        assert np.array_equal(first.images[phase], again.images[phase])
        assert np.array_equal(first.labels[phase], again.labels[phase])
    assert first.metadata == again.metadata
    other = generate_liver_case(8, 2, SMALL_SHAPE, SPACING)
    assert not np.array_equal(first.images["arterial"], other.images["arterial"])


def test_cli_writes_cases_and_labels_file(tmp_path: Path, capsys) -> None:
    out = tmp_path / "liver"
    assert cli_main(["phantom", str(out), "--cases", "2", "--seed", "3", "--preset", "liver"]) == 0
    assert "labels.json" in capsys.readouterr().out
    labels = json.loads((out / "labels.json").read_text())
    assert labels["labels"] == LIVER_LABELS and labels["lesion"] == "lesion"
    assert labels["targets"]["liver (all)"] == ["liver", "lesion"]
    assert labels["union_precedence"][0] == "lesion"
    summary = json.loads((out / "phantoms.json").read_text())
    assert [case["preset"] for case in summary["cases"]] == ["liver", "liver"]
    case = generate_liver_case(3, 1)
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "hpn_001" / "venous.nii.gz")))
    assert np.array_equal(written, case.images["venous"])
    assert sorted(path.name for path in (out / "hpn_001").iterdir()) == [
        "arterial.nii.gz", "label.nii.gz", "label_venous.nii.gz", "venous.nii.gz"]


def test_pancreas_preset_is_the_default_and_writes_no_labels_file(tmp_path: Path) -> None:
    """The default preset's images are the pancreas generator's (its bytes are pinned in test_phantom.py)."""
    from nnunet_hpn.phantom import generate_phantom_case

    out = tmp_path / "pancreas"
    assert cli_main(["phantom", str(out), "--cases", "1", "--seed", "3"]) == 0
    assert not (out / "labels.json").exists()
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "hpn_000" / "arterial.nii.gz")))
    assert np.array_equal(written, generate_phantom_case(3, 0).images["arterial"])


def test_labels_file_is_a_valid_scheme(tmp_path: Path) -> None:
    """``labels.json`` as ``convert --labels`` reads it: the lesion target, the whole liver, lesion first in unions."""
    from nnunet_hpn.labels import LabelScheme
    from nnunet_hpn.phantom_liver import liver_labels_file

    path = tmp_path / "labels.json"
    path.write_text(json.dumps(liver_labels_file()))
    scheme = LabelScheme.from_labels_file(path)
    assert scheme.lesion == "lesion" and scheme.union_precedence[0] == "lesion"
    assert scheme.target_values["liver (all)"] == (1, 2) and scheme.target_values["lesion"] == (2,)
