"""`MemoryStore`: append, search, graph neighbours, CAS blocks; durable on return.

One SQLite file (WAL) holds everything (``_schema``); the vector index (``_index``) and the
lookaside cache (``_cache``) are derived from it and rebuilt when lost. Writes go through one
write connection with *group commit*: each caller enqueues its operation, and whoever holds the
write lock commits every queued operation in one transaction (each in its own SAVEPOINT, so one
failing operation fails alone); callers return after that commit. Reads use one connection per
thread, concurrent with the writer (WAL). Every public method may be called from any thread.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agentrt.errors import MemoryConflict, MemoryStoreError
from agentrt.memory_store._blobs import BlobStore
from agentrt.memory_store._cache import NORM_BOUND, CacheEntry, LookasideCache
from agentrt.memory_store._codec import dequantize, int8_scores, quantize
from agentrt.memory_store._embed import Embedder
from agentrt.memory_store._index import IndexParams, VectorIndex
from agentrt.memory_store._keyword import fts_query, minmax
from agentrt.memory_store._schema import EDGE_TYPES, connect, create_schema

__all__ = ["Event", "StoredEvent", "Edge", "Filters", "Hit", "SearchResult", "Block", "Blocks", "MemoryStore"]

log = logging.getLogger(__name__)

#: texts up to this many UTF-8 bytes stay in the events row (SQLite's guidance: blobs under
#: about 100 KB are faster inline than as files); longer ones go to the blob store
INLINE_MAX = 100_000
PREVIEW_CHARS = 500


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


class Blocks:
    """Versioned memory blocks updated by compare-and-swap (``store.blocks``).

    ``set(label, value, expected_version)`` succeeds only if the block is still at
    ``expected_version`` (0 to create it); otherwise :class:`~agentrt.errors.MemoryConflict`
    is raised and nothing is written, so a stale writer never overwrites a newer value (the
    lost-update bug of a consolidation job writing back an old snapshot). Every version is kept
    in ``block_history``.
    """

    def __init__(self, store: "MemoryStore") -> None:
        self._store = store

    def get(self, label: str) -> Block:
        row = self._store._reader().execute(
            "SELECT label, value, version, updated_at, updated_by FROM blocks WHERE label=?", (label,)).fetchone()
        return Block(*row) if row else Block(label, "", 0)

    def list(self) -> list[Block]:
        rows = self._store._reader().execute(
            "SELECT label, value, version, updated_at, updated_by FROM blocks ORDER BY label").fetchall()
        return [Block(*r) for r in rows]

    def history(self, label: str) -> list[Block]:
        rows = self._store._reader().execute(
            "SELECT label, value, version, updated_at, updated_by FROM block_history WHERE label=? ORDER BY version",
            (label,)).fetchall()
        return [Block(*r) for r in rows]

    def set(self, label: str, value: str, expected_version: int, *, updated_by: str | None = None) -> Block:
        """Write ``value`` as version ``expected_version + 1``; durable on return.

        Raises:
            MemoryConflict: the block is not at ``expected_version`` any more (or already exists
                when ``expected_version`` is 0).
        """
        def op(conn, _op):
            now = time.time()
            row = conn.execute("SELECT version FROM blocks WHERE label=?", (label,)).fetchone()
            actual = row[0] if row else 0
            if actual != expected_version:
                raise MemoryConflict(f"block {label!r} is at version {actual}, not {expected_version}: "
                                     "re-read it, merge, and retry", label=label,
                                     expected_version=expected_version, actual_version=actual)
            new = actual + 1
            conn.execute("INSERT INTO blocks(label, value, version, updated_at, updated_by) VALUES (?,?,?,?,?) "
                         "ON CONFLICT(label) DO UPDATE SET value=excluded.value, version=excluded.version, "
                         "updated_at=excluded.updated_at, updated_by=excluded.updated_by",
                         (label, value, new, now, updated_by))
            conn.execute("INSERT INTO block_history VALUES (?,?,?,?,?)", (label, new, value, now, updated_by))
            return Block(label, value, new, now, updated_by)
        return self._store._write(op)


class MemoryStore:
    """The episodic memory store (DESIGN.md: ``MemoryStore``; issue 8).

    Args:
        path: the SQLite file (created with its directory); the vector index lives in
            ``<path>.index/`` and blobs in ``<path>.blobs/``.
        embedder: turns texts into unit vectors; required to append text without an
            ``embedding`` or to search by text.
        dim: vector dimension (default: ``embedder.dim``, else 384).
        durability: ``process`` (default) or ``power``; see ``_schema`` for what each guarantees.
        index: how the vector index is built (:class:`IndexParams`).
        cache: the lookaside cache (None: a default one; pass ``LookasideCache(0)`` to disable).
        auto_compact: fold the exact buffer into the ANN index in a background thread when it grows
            past ``index.buffer_max``.
        exact_max: a search whose filters leave at most this many candidate events is answered
            exactly (INT8 scan of just those rows) instead of through the ANN index.

    Raises:
        MemoryStoreError: the database cannot be opened or was made for another vector dimension.

    One process should write a store at a time: SQLite serialises writers across processes, but
    the vector index and the session chain (``prev_id``) of each open store are kept in memory,
    so another process sees events written elsewhere after it reopens the store. Within a
    process, any number of threads may use one store (from asyncio: ``anyio.to_thread.run_sync``).
    """

    def __init__(self, path: str | Path, *, embedder: Embedder | None = None, dim: int | None = None,
                 durability: str = "process", index: IndexParams | None = None,
                 cache: LookasideCache | None = None, auto_compact: bool = True, exact_max: int = 20_000) -> None:
        if durability not in ("process", "power"):
            raise ValueError("durability must be 'process' or 'power'")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.embedder = embedder
        self.dim = dim or (embedder.dim if embedder is not None else 384)
        self.durability = durability
        self.exact_max = exact_max
        self.auto_compact = auto_compact
        self.blobs = BlobStore(Path(f"{self.path}.blobs"))
        self.cache = cache if cache is not None else LookasideCache()
        self.blocks = Blocks(self)
        self._local = threading.local()
        self._readers: list = []
        self._readers_lock = threading.Lock()
        self._wlock = threading.Lock()
        self._qlock = threading.Lock()
        self._queue: list[_Op] = []
        self._last_in_session: dict[str, int | None] = {}
        self._forgets = 0
        self._closed = False
        self._compactor: threading.Thread | None = None
        try:
            self._wconn = connect(self.path, durability=durability)
            create_schema(self._wconn)
            self._check_meta()
        except Exception as exc:
            if isinstance(exc, MemoryStoreError):
                raise
            raise MemoryStoreError(f"cannot open the memory store {self.path}: {exc}") from exc
        self.last_id = self._wconn.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]
        self._fts_hwm = int(self._meta("fts_hwm") or 0)
        model = embedder.name if embedder is not None else self._meta("embedder") or ""
        self.index = VectorIndex(Path(f"{self.path}.index"), self.dim, index, model=model)
        self._load_index()

    # ---- set-up -----------------------------------------------------------------------------
    def _meta(self, key: str) -> str | None:
        row = self._wconn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def _check_meta(self) -> None:
        stored = self._meta("dim")
        if stored is None:
            self._wconn.execute("INSERT INTO meta VALUES ('dim', ?)", (str(self.dim),))
        elif int(stored) != self.dim:
            raise MemoryStoreError(f"{self.path} holds {stored}-d vectors; this store was opened with dim={self.dim}")
        if self.embedder is not None:
            name = self._meta("embedder")
            if name is None:
                self._wconn.execute("INSERT INTO meta VALUES ('embedder', ?)", (self.embedder.name,))
            elif name != self.embedder.name:
                raise MemoryStoreError(f"{self.path} was embedded with {name}; opened with {self.embedder.name}. "
                                       "Vectors of two models cannot be compared: use a new store path")

    def _rows_after(self, hwm: int, conn=None) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, (n, dim) float32 vectors)`` of every event above ``hwm``, decoded from the INT8 codes."""
        rows = (conn or self._wconn).execute("SELECT id, emb, emb_scale FROM events WHERE id > ? AND emb IS NOT NULL "
                                             "ORDER BY id", (hwm,)).fetchall()
        if not rows:
            return np.zeros(0, dtype=np.int64), np.zeros((0, self.dim), dtype=np.float32)
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        codes = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.int8).reshape(len(rows), self.dim)
        scales = np.fromiter((r[2] for r in rows), dtype=np.float32, count=len(rows))
        return ids, dequantize(codes, scales)

    def _load_index(self) -> None:
        ok = self.index.load_snapshot()
        if ok:
            n_db = self._wconn.execute("SELECT count(*) FROM events WHERE id <= ? AND emb IS NOT NULL",
                                       (self.index.hwm,)).fetchone()[0]
            if n_db != self.index.main_n and self.index.main is not None:
                ok = False
                self.index.rebuilt_reason = f"snapshot holds {self.index.main_n} vectors, database {n_db}"
            elif self.index.hwm > self.last_id:
                ok = False
                self.index.rebuilt_reason = "snapshot is newer than the database"
        if ok:
            ids, vecs = self._rows_after(self.index.hwm)
            self.index.add(ids, vecs)
            return
        if self.last_id:
            log.warning("memory store %s: rebuilding the vector index from SQLite (%s)", self.path,
                        self.index.rebuilt_reason)
        ids, vecs = self._rows_after(0)
        self.index.reset(ids, vecs)  # exact search over everything until the rebuild is done
        if self.index.needs_compaction() or self.index.total < self.index.params.min_ann:
            self._start_compaction()

    def _start_compaction(self) -> None:
        if self._compactor is not None and self._compactor.is_alive():
            return
        self._compactor = threading.Thread(target=self._compact_safely, name="memory-compact", daemon=True)
        self._compactor.start()

    def _all_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        conn = connect(self.path, durability=self.durability)  # its own: runs in the compactor thread
        try:
            return self._rows_after(0, conn)
        finally:
            conn.close()

    def _compact_safely(self) -> None:
        try:
            self.index.compact(loader=self._all_vectors)
            self.cache.clear()
        except Exception:  # the index is a cache: a failed build leaves the exact buffer serving
            log.exception("memory store %s: index compaction failed", self.path)

    # ---- connections --------------------------------------------------------------------------
    def _reader(self):
        if self._closed:
            raise MemoryStoreError("the memory store is closed")
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path, durability=self.durability)
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def _write(self, fn: Callable[[Any, _Op], Any]) -> Any:
        """Run ``fn(conn, op)`` in a group-committed transaction; return its result once durable.

        ``fn`` may put callables in ``op.post``: they run after the commit succeeded (in commit
        order, before any caller of the batch returns), e.g. to make new vectors searchable.
        """
        if self._closed:
            raise MemoryStoreError("the memory store is closed")
        op = _Op(fn)
        with self._qlock:
            self._queue.append(op)
        with self._wlock:
            if not op.done:
                with self._qlock:
                    batch, self._queue = self._queue, []
                self._commit(batch)
        if op.exc is not None:
            raise op.exc
        return op.result

    def _commit(self, batch: list[_Op]) -> None:
        conn = self._wconn
        if len(batch) == 1:  # no SAVEPOINT needed: the transaction holds only this operation
            op = batch[0]
            try:
                conn.execute("BEGIN IMMEDIATE")
                op.result = op.fn(conn, op)
                conn.execute("COMMIT")
            except BaseException as exc:  # noqa: BLE001 - handed to the caller of this op
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                self._last_in_session.clear()
                op.exc = exc if op.exc is None else op.exc
                op.post, op.done = [], True
                if not isinstance(exc, Exception):
                    raise
                return
            for post in op.post:
                post()
            op.done = True
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op in batch:
                conn.execute("SAVEPOINT op")
                try:
                    op.result = op.fn(conn, op)
                    conn.execute("RELEASE op")
                except BaseException as exc:  # noqa: BLE001 - handed to the caller of this op
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    op.exc, op.post = exc, []
                    self._last_in_session.clear()  # its ids were rolled back (and will be reused)
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._last_in_session.clear()
            for op in batch:
                op.exc = op.exc or MemoryStoreError(f"commit failed: {exc}")
                op.post, op.done = [], True
            return
        for op in batch:
            for post in op.post:
                post()
            op.done = True

    # ---- append ---------------------------------------------------------------------------------
    def _embed(self, texts: list[str]) -> np.ndarray:
        if self.embedder is None:
            raise MemoryStoreError("this store has no embedder: pass embedding= with each event, or open it with one")
        return self.embedder.embed(texts)

    def _prepare(self, events: Sequence[Event]) -> list[tuple]:
        """Embed (outside the write lock), quantise and put long texts in blob files: rows to insert."""
        need = [i for i, e in enumerate(events) if e.embedding is None]
        vecs = self._embed([events[i].text for i in need]) if need else None
        pos = {i: j for j, i in enumerate(need)}
        out = []
        for i, e in enumerate(events):
            v = vecs[pos[i]] if i in pos else np.asarray(e.embedding, dtype=np.float32)
            if v.shape != (self.dim,):
                raise MemoryStoreError(f"embedding has shape {v.shape}, store expects ({self.dim},)")
            codes, scales = quantize(v)
            data = e.text.encode()
            blob = None
            text = e.text
            if len(data) > INLINE_MAX:
                blob = self.blobs.put(data)
                text = e.text[:PREVIEW_CHARS]
            out.append((e, text, blob, len(data), codes[0], float(scales[0])))
        return out

    def _insert(self, conn, prepared: tuple, now: float) -> tuple[int, Callable[[], None]]:
        e, text, blob, size, codes, scale = prepared
        prev = e.prev_id
        if prev is None:
            if e.session not in self._last_in_session:
                row = conn.execute("SELECT max(id) FROM events WHERE session=?", (e.session,)).fetchone()
                self._last_in_session[e.session] = row[0]
            prev = self._last_in_session[e.session]
        cur = conn.execute(
            "INSERT INTO events(session, ts, recorded_at, role, kind, text, blob, size, emb, emb_scale, prev_id, meta)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (e.session, e.ts if e.ts is not None else now, now, e.role, e.kind, text, blob, size,
             codes.tobytes(), scale, prev, _json(e.meta)))
        eid = cur.lastrowid
        self._last_in_session[e.session] = eid
        vec = codes.astype(np.float32) * scale

        def post() -> None:
            self.index.add(np.array([eid]), vec[None, :])
            if eid > self.last_id:
                self.last_id = eid
        return eid, post

    def append(self, event: Event) -> int:
        """Store ``event``; returns its id once it is durable (per ``durability``) and searchable.

        Raises:
            MemoryStoreError: no embedder and no embedding, a wrong embedding shape, or the commit failed.
        """
        return self.append_many([event])[0]

    def append_many(self, events: Sequence[Event]) -> list[int]:
        """Store several events in one transaction (all or none); returns their ids in order."""
        prepared = self._prepare(events)

        def op(conn, op):
            now = time.time()
            ids = []
            for p in prepared:
                eid, post = self._insert(conn, p, now)
                ids.append(eid)
                op.post.append(post)
            return ids
        ids = self._write(op)
        if self.auto_compact and self.index.needs_compaction():
            self._start_compaction()
        return ids

    # ---- edges ---------------------------------------------------------------------------------
    def add_edge(self, src: int, dst: int, type: str, *, valid_from: float | None = None,
                 valid_to: float | None = None, meta: Mapping | None = None) -> int:
        """Record ``src -[type]-> dst`` (type: ref | causal | derived_from | about); returns the edge id."""
        if type not in EDGE_TYPES or type == "next":
            raise ValueError(f"edge type must be one of ref, causal, derived_from, about (next is implicit), not {type!r}")
        return self._write(lambda conn, _op: conn.execute(
            "INSERT INTO edges(src, dst, type, valid_from, valid_to, recorded_at, meta) VALUES (?,?,?,?,?,?,?)",
            (src, dst, type, valid_from, valid_to, time.time(), _json(meta))).lastrowid)

    def supersede_edge(self, edge_id: int, *, valid_to: float | None = None, meta: Mapping | None = None) -> int | None:
        """Expire edge ``edge_id`` (system time: now) and, if ``valid_to`` is given, record a new
        row saying the relation held until ``valid_to`` (world time). Nothing is deleted: the old
        row stays visible to ``as_of`` queries before now. Returns the new edge's id (or None)."""
        def op(conn, _op):
            now = time.time()
            row = conn.execute("SELECT src, dst, type, valid_from, meta FROM edges WHERE id=? AND expired_at IS NULL",
                               (edge_id,)).fetchone()
            if row is None:
                raise MemoryStoreError(f"edge {edge_id} does not exist or is already superseded")
            conn.execute("UPDATE edges SET expired_at=? WHERE id=?", (now, edge_id))
            if valid_to is None:
                return None
            return conn.execute(
                "INSERT INTO edges(src, dst, type, valid_from, valid_to, recorded_at, meta) VALUES (?,?,?,?,?,?,?)",
                (row[0], row[1], row[2], row[3], valid_to, now, _json(meta) if meta is not None else row[4])).lastrowid
        return self._write(op)

    def forget(self, event_id: int) -> None:
        """Mark an event expired (system time now): hidden from searches, kept for ``as_of`` queries."""
        def op(conn, _op):
            if conn.execute("UPDATE events SET expired_at=? WHERE id=? AND expired_at IS NULL",
                            (time.time(), event_id)).rowcount != 1:
                raise MemoryStoreError(f"event {event_id} does not exist or is already forgotten")
        self._write(op)
        self._forgets += 1

    def neighbors(self, event_id: int, edge_types: Iterable[str] | None = None, *, direction: str = "both",
                  as_of: float | None = None, valid_at: float | None = None) -> list[tuple[Edge, StoredEvent]]:
        """Graph neighbours of an event: ``[(edge, the event at its other end)]``.

        ``direction``: ``out`` (what came of it: edges from this event), ``in`` (what led to it),
        or ``both``. ``as_of`` (system time) sees the edges believed then; ``valid_at`` (world
        time) keeps edges whose validity interval contains it. ``next`` edges come from the
        events' ``prev_id`` chain (out: the following event of the session; in: the previous one).
        """
        types = set(edge_types) if edge_types is not None else set(EDGE_TYPES)
        bad = types - set(EDGE_TYPES)
        if bad:
            raise ValueError(f"unknown edge types {sorted(bad)}; known: {EDGE_TYPES}")
        conn = self._reader()
        out: list[tuple[Edge, StoredEvent]] = []
        stored_types = sorted(types - {"next"})
        if stored_types:
            marks = ",".join("?" * len(stored_types))
            clauses, params = [], []
            if direction in ("out", "both"):
                clauses.append(f"(src=? AND type IN ({marks}))")
                params += [event_id, *stored_types]
            if direction in ("in", "both"):
                clauses.append(f"(dst=? AND type IN ({marks}))")
                params += [event_id, *stored_types]
            where = " OR ".join(clauses)
            if as_of is None:
                where = f"({where}) AND expired_at IS NULL"
            else:
                where = f"({where}) AND recorded_at <= ? AND (expired_at IS NULL OR expired_at > ?)"
                params += [as_of, as_of]
            if valid_at is not None:
                where += " AND (valid_from IS NULL OR valid_from <= ?) AND (valid_to IS NULL OR valid_to > ?)"
                params += [valid_at, valid_at]
            rows = conn.execute(f"SELECT id, src, dst, type, valid_from, valid_to, recorded_at, expired_at, meta "
                                f"FROM edges WHERE {where} ORDER BY id", params).fetchall()
            for r in rows:
                edge = Edge(*r[:8], json.loads(r[8]) if r[8] else None)
                other = edge.dst if edge.src == event_id else edge.src
                ev = self.get(other)
                if ev is not None and (as_of is None or ev.recorded_at <= as_of):
                    out.append((edge, ev))
        if "next" in types:
            me = self.get(event_id)
            if me is not None and direction in ("in", "both") and me.prev_id is not None:
                prev = self.get(me.prev_id)
                if prev is not None:
                    out.append((Edge(0, prev.id, me.id, "next", None, None, me.recorded_at, None, None), prev))
            if direction in ("out", "both"):
                row = conn.execute("SELECT id FROM events WHERE prev_id=? ORDER BY id LIMIT 1", (event_id,)).fetchone()
                if row is not None:
                    nxt = self.get(row[0])
                    if nxt is not None and (as_of is None or nxt.recorded_at <= as_of):
                        out.append((Edge(0, event_id, nxt.id, "next", None, None, nxt.recorded_at, None, None), nxt))
        return out

    # ---- reads ---------------------------------------------------------------------------------
    _EVENT_COLS = "id, session, ts, recorded_at, expired_at, role, kind, text, blob, size, prev_id, meta"

    def _event(self, row) -> StoredEvent:
        ev = StoredEvent(*row[:11], json.loads(row[11]) if row[11] else None)
        if ev.blob is not None:
            ev.text = self.blobs.get(ev.blob).decode()
        return ev

    def get(self, event_id: int) -> StoredEvent | None:
        """The event with this id (full text), or None.

        Raises:
            MemoryStoreError: its blob file is missing or corrupt.
        """
        row = self._reader().execute(f"SELECT {self._EVENT_COLS} FROM events WHERE id=?", (event_id,)).fetchone()
        return self._event(row) if row else None

    def get_many(self, ids: Sequence[int]) -> list[StoredEvent]:
        """The events with these ids, in the order given (missing ids are skipped); one query."""
        ids = [int(i) for i in ids]
        if not ids:
            return []
        rows = self._reader().execute(f"SELECT {self._EVENT_COLS} FROM events WHERE id IN "
                                      f"({','.join('?' * len(ids))})", ids).fetchall()
        by_id = {r[0]: r for r in rows}
        return [self._event(by_id[i]) for i in ids if i in by_id]

    def events(self, *, session: str | None = None, kind: str | None = None, limit: int = 100,
               after_id: int = 0) -> list[StoredEvent]:
        """Events in id order (oldest first), optionally of one session and/or kind."""
        where, params = ["id > ?"], [after_id]
        if session is not None:
            where.append("session=?")
            params.append(session)
        if kind is not None:
            where.append("kind=?")
            params.append(kind)
        rows = self._reader().execute(f"SELECT {self._EVENT_COLS} FROM events WHERE {' AND '.join(where)} "
                                      "ORDER BY id LIMIT ?", (*params, limit)).fetchall()
        return [self._event(r) for r in rows]

    def sessions(self) -> list[tuple[str, int, float, float]]:
        """``[(session, events, first ts, last ts)]``, most recent first."""
        return self._reader().execute("SELECT session, count(*), min(ts), max(ts) FROM events GROUP BY session "
                                      "ORDER BY max(ts) DESC").fetchall()

    def _where(self, filters: Filters | None, as_of: float | None) -> tuple[str, list]:
        clauses, params = [], []
        if as_of is None:
            clauses.append("e.expired_at IS NULL")
        else:
            clauses.append("e.recorded_at <= ? AND (e.expired_at IS NULL OR e.expired_at > ?)")
            params += [as_of, as_of]
        if filters is not None:
            for col, val in (("session", filters.session), ("kind", filters.kind), ("role", filters.role)):
                if val is None:
                    continue
                vals = [val] if isinstance(val, str) else list(val)
                clauses.append(f"e.{col} IN ({','.join('?' * len(vals))})")
                params += vals
            if filters.since is not None:
                clauses.append("e.ts >= ?")
                params.append(filters.since)
            if filters.until is not None:
                clauses.append("e.ts <= ?")
                params.append(filters.until)
        return " AND ".join(clauses), params

    def _codes_for(self, conn, where: str, params: list, extra: str = "", extra_params: Sequence = ()):
        rows = conn.execute(f"SELECT e.id, e.emb, e.emb_scale FROM events e WHERE {where} {extra} "
                            "AND e.emb IS NOT NULL", (*params, *extra_params)).fetchall()
        if not rows:
            return np.zeros(0, dtype=np.int64), np.zeros((0, self.dim), dtype=np.int8), np.zeros(0, dtype=np.float32)
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        codes = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.int8).reshape(len(rows), self.dim)
        scales = np.fromiter((r[2] for r in rows), dtype=np.float32, count=len(rows))
        return ids, codes, scales

    def _fts_sync(self) -> None:
        """Bring the FTS5 keyword index up to the last appended event.

        The keyword index is derived, like the vector index: ``append`` does not write it (an FTS5
        insert in every commit costs about 40 us, most of the append budget). Every keyword or
        hybrid search first indexes the events above ``fts_hwm`` in one transaction (group
        committed with appends), so a search still sees every event appended before it; after a
        crash the same catch-up runs, because ``fts_hwm`` commits with the rows it covers.
        """
        if self._fts_hwm >= self.last_id:
            return

        def op(conn, _op):
            row = conn.execute("SELECT value FROM meta WHERE key='fts_hwm'").fetchone()
            hwm = int(row[0]) if row else 0
            rows = conn.execute("SELECT id, text, blob FROM events WHERE id > ? ORDER BY id", (hwm,)).fetchall()
            if not rows:
                return hwm
            conn.executemany("INSERT INTO events_fts(rowid, text) VALUES (?, ?)",
                             [(i, self.blobs.get(b).decode() if b else t) for i, t, b in rows])
            new = rows[-1][0]
            conn.execute("INSERT INTO meta(key, value) VALUES ('fts_hwm', ?) "
                         "ON CONFLICT(key) DO UPDATE SET value=excluded.value", (str(new),))
            return new
        self._fts_hwm = max(self._fts_hwm, self._write(op))

    def _keyword(self, conn, text: str, where: str, params: list, limit: int | None) -> dict[int, float]:
        q = fts_query(text)
        if q is None:
            return {}
        self._fts_sync()
        lim = f"LIMIT {int(limit)}" if limit else ""
        rows = conn.execute(f"SELECT f.rowid, -bm25(events_fts) FROM events_fts f JOIN events e ON e.id = f.rowid "
                            f"WHERE events_fts MATCH ? AND {where} ORDER BY bm25(events_fts) {lim}",
                            (q, *params)).fetchall()
        return {r[0]: float(r[1]) for r in rows}

    def search(self, query: str | np.ndarray, k: int = 10, filters: Filters | Mapping | None = None,
               as_of: float | None = None, *, mode: str = "hybrid", alpha: float = 0.5,
               use_cache: bool = True, vector: np.ndarray | None = None) -> SearchResult:
        """The ``k`` events most relevant to ``query``, best first.

        Args:
            query: text, or a unit vector ``(dim,)`` (vector mode only).
            filters: :class:`Filters` (or a mapping of its fields): session, kind, role, ts range.
            as_of: system time (unix seconds): search the store as it was then (events recorded
                by then and not yet forgotten then).
            mode: ``hybrid`` (min-max fusion of cosine and BM25, weight ``alpha`` on cosine),
                ``vector`` (cosine only) or ``keyword`` (FTS5 BM25 only).
            vector: the text query's embedding when the caller already has it (e.g. embedded in
                a batch); it must come from this store's embedder.

        When the filters leave at most ``exact_max`` events (or the store has no ANN index yet)
        the search is exact: every candidate is scored from its INT8 codes, and hybrid scores
        are normalised over all candidates (the set-up measured in the notes). Otherwise the
        ANN index proposes candidates (over-fetched when filtered) and BM25 adds its own.
        """
        if mode not in ("hybrid", "vector", "keyword"):
            raise ValueError("mode must be hybrid, vector or keyword")
        if isinstance(filters, Mapping):
            filters = Filters(**filters)
        text = query if isinstance(query, str) else None
        if text is None and mode != "vector":
            raise ValueError("a vector query needs mode='vector'")
        qvec = None
        if mode != "keyword":
            if vector is not None:
                qvec = np.asarray(vector, dtype=np.float32)
            else:
                qvec = self._embed([text])[0] if text is not None else np.asarray(query, dtype=np.float32)
        key = (mode, k, alpha, filters.key() if filters else None, as_of)
        shard = filters.session if filters is not None and isinstance(filters.session, str) else None
        version = (self.last_id, self._forgets)
        if use_cache and self.cache.capacity:
            served = self._from_cache(shard, key, text, qvec, k, version, filters, as_of, mode, alpha)
            if served is not None:
                return served
        result, top = self._search(text, qvec, k + 1, filters, as_of, mode, alpha)
        if use_cache and self.cache.capacity:
            vecs = None
            if mode == "vector" and len(top[0]):
                vecs = self._vectors(top[0])
            self.cache.put(shard, CacheEntry(key, text, qvec, top[0], top[1], vecs, result.exact, version))
        result.hits = result.hits[:k]
        return result

    def _vectors(self, ids: np.ndarray) -> np.ndarray:
        rows = self._reader().execute(f"SELECT id, emb, emb_scale FROM events WHERE id IN "
                                      f"({','.join('?' * len(ids))})", [int(i) for i in ids]).fetchall()
        by_id = {r[0]: np.frombuffer(r[1], dtype=np.int8).astype(np.float32) * r[2] for r in rows}
        return np.stack([by_id[int(i)] for i in ids])

    def _search(self, text, qvec, k, filters, as_of, mode, alpha) -> tuple[SearchResult, tuple[np.ndarray, np.ndarray]]:
        conn = self._reader()
        where, params = self._where(filters, as_of)
        restricted = filters is not None or as_of is not None
        n_cand = (conn.execute(f"SELECT count(*) FROM events e WHERE {where}", params).fetchone()[0]
                  if restricted else self.index.total)
        exact = n_cand <= self.exact_max or self.index.main is None
        dense: dict[int, float] = {}
        kw: dict[int, float] = {}
        if exact:
            if mode != "keyword":
                ids, codes, scales = self._codes_for(conn, where, params)
                sc = int8_scores(qvec, codes, scales)
                dense = dict(zip(ids.tolist(), sc.tolist()))
            if mode != "vector":
                kw = self._keyword(conn, text, where, params, None)
            cand = list(dense) if mode != "keyword" else list(kw)
        else:
            fetch = max(k * 4, 50) * (8 if restricted else 1)
            if mode != "keyword":
                ids, sc, _ = self.index.search(qvec, fetch)
                if restricted and len(ids):
                    ok = {r[0] for r in conn.execute(
                        f"SELECT e.id FROM events e WHERE {where} AND e.id IN ({','.join('?' * len(ids))})",
                        (*params, *ids.tolist())).fetchall()}
                    keep = [i for i, x in enumerate(ids.tolist()) if x in ok]
                    ids, sc = ids[keep], sc[keep]
                elif len(ids):  # drop forgotten events
                    gone = {r[0] for r in conn.execute(
                        f"SELECT id FROM events WHERE expired_at IS NOT NULL AND id IN ({','.join('?' * len(ids))})",
                        ids.tolist()).fetchall()}
                    keep = [i for i, x in enumerate(ids.tolist()) if x not in gone]
                    ids, sc = ids[keep], sc[keep]
                dense = dict(zip(ids.tolist(), sc.tolist()))
            if mode != "vector":
                kw = self._keyword(conn, text, where, params, max(k * 4, 50))
                missing = [i for i in kw if i not in dense]
                if mode == "hybrid" and missing:
                    mids, codes, scales = self._codes_for(conn, where, params,
                                                          f"AND e.id IN ({','.join('?' * len(missing))})", missing)
                    dense.update(zip(mids.tolist(), int8_scores(qvec, codes, scales).tolist()))
            cand = list(dict.fromkeys([*dense, *kw]))
        if not cand:
            return SearchResult([], exact), (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))
        ids = np.array(cand, dtype=np.int64)
        d = np.array([dense.get(i, 0.0) for i in cand])
        b = np.array([kw.get(i, 0.0) for i in cand])
        if mode == "vector":
            score = d
        elif mode == "keyword":
            score = b
        else:
            # keyword scores: events matching no query term score 0 (as BM25 over a whole corpus)
            bn = b / b.max() if b.max() > 0 else np.zeros_like(b)
            score = alpha * minmax(d) + (1 - alpha) * bn
        order = np.argsort(-score, kind="stable")[:k]
        evs = {ev.id: ev for ev in self.get_many(ids[order])}
        hits = [Hit(evs[int(ids[i])], float(score[i]), float(d[i]) if mode != "keyword" else None,
                    float(b[i]) if mode != "vector" else None) for i in order if int(ids[i]) in evs]
        return SearchResult(hits, exact), (ids[order], score[order].astype(np.float32))

    def _from_cache(self, shard, key, text, qvec, k, version, filters, as_of, mode, alpha) -> SearchResult | None:
        cands = self.cache.candidates(shard, key, text, qvec)
        if not cands:
            self.cache.record(hit=False)
            return None
        entry, cos = cands[0]
        certified = False
        ids = scores = None
        if entry.version == version and text is not None and entry.text == text:
            # the same computation over the same data: a fresh search returns exactly this
            certified, ids, scores = entry.exact, entry.ids[:k], entry.scores[:k]
        elif mode == "vector" and entry.exact and entry.vecs is not None and entry.version[1] == version[1] \
                and qvec is not None and len(entry.ids) > k:
            delta = float(np.sqrt(max(0.0, 2.0 - 2.0 * float(entry.qvec @ qvec))))
            cand_ids = list(entry.ids.tolist())
            cand_sc = list((entry.vecs @ qvec).tolist())
            if version[0] > entry.version[0]:  # events written since: score them exactly
                conn = self._reader()
                where, params = self._where(filters, as_of)
                nids, codes, scales = self._codes_for(conn, where, params, "AND e.id > ?", [entry.version[0]])
                cand_ids += nids.tolist()
                cand_sc += int8_scores(qvec, codes, scales).tolist()
            order = np.argsort(-np.array(cand_sc), kind="stable")[:k]
            if len(order) == k and cand_sc[order[-1]] >= float(entry.scores[k]) + delta * NORM_BOUND:
                certified, ids, scores = True, np.array(cand_ids)[order], np.array(cand_sc)[order]
        if ids is None and self.cache.approx_threshold is not None and cos >= self.cache.approx_threshold:
            ids, scores = entry.ids[:k], entry.scores[:k]
        if ids is None:
            self.cache.record(hit=False)
            return None
        verify = self.cache.record(hit=True, certified=certified)
        evs = {ev.id: ev for ev in self.get_many(ids)}
        hits = [Hit(evs[int(i)], float(sc)) for i, sc in zip(ids, scores) if int(i) in evs]
        result = SearchResult(hits, exact=certified, cache="certified" if certified else "approximate")
        if verify:
            fresh, _ = self._search(text, qvec, k, filters, as_of, mode, alpha)
            truth = set(fresh.ids)
            self.cache.record_verification(len(truth & set(result.ids)) / len(truth) if truth else 1.0)
        return result

    # ---- episodes (for the Agent and the planner) ------------------------------------------------------
    def append_episode(self, session: str, question: str, plan: str | Sequence[Any] | None,
                       results: Sequence[Any], answer: str | None, *, meta: Mapping | None = None) -> int:
        """Store one agent run as events + edges in one transaction; returns the question event's id.

        Events: ``question`` (user), ``plan`` (planner), one ``tool_result`` per result (tool),
        ``answer`` (assistant). Edges: question -causal-> plan -causal-> each result -causal->
        answer; answer -derived_from-> question; every event of the run -about-> the question
        (so ``neighbors(qid, ['about'], direction='in')`` returns the whole episode).
        ``results`` items may be mappings (keys tool/name, args, ok, value, error), objects
        with those attributes, or strings.
        """
        texts: list[tuple[str, str, str]] = [("user", "question", question)]
        if plan is not None:
            texts.append(("planner", "plan", plan if isinstance(plan, str) else "\n".join(map(str, plan))))
        for r in results:
            texts.append(("tool", "tool_result", _result_text(r)))
        if answer is not None:
            texts.append(("assistant", "answer", answer))
        events = [Event(t, session=session, role=role, kind=kind, meta=meta if kind == "question" else None)
                  for role, kind, t in texts]
        prepared = self._prepare(events)
        has_plan = plan is not None

        def op(conn, op):
            now = time.time()
            ids = []
            for p in prepared:
                eid, post = self._insert(conn, p, now)
                ids.append(eid)
                op.post.append(post)
            q = ids[0]
            plan_id = ids[1] if has_plan else None
            res_ids = ids[1 + has_plan: 1 + has_plan + len(results)]
            ans_id = ids[-1] if answer is not None else None
            edges = []
            head = plan_id or q
            if plan_id:
                edges.append((q, plan_id, "causal"))
            edges += [(head, r, "causal") for r in res_ids]
            if ans_id:
                edges += [(r, ans_id, "causal") for r in res_ids] or [(head, ans_id, "causal")]
                edges.append((ans_id, q, "derived_from"))
            edges += [(e, q, "about") for e in ids[1:]]
            conn.executemany("INSERT INTO edges(src, dst, type, recorded_at) VALUES (?,?,?,?)",
                             [(s, d, t, now) for s, d, t in edges])
            return q
        qid = self._write(op)
        if self.auto_compact and self.index.needs_compaction():
            self._start_compaction()
        return qid

    def relevant_episodes(self, question: str, k: int = 3, *, session: str | None = None,
                          max_chars: int = 2000) -> str:
        """Compact text about the ``k`` past episodes most relevant to ``question`` (hybrid search
        over stored questions), for a planner prompt; ``""`` when there are none. At most
        ``max_chars`` characters."""
        filters = Filters(kind="question", session=session)
        if self.index.total == 0:
            return ""
        res = self.search(question, k=k, filters=filters)
        parts = []
        for n, hit in enumerate(res.hits, 1):
            members = sorted(self.neighbors(hit.event.id, ["about"], direction="in"), key=lambda t: t[1].id)
            when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(hit.event.ts))
            lines = [f"Past episode {n} ({when} UTC):", f"Q: {_clip(hit.event.text, 300)}"]
            for _, ev in members:
                label = {"plan": "Plan", "tool_result": "Result", "answer": "A"}.get(ev.kind, ev.kind)
                lines.append(f"{label}: {_clip(ev.text, 300 if ev.kind != 'answer' else 400)}")
            parts.append("\n".join(lines))
        text = "\n\n".join(parts)
        return text if len(text) <= max_chars else text[:max_chars - 3] + "..."

    # ---- maintenance ------------------------------------------------------------------------------
    def wait_for_index(self, timeout: float | None = None) -> None:
        """Block until a background index build or compaction (if any) has finished."""
        if self._compactor is not None:
            self._compactor.join(timeout)

    def compact(self) -> dict:
        """Fold the exact buffer into the ANN index now (blocking) and publish its snapshot."""
        if self._compactor is not None:
            self._compactor.join()
        out = self.index.compact(loader=self._all_vectors)
        self.cache.clear()
        return out

    def gc(self, *, grace_s: float = 3600.0) -> dict:
        """Delete blob files no event references (older than ``grace_s``) and checkpoint the WAL."""
        refs = {r[0] for r in self._reader().execute("SELECT blob FROM events WHERE blob IS NOT NULL")}
        removed, freed = self.blobs.gc(refs, grace_s=grace_s)
        with self._wlock:
            ck = self._wconn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return {"blobs_removed": removed, "bytes_freed": freed, "wal_checkpoint": list(ck)}

    def check(self) -> dict:
        """Integrity: SQLite ``integrity_check``, every blob readable with the right sha256, the
        index covering every event. Returns ``{"ok": bool, ...details}``."""
        conn = self._reader()
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        bad_blobs = []
        for (sha,) in conn.execute("SELECT DISTINCT blob FROM events WHERE blob IS NOT NULL"):
            try:
                self.blobs.get(sha)
            except MemoryStoreError:
                bad_blobs.append(sha)
        n_vec = conn.execute("SELECT count(*) FROM events WHERE emb IS NOT NULL").fetchone()[0]
        return {"ok": integrity == "ok" and not bad_blobs and self.index.total == n_vec,
                "integrity_check": integrity, "bad_blobs": bad_blobs, "events_with_vectors": n_vec,
                "indexed": self.index.total, "ann_indexed": self.index.main_n, "buffered": self.index.buffered,
                "index_rebuilt_reason": self.index.rebuilt_reason}

    def stats(self) -> dict:
        conn = self._reader()
        return {"path": str(self.path), "durability": self.durability,
                "events": conn.execute("SELECT count(*) FROM events").fetchone()[0],
                "edges": conn.execute("SELECT count(*) FROM edges").fetchone()[0],
                "blocks": conn.execute("SELECT count(*) FROM blocks").fetchone()[0],
                "sessions": conn.execute("SELECT count(DISTINCT session) FROM events").fetchone()[0],
                "index": {"kind": self.index.params.kind if self.index.main is not None else "exact",
                          "ann": self.index.main_n, "buffer": self.index.buffered,
                          "snapshot_bytes": self.index.snapshot_bytes()},
                "cache": self.cache.stats.as_dict()}

    def close(self) -> None:
        """Wait for a running compaction, close every connection. Idempotent."""
        if self._closed:
            return
        if self._compactor is not None:
            self._compactor.join()
        with self._wlock:
            self._closed = True
            self._wconn.close()
        with self._readers_lock:
            for c in self._readers:
                try:
                    c.close()
                except Exception:  # a reader of another thread may be mid-statement; closing is best effort
                    pass
            self._readers.clear()

    def __enter__(self) -> "MemoryStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _clip(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n - 3] + "..."


def _result_text(r: Any) -> str:
    if isinstance(r, str):
        return r
    get = r.get if isinstance(r, Mapping) else (lambda k, d=None: getattr(r, k, d))
    tool = get("tool") or get("name") or "?"
    args = get("args")
    ok = get("ok", True)
    body = get("value") if ok else f"error: {get('error')}"
    args_s = json.dumps(args, default=str) if args is not None else ""
    return f"{tool}({args_s}) -> {json.dumps(body, default=str) if not isinstance(body, str) else body}"
