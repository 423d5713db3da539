"""Extra configurations in an existing plans file (nnU-Net's ``inherits_from`` mechanism), written so that the plans
file stays valid whatever is asked: nnU-Net's own configurations and configurations with trained models are not
replaced by accident, inheritance never loops, and the file is rewritten atomically under a lock."""
import hashlib
import json
import math
import os
import re
import tempfile
from copy import deepcopy
from pathlib import Path
from typing import Sequence

from filelock import FileLock
from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_hpn.errors import HPNInputError
from nnunet_hpn.io.publish import write_text_atomically

#: Configurations nnU-Net plans itself: never replaced by ``add_small_configuration``.
NNUNET_CONFIGURATIONS: frozenset[str] = frozenset({"2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres"})
#: Smallest patch edge (voxels) of a configuration: one pooling step and a 3x3x3 convolution on each side.
MIN_PATCH_EDGE = 8
#: A patch edge may exceed the dataset's largest image along that axis (nnU-Net pads) up to this factor.
PATCH_OVER_IMAGE = 2.0
#: A configuration name: letters, digits and "_" (it becomes part of folder names).
CONFIGURATION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_]*")

def plans_lock(plans_file: Path) -> FileLock:
    """The lock every change of ``plans_file`` holds: a file in the temporary folder named after the plans file's
    resolved path (nothing is left in the preprocessed folder)."""
    key = hashlib.sha1(str(Path(plans_file).resolve()).encode()).hexdigest()[:16]
    return FileLock(str(Path(tempfile.gettempdir()) / f"nnunet-hpn-plans-{key}.lock"))


def trained_models(plans_file: Path, configuration: str) -> list[Path]:
    """Checkpoints trained with ``configuration`` of ``plans_file`` (a ``$nnUNet_preprocessed/<dataset>/<plans>.json``):
    ``$nnUNet_results/<dataset>/*__<plans>__<configuration>/fold_*/checkpoint_*.pth``."""
    results = os.environ.get("nnUNet_results")
    if not results:
        return []
    plans_file = Path(plans_file)
    model_folders = (Path(results) / plans_file.parent.name).glob(f"*__{plans_file.stem}__{configuration}")
    return sorted(path for folder in model_folders for path in folder.glob("fold_*/checkpoint_*.pth"))


def _check_numbers(plans_file: Path, patch_size: Sequence[int], base_features: int, max_features: int,
                   batch_size: int, spacing_factor: float) -> None:
    """HPNInputError naming ``plans_file`` for a number no configuration can have."""
    if len(patch_size) != 3 or any(int(edge) != edge or edge < MIN_PATCH_EDGE for edge in patch_size):
        raise HPNInputError(f"{plans_file}: patch size {list(patch_size)}: needs 3 whole numbers of at least "
                            f"{MIN_PATCH_EDGE} voxels")
    if not (isinstance(base_features, int) and isinstance(max_features, int) and 1 <= base_features <= max_features):
        raise HPNInputError(f"{plans_file}: features {base_features} (base) and {max_features} (max): need "
                            f"1 <= base <= max")
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise HPNInputError(f"{plans_file}: batch size {batch_size}: must be at least 1")
    if not (math.isfinite(spacing_factor) and spacing_factor >= 1.0):
        raise HPNInputError(f"{plans_file}: spacing factor {spacing_factor}: must be a number ≥ 1")


def _largest_image(plans_file: Path, spacing: Sequence[float]) -> list[int] | None:
    """The largest image size per axis of the dataset (dataset_fingerprint.json beside the plans) at ``spacing``, in
    the plans' axis order; None without a readable fingerprint."""
    try:
        fingerprint = json.loads((Path(plans_file).parent / "dataset_fingerprint.json").read_text(encoding="utf-8"))
        sizes = [[shape * old / new for shape, old, new in zip(case_shape, case_spacing, spacing)]
                 for case_shape, case_spacing in zip(fingerprint["shapes_after_crop"], fingerprint["spacings"])]
        return [int(round(max(size[axis] for size in sizes))) for axis in range(3)]
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
        return None


def _check_name(plans_file: Path, name: str, parent: str) -> None:
    """HPNInputError for a configuration name that is no folder name, the parent's or one nnU-Net plans itself."""
    if not CONFIGURATION_NAME.fullmatch(name):
        raise HPNInputError(f"{plans_file}: configuration name {name!r} must be letters, digits and '_'")
    if name == parent:
        raise HPNInputError(f"{plans_file}: '{name}' is the configuration it inherits from (a configuration cannot "
                            f"inherit from itself); choose another name with --name")
    if name in NNUNET_CONFIGURATIONS:
        raise HPNInputError(f"{plans_file}: '{name}' is one of nnU-Net's own configurations; choose another name "
                            f"with --name")


def _check_replacement(plans_file: Path, plans: dict, name: str, entry: dict, overwrite: bool) -> None:
    """HPNInputError when ``entry`` may not become configuration ``name``: an existing different configuration
    without ``overwrite``, or an inheritance loop."""
    existing = plans["configurations"].get(name)
    if existing is not None and existing != entry and not overwrite:
        models = trained_models(plans_file, name)
        trained = f"; {len(models)} trained checkpoints use it, e.g. {models[0]}" if models else ""
        raise HPNInputError(f"{plans_file}: configuration '{name}' exists with other settings{trained} "
                            f"(--overwrite replaces it)")
    manager = PlansManager({**plans, "configurations": {**plans["configurations"], name: entry}})
    for configuration in manager.available_configurations:
        try:
            manager.get_configuration(configuration)
        except RuntimeError as error:
            raise HPNInputError(f"{plans_file}: configuration '{name}' would make the inheritance of "
                                f"'{configuration}' circular ({str(error).splitlines()[0][:80]})") from None


def add_small_configuration(plans_file: Path, name: str = "3d_cpu", patch_size: Sequence[int] = (32, 48, 48),
                            base_features: int = 8, max_features: int = 64, batch_size: int = 2,
                            parent: str = "3d_fullres", spacing_factor: float = 1.0, overwrite: bool = False) -> dict:
    """Adds configuration ``name`` (a small patch and narrow network, for CPU runs) to ``plans_file``.

    Everything else, including the preprocessed data, is ``parent``'s: its resolved settings are written out in full
    (``inherits_from`` kept as a note), because some stock commands (``nnUNetv2_plot_overlay_pngs``) read a
    configuration without resolving inheritance. ``spacing_factor`` > 1 makes a coarse configuration, as nnU-Net's
    ``3d_lowres``: spacing × factor, median image size / factor, and data of its own (``data_identifier``
    ``<plans>_<name>``; ``nnUNetv2_preprocess -c <name>`` writes it). The network topology (stages, strides, kernels)
    for the new patch comes from nnU-Net's own ``get_pool_and_conv_props`` (which may round the patch up to a
    multiple of its pooling: the entry's ``patch_size`` says what it became). Returns the new entry.

    HPNInputError, the file unchanged, for a number no configuration can have, a patch edge more than
    :data:`PATCH_OVER_IMAGE` times the dataset's largest image along its axis, a name nnU-Net plans itself, an
    existing configuration with other settings (unless ``overwrite``) and an inheritance loop. The file is read,
    changed and replaced (atomically) under :func:`plans_lock`, so that concurrent runs never see it half-written
    nor lose each other's configuration.
    """
    plans_file = Path(plans_file)
    if not plans_file.is_file():
        raise HPNInputError(f"{plans_file}: plans file not found (run nnUNetv2_plan_and_preprocess first)")
    _check_numbers(plans_file, patch_size, base_features, max_features, batch_size, spacing_factor)
    _check_name(plans_file, name, parent)
    with plans_lock(plans_file):
        try:
            plans = json.loads(plans_file.read_text(encoding="utf-8"))
            PlansManager(plans).get_configuration(parent)
        except (OSError, ValueError, KeyError, TypeError):
            raise HPNInputError(f"{plans_file}: not a readable nnU-Net plans file") from None
        except RuntimeError as error:
            raise HPNInputError(f"{plans_file}: configuration '{parent}' cannot be resolved "
                                f"({str(error).splitlines()[0][:80]})") from None
        entry = json.loads(json.dumps(_small_configuration(plans_file, plans, name, patch_size, base_features,
                                                           max_features, batch_size, parent, spacing_factor)))
        _check_replacement(plans_file, plans, name, entry, overwrite)
        if plans["configurations"].get(name) != entry:
            plans["configurations"][name] = entry
            write_text_atomically(plans_file, json.dumps(plans, indent=4))
    return entry


def _small_configuration(plans_file: Path, plans: dict, name: str, patch_size: Sequence[int], base_features: int,
                         max_features: int, batch_size: int, parent: str, spacing_factor: float) -> dict:
    """The entry :func:`add_small_configuration` adds (see there)."""
    if parent not in plans["configurations"]:
        raise HPNInputError(f"{plans_file}: has no configuration '{parent}' to inherit from")
    parent_config = deepcopy(PlansManager(plans).get_configuration(parent).configuration)  # inheritance resolved
    if spacing_factor != 1.0:
        parent_config.update({
            "spacing": [s * spacing_factor for s in parent_config["spacing"]],
            "median_image_size_in_voxels": [max(1.0, round(m / spacing_factor)) for m in
                                            parent_config["median_image_size_in_voxels"]],
            "data_identifier": f"{plans['plans_name']}_{name}"})
        if min(parent_config["median_image_size_in_voxels"]) < MIN_PATCH_EDGE:
            raise HPNInputError(f"{plans_file}: spacing factor {spacing_factor:g} leaves a median image of "
                                f"{parent_config['median_image_size_in_voxels']} voxels; too coarse")
    largest = _largest_image(plans_file, parent_config["spacing"])
    if largest is not None and any(edge > PATCH_OVER_IMAGE * size for edge, size in zip(patch_size, largest)):
        raise HPNInputError(f"{plans_file}: patch size {list(patch_size)} is more than {PATCH_OVER_IMAGE:g} times "
                            f"the largest image of the dataset along an axis at spacing "
                            f"{[round(s, 3) for s in parent_config['spacing']]} mm ({largest} voxels): most of "
                            f"every patch would be padding")
    _, strides, kernel_sizes, patch, _ = get_pool_and_conv_props(parent_config["spacing"], list(patch_size), 4, 999999)
    n_stages = len(strides)
    architecture = deepcopy(parent_config["architecture"])
    arch_kwargs = architecture["arch_kwargs"]
    arch_kwargs.update({
        "n_stages": n_stages,
        "features_per_stage": [min(max_features, base_features * 2 ** i) for i in range(n_stages)],
        "kernel_sizes": kernel_sizes,
        "strides": strides,
        "n_conv_per_stage": list(arch_kwargs["n_conv_per_stage"])[:1] * n_stages,
        "n_conv_per_stage_decoder": list(arch_kwargs["n_conv_per_stage_decoder"])[:1] * (n_stages - 1),
    })
    return {**parent_config, "inherits_from": parent, "patch_size": [int(p) for p in patch],
            "batch_size": batch_size, "architecture": architecture}
