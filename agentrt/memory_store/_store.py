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
from pathlib import Path
from typing import Any

import numpy as np

from agentrt.errors import MemoryStoreError
from agentrt.memory_store._blobs import BlobStore
from agentrt.memory_store._blocks import Blocks
from agentrt.memory_store._cache import LookasideCache
from agentrt.memory_store._codec import dequantize, quantize
from agentrt.memory_store._embed import Embedder
from agentrt.memory_store._episodes import EpisodesMixin
from agentrt.memory_store._index import IndexParams, VectorIndex
from agentrt.memory_store._schema import EDGE_TYPES, connect, create_schema
from agentrt.memory_store._search import SearchMixin
from agentrt.memory_store._types import Edge, Event, StoredEvent, _json, _Op

__all__ = ["MemoryStore"]

log = logging.getLogger(__name__)

#: texts up to this many UTF-8 bytes stay in the events row (SQLite's guidance: blobs under
#: about 100 KB are faster inline than as files); longer ones go to the blob store
INLINE_MAX = 100_000
PREVIEW_CHARS = 500


class MemoryStore(SearchMixin, EpisodesMixin):
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
            except BaseException as exc:
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
            self.last_id = max(self.last_id, eid)
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

    def __enter__(self) -> MemoryStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
