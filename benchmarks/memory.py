"""`agentrt bench memory`: the episodic memory store against its baselines (issue 8).

Four parts, each with its baseline measured in the same run:

1. **ANN** at ``ann_n`` x 384 (default 100,000) *clustered synthetic* unit vectors, built like the
   notes' harness (../shared/notes/memory_sleeptime.md 4.1: 1,000 centres, each point = centre +
   0.9 x a 32-d latent through one of 20 shared random bases + 0.25/sqrt(D) noise). Real
   embeddings of 100,000 real texts would take ~15 min of MiniLM on these 2 cores, so the real
   embeddings (LoCoMo, 5,882 turns) are used in part 4 instead. Systems: FP32 exact (faiss
   IndexFlatIP, the ground truth), INT8 exact (the store's per-vector codes, scanned), HNSW+SQ8
   (M 16 and 8) and IVF+SQ8 at several search widths. recall@10 vs FP32 exact, p50/p99 latency of
   one query at a time on one thread pinned to one core (systems alternate query by query), index
   bytes (the file written), build time (2 threads) and reopen time (read from disk).
2. **Write path**: ``MemoryStore.append`` of events with precomputed embeddings, p50/p99, in
   blocks alternating with a bare SQLite insert+commit of the same row (the floor); then
   events/s with group commit (8 writer threads) and ``append_many`` batches, in both modes.
3. **Crash**: ``crash_trials`` SIGKILLs of a writer subprocess mid-stream (random 0.3-1.2 s),
   then reopen: acknowledged events lost, integrity; and reopen time of a 100,000-event store.
4. **LoCoMo** (../shared/data/locomo): evidence recall@5/10/20 of the store's hybrid search (and its
   vector-only and FTS5 keyword-only modes) over each conversation's turns for its questions,
   against rank-bm25 BM25Okapi (stopwords removed), as in ../shared/notes/embeddings.md 3.

``--limit N`` makes a quick run: N vectors for parts 1-3 and one LoCoMo conversation.
Options (``--set KEY=VALUE``): ann_n, queries, crash_trials, write_n, locomo_convs, embed_threads.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

D = 384


def _pct(xs, q) -> float:
    return float(np.percentile(np.asarray(xs), q))


def clustered(n: int, nq: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(n, 384)`` base and ``(nq, 384)`` query unit vectors from the notes' clustered generator."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, D)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    # 20 shared 32-d subspaces; a latent N(0, I/32) through one of them has norm ~1, like a centre
    bases = rng.standard_normal((20, 32, D)).astype(np.float32) / np.sqrt(D)

    def make(m: int) -> np.ndarray:
        c = rng.integers(0, 1000, m)
        b = rng.integers(0, 20, m)
        lat = rng.standard_normal((m, 32)).astype(np.float32) / np.sqrt(32)
        x = centres[c].copy()
        for j in range(20):
            sel = b == j
            x[sel] += 0.9 * (lat[sel] @ bases[j])
        x += rng.standard_normal((m, D)).astype(np.float32) * (0.25 / np.sqrt(D))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    return make(n), make(nq)


# ---- 1. ANN ------------------------------------------------------------------------------------------
def _ann(n: int, nq: int, tmp: Path, progress) -> dict[str, Any]:
    import faiss

    from agentrt.memory_store import IndexParams, int8_scores, quantize
    from agentrt.memory_store._index import new_faiss_index

    xb, xq = clustered(n, nq)
    progress(f"ann: {n} x {D} clustered synthetic, {nq} queries")
    faiss.omp_set_num_threads(2)
    out: dict[str, Any] = {"data": "clustered synthetic (notes' generator), unit vectors", "n": n, "queries": nq}
    q_stats = xq @ xb[:20000].T
    out["query_top1_cos_mean_on_20k"] = round(float(q_stats.max(axis=1).mean()), 3)

    flat = faiss.IndexFlatIP(D)
    t = time.perf_counter()
    flat.add(xb)
    build_flat = time.perf_counter() - t
    gt = flat.search(xq, 10)[1]
    np.save(tmp / "fp32.npy", xb)
    fp32_bytes = (tmp / "fp32.npy").stat().st_size

    t = time.perf_counter()
    codes, scales = quantize(xb)
    build_int8 = time.perf_counter() - t
    np.save(tmp / "int8_codes.npy", codes)
    np.save(tmp / "int8_scales.npy", scales)
    int8_bytes = (tmp / "int8_codes.npy").stat().st_size + (tmp / "int8_scales.npy").stat().st_size

    configs = [("hnsw_sq8_m16", IndexParams(kind="hnsw_sq8", hnsw_m=16), [64, 128, 192]),
               ("ivf_sq8", IndexParams(kind="ivf_sq8"), [8, 16, 32])]
    built: dict[str, Any] = {}
    for name, params, _ in configs:
        t = time.perf_counter()
        index = new_faiss_index(params.kind, D, params, n)  # what the store builds (ids = event ids)
        index.train(xb)
        index.add_with_ids(xb, np.arange(n, dtype=np.int64))
        build = time.perf_counter() - t
        path = tmp / f"{name}.faiss"
        faiss.write_index(index, str(path))
        t = time.perf_counter()
        faiss.read_index(str(path))
        reopen = time.perf_counter() - t
        built[name] = (index, params, build, path.stat().st_size, reopen)
        progress(f"ann: built {name} in {build:.1f}s, {path.stat().st_size / 1e6:.1f} MB")

    t = time.perf_counter()
    np.load(tmp / "fp32.npy")
    reopen_fp32 = time.perf_counter() - t
    t = time.perf_counter()
    codes = np.load(tmp / "int8_codes.npy")
    scales = np.load(tmp / "int8_scales.npy")
    reopen_int8 = time.perf_counter() - t

    # every system answers query i before any answers query i+1 (alternating), one thread, one core
    faiss.omp_set_num_threads(1)
    systems: list[tuple[str, Any]] = [
        ("fp32_exact", lambda q: flat.search(q[None, :], 10)[1][0]),
        ("int8_exact", lambda q: np.argpartition(-int8_scores(q, codes, scales), 10)[:10]),
    ]
    for name, params, widths in configs:
        index = built[name][0]
        inner = faiss.downcast_index(index.index) if params.kind == "hnsw_sq8" else index
        for w in widths:
            def search(q, index=index, inner=inner, w=w, kind=params.kind):
                if kind == "hnsw_sq8":
                    inner.hnsw.efSearch = w
                else:
                    inner.nprobe = w
                return index.search(q[None, :], 10)[1][0]
            systems.append((f"{name}@{'ef' if params.kind == 'hnsw_sq8' else 'nprobe'}{w}", search))
    lat = {s: [] for s, _ in systems}
    found = {s: [] for s, _ in systems}
    try:
        old_aff = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {max(old_aff)})
    except (AttributeError, OSError):
        old_aff = None
    try:
        for _, fn in systems:  # warm-up
            fn(xq[0])
        for i in range(nq):
            for s, fn in systems:
                t = time.perf_counter()
                ids = fn(xq[i])
                lat[s].append(time.perf_counter() - t)
                found[s].append(ids)
    finally:
        if old_aff is not None:
            os.sched_setaffinity(0, old_aff)
        faiss.omp_set_num_threads(2)
    res = {}
    gt_int8 = found["int8_exact"]  # what the store's own codes give exhaustively
    for s, _ in systems:
        rec = np.mean([len(set(map(int, f)) & set(map(int, g))) / 10 for f, g in zip(found[s], gt)])
        rec8 = np.mean([len(set(map(int, f)) & set(map(int, g))) / 10 for f, g in zip(found[s], gt_int8)])
        base = s.split("@")[0]
        if base == "fp32_exact":
            size, build, reopen = fp32_bytes, build_flat, reopen_fp32
        elif base == "int8_exact":
            size, build, reopen = int8_bytes, build_int8, reopen_int8
        else:
            _, _, build, size, reopen = built[base]
        res[s] = {"recall_at_10": round(float(rec), 4), "recall_at_10_vs_int8_exact": round(float(rec8), 4),
                  "p50_us": round(_pct(lat[s], 50) * 1e6, 1),
                  "p99_us": round(_pct(lat[s], 99) * 1e6, 1), "index_bytes": int(size),
                  "x_smaller_than_fp32": round(fp32_bytes / size, 2), "build_s": round(build, 2),
                  "reopen_s": round(reopen, 4)}
        progress(f"ann: {s}: {res[s]}")
    out["systems"] = res
    return out


# ---- 2. write path ---------------------------------------------------------------------------------------
def _texts(rng, n):
    sizes = rng.choice([200, 400, 800, 1500], n)
    return [("w%d " % i) + "lorem ipsum dolor sit amet " * (int(s) // 27) for i, s in enumerate(sizes)]


def _write(n: int, tmp: Path, progress) -> dict[str, Any]:
    import sqlite3
    import threading

    from agentrt.memory_store import Event, MemoryStore, quantize

    rng = np.random.default_rng(3)
    vecs = rng.standard_normal((n, D)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    texts = _texts(rng, n)
    out: dict[str, Any] = {"n": n, "event": "text 200-1,500 B + precomputed 384-d embedding (INT8 in the row)"}
    for mode in ("process", "power"):
        m = n if mode == "process" else min(n, 1500)
        store = MemoryStore(tmp / f"w_{mode}.db", dim=D, durability=mode, auto_compact=False)
        raw = sqlite3.connect(tmp / f"raw_{mode}.db", isolation_level=None)
        raw.execute("PRAGMA journal_mode=WAL")
        raw.execute(f"PRAGMA synchronous={'FULL' if mode == 'power' else 'NORMAL'}")
        raw.execute("CREATE TABLE ev(id INTEGER PRIMARY KEY, session TEXT, ts REAL, text TEXT, emb BLOB, scale REAL)")
        lat_store, lat_raw = [], []
        block = 250
        for start in range(0, m, block):  # alternate blocks: store, then bare SQLite
            for i in range(start, min(m, start + block)):
                ev = Event(texts[i], session=f"s{i % 8}", embedding=vecs[i])
                t = time.perf_counter()
                store.append(ev)
                lat_store.append(time.perf_counter() - t)
            for i in range(start, min(m, start + block)):
                t = time.perf_counter()
                c, s = quantize(vecs[i])
                raw.execute("BEGIN")
                raw.execute("INSERT INTO ev(session, ts, text, emb, scale) VALUES (?,?,?,?,?)",
                            (f"s{i % 8}", time.time(), texts[i], c.tobytes(), float(s[0])))
                raw.execute("COMMIT")
                lat_raw.append(time.perf_counter() - t)
        # group commit: 8 threads appending at once (each append returns after its commit)
        g = min(m, 4000 if mode == "process" else 3000)
        idx = iter(range(g))
        lock = threading.Lock()

        def writer():
            while True:
                with lock:
                    i = next(idx, None)
                if i is None:
                    return
                store.append(Event(texts[i], session="g", embedding=vecs[i]))
        threads = [threading.Thread(target=writer) for _ in range(8)]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        group_eps = g / (time.perf_counter() - t)
        t = time.perf_counter()
        b = min(m, 6400)
        for start in range(0, b, 64):
            store.append_many([Event(texts[i], session="b", embedding=vecs[i]) for i in range(start, min(b, start + 64))])
        batch_eps = b / (time.perf_counter() - t)
        single_eps = len(lat_store) / sum(lat_store)
        store.close()
        raw.close()
        out[mode] = {"appends_timed": len(lat_store),
                     "append_p50_us": round(_pct(lat_store, 50) * 1e6, 1),
                     "append_p99_us": round(_pct(lat_store, 99) * 1e6, 1),
                     "bare_sqlite_p50_us": round(_pct(lat_raw, 50) * 1e6, 1),
                     "bare_sqlite_p99_us": round(_pct(lat_raw, 99) * 1e6, 1),
                     "single_thread_events_per_s": round(single_eps),
                     "group_commit_8_threads_events_per_s": round(group_eps),
                     "append_many_64_events_per_s": round(batch_eps)}
        progress(f"write[{mode}]: {out[mode]}")
    return out


# ---- 3. crash ----------------------------------------------------------------------------------------------
WRITER = """
import sys, numpy as np
from agentrt.memory_store import Event, MemoryStore
path, mode, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = np.random.default_rng(seed)
s = MemoryStore(path, dim=384, durability=mode, auto_compact=False)
i = 0
while True:
    v = rng.standard_normal(384).astype(np.float32); v /= np.linalg.norm(v)
    text = f"event {i} " + "y" * (i % 11 * 15000)
    if i % 3 == 0:
        ids = s.append_many([Event(text, embedding=v, session="a"), Event(text + " twin", embedding=v, session="b")])
    else:
        ids = [s.append(Event(text, embedding=v, session="a"))]
    print(" ".join(map(str, ids)), i, flush=True)
    i += 1
"""


def _crash(trials: int, tmp: Path, progress) -> dict[str, Any]:
    from agentrt.memory_store import MemoryStore

    script = tmp / "writer.py"
    script.write_text(WRITER)
    rng = np.random.default_rng(5)
    rows = []
    for trial in range(trials):
        mode = "power" if trial % 4 == 3 else "process"
        path = tmp / f"crash{trial}.db"
        proc = subprocess.Popen([sys.executable, str(script), str(path), mode, str(trial)],
                                stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
        acked: dict[int, int] = {}
        stop = time.monotonic() + float(rng.uniform(0.3, 1.2)) + 1.0  # +1 s interpreter start-up
        while time.monotonic() < stop:
            line = proc.stdout.readline()
            if not line:
                break
            *ids, i = map(int, line.split())
            for eid in ids:
                acked[eid] = i
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        t = time.perf_counter()
        s = MemoryStore(path, dim=D)
        reopen = time.perf_counter() - t
        lost = 0
        for eid, i in acked.items():
            ev = s.get(eid)
            if ev is None or not ev.text.startswith(f"event {i} "):
                lost += 1
        chk = s.check()
        total = chk["events_with_vectors"]
        s.close()
        rows.append({"mode": mode, "acked": len(acked), "in_db": total, "lost": lost,
                     "integrity": chk["integrity_check"], "check_ok": chk["ok"], "reopen_s": round(reopen, 4)})
    progress(f"crash: {trials} trials, lost {sum(r['lost'] for r in rows)}, "
             f"acked {sum(r['acked'] for r in rows)}")
    return {"trials": rows, "lost_total": sum(r["lost"] for r in rows),
            "acked_total": sum(r["acked"] for r in rows),
            "all_integrity_ok": all(r["integrity"] == "ok" and r["check_ok"] for r in rows)}


def _reopen(n: int, tmp: Path, progress) -> dict[str, Any]:
    from agentrt.memory_store import Event, IndexParams, MemoryStore

    xb, _ = clustered(n, 1, seed=9)
    path = tmp / "big.db"
    params = IndexParams(min_ann=min(20_000, max(n // 2, 1)))
    t = time.perf_counter()
    with MemoryStore(path, dim=D, index=params, auto_compact=False) as s:
        for start in range(0, n, 1000):
            s.append_many([Event(f"event {i}", session=f"s{i % 50}", embedding=xb[i])
                           for i in range(start, min(n, start + 1000))])
        fill = time.perf_counter() - t
        t = time.perf_counter()
        s.compact()
        build = time.perf_counter() - t
        extra, _ = clustered(100, 1, seed=10)  # 100 more events, left in the exact buffer
        tail = s.append_many([Event(f"tail {i}", embedding=extra[i]) for i in range(100)])
    progress(f"reopen: filled {n} events in {fill:.1f}s, index built in {build:.1f}s")
    times = []
    for _ in range(3):
        t = time.perf_counter()
        s = MemoryStore(path, dim=D, index=params, auto_compact=False)
        hit = s.search(xb[5], k=1, mode="vector", use_cache=False).ids
        times.append(time.perf_counter() - t)
        ok = s.index.rebuilt_reason is None and s.index.main is not None and s.index.buffered == 100
        s.close()
    for f in (path.parent / "big.db.index").glob("main-*.faiss"):
        f.unlink()  # lose the index: the store must still open and answer (exactly) at once
    t = time.perf_counter()
    s = MemoryStore(path, dim=D, index=params, auto_compact=False)
    hit_lost = s.search(xb[5], k=1, mode="vector", use_cache=False).ids
    t_lost = time.perf_counter() - t
    t = time.perf_counter()
    s.wait_for_index()
    rebuild = time.perf_counter() - t  # background rebuild, after the store already answered
    s.close()
    return {"events": n + 100, "fill_s": round(fill, 2), "index_build_s": round(build, 2),
            "reopen_and_first_search_s": [round(x, 4) for x in times], "snapshot_used": ok,
            "first_search_found_event": hit == [6],
            "reopen_without_index_first_search_s": round(t_lost, 3), "found_without_index": hit_lost == [6],
            "background_rebuild_s": round(rebuild, 2), "tail_ids": [tail[0], tail[-1]]}


# ---- 4. LoCoMo ------------------------------------------------------------------------------------------------
def _norm_evidence(ev: list[str], valid: set[str]) -> list[str]:
    out = []
    for e in ev:
        for part in re.split(r"[;\s]+", e.strip()):
            m = re.fullmatch(r"D:?(\d+):0*(\d+)", part)
            if m:
                did = f"D{m.group(1)}:{m.group(2)}"
                if did in valid:
                    out.append(did)
    return list(dict.fromkeys(out))


def load_locomo(data_dir: Path) -> list[dict]:
    """The 10 LoCoMo conversations: ``[{id, turns: [(dia_id, "Speaker: text", session)], qa: [...]}]``."""
    zpath = Path(data_dir) / "locomo" / "locomo10.zip"
    convs = []
    with zipfile.ZipFile(zpath) as z:
        for name in sorted(n for n in z.namelist() if n.endswith(".json")):
            c = json.loads(z.read(name))
            turns = []
            for key in sorted((k for k in c if re.fullmatch(r"session_\d+", k)), key=lambda k: int(k.split("_")[1])):
                for t in c[key]:
                    turns.append((t["dia_id"], f"{t['speaker']}: {t['text']}", key))
            valid = {t[0] for t in turns}
            qa = []
            for q in c["qa"]:
                ev = _norm_evidence(q.get("evidence", []), valid)
                if ev:
                    qa.append({"question": q["question"], "evidence": ev, "category": int(q["category"])})
            convs.append({"id": Path(name).stem, "turns": turns, "qa": qa})
    return convs


def _locomo(data_dir: Path, n_convs: int, threads: int, tmp: Path, progress) -> dict[str, Any]:
    from rank_bm25 import BM25Okapi

    from agentrt.config import get_settings
    from agentrt.memory_store import (
        Event,
        LookasideCache,
        MemoryStore,
        MiniLMEmbedder,
        minilm_tokenizer_path,
        tokens,
    )

    embedder = MiniLMEmbedder(minilm_tokenizer_path(get_settings().data_dir), threads=threads)
    convs = load_locomo(data_dir)[:n_convs]
    systems = ("hybrid", "vector", "keyword_fts5", "bm25_baseline")
    ks = (5, 10, 20)
    per_q: list[dict] = []
    all_turns, all_questions = [], []
    cache_rows = {"repeat": [], "near_repeat": []}
    embed_s = search_s = 0.0
    n_search = 0
    for conv in convs:
        t = time.perf_counter()
        vecs = embedder.embed([t[1] for t in conv["turns"]])
        qvecs = embedder.embed([q["question"] for q in conv["qa"]])
        embed_s += time.perf_counter() - t
        all_turns.append(vecs)
        all_questions.append(qvecs)
        store = MemoryStore(tmp / f"locomo_{conv['id']}.db", embedder=embedder, auto_compact=False)
        ids = store.append_many([Event(text, session=sess, role="user", kind="turn", embedding=v, meta={"dia_id": d})
                                 for (d, text, sess), v in zip(conv["turns"], vecs)])
        dia_of = {eid: t[0] for eid, t in zip(ids, conv["turns"])}
        bm25 = BM25Okapi([tokens(t[1]) or ["_"] for t in conv["turns"]])
        for q, qv in zip(conv["qa"], qvecs):
            row = {"category": q["category"]}
            gold = set(q["evidence"])
            for name, mode in (("hybrid", "hybrid"), ("vector", "vector"), ("keyword_fts5", "keyword")):
                t = time.perf_counter()
                res = store.search(q["question"], k=20, mode=mode, use_cache=False, vector=qv)
                if name == "hybrid":
                    search_s += time.perf_counter() - t
                    n_search += 1
                got = [dia_of[i] for i in res.ids]
                row[name] = {k: len(gold & set(got[:k])) / len(gold) for k in ks}
            sc = bm25.get_scores(tokens(q["question"]))
            got = [conv["turns"][i][0] for i in np.argsort(-sc, kind="stable")[:20]]
            row["bm25_baseline"] = {k: len(gold & set(got[:k])) / len(gold) for k in ks}
            per_q.append(row)
        # lookaside cache on real queries: each question, then the same again (repeat), then a
        # near-repeat (same words, new casing and punctuation), vector mode k=10; every hit verified
        variants = [q["question"].rstrip("?").lower() + ", please?" for q in conv["qa"]]
        vvecs = embedder.embed(variants)
        for kind_, texts_, vecs_ in (("repeat", [q["question"] for q in conv["qa"]], qvecs),
                                     ("near_repeat", variants, vvecs)):
            store.cache = LookasideCache(64, approx_threshold=0.95, verify_every=0)
            for q, qv, tv, v2 in zip(conv["qa"], qvecs, texts_, vecs_):
                store.search(q["question"], k=10, mode="vector", vector=qv)
                t = time.perf_counter()
                res = store.search(tv, k=10, mode="vector", vector=v2)
                dt = time.perf_counter() - t
                fresh = store.search(tv, k=10, mode="vector", vector=v2, use_cache=False)
                cache_rows[kind_].append({"hit": res.cache != "miss", "certified": res.cache == "certified",
                                          "recall": len(set(res.ids) & set(fresh.ids)) / max(len(fresh.ids), 1),
                                          "s": dt})
        store.close()
        progress(f"locomo: conversation {conv['id']}: {len(conv['turns'])} turns, {len(conv['qa'])} questions")

    def agg(rows):
        return {s: {f"recall@{k}": round(float(np.mean([r[s][k] for r in rows])), 4) for k in ks} for s in systems}

    cats = [r for r in per_q if r["category"] in (1, 2, 3, 4)]
    ann_real = _ann_real(np.concatenate(all_turns), np.concatenate(all_questions))
    by_cat = {str(c): agg([r for r in per_q if r["category"] == c]) for c in (1, 2, 3, 4, 5)
              if any(r["category"] == c for r in per_q)}
    return {"conversations": len(convs), "turns": sum(len(c["turns"]) for c in convs), "questions": len(per_q),
            "questions_cat1_4": len(cats), "embedder": embedder.name, "embed_threads": threads,
            "turn_format": "Speaker: text", "fusion": "min-max, alpha 0.5 (dense)",
            "embed_s": round(embed_s, 1), "hybrid_search_mean_ms": round(search_s / max(n_search, 1) * 1e3, 2),
            "all": agg(per_q), "cat1_4": agg(cats) if cats else None, "by_category": by_cat,
            "ann_on_real_embeddings": ann_real, "lookaside_cache": _cache_summary(cache_rows)}


def _cache_summary(rows: dict) -> dict[str, Any]:
    out = {"workload": "each question searched (vector, k=10), then again as a repeat or as a near-repeat "
                       "(lowercased, ', please?'); approximate hits allowed at cos >= 0.95; each second "
                       "query's answer compared with a fresh search (recall@10 on hits)"}
    for kind in ("repeat", "near_repeat"):
        r = rows[kind]
        hits = [x for x in r if x["hit"]]
        cert = [x for x in hits if x["certified"]]
        approx = [x for x in hits if not x["certified"]]
        miss = [x for x in r if not x["hit"]]
        out[kind] = {"second_queries": len(r), "hit_rate": round(len(hits) / len(r), 4) if r else None,
                     "certified_hits": len(cert), "approximate_hits": len(approx),
                     "recall_on_certified_hits": round(float(np.mean([x["recall"] for x in cert])), 4) if cert else None,
                     "recall_on_approximate_hits": round(float(np.mean([x["recall"] for x in approx])), 4)
                     if approx else None,
                     "hit_p50_us": round(_pct([x["s"] for x in hits], 50) * 1e6, 1) if hits else None,
                     "miss_p50_us": round(_pct([x["s"] for x in miss], 50) * 1e6, 1) if miss else None}
    return out


def _ann_real(xb: np.ndarray, xq: np.ndarray) -> dict[str, Any]:
    """recall@10 of each index kind on the real MiniLM embeddings (all turns; questions as queries)."""
    import faiss

    from agentrt.memory_store import IndexParams, int8_scores, quantize
    from agentrt.memory_store._index import new_faiss_index, set_search_params

    gt = faiss.IndexFlatIP(D)
    gt.add(xb)
    truth = gt.search(xq, 10)[1]
    codes, scales = quantize(xb)
    out = {"n": len(xb), "queries": len(xq)}
    found = [np.argpartition(-int8_scores(q, codes, scales), 10)[:10] for q in xq]
    out["int8_exact"] = round(float(np.mean([len(set(f) & set(g)) / 10 for f, g in zip(found, truth)])), 4)
    for kind in ("ivf_sq8", "hnsw_sq8"):
        params = IndexParams(kind=kind)
        index = new_faiss_index(kind, D, params, len(xb))
        index.train(xb)
        index.add_with_ids(xb, np.arange(len(xb), dtype=np.int64))
        set_search_params(index, params)
        found = index.search(xq, 10)[1]
        out[kind] = round(float(np.mean([len(set(f) & set(g)) / 10 for f, g in zip(found, truth)])), 4)
    return out


# ---- entry ----------------------------------------------------------------------------------------------------------
def run(config: dict[str, Any]) -> dict[str, Any]:
    progress = config.get("progress") or print
    limit = config.get("limit")
    n = int(config.get("ann_n", limit or 100_000))
    nq = int(config.get("queries", min(1000, max(100, n // 100))))
    trials = int(config.get("crash_trials", 20 if not limit else 4))
    write_n = int(config.get("write_n", min(10_000, n)))
    convs = int(config.get("locomo_convs", 10 if not limit else 1))
    threads = int(config.get("embed_threads", 2))
    data_dir = Path(config.get("data") or Path(__file__).resolve().parents[2] / "shared" / "data")
    with tempfile.TemporaryDirectory(prefix="agentrt-bench-memory-") as tmpd:
        tmp = Path(tmpd)
        ann = _ann(n, nq, tmp, progress)
        write = _write(write_n, tmp, progress)
        crash = _crash(trials, tmp, progress)
        reopen = _reopen(n, tmp, progress)
        locomo = _locomo(data_dir, convs, threads, tmp, progress)

    # targets are judged on the store's default index (IndexParams()); the most accurate
    # configuration within the latency budget (else the most accurate) is reported beside it
    from agentrt.memory_store import IndexParams

    ann_sys = {k: v for k, v in ann["systems"].items() if "@" in k}
    fast = {k: v for k, v in ann_sys.items() if v["p50_us"] <= 300 and v["p99_us"] <= 600}
    best = max(fast or ann_sys, key=lambda k: (round(ann_sys[k]["recall_at_10"], 3), -ann_sys[k]["p50_us"]))
    dflt = IndexParams()
    chosen = config.get("index") or (f"ivf_sq8@nprobe{dflt.nprobe}" if dflt.kind == "ivf_sq8"
                                     else f"hnsw_sq8_m{dflt.hnsw_m}@ef{dflt.ef_search}")
    a = ann["systems"][chosen]
    lo = locomo["all"]
    targets = [
        {"name": f"ann_recall_at_10 ({chosen})", "value": a["recall_at_10"], "goal": ">= 0.99",
         "met": a["recall_at_10"] >= 0.99},
        {"name": f"ann_p50_us ({chosen})", "value": a["p50_us"], "goal": "<= 300", "met": a["p50_us"] <= 300},
        {"name": f"ann_p99_us ({chosen})", "value": a["p99_us"], "goal": "<= 600", "met": a["p99_us"] <= 600},
        {"name": f"ann_x_smaller_than_fp32 ({chosen})", "value": a["x_smaller_than_fp32"], "goal": ">= 3.5",
         "met": a["x_smaller_than_fp32"] >= 3.5},
        {"name": "append_p50_us (process mode)", "value": write["process"]["append_p50_us"], "goal": "<= 50",
         "met": write["process"]["append_p50_us"] <= 50},
        {"name": "crash_trials", "value": len(crash["trials"]), "goal": ">= 20", "met": len(crash["trials"]) >= 20},
        {"name": "acknowledged_events_lost", "value": crash["lost_total"], "goal": "== 0",
         "met": crash["lost_total"] == 0},
        {"name": "integrity_ok_after_every_kill", "value": crash["all_integrity_ok"], "goal": "true",
         "met": bool(crash["all_integrity_ok"])},
        {"name": f"reopen_s at {reopen['events']} events (max of 3, incl. first search)",
         "value": max(reopen["reopen_and_first_search_s"]), "goal": "<= 1",
         "met": max(reopen["reopen_and_first_search_s"]) <= 1 and reopen["events"] >= 100_000},
    ]
    for k in (5, 10, 20):
        h, b = lo["hybrid"][f"recall@{k}"], lo["bm25_baseline"][f"recall@{k}"]
        targets.append({"name": f"locomo_recall@{k} hybrid vs bm25", "value": f"{h} vs {b}", "goal": "> bm25",
                        "met": h > b})
    return {"bench": "memory",
            "config": {"ann_n": n, "queries": nq, "crash_trials": trials, "write_n": write_n,
                       "locomo_conversations": convs, "embed_threads": threads, "chosen_index": chosen,
                       "best_index_in_this_run": best,
                       "best_rule": "highest recall@10 (3 decimals, then lower p50) among ANN configurations "
                                    "with p50 <= 300 us and p99 <= 600 us; among all if none is that fast",
                       "limit": limit},
            "systems": {"ann": ann, "write": write, "crash": crash, "reopen": reopen, "locomo": locomo},
            "targets": targets}


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(run({"limit": int(sys.argv[1]) if len(sys.argv) > 1 else None}), indent=2))
