"""Sleep-time compute: not built yet (issue 9)."""
