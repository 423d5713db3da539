#!/usr/bin/env bash
# The one prepared GPU check (scripts/gpu_check.py says what it measures): stock nnUNetv2_train of HPNTrainer with
# nnUNet_compile=t, the same for nnU-Net's network on the same plans, nnUNetv2_predict of one case, then the
# benchmark. Each step appends its figures to $OUT/figures.jsonl as soon as it has them and has its own time limit;
# the whole check stops after 400 s on one GPU. Also in $OUT: gpu_check.json (summary of the finished steps), one log
# per step, nvidia-smi.txt.
#
#   device run (../shared/device/README.md), carry [".whl"]:
#     bash .whl/install.sh && export PYTHONPATH=/tmp/site:$PWD && bash scripts/gpu_check.sh
#   on the CPU at tiny sizes, within the dry run's own limits (--no-limits: none):
#     bash scripts/gpu_check.sh --dry-run
#
# The project is not pip-installed on the device: the repository goes on PYTHONPATH, nnUNet_extTrainer names the
# trainer shim folder, and the start-up hook (what nnunet_hpn_startup.pth does after pip install: the planners and
# the normalization for nnU-Net's commands) runs from a sitecustomize.py in every process nnU-Net starts.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$ROOT/gpu_check_out}"
mkdir -p "$OUT"
HOOK="$(mktemp -d)"
trap 'rm -rf "$HOOK"' EXIT
echo "import nnunet_hpn.nnunet.startup_hook" > "$HOOK/sitecustomize.py"
export PYTHONPATH="$HOOK:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export nnUNet_extTrainer="$ROOT/nnunet_hpn/nnunet/ext${nnUNet_extTrainer:+:$nnUNet_extTrainer}"
export nnUNet_compile="${nnUNet_compile:-t}"
PYTHON="${PYTHON:-python3}"
if command -v nvidia-smi > /dev/null; then nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true; fi
"$PYTHON" "$ROOT/scripts/gpu_check.py" --out "$OUT" "$@"
