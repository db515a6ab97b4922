"""The rewrite pass: finds exponential non-linearities and replaces them with com.quake nodes."""

from .passes import ALL_OPS, rewrite_model
from .report import Decision, Report

__all__ = ["ALL_OPS", "Decision", "Report", "rewrite_model"]
