#!/usr/bin/env bash
# Sets up everything this project needs, once: a virtualenv (.venv, or $M2F_VENV) with torch,
# Detectron2 (left alone when already importable), the runtime and test dependencies, and this
# package in editable mode. A second run finds the stamp of the finished set-up and does nothing.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="${M2F_VENV:-$root/.venv}"
py="$venv/bin/python"

say() { printf '[setup] %s\n' "$*" >&2; }

if [ ! -x "$py" ]; then
    say "creating virtualenv $venv"
    python3 -m venv "$venv"
fi

# The stamp names the inputs of the set-up (the compiled op's sources among them); changing any
# of them redoes it.
key=$(cat requirements/*.txt setup.py tools/install_detectron2.py mask2former/layers/csrc/* \
    | sha256sum | cut -c1-16)
stamp="$venv/.mask2former-setup-$key"
if [ -f "$stamp" ]; then
    say "environment up to date ($venv)"
    exit 0
fi

pip=("$py" -m pip install -q --disable-pip-version-check -c requirements/constraints.txt)
say "installing torch and torchvision (pinned in requirements/constraints.txt)"
"${pip[@]}" --upgrade pip setuptools wheel
"${pip[@]}" torch torchvision
say "installing runtime and test dependencies"
"${pip[@]}" -r requirements/runtime.txt -r requirements/dev.txt
say "installing Detectron2 unless it is importable already"
"$py" tools/install_detectron2.py --cache "$root/.cache/wheels"
if ! "$py" -c "import panopticapi" 2>/dev/null; then
    say "installing panopticapi-lite (without its outdated numpy<2 pin)"
    "${pip[@]}" --no-deps panopticapi-lite
fi
say "installing mask2former (editable; compiles the deformable-attention op when it can)"
"${pip[@]}" --no-build-isolation --no-deps -e .
rm -f "$venv"/.mask2former-setup-*
touch "$stamp"
say "done"
