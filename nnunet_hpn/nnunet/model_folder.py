"""A trained nnU-Net model folder (``nnUNet_results/DatasetXXX/<trainer>__<plans>__<configuration>``) as prediction
uses it: ``dataset.json`` and ``plans.json`` read once, the checkpoints of the folds checked against them before
nnU-Net loads them (each one memory-mapped, its weights not read), and nnU-Net's own ``nnUNetPredictor`` built from
it (:meth:`ModelFolder.predictor`). HPN's predictor and the two-stage locator both take their model this way.

Every problem is one :class:`~nnunet_hpn.errors.HPNInputError` line naming the file and the option that named the
folder (``named_by``: ``-m``, ``--locator``, or ``-d … -c …``). Nothing here imports torch or nnunetv2 until a
checkpoint is checked or a predictor is built.
"""
from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import SimpleITK as sitk

from nnunet_hpn.errors import HPNInputError
from nnunet_hpn.labels import LabelScheme, dataset_reference_phase
from nnunet_hpn.phases import channel_names as dataset_channel_names

if TYPE_CHECKING:
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

#: Where nnU-Net keeps a trained model, as error messages describe it.
MODEL_FOLDER_PATTERN = "nnUNet_results/DatasetXXX/<trainer>__<plans>__<configuration>"


class ModelFolder:
    """One trained model folder: its ``dataset.json`` (read at once), ``plans.json``, channel names, reference phase
    and label scheme (each read or derived on first use, once)."""

    def __init__(self, path: Path, named_by: str = "-m") -> None:
        self.path = Path(path)
        self.named_by = named_by
        self.dataset_file = self.path / "dataset.json"
        self.plans_file = self.path / "plans.json"
        self._checked: set[tuple[tuple[str, ...], str]] = set()  # (folds, checkpoint) that passed check_folds
        if not self.path.is_dir():
            raise HPNInputError(f"{self.path}: model folder does not exist; {named_by} must be a trained model folder "
                                f"({MODEL_FOLDER_PATTERN})")
        if not self.dataset_file.is_file():
            raise HPNInputError(f"{self.dataset_file}: missing; {named_by} must be a trained model folder "
                                f"({MODEL_FOLDER_PATTERN})")
        try:
            self.dataset: dict[str, Any] = json.loads(self.dataset_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise HPNInputError(f"{self.dataset_file}: unreadable or not JSON") from None
        if not isinstance(self.dataset, dict):
            raise HPNInputError(f"{self.dataset_file}: not a JSON object")

    @cached_property
    def channel_names(self) -> list[str]:
        """Phase names of the model's input channels, in channel order (dataset.json ``channel_names``)."""
        try:
            return dataset_channel_names(self.dataset)
        except (KeyError, TypeError, AttributeError, ValueError):
            raise HPNInputError(f"{self.dataset_file}: no readable channel_names") from None

    @cached_property
    def reference_phase(self) -> str:
        """The stored reference phase (``convert --reference-phase``), else the rule of the phases."""
        return dataset_reference_phase(self.dataset, where=str(self.dataset_file))

    @cached_property
    def label_scheme(self) -> LabelScheme:
        """What the model's label values mean (:mod:`nnunet_hpn.labels`)."""
        return LabelScheme.from_dataset_json(self.dataset, str(self.dataset_file))

    @cached_property
    def plans(self) -> dict[str, Any]:
        """``plans.json``, read once."""
        try:
            return json.loads(self.plans_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise HPNInputError(f"{self.plans_file}: missing; {self.named_by} must be a trained model "
                                f"folder") from None
        except (OSError, ValueError):
            raise HPNInputError(f"{self.plans_file}: unreadable or not JSON") from None

    def check_folds(self, folds: Sequence[int | str], checkpoint: str, folds_flag: str = "-f") -> None:
        """Everything nnU-Net's predictor will read, checked before it loads (one HPNInputError line each): the
        channel names, a readable ``plans.json``, and for every fold a checkpoint file that opens, is an nnU-Net
        checkpoint, was trained on as many channels as ``dataset.json`` names and agrees with the folder
        (:func:`check_checkpoint_matches`). Each set of folds is checked once."""
        key = (tuple(str(fold) for fold in folds), checkpoint)
        if key in self._checked:
            return
        channel_names = self.channel_names
        self.plans  # read now: a missing or unreadable plans.json is said before any checkpoint opens
        for fold in folds:
            path = self.path / f"fold_{fold}" / checkpoint
            if not path.is_file():
                raise HPNInputError(f"{path}: missing (train fold {fold} first, or pick other folds with "
                                    f"{folds_flag})")
            saved = _checkpoint_without_weights(path)
            if not isinstance(saved, dict) or "network_weights" not in saved or "init_args" not in saved:
                raise HPNInputError(f"{path}: not an nnU-Net checkpoint (no network_weights / init_args)")
            trained = saved["init_args"].get("dataset_json", {}).get("channel_names", {})
            if trained and len(trained) != len(channel_names):
                raise HPNInputError(f"{self.dataset_file}: {len(channel_names)} channels "
                                    f"({', '.join(channel_names)}), but {path} was trained on {len(trained)}")
            check_checkpoint_matches(self, saved["init_args"], path)
        self._checked.add(key)

    def predictor(self, folds: Sequence[int | str], checkpoint: str, device: str = "cpu", step_size: float = 0.5,
                  disable_tta: bool = False, progress: bool = False, folds_flag: str = "-f") -> "nnUNetPredictor":
        """nnU-Net's ``nnUNetPredictor`` loaded with the checkpoints of ``folds`` (checked first,
        :meth:`check_folds`); Gaussian-weighted sliding windows of ``step_size`` patches, mirroring unless
        ``disable_tta``, everything on the device for ``cuda``."""
        self.check_folds(folds, checkpoint, folds_flag)
        import torch
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        from nnunet_hpn.nnunet import startup_hook

        startup_hook.install()  # idempotent: HPNCTNormalization findable by nnU-Net's in-process preprocessing
        predictor = nnUNetPredictor(tile_step_size=step_size, use_gaussian=True, use_mirroring=not disable_tta,
                                    perform_everything_on_device=device == "cuda", device=torch.device(device),
                                    verbose=False, allow_tqdm=progress)
        predictor.initialize_from_trained_model_folder(
            str(self.path), use_folds=tuple(int(f) if str(f).isdigit() else f for f in folds),
            checkpoint_name=checkpoint)
        return predictor


def _checkpoint_without_weights(path: Path) -> Any:
    """The checkpoint at ``path`` with its tensors memory-mapped, not read (a file in torch's legacy format is read
    whole); one HPNInputError line when it cannot be opened."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception:  # not torch's zip format (mmap needs it), or damaged: the full load says which
        pass
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises many kinds for a damaged file
        raise HPNInputError(f"{path}: checkpoint cannot be loaded ({type(error).__name__}; truncated or "
                            f"damaged?)") from None


def check_checkpoint_matches(model: ModelFolder, init_args: Mapping[str, Any], checkpoint: Path) -> None:
    """HPNInputError, before nnU-Net builds the network, when the model folder's ``plans.json`` or ``dataset.json``
    disagree with what ``checkpoint`` was trained with (``init_args``): the configuration missing or resolving to
    nothing, a patch size that is not positive, other network widths or another label set."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans, plans_file = model.plans, model.plans_file
    name = init_args.get("configuration")
    if not isinstance(name, str):
        return
    try:
        configuration = PlansManager(plans).get_configuration(name).configuration
    except (KeyError, RuntimeError, TypeError, ValueError):
        available = ", ".join(plans.get("configurations", {})) if isinstance(plans, dict) else ""
        raise HPNInputError(f"{plans_file}: no usable configuration '{name}', which {checkpoint} was trained with "
                            f"(configurations: {available or 'none'})") from None
    patch = configuration.get("patch_size")
    if not isinstance(patch, list) or not patch or any(not isinstance(p, int) or p < 1 for p in patch):
        raise HPNInputError(f"{plans_file}: configuration '{name}' has patch size {patch}; every edge must be a "
                            f"whole number of at least 1")
    try:
        trained = PlansManager(init_args.get("plans", {})).get_configuration(name).configuration
    except (KeyError, RuntimeError, TypeError, ValueError, AttributeError):
        trained = None
    if trained is not None:
        widths = configuration.get("architecture", {}).get("arch_kwargs", {}).get("features_per_stage")
        trained_widths = trained.get("architecture", {}).get("arch_kwargs", {}).get("features_per_stage")
        if trained_widths is not None and widths != trained_widths:
            raise HPNInputError(f"{plans_file}: configuration '{name}' has features per stage {widths}, but "
                                f"{checkpoint} was trained with {trained_widths}")
    labels, trained_labels = model.dataset.get("labels"), init_args.get("dataset_json", {}).get("labels")
    if isinstance(labels, dict) and isinstance(trained_labels, dict) and labels != trained_labels:
        raise HPNInputError(f"{model.dataset_file}: labels {labels}, but {checkpoint} was trained with "
                            f"{trained_labels}")


def nnunet_properties(reference: sitk.Image) -> dict[str, Any]:
    """The properties dict nnU-Net's ``SimpleITKIO.read_images`` returns for a 3D image (``SimpleITKIO`` itself
    reads files; the phases here are registered images in memory)."""
    return {"sitk_stuff": {"spacing": reference.GetSpacing(), "origin": reference.GetOrigin(),
                           "direction": reference.GetDirection()},
            "spacing": [abs(s) for s in list(reference.GetSpacing())[::-1]]}
