"""Retrieval for `MemoryStore`: filters, exact and ANN paths, hybrid fusion, the lookaside cache."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from agentrt.memory_store._cache import NORM_BOUND, CacheEntry
from agentrt.memory_store._codec import int8_scores
from agentrt.memory_store._keyword import fts_query, minmax
from agentrt.memory_store._types import Filters, Hit, SearchResult

__all__ = ["SearchMixin"]


class SearchMixin:
    """The search half of `MemoryStore` (it relies on the store's connections, index and cache)."""

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
