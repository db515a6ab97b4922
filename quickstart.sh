#!/usr/bin/env bash
# Sets up a virtual environment (.venv), builds and installs quake-onnx, and
# runs the main job on the bundled sample model: optimize it (writing
# build/sample/encoder_block.quake.onnx), then run the original with ONNX
# Runtime's own ops and the optimized model with com.quake kernels, and
# compare outputs and latency.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet .
mkdir -p build/sample
.venv/bin/quake-onnx optimize sample_models/encoder_block.onnx build/sample/encoder_block.quake.onnx --explain
.venv/bin/quake-onnx demo --models sample_models --optimized build/sample/encoder_block.quake.onnx "$@"
