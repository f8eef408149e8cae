"""Per-call cgroups and resource policies: not built yet (issue 5)."""
