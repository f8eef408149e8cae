"""Tracing, cost and energy: not built yet beyond per-run usage (issue 6)."""
