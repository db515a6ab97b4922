"""Benchmarks (not tests): `python -m quake_onnx.bench --help`."""
