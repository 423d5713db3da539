"""Trainer shim for nnU-Net's ``nnUNet_extTrainer`` lookup: only re-exports the trainers.

nnU-Net imports every module of this folder and afterwards removes them from ``sys.modules``; the classes live in
``nnunet_hpn.nnunet.trainers`` so that they stay importable and picklable (see README, "Discovery without a fork").
"""
from nnunet_hpn.nnunet.trainers import *  # noqa: F401,F403
from nnunet_hpn.nnunet.trainers import __all__  # noqa: F401
