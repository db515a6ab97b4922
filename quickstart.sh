#!/usr/bin/env bash
# Sets up a virtual environment (.venv), builds and installs quake-onnx, and
# runs the main job on the bundled sample model.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet .
.venv/bin/quake-onnx demo --models sample_models "$@"
