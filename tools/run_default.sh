#!/usr/bin/env bash
# README command 1: set up (idempotent), then the main job on the built-in generated data:
# generate it if missing, train on the CPU, evaluate (PQ, AP, mIoU) and draw predictions.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash tools/setup_env.sh
py="${M2F_VENV:-$root/.venv}/bin/python"
exec "$py" tools/default_run.py "$@"
