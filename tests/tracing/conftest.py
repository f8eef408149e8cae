"""Fixtures for the tracing tests: a trace store in a temporary directory, and one filled through
the public API (runs from _trace_runs.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from _trace_runs import make_run

from agentrt.tracing import TraceStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[TraceStore]:
    s = TraceStore(tmp_path / "traces.sqlite")
    yield s
    s.close()


@pytest.fixture
def filled_store(store: TraceStore) -> tuple[TraceStore, list[str]]:
    """A store with two runs of the same shape, the second with 1.5x slower tools."""
    tracer = store.tracer()
    ids = [anyio.run(make_run, tracer, "first"), anyio.run(make_run, tracer, "second", "gpt-4o", 1.5)]
    assert store.flush()
    return store, ids
