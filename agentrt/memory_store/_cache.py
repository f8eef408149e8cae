"""Lookaside cache for repeated and near-repeated queries, with its correctness measured.

A hit is **certified** (provably the same top-k a fresh search would return) when either

* the query text, mode, filters and k are identical and the store has not changed since, or
* (vector search whose cached answer was exact) after exact re-scoring of the cached top-(k+1)
  and of every event written since, the k-th best score still beats ``s'_(k+1) + |q - q'|``:
  for unit vectors ``|<q,x> - <q',x>| <= |q - q'| * |x|``, so no unseen event can overtake
  (../shared/notes/memory_sleeptime.md section 4.6).

Anything else is served only when an ``approx_threshold`` on cos(q, q') is set (opt-in), and is
marked ``certified=False``. The notes measured that on conversational drift a query-keyed cache at
cos >= 0.95 hits 81% of the time with recall@10 of only 0.73 on its hits, so every N-th hit is
shadow-verified against a fresh search and the cache publishes ``recall_on_hit``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import numpy as np

__all__ = ["CacheEntry", "CacheStats", "LookasideCache"]

#: dequantised INT8 vectors of unit inputs have norms within about 1 +- 0.005; bound with margin
NORM_BOUND = 1.02


@dataclass
class CacheEntry:
    key: tuple
    text: str | None
    qvec: np.ndarray | None
    ids: np.ndarray          # top-(k+1) ids, best first
    scores: np.ndarray       # their scores
    vecs: np.ndarray | None  # (k+1, d) float32 vectors of ``ids`` (vector mode only)
    exact: bool              # the cached ranking was computed exactly
    version: tuple           # store version (last event id, forget counter) when computed


@dataclass
class CacheStats:
    """Counters since the store was opened. ``recall_on_hit`` averages the shadow-verified hits."""

    lookups: int = 0
    hits: int = 0
    certified_hits: int = 0
    approximate_hits: int = 0
    verified: int = 0
    recall_sum: float = 0.0
    recall_certified: list = field(default_factory=list)

    @property
    def hit_rate(self) -> float:
        return self.hits / self.lookups if self.lookups else 0.0

    @property
    def recall_on_hit(self) -> float | None:
        return self.recall_sum / self.verified if self.verified else None

    def as_dict(self) -> dict:
        return {"lookups": self.lookups, "hits": self.hits, "hit_rate": round(self.hit_rate, 4),
                "certified_hits": self.certified_hits, "approximate_hits": self.approximate_hits,
                "verified_hits": self.verified,
                "recall_on_hit": None if self.recall_on_hit is None else round(self.recall_on_hit, 4)}


class LookasideCache:
    """A ring of recent queries per session key (``capacity`` each), thread-safe."""

    def __init__(self, capacity: int = 64, *, approx_threshold: float | None = None, verify_every: int = 20) -> None:
        self.capacity = capacity
        self.approx_threshold = approx_threshold
        self.verify_every = verify_every
        self.stats = CacheStats()
        self._rings: OrderedDict[object, deque[CacheEntry]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, shard: object, entry: CacheEntry) -> None:
        with self._lock:
            ring = self._rings.setdefault(shard, deque(maxlen=self.capacity))
            ring.append(entry)
            self._rings.move_to_end(shard)
            while len(self._rings) > 1024:
                self._rings.popitem(last=False)

    def candidates(self, shard: object, key: tuple, text: str | None, qvec: np.ndarray | None):
        """Entries with the same key, most similar first: ``[(entry, cos)]`` (cos 1.0 for equal text)."""
        with self._lock:
            ring = list(self._rings.get(shard, ()))
        out = []
        for e in ring:
            if e.key != key:
                continue
            if text is not None and e.text == text:
                out.append((e, 1.0))
            elif qvec is not None and e.qvec is not None:
                out.append((e, float(e.qvec @ qvec)))
        out.sort(key=lambda t: -t[1])
        return out

    def record(self, *, hit: bool, certified: bool = False) -> bool:
        """Count a lookup; returns True when this hit should be shadow-verified."""
        with self._lock:
            self.stats.lookups += 1
            if not hit:
                return False
            self.stats.hits += 1
            if certified:
                self.stats.certified_hits += 1
            else:
                self.stats.approximate_hits += 1
            return self.verify_every > 0 and self.stats.hits % self.verify_every == 0

    def record_verification(self, recall: float) -> None:
        with self._lock:
            self.stats.verified += 1
            self.stats.recall_sum += recall

    def clear(self) -> None:
        with self._lock:
            self._rings.clear()
