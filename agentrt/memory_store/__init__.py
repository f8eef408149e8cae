"""Episodic memory store (issue 8): SQLite WAL as the one source of truth, INT8 vectors, a faiss
ANN index as a rebuildable cache, a bi-temporal event graph, CAS-versioned blocks, blobs, and a
lookaside cache that measures its own correctness.

    from agentrt.memory_store import MemoryStore, Event, open_store
    with open_store() as store:                      # <data dir>/memory/memory.db, MiniLM embedder
        eid = store.append(Event("Caroline: I went to a support group", session="s1"))
        hits = store.search("What did Caroline do?", k=5, filters={"session": "s1"})
"""

from __future__ import annotations

from pathlib import Path

from agentrt.memory_store._blobs import BlobStore
from agentrt.memory_store._blocks import Blocks
from agentrt.memory_store._cache import CacheStats, LookasideCache
from agentrt.memory_store._codec import dequantize, int8_scores, quantize
from agentrt.memory_store._embed import (
    Embedder,
    HashingEmbedder,
    MiniLMEmbedder,
    OpenAIEmbedder,
    make_embedder,
    minilm_tokenizer_path,
    prepare_minilm,
)
from agentrt.memory_store._index import IndexParams, VectorIndex
from agentrt.memory_store._keyword import fts_query, tokens
from agentrt.memory_store._schema import EDGE_TYPES
from agentrt.memory_store._store import MemoryStore
from agentrt.memory_store._types import (
    Block,
    Edge,
    Event,
    Filters,
    Hit,
    SearchResult,
    StoredEvent,
)

__all__ = [
    "EDGE_TYPES",
    "BlobStore",
    "Block",
    "Blocks",
    "CacheStats",
    "Edge",
    "Embedder",
    "Event",
    "Filters",
    "HashingEmbedder",
    "Hit",
    "IndexParams",
    "LookasideCache",
    "MemoryStore",
    "MiniLMEmbedder",
    "OpenAIEmbedder",
    "SearchResult",
    "StoredEvent",
    "VectorIndex",
    "default_store_path",
    "dequantize",
    "fts_query",
    "int8_scores",
    "make_embedder",
    "minilm_tokenizer_path",
    "open_store",
    "prepare_minilm",
    "quantize",
    "tokens",
]


def default_store_path(settings=None) -> Path:
    """``settings.memory.path`` or ``<data dir>/memory/memory.db``."""
    from agentrt.config import get_settings

    settings = settings or get_settings()
    return settings.memory.path or settings.data_dir / "memory" / "memory.db"


def open_store(settings=None, **kwargs) -> MemoryStore:
    """Open the configured store (path, durability, embedder from ``settings.memory``).

    Raises:
        EmbedderNotInstalled: the configured embedder is not installed (the message names the fix).
        MemoryStoreError: the database cannot be opened.
    """
    from agentrt.config import get_settings

    settings = settings or get_settings()
    kwargs.setdefault("embedder", make_embedder(settings))
    kwargs.setdefault("durability", settings.memory.durability)
    return MemoryStore(default_store_path(settings), **kwargs)
