"""Training-time augmentations of HPN in batchgeneratorsv2's style (virtual pairs, phase dropout, phase misalignment,
box jitter with its margins), and the random smooth displacement fields that the misalignment and the phantom share."""
