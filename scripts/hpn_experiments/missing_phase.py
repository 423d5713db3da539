"""An nnU-Net input folder with chosen phases left out, filled as ``nnunet-hpn predict`` fills a missing phase
(:func:`nnunet_hpn.pipeline.missing_phase.fill_missing_phases`): how ``missing_phase_experiment.py`` measures Dice
with a phase missing through the stock ``nnUNetv2_predict``."""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Sequence

import SimpleITK as sitk
from tqdm import tqdm

from nnunet_hpn.errors import HPNInputError
from nnunet_hpn.io.publish import published_folder
from nnunet_hpn.phases import DEFAULT_FILL_POLICY, channel_file_name, channel_files
from nnunet_hpn.pipeline.missing_phase import MissingPhaseWarning, fill_missing_phases, missing_phase_message


def write_input_folder_with_missing_phases(images_dir: Path, out_dir: Path, channel_names: Sequence[str],
                                           missing: Sequence[str], policy: str = DEFAULT_FILL_POLICY,
                                           file_ending: str = ".nii.gz", progress: bool = True) -> list[str]:
    """Copy of an nnU-Net input folder with the ``missing`` phases' files replaced as :func:`fill_missing_phases`
    fills them; for ``nnUNetv2_predict -i out_dir`` (Dice with a phase missing without a dedicated predict command).

    ``images_dir`` holds ``<case>_000k<file_ending>`` for every channel k of ``channel_names``; ``out_dir`` must not
    exist (it is built in a hidden folder next to it and renamed into place when complete). Returns the case ids.
    """
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    channel_names = list(channel_names)
    unknown = [name for name in missing if name not in channel_names]
    if unknown:
        raise HPNInputError(f"{images_dir}: phase(s) {', '.join(unknown)} to leave out are not among "
                            f"{', '.join(channel_names)}")
    if out_dir.exists():
        raise HPNInputError(f"{out_dir}: already exists")
    cases = channel_files(images_dir, len(channel_names), file_ending)
    with published_folder(out_dir, "new") as staging, warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingPhaseWarning)  # one warning for the folder, below
        for case, files in tqdm(cases.items(), desc="filling missing phases", unit="case", disable=not progress):
            present = {name: sitk.ReadImage(str(path)) for name, path in zip(channel_names, files)
                       if name not in set(missing)}
            channels, _ = fill_missing_phases(present, channel_names, policy)
            for channel, (name, image, source) in enumerate(zip(channel_names, channels, files)):
                target = staging / channel_file_name(case, channel, file_ending)
                if name in present:
                    shutil.copyfile(source, target)
                else:
                    sitk.WriteImage(image, str(target), useCompression=True)
    if missing:
        warnings.warn(f"{out_dir}: {missing_phase_message(list(missing), channel_names, policy)}",
                      MissingPhaseWarning, stacklevel=2)
    return list(cases)

