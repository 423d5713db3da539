"""Misalignment augmentation: only the non-reference phases move, labels and the reference phase stay bit-identical,
the displacement never exceeds its amplitude, amplitude 0 is the identity, and only training pipelines contain it."""
import numpy as np
import pytest
import torch

from nnunet_hpn.augment.phase_misalignment import PhaseMisalignmentTransform, insert_phase_misalignment

SPACING = (2.5, 1.5, 1.5)


def _sample(seed: int = 0, shape=(3, 12, 20, 24)) -> dict:
    rng = np.random.default_rng(seed)
    image = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
    label = torch.from_numpy(rng.integers(0, 4, (1, *shape[1:])).astype(np.int16))
    return {"image": image, "segmentation": label}


def test_only_the_non_reference_phases_move_and_labels_stay() -> None:
    np.random.seed(0)
    transform = PhaseMisalignmentTransform(6.0, SPACING, reference_channel=1)
    sample = _sample()
    image, label = sample["image"].clone(), sample["segmentation"].clone()
    out = transform(**{key: value.clone() for key, value in sample.items()})
    assert torch.equal(out["image"][1], image[1]) and torch.equal(out["segmentation"], label)
    for channel in (0, 2):
        assert not torch.equal(out["image"][channel], image[channel])
    assert torch.equal(sample["image"], image)  # the input is not modified


def test_displacement_never_exceeds_the_amplitude() -> None:
    np.random.seed(1)
    transform = PhaseMisalignmentTransform(4.0, SPACING)
    spacing = torch.tensor(SPACING).reshape(3, 1, 1, 1)
    largest = 0.0
    for _ in range(40):
        params = transform.get_parameters(**_sample())
        assert params["channels"] == (1, 2)
        millimetres = torch.linalg.vector_norm(params["displacement"] * spacing, dim=0)
        largest = max(largest, float(millimetres.max()))
    assert 1.0 < largest <= 4.0 + 1e-4  # up to, and reaching a good share of, the amplitude


def test_amplitude_zero_is_the_identity() -> None:
    sample = _sample(2)
    out = PhaseMisalignmentTransform(0.0, SPACING)(**{key: value.clone() for key, value in sample.items()})
    assert torch.equal(out["image"], sample["image"]) and torch.equal(out["segmentation"], sample["segmentation"])


def test_a_known_shift_moves_the_phase_by_that_many_voxels() -> None:
    transform = PhaseMisalignmentTransform(10.0, SPACING)
    image = _sample(3)["image"]
    displacement = torch.zeros((3, *image.shape[1:]))
    displacement[2] = 2.0  # sample two voxels further along the last axis
    out = transform._apply_to_image(image, displacement=displacement, channels=(1,))
    assert torch.allclose(out[1, :, :, :-2], image[1, :, :, 2:], atol=1e-5)
    assert torch.equal(out[0], image[0]) and torch.equal(out[2], image[2])


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="max_displacement_mm"):
        PhaseMisalignmentTransform(-1.0, SPACING)
    with pytest.raises(ValueError, match="reference channel 5"):
        PhaseMisalignmentTransform(2.0, SPACING, reference_channel=5).get_parameters(**_sample())
    with pytest.raises(TypeError):
        insert_phase_misalignment([], 2.0, SPACING)


@pytest.mark.parametrize("name", ["HPNTrainer_misalign", "EarlyFusionTrainer_misalign", "HPNTrainer"])
def test_only_the_misalign_trainers_training_pipelines_contain_it(planned_dataset, monkeypatch, name: str) -> None:
    import copy
    import json

    import nnunet_hpn.nnunet.trainers as trainers
    from conftest import TINY_CONFIGURATION

    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(key, planned_dataset["env"][key])
    dataset_json = json.loads((planned_dataset["raw"] / "dataset.json").read_text())
    plans = dict(copy.deepcopy(planned_dataset["plans"]), continue_training=False)  # as nnUNetv2_train passes it
    trainer = getattr(trainers, name)(plans=plans, configuration=TINY_CONFIGURATION,
                                      fold=0, dataset_json=dataset_json, device=torch.device("cpu"))
    patch = trainer.configuration_manager.patch_size
    training = trainer.get_training_transforms(patch, ((0, 0),) * 3, None, (0, 1, 2), False)
    steps = [step for step in training.transforms if isinstance(step, PhaseMisalignmentTransform)]
    assert len(steps) == (0 if name == "HPNTrainer" else 1)
    if steps:
        assert steps[0].reference_channel == 0 and steps[0].spacing == tuple(trainer.configuration_manager.spacing)
        assert steps[0].max_displacement_mm == 4.0
    validation = trainer.get_validation_transforms(None)
    assert not any(isinstance(step, PhaseMisalignmentTransform) for step in validation.transforms)
