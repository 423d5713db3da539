"""Training-time augmentations of HPN in batchgeneratorsv2's style: virtual pairs and phase dropout."""
