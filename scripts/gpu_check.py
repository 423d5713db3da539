#!/usr/bin/env python
"""The one prepared GPU check (``scripts/gpu_check.sh`` runs it; see ../shared/device/README.md).

Everything it measures lands under ``--out`` (the device tool's ``$OUT``), each step bounded by its own time limit so
that the whole check finishes in about 8 minutes on one GPU:

1. ``benchmark``: ``scripts/benchmark.py`` on CUDA (training-step and inference time ratios against nnU-Net, fp16
   autocast with the fp32 pairing loss, ``torch.compile``, host-device syncs per step, peak memory of the planned
   HPN for the 8 GB and a larger planner target) -> ``benchmark.md``;
2. ``train``: phantoms -> ``nnunet-hpn convert`` -> stock ``nnUNetv2_plan_and_preprocess -pl HPNPlanner`` -> stock
   ``nnUNetv2_train D 3d_fullres 0 -tr HPNTrainer`` for a short budget (``HPN_*`` variables) -> the training log's
   ``train_loss`` per epoch, which must stay finite and fall;
3. ``predict``: stock ``nnUNetv2_predict`` with that model on two cases -> one label map each.

``gpu_check.json`` holds every step's exit status, seconds and checks; the exit status is 0 only if all passed.
``--dry-run``: the same steps on the CPU at tiny sizes (a configuration from ``nnunet-hpn cpu-config``, two epochs
of two iterations, too short for the loss to have to fall), as the test suite runs it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATASET_ID = 977
DATASET_NAME = "HPNGPUCheck"
#: stock console entry points, run as ``python -c`` so that no console script has to be installed
ENTRY_POINTS = {
    "nnUNetv2_plan_and_preprocess": "nnunetv2.experiment_planning.plan_and_preprocess_entrypoints:"
                                    "plan_and_preprocess_entry",
    "nnUNetv2_train": "nnunetv2.run.run_training:run_training_entry",
    "nnUNetv2_predict": "nnunetv2.inference.predict_from_raw_data:predict_entry_point",
}
#: (cases, epochs, iterations per epoch, seconds allowed per step) for the GPU run and the dry run
SIZES = {"gpu": dict(cases=10, epochs=4, iterations=25, limits={"benchmark": 240, "train": 180, "predict": 90}),
         "dry": dict(cases=5, epochs=2, iterations=2, limits={"benchmark": 240, "train": 300, "predict": 120})}


def stock_command(name: str, *args: str) -> list[str]:
    """``name`` (a stock nnU-Net command) as a ``python -c`` call of its entry point with ``args``."""
    module, function = ENTRY_POINTS[name].split(":")
    code = f"import sys; sys.argv[0] = {name!r}; from {module} import {function}; sys.exit({function}())"
    return [sys.executable, "-c", code, *args]


def hpn_command(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from nnunet_hpn.cli import main; sys.exit(main())", *args]


def run_step(command: list[str], log: Path, env: dict, timeout: float) -> tuple[int, float]:
    """Run ``command`` with its output appended to ``log``; returns (exit status, seconds); 124 on time-out."""
    start = time.monotonic()
    with log.open("a") as handle:
        handle.write(f"$ {' '.join(command)}\n")
        handle.flush()
        try:
            code = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env, timeout=timeout,
                                  cwd=ROOT).returncode
        except subprocess.TimeoutExpired:
            code = 124
    return code, round(time.monotonic() - start, 1)


def train_losses(training_log: Path) -> list[float]:
    """``train_loss`` per epoch from nnU-Net's ``training_log_*.txt``."""
    return [float(value) for value in re.findall(r"train_loss (\S+)", training_log.read_text())]


def environment_summary(device: str) -> dict:
    import torch

    summary = {"python": platform.python_version(), "torch": torch.__version__, "device": device,
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if device == "cuda":
        summary.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_check_out")))
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "hpn_gpu_check_work",
                        help="nnU-Net folders and phantoms (not under --out: only logs and results travel back)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes (what the test suite runs)")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    sizes = SIZES["dry" if args.dry_run else "gpu"]
    device = "cpu" if args.dry_run else "cuda"
    work = args.work.resolve()
    env = dict(os.environ, nnUNet_raw=str(work / "raw"), nnUNet_preprocessed=str(work / "preprocessed"),
               nnUNet_results=str(work / "results"), HPN_NUM_EPOCHS=str(sizes["epochs"]),
               HPN_ITERATIONS_PER_EPOCH=str(sizes["iterations"]), HPN_VAL_ITERATIONS_PER_EPOCH="2")
    env.setdefault("nnUNet_compile", "f")
    report: dict = {"environment": environment_summary(device), "steps": {}}
    limits = sizes["limits"]

    # 1. benchmark
    benchmark = [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--device", device, "--no-doc"]
    benchmark += (["--patch", "16", "--features", "4", "16", "--repeats", "1", "--warmup", "0", "--case", "16", "32",
                   "32", "--models", "nnunet", "hpn_unet", "--no-memory"] if args.dry_run else
                  ["--planner-targets", "8", "40", "--repeats", "3", "--inference-repeats", "1"])
    code, seconds = run_step(benchmark, out / "benchmark.md", env, limits["benchmark"])
    report["steps"]["benchmark"] = {"rc": code, "seconds": seconds, "ok": code == 0}

    # 2. stock training
    log = out / "train.log"
    configuration = "3d_cpu" if args.dry_run else "3d_fullres"
    start = time.monotonic()
    setup = [hpn_command("phantom", str(work / "phantoms"), "--cases", str(sizes["cases"]), "--seed", "3"),
             hpn_command("convert", str(work / "phantoms"), "-d", str(DATASET_ID), "--name", DATASET_NAME),
             stock_command("nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-pl", "HPNPlanner", "-c",
                           "3d_fullres", "-np", "2")]
    if args.dry_run:
        setup.append(hpn_command("cpu-config", "-d", str(DATASET_ID), "-c", configuration, "--patch-size", "16", "32",
                                 "32", "--base-features", "4", "--max-features", "16"))
    setup.append(stock_command("nnUNetv2_train", str(DATASET_ID), configuration, "0", "-tr", "HPNTrainer", "-p",
                               "nnUNetHPNPlans", "-device", device))
    code = 0
    for command in setup:
        remaining = limits["train"] - (time.monotonic() - start)
        code, _ = run_step(command, log, env, max(remaining, 1))
        if code != 0:
            break
    fold = work / "results" / f"Dataset{DATASET_ID}_{DATASET_NAME}" / f"HPNTrainer__nnUNetHPNPlans__{configuration}" \
        / "fold_0"
    logs = sorted(fold.glob("training_log_*.txt"))
    losses = train_losses(logs[-1]) if logs else []
    finite = bool(losses) and all(math.isfinite(value) for value in losses)
    falls = len(losses) >= 2 and losses[-1] < losses[0]
    report["steps"]["train"] = {"rc": code, "seconds": round(time.monotonic() - start, 1), "train_loss": losses,
                                "finite": finite, "falls": falls,
                                "ok": code == 0 and finite and (falls or args.dry_run)
                                and (fold / "checkpoint_final.pth").is_file()}

    # 3. stock prediction with that model
    images = work / "raw" / f"Dataset{DATASET_ID}_{DATASET_NAME}" / "imagesTr"
    cases = sorted({path.name.rsplit("_", 1)[0] for path in images.glob("*.nii.gz")})[:2] if images.is_dir() else []
    subset = out / "predict_input"
    subset.mkdir(exist_ok=True)
    for case in cases:
        for channel in images.glob(f"{case}_*.nii.gz"):
            target = subset / channel.name
            if not target.exists():
                target.symlink_to(channel)
    predictions = out / "predictions"
    code, seconds = run_step(stock_command("nnUNetv2_predict", "-i", str(subset), "-o", str(predictions), "-d",
                                           str(DATASET_ID), "-c", configuration, "-f", "0", "-tr", "HPNTrainer",
                                           "-p", "nnUNetHPNPlans", "-device", device, "--disable_tta", "-npp", "1",
                                           "-nps", "1"), out / "predict.log", env, limits["predict"])
    written = sorted(path.name for path in predictions.glob("*.nii.gz")) if predictions.is_dir() else []
    report["steps"]["predict"] = {"rc": code, "seconds": seconds, "label_maps": written,
                                  "ok": code == 0 and bool(cases) and len(written) == len(cases)}

    report["ok"] = all(step["ok"] for step in report["steps"].values())
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
