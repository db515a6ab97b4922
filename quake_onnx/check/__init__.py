"""Model checks for CI: `quake-onnx check` (one model) and `quake-onnx zoo` (a folder of them).

inputs: where feeds come from; compare: per-output agreement; timing:
latency of both sessions; runner: one model against thresholds; zoo:
discovery, shards, processes, the S(t) score; reports: tables, JSON,
Markdown, JUnit."""

from __future__ import annotations

from .runner import CheckError, CheckOptions, Thresholds, check_model

__all__ = ["CheckError", "CheckOptions", "Thresholds", "check_model"]
