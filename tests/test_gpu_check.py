"""``scripts/gpu_check.sh --dry-run``: the prepared GPU check runs end to end on the CPU at tiny sizes (benchmark, stock
nnUNetv2_train of HPNTrainer through the start-up hook it sets up itself, stock nnUNetv2_predict), results in $OUT."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_passes_and_writes_its_results(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("nnUNet_", "HPN_"))}
    env.update(OUT=str(out), PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run", "--work", str(tmp_path / "w")],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["ok"] and report["environment"]["device"] == "cpu"
    assert set(report["steps"]) == {"benchmark", "train", "predict"}
    losses = report["steps"]["train"]["train_loss"]
    assert len(losses) == 2 and report["steps"]["train"]["finite"]
    assert len(report["steps"]["predict"]["label_maps"]) == 2
    benchmark = (out / "benchmark.md").read_text()
    assert "| HPN, U-Net backbone |" in benchmark and "| nnU-Net PlainConvUNet, 2 channels |" in benchmark
    assert "budget from the environment: HPN_NUM_EPOCHS=2" in (out / "train.log").read_text()
