"""Parallel function-call decoding (SimpleTool style): not built yet (issue 7)."""
