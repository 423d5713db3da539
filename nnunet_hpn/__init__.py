"""nnunet-hpn: the Hyper-Pairing Network (Zhou et al., MICCAI 2019) as a plugin for nnU-Net v2.

This module stays free of heavy imports (no torch, no nnunetv2): the start-up hook imports it in every
interpreter of the environment.
"""
from pathlib import Path

from nnunet_hpn.phases import PHASES  # noqa: F401  (re-exported; the phase names live in nnunet_hpn.phases)
from nnunet_hpn.version import __version__  # noqa: F401  (re-exported)

#: Folder that holds only the trainer shim modules; appended to ``nnUNet_extTrainer`` by the start-up hook.
EXT_TRAINER_DIR: str = str(Path(__file__).resolve().parent / "nnunet" / "ext")
