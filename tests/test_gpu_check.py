"""``scripts/gpu_check.sh --dry-run``: the prepared GPU check runs its steps on the CPU at tiny sizes and writes
every step's figures to $OUT as it goes; killed mid-way, it leaves the figures of the steps it finished.

The tests run without the dry run's time limits (``--no-limits``): they check that each step works and writes its
figures, not how fast the machine is. For a modest cost they run the training, prediction and planner steps, with
``nnUNet_compile=f`` for the prediction (compiled CPU prediction: tests/test_cpu_inference.py); the whole dry run,
every benchmark step and compiled prediction included, is the manual check in docs/BENCHMARKS.md ("GPU check").
"""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import benchmark
import gpu_check

ROOT = Path(__file__).resolve().parents[1]
TESTED_STEPS = ["train_hpn", "train_nnunet", "predict", "benchmark_planner"]


def _check(out: Path, work: Path, *args: str) -> list[str]:
    return ["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run", "--no-limits", "--work", str(work), *args]


def _env(out: Path) -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("nnUNet_", "HPN_"))}
    env.update(OUT=str(out), PYTHON=sys.executable, nnUNet_compile="f")
    return env


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("gpu_check")
    out, work = root / "out", root / "work"
    proc = subprocess.run(_check(out, work, "--steps", *TESTED_STEPS), env=_env(out), capture_output=True, text=True)
    return {"proc": proc, "out": out, "work": work,
            "figures": [json.loads(line) for line in (out / gpu_check.FIGURES).read_text().splitlines()],
            "summary": json.loads((out / gpu_check.SUMMARY).read_text())}


def _figures(run: dict, step: str, what: str) -> list[dict]:
    return [f for f in run["figures"] if f["step"] == step and f["what"] == what]


def test_dry_run_steps_pass_and_write_their_figures(dry_run) -> None:
    proc, summary = dry_run["proc"], dry_run["summary"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert summary["ok"] and list(summary["steps"]) == ["environment", "setup", *TESTED_STEPS]
    versions = _figures(dry_run, "environment", "versions")[0]
    assert versions["device"] == "cpu" and versions["torch"] and versions["nnUNet_compile"] == "f"
    estimate = _figures(dry_run, "setup", "planner_estimate")[0]
    assert estimate["configuration"] == "3d_cpu" and estimate["patch"] == [16, 32, 32]
    assert 0 < estimate["estimate_pairing_loss_gib"] < estimate["estimate_gib"]
    for step, trainer in (("train_hpn", "HPNTrainer"), ("train_nnunet", "EarlyFusionTrainer")):
        epochs = _figures(dry_run, step, "epoch")
        assert [e["epoch"] for e in epochs] == [0, 1]
        assert all(len(e["step_s"]) == 2 and math.isfinite(e["train_loss"]) and e["peak_mib"] > 0 for e in epochs)
        assert epochs[0]["compiled"] is False  # nnU-Net compiles training on CUDA only
        assert _figures(dry_run, step, "final_validation")
        result = summary["steps"][step]
        assert result["trainer"] == trainer and result["checkpoint_final"] and result["s_per_iteration"] > 0
        assert (dry_run["out"] / f"{step}.log").read_text().count("budget from the environment: HPN_NUM_EPOCHS=2")
    assert {e["network"] for e in _figures(dry_run, "train_hpn", "epoch")} == {"HyperPairedUNet"}
    assert {e["network"] for e in _figures(dry_run, "train_nnunet", "epoch")} == {"PlainConvUNet"}
    comparison = _figures(dry_run, "train_hpn", "estimate_vs_peak")[0]
    assert comparison["estimate_gib"] == estimate["estimate_gib"] and comparison["measured_peak_gib"] > 0
    assert set(_figures(dry_run, "train_nnunet", "hpn_over_nnunet")[0]) >= {"s_per_iteration", "peak_mib"}
    prediction = _figures(dry_run, "predict", "prediction")[0]
    assert len(prediction["label_maps"]) == 1
    assert (dry_run["out"] / "predictions" / prediction["label_maps"][0]).is_file()
    rows = _figures(dry_run, "benchmark_planner", "row")
    assert any(r.get("model") == "nnU-Net PlainConvUNet, 2 channels" for r in rows)
    assert any(r.get("memory target GB") == "8" for r in rows)  # HPNPlanner at the 8 GB target


def test_benchmark_steps_have_valid_arguments() -> None:
    """The benchmark steps the tests do not run (they need minutes of inference or compilation on 2 cores) at
    least parse, in both sizes."""
    for kind in ("gpu", "dry"):
        for step, arguments in gpu_check.BENCHMARKS[kind].items():
            args = benchmark.parse_args(["--device", "cpu", "--no-doc", *arguments])
            assert args.compile == (step == "benchmark_compiled"), (kind, step)


def test_killed_check_leaves_the_finished_steps_figures(dry_run, tmp_path) -> None:
    """SIGKILL to the whole check (as a device time-out ends it) while it trains nnU-Net's network: the figures of
    environment, setup and the finished HPN training are on disk, and the summary lists exactly those steps."""
    out = tmp_path / "out"
    process = subprocess.Popen(_check(out, dry_run["work"], "--steps", "train_hpn", "train_nnunet"), env=_env(out),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    figures = out / gpu_check.FIGURES
    try:
        while process.poll() is None and '"step": "train_hpn", "what": "step"' not in (
                figures.read_text() if figures.is_file() else ""):
            time.sleep(1)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL  # killed, not finished
    records = [json.loads(line) for line in figures.read_text().splitlines()]
    steps = [r["step"] for r in records if r["what"] == "step"]
    assert steps == ["environment", "setup", "train_hpn"]
    assert [r["epoch"] for r in records if r["step"] == "train_hpn" and r["what"] == "epoch"] == [0, 1]
    summary = json.loads((out / gpu_check.SUMMARY).read_text())
    assert list(summary["steps"]) == ["environment", "setup", "train_hpn"] and summary["steps"]["train_hpn"]["ok"]
    assert summary["steps"]["setup"]["reused"]
