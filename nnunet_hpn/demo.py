"""``nnunet-hpn demo``: the whole HPN workflow on built-in phantoms, on CPU, with the stock nnU-Net commands."""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List

from nnunet_hpn.phases import PHASES, channel_file_name
from nnunet_hpn.nnunet.planners.hpn_planner import HPN_PLANS_NAME

if TYPE_CHECKING:  # nnU-Net's evaluation is imported only when the demo runs
    from nnunet_hpn.evaluate.metrics import EvaluationResult

DEMO_DATASET_ID = 501
DEMO_DATASET_NAME = "PancreasDualPhase"
DEMO_CONFIGURATION = "3d_cpu"
DEMO_PATCH_SIZE = (32, 32, 32)
DEMO_TRAINER = "HPNTrainer_demo"
N_HELD_OUT = 4
#: every case cut to its label's box plus this margin (oracle ROI): the CPU budget goes to the pancreas region
DEMO_CROP_MARGIN_MM = 10.0


def nnunet_env(workdir: Path) -> Dict[str, str]:
    """Environment for the child commands: nnU-Net's three folders inside ``workdir``, 2 worker processes."""
    env = dict(os.environ)
    env.update({
        "nnUNet_raw": str(workdir / "nnUNet_raw"),
        "nnUNet_preprocessed": str(workdir / "nnUNet_preprocessed"),
        "nnUNet_results": str(workdir / "nnUNet_results"),
        "nnUNet_def_n_proc": "2",
        "nnUNet_n_proc_DA": env.get("nnUNet_n_proc_DA", "2"),
        "nnUNet_compile": "f",
    })
    return env


def console_command(name: str) -> str:
    """A console script of this environment (next to the running interpreter), else from PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


def run_step(step: str, args: List[str], env: Dict[str, str]) -> float:
    """Runs a stock command, printed first and timed ("=== <step>: done in N s"); returns its wall time (s)."""
    print(f"\n=== {step}\n$ {' '.join(args)}", flush=True)
    start = time.time()
    subprocess.run(args, env=env, check=True)
    seconds = time.time() - start
    print(f"=== {step}: done in {seconds:.0f} s", flush=True)
    return seconds


def run_demo(workdir: Path, n_cases: int = 14, seed: int = 0) -> "EvaluationResult":
    """Phantoms cut to the pancreas region → conversion → planning/preprocessing → short HPN training → prediction
    of held-out cases → pasted back into the full images → Dice table and PNG overlays. Everything is written under
    ``workdir`` (replaced if it exists). Returns the evaluation result (on the crops)."""
    from nnunet_hpn.pipeline.convert import convert_cases
    from nnunet_hpn.io.crop_boxes import BOXES_FILE
    from nnunet_hpn.pipeline.crop import uncrop_folder
    from nnunet_hpn.evaluate.metrics import evaluate_folders, format_dice_table, write_summary
    from nnunet_hpn.evaluate.figures import save_overlay_from_files
    from nnunet_hpn.phantom import write_phantom_cases
    from nnunet_hpn.nnunet.plans_tools import add_small_configuration

    started = time.time()
    workdir = Path(workdir).resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    env = nnunet_env(workdir)
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        Path(env[key]).mkdir(parents=True)
    dataset = f"Dataset{DEMO_DATASET_ID:03d}_{DEMO_DATASET_NAME}"

    print(f"=== 1/6 phantoms: {n_cases} dual-phase cases ({N_HELD_OUT} held out) in {workdir / 'phantoms'}, cut to "
          f"the label's box + {DEMO_CROP_MARGIN_MM:g} mm (oracle ROI; full images in {workdir / 'phantoms_full'})")
    write_phantom_cases(workdir / "phantoms_full", n_cases, seed=seed)
    cases = write_phantom_cases(workdir / "phantoms", n_cases, seed=seed, crop_margin_mm=DEMO_CROP_MARGIN_MM)
    boxes_file = workdir / BOXES_FILE
    shutil.move(str(workdir / "phantoms" / BOXES_FILE), str(boxes_file))
    truth_dir = workdir / "held_out_labels"
    truth_dir.mkdir()
    for case in cases[-N_HELD_OUT:]:  # without label.nii.gz, conversion puts them into imagesTs
        shutil.move(str(workdir / "phantoms" / case / "label.nii.gz"), str(truth_dir / f"{case}.nii.gz"))

    print("=== 2/6 conversion to nnU-Net's raw format")
    raw_dataset = convert_cases(workdir / "phantoms", DEMO_DATASET_ID, DEMO_DATASET_NAME,
                                raw_root=Path(env["nnUNet_raw"]))

    run_step("3/6 planning and preprocessing with HPNPlanner",
             [console_command("nnUNetv2_plan_and_preprocess"), "-d", str(DEMO_DATASET_ID), "-pl", "HPNPlanner",
              "-c", "3d_fullres", "-np", "2", "-npfp", "2"], env)
    entry = add_small_configuration(Path(env["nnUNet_preprocessed"]) / dataset / f"{HPN_PLANS_NAME}.json",
                                    DEMO_CONFIGURATION, patch_size=DEMO_PATCH_SIZE)
    print(f"added CPU configuration '{DEMO_CONFIGURATION}': patch {entry['patch_size']}, features "
          f"{entry['architecture']['arch_kwargs']['features_per_stage']}, batch {entry['batch_size']}")

    run_step(f"4/6 training {DEMO_TRAINER} (fold 0, CPU)",
             [console_command("nnUNetv2_train"), str(DEMO_DATASET_ID), DEMO_CONFIGURATION, "0", "-tr", DEMO_TRAINER,
              "-p", HPN_PLANS_NAME, "-device", "cpu"], env)

    prediction_dir = workdir / "predictions"
    run_step("5/6 prediction of the held-out cases",
             [console_command("nnUNetv2_predict"), "-i", str(raw_dataset / "imagesTs"), "-o", str(prediction_dir),
              "-d", str(DEMO_DATASET_ID), "-c", DEMO_CONFIGURATION, "-tr", DEMO_TRAINER, "-p", HPN_PLANS_NAME,
              "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1"], env)

    full_prediction_dir = workdir / "predictions_full"
    uncrop_folder(prediction_dir, boxes_file, workdir / "phantoms_full", full_prediction_dir, progress=False)
    print(f"predictions pasted back into the full images: {full_prediction_dir}")

    print("\n=== 6/6 evaluation of the held-out cases")
    result = evaluate_folders(prediction_dir, truth_dir)
    write_summary(result, workdir / "summary.json")
    for case in cases[-N_HELD_OUT:]:
        phase_files = {phase: raw_dataset / "imagesTs" / channel_file_name(case, channel)
                       for channel, phase in enumerate(PHASES)}
        png = save_overlay_from_files(phase_files, truth_dir / f"{case}.nii.gz", prediction_dir / f"{case}.nii.gz",
                                      workdir / f"overlay_{case}.png", title=f"{case}: HPN ({DEMO_TRAINER})")
        print(f"overlay: {png}")
    print(f"summary: {workdir / 'summary.json'}")
    print(format_dice_table(result))
    print(f"demo finished in {(time.time() - started) / 60:.1f} min")
    return result
