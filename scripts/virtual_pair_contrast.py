#!/usr/bin/env python
"""What virtual pairs do to a lesion's contrast, per lesion kind of a phantom set (no training).

A virtual pair mixes the phases, x̃A = l·xA + (1 − l)·xB and x̃B = l·xB + (1 − l)·xA with l ~ Beta(0.4, 0.4), so a
lesion whose contrast against its organ is cA (arterial) and cV (venous) HU shows l·cA + (1 − l)·cV in the virtual
arterial channel and l·cV + (1 − l)·cA in the virtual venous one. A lesion dark in both phases (the paper's PDAC)
stays dark in both channels whatever l is; one bright arterially and dark portal-venously (the hepatocellular
carcinoma pattern of the liver preset) swaps its signs between the channels whenever l is below cV / (cV − cA).

For every lesion of the ``phantoms.json`` files given (``nnunet-hpn phantom`` writes one; both presets), and
:data:`N_DRAWS` draws of l, it prints per lesion kind: the number of lesions, their contrast ranges, the share with
opposite signs in the two phases, the share of virtual pairs whose arterial channel shows the lesion with the
opposite sign of the real arterial phase, and the share in which neither channel has :data:`FAINT_HU` HU of contrast.

    python scripts/virtual_pair_contrast.py work_dirs/liver/phantoms/phantoms.json \\
        work_dirs/table1/phantoms/phantoms.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from nnunet_hpn.augment.virtual_pairs import DEFAULT_ALPHA

#: draws of the mixing weight l per lesion (seeded: the table is the same on every run)
N_DRAWS = 100_000
#: contrast (HU) below which a lesion counts as faint in a channel
FAINT_HU = 10.0
#: contrast (HU) below which a phase counts as showing no lesion (sign undefined)
ISO_HU = 3.0


def lesion_contrasts(phantoms: dict) -> Iterator[tuple[str, float, float]]:
    """(kind, arterial contrast, venous contrast) of every lesion of a ``phantoms.json`` (HU against the organ)."""
    for case in phantoms["cases"]:
        if case.get("preset") == "liver":
            for lesion in case["lesions"]:
                yield (f"liver: {lesion['kind']}", lesion["contrast_hu"]["arterial"],
                       lesion["contrast_hu"]["venous"])
        else:
            kind = ("iso-attenuating in one phase" if case["mass_iso_attenuating"] else
                    "subtle in both (clear in the pair)" if case["mass_subtle_in_both"] else "hypo in both")
            yield (f"pancreas: {kind}", *(case["mass_hu"][phase] - case["parenchyma_hu"][phase]
                                          for phase in ("arterial", "venous")))


def virtual_shares(arterial: float, venous: float, mixing: np.ndarray) -> tuple[float, float]:
    """(share of draws whose virtual arterial channel has the opposite sign of the arterial contrast — NaN where
    the arterial phase shows no lesion —, share of draws faint in both channels) for the weights ``mixing`` (l)."""
    virtual_a = mixing * arterial + (1 - mixing) * venous
    virtual_b = mixing * venous + (1 - mixing) * arterial
    reversed_share = (float(np.mean(np.sign(virtual_a) != np.sign(arterial)))
                      if abs(arterial) > ISO_HU else float("nan"))
    return reversed_share, float(np.mean(np.maximum(np.abs(virtual_a), np.abs(virtual_b)) < FAINT_HU))


def table(paths: Sequence[Path]) -> list[str]:
    """Markdown table, one row per lesion kind of the phantom sets ``paths``."""
    mixing = np.random.default_rng(0).beta(DEFAULT_ALPHA, DEFAULT_ALPHA, N_DRAWS)
    kinds: dict[str, list[tuple[float, ...]]] = {}
    for path in paths:
        for kind, arterial, venous in lesion_contrasts(json.loads(Path(path).read_text(encoding="utf-8"))):
            opposite = abs(arterial) > ISO_HU and abs(venous) > ISO_HU and np.sign(arterial) != np.sign(venous)
            kinds.setdefault(kind, []).append((arterial, venous, float(opposite),
                                               *virtual_shares(arterial, venous, mixing)))
    lines = [f"| lesion kind | lesions | arterial contrast HU | venous contrast HU | opposite signs | virtual "
             f"arterial channel reversed | faint (< {FAINT_HU:g} HU) in both virtual channels |",
             "|---|---:|---|---|---:|---:|---:|"]
    for kind, values in kinds.items():
        v = np.array(values)
        reversed_share = np.nanmean(v[:, 3]) if np.any(np.isfinite(v[:, 3])) else float("nan")
        lines.append(f"| {kind} | {len(v)} | {v[:, 0].min():+.0f} … {v[:, 0].max():+.0f} | "
                     f"{v[:, 1].min():+.0f} … {v[:, 1].max():+.0f} | {v[:, 2].mean():.0%} | "
                     f"{'–' if np.isnan(reversed_share) else f'{reversed_share:.0%}'} | {v[:, 4].mean():.0%} |")
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("phantoms", nargs="+", type=Path, help="phantoms.json files of nnunet-hpn phantom")
    args = parser.parse_args(argv)
    print("\n".join(table(args.phantoms)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
