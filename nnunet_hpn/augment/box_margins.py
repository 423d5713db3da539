"""The box of two-stage HPN in mm: the margin around the locator's box at inference, how far box jitter moves each
side of it in stage-2 training (:mod:`nnunet_hpn.augment.box_jitter`), and the margin of stage 2's training crops.
Plain numbers, importable without torch (the command line shows them in its help)."""

#: Margin (mm) around the locator's pancreas box at inference.
STAGE2_MARGIN_MM: float = 20.0
#: Largest change (mm) of each side of the box during stage-2 training (box jitter).
BOX_JITTER_MM: float = 10.0
#: Margin (mm) of stage 2's training crops (``convert --crop-to-label``): room for the widest jittered box.
STAGE2_TRAINING_MARGIN_MM: float = STAGE2_MARGIN_MM + BOX_JITTER_MM
