"""Extra configurations in an existing plans file (nnU-Net's ``inherits_from`` mechanism)."""
import json
from copy import deepcopy
from pathlib import Path
from typing import Sequence

from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_hpn.errors import HPNInputError

#: The operation entries nnU-Net's 3D plans hold in ``arch_kwargs`` (3D convolution with bias, InstanceNorm, no
#: dropout, LeakyReLU), for building plans entries by hand (benchmarks, tests); ``deepcopy`` before changing them.
NNUNET_3D_OPERATIONS: dict = {
    "conv_op": "torch.nn.modules.conv.Conv3d",
    "conv_bias": True,
    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
    "norm_op_kwargs": {"eps": 1e-05, "affine": True},
    "dropout_op": None,
    "dropout_op_kwargs": None,
    "nonlin": "torch.nn.LeakyReLU",
    "nonlin_kwargs": {"inplace": True},
}


def add_small_configuration(plans_file: Path, name: str = "3d_cpu", patch_size: Sequence[int] = (32, 48, 48),
                            base_features: int = 8, max_features: int = 64, batch_size: int = 2,
                            parent: str = "3d_fullres", spacing_factor: float = 1.0) -> dict:
    """Adds configuration ``name`` (a small patch and narrow network, for CPU runs) to ``plans_file``.

    Everything else, including the preprocessed data, is ``parent``'s: its resolved settings are written out in full
    (``inherits_from`` kept as a note), because some stock commands (``nnUNetv2_plot_overlay_pngs``) read a
    configuration without resolving inheritance. ``spacing_factor`` > 1 makes a coarse configuration, as nnU-Net's
    ``3d_lowres``: spacing × factor, median image size / factor, and data of its own (``data_identifier``
    ``<plans>_<name>``; ``nnUNetv2_preprocess -c <name>`` writes it). The network topology (stages, strides, kernels)
    for the new patch comes from nnU-Net's own ``get_pool_and_conv_props``. Returns the new entry.
    """
    plans_file = Path(plans_file)
    if not plans_file.is_file():
        raise HPNInputError(f"{plans_file}: plans file not found (run nnUNetv2_plan_and_preprocess first)")
    plans = json.loads(plans_file.read_text())
    if parent not in plans["configurations"]:
        raise HPNInputError(f"{plans_file}: has no configuration '{parent}' to inherit from")
    if not spacing_factor >= 1.0:
        raise HPNInputError(f"{plans_file}: spacing factor {spacing_factor}: must be a number ≥ 1")
    parent_config = deepcopy(PlansManager(plans).get_configuration(parent).configuration)  # inheritance resolved
    if spacing_factor != 1.0:
        parent_config.update({
            "spacing": [s * spacing_factor for s in parent_config["spacing"]],
            "median_image_size_in_voxels": [max(1.0, round(m / spacing_factor)) for m in
                                            parent_config["median_image_size_in_voxels"]],
            "data_identifier": f"{plans['plans_name']}_{name}"})
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
    entry = {**parent_config, "inherits_from": parent, "patch_size": [int(p) for p in patch],
             "batch_size": batch_size, "architecture": architecture}
    plans["configurations"][name] = entry
    plans_file.write_text(json.dumps(plans, indent=4))
    return entry
