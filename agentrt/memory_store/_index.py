"""The vector index: a derived cache of the event embeddings held in SQLite, never the source of truth.

Two tiers (the shape of Aeon's main index + delta buffer, ../shared/notes/memory_sleeptime.md 1.2):

* ``main``: a faiss index over every event up to a high-water mark (``hwm``, an event id), loaded
  from a snapshot file. Kinds: ``ivf_sq8`` (default: ``IndexIVFScalarQuantizer``, 8-bit
  per-dimension scalar quantiser, one list per ~400 vectors, 16 lists probed) and ``hnsw_sq8``
  (``IndexHNSWSQ``, M=16, efConstruction 128, efSearch 128). Chosen by ``agentrt bench memory``
  (results/memory.json): at 100,000 x 384 IVF+SQ8 was as accurate as or more accurate than
  HNSW+SQ8 at similar latency, with a 3.9x smaller file than FP32 against 2.9x (the HNSW graph
  adds ~140 bytes of links per vector). Below ``min_ann`` events there is no main index at all:
  exact search is as fast.
* ``buffer``: the vectors of events above the hwm, scanned exactly, so an event is searchable as
  soon as ``append`` returns (inserting into HNSW costs about 0.4 ms; a buffer row a few us).

Snapshots are written aside (tmp file, fsync, rename) and published by atomically replacing
``meta.json`` (which records file name, hwm, size and CRC32); a missing, truncated or corrupt
snapshot is detected on load and the index is rebuilt from SQLite, never a fatal error.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["IndexParams", "VectorIndex", "new_faiss_index", "set_search_params"]

log = logging.getLogger(__name__)


@dataclass
class IndexParams:
    """How the main index is built and searched.

    Attributes:
        kind: ``ivf_sq8`` | ``hnsw_sq8`` | ``none`` (exact buffer only).
        hnsw_m: HNSW connectivity M (links per node per level; 2M on level 0).
        ef_construction, ef_search: HNSW beam widths at build and at query time.
        nlist, nprobe: IVF lists (None: one per ~400 vectors at training) and lists probed per query.
            An IVF index is retrained from SQLite when the store has doubled since training.
        min_ann: below this many events, keep everything in the exact buffer.
        buffer_max: compact (fold the buffer into the main index) beyond this many buffered events.
    """

    kind: str = "ivf_sq8"
    hnsw_m: int = 16
    ef_construction: int = 128
    ef_search: int = 128
    nlist: int | None = None
    nprobe: int = 16
    min_ann: int = 20_000
    buffer_max: int = 4_096


def _faiss():
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - depends on the install
        from agentrt.errors import EmbedderNotInstalled

        raise EmbedderNotInstalled("faiss-cpu is not installed: pip install 'agentrt[memory]'") from exc
    return faiss


def new_faiss_index(kind: str, dim: int, params: IndexParams, n_train: int):
    """An empty (untrained) faiss index of ``kind`` taking 64-bit ids via ``add_with_ids``; inner-product metric."""
    faiss = _faiss()
    if kind == "hnsw_sq8":
        inner = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_8bit, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = params.ef_construction
        inner.hnsw.efSearch = params.ef_search
        return faiss.IndexIDMap2(inner)
    if kind == "ivf_sq8":
        nlist = params.nlist or max(16, n_train // 400)
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit,
                                              faiss.METRIC_INNER_PRODUCT)
        index.own_fields = True
        quantizer.this.disown()
        index.nprobe = params.nprobe
        return index
    raise ValueError(f"unknown index kind {kind!r} (hnsw_sq8 | ivf_sq8)")


def set_search_params(index, params: IndexParams) -> None:
    """Apply efSearch / nprobe to a (possibly freshly loaded) index."""
    faiss = _faiss()
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    if hasattr(inner, "hnsw"):
        inner.hnsw.efSearch = params.ef_search
    if hasattr(inner, "nprobe"):
        inner.nprobe = params.nprobe


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _crc32_file(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return crc


class VectorIndex:
    """Main faiss snapshot + exact buffer, thread-safe (searches run while appends and compaction go on).

    Scores are inner products of L2-normalised vectors (cosine similarity), higher is better.
    """

    def __init__(self, directory: Path, dim: int, params: IndexParams | None = None, *, model: str = "") -> None:
        self.dir = Path(directory)
        self.dim = dim
        self.params = params or IndexParams()
        self.model = model
        self._lock = threading.Lock()
        self._compact_lock = threading.Lock()
        self.main = None
        self.main_n = 0
        self.hwm = 0
        self._ids = np.zeros(0, dtype=np.int64)
        self._vecs = np.zeros((0, dim), dtype=np.float32)
        self._n = 0
        self.rebuilt_reason: str | None = None
        self.trained_n = 0

    # ---- snapshot files -------------------------------------------------------------------
    def load_snapshot(self) -> bool:
        """Load the published snapshot; False (with ``rebuilt_reason`` set) if it is absent or unusable."""
        meta_path = self.dir / "meta.json"
        if not meta_path.is_file():
            self.rebuilt_reason = "no index snapshot"
            return False
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("dim") != self.dim or meta.get("model") != self.model:
                self.rebuilt_reason = f"snapshot is for {meta.get('model')}/{meta.get('dim')}, not {self.model}/{self.dim}"
                return False
            if meta["kind"] == "none":
                self.main, self.main_n, self.hwm = None, 0, int(meta["hwm"])
                return True
            path = self.dir / meta["file"]
            if path.stat().st_size != meta["size"] or _crc32_file(path) != meta["crc32"]:
                self.rebuilt_reason = f"snapshot {path.name} is truncated or corrupt (size/CRC32 mismatch)"
                return False
            index = _faiss().read_index(str(path))
            if index.ntotal != meta["n"]:
                self.rebuilt_reason = "snapshot holds a different number of vectors than its metadata"
                return False
            set_search_params(index, self.params)
        except Exception as exc:  # any unreadable snapshot is rebuilt, never fatal
            self.rebuilt_reason = f"snapshot unreadable: {type(exc).__name__}: {exc}"
            return False
        self.main, self.main_n, self.hwm = index, int(meta["n"]), int(meta["hwm"])
        self.trained_n = int(meta.get("trained_n", meta["n"]))
        return True

    def _publish(self, index, n: int, hwm: int, kind: str) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = {"kind": kind, "dim": self.dim, "model": self.model, "hwm": hwm, "n": n, "trained_n": self.trained_n}
        if index is not None:
            name = f"main-{hwm}.faiss"
            tmp = self.dir / f".{name}.tmp"
            _faiss().write_index(index, str(tmp))
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, self.dir / name)
            meta.update(file=name, size=(self.dir / name).stat().st_size, crc32=_crc32_file(self.dir / name))
        tmp_meta = self.dir / ".meta.json.tmp"
        with open(tmp_meta, "w") as f:
            json.dump(meta, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_meta, self.dir / "meta.json")
        _fsync_dir(self.dir)
        for old in self.dir.glob("main-*.faiss"):
            if old.name != meta.get("file"):
                old.unlink(missing_ok=True)

    def snapshot_bytes(self) -> int:
        """Size of the published snapshot file in bytes (0 when there is none)."""
        return sum(p.stat().st_size for p in self.dir.glob("main-*.faiss"))

    # ---- buffer ----------------------------------------------------------------------------
    def add(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        """Add rows to the exact buffer (ids at or below the hwm are already in the main index and
        are skipped): searchable when this returns."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        vecs = np.asarray(vecs, dtype=np.float32).reshape(len(ids), self.dim)
        with self._lock:
            if self.hwm and len(ids) and ids.min() <= self.hwm:
                # a rebuild from SQLite already covered these (their commit raced the rebuild)
                keep = ids > self.hwm
                ids, vecs = ids[keep], vecs[keep]
            need = self._n + len(ids)
            if need > len(self._ids):
                cap = max(need, 2 * len(self._ids), 256)
                new_ids = np.zeros(cap, dtype=np.int64)
                new_vecs = np.zeros((cap, self.dim), dtype=np.float32)
                new_ids[:self._n] = self._ids[:self._n]
                new_vecs[:self._n] = self._vecs[:self._n]
                self._ids, self._vecs = new_ids, new_vecs
            self._ids[self._n:need] = ids
            self._vecs[self._n:need] = vecs
            self._n = need

    @property
    def buffered(self) -> int:
        return self._n

    @property
    def total(self) -> int:
        return self.main_n + self._n

    def needs_compaction(self) -> bool:
        p = self.params
        if p.kind == "none":
            return False
        return self._n > p.buffer_max and self.total >= p.min_ann

    # ---- search ----------------------------------------------------------------------------
    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, bool]:
        """Top-``k`` over main + buffer: ``(ids (m,) int64, scores (m,) float32, exact)``, best first.

        ``exact`` is True when no approximate main index took part (every score is exact over
        the stored INT8 codes, so the ranking is exact).
        """
        q = np.asarray(query, dtype=np.float32).reshape(1, self.dim)
        with self._lock:
            main, ids, vecs, n = self.main, self._ids, self._vecs, self._n
        parts_ids, parts_sc = [], []
        if main is not None and main.ntotal:
            d, i = main.search(q, k)
            keep = i[0] >= 0
            parts_ids.append(i[0][keep])
            parts_sc.append(d[0][keep])
        if n:
            sc = vecs[:n] @ q[0]
            top = np.argpartition(-sc, k - 1)[:k] if n > k else np.arange(n)
            parts_ids.append(ids[:n][top])
            parts_sc.append(sc[top])
        if not parts_ids:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32), True
        all_ids, all_sc = np.concatenate(parts_ids), np.concatenate(parts_sc)
        order = np.argsort(-all_sc, kind="stable")[:k]
        return all_ids[order], all_sc[order].astype(np.float32), main is None

    # ---- build / compaction -------------------------------------------------------------------
    def reset(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        """Drop the main index and hold ``ids``/``vecs`` in the exact buffer (after a failed load)."""
        with self._lock:
            self.main, self.main_n, self.hwm = None, 0, 0
            self._ids = np.zeros(0, dtype=np.int64)
            self._vecs = np.zeros((0, self.dim), dtype=np.float32)
            self._n = 0
        self.add(ids, vecs)

    def compact(self, *, publish: bool = True, loader=None) -> dict:
        """Fold the buffer into a new main index built aside, publish its snapshot, swap it in.

        Searches keep using the old main + buffer until the swap. ``loader()`` returns every
        ``(ids, vectors)`` of the store (for an IVF retrain). Returns what was done.
        """
        with self._compact_lock:
            with self._lock:
                main, n = self.main, self._n
                ids, vecs = self._ids[:n].copy(), self._vecs[:n].copy()
            if n == 0 and main is not None:
                return {"added": 0, "n": self.main_n}
            kind = self.params.kind
            if kind == "none" or (main is None and n < self.params.min_ann):
                if publish:  # record the hwm so a reopen knows the buffer is everything
                    self._publish(None, 0, 0, "none")
                return {"added": 0, "n": 0, "exact_only": True}
            faiss = _faiss()
            retrain = (kind == "ivf_sq8" and main is not None and loader is not None
                       and self.main_n + n > 2 * self.trained_n)
            if retrain:  # the IVF lists were trained on half the data or less: rebuild from SQLite
                ids, vecs = loader()
                n = len(ids)
                main = None
            if main is None:
                new = new_faiss_index(kind, self.dim, self.params, n)
                new.train(vecs)
                self.trained_n = n
            else:
                new = faiss.clone_index(main)
                set_search_params(new, self.params)
            new.add_with_ids(vecs, ids)
            hwm = int(ids.max()) if n else self.hwm
            if publish:
                self._publish(new, int(new.ntotal), hwm, kind)
            with self._lock:
                keep = self._ids[:self._n] > hwm
                rest_ids, rest_vecs = self._ids[:self._n][keep].copy(), self._vecs[:self._n][keep].copy()
                self.main, self.main_n, self.hwm = new, int(new.ntotal), hwm
                self._ids, self._vecs, self._n = rest_ids, rest_vecs, len(rest_ids)
            return {"added": n, "n": self.main_n, "hwm": hwm}
