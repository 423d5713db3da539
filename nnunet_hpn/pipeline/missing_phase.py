"""A missing phase at prediction time: one documented policy, the same one phase dropout trains with.

Policy ``"zero"`` (the only one): the missing phase becomes a **constant image of 0** on the grid of the first present
phase (channel order). HPN's normalization (:class:`~nnunet_hpn.nnunet.normalization.HPNCTNormalization`: clip, then
z-score
per case) maps a constant image to exactly 0 (its std is 0, so ``(x - mean) / max(std, 1e-8) = 0``), and resampling
keeps an all-zero image all-zero, so the network sees the missing channel as exactly 0 everywhere. That is what
:class:`~nnunet_hpn.augment.phase_dropout.PhaseDropoutTransform` writes into a dropped channel during training (as
the last
step of the training pipeline, after every augmentation), so a model trained with phase dropout sees at prediction
exactly the input it was trained to handle. A 0-valued channel adds nothing to nnU-Net's non-zero crop mask
(``crop_to_nonzero`` takes the union over channels), so the crop comes from the present phases alone.

A model trained without phase dropout still predicts with this input, but it never saw it during training: expect
lower Dice (docs/RESULTS.md, "Missing phase").

``fill_missing_phases`` is the function behind ``nnunet-hpn predict`` with some phases absent.
"""
from __future__ import annotations

import warnings
from typing import Mapping, Sequence

import SimpleITK as sitk

from nnunet_hpn.errors import HPNInputError, HPNWarning
from nnunet_hpn.phases import DEFAULT_FILL_POLICY, FILL_POLICIES, check_fill_policy



class MissingPhaseWarning(HPNWarning):
    """A phase the model was trained with is absent from the input and was filled by the documented policy."""


def missing_phase_message(missing: Sequence[str], channel_names: Sequence[str],
                          policy: str = DEFAULT_FILL_POLICY) -> str:
    """One line saying which phases are missing and how they were filled (for warnings and prediction logs)."""
    check_fill_policy(policy)
    present = [name for name in channel_names if name not in set(missing)]
    return (f"phase(s) {', '.join(missing)} missing (model phases: {', '.join(channel_names)}); predicting from "
            f"{', '.join(present)} with the missing channel(s) set to a constant 0 image, i.e. exactly 0 after "
            f"normalization (policy '{policy}', as trained by phase dropout); expect lower accuracy than with all "
            f"phases")


def fill_missing_phases(phases: Mapping[str, sitk.Image], channel_names: Sequence[str],
                        policy: str = DEFAULT_FILL_POLICY) -> tuple[list[sitk.Image], list[str]]:
    """The channel images in model order, missing ones filled by ``policy``, and the names of the missing phases.

    ``phases``: phase name -> 3D image, a non-empty subset of ``channel_names`` (the model's dataset.json
    ``channel_names`` values in channel order). A filled channel is a 0-valued image of the first present phase's
    pixel type and geometry (size, spacing, origin, direction). Warns :class:`MissingPhaseWarning` (one line) when a
    phase is missing. Raises :class:`HPNInputError` when no model phase is present or a phase is not a model phase.
    """
    check_fill_policy(policy)
    channel_names = list(channel_names)
    unknown = [name for name in phases if name not in channel_names]
    if unknown:
        raise HPNInputError(f"phase(s) {', '.join(unknown)}: not phases of the model (its phases, in channel order: "
                            f"{', '.join(channel_names)})")
    present = [name for name in channel_names if name in phases]
    if not present:
        raise HPNInputError(f"no phase given; the model needs at least one of {', '.join(channel_names)}")
    missing = [name for name in channel_names if name not in phases]
    template = phases[present[0]]
    channels: list[sitk.Image] = []
    for name in channel_names:
        if name in phases:
            channels.append(phases[name])
            continue
        filled = sitk.Image(template.GetSize(), template.GetPixelID(), template.GetNumberOfComponentsPerPixel())
        filled.CopyInformation(template)  # a new sitk.Image is all 0 already
        if FILL_POLICIES[policy] != 0:
            filled = filled + FILL_POLICIES[policy]
        channels.append(filled)
    if missing:
        warnings.warn(missing_phase_message(missing, channel_names, policy), MissingPhaseWarning, stacklevel=2)
    return channels, missing
