#!/usr/bin/env python
"""The CPU Table-1 protocol: the paper's whole U-Net ablation on cropped phantoms, sized for 2 CPU cores.

One command, resumable (re-run it to continue where it stopped; finished trainings are skipped, interrupted ones
continue from ``checkpoint_latest.pth``):

    nice -n 10 python scripts/cpu_table1.py --workdir work_dirs/table1 --docs docs/table1_cpu

1. phantoms: ``nnunet-hpn phantom`` (:data:`N_CASES` cases, seed :data:`PHANTOM_SEED`, full 48×96×96 grid);
2. ``nnunet-hpn convert --register --crop-to-label`` :data:`CROP_MARGIN_MM` (venous registered onto arterial on the
   full grid, then every case cut to its label's box + margin: an oracle ROI, so that the budget goes to the
   pancreas region);
3. ``scripts/run_ablation.py`` with one preset (:data:`PRESET`): ``HPNPlanner``, CPU configuration ``3d_cpu``
   (patch 32³, features 8-64, batch 2), PDAC-stratified 3-fold split (seed 12345), the same budget and training
   seed for every row, no test-time mirroring; rows in the paper's order, one row at a time (:data:`ORDER`);
4. after each row: ``table1.md`` of every finished row, and ``nnunet-hpn report`` (mean ± std, HD95, NSD, paired
   Wilcoxon p against HPN-union and against HPN, PDAC missed by both single-phase models and rescued, box plots,
   overlays) into ``--docs`` (``report_vs_hpn_union/``, ``report_vs_hpn/``), with ``rows.json``: wall time and date
   of every row.

The generator's parameters (``nnunet_hpn.phantom``: SUBTLE_IN_BOTH_SHARE, SUBTLE_CONTRAST_HU, TEXTURE_SD_HU, ...)
and this preset were frozen before the first training of the table.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from nnunet_hpn.demo import console_command

N_CASES = 24
#: seed of the phantoms: 8 of its 24 cases are subtle in both phases (33 %), inside the documented 25-35 %
PHANTOM_SEED = 8
CROP_MARGIN_MM = 20.0
DATASET_ID = 510
DATASET_NAME = "PancreasROITable1"
CONFIGURATION = "3d_cpu"
#: run_ablation.py arguments shared by every row: 80 epochs × 25 iterations = 2,000 iterations per training
PRESET: tuple[str, ...] = ("--backbones", "unet", "--folds", "0", "1", "2", "-c", CONFIGURATION,
                           "--cpu-config", "32", "32", "32", "--epochs", "80", "--iterations", "25",
                           "--val-iterations", "2", "--save-every", "5", "--training-seed", "1234", "--no-tta",
                           "--device", "cpu", "--seed", "12345", "-np", "2")
#: rows in the order they are produced (the paper's, then the warm-up row)
ORDER: tuple[str, ...] = ("arterial", "venous", "fusion", "early_fusion", "hypernet", "hypernet_aug", "hpn",
                          "hpn_virtual", "hpn_union", "hpn_warmup")
#: report references: every row against HPN-union and against HPN (when they exist)
REFERENCES: tuple[str, ...] = ("hpn_union", "hpn")

SCRIPTS = Path(__file__).resolve().parent


def nnunet_env(workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({name: str(workdir / name) for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")})
    env.setdefault("nnUNet_compile", "f")
    return env


def run(command: Sequence[str], env: dict[str, str]) -> None:
    print("$ " + " ".join(command), flush=True)
    subprocess.run(list(command), env=env, check=True)


def prepare_dataset(workdir: Path, env: dict[str, str]) -> Path:
    """Phantoms and the cropped, registered raw dataset (skipped when present)."""
    raw = workdir / "nnUNet_raw" / f"Dataset{DATASET_ID:03d}_{DATASET_NAME}"
    if (raw / "dataset.json").is_file():
        print(f"dataset {raw} exists", flush=True)
        return raw
    phantoms = workdir / "phantoms"
    if not (phantoms / "phantoms.json").is_file():
        run([console_command("nnunet-hpn"), "phantom", str(phantoms), "--cases", str(N_CASES),
             "--seed", str(PHANTOM_SEED)], env)
    run([console_command("nnunet-hpn"), "convert", str(phantoms), "--dataset-id", str(DATASET_ID),
         "--name", DATASET_NAME, "--raw-root", env["nnUNet_raw"], "--register", "--crop-to-label",
         f"{CROP_MARGIN_MM:g}"], env)
    return raw


def row_finished(workdir: Path, row: str) -> bool:
    return (workdir / "ablation" / "unet" / row / "summary.json").is_file()


def report(workdir: Path, raw: Path, rows: list[str], docs: Path, env: dict[str, str]) -> None:
    """``nnunet-hpn report`` of the finished rows against each available reference, into ``docs``; before HPN
    exists, one interim report against the last finished row (``report_interim/``, removed once HPN is there)."""
    if len(rows) < 2:  # a report compares methods; table1.md holds the first row
        shutil.copyfile(workdir / "ablation" / "table1.md", docs / "table1.md")
        return
    runs = [f"{row}={workdir / 'ablation' / 'unet' / row}" for row in rows]
    references = [reference for reference in REFERENCES if reference in rows]
    interim = docs / "report_interim"
    targets = [(reference, docs / f"report_vs_{reference}") for reference in references] or [(rows[-1], interim)]
    for reference, out in targets:
        single = (["--single-phase", "arterial", "venous"]
                  if {"arterial", "venous"} <= set(rows) and reference not in ("arterial", "venous") else [])
        try:
            run([console_command("nnunet-hpn"), "report", *runs, "--gt", str(raw / "labelsTr"), "--images",
                 str(raw / "imagesTr"), "--reference", reference, "--hpn", reference, *single, "-o", str(out)], env)
        except subprocess.CalledProcessError as error:  # the table goes on; the report is redone after the next row
            print(f"cpu_table1: report against {reference} failed (exit {error.returncode})", file=sys.stderr)
    if references and interim.is_dir():
        shutil.rmtree(interim)
    table = workdir / "ablation" / "table1.md"
    if table.is_file():
        shutil.copyfile(table, docs / "table1.md")
    write_by_kind(workdir, rows, docs)


#: kind of mass of a phantom case (phantoms.json), in the order of the breakdown table
KINDS: tuple[str, ...] = ("subtle in both phases", "iso-attenuating in one phase", "conspicuous")


def case_kinds(phantoms_json: Path) -> dict[str, str]:
    kinds = {}
    for case in json.loads(phantoms_json.read_text())["cases"]:
        kinds[case["case_id"]] = (KINDS[0] if case.get("mass_subtle_in_both") else
                                  KINDS[1] if case["mass_iso_attenuating"] else KINDS[2])
    return kinds


def write_by_kind(workdir: Path, rows: list[str], docs: Path) -> None:
    """``by_kind.md``: PDAC Dice (mean ± std, cases with Dice 0) per row and kind of mass, from a report's
    per_case.csv (every report holds every finished row)."""
    reports = sorted(docs.glob("report_*/per_case.csv"))
    if not reports:
        return
    kinds = case_kinds(workdir / "phantoms" / "phantoms.json")
    dice: dict[tuple[str, str], list[float]] = {}
    with reports[0].open() as stream:
        for record in csv.DictReader(stream):
            if record["target"] == "PDAC" and record["method"] in rows:
                dice.setdefault((record["method"], kinds[record["case"]]), []).append(100 * float(record["Dice"]))
    counts = {kind: sum(1 for value in kinds.values() if value == kind) for kind in KINDS}
    lines = ["# PDAC Dice (%) by kind of mass", "",
             "Mean ± population std over the cross-validation cases of each kind (missed: Dice 0); kinds from "
             "`phantoms.json` (nnunet_hpn/phantom.py).", "",
             "| Row | " + " | ".join(f"{kind} (n={counts[kind]})" for kind in KINDS) + " |",
             "|---|" + "---:|" * len(KINDS)]
    for row in rows:
        cells = []
        for kind in KINDS:
            values = np.asarray(dice.get((row, kind), []))
            cells.append(f"{values.mean():.1f} ± {values.std():.1f} (missed {int((values == 0).sum())})"
                         if len(values) else "–")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    (docs / "by_kind.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="work_dirs/table1", help="nnU-Net folders, phantoms, ablation output")
    parser.add_argument("--docs", default="docs/table1_cpu", help="where reports, table1.md and rows.json go")
    parser.add_argument("--rows", nargs="+", choices=ORDER, default=list(ORDER), help="default: all, in order")
    args = parser.parse_args(argv)
    workdir, docs = Path(args.workdir).resolve(), Path(args.docs).resolve()
    docs.mkdir(parents=True, exist_ok=True)
    env = nnunet_env(workdir)
    raw = prepare_dataset(workdir, env)
    log_path = docs / "rows.json"
    log = json.loads(log_path.read_text()) if log_path.is_file() else {}
    done: list[str] = []
    for row in [row for row in ORDER if row in args.rows]:
        started = time.monotonic()
        was_finished = row_finished(workdir, row)
        try:
            run([sys.executable, str(SCRIPTS / "run_ablation.py"), "-d", str(DATASET_ID), *PRESET,
                 "--rows", *done, row, "-o", str(workdir / "ablation")], env)
        except subprocess.CalledProcessError as error:
            print(f"cpu_table1: row {row} failed (exit {error.returncode}); re-run to resume", file=sys.stderr)
            return 1
        done.append(row)
        if not was_finished or row not in log:
            info = json.loads((workdir / "ablation" / "run_info.json").read_text())
            seconds = sum(entry["seconds"] for key, entry in info["trainings"].items()
                          if key.startswith(f"unet/{row}/"))
            log[row] = {"finished": datetime.datetime.now().isoformat(timespec="seconds"),
                        "training_seconds_recorded": round(seconds, 1),
                        "wall_seconds_this_call": round(time.monotonic() - started, 1),
                        "device": f"CPU ({os.cpu_count()} logical), {platform.processor() or platform.machine()}",
                        "budget": info["budget"]}
            log_path.write_text(json.dumps(log, indent=2) + "\n")
        report(workdir, raw, done, docs, env)
        print(f"cpu_table1: row {row} finished; rows so far: {' '.join(done)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
