"""K phases end to end with the STOCK nnU-Net commands (3 and 4 phases: plan, a few CPU iterations, predict, one
phase missing), phase dropout, the missing-phase policy and the K-path planner."""
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from conftest import TINY_CONFIGURATION, nnunet_env, run_stock
from hpn_experiments.missing_phase import write_input_folder_with_missing_phases
from nnunet_hpn.labels import PDAC_LABELS as LABELS
from nnunet_hpn.pipeline.convert import convert_cases
from nnunet_hpn.errors import HPNInputError
from nnunet_hpn.pipeline.missing_phase import (
    MissingPhaseWarning,
    fill_missing_phases,
    missing_phase_message,
)
from nnunet_hpn.nnunet.normalization import HPNCTNormalization
from nnunet_hpn.phantom import write_phantom_cases
from nnunet_hpn.augment.phase_dropout import PhaseDropoutTransform, append_phase_dropout
from nnunet_hpn.nnunet.plans_tools import add_small_configuration

PATCH_SIZE = (16, 16, 16)
TRAINER = "HPNTrainer_phasedropout_cpu_smoke"
#: a few CPU iterations (HPN_* budget variables of every HPN trainer)
SHORT_BUDGET = {"HPN_NUM_EPOCHS": "1", "HPN_ITERATIONS_PER_EPOCH": "3", "HPN_VAL_ITERATIONS_PER_EPOCH": "1"}
#: training augments in the main process (spawned workers are covered by test_stock_cli; here they would only add
#: start-up time); not for planning, where nnU-Net sets torch's thread count to this number
NO_DA_WORKERS = {"nnUNet_n_proc_DA": "0"}
K_PHASE_RUNS = {
    3: {"phases": ("arterial", "venous", "delayed"), "dataset_id": 993, "planner": "HPNPlanner",
        "plans": "nnUNetHPNPlans", "n_connections": 18},
    4: {"phases": ("noncontrast", "arterial", "venous", "delayed"), "dataset_id": 994, "planner": "HPNStarPlanner",
        "plans": "nnUNetHPNStarPlans", "n_connections": 18},
}


# ---------------------------------------------------------------- K-phase datasets through the stock commands

@pytest.fixture(scope="module", params=sorted(K_PHASE_RUNS), ids=lambda k: f"K{k}")
def k_phase_model(request, tmp_path_factory) -> dict:
    """4 labelled + 1 unlabelled K-phase phantoms -> ``convert_cases(phases=...)`` -> plan and preprocess -> tiny
    configuration -> a few CPU iterations of phase-dropout HPN (fold 0: 3 training cases, 1 validation case) ->
    prediction of the unlabelled case with all phases and with one phase missing, in one sequential
    ``nnUNetv2_predict`` call."""
    k = request.param
    run = K_PHASE_RUNS[k]
    root = tmp_path_factory.mktemp(f"k{k}")
    env = dict(nnunet_env(root), **SHORT_BUDGET)
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        Path(env[key]).mkdir()
    phases = run["phases"]
    cases = write_phantom_cases(root / "phantoms", 5, seed=k, shape_zyx=(24, 48, 48), progress=False, phases=phases)
    name = f"Dataset{run['dataset_id']}_HPN{k}Phases"
    (root / "phantoms" / cases[-1] / "label.nii.gz").unlink()  # unlabelled: converted into imagesTs
    raw = convert_cases(root / "phantoms", run["dataset_id"], name.split("_", 1)[1],
                        raw_root=Path(env["nnUNet_raw"]), progress=False, phases=phases)
    assert raw.name == name
    dataset = str(run["dataset_id"])
    plan = run_stock(["nnUNetv2_plan_and_preprocess", "-d", dataset, "-pl", run["planner"], "-c", "3d_fullres",
                      "-np", "2", "-npfp", "2"], env)
    plans_file = Path(env["nnUNet_preprocessed"]) / name / f"{run['plans']}.json"
    add_small_configuration(plans_file, TINY_CONFIGURATION, patch_size=(16, 32, 32), base_features=4, max_features=16)
    # fold 0 = 3 training cases, 1 validation case (nnU-Net's own 5-fold split needs 5 cases)
    (plans_file.parent / "splits_final.json").write_text(json.dumps([{"train": cases[:3], "val": cases[3:4]}]))
    train = run_stock(["nnUNetv2_train", dataset, TINY_CONFIGURATION, "0", "-tr", TRAINER, "-p", run["plans"],
                       "-device", "cpu"], dict(env, **NO_DA_WORKERS))

    test_case = cases[-1]
    inputs = root / "predict_inputs"
    inputs.mkdir()
    for path in (raw / "imagesTs").iterdir():
        (inputs / path.name.replace(test_case, f"{test_case}_all")).symlink_to(path)
    missing_dir = root / "venous_missing"
    with pytest.warns(MissingPhaseWarning, match="venous missing"):
        write_input_folder_with_missing_phases(raw / "imagesTs", missing_dir, list(phases), ["venous"],
                                               progress=False)
    for path in missing_dir.iterdir():
        (inputs / path.name.replace(test_case, f"{test_case}_novenous")).symlink_to(path)
    out = root / "predictions"
    run_stock(["nnUNetv2_predict", "-i", str(inputs), "-o", str(out), "-d", dataset, "-c", TINY_CONFIGURATION,
               "-tr", TRAINER, "-p", run["plans"], "-f", "0", "-device", "cpu", "-npp", "0", "-nps", "0"], env)
    return {"k": k, "run": run, "env": env, "raw": raw, "plans": json.loads(plans_file.read_text()),
            "plan_output": plan.stdout, "train_output": train.stdout, "test_case": test_case, "out": out,
            "missing_dir": missing_dir,
            "model_dir": Path(env["nnUNet_results"]) / name / f"{TRAINER}__{run['plans']}__{TINY_CONFIGURATION}"}


def test_plans_have_one_path_per_phase_and_the_pattern(k_phase_model):
    run, plans = k_phase_model["run"], k_phase_model["plans"]
    k = k_phase_model["k"]
    arch = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    assert arch["path_channels"] == list(range(k))
    assert len(arch["hyper_connections"]) == run["n_connections"]
    assert plans["hpn_phases"] == list(run["phases"])
    assert plans["configurations"]["3d_fullres"]["normalization_schemes"] == ["HPNCTNormalization"] * k
    if run["planner"] == "HPNStarPlanner":  # every connection touches the reference path: arterial's, not channel 0
        hub = run["phases"].index("arterial")
        assert hub != 0
        assert plans["hpn_hyper_connection_pattern"] == "star" and plans["hpn_reference_phase"] == "arterial"
        assert all(str(hub) in re.findall(r"\d+", name) for name in arch["hyper_connections"])


def test_training_uses_k_paths_and_phase_dropout(k_phase_model):
    fold = k_phase_model["model_dir"] / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file()
    log = next(fold.glob("training_log_*.txt")).read_text()
    assert f"paths on channels {list(range(k_phase_model['k']))}" in log
    assert "phase dropout: p = 0.3" in log
    assert "pairing loss" in log  # averaged over the K(K-1)/2 pairs of paths


def test_predicts_with_all_phases_and_with_one_missing(k_phase_model):
    out, case, raw = k_phase_model["out"], k_phase_model["test_case"], k_phase_model["raw"]
    reference = sitk.ReadImage(str(raw / "imagesTs" / f"{case}_0000.nii.gz"))
    for variant in ("all", "novenous"):
        prediction = sitk.ReadImage(str(out / f"{case}_{variant}.nii.gz"))
        assert prediction.GetSize() == reference.GetSize()
        assert prediction.GetSpacing() == reference.GetSpacing()
        assert set(np.unique(sitk.GetArrayFromImage(prediction))) <= set(LABELS.values())
    venous = k_phase_model["run"]["phases"].index("venous")
    filled = sitk.GetArrayFromImage(sitk.ReadImage(str(k_phase_model["missing_dir"] / f"{case}_{venous:04d}.nii.gz")))
    assert not filled.any()


# ---------------------------------------------------------------- missing-phase policy

def _image(values: np.ndarray, pixel=sitk.sitkInt16) -> sitk.Image:
    image = sitk.Cast(sitk.GetImageFromArray(values), pixel)
    image.SetSpacing((1.5, 1.5, 2.5))
    image.SetOrigin((-10.0, 5.0, 3.0))
    image.SetDirection((0, 1, 0, 1, 0, 0, 0, 0, 1))
    return image


def test_fill_missing_phases_order_geometry_and_warning():
    rng = np.random.default_rng(0)
    arterial, delayed = (_image(rng.integers(-200, 300, (6, 8, 10))) for _ in range(2))
    names = ["noncontrast", "arterial", "venous", "delayed"]
    with pytest.warns(MissingPhaseWarning, match="noncontrast, venous missing"):
        channels, missing = fill_missing_phases({"delayed": delayed, "arterial": arterial}, names)
    assert missing == ["noncontrast", "venous"]
    assert channels[1] is arterial and channels[3] is delayed
    for filled in (channels[0], channels[2]):
        assert filled.GetSize() == arterial.GetSize() and filled.GetPixelID() == arterial.GetPixelID()
        assert filled.GetSpacing() == arterial.GetSpacing() and filled.GetOrigin() == arterial.GetOrigin()
        assert filled.GetDirection() == arterial.GetDirection()
        assert not sitk.GetArrayFromImage(filled).any()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # all phases present: no warning
        channels, missing = fill_missing_phases({"arterial": arterial, "venous": delayed}, ["arterial", "venous"])
    assert missing == [] and channels == [arterial, delayed]


def test_fill_missing_phases_rejects_bad_input():
    image = _image(np.zeros((4, 4, 4)))
    with pytest.raises(HPNInputError, match="portal: not phases of the model"):
        fill_missing_phases({"portal": image}, ["arterial", "venous"])
    with pytest.raises(HPNInputError, match="no phase given"):
        fill_missing_phases({}, ["arterial", "venous"])
    with pytest.raises(ValueError, match="policy"):
        fill_missing_phases({"arterial": image}, ["arterial", "venous"], policy="mean")


def test_filled_phase_is_exactly_zero_after_hpn_normalization():
    """What the network sees for a missing phase at prediction = what phase dropout writes in training."""
    present = _image(np.random.default_rng(1).integers(-1000, 400, (6, 8, 10)))
    channels, _ = fill_missing_phases({"venous": present}, ["arterial", "venous"])
    normalization = HPNCTNormalization(use_mask_for_norm=False, intensityproperties={})
    normalized = normalization.run(sitk.GetArrayFromImage(channels[0]).astype(np.float32))
    assert np.array_equal(normalized, np.zeros_like(normalized))
    image = torch.from_numpy(np.stack([normalized, normalization.run(sitk.GetArrayFromImage(present))]))
    dropped = PhaseDropoutTransform(p=1.0, channels=(0, 1))._apply_to_image(image.clone(), dropped=(0,))
    assert torch.equal(dropped, image)
    assert "constant 0 image" in missing_phase_message(["arterial"], ["arterial", "venous"])


def test_input_folder_with_missing_phase(tmp_path):
    images = tmp_path / "imagesTs"
    images.mkdir()
    rng = np.random.default_rng(2)
    for case in ("a", "b"):
        for channel in range(3):
            sitk.WriteImage(_image(rng.integers(-100, 200, (4, 5, 6))), str(images / f"{case}_{channel:04d}.nii.gz"))
    with pytest.warns(MissingPhaseWarning):
        cases = write_input_folder_with_missing_phases(images, tmp_path / "out", ["x", "y", "z"], ["y"],
                                                       progress=False)
    assert cases == ["a", "b"]
    for case in cases:
        for channel in (0, 2):
            assert (tmp_path / "out" / f"{case}_{channel:04d}.nii.gz").read_bytes() == \
                (images / f"{case}_{channel:04d}.nii.gz").read_bytes()
        assert not sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / f"{case}_0001.nii.gz"))).any()
    with pytest.raises(HPNInputError, match="already exists"):
        write_input_folder_with_missing_phases(images, tmp_path / "out", ["x", "y", "z"], ["y"], progress=False)
    with pytest.raises(HPNInputError, match="not among"):
        write_input_folder_with_missing_phases(images, tmp_path / "out2", ["x", "y", "z"], ["w"], progress=False)
    assert not (tmp_path / "out2").exists()


# ---------------------------------------------------------------- phase dropout

def test_phase_dropout_never_drops_every_phase_and_fills_zero():
    np.random.seed(0)
    transform = PhaseDropoutTransform(p=0.5)
    image = torch.randn((4, 4, 4, 4)) + 3.0
    draws = [transform.get_parameters(image=image)["dropped"] for _ in range(4000)]
    n_dropped = np.bincount([len(d) for d in draws], minlength=5)
    per_channel = np.bincount([c for d in draws for c in d], minlength=4)
    assert n_dropped[4] == 0  # at least one phase always remains
    assert abs(n_dropped[0] / len(draws) - 0.5) < 0.03  # p = 0.5: half of the samples keep every phase
    assert min(n_dropped[1:4]) > 0.25 * n_dropped[1:4].sum() / 3  # 1 .. K-1 phases dropped, uniformly
    assert per_channel.min() > 0.85 * per_channel.max()  # no phase favoured
    for _ in range(20):
        out = transform(image=image.clone())["image"]
        zero = [bool((out[c] == 0).all()) for c in range(4)]
        assert not all(zero)
        for c in range(4):
            assert zero[c] or torch.equal(out[c], image[c])  # dropped: exactly 0; kept: untouched


def test_phase_dropout_leaves_labels_and_input_alone():
    np.random.seed(1)
    image = torch.randn((2, *PATCH_SIZE))
    original = image.clone()
    segmentation = torch.randint(0, 4, (1, *PATCH_SIZE), dtype=torch.int16)
    out = PhaseDropoutTransform(p=1.0)(image=image, segmentation=segmentation)
    assert out["segmentation"] is segmentation
    assert torch.equal(image, original)
    assert sum(bool((out["image"][c] == 0).all()) for c in range(2)) == 1
    assert PhaseDropoutTransform(p=0.0).get_parameters(image=image) == {"dropped": ()}
    with pytest.raises(ValueError):
        PhaseDropoutTransform(p=1.5)
    with pytest.raises(ValueError, match="two phase channels"):
        PhaseDropoutTransform()(image=torch.zeros((1, *PATCH_SIZE)))


def test_phase_dropout_is_last_in_training_and_absent_from_validation():
    from nnunet_hpn.nnunet.trainers import HPNTrainer_phasedropout, HPNTrainer_phasedropout_demo
    from nnunet_hpn.nnunet.trainers.phase_dropout import PhaseDropoutMixin
    from nnunet_hpn.augment.virtual_pairs import VirtualPairTransform, insert_virtual_pairs

    for trainer in (HPNTrainer_phasedropout, HPNTrainer_phasedropout_demo):
        # an instance method (nnU-Net calls it on the trainer); these rows read class attributes only
        training = object.__new__(trainer).get_training_transforms(PATCH_SIZE, ((0, 0),) * 3, None,
                                                                   (0, 1, 2), False)
        assert isinstance(training.transforms[-1], PhaseDropoutTransform)
        assert sum(isinstance(t, PhaseDropoutTransform) for t in training.transforms) == 1
        validation = trainer.get_validation_transforms(None)
        assert not any(isinstance(t, PhaseDropoutTransform) for t in validation.transforms)
    stock = nnUNetTrainer.get_training_transforms(PATCH_SIZE, ((0, 0),) * 3, None, (0, 1, 2), False)
    with_both = append_phase_dropout(insert_virtual_pairs(stock))  # a virtual-pair row with phase dropout
    assert isinstance(with_both.transforms[-1], PhaseDropoutTransform)
    assert any(isinstance(t, VirtualPairTransform) for t in with_both.transforms)
    with pytest.raises(ValueError, match="already"):
        append_phase_dropout(with_both)
    assert PhaseDropoutMixin.phase_dropout_probability == 0.3
