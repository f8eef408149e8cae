"""Fixtures for the memory store tests: real SQLite files in a temporary directory."""

import numpy as np
import pytest

from agentrt.memory_store import HashingEmbedder, IndexParams, MemoryStore


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


@pytest.fixture
def store(tmp_path):
    s = MemoryStore(tmp_path / "m.db", embedder=HashingEmbedder())
    yield s
    s.close()


@pytest.fixture
def ann_params() -> IndexParams:
    """A small index of the default kind (IVF+SQ8, built once the store holds 300 events) so tests
    exercise the ANN path; tests that need HNSW set ``kind``."""
    return IndexParams(kind="ivf_sq8", min_ann=300, buffer_max=100, nprobe=4, hnsw_m=16, ef_search=64)
