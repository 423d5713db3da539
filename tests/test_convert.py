"""Tests of the conversion of dual-phase case folders into an nnU-Net raw dataset."""
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_hpn.labels import PDAC_LABELS as LABELS
from nnunet_hpn.pipeline.convert import convert_cases
from nnunet_hpn.io.geometry import check_same_grid
from nnunet_hpn.errors import HPNInputError
from nnunet_hpn.phantom import write_phantom_cases

SIZE_ZYX = (6, 12, 10)
SPACING_XYZ = (0.8, 0.8, 2.0)
ORIGIN_XYZ = (-10.0, 5.0, 30.0)


def _image(array: np.ndarray, spacing=SPACING_XYZ, origin=ORIGIN_XYZ, direction=None) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    return image


def _write_case(in_dir: Path, case: str, with_label: bool = True, **venous_geometry) -> Path:
    """Write a tiny valid case; ``venous_geometry`` (spacing/origin/direction) overrides the venous header."""
    case_dir = in_dir / case
    case_dir.mkdir(parents=True)
    rng = np.random.default_rng(len(case))
    sitk.WriteImage(_image(rng.normal(40, 10, SIZE_ZYX).astype(np.int16)), str(case_dir / "arterial.nii.gz"))
    sitk.WriteImage(_image(rng.normal(40, 10, SIZE_ZYX).astype(np.int16), **venous_geometry),
                    str(case_dir / "venous.nii.gz"))
    if with_label:
        label = np.zeros(SIZE_ZYX, dtype=np.uint8)
        label[2:4, 3:8, 3:7] = 1
        label[3, 5, 5] = 2
        label[2, 4, 4] = 3
        sitk.WriteImage(_image(label), str(case_dir / "label.nii.gz"))
    return case_dir


@pytest.fixture()
def in_dir(tmp_path: Path) -> Path:
    """Two labelled cases (case_a, case_b)."""
    root = tmp_path / "cases"
    _write_case(root, "case_a")
    _write_case(root, "case_b")
    return root


@pytest.fixture()
def raw_root(tmp_path: Path) -> Path:
    root = tmp_path / "raw"
    root.mkdir()
    return root


def _assert_refused(in_dir: Path, raw_root: Path, bad_file: Path, *message_parts: str) -> None:
    """Conversion raises HPNInputError naming ``bad_file`` and leaves the raw root empty."""
    with pytest.raises(HPNInputError) as error:
        convert_cases(in_dir, 501, "Bad", raw_root=raw_root, progress=False)
    message = str(error.value)
    assert str(bad_file) in message
    assert "\n" not in message
    for part in message_parts:
        assert part in message
    assert list(raw_root.iterdir()) == []


def test_converts_phantoms_into_nnunet_layout(tmp_path: Path, raw_root: Path) -> None:
    in_dir = tmp_path / "phantoms"
    write_phantom_cases(in_dir, 3, seed=1, shape_zyx=(16, 32, 32), progress=False)
    (in_dir / "hpn_002" / "label.nii.gz").unlink()

    dataset_dir = convert_cases(in_dir, 7, "HPNPhantom", raw_root=raw_root, progress=False)

    assert dataset_dir == raw_root / "Dataset007_HPNPhantom"
    assert [p.name for p in raw_root.iterdir()] == ["Dataset007_HPNPhantom"]
    assert sorted(p.name for p in dataset_dir.iterdir()) == ["dataset.json", "imagesTr", "imagesTs", "labelsTr"]
    assert sorted(p.name for p in (dataset_dir / "imagesTr").iterdir()) == [
        "hpn_000_0000.nii.gz", "hpn_000_0001.nii.gz", "hpn_001_0000.nii.gz", "hpn_001_0001.nii.gz"]
    assert sorted(p.name for p in (dataset_dir / "labelsTr").iterdir()) == ["hpn_000.nii.gz", "hpn_001.nii.gz"]
    assert sorted(p.name for p in (dataset_dir / "imagesTs").iterdir()) == [
        "hpn_002_0000.nii.gz", "hpn_002_0001.nii.gz"]
    for source, converted in ((in_dir / "hpn_000" / "arterial.nii.gz", "imagesTr/hpn_000_0000.nii.gz"),
                              (in_dir / "hpn_000" / "venous.nii.gz", "imagesTr/hpn_000_0001.nii.gz"),
                              (in_dir / "hpn_001" / "label.nii.gz", "labelsTr/hpn_001.nii.gz")):
        expected, actual = sitk.ReadImage(str(source)), sitk.ReadImage(str(dataset_dir / converted))
        assert np.array_equal(sitk.GetArrayFromImage(actual), sitk.GetArrayFromImage(expected))
        assert actual.GetSpacing() == expected.GetSpacing()

    dataset_json = json.loads((dataset_dir / "dataset.json").read_text())
    assert dataset_json["channel_names"] == {"0": "arterial", "1": "venous"}
    assert dataset_json["labels"] == LABELS
    assert dataset_json["numTraining"] == 2
    assert dataset_json["file_ending"] == ".nii.gz"
    assert dataset_json["name"] == "HPNPhantom"
    assert dataset_json["description"]


def test_raw_root_defaults_to_environment(in_dir: Path, raw_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("nnUNet_raw", str(raw_root))
    assert convert_cases(in_dir, 12, "Env", progress=False) == raw_root / "Dataset012_Env"
    monkeypatch.delenv("nnUNet_raw")
    with pytest.raises(HPNInputError, match="nnUNet_raw"):
        convert_cases(in_dir, 13, "Env", progress=False)


@pytest.mark.parametrize("venous_geometry, what", [
    ({"spacing": (0.8, 0.8, 2.5)}, "spacing"),
    ({"origin": (-10.0, 5.0, 31.0)}, "origin"),
    ({"direction": (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)}, "direction"),
])
def test_refuses_venous_geometry_mismatch(in_dir: Path, raw_root: Path, venous_geometry: dict, what: str) -> None:
    bad_case = _write_case(in_dir, "case_c", **venous_geometry)
    _assert_refused(in_dir, raw_root, bad_case / "venous.nii.gz", what, str(bad_case / "arterial.nii.gz"))


def test_refuses_venous_size_mismatch(in_dir: Path, raw_root: Path) -> None:
    venous = in_dir / "case_b" / "venous.nii.gz"
    sitk.WriteImage(_image(np.zeros((6, 12, 11), dtype=np.int16)), str(venous))
    _assert_refused(in_dir, raw_root, venous, "size", "(11, 12, 6) vs (10, 12, 6)")


def test_geometry_within_tolerance_is_accepted(in_dir: Path, raw_root: Path) -> None:
    _write_case(in_dir, "case_c", origin=(-10.0, 5.0, 30.00001))
    assert convert_cases(in_dir, 14, "Tolerant", raw_root=raw_root, progress=False).is_dir()


def test_refuses_label_geometry_mismatch(in_dir: Path, raw_root: Path) -> None:
    label = in_dir / "case_b" / "label.nii.gz"
    sitk.WriteImage(_image(np.zeros(SIZE_ZYX, dtype=np.uint8), spacing=(1.0, 0.8, 2.0)), str(label))
    _assert_refused(in_dir, raw_root, label, "spacing")


def test_refuses_bad_label_values(in_dir: Path, raw_root: Path) -> None:
    label = in_dir / "case_b" / "label.nii.gz"
    values = np.zeros(SIZE_ZYX, dtype=np.uint8)
    values[1, 1, 1], values[2, 2, 2] = 5, 7
    sitk.WriteImage(_image(values), str(label))
    _assert_refused(in_dir, raw_root, label, "5, 7")


def test_refuses_a_nearly_integer_label_value_saying_what_it_is(in_dir: Path, raw_root: Path) -> None:
    label = in_dir / "case_b" / "label.nii.gz"
    values = np.zeros(SIZE_ZYX, dtype=np.float64)
    values[1, 1, 1] = 1.0000001
    sitk.WriteImage(_image(values), str(label))
    _assert_refused(in_dir, raw_root, label, "non-integer values (e.g. 1.0000001)")


def test_refuses_nan_voxels(in_dir: Path, raw_root: Path) -> None:
    venous = in_dir / "case_b" / "venous.nii.gz"
    values = np.zeros(SIZE_ZYX, dtype=np.float32)
    values[0, 0, 0] = np.nan
    values[0, 0, 1] = np.inf
    sitk.WriteImage(_image(values), str(venous))
    _assert_refused(in_dir, raw_root, venous, "NaN/Inf")


def test_refuses_missing_phase(in_dir: Path, raw_root: Path) -> None:
    venous = in_dir / "case_b" / "venous.nii.gz"
    venous.unlink()
    _assert_refused(in_dir, raw_root, venous, "missing")


def test_refuses_4d_image(in_dir: Path, raw_root: Path) -> None:
    arterial = in_dir / "case_a" / "arterial.nii.gz"
    frame = sitk.ReadImage(str(arterial))
    sitk.WriteImage(sitk.JoinSeries([frame, frame]), str(arterial))
    _assert_refused(in_dir, raw_root, arterial, "4D")


def test_refuses_garbage_file(in_dir: Path, raw_root: Path) -> None:
    garbage = in_dir / "case_a" / "arterial.nii.gz"
    garbage.write_bytes(b"this is not a NIfTI file")
    _assert_refused(in_dir, raw_root, garbage, "corrupt")


@pytest.mark.parametrize("damage", ["truncated", "checksum"])
def test_refuses_damaged_gzip_data(in_dir: Path, raw_root: Path, damage: str) -> None:
    venous = in_dir / "case_b" / "venous.nii.gz"
    content = bytearray(venous.read_bytes())
    if damage == "truncated":  # SimpleITK would silently zero-fill the missing voxels
        content = content[: int(len(content) * 0.85)]
    else:
        content[-6] ^= 0xFF  # inside the gzip CRC32 trailer
    venous.write_bytes(bytes(content))
    _assert_refused(in_dir, raw_root, venous, "corrupt")


def test_refuses_uncompressed_file_named_gz(in_dir: Path, raw_root: Path) -> None:
    arterial = in_dir / "case_a" / "arterial.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(arterial)), str(in_dir / "plain.nii"))
    os.replace(in_dir / "plain.nii", arterial)
    _assert_refused(in_dir, raw_root, arterial, "not gzip-compressed")


def test_refuses_empty_input(tmp_path: Path, raw_root: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "phantoms.json").write_text("{}")
    with pytest.raises(HPNInputError, match="no case"):
        convert_cases(empty, 501, "Empty", raw_root=raw_root, progress=False)
    assert list(raw_root.iterdir()) == []


def test_existing_dataset_id_needs_overwrite(in_dir: Path, raw_root: Path) -> None:
    old = raw_root / "Dataset042_Old"
    old.mkdir()
    (old / "marker.txt").write_text("old")
    with pytest.raises(HPNInputError, match="already exists"):
        convert_cases(in_dir, 42, "New", raw_root=raw_root, progress=False)
    assert (old / "marker.txt").exists()

    dataset_dir = convert_cases(in_dir, 42, "New", raw_root=raw_root, overwrite=True, progress=False)
    assert [p.name for p in raw_root.iterdir()] == ["Dataset042_New"]
    assert len(list((dataset_dir / "imagesTr").iterdir())) == 4

    dataset_dir = convert_cases(in_dir, 42, "New", raw_root=raw_root, overwrite=True, progress=False)
    assert [p.name for p in raw_root.iterdir()] == ["Dataset042_New"]
    assert json.loads((dataset_dir / "dataset.json").read_text())["numTraining"] == 2


def test_failed_overwrite_keeps_existing_dataset(in_dir: Path, raw_root: Path) -> None:
    existing = convert_cases(in_dir, 43, "Kept", raw_root=raw_root, progress=False)
    label = in_dir / "case_b" / "label.nii.gz"
    sitk.WriteImage(_image(np.full(SIZE_ZYX, 9, dtype=np.uint8)), str(label))
    with pytest.raises(HPNInputError, match="label values"):
        convert_cases(in_dir, 43, "Kept", raw_root=raw_root, overwrite=True, progress=False)
    assert [p.name for p in raw_root.iterdir()] == ["Dataset043_Kept"]
    assert len(list((existing / "labelsTr").iterdir())) == 2


def test_check_same_grid_on_images() -> None:
    image = _image(np.zeros(SIZE_ZYX, dtype=np.int16))
    check_same_grid(image, "a.nii.gz", _image(np.ones(SIZE_ZYX, dtype=np.uint8)), "b.nii.gz")
    shifted = _image(np.zeros(SIZE_ZYX, dtype=np.int16), origin=(0.0, 0.0, 0.0))
    with pytest.raises(HPNInputError, match=r"^b\.nii\.gz: origin differs from a\.nii\.gz"):
        check_same_grid(image, "a.nii.gz", shifted, "b.nii.gz")


# ------------------------------------------------------------------ K phases, reference phase, registration


def _add_phase(case_dir: Path, phase: str, **geometry) -> Path:
    path = case_dir / f"{phase}.nii.gz"
    values = np.random.default_rng(len(phase)).normal(40, 10, SIZE_ZYX).astype(np.int16)
    sitk.WriteImage(_image(values, **geometry), str(path))
    return path


def test_k_phases_become_channels_in_the_given_order(in_dir: Path, raw_root: Path) -> None:
    phases = ("noncontrast", "arterial", "venous", "delayed")
    for case in ("case_a", "case_b"):
        _add_phase(in_dir / case, "noncontrast")
        _add_phase(in_dir / case, "delayed")

    dataset_dir = convert_cases(in_dir, 21, "FourPhase", raw_root=raw_root, progress=False, phases=phases)

    dataset_json = json.loads((dataset_dir / "dataset.json").read_text())
    assert dataset_json["channel_names"] == {str(i): phase for i, phase in enumerate(phases)}
    assert sorted(p.name for p in (dataset_dir / "imagesTr").iterdir() if p.name.startswith("case_a")) == [
        f"case_a_{channel:04d}.nii.gz" for channel in range(4)]
    for channel, phase in enumerate(phases):
        expected = sitk.GetArrayFromImage(sitk.ReadImage(str(in_dir / "case_b" / f"{phase}.nii.gz")))
        actual = sitk.GetArrayFromImage(sitk.ReadImage(str(dataset_dir / "imagesTr" / f"case_b_{channel:04d}.nii.gz")))
        assert np.array_equal(actual, expected)
    assert not (dataset_dir / "registration_qc").exists()


def test_grids_are_checked_against_the_reference_phase(in_dir: Path, raw_root: Path) -> None:
    phases = ("noncontrast", "arterial", "venous")
    bad = _add_phase(in_dir / "case_a", "noncontrast", spacing=(0.8, 0.8, 2.5))
    _add_phase(in_dir / "case_b", "noncontrast")
    with pytest.raises(HPNInputError) as error:
        convert_cases(in_dir, 22, "Ref", raw_root=raw_root, progress=False, phases=phases)
    assert str(error.value).startswith(f"{bad}: spacing differs from {in_dir / 'case_a' / 'arterial.nii.gz'}")
    assert list(raw_root.iterdir()) == []


@pytest.mark.parametrize("phases, reference, message", [
    (("arterial", "venous"), "delayed", "reference phase 'delayed' is not one of the phases"),
    (("arterial", "arterial"), None, "repeat"),
    (("arterial", "label"), None, "phase name 'label'"),
    ((), None, "at least one phase"),
])
def test_refuses_bad_phase_arguments(in_dir: Path, raw_root: Path, phases, reference, message: str) -> None:
    with pytest.raises(HPNInputError, match=message):
        convert_cases(in_dir, 23, "Bad", raw_root=raw_root, progress=False, phases=phases, reference_phase=reference)
    assert list(raw_root.iterdir()) == []


def test_missing_extra_phase_is_named(in_dir: Path, raw_root: Path) -> None:
    _add_phase(in_dir / "case_a", "delayed")
    missing = in_dir / "case_b" / "delayed.nii.gz"
    with pytest.raises(HPNInputError, match="missing") as error:
        convert_cases(in_dir, 24, "Missing", raw_root=raw_root, progress=False,
                      phases=("arterial", "venous", "delayed"))
    assert str(error.value).startswith(str(missing))


@pytest.fixture()
def unaligned_phantoms(tmp_path: Path) -> Path:
    """Three phantom cases (the last unlabelled) whose venous phase (and label_venous) sits on another grid: the
    phantom's own deformation plus a known smooth field, a 3 mm shift and a 2° rotation."""
    from hpn_experiments.misalignment import misaligned_copy

    in_dir = tmp_path / "unaligned"
    cases = write_phantom_cases(in_dir, 3, seed=5, shape_zyx=(24, 48, 48), progress=False)
    for index, case in enumerate(cases):
        venous_path, label_path = in_dir / case / "venous.nii.gz", in_dir / case / "label_venous.nii.gz"
        moving, moving_label, _ = misaligned_copy(sitk.ReadImage(str(venous_path)), sitk.ReadImage(str(label_path)),
                                                  seed=index, max_deformation_mm=3.0)
        sitk.WriteImage(moving, str(venous_path), useCompression=True)
        sitk.WriteImage(moving_label, str(label_path), useCompression=True)
    (in_dir / cases[-1] / "label.nii.gz").unlink()
    return in_dir


def test_register_option_aligns_phases_and_keeps_qc(unaligned_phantoms: Path, raw_root: Path) -> None:
    from nnunet_hpn.cli import main

    venous = unaligned_phantoms / "hpn_000" / "venous.nii.gz"
    _assert_refused(unaligned_phantoms, raw_root, venous, "differs from")

    assert main(["convert", str(unaligned_phantoms), "--dataset-id", "31", "--name", "Registered",
                 "--raw-root", str(raw_root), "--register"]) == 0

    dataset_dir = raw_root / "Dataset031_Registered"
    for folder, case in (("imagesTr", "hpn_000"), ("imagesTr", "hpn_001"), ("imagesTs", "hpn_002")):
        arterial = sitk.ReadImage(str(unaligned_phantoms / case / "arterial.nii.gz"))
        registered = sitk.ReadImage(str(dataset_dir / folder / f"{case}_0001.nii.gz"))
        check_same_grid(arterial, "arterial", registered, "registered venous")
        copied = sitk.ReadImage(str(dataset_dir / folder / f"{case}_0000.nii.gz"))
        assert np.array_equal(sitk.GetArrayFromImage(copied), sitk.GetArrayFromImage(arterial))
    assert sorted(p.name for p in (dataset_dir / "registration_qc").iterdir()) == [
        "hpn_000.json", "hpn_001.json", "hpn_002.json", "summary.json"]
    qc = json.loads((dataset_dir / "registration_qc" / "hpn_000.json").read_text())
    assert qc["reference_phase"] == "arterial" and list(qc["phases"]) == ["venous"]
    venous_qc = qc["phases"]["venous"]
    before = venous_qc["pancreas"]["before"]["mean_surface_distance_mm"]
    after = venous_qc["pancreas"]["after"]["mean_surface_distance_mm"]
    assert before > 0 and after >= 0 and venous_qc["moving"] == str(unaligned_phantoms / "hpn_000" / "venous.nii.gz")
    if after > before:  # these phantoms are tiny; accuracy is tested in test_registration.py. Worse is never silent:
        assert any("got worse" in warning for warning in venous_qc["warnings"])
    assert "pancreas" not in json.loads((dataset_dir / "registration_qc" / "hpn_002.json").read_text())["phases"][
        "venous"]  # no label.nii.gz: nothing to compare the warped label_venous with
    summary = json.loads((dataset_dir / "registration_qc" / "summary.json").read_text())
    assert [row["case"] for row in summary["cases"]] == ["hpn_000", "hpn_001", "hpn_002"]
    venous_summary = summary["per_phase"]["venous"]
    assert venous_summary["msd_after_mm"]["n"] == 2 and venous_summary["seconds"]["n"] == 3
    assert venous_summary["msd_before_mm"]["mean"] == pytest.approx(np.mean(
        [row["msd_before_mm"] for row in summary["cases"] if row["msd_before_mm"] is not None]), abs=1e-4)
    dataset_json = json.loads((dataset_dir / "dataset.json").read_text())
    assert dataset_json["channel_names"] == {"0": "arterial", "1": "venous"}
    assert "registered" in dataset_json["description"]


def test_register_in_worker_processes_matches_one_process_and_warns_once_per_warning(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``convert --register -np 2`` writes what ``-np 1`` writes (images, QC) and shows every registration warning
    as exactly one ``warning:`` line, with the workers' warnings passed to the main process."""
    from nnunet_hpn.cli import main

    cases = tmp_path / "cases"
    write_phantom_cases(cases, 3, seed=5, crop_margin_mm=20.0, progress=False)
    for name in ("venous", "label_venous"):  # half off the arterial box: a warning
        image = sitk.ReadImage(str(cases / "hpn_001" / f"{name}.nii.gz"))
        extent_x = image.GetSize()[0] * image.GetSpacing()[0]
        image.SetOrigin((image.GetOrigin()[0] + 0.6 * extent_x, *image.GetOrigin()[1:]))
        sitk.WriteImage(image, str(cases / "hpn_001" / f"{name}.nii.gz"))
    outputs = {}
    for n in ("1", "2"):
        root = tmp_path / f"raw_np{n}"
        root.mkdir()
        assert main(["convert", str(cases), "-d", "41", "--name", "Workers", "--raw-root", str(root), "--register",
                     "-np", n]) == 0
        error = capsys.readouterr().err
        dataset = root / "Dataset041_Workers"
        qc = {path.name: json.loads(path.read_text()) for path in (dataset / "registration_qc").glob("hpn_*.json")}
        n_warnings = sum(len(phase["warnings"]) for record in qc.values() for phase in record["phases"].values())
        warning_lines = [line for line in re.split(r"[\r\n]", error) if line.startswith("warning:")]
        assert n_warnings >= 1 and any("hpn_001" in line for line in warning_lines), error
        assert len(warning_lines) == n_warnings and "RegistrationWarning" not in error
        images = {path.name: sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
                  for path in sorted((dataset / "imagesTr").glob("*.nii.gz"))}
        outputs[n] = (images, {name: record["phases"]["venous"]["similarity"] for name, record in qc.items()})
    assert outputs["1"][0].keys() == outputs["2"][0].keys() and len(outputs["1"][0]) == 6
    # the same images and QC, voxel for voxel, the half-off pair hpn_001 included (registration is reproducible
    # whatever the number of processes and threads: test_registration)
    for name, image in outputs["1"][0].items():
        assert np.array_equal(image, outputs["2"][0][name]), name
    assert outputs["1"][1] == outputs["2"][1]
