"""Dice with all phases vs each phase missing, for HPN trained with and without phase dropout (CPU, phantoms).

Steps (every nnU-Net step is the stock command, printed before it runs; finished steps are skipped on a rerun):

1. dual-phase phantoms (``--cases``, the last ``--held-out`` without labels -> imagesTs), nnU-Net raw dataset;
2. ``nnUNetv2_plan_and_preprocess -pl HPNPlanner``, the demo's CPU configuration (patch 32³);
3. ``nnUNetv2_train`` fold 0 (the same split for both) with each trainer of ``--trainers``
   (default: HPNTrainer_demo and HPNTrainer_phasedropout_demo, the demo's recipe; --epochs sets the length);
4. input folders: all phases, and each phase missing (filled as ``nnunet_hpn.pipeline.missing_phase`` documents: a
   constant 0 image, exactly 0 after normalization; ``hpn_experiments.missing_phase``);
5. ``nnUNetv2_predict`` of every input folder with each model right after its training, Dice per target with
   ``nnunet_hpn.evaluate.metrics``;
6. ``missing_phase.md`` (Markdown table with the budget) and ``missing_phase.json`` in ``--workdir``, rewritten after
   every model (a stopped run keeps the finished models' rows).

    python scripts/missing_phase_experiment.py --workdir mp_work        # ~35 min on 2 CPU cores
"""
import argparse
import json
import os
import time
import warnings
from pathlib import Path
from typing import Dict, List

from hpn_experiments.commands import nnunet_env, run_command
from hpn_experiments.missing_phase import write_input_folder_with_missing_phases
from nnunet_hpn.io.publish import write_text_atomically
from nnunet_hpn.pipeline.convert import convert_cases
from nnunet_hpn.demo import DEMO_CONFIGURATION, DEMO_PATCH_SIZE
from nnunet_hpn.evaluate.metrics import TARGETS, evaluate_folders
from nnunet_hpn.pipeline.missing_phase import MissingPhaseWarning
from nnunet_hpn.phantom import write_phantom_cases
from nnunet_hpn.phases import read_channel_names
from nnunet_hpn.nnunet.planners.hpn_planner import HPN_PLANS_NAME
from nnunet_hpn.nnunet.plans_tools import add_small_configuration

DATASET_ID = 503
DATASET_NAME = "PancreasMissingPhase"
DEFAULT_TRAINERS = ("HPNTrainer_demo", "HPNTrainer_phasedropout_demo")


def input_conditions(channel_names: List[str]) -> Dict[str, List[str]]:
    """Condition name -> missing phases: all phases, then each phase missing."""
    conditions = {"all phases": []}
    conditions.update({f"{name} missing": [name] for name in channel_names})
    return conditions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="missing_phase_work")
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--held-out", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trainers", nargs="+", default=list(DEFAULT_TRAINERS))
    parser.add_argument("--shape", type=int, nargs=3, default=(48, 96, 96), help="phantom size z y x")
    parser.add_argument("--epochs", type=int, default=None,
                        help="training length of every trainer (HPN_NUM_EPOCHS; default: the trainers' own, 18)")
    args = parser.parse_args()

    started = time.time()
    workdir = Path(args.workdir).resolve()
    # the demo's environment: 2 worker processes, no torch.compile
    env = nnunet_env(workdir, settings={"nnUNet_def_n_proc": "2", "nnUNet_compile": "f"},
                     defaults={"nnUNet_n_proc_DA": "2", "OMP_NUM_THREADS": "2"})
    if args.epochs is not None:
        env["HPN_NUM_EPOCHS"] = str(args.epochs)
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        Path(env[key]).mkdir(parents=True, exist_ok=True)
    os.environ.update({key: env[key] for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")})
    dataset = f"Dataset{DATASET_ID:03d}_{DATASET_NAME}"
    raw = Path(env["nnUNet_raw"]) / dataset
    truth_dir = workdir / "held_out_labels"
    timings: Dict[str, float] = {}

    if not (raw / "dataset.json").is_file():
        phantoms = workdir / "phantoms"
        cases = write_phantom_cases(phantoms, args.cases, seed=args.seed, shape_zyx=tuple(args.shape))
        truth_dir.mkdir(exist_ok=True)
        for case in cases[-args.held_out:]:
            (phantoms / case / "label.nii.gz").rename(truth_dir / f"{case}.nii.gz")
        convert_cases(phantoms, DATASET_ID, DATASET_NAME, raw_root=Path(env["nnUNet_raw"]))
    channel_names = read_channel_names(raw / "dataset.json")

    plans_file = Path(env["nnUNet_preprocessed"]) / dataset / f"{HPN_PLANS_NAME}.json"
    if not plans_file.is_file() or DEMO_CONFIGURATION not in json.loads(plans_file.read_text())["configurations"]:
        timings["plan and preprocess"] = run_command(
            ["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-pl", "HPNPlanner", "-c", "3d_fullres", "-np",
             "2", "-npfp", "2"], env, step="planning and preprocessing")
        add_small_configuration(plans_file, DEMO_CONFIGURATION, patch_size=DEMO_PATCH_SIZE)

    conditions = input_conditions(channel_names)
    inputs = workdir / "inputs"
    for condition, missing in conditions.items():
        folder = inputs / condition.replace(" ", "_")
        if missing and not folder.is_dir():
            with warnings.catch_warnings():
                warnings.simplefilter("always", MissingPhaseWarning)
                write_input_folder_with_missing_phases(raw / "imagesTs", folder, channel_names, missing)

    summary_file = workdir / "missing_phase.json"
    if summary_file.is_file():  # timings of earlier, interrupted runs
        timings = {**json.loads(summary_file.read_text()).get("timings_s", {}), **timings}
    results = Path(env["nnUNet_results"]) / dataset
    table: Dict[str, Dict[str, dict]] = {}
    for trainer in args.trainers:  # train, predict, write the table so far: a stopped run leaves whole rows
        fold_dir = results / f"{trainer}__{HPN_PLANS_NAME}__{DEMO_CONFIGURATION}" / "fold_0"
        if not (fold_dir / "checkpoint_final.pth").is_file():
            train = ["nnUNetv2_train", str(DATASET_ID), DEMO_CONFIGURATION, "0", "-tr", trainer, "-p",
                     HPN_PLANS_NAME, "-device", "cpu"]
            if (fold_dir / "checkpoint_latest.pth").is_file():
                train.append("--c")
            timings[f"train {trainer}"] = run_command(train, env, step=f"training {trainer} (fold 0, CPU)")
        table[trainer] = {}
        for condition, missing in conditions.items():
            folder = raw / "imagesTs" if not missing else inputs / condition.replace(" ", "_")
            out = workdir / "predictions" / trainer / condition.replace(" ", "_")
            if not (out / "predict_from_raw_data_args.json").is_file():
                timings[f"predict {trainer} {condition}"] = run_command(
                    ["nnUNetv2_predict", "-i", str(folder), "-o", str(out), "-d", str(DATASET_ID), "-c",
                     DEMO_CONFIGURATION, "-tr", trainer, "-p", HPN_PLANS_NAME, "-f", "0", "-device", "cpu", "-npp",
                     "1", "-nps", "1"], env, step=f"prediction, {trainer}, {condition}")
            result = evaluate_folders(out, truth_dir, surface=False, progress=False)
            summary = result.to_json()
            table[trainer][condition] = {"mean": summary["mean"], "std": summary["std"], "missed": summary["missed"],
                                         "present": summary["present"], "n": result.n_cases,
                                         "per_case": summary["per_case"]}
        write_table(workdir, table, timings, channel_names, args, started)


def write_table(workdir: Path, table: Dict[str, Dict[str, dict]], timings: Dict[str, float],
                channel_names: List[str], args: argparse.Namespace, started: float) -> None:
    """``missing_phase.md`` (budget line + Markdown table) and ``missing_phase.json``; printed too."""
    header = ("| model (trainer) | input | " + " | ".join(f"{t} Dice % (mean ± std)" for t in TARGETS)
              + " | " + " | ".join(f"{t} missed" for t in TARGETS) + " |")
    lines = [header, "|" + "---|" * 2 + "---:|" * (2 * len(TARGETS))]
    for trainer, rows in table.items():
        for condition, row in rows.items():
            dice = " | ".join(f"{100 * row['mean'][t]:.2f} ± {100 * row['std'][t]:.2f}" for t in TARGETS)
            missed = " | ".join(f"{row['missed'][t]}/{row['present'][t]}" for t in TARGETS)
            lines.append(f"| {trainer} | {condition} | {dice} | {missed} |")
    budget = (f"{args.cases} phantom cases (shape {'×'.join(map(str, args.shape))}, seed {args.seed}), "
              f"{args.held_out} held out; fold 0 of nnU-Net's split of the other {args.cases - args.held_out}; "
              f"configuration {DEMO_CONFIGURATION} (patch {'×'.join(map(str, DEMO_PATCH_SIZE))}); "
              f"{args.epochs or 18} epochs × 25 iterations; trainers "
              f"{', '.join(table)}; CPU; wall time {(time.time() - started) / 60:.1f} min this run")
    markdown = budget + "\n\n" + "\n".join(lines) + "\n"
    write_text_atomically(workdir / "missing_phase.md", markdown)
    write_text_atomically(workdir / "missing_phase.json", json.dumps(
        {"budget": budget, "phases": channel_names, "timings_s": timings, "table": table}, indent=2))
    print("\n" + markdown, flush=True)

if __name__ == "__main__":
    main()
