"""The Hyper-Pairing Network: hyper-connections, the K-path encoder and decoder, the networks, the pairing loss
and fast batch-1 CPU inference."""
