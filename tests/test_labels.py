"""The label scheme (nnunet_hpn.labels) and ``convert --labels``: a four-label liver scheme, a six-label
PANORAMA-like pancreas scheme and a region-based scheme; the paper's scheme as the preset."""
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_hpn import LABELS
from nnunet_hpn.cli import main
from nnunet_hpn.errors import HPNInputError
from nnunet_hpn.labels import PDAC_SCHEME, LabelScheme, resolve_scheme
from nnunet_hpn.pipeline.convert import convert_cases

SIZE_ZYX = (6, 12, 10)

#: liver: a hypervascular lesion, portal vein and aorta beside the liver
LIVER = {"labels": {"background": 0, "liver": 1, "lesion": 2, "portal vein": 3, "aorta": 4},
         "targets": {"liver with lesion": ["liver", "lesion"], "lesion": ["lesion"], "portal vein": ["portal vein"],
                     "aorta": ["aorta"]},
         "lesion": "lesion", "union_precedence": ["lesion", "portal vein", "aorta", "liver"]}
#: PANORAMA-like pancreas annotation: six foreground labels, PDAC first
PANORAMA = {"background": 0, "PDAC": 1, "veins": 2, "arteries": 3, "pancreas": 4, "pancreatic duct": 5,
            "common bile duct": 6}
#: region-based (nested regions, as BraTS): organ = organ ∪ lesion, lesion
REGIONS = {"labels": {"background": 0, "organ": [1, 2], "lesion": [2]}, "regions_class_order": [1, 2],
           "lesion": "lesion"}


def _write_case(in_dir: Path, case: str, label: np.ndarray) -> None:
    case_dir = in_dir / case
    case_dir.mkdir(parents=True)
    rng = np.random.default_rng(len(case))
    for phase in ("arterial", "venous"):
        sitk.WriteImage(sitk.GetImageFromArray(rng.normal(40, 30, SIZE_ZYX).astype(np.int16)),
                        str(case_dir / f"{phase}.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(label.astype(np.uint8)), str(case_dir / "label.nii.gz"))


def _label(values) -> np.ndarray:
    label = np.zeros(SIZE_ZYX, dtype=np.uint8)
    for i, value in enumerate(values):
        label[1 + i % 4, 2:5, 1 + 2 * (i // 4):3 + 2 * (i // 4)] = value
    return label


def test_the_preset_is_the_papers_scheme_and_old_datasets_read_as_it():
    assert PDAC_SCHEME.labels == LABELS and PDAC_SCHEME.values == [0, 1, 2, 3]
    assert PDAC_SCHEME.target_values == {"abnormal pancreas": (1, 2, 3), "PDAC": (2,), "duct": (3,)}
    assert PDAC_SCHEME.lesion == "PDAC" and PDAC_SCHEME.lesion_values == (2,)
    assert PDAC_SCHEME.union_precedence == ("PDAC", "duct", "pancreas")
    # a dataset.json written before the "hpn" key: the paper's labels get the preset's facts
    assert LabelScheme.from_dataset_json({"labels": dict(LABELS)}) == PDAC_SCHEME
    assert resolve_scheme(None, ()) == PDAC_SCHEME


@pytest.mark.parametrize("spec, targets, lesion, values", [
    (LIVER, {"liver with lesion": (1, 2), "lesion": (2,), "portal vein": (3,), "aorta": (4,)}, (2,),
     [0, 1, 2, 3, 4]),
    (PANORAMA, {name: (value,) for name, value in PANORAMA.items() if value}, (1,), list(range(7))),
    (REGIONS, {"organ": (1, 2), "lesion": (2,)}, (2,), [0, 1, 2]),
], ids=["liver", "panorama", "regions"])
def test_schemes_from_a_labels_file(tmp_path, spec, targets, lesion, values):
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(spec))
    scheme = LabelScheme.from_labels_file(path)
    assert scheme.target_values == targets and scheme.lesion_values == lesion and scheme.values == values
    # what convert writes reads back as the same scheme
    assert LabelScheme.from_dataset_json(scheme.dataset_json_fields()) == scheme


def test_defaults_and_class_indices():
    panorama = LabelScheme.build(PANORAMA)
    assert panorama.lesion == "PDAC"  # the first target
    assert panorama.union_precedence == ("common bile duct", "pancreatic duct", "pancreas", "arteries", "veins",
                                         "PDAC")  # last listed first
    assert panorama.class_index("pancreas") == 4
    regions = LabelScheme.build(REGIONS["labels"], REGIONS["regions_class_order"])
    assert regions.has_regions and regions.class_index("lesion") == 1 and regions.union_precedence == ()
    assert regions.nnunet_regions_or_labels == {"organ": (1, 2), "lesion": (2,)}


@pytest.mark.parametrize("spec, message", [
    ({"background": 0, "a": 2}, "consecutive from 0"),
    ({"a": 1}, '"background": 0'),
    ({"background": 0, "a": [1, 2]}, "need 'regions_class_order'"),
    ({"labels": {"background": 0, "a": 1}, "targets": {"t": ["b"]}}, "target 't' names ['b']"),
    ({"labels": {"background": 0, "a": 1, "b": 2}, "union_precedence": ["a"]}, "every foreground label once"),
    ({"labels": {"background": 0, "a": 1}, "lesion": "x"}, "lesion 'x' is not one of the targets"),
    ({"labels": {"background": 0, "a": 1}, "colour": "red"}, "unknown key(s) ['colour']"),
])
def test_bad_labels_files_are_one_line_errors_naming_the_file(tmp_path, spec, message):
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(HPNInputError) as error:
        LabelScheme.from_labels_file(path)
    assert str(path) in str(error.value) and message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("spec, case_values", [
    (LIVER, [1, 2, 3, 4]), (PANORAMA, [1, 2, 3, 4, 5, 6]), (REGIONS, [1, 2])], ids=["liver", "panorama", "regions"])
def test_convert_with_labels_writes_the_scheme_into_dataset_json(tmp_path, spec, case_values):
    in_dir, raw = tmp_path / "cases", tmp_path / "raw"
    raw.mkdir()
    for case in ("case_a", "case_b"):
        _write_case(in_dir, case, _label(case_values))
    labels_file = tmp_path / "labels.json"
    labels_file.write_text(json.dumps(spec))
    assert main(["convert", str(in_dir), "-d", "7", "--name", "Own", "--raw-root", str(raw), "--labels",
                 str(labels_file), "--reference-phase", "venous"]) == 0
    dataset_json = json.loads((raw / "Dataset007_Own" / "dataset.json").read_text())
    labels = spec.get("labels", spec)
    assert dataset_json["labels"] == labels
    assert dataset_json.get("regions_class_order") == spec.get("regions_class_order")
    assert dataset_json["hpn"]["reference_phase"] == "venous"
    scheme = LabelScheme.read(raw / "Dataset007_Own" / "dataset.json")
    assert scheme == LabelScheme.from_labels_file(labels_file).__class__.build(
        labels, spec.get("regions_class_order"), spec.get("targets"), spec.get("lesion"),
        spec.get("union_precedence"), "venous")


def test_convert_refuses_values_outside_the_scheme_in_one_line_and_writes_nothing(tmp_path, capsys):
    in_dir, raw = tmp_path / "cases", tmp_path / "raw"
    raw.mkdir()
    _write_case(in_dir, "case_a", _label([1, 2]))
    _write_case(in_dir, "case_b", _label([1, 5, 9]))
    labels_file = tmp_path / "labels.json"
    labels_file.write_text(json.dumps(LIVER))
    assert main(["convert", str(in_dir), "-d", "7", "--name", "Own", "--raw-root", str(raw), "--labels",
                 str(labels_file)]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert errors == [f"nnunet-hpn convert: error: {in_dir / 'case_b' / 'label.nii.gz'}: label values {{5, 9}} "
                      f"outside [0, 1, 2, 3, 4]"]
    assert [path for path in raw.iterdir() if not path.name.startswith(".")] == []


def test_convert_without_labels_keeps_the_papers_dataset_json_labels(tmp_path):
    in_dir, raw = tmp_path / "cases", tmp_path / "raw"
    raw.mkdir()
    _write_case(in_dir, "case_a", _label([1, 2, 3]))
    convert_cases(in_dir, 8, "Pdac", raw_root=raw, progress=False)
    text = (raw / "Dataset008_Pdac" / "dataset.json").read_text()
    # byte for byte the labels block nnU-Net's generate_dataset_json wrote before the scheme existed
    assert '"labels": {\n        "background": 0,\n        "pancreas": 1,\n        "PDAC": 2,\n        "duct": 3\n    }' \
        in text
    dataset_json = json.loads(text)
    assert dataset_json["hpn"] == {"targets": {"abnormal pancreas": ["pancreas", "PDAC", "duct"], "PDAC": ["PDAC"],
                                               "duct": ["duct"]}, "lesion": "PDAC",
                                   "union_precedence": ["PDAC", "duct", "pancreas"], "reference_phase": "arterial"}
