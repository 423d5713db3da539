"""Where plans and checkpoints written before the package was regrouped find the networks: their
``network_class_name`` is ``nnunet_hpn.hyper_connections.HyperPairedUNet`` (or ``...HyperPairedResDSN``). The
networks live in :mod:`nnunet_hpn.model.network`."""
from nnunet_hpn.model.network import HyperPairedResDSN, HyperPairedUNet

__all__ = ["HyperPairedUNet", "HyperPairedResDSN"]
