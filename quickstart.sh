#!/usr/bin/env bash
# Sets up a virtual environment (.venv), builds and installs quake-onnx, and
# runs the main job on the bundled sample models: optimize the BERT-style
# encoder (writing build/sample/bert_encoder.quake.onnx), check it (original
# with ONNX Runtime's own ops against the optimized model with com.quake
# kernels: outputs and latency), then check every sample model and write the
# zoo reports to build/sample/ (zoo.json, zoo.md, zoo.xml). Arguments go to
# the zoo command (e.g. --threads 2 --runs 50).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet .
mkdir -p build/sample
.venv/bin/quake-onnx optimize sample_models/zoo/bert_encoder/model.onnx build/sample/bert_encoder.quake.onnx --explain
.venv/bin/quake-onnx check sample_models/zoo/bert_encoder --optimized build/sample/bert_encoder.quake.onnx --max-abs-error 0.01 --min-cosine 0.9999
.venv/bin/quake-onnx zoo sample_models --max-abs-error 0.05 --json build/sample/zoo.json --markdown build/sample/zoo.md --junit build/sample/zoo.xml "$@"
