"""Episodic memory store: not built yet (issue 8)."""
