"""Two-stage whole-scan inference: the locator dataset, the locator's box, box jitter in stage-2 training, and
``predict --locator`` pasting stage 2's labels back into the full scan."""
import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import TINY_CONFIGURATION, run_stock
from nnunet_hpn.augment.box_jitter import BoxJitterTransform, insert_box_jitter
from nnunet_hpn.cli import main
from nnunet_hpn.errors import HPNInputError
from nnunet_hpn.nnunet.model_folder import ModelFolder
from nnunet_hpn.pipeline.locator import (LOCATOR_LABELS, Locator, LocatorWarning, largest_component, locator_box,
                                         pancreas_label_values, write_locator_dataset)
from nnunet_hpn.pipeline.predict import HPNPredictor, align_case

SPACING = (2.0, 1.0, 1.0)  # z, y, x of the patch (mm)


# ------------------------------------------------------------------------------------------------ box jitter


def _patch(foreground: tuple[slice, ...]) -> dict:
    image = torch.randn(2, 24, 40, 40) + 5.0  # never exactly 0 before the transform
    segmentation = torch.zeros(1, 24, 40, 40)
    segmentation[(0, *foreground)] = 2
    return {"image": image, "segmentation": segmentation}


def test_box_jitter_blanks_outside_a_box_within_margin_plus_minus_jitter_and_never_the_foreground() -> None:
    foreground = (slice(8, 14), slice(15, 22), slice(10, 30))
    transform = BoxJitterTransform(margin_mm=6.0, jitter_mm=4.0, spacing=SPACING)
    for seed in range(20):
        np.random.seed(seed)
        sample = _patch(foreground)
        image, segmentation = sample["image"].clone(), sample["segmentation"].clone()
        out = transform(**sample)
        assert torch.equal(out["segmentation"], segmentation)  # labels untouched
        kept = (out["image"] != 0).all(dim=0)
        assert torch.equal(out["image"][:, kept], image[:, kept])  # inside the box: unchanged
        assert kept[foreground].all()  # the foreground is never blanked
        inside = torch.nonzero(kept)
        low, high = inside.min(dim=0).values.tolist(), inside.max(dim=0).values.tolist()
        assert int(kept.sum()) == int(np.prod(np.asarray(high) - low + 1))  # what is kept is one box
        for axis, (part, spacing, n) in enumerate(zip(foreground, SPACING, kept.shape)):
            for gap_mm, at_border in (((part.start - low[axis]) * spacing, low[axis] == 0),
                                      ((high[axis] - part.stop + 1) * spacing, high[axis] == n - 1)):
                assert gap_mm <= 6.0 + 4.0 + 1e-6  # margin + jitter
                assert at_border or gap_mm >= 6.0 - 4.0 - spacing - 1e-6  # margin - jitter, less a voxel's rounding


def test_box_jitter_leaves_background_patches_alone_and_checks_settings() -> None:
    sample = _patch((slice(0, 0), slice(0, 0), slice(0, 0)))
    image = sample["image"].clone()
    assert torch.equal(BoxJitterTransform(6.0, 4.0, SPACING)(**sample)["image"], image)
    with pytest.raises(ValueError, match="jitter_mm <= margin_mm"):
        BoxJitterTransform(3.0, 4.0, SPACING)
    with pytest.raises(TypeError):
        insert_box_jitter([], 6.0, 4.0, SPACING)


@pytest.mark.parametrize("name", ["HPNTrainer_stage2", "HPNTrainer_stage2_virtual", "HPNTrainer"])
def test_only_stage2_training_pipelines_jitter_the_box(planned_dataset, monkeypatch, name: str) -> None:
    import nnunet_hpn.nnunet.trainers as trainers

    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(key, planned_dataset["env"][key])
    dataset_json = json.loads((planned_dataset["raw"] / "dataset.json").read_text())
    plans = dict(copy.deepcopy(planned_dataset["plans"]), continue_training=False)
    trainer = getattr(trainers, name)(plans=plans, configuration=TINY_CONFIGURATION, fold=0,
                                      dataset_json=dataset_json, device=torch.device("cpu"))
    training = trainer.get_training_transforms(trainer.configuration_manager.patch_size, ((0, 0),) * 3, None,
                                               (0, 1, 2), False)
    steps = [step for step in training.transforms if isinstance(step, BoxJitterTransform)]
    assert len(steps) == (0 if name == "HPNTrainer" else 1)
    if steps:
        assert steps[0].spacing == tuple(trainer.configuration_manager.spacing)
        assert (steps[0].margin_mm, steps[0].jitter_mm) == (20.0, 10.0)
    validation = trainer.get_validation_transforms(None)
    assert not any(isinstance(step, BoxJitterTransform) for step in validation.transforms)


# ------------------------------------------------------------------------------------------------ locator


def test_pancreas_labels_of_a_locator_model() -> None:
    assert pancreas_label_values({"labels": LOCATOR_LABELS}, "m") == (1,)
    assert pancreas_label_values({"labels": {"background": 0, "pancreas": 1, "PDAC": 2, "duct": 3}}, "m") == (1, 2, 3)
    assert pancreas_label_values({"labels": {"background": 0, "liver": 1, "Pancreas": 7}}, "m") == (7,)
    with pytest.raises(HPNInputError, match=r"^m/dataset.json: labels \{background=0, liver=1\} have no 'pancreas'"):
        pancreas_label_values({"labels": {"background": 0, "liver": 1}}, "m/dataset.json")
    with pytest.raises(HPNInputError, match="region-based labels"):
        pancreas_label_values({"labels": {"background": 0, "pancreas": [1, 2]}}, "m")


def test_locator_box_is_the_largest_component_plus_margin() -> None:
    reference = sitk.Image(40, 30, 20, sitk.sitkInt16)
    reference.SetSpacing((1.0, 1.5, 2.5))
    mask = np.zeros((20, 30, 40), dtype=bool)
    mask[8:12, 10:16, 5:25] = True  # pancreas
    mask[1, 1, 38] = True  # a stray voxel elsewhere
    component, count = largest_component(mask)
    assert count == 2 and component.sum() == 4 * 6 * 20 and not component[1, 1, 38]
    box, record = locator_box(mask, reference, margin_mm=5.0)
    # margin 5 mm: 5 voxels in x, 4 in y (1.5 mm), 2 in z (2.5 mm); clipped at the image border
    assert box.start_xyz == (0, 6, 6) and box.size_xyz == (30, 14, 8)
    assert record["components"] == 2 and record["box"]["start_xyz"] == [0, 6, 6]
    assert record["component_volume_ml"] == pytest.approx(480 * 3.75 / 1000)


def test_locator_dataset_has_one_label_and_the_reference_phase(planned_dataset, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    source = Path(shutil.copytree(planned_dataset["raw"], raw / planned_dataset["raw"].name))
    target = write_locator_dataset(source, 995, progress=False)
    assert target == raw / f"Dataset995_{source.name.split('_', 1)[1]}Locator"
    meta = json.loads((target / "dataset.json").read_text())
    assert meta["labels"] == LOCATOR_LABELS and meta["channel_names"] == {"0": "arterial"}
    cases = sorted(path.name for path in (source / "labelsTr").iterdir())
    assert sorted(path.name for path in (target / "labelsTr").iterdir()) == cases
    for name in cases:
        case = name[:-len(".nii.gz")]
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(source / "labelsTr" / name)))
        assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(target / "labelsTr" / name))), label > 0)
        assert (target / "imagesTr" / f"{case}_0000.nii.gz").read_bytes() == \
            (source / "imagesTr" / f"{case}_0000.nii.gz").read_bytes()
        assert not (target / "imagesTr" / f"{case}_0001.nii.gz").exists()
    both = write_locator_dataset(source, 996, all_phases=True, progress=False)
    assert json.loads((both / "dataset.json").read_text())["channel_names"] == {"0": "arterial", "1": "venous"}
    with pytest.raises(HPNInputError, match="dataset id 995 already exists"):
        write_locator_dataset(source, 995, progress=False)
    # the stock planner reads it
    env = dict(planned_dataset["env"], nnUNet_raw=str(raw), nnUNet_preprocessed=str(tmp_path / "preprocessed"))
    (tmp_path / "preprocessed").mkdir()
    run_stock(["nnUNetv2_extract_fingerprint", "-d", "995", "--verify_dataset_integrity", "-np", "1"], env)
    assert (tmp_path / "preprocessed" / target.name / "dataset_fingerprint.json").is_file()


# ------------------------------------------------------------------------------------------------ predict


class MaskLocator(Locator):
    """A locator whose pancreas mask is given: what stage 2 does with a known box."""

    def __init__(self, mask: np.ndarray, channel_names=("arterial",)) -> None:
        self.model_dir, self.channel_names, self.label_values = Path("given-mask"), list(channel_names), (1,)
        self.mask = mask

    def pancreas_mask(self, phases, reference):
        self.check_phases(list(phases), reference)
        return self.mask


def _held_out_case(planned_dataset):
    from nnunet_hpn.io.images import read_image

    folder = planned_dataset["root"] / "phantoms" / planned_dataset["test_cases"][0]
    phases = {phase: read_image(folder / f"{phase}.nii.gz") for phase in ("arterial", "venous")}
    return align_case(phases, ["arterial", "venous"], "none", progress=False)


def test_stage2_labels_are_pasted_back_at_their_physical_positions(planned_dataset, predict_model) -> None:
    case = _held_out_case(planned_dataset)
    reference = case.phases["arterial"]
    mask = np.zeros(sitk.GetArrayViewFromImage(reference).shape, dtype=bool)
    mask[8:14, 14:26, 16:30] = True
    predictor = HPNPredictor(predict_model, progress=False, disable_tta=True, locator=MaskLocator(mask),
                             locator_margin_mm=3.0)
    result = predictor.predict_aligned(case)
    box, _ = locator_box(mask, reference, 3.0)
    on_crop = predictor.predict_on_grid(case.cropped(box)).label  # HPN on the crop alone

    full = result.label
    assert full.GetSize() == reference.GetSize() and full.GetOrigin() == reference.GetOrigin()
    assert full.GetSpacing() == reference.GetSpacing() and full.GetDirection() == reference.GetDirection()
    rng = np.random.default_rng(0)
    for index in rng.integers(0, on_crop.GetSize(), size=(50, 3)):
        index = tuple(int(i) for i in index)
        point = on_crop.TransformIndexToPhysicalPoint(index)
        full_index = full.TransformPhysicalPointToIndex(point)
        assert full_index == tuple(i + s for i, s in zip(index, box.start_xyz))
        assert full[full_index] == on_crop[index]
    voxels = sitk.GetArrayFromImage(full)
    (x0, y0, z0), (nx, ny, nz) = box.start_xyz, box.size_xyz
    assert np.array_equal(voxels[z0:z0 + nz, y0:y0 + ny, x0:x0 + nx], sitk.GetArrayFromImage(on_crop))
    voxels[z0:z0 + nz, y0:y0 + ny, x0:x0 + nx] = 0
    assert not voxels.any()  # nothing outside the box
    assert result.locator["box"]["start_xyz"] == list(box.start_xyz) and result.locator["components"] == 1
    assert result.locator["seconds"] >= 0 and result.locator["stage2_seconds"] > 0


def test_an_empty_locator_mask_falls_back_to_the_whole_scan_or_fails_with_strict(planned_dataset,
                                                                                 predict_model) -> None:
    case = _held_out_case(planned_dataset)
    empty = np.zeros(sitk.GetArrayViewFromImage(case.phases["arterial"]).shape, dtype=bool)
    predictor = HPNPredictor(predict_model, progress=False, disable_tta=True, locator=MaskLocator(empty))
    with pytest.warns(LocatorWarning, match="found no pancreas; segmenting the whole scan instead"):
        result = predictor.predict_aligned(case)
    whole = predictor.predict_on_grid(case).label
    assert np.array_equal(sitk.GetArrayFromImage(result.label), sitk.GetArrayFromImage(whole))
    assert result.locator["fallback"] == "whole scan" and result.locator["mask_volume_ml"] == 0.0
    strict = HPNPredictor(predict_model, progress=False, disable_tta=True, locator=MaskLocator(empty), strict=True)
    with pytest.raises(HPNInputError, match="found no pancreas .--strict"):
        strict.predict_aligned(case)


def test_a_locator_whose_channels_are_not_phases_is_refused(planned_dataset, predict_model) -> None:
    with pytest.raises(HPNInputError, match=r"the locator's channels \(T1, T2\) are not phases"):
        HPNPredictor(predict_model, progress=False, locator=MaskLocator(np.zeros(1), ("T1", "T2")))


def test_predict_with_a_locator_model_writes_the_arterial_geometry_and_the_qc(planned_dataset, predict_model,
                                                                              tmp_path: Path, capsys) -> None:
    from test_predict import _unaligned_case

    arterial, venous = _unaligned_case(planned_dataset, planned_dataset["test_cases"][1], tmp_path / "case")
    out, qc = tmp_path / "pred" / "case.nii.gz", tmp_path / "pred" / "case.json"
    # the HPN model itself outputs a pancreas mask (HPN's label set): a valid locator
    assert main(["predict", "--arterial", str(arterial), "--venous", str(venous), "-m", str(predict_model),
                 "--locator", str(predict_model), "-o", str(out), "--disable-tta", "--qc", str(qc)]) == 0
    label, reference = sitk.ReadImage(str(out)), sitk.ReadImage(str(arterial))
    assert label.GetSize() == reference.GetSize() and label.GetOrigin() == reference.GetOrigin()
    assert label.GetSpacing() == reference.GetSpacing() and label.GetDirection() == reference.GetDirection()
    record = json.loads(qc.read_text())["locator"]
    assert record["model"] == str(predict_model) and record["seconds"] > 0
    assert ("box" in record) != ("fallback" in record)  # a box, or the documented fallback
    if "fallback" in record:
        assert "found no pancreas" in capsys.readouterr().err


def test_a_locator_with_another_label_set_is_refused_in_one_line(planned_dataset, predict_model,
                                                                 tmp_path: Path, capsys) -> None:
    from test_predict import _unaligned_case

    liver = Path(shutil.copytree(predict_model, tmp_path / "liver_model"))
    meta = json.loads((liver / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "liver": 1}
    (liver / "dataset.json").write_text(json.dumps(meta))
    arterial, venous = _unaligned_case(planned_dataset, planned_dataset["test_cases"][1], tmp_path / "case")
    out = tmp_path / "pred" / "case.nii.gz"
    assert main(["predict", "--arterial", str(arterial), "--venous", str(venous), "-m", str(predict_model),
                 "--locator", str(liver), "-o", str(out)]) != 0
    error = capsys.readouterr().err.strip().splitlines()
    assert error == [f"nnunet-hpn predict: error: {liver / 'dataset.json'}: labels {{background=0, liver=1}} have no 'pancreas' label; "
                     f"a locator must output a pancreas mask (e.g. a model trained on 'nnunet-hpn "
                     f"locator-dataset')"]
    assert not out.exists()
    assert ModelFolder(liver).channel_names == ["arterial", "venous"]  # the copy is an otherwise valid model folder
