"""Per-phase CT normalization of the paper: clip to [-100, 240] HU, then z-score per case."""
from typing import Optional, Sequence

import numpy as np
from nnunetv2.preprocessing.normalization.default_normalization_schemes import ImageNormalization

from nnunet_hpn.phases import HU_WINDOW

#: Key in the plans' ``foreground_intensity_properties_per_channel[c]`` that overrides the window.
CLIP_KEY = "hpn_clip_hu"


class HPNCTNormalization(ImageNormalization):
    """Clips one CT phase to a HU window, then z-scores it with the mean / std of this case (not of the dataset).

    The window comes from ``intensityproperties['hpn_clip_hu']`` when the planner stored one, else
    :data:`nnunet_hpn.phases.HU_WINDOW`. Input and output: one channel, (X, Y, Z).
    """

    leaves_pixels_outside_mask_at_zero_if_use_mask_for_norm_is_true = False

    def run(self, image: np.ndarray, seg: Optional[np.ndarray] = None) -> np.ndarray:
        low, high = self.clip_window()
        image = np.clip(image.astype(self.target_dtype, copy=False), low, high)
        std = image.std()
        return (image - image.mean()) / max(float(std), 1e-8)

    def clip_window(self) -> Sequence[float]:
        if self.intensityproperties is not None and CLIP_KEY in self.intensityproperties:
            return self.intensityproperties[CLIP_KEY]
        return HU_WINDOW
