"""The label scheme (nnunet_hpn.labels) and ``convert --labels``: a four-label liver scheme, a six-label
PANORAMA-like pancreas scheme and a region-based scheme; the paper's scheme as the preset."""
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_hpn.cli import main
from nnunet_hpn.errors import HPNInputError
from nnunet_hpn.labels import PDAC_SCHEME, LabelScheme, resolve_scheme
from nnunet_hpn.pipeline.convert import convert_cases

SIZE_ZYX = (6, 12, 10)
#: the paper's labels, written out: the preset is checked against them
LABELS = {"background": 0, "pancreas": 1, "PDAC": 2, "duct": 3}

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
    assert scheme == LabelScheme.build(
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


# ---------------------------------------------------------------- every command on any scheme

def _write_maps(folder: Path, maps: dict, spacing=(1.0, 1.0, 2.0)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for case, array in maps.items():
        image = sitk.GetImageFromArray(np.asarray(array, dtype=np.uint8))
        image.SetSpacing(spacing)
        sitk.WriteImage(image, str(folder / f"{case}.nii.gz"))


def _dataset_json(folder: Path, spec: dict, reference_phase: str = "arterial") -> Path:
    """A dataset.json of ``spec`` (a --labels file) as convert writes it."""
    scheme = LabelScheme.build(spec.get("labels", spec), spec.get("regions_class_order"), spec.get("targets"),
                               spec.get("lesion"), spec.get("union_precedence"), reference_phase)
    path = folder / "dataset.json"
    path.write_text(json.dumps({"channel_names": {"0": "arterial", "1": "venous"}, "file_ending": ".nii.gz",
                                **scheme.dataset_json_fields()}))
    return path


def _random_maps(values, seed: int, n: int = 3) -> dict:
    rng = np.random.default_rng(seed)
    maps = {}
    for i in range(n):
        array = np.zeros(SIZE_ZYX, dtype=np.uint8)
        for value in values:  # one blob per label, some missing in some cases
            if rng.random() < 0.8:
                z, y, x = rng.integers(0, 4), rng.integers(0, 8), rng.integers(0, 6)
                array[z:z + 2, y:y + 4, x:x + 4] = value
        maps[f"case_{i}"] = array
    return maps


@pytest.mark.parametrize("spec", [LIVER, PANORAMA], ids=["liver", "panorama"])
def test_evaluate_scores_the_schemes_targets_as_nnunet_does(tmp_path, spec):
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    scheme = LabelScheme.build(spec.get("labels", spec), None, spec.get("targets"), spec.get("lesion"),
                               spec.get("union_precedence"))
    values = [v for v in scheme.values if v]
    truth, pred = tmp_path / "labelsTr", tmp_path / "pred"
    _write_maps(truth, _random_maps(values, 1))
    _write_maps(pred, _random_maps(values, 2))
    _dataset_json(tmp_path, spec)  # beside labelsTr, as in a raw dataset
    summary = tmp_path / "summary.json"
    assert main(["evaluate", str(truth), str(pred), "-o", str(summary)]) == 0
    ours = json.loads(summary.read_text())
    assert list(ours["mean"]) == list(scheme.targets)
    nnunet = compute_metrics_on_folder(str(truth), str(pred), None, SimpleITKIO(), ".nii.gz",
                                       [*scheme.nnunet_regions_or_labels.values(), *scheme.target_values.values()],
                                       num_processes=1)
    for entry in nnunet["metric_per_case"]:
        case = Path(entry["prediction_file"]).name[:-len(".nii.gz")]
        for name, target in scheme.target_values.items():
            theirs = entry["metrics"][target]["Dice"]
            assert ours["per_case"][case][name] == (1.0 if np.isnan(theirs) else pytest.approx(theirs, abs=1e-12))
    # the same dataset.json given with -djfile from elsewhere: the same numbers
    moved = tmp_path / "elsewhere.json"
    moved.write_text((tmp_path / "dataset.json").read_text())
    (tmp_path / "dataset.json").unlink()
    again = tmp_path / "again.json"
    assert main(["evaluate", str(truth), str(pred), "-o", str(again), "-djfile", str(moved)]) == 0
    assert json.loads(again.read_text())["mean"] == ours["mean"]
    # without any dataset.json the paper's scheme refuses the other labels, one line
    assert main(["evaluate", str(truth), str(pred)]) == 1


def test_report_union_split_and_figures_on_the_panorama_scheme(tmp_path, capsys):
    from nnunet_hpn.evaluate.figures import colour_legend, label_colours
    from nnunet_hpn.nnunet.splits import write_crossval_splits

    scheme = LabelScheme.build(PANORAMA)
    values = [v for v in scheme.values if v]
    truth = tmp_path / "labelsTr"
    _write_maps(truth, _random_maps(values, 3, n=4))
    _dataset_json(tmp_path, PANORAMA)
    folders = {}
    for name, seed in (("arterial", 4), ("venous", 5), ("hpn", 6), ("hpn_virtual", 7)):
        folders[name] = tmp_path / name
        _write_maps(folders[name], _random_maps(values, seed, n=4))
    # union by precedence (defaults: last listed first): where both say foreground, the higher one wins
    union = tmp_path / "union"
    assert main(["union", "-i", str(folders["hpn"]), str(folders["hpn_virtual"]), "-o", str(union),
                 "-djfile", str(tmp_path / "dataset.json")]) == 0
    a, b, u = (sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "case_0.nii.gz")))
               for folder in (folders["hpn"], folders["hpn_virtual"], union))
    assert np.array_equal(u > 0, (a > 0) | (b > 0))
    both = (a > 0) & (b > 0)
    assert np.array_equal(u[both], np.maximum(a, b)[both])  # "common bile duct" (6) first ... "PDAC" (1) last
    report = tmp_path / "report"
    assert main(["report", f"arterial={folders['arterial']}", f"venous={folders['venous']}", f"union={union}",
                 "--gt", str(truth), "-o", str(report)]) == 0
    text = (report / "report.md").read_text()
    assert "| Method | PDAC mass | veins | arteries | pancreas | pancreatic duct | common bile duct |" in text
    assert "Cases with PDAC in the truth" in text and "Targets (label values): PDAC mass = 1, veins = 2" in text
    assert "PDAC missed by both arterial and venous" in capsys.readouterr().out
    # one colour per label, a legend of the names
    colours = label_colours(scheme)
    assert [name for name, _ in colours.values()] == scheme.foreground
    assert len({colour for _, colour in colours.values()}) == 6
    assert colour_legend(scheme)["PDAC"] == "yellow"
    # split stratified on the lesion target (PDAC = 1 here)
    preprocessed = tmp_path / "preprocessed" / "Dataset001_X"
    splits = write_crossval_splits(preprocessed, n_folds=2, labels_dir=truth, scheme=scheme)
    positive = {case for case in ("case_0", "case_1", "case_2", "case_3")
                if (sitk.GetArrayFromImage(sitk.ReadImage(str(truth / f"{case}.nii.gz"))) == 1).any()}
    assert [len(set(split["val"]) & positive) for split in splits] in (
        [len(positive) // 2, len(positive) - len(positive) // 2], [len(positive) - len(positive) // 2,
                                                                   len(positive) // 2])


def test_union_of_regions_is_per_region_painted_in_order():
    from nnunet_hpn.pipeline.union import union_label_maps

    scheme = LabelScheme.build(REGIONS["labels"], REGIONS["regions_class_order"])
    original = np.array([0, 1, 2, 1, 0])
    virtual = np.array([1, 2, 1, 0, 0])
    union = union_label_maps(original, virtual, scheme)
    assert union.tolist() == [1, 2, 2, 1, 0]  # organ where either has organ; lesion (painted last) where either has it
    with pytest.raises(ValueError, match=r"unexpected labels \[5\]"):
        union_label_maps(np.array([5]), np.array([0]), scheme)


def test_the_reference_phase_is_stored_and_read_back():
    from nnunet_hpn.labels import dataset_reference_phase

    dataset_json = {"channel_names": {"0": "arterial", "1": "venous"}, "labels": dict(LABELS)}
    assert dataset_reference_phase(dataset_json) == "arterial"  # converted before the key: the rule
    dataset_json["hpn"] = {"reference_phase": "venous"}
    assert dataset_reference_phase(dataset_json) == "venous"
    assert dataset_reference_phase(dataset_json, "arterial") == "arterial"  # asked for explicitly
    dataset_json["hpn"] = {"reference_phase": "delayed"}
    with pytest.raises(HPNInputError, match="reference phase 'delayed' is not one of the phases"):
        dataset_reference_phase(dataset_json)


def test_locator_dataset_of_a_liver_dataset_marks_every_foreground_label(tmp_path):
    from nnunet_hpn.pipeline.locator import pancreas_label_values, write_locator_dataset

    in_dir, raw = tmp_path / "cases", tmp_path / "raw"
    raw.mkdir()
    for case in ("case_a", "case_b"):
        _write_case(in_dir, case, _label([1, 2, 3, 4]))
    labels_file = tmp_path / "labels.json"
    labels_file.write_text(json.dumps(LIVER))
    source = convert_cases(in_dir, 11, "Liver", raw_root=raw, progress=False, labels=labels_file,
                           reference_phase="venous")
    target = write_locator_dataset(source, 12, progress=False)
    meta = json.loads((target / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "foreground": 1} and meta["channel_names"] == {"0": "venous"}
    assert pancreas_label_values(meta, "locator") == (1,)  # a locator dataset: its one label, whatever its name
    with pytest.raises(HPNInputError, match="no 'pancreas' label"):  # any other liver model is no locator
        pancreas_label_values(json.loads((source / "dataset.json").read_text()), "liver model")
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(target / "labelsTr" / "case_a.nii.gz")))
    assert np.array_equal(mask, (_label([1, 2, 3, 4]) > 0).astype(np.uint8))
    lesion_only = write_locator_dataset(source, 13, progress=False, target="lesion")
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(lesion_only / "labelsTr" / "case_a.nii.gz")))
    assert np.array_equal(mask, (_label([1, 2, 3, 4]) == 2).astype(np.uint8))
