"""Records of the memory store: what callers append, what they get back, filters."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Block", "Edge", "Event", "Filters", "Hit", "SearchResult", "StoredEvent"]


@dataclass
class Event:
    """What a caller appends.

    Attributes:
        text: the content (any length; long texts are stored as blobs).
        session: the conversation or run it belongs to.
        role: who produced it (``user``, ``assistant``, ``tool``, ``planner``, ``system``...).
        kind: what it is (``message``, ``question``, ``plan``, ``tool_result``, ``answer``...).
        ts: world time in unix seconds (default: now).
        meta: a JSON-serialisable mapping.
        embedding: a precomputed unit vector ``(dim,)``; None means the store embeds ``text``.
        prev_id: the previous event of the session; None means the last one appended to it.
    """

    text: str
    session: str = "default"
    role: str = "user"
    kind: str = "message"
    ts: float | None = None
    meta: Mapping[str, Any] | None = None
    embedding: np.ndarray | None = None
    prev_id: int | None = None


@dataclass
class StoredEvent:
    """An event as stored (``text`` is the full text, read from its blob when it has one)."""

    id: int
    session: str
    ts: float
    recorded_at: float
    expired_at: float | None
    role: str
    kind: str
    text: str
    blob: str | None
    size: int
    prev_id: int | None
    meta: dict | None


@dataclass
class Edge:
    """A bi-temporal edge: ``valid_from``/``valid_to`` is world time, ``recorded_at``/``expired_at`` system time."""

    id: int
    src: int
    dst: int
    type: str
    valid_from: float | None
    valid_to: float | None
    recorded_at: float
    expired_at: float | None
    meta: dict | None


@dataclass
class Filters:
    """Search filters; every field set must match. ``since``/``until`` bound the world time ``ts`` (seconds)."""

    session: str | Sequence[str] | None = None
    kind: str | Sequence[str] | None = None
    role: str | Sequence[str] | None = None
    since: float | None = None
    until: float | None = None

    def key(self) -> tuple:
        def norm(v):
            return tuple(sorted([v] if isinstance(v, str) else v)) if v is not None else None
        return (norm(self.session), norm(self.kind), norm(self.role), self.since, self.until)


@dataclass
class Hit:
    """One search result: the event, its fused score, and the two scores it came from."""

    event: StoredEvent
    score: float
    dense: float | None = None
    keyword: float | None = None


@dataclass
class SearchResult:
    """Hits best first. ``exact``: the ranking is exact over the store (no ANN approximation).
    ``cache``: ``miss`` | ``certified`` (provably equal to a fresh search) | ``approximate``."""

    hits: list[Hit]
    exact: bool
    cache: str = "miss"

    def __iter__(self):
        return iter(self.hits)

    def __len__(self) -> int:
        return len(self.hits)

    @property
    def ids(self) -> list[int]:
        return [h.event.id for h in self.hits]


@dataclass
class Block:
    """A versioned memory block (version 0: it does not exist yet)."""

    label: str
    value: str
    version: int
    updated_at: float | None = None
    updated_by: str | None = None


@dataclass
class _Op:
    fn: Callable[[Any], Any]
    result: Any = None
    exc: BaseException | None = None
    post: list = field(default_factory=list)  # callables run after the commit
    done: bool = False


def _json(v: Mapping | None) -> str | None:
    return json.dumps(dict(v), default=str) if v is not None else None
