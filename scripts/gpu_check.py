#!/usr/bin/env python
"""The one prepared GPU check (``scripts/gpu_check.sh`` runs it; see ../shared/device/README.md): one short run
that cannot come back empty.

Every measurement is appended to ``OUT/figures.jsonl`` the moment it exists (one JSON object per line, flushed and
synced), and ``OUT/gpu_check.json`` (the summary of the finished steps) is rewritten after every step, so a run cut
off at any point (a step's or the device's time limit, rc 124 / 137) leaves the figures of every finished step and
of every finished training epoch. Each step has its own time limit and the whole check a total one (``LIMITS``);
a step that would start with too little time left is recorded as skipped. The steps, most important first:

1. ``environment``: device, GPU, torch / CUDA / cuDNN / nnU-Net versions, ``nnUNet_compile``;
2. ``setup``: phantoms -> ``nnunet-hpn convert`` -> stock ``nnUNetv2_plan_and_preprocess -pl HPNPlanner``; the
   configuration trained below and HPNPlanner's memory estimate for it (network + pairing loss);
3. ``train_hpn``: stock ``nnUNetv2_train D C 0 -tr HPNTrainer -p nnUNetHPNPlans`` with ``nnUNet_compile=t``
   (nnU-Net's GPU default: the network is compiled once, in the first step) and a short budget (``HPN_*``
   variables, no test-time mirroring in the final validation); per epoch the train loss, the seconds of every
   training step and the peak memory so far; then whether the loss fell, seconds per iteration after the compiling
   epoch, and the planner's estimate beside the measured peak;
4. ``train_nnunet``: the same with ``EarlyFusionTrainer`` (nnU-Net's PlainConvUNet with the phases as input
   channels and nnU-Net's loss) on the same plans and data: HPN / nnU-Net ratios of step time and peak memory;
5. ``predict``: stock ``nnUNetv2_predict`` of one case with the HPN model (compiled too, as nnU-Net does; no
   mirroring: ``benchmark_eager`` times whole-case inference with and without it);
6. ``benchmark_eager``, ``benchmark_planner``, ``benchmark_compiled``: ``scripts/benchmark.py`` (all networks
   uncompiled; HPNPlanner at the 8 GB target on a pancreas-like fingerprint with its measured peak; nnU-Net and HPN
   compiled), one table row per figure line.

The training steps run nnU-Net's own entry point in a child process (``--instrumented``) that times
``nnUNetTrainer.train_step`` and reads the peak memory at each epoch's end (CUDA: ``max_memory_allocated``; CPU: peak
RSS of the process); the trainer itself is unchanged. ``--dry-run``: the same steps on the CPU at tiny sizes (a
``nnunet-hpn cpu-config`` configuration, 2 epochs of 2 iterations, training and its final validation uncompiled),
within the dry run's own limits; ``--no-limits`` switches every limit off (the test suite), ``--steps`` picks steps.
Exit status 0 only if every step passed.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

from hpn_experiments.commands import nnunet_env

ROOT = Path(__file__).resolve().parents[1]
DATASET_ID = 977
DATASET_NAME = "HPNGPUCheck"
PLANS = "nnUNetHPNPlans"
HPN_TRAINER, NNUNET_TRAINER = "HPNTrainer", "EarlyFusionTrainer"
FIGURES, SUMMARY = "figures.jsonl", "gpu_check.json"
#: stock console entry points, run as ``python -c`` so that no console script has to be installed
ENTRY_POINTS = {
    "nnUNetv2_plan_and_preprocess": "nnunetv2.experiment_planning.plan_and_preprocess_entrypoints:"
                                    "plan_and_preprocess_entry",
    "nnUNetv2_train": "nnunetv2.run.run_training:run_training_entry",
    "nnUNetv2_predict": "nnunetv2.inference.predict_from_raw_data:predict_entry_point",
}
#: seconds per step and in total (a step gets the smaller of its own and what is left of the total); the GPU total
#: leaves room for the wheel installation and start-up inside the device tool's 8 minutes; the dry run's are bounds
#: against a hung step, loose enough for a shared, heavily loaded 2-core machine
LIMITS = {
    "gpu": {"environment": 30, "setup": 90, "train_hpn": 180, "train_nnunet": 100, "predict": 60,
            "benchmark_eager": 90, "benchmark_planner": 60, "benchmark_compiled": 120, "total": 400},
    "dry": {"environment": 120, "setup": 900, "train_hpn": 600, "train_nnunet": 600, "predict": 600,
            "benchmark_eager": 900, "benchmark_planner": 600, "benchmark_compiled": 900, "total": 3600},
}
#: the steps after ``environment`` and ``setup``, most important first
STEPS = ("train_hpn", "train_nnunet", "predict", "benchmark_eager", "benchmark_planner", "benchmark_compiled")
#: a step is started only with at least this many seconds left of the total
MIN_STEP_SECONDS = 20
#: phantom cases, epochs, iterations per epoch, validation iterations per epoch
SIZES = {"gpu": dict(cases=10, epochs=4, iterations=25, val_iterations=2),
         "dry": dict(cases=5, epochs=2, iterations=2, val_iterations=1)}
#: scripts/benchmark.py arguments per benchmark step
BENCHMARKS = {
    "gpu": {"benchmark_eager": ["--compile", "off", "--models", "nnunet", "hpn_unet", "hypernet", "hpn_resdsn",
                                "hpn_equalcost", "--repeats", "3", "--inference-repeats", "1",
                                "--mirrored-repeats", "1", "--planner-targets"],
            "benchmark_planner": ["--compile", "off", "--models", "nnunet", "--repeats", "1", "--warmup", "0",
                                  "--no-inference", "--planner-targets", "8"],
            "benchmark_compiled": ["--compile", "on", "--models", "nnunet", "hpn_unet", "--repeats", "3",
                                   "--no-inference", "--planner-targets"]},
    "dry": {"benchmark_eager": ["--compile", "off", "--patch", "16", "--features", "4", "16", "--repeats", "1",
                                "--warmup", "0", "--case", "16", "32", "32", "--models", "nnunet", "hpn_unet",
                                "--no-memory", "--mirrored-repeats", "0"],
            "benchmark_planner": ["--compile", "off", "--patch", "16", "--features", "4", "16", "--repeats", "1",
                                  "--warmup", "0", "--models", "nnunet", "--no-memory", "--no-inference",
                                  "--planner-targets", "8"],
            "benchmark_compiled": ["--compile", "on", "--patch", "8", "16", "16", "--features", "2", "4",
                                   "--repeats", "1", "--warmup", "0", "--models", "nnunet", "--no-memory",
                                   "--no-inference"]},
}


# ------------------------------------------------------------------------------------------------------ figures
class Figures:
    """``figures.jsonl``: one JSON object per measurement, on disk (flushed and synced) as soon as it is written."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, step: str, what: str, **values: Any) -> dict:
        record = {"step": step, "what": what, "time": round(time.time(), 1), **values}
        line = json.dumps(record, default=str) + "\n"
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        return record

    def read(self, step: Optional[str] = None, what: Optional[str] = None) -> list[dict]:
        """The records written so far (a line cut off by a kill is skipped)."""
        records = []
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if (step is None or record.get("step") == step) and (what is None or record.get("what") == what):
                    records.append(record)
        return records


def peak_memory(device_type: str) -> dict:
    """Peak memory of this process so far: CUDA ``max_memory_allocated`` / ``max_memory_reserved``, or peak RSS."""
    import torch

    if device_type == "cuda":
        return {"kind": "cuda max_memory_allocated", "peak_mib": round(torch.cuda.max_memory_allocated() / 2 ** 20, 1),
                "reserved_mib": round(torch.cuda.max_memory_reserved() / 2 ** 20, 1)}  # the current device's
    return {"kind": "peak RSS of the training process", "peak_mib": round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


# ------------------------------------------------------------------------------------------ instrumented training
def instrumented_training(figures: Figures, step: str, argv: list[str]) -> int:
    """Stock ``nnUNetv2_train argv`` in this process, with every ``train_step`` timed and one figure line per epoch
    (train loss, step seconds, peak memory) and around the final validation."""
    from nnunetv2.run.run_training import run_training_entry
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from torch._dynamo import OptimizedModule

    from nnunet_hpn.nnunet.trainers.hpn_trainer import unwrap_network

    step_seconds: list[float] = []
    train_step, on_epoch_end = nnUNetTrainer.train_step, nnUNetTrainer.on_epoch_end
    validation = nnUNetTrainer.perform_actual_validation

    def timed_train_step(self: nnUNetTrainer, batch: dict) -> dict:
        start = time.perf_counter()
        result = train_step(self, batch)  # ends with loss.cpu(): the device's work is done
        step_seconds.append(time.perf_counter() - start)
        return result

    def reporting_epoch_end(self: nnUNetTrainer) -> None:
        network = self.network.module if self.is_ddp else self.network
        figures.write(step, "epoch", epoch=self.current_epoch,
                      train_loss=float(self.logger.get_value("train_losses", step=-1)),
                      val_loss=float(self.logger.get_value("val_losses", step=-1)),
                      step_s=[round(s, 4) for s in step_seconds], compiled=isinstance(network, OptimizedModule),
                      network=type(unwrap_network(network)).__name__, patch=list(self.configuration_manager.patch_size),
                      batch=int(self.batch_size), **peak_memory(self.device.type))
        step_seconds.clear()
        on_epoch_end(self)

    def reporting_validation(self: nnUNetTrainer, *args: Any, **kwargs: Any) -> Any:
        figures.write(step, "training_peak", **peak_memory(self.device.type))
        start = time.perf_counter()
        result = validation(self, *args, **kwargs)
        figures.write(step, "final_validation", seconds=round(time.perf_counter() - start, 1))
        return result

    nnUNetTrainer.train_step = timed_train_step
    nnUNetTrainer.on_epoch_end = reporting_epoch_end
    nnUNetTrainer.perform_actual_validation = reporting_validation
    sys.argv = ["nnUNetv2_train", *argv]
    return run_training_entry() or 0


# --------------------------------------------------------------------------------------------------- processes
def stock_command(name: str, *args: str) -> list[str]:
    """``name`` (a stock nnU-Net command) as a ``python -c`` call of its entry point with ``args``."""
    module, function = ENTRY_POINTS[name].split(":")
    code = f"import sys; sys.argv[0] = {name!r}; from {module} import {function}; sys.exit({function}())"
    return [sys.executable, "-c", code, *args]


def hpn_command(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from nnunet_hpn.cli import main; sys.exit(main())", *args]


def _descendants(pid: int) -> list[int]:
    """Process ids below ``pid`` (Linux /proc), children first."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def _terminate_tree(process: subprocess.Popen) -> None:
    """SIGTERM to the process and everything it started (nnU-Net's data-loader and preprocessing workers), then
    SIGKILL to whatever is left after 5 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in [process.pid, *_descendants(process.pid)]:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        try:
            process.wait(timeout=5)
            if sig == signal.SIGTERM and not _descendants(process.pid):
                return
        except subprocess.TimeoutExpired:
            pass


def run_logged(command: list[str], log: Path, env: dict, timeout: Optional[float]) -> int:
    """Run ``command`` with its output appended to ``log``; its exit status, or 124 after ``timeout`` seconds (the
    process and its workers are then ended)."""
    with log.open("a", encoding="utf-8") as handle:
        handle.write(f"$ {' '.join(command)}\n")
        handle.flush()
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _terminate_tree(process)
            handle.write(f"\n--- stopped after {timeout:.0f} s (step limit) ---\n")
            return 124
        except BaseException:
            _terminate_tree(process)
            raise


# ------------------------------------------------------------------------------------------------------- the check
class Check:
    """The steps of one run, their limits, and where their figures go."""

    def __init__(self, out: Path, work: Path, dry_run: bool, limits: bool) -> None:
        self.out, self.work, self.dry_run = out, work, dry_run
        self.kind = "dry" if dry_run else "gpu"
        self.limits = LIMITS[self.kind] if limits else None
        self.sizes = SIZES[self.kind]
        self.device = "cpu" if dry_run else "cuda"
        self.configuration = "3d_cpu" if dry_run else "3d_fullres"
        self.started = time.monotonic()
        self.figures = Figures(out / FIGURES)
        self.deadlines: dict[str, Optional[float]] = {}  # several commands of one step share its limit
        self.summary: dict[str, Any] = {"figures": FIGURES, "steps": {}}
        # nnUNet_compile: nnU-Net's default, on for training on CUDA and for prediction; HPN_NO_TTA: no mirroring in
        # the final validation and the prediction (1/8 of the passes)
        self.env = nnunet_env(settings={
            "nnUNet_raw": str(work / "raw"), "nnUNet_preprocessed": str(work / "preprocessed"),
            "nnUNet_results": str(work / "results"), "HPN_NUM_EPOCHS": str(self.sizes["epochs"]),
            "HPN_ITERATIONS_PER_EPOCH": str(self.sizes["iterations"]),
            "HPN_VAL_ITERATIONS_PER_EPOCH": str(self.sizes["val_iterations"]), "HPN_NO_TTA": "1"},
            defaults={"nnUNet_compile": "t"})
        os.environ.update({k: self.env[k] for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")})

    # -- bookkeeping
    def remaining(self) -> Optional[float]:
        if self.limits is None:
            return None
        return self.limits["total"] - (time.monotonic() - self.started)

    def limit(self, step: str) -> Optional[float]:
        if self.limits is None:
            return None
        return max(1.0, min(self.limits[step], self.remaining()))

    def run_step(self, name: str, function: Callable[[], dict]) -> None:
        """``function``'s summary of step ``name`` (plus rc-independent seconds), recorded at once; skipped when
        less than MIN_STEP_SECONDS are left."""
        remaining = self.remaining()
        if remaining is not None and remaining < MIN_STEP_SECONDS:
            result = {"ok": False, "skipped": f"{remaining:.0f} s left of the total limit"}
        else:
            start = time.monotonic()
            print(f"=== {name} (limit {self.limit(name) or 'none'} s)", flush=True)
            try:
                result = function()
            except Exception as error:  # one failed step must not cost the others their figures
                result = {"ok": False, "error": f"{type(error).__name__}: {error}"}
            result["seconds"] = round(time.monotonic() - start, 1)
        self.summary["steps"][name] = result
        self.figures.write(name, "step", **result)
        self.save_summary()
        print(f"=== {name}: {json.dumps(result, default=str)}", flush=True)

    def save_summary(self) -> None:
        from nnunet_hpn.io.publish import write_text_atomically

        self.summary["ok"] = bool(self.summary["steps"]) and all(s.get("ok") for s in self.summary["steps"].values())
        write_text_atomically(self.out / SUMMARY, json.dumps(self.summary, indent=2, default=str))

    def command(self, command: list[str], log: str, step: str, env: Optional[dict] = None) -> int:
        if step not in self.deadlines:
            limit = self.limit(step)
            self.deadlines[step] = None if limit is None else time.monotonic() + limit
        deadline = self.deadlines[step]
        timeout = None if deadline is None else max(1.0, deadline - time.monotonic())
        return run_logged(command, self.out / log, env or self.env, timeout)

    # -- steps
    def environment(self) -> dict:
        import torch

        info = {"device": self.device, "dry_run": self.dry_run, "python": platform.python_version(),
                "torch": torch.__version__, "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                "nnUNet_compile": self.env["nnUNet_compile"], "cpu_count": os.cpu_count(),
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        try:
            from importlib.metadata import version

            info["nnunetv2"] = version("nnunetv2")
        except Exception:  # not installed as a distribution (a wheel unpacked onto PYTHONPATH still has metadata)
            info["nnunetv2"] = None
        if torch.cuda.is_available():
            properties = torch.cuda.get_device_properties(0)
            info.update(gpu=properties.name, gpu_memory_gib=round(properties.total_memory / 2 ** 30, 1),
                        cuda_available=True)
        else:
            info["cuda_available"] = False
        self.figures.write("environment", "versions", **info)
        self.summary["environment"] = info
        ok = self.dry_run or info["cuda_available"]
        return {"ok": ok, **({} if ok else {"error": "no CUDA device"})}

    def plans_file(self) -> Path:
        return self.work / "preprocessed" / f"Dataset{DATASET_ID}_{DATASET_NAME}" / f"{PLANS}.json"

    def setup(self) -> dict:
        commands = [hpn_command("phantom", str(self.work / "phantoms"), "--cases", str(self.sizes["cases"]),
                                "--seed", "3", *(["--crop", "10"] if self.dry_run else [])),
                    hpn_command("convert", str(self.work / "phantoms"), "-d", str(DATASET_ID), "--name",
                                DATASET_NAME),
                    stock_command("nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-pl", "HPNPlanner", "-c",
                                  "3d_fullres", "-np", "2" if self.dry_run else "8")]
        if self.dry_run:
            commands.append(hpn_command("cpu-config", "-d", str(DATASET_ID), "-c", self.configuration,
                                        "--patch-size", "16", "32", "32", "--base-features", "4",
                                        "--max-features", "16"))
        if self.plans_file().is_file() and self.configuration in json.loads(self.plans_file().read_text())[
                "configurations"]:
            commands = []  # --work of an earlier run: data and plans are there
        else:
            for folder in ("phantoms", "raw", "preprocessed", "results"):  # what an interrupted run left
                shutil.rmtree(self.work / folder, ignore_errors=True)
        for command in commands:
            code = self.command(command, "setup.log", "setup")
            if code != 0:
                return {"ok": False, "rc": code}
        estimate = self.planner_estimate()
        self.figures.write("setup", "planner_estimate", configuration=self.configuration, **estimate)
        self.summary["planner_estimate"] = estimate
        return {"ok": True, "rc": 0, "reused": not commands}

    def planner_estimate(self) -> dict:
        """HPNPlanner's memory estimate for the trained configuration at its patch and batch, split into the network
        and the pairing loss, in nnU-Net's proxy units and converted to GiB by the planner's own reference."""
        from nnunet_hpn.nnunet.planners.hpn_planner import HPNPlanner

        plans = json.loads(self.plans_file().read_text())
        entry = plans["configurations"][self.configuration]
        architecture = entry["architecture"]
        planner = HPNPlanner(DATASET_ID)
        arguments = (tuple(entry["patch_size"]), planner.n_phases, len(planner.dataset_json["labels"]),
                     architecture["network_class_name"], architecture["arch_kwargs"],
                     tuple(architecture["_kw_requires_import"]))
        total = planner.static_estimate_VRAM_usage(*arguments)
        pairing = planner.pairing_loss_feature_map_size(entry["patch_size"], architecture["arch_kwargs"])
        batch = int(entry["batch_size"])
        return {"patch": entry["patch_size"], "batch": batch,
                "features": architecture["arch_kwargs"]["features_per_stage"],
                "estimate": int(total), "estimate_pairing_loss": int(pairing),
                "estimate_gib": round(planner.estimate_in_gib(total, batch), 3),
                "estimate_pairing_loss_gib": round(planner.estimate_in_gib(pairing, batch), 3),
                "memory_target_gb": planner.UNet_vram_target_GB}

    def fold_dir(self, trainer: str) -> Path:
        return (self.work / "results" / f"Dataset{DATASET_ID}_{DATASET_NAME}"
                / f"{trainer}__{PLANS}__{self.configuration}" / "fold_0")

    def train(self, step: str, trainer: str) -> dict:
        command = [sys.executable, str(Path(__file__).resolve()), "--out", str(self.out), "--instrumented", step,
                   "--", str(DATASET_ID), self.configuration, "0", "-tr", trainer, "-p", PLANS, "-device", self.device]
        # dry run: batches loaded in the training process (no data-loader workers on 2 cores); nnU-Net trains
        # uncompiled on the CPU anyway, and its final validation would compile the network as the predict step does
        env = dict(self.env, nnUNet_n_proc_DA=self.env.get("nnUNet_n_proc_DA", "0"),
                   nnUNet_compile="f") if self.dry_run else None
        code = self.command(command, f"{step}.log", step, env)
        epochs = self.figures.read(step, "epoch")
        losses = [e["train_loss"] for e in epochs]
        # seconds per iteration: the steps after the first epoch (which compiles the network), else after step 1
        later = [s for e in epochs[1:] for s in e["step_s"]] or (epochs[0]["step_s"][1:] if epochs else [])
        peaks = self.figures.read(step, "training_peak") or epochs[-1:]
        result = {
            "rc": code, "trainer": trainer, "epochs": len(epochs), "train_loss": losses,
            "finite": bool(losses) and all(math.isfinite(v) for v in losses),
            "falls": len(losses) >= 2 and losses[-1] < losses[0],
            "compiled": epochs[0]["compiled"] if epochs else None,
            "first_step_s": epochs[0]["step_s"][0] if epochs and epochs[0]["step_s"] else None,
            "s_per_iteration": round(statistics.median(later), 4) if later else None,
            "peak_mib": peaks[-1]["peak_mib"] if peaks else None,
            "peak_kind": peaks[-1]["kind"] if peaks else None,
            "checkpoint_final": (self.fold_dir(trainer) / "checkpoint_final.pth").is_file(),
        }
        result["ok"] = (code == 0 and result["finite"] and result["checkpoint_final"]
                        and (result["falls"] or self.dry_run))
        return result

    def train_hpn(self) -> dict:
        result = self.train("train_hpn", HPN_TRAINER)
        estimate = self.summary.get("planner_estimate")
        if estimate and result["peak_mib"] is not None:
            comparison = {"estimate_gib": estimate["estimate_gib"],
                          "estimate_pairing_loss_gib": estimate["estimate_pairing_loss_gib"],
                          "measured_peak_gib": round(result["peak_mib"] / 1024, 3),
                          "measured_kind": result["peak_kind"],
                          "measured_over_estimate": round(result["peak_mib"] / 1024 / estimate["estimate_gib"], 3)}
            self.figures.write("train_hpn", "estimate_vs_peak", **comparison)
            result["estimate_vs_peak"] = comparison
        return result

    def train_nnunet(self) -> dict:
        result = self.train("train_nnunet", NNUNET_TRAINER)
        hpn = self.summary["steps"].get("train_hpn", {})
        ratios = {key: round(hpn[key] / result[key], 3) for key in ("s_per_iteration", "peak_mib", "first_step_s")
                  if hpn.get(key) and result.get(key)}
        if ratios:
            self.figures.write("train_nnunet", "hpn_over_nnunet", **ratios)
            result["hpn_over_nnunet"] = ratios
        return result

    def predict(self) -> dict:
        images = self.work / "raw" / f"Dataset{DATASET_ID}_{DATASET_NAME}" / "imagesTr"
        cases = sorted({p.name.rsplit("_", 1)[0] for p in images.glob("*.nii.gz")})[:1] if images.is_dir() else []
        if not cases:
            return {"ok": False, "error": f"no case in {images}"}
        subset = self.work / "predict_input"
        subset.mkdir(exist_ok=True)
        for channel in images.glob(f"{cases[0]}_*.nii.gz"):
            if not (subset / channel.name).exists():
                (subset / channel.name).symlink_to(channel)
        predictions = self.out / "predictions"
        start = time.monotonic()
        code = self.command(stock_command(
            "nnUNetv2_predict", "-i", str(subset), "-o", str(predictions), "-d", str(DATASET_ID), "-c",
            self.configuration, "-f", "0", "-tr", HPN_TRAINER, "-p", PLANS, "-device", self.device, "-npp", "1",
            "-nps", "1", "--disable_tta"), "predict.log", "predict")
        written = sorted(p.name for p in predictions.glob("*.nii.gz")) if predictions.is_dir() else []
        seconds = round(time.monotonic() - start, 1)
        self.figures.write("predict", "prediction", case=cases[0], seconds=seconds, label_maps=written,
                           compiled=self.env["nnUNet_compile"].lower() in ("t", "true", "1"), mirroring=False)
        return {"ok": code == 0 and len(written) == 1, "rc": code, "label_maps": written}

    def benchmark(self, step: str) -> dict:
        log = self.out / f"{step}.md"
        command = [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--device", self.device, "--no-doc",
                   *BENCHMARKS[self.kind][step]]
        code = self.command(command, log.name, step)
        rows = benchmark_rows(log.read_text(encoding="utf-8")) if log.is_file() else []
        for row in rows:
            self.figures.write(step, "row", **row)
        return {"ok": code == 0 and bool(rows), "rc": code, "rows": len(rows)}

    def run(self, steps: Optional[list[str]] = None) -> int:
        """``environment``, ``setup``, then ``steps`` (default: all of STEPS) in STEPS' order."""
        functions = {"train_hpn": self.train_hpn, "train_nnunet": self.train_nnunet, "predict": self.predict,
                     **{name: lambda name=name: self.benchmark(name) for name in BENCHMARKS[self.kind]}}
        self.run_step("environment", self.environment)
        self.run_step("setup", self.setup)
        for name in STEPS:
            if steps is not None and name not in steps:
                continue
            if name in BENCHMARKS[self.kind] or self.summary["steps"]["setup"].get("ok"):
                self.run_step(name, functions[name])
        self.save_summary()
        print(json.dumps(self.summary, indent=2, default=str))
        return 0 if self.summary["ok"] else 1


def benchmark_rows(markdown: str) -> list[dict]:
    """Every row of the markdown tables in benchmark.py's report, as {header: cell}; each ratio column ``x`` is named
    after the column before it (``training step s x``)."""
    rows, header = [], None
    for line in markdown.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if header is None:
            header = [f"{cells[i - 1]} x" if cell == "x" and i else cell for i, cell in enumerate(cells)]
        elif not all(re.fullmatch(r":?-+:?", cell) for cell in cells):
            rows.append(dict(zip(header, cells)))
    return rows


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_check_out")))
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "hpn_gpu_check_work",
                        help="nnU-Net folders and phantoms (not under --out: only logs and figures travel back); "
                             "data and plans already there are reused")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes")
    parser.add_argument("--no-limits", action="store_true", help="no step or total time limits (the test suite)")
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=None,
                        help="only these steps after environment and setup (default: all)")
    parser.add_argument("--instrumented", metavar="STEP", help=argparse.SUPPRESS)
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.instrumented:
        train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
        return instrumented_training(Figures(out / FIGURES), args.instrumented, train_args)
    return Check(out, args.work.resolve(), args.dry_run, not args.no_limits).run(args.steps)


if __name__ == "__main__":
    sys.exit(main())
