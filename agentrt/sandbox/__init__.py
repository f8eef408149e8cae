"""Sandbox backends where tool calls run: not built yet beyond in-process (issue 5)."""
