#!/usr/bin/env bash
# README command 2: set up (idempotent), lint, then run the test suite on the CPU.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash tools/setup_env.sh
py="${M2F_VENV:-$root/.venv}/bin/python"
echo "[tests] lint (ruff, line length 100)" >&2
"$py" -m ruff check .
echo "[tests] pytest" >&2
exec "$py" -m pytest tests "$@"
