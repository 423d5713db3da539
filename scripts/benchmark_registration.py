#!/usr/bin/env python
"""Registration accuracy and time: no registration / affine only / demons, on pairs with a known misalignment.

Pairs (fixed = the arterial-like image with its pancreas label; moving = the same anatomy misaligned):

* ``phantom``: ``nnunet_hpn.phantom`` cases; moving = the venous phase (already deformed by the phantom's own smooth
  field, different contrast per organ) with its ``label_venous``, further deformed by a known smooth field (max
  ``--deformation-mm``), shifted by ``--shift-mm``, rotated by ``--rotation-deg`` and resampled onto a grid with
  other spacing, y-flipped direction (``hpn_experiments.misalignment.misaligned_copy``).
* ``real-ct``: the TotalSegmentator example CT (``example_ct.nii.gz``, native, 3 mm) with the pancreas of
  ``example_seg_fast_force_split.nii.gz`` (label 7, a model output); moving = the same CT through the same kind of
  known misalignment, plus Gaussian noise (``--noise-hu``) so the two are not the same samples.
* ``real-ct-clinical``: as ``real-ct`` but the CT first resampled to a clinical grid (0.8 x 0.8 x 2.5 mm, widened
  with air to at least 512 x 512 x 150 voxels) - the size the 30 s / 4 GB target is about.

Phantom sets: one per smooth-field maximum (``--phantom-deformations-mm``, default 2, 4, 8 mm), and the 4 mm pairs
cut to their pancreas box + ``--crop-margin-mm`` (the CPU Table 1's data). Methods: every one of
``nnunet_hpn.pipeline.registration.METHODS`` (``syn`` needs antspyx).

Reported per set and method: pancreas (label > 0) mean surface distance, HD95 and Dice before/after (mm), cases
better than before, the smallest Jacobian determinant and folded share of the displacement, the wall-clock and CPU
seconds of ``register_to_reference`` per case (SimpleITK on ``--threads`` threads) and its peak resident memory.

    python scripts/benchmark_registration.py --append-to docs/BENCHMARKS.md
    python scripts/benchmark_registration.py --phantoms 1 --real-pairs 0 --clinical-pairs 0   # smoke test
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from hpn_experiments.misalignment import (CLINICAL_MIN_SIZE, CLINICAL_SPACING, REAL_DIR, clinical_pairs,
                                          misaligned_pair_side, real_pairs)
from nnunet_hpn.io.publish import write_text_atomically
from nnunet_hpn.phantom import generate_phantom_case, phantom_image
from nnunet_hpn.io.crop_boxes import crop_image, label_box
from nnunet_hpn.pipeline.registration import METHODS, RegistrationWarning, register_to_reference

PHANTOM_SPACING_ZYX = (2.5, 1.5, 1.5)


def _phantom_image(array: np.ndarray) -> sitk.Image:
    return phantom_image(array, PHANTOM_SPACING_ZYX)


def phantom_pairs(args: argparse.Namespace, deformation_mm: float, crop_margin_mm: float | None = None):
    """Phantom pairs with a ``deformation_mm`` field; with ``crop_margin_mm`` both images cut to their pancreas box
    plus that margin (what ``phantom --crop`` + ``convert --register`` registers)."""
    for index in range(args.phantoms):
        case = generate_phantom_case(args.seed, index, tuple(args.phantom_shape))
        moving, moving_label = misaligned_pair_side(_phantom_image(case.images["venous"]),
                                                    _phantom_image(case.labels["venous"]), args.seed * 1000 + index,
                                                    args, deformation_mm=deformation_mm)
        fixed, fixed_label = _phantom_image(case.images["arterial"]), _phantom_image(case.label)
        if crop_margin_mm is not None:
            fixed_box = label_box(fixed_label, crop_margin_mm, "fixed label")
            moving_box = label_box(moving_label, crop_margin_mm, "moving label")
            fixed, fixed_label = crop_image(fixed, fixed_box, "fixed"), crop_image(fixed_label, fixed_box, "label")
            moving, moving_label = (crop_image(moving, moving_box, "moving"),
                                    crop_image(moving_label, moving_box, "moving label"))
        yield f"phantom_{index:03d}", fixed, fixed_label, moving, moving_label


def _rss_mib() -> float:
    """Resident memory of this process (MiB), from /proc (0 where it is absent)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except (OSError, ValueError, IndexError):
        return 0.0


class PeakMemory:
    """Peak resident memory above the start, sampled every 20 ms in a thread while the block runs (MiB)."""

    def __enter__(self) -> "PeakMemory":
        self.start = self.peak = _rss_mib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss_mib())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mib())
        self.mib = self.peak - self.start


def run_pair(fixed, fixed_label, moving, moving_label, method: str) -> dict:
    started, cpu_started = time.perf_counter(), time.process_time()
    with warnings.catch_warnings(record=True) as caught, PeakMemory() as memory:
        warnings.simplefilter("always", RegistrationWarning)
        result = register_to_reference(fixed, moving, moving_label=moving_label, fixed_label=fixed_label,
                                       method=method, progress=False)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    return {"method": method, "seconds": seconds, "cpu_seconds": cpu_seconds, "peak_mib": memory.mib,
            "qc": result.qc, "warnings": [str(w.message) for w in caught], "fixed_size": list(fixed.GetSize()),
            "fixed_spacing": list(fixed.GetSpacing())}


def _mean_sd(values: list[float], digits: int = 2) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


def summarise(rows: list[dict]) -> list[str]:
    lines = ["| pairs | method | n | grid (x,y,z) | MSD before mm | MSD after mm | ≤ 0.5 mm | better | "
             "HD95 after mm | Dice before | Dice after | min Jacobian | folded voxels | wall s/case (max) | "
             "CPU s/case | peak MiB (max) |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for pair_set in dict.fromkeys(r["set"] for r in rows):
        for method in METHODS:
            chosen = [r for r in rows if r["set"] == pair_set and r["method"] == method]
            if not chosen:
                continue
            before = [r["qc"]["pancreas"]["before"] for r in chosen]
            after = [r["qc"]["pancreas"]["after"] for r in chosen]
            msd_before = [b["mean_surface_distance_mm"] for b in before]
            msd_after = [a["mean_surface_distance_mm"] for a in after]
            within = sum(m is not None and m <= 0.5 for m in msd_after)
            better = sum(a is not None and b is not None and a < b for a, b in zip(msd_after, msd_before))
            fields = [r["qc"].get("displacement") for r in chosen]
            jacobian = "–" if None in fields else f"{min(f['jacobian_min'] for f in fields):.3f}"
            folded = "–" if None in fields else f"{max(f['folded_fraction'] for f in fields):.2%}"
            size = "x".join(str(n) for n in chosen[0]["fixed_size"])
            lines.append(
                f"| {pair_set} | {method} | {len(chosen)} | {size} | {_mean_sd(msd_before)} | {_mean_sd(msd_after)} | "
                f"{within}/{len(chosen)} | {better if method != 'none' else '–'}/{len(chosen)} | "
                f"{_mean_sd([a['hd95_mm'] for a in after])} | "
                f"{_mean_sd([b['dice'] for b in before], 3)} | {_mean_sd([a['dice'] for a in after], 3)} | "
                f"{jacobian} | {folded} | "
                f"{np.mean([r['seconds'] for r in chosen]):.1f} ({max(r['seconds'] for r in chosen):.1f}) | "
                f"{np.mean([r['cpu_seconds'] for r in chosen]):.1f} | {max(r['peak_mib'] for r in chosen):.0f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phantoms", type=int, default=6)
    parser.add_argument("--phantom-shape", type=int, nargs=3, default=(48, 96, 96), metavar=("Z", "Y", "X"))
    parser.add_argument("--real-pairs", type=int, default=3, help="misaligned pairs made from the 3 mm real CT")
    parser.add_argument("--clinical-pairs", type=int, default=2, help="pairs from the real CT on a 0.8x0.8x2.5 grid")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--deformation-mm", type=float, default=4.0, help="real-CT pairs' smooth field (max mm)")
    parser.add_argument("--phantom-deformations-mm", type=float, nargs="+", default=(2.0, 4.0, 8.0),
                        help="one phantom set per smooth-field maximum")
    parser.add_argument("--crop-margin-mm", type=float, default=20.0,
                        help="the cropped phantom set (4 mm field): both images cut to the pancreas box + margin")
    parser.add_argument("--shift-mm", type=float, default=3.0)
    parser.add_argument("--rotation-deg", type=float, default=2.0)
    parser.add_argument("--noise-hu", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write every pair's QC here")
    parser.add_argument("--append-to", help="append the markdown section to this file")
    args = parser.parse_args(argv)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(args.threads)  # ANTs (syn) reads it

    sources = [(f"phantom {mm:g} mm", phantom_pairs(args, mm)) for mm in args.phantom_deformations_mm]
    if args.crop_margin_mm > 0:
        sources.append((f"phantom 4 mm, cropped +{args.crop_margin_mm:g} mm", phantom_pairs(args, 4.0,
                                                                                          args.crop_margin_mm)))
    if (args.real_pairs or args.clinical_pairs) and not REAL_DIR.is_dir():
        print(f"skipping the real-CT pairs: {REAL_DIR} is absent", file=sys.stderr)
    else:
        sources += [("real CT 3 mm", real_pairs(args)), ("real CT 0.8x0.8x2.5 mm", clinical_pairs(args))]
    # untimed warm-up: the first registration of a process imports the surface-distance code (MONAI, torch)
    warm = generate_phantom_case(args.seed, 0, (16, 32, 32))
    register_to_reference(_phantom_image(warm.images["arterial"]), _phantom_image(warm.images["venous"]),
                          fixed_label=_phantom_image(warm.label), moving_label=_phantom_image(warm.labels["venous"]),
                          method="none", progress=False)
    rows = []
    for pair_set, pairs in sources:
        for name, fixed, fixed_label, moving, moving_label in pairs:
            for method in args.methods:
                row = {"set": pair_set, "case": name, **run_pair(fixed, fixed_label, moving, moving_label, method)}
                rows.append(row)
                pancreas = row["qc"]["pancreas"]
                print(f"{pair_set:24s} {name:20s} {method:7s} MSD {pancreas['before']['mean_surface_distance_mm']} -> "
                      f"{pancreas['after']['mean_surface_distance_mm']} mm, Dice {pancreas['before']['dice']} -> "
                      f"{pancreas['after']['dice']}, {row['seconds']:.1f} s (CPU {row['cpu_seconds']:.1f} s)"
                      + (f"  warnings: {row['warnings']}" if row["warnings"] else ""), flush=True)

    load = os.getloadavg()
    command = "python " + " ".join(shlex.quote(a) for a in [f"scripts/{Path(__file__).name}", *sys.argv[1:]])
    section = [
        f"\n### {datetime.date.today().isoformat()}: registration, {platform.processor() or platform.machine()}\n",
        f"- device: CPU ({os.cpu_count()} logical CPUs), SimpleITK {sitk.Version.VersionString()} on "
        f"{args.threads} threads, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min) at "
        "the end",
        f"- command: `{command}`",
        f"- misalignment: smooth field max as in the set's name (phantoms) or {args.deformation_mm} mm (real CT) + "
        f"shift {args.shift_mm} mm + rotation {args.rotation_deg}°, other spacing and y-flipped direction; real-CT "
        f"moving images + {args.noise_hu} HU noise; the clinical-size pair's grid is the 3 mm CT resampled to "
        f"{CLINICAL_SPACING} mm and widened with air to at least {CLINICAL_MIN_SIZE} voxels",
        "- MSD = symmetric mean surface distance of the pancreas masks; better = cases with a lower MSD than before; "
        "min Jacobian / folded voxels: of the displacement written out, on the whole fixed grid; peak MiB: resident "
        "memory above the start of the registration",
        "",
        *summarise(rows),
        "",
    ]
    text = "\n".join(section)
    print(text)
    if args.json:
        write_text_atomically(Path(args.json), json.dumps(rows, indent=1, default=str))
    if args.append_to:
        path = Path(args.append_to)
        write_text_atomically(path, path.read_text(encoding="utf-8") + text)
        print(f"appended to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
