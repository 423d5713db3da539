#!/usr/bin/env bash
# The one prepared GPU check: benchmark on CUDA, a short stock nnUNetv2_train of HPNTrainer, nnUNetv2_predict with it.
# Everything lands under $OUT (gpu_check.json, benchmark.md, train.log, predict.log). About 8 minutes on one GPU.
#
#   device run (../shared/device/README.md), carry [".whl"]:
#     bash .whl/install.sh && export PYTHONPATH=/tmp/site:$PWD && bash scripts/gpu_check.sh
#   on the CPU at tiny sizes (the test suite does this):
#     bash scripts/gpu_check.sh --dry-run
#
# The project is not pip-installed on the device: the repository goes on PYTHONPATH and its start-up hook (what
# nnunet_hpn_startup.pth does after pip install) runs from a sitecustomize.py, in every process nnU-Net starts.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$ROOT/gpu_check_out}"
mkdir -p "$OUT"
HOOK="$(mktemp -d)"
trap 'rm -rf "$HOOK"' EXIT
echo "import nnunet_hpn.nnunet.startup_hook" > "$HOOK/sitecustomize.py"
export PYTHONPATH="$HOOK:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
PYTHON="${PYTHON:-python3}"
if command -v nvidia-smi > /dev/null; then nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true; fi
exec "$PYTHON" "$ROOT/scripts/gpu_check.py" --out "$OUT" "$@"
