"""The dual-path (K-path) Hyper-Pairing Network of Zhou et al., MICCAI 2019, §2.1, for nnU-Net v2.

One U-shaped path per input phase (channel 0 arterial = path 0, channel 1 venous = path 1 by default). The paths
run in lockstep and exchange features through *hyper-connections*: concatenations (as in U-Net skips and
HyperDenseNet) of another path's feature map of the same resolution into the input of a layer of this path.

Connection names, for a source path ``i`` and a target path ``j != i``:

* ``enc{i}->enc{j}``: encoder stage ``s`` of path ``j`` takes ``cat(own stage s-1, stage s-1 of path i)``;
* ``enc{i}->dec{j}``: the decoder of path ``j`` at the resolution of encoder stage ``s`` takes
  ``cat(upsampled own, own skip s, skip s of path i)``; at the bottom, its first transposed conv takes
  ``cat(own bottleneck, bottleneck of path i)``;
* ``dec{i}->dec{j}``: every transposed conv of decoder ``j`` after the first takes
  ``cat(own previous decoder output, previous decoder output of path i)``.

For two paths these are the paper's six directions (encoder A<->B, encoder A->decoder B, encoder B->decoder A,
decoder A<->B). The in-path U-Net skips stay. One shared 1x1(x1) classifier takes the concatenation of all paths'
last decoder outputs; with deep supervision each lower decoder resolution has its own shared head.
"""
from __future__ import annotations

import re
from typing import Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

IntOrSeq = Union[int, Sequence[int]]
CONNECTION_KINDS: tuple[tuple[str, str], ...] = (("enc", "enc"), ("enc", "dec"), ("dec", "dec"))
CONNECTION_PATTERN = re.compile(r"^(enc|dec)(\d+)->(enc|dec)(\d+)$")


def all_hyper_connection_names(n_paths: int) -> list[str]:
    """Every valid hyper-connection name for ``n_paths`` paths: enc->enc, then enc->dec, then dec->dec.

    For 2 paths: ``enc0->enc1, enc1->enc0, enc0->dec1, enc1->dec0, dec0->dec1, dec1->dec0``. Empty for 1 path.
    """
    return [
        f"{source_kind}{i}->{target_kind}{j}"
        for source_kind, target_kind in CONNECTION_KINDS
        for i in range(n_paths)
        for j in range(n_paths)
        if i != j
    ]


def parse_connection(name: str) -> tuple[str, int, str, int]:
    """``"enc0->dec1"`` -> ``("enc", 0, "dec", 1)``; the name must already be known to be valid."""
    match = CONNECTION_PATTERN.match(name)
    assert match is not None, name
    return match.group(1), int(match.group(2)), match.group(3), int(match.group(4))


def per_stage(value: IntOrSeq, n_stages: int, what: str) -> list:
    """Broadcast an int to ``n_stages`` entries, or check a sequence has ``n_stages`` entries."""
    if isinstance(value, int):
        return [value] * n_stages
    value = list(value)
    if len(value) != n_stages:
        raise ValueError(f"{what} needs {n_stages} entries (one per stage), got {len(value)}: {value}")
    return value


def n_voxels(size: Sequence[int]) -> np.int64:
    return np.prod(list(size), dtype=np.int64)


def stage_output_sizes(input_size: Sequence[int], strides: Sequence[Sequence[int]]) -> list[list[int]]:
    """Spatial size of every encoder stage's output (same padding, ``size // stride`` per stage)."""
    sizes = []
    size = list(input_size)
    for stride in strides:
        size = [edge // step for edge, step in zip(size, stride)]
        sizes.append(size)
    return sizes


class HyperConnectedPart(nn.Module):
    """Base of encoder and decoder: knows which built hyper-connections it consumes and which are active."""

    def __init__(self, n_paths: int) -> None:
        super().__init__()
        self.n_paths = n_paths
        #: name -> active flag, for the connections this part consumes (a plain dict: not in the state_dict).
        self.active: dict[str, bool] = {}

    def _register(self, names: Sequence[str]) -> None:
        for name in names:
            self.active[name] = True

    def _incoming(
        self, features: Sequence[Tensor], target: int, sources: Sequence[int], source_kind: str, target_kind: str
    ) -> list[Tensor]:
        """Features of the source paths that ``target`` concatenates; zeros for an inactive connection.

        ``features[i]`` is (B, C, *spatial) of path ``i``; returns one such tensor per source, in source order.
        """
        return [
            features[i] if self.active[f"{source_kind}{i}->{target_kind}{target}"] else torch.zeros_like(features[i])
            for i in sources
        ]
