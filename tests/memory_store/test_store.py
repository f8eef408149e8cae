"""MemoryStore behaviour on real SQLite files: read-your-writes, as-of, CAS, blobs, graph, cache."""

import threading
import time

import numpy as np
import pytest
from _memory_helpers import unit

from agentrt.errors import MemoryConflict, MemoryStoreError
from agentrt.memory_store import (
    Event,
    Filters,
    HashingEmbedder,
    LookasideCache,
    MemoryStore,
)


def test_event_is_searchable_as_soon_as_append_returns(store):
    for i in range(20):
        eid = store.append(Event(f"note {i}: the meeting about topic{i} moved to room {i}", session="s"))
        hits = store.search(f"topic{i} room {i}", k=1, filters={"session": "s"})
        assert hits.ids == [eid]


@pytest.mark.parametrize("kind", ["hnsw_sq8", "ivf_sq8"])
def test_read_your_writes_through_the_ann_index(tmp_path, rng, ann_params, kind):
    ann_params.kind = kind
    vecs = unit(rng, 700)
    with MemoryStore(tmp_path / "m.db", dim=384, index=ann_params, auto_compact=False, exact_max=0) as s:
        ids = s.append_many([Event(f"e{i}", embedding=v) for i, v in enumerate(vecs[:600])])
        s.compact()
        assert s.index.main is not None and s.index.main_n == 600
        for i in range(600, 700):  # new events land in the exact buffer, found at once
            eid = s.append(Event(f"e{i}", embedding=vecs[i]))
            assert s.search(vecs[i], k=1, mode="vector", use_cache=False).ids == [eid]
        res = s.search(vecs[3], k=1, mode="vector", use_cache=False)
        assert res.ids == [ids[3]] and not res.exact


def test_as_of_sees_the_store_as_it_was(store):
    a = store.append(Event("the launch code is blue falcon", session="s"))
    time.sleep(0.01)
    t1 = time.time()
    time.sleep(0.01)
    store.forget(a)
    b = store.append(Event("the launch code is red falcon", session="s"))
    now = store.search("launch code falcon", k=5)
    past = store.search("launch code falcon", k=5, as_of=t1)
    assert now.ids == [b]
    assert past.ids == [a]
    assert store.get(a).expired_at is not None  # forgotten, not deleted


def test_edges_are_superseded_not_deleted(store):
    a = store.append(Event("Alice works at Acme", session="s"))
    b = store.append(Event("Acme", session="s"))
    e = store.add_edge(a, b, "about", valid_from=100.0)
    time.sleep(0.01)
    t_before = time.time()
    time.sleep(0.01)
    new = store.supersede_edge(e, valid_to=200.0)
    current = [ed for ed, _ in store.neighbors(a, ["about"], direction="out")]
    assert [ed.id for ed in current] == [new] and current[0].valid_to == 200.0
    old = [ed for ed, _ in store.neighbors(a, ["about"], direction="out", as_of=t_before)]
    assert [ed.id for ed in old] == [e] and old[0].valid_to is None
    assert store.neighbors(a, ["about"], valid_at=250.0) == []
    assert len(store.neighbors(a, ["about"], valid_at=150.0)) == 1


def test_filters_by_session_kind_and_time(store):
    store.append(Event("deploy the billing service", session="a", kind="note", ts=1000.0))
    x = store.append(Event("deploy the billing service", session="b", kind="note", ts=2000.0))
    store.append(Event("deploy the billing service", session="b", kind="plan", ts=3000.0))
    assert store.search("deploy billing", k=5, filters=Filters(session="b", kind="note")).ids == [x]
    assert store.search("deploy billing", k=5, filters=Filters(since=1500.0, until=2500.0)).ids == [x]


def test_cas_stale_writer_gets_a_conflict_and_nothing_is_lost(store):
    b = store.blocks.get("learned")
    assert b.version == 0
    store.blocks.set("learned", "first", b.version)
    with pytest.raises(MemoryConflict) as err:
        store.blocks.set("learned", "stale overwrite", b.version)
    assert err.value.actual_version == 1 and err.value.expected_version == 0
    assert store.blocks.get("learned").value == "first"


def test_concurrent_cas_increments_lose_no_update(store):
    def worker():
        for _ in range(25):
            while True:
                cur = store.blocks.get("counter")
                try:
                    store.blocks.set("counter", str(int(cur.value or 0) + 1), cur.version)
                    break
                except MemoryConflict:
                    continue
    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = store.blocks.get("counter")
    assert final.value == "100" and final.version == 100
    assert [h.version for h in store.blocks.history("counter")] == list(range(1, 101))


def test_long_text_goes_to_a_blob_and_round_trips(store):
    text = "chapter one. " * 20_000  # 260 KB
    eid = store.append(Event(text, session="s"))
    ev = store.get(eid)
    assert ev.blob is not None and ev.text == text and ev.size == len(text.encode())
    assert store.blobs.path(ev.blob).stat().st_size == len(text.encode())
    store.blobs.path(ev.blob).write_bytes(b"tampered")
    with pytest.raises(MemoryStoreError, match="corrupt"):
        store.get(eid)
    assert store.check()["bad_blobs"] == [ev.blob]


def test_gc_removes_only_unreferenced_blobs(store):
    kept = store.append(Event("k" * 150_000, session="s"))
    orphan = store.blobs.put(b"o" * 150_000)  # as if a writer died before its row committed
    report = store.gc(grace_s=0)
    assert report["blobs_removed"] == 1
    assert not store.blobs.path(orphan).exists()
    assert store.get(kept).text == "k" * 150_000


def test_group_commit_in_power_mode_keeps_every_append(tmp_path, rng):
    vecs = unit(rng, 400)
    with MemoryStore(tmp_path / "p.db", dim=384, durability="power") as s:
        ids: list[int] = []
        lock = threading.Lock()

        def writer(part):
            for v in part:
                eid = s.append(Event("x", embedding=v))
                with lock:
                    ids.append(eid)
        threads = [threading.Thread(target=writer, args=(vecs[i::4],)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(ids) == list(range(1, 401))
        assert s._wconn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_concurrent_readers_during_writes(tmp_path, rng):
    vecs = unit(rng, 600)
    errors: list[BaseException] = []
    done = threading.Event()
    with MemoryStore(tmp_path / "m.db", dim=384, embedder=None) as s:
        s.append_many([Event(f"seed {i}", embedding=v) for i, v in enumerate(vecs[:100])])

        def reader():
            try:
                while not done.is_set():
                    res = s.search(vecs[np.random.randint(600)], k=5, mode="vector", use_cache=False)
                    assert len(res) == 5
                    for h in res:
                        assert s.get(h.event.id).text == h.event.text
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
        readers = [threading.Thread(target=reader) for _ in range(3)]
        for t in readers:
            t.start()
        for i in range(100, 600):
            eid = s.append(Event(f"e {i}", embedding=vecs[i]))
            assert s.search(vecs[i], k=1, mode="vector", use_cache=False).ids == [eid]
        done.set()
        for t in readers:
            t.join()
    assert not errors, errors[:3]


def test_certified_cache_hit_equals_a_fresh_search(tmp_path, rng):
    vecs = unit(rng, 500)
    with MemoryStore(tmp_path / "m.db", dim=384, cache=LookasideCache(16, verify_every=1)) as s:
        s.append_many([Event(f"e{i}", embedding=v) for i, v in enumerate(vecs)])
        s.wait_for_index()  # a compaction finishing mid-test clears the cache (a miss, by design)
        q = vecs[10]
        first = s.search(q, k=5, mode="vector")
        assert first.cache == "miss" and first.exact
        near = q + 1e-4 * unit(rng, 1)[0]
        near /= np.linalg.norm(near)
        hit = s.search(near, k=5, mode="vector")
        assert hit.cache == "certified"
        assert hit.ids == s.search(near, k=5, mode="vector", use_cache=False).ids
        eid = s.append(Event("new", embedding=near))  # a write since: still certified, includes it
        hit2 = s.search(near, k=5, mode="vector")
        assert hit2.cache == "certified" and eid in hit2.ids[:2]
        assert hit2.ids == s.search(near, k=5, mode="vector", use_cache=False).ids
        far = s.search(vecs[11], k=5, mode="vector")
        assert far.cache == "miss"
        st = s.cache.stats
        assert st.certified_hits == 2 and st.recall_on_hit == 1.0


def test_episode_is_stored_with_edges_and_returned_for_a_related_question(store):
    qid = store.append_episode("run-1", "How many stars does the httpx repo have?", "1. github_stars('httpx')",
                               [{"tool": "github_stars", "args": {"repo": "httpx"}, "ok": True, "value": 13000}],
                               "About 13,000 stars.")
    store.append_episode("run-2", "What is the capital of France?", "1. search('capital of France')",
                         [{"tool": "search", "args": {"q": "capital of France"}, "ok": False, "error": "timeout"}],
                         "Paris.")
    members = store.neighbors(qid, ["about"], direction="in")
    assert sorted(ev.kind for _, ev in members) == ["answer", "plan", "tool_result"]
    text = store.relevant_episodes("how many stars has httpx got", k=1)
    assert "httpx" in text and "13000" in text and "Paris" not in text
    nxt = store.neighbors(qid, ["next"], direction="out")
    assert nxt[0][1].kind == "plan"
    # a similarity gate: the same episode at a low bar, nothing at a bar no paraphrase reaches
    assert "13000" in store.relevant_episodes("how many stars has httpx got", k=1, min_similarity=-1.0)
    assert store.relevant_episodes("how many stars has httpx got", k=1, min_similarity=1.01) == ""


def test_store_refuses_vectors_of_another_model(tmp_path):
    MemoryStore(tmp_path / "m.db", embedder=HashingEmbedder(384)).close()
    with pytest.raises(MemoryStoreError, match="embedded with"):
        MemoryStore(tmp_path / "m.db", embedder=HashingEmbedder(256), dim=384)


def test_ann_path_applies_filters_forgets_and_hybrid_keywords(tmp_path, rng, ann_params):
    vecs = unit(rng, 800)
    with MemoryStore(tmp_path / "m.db", dim=384, index=ann_params, auto_compact=False, exact_max=0) as s:
        ids = s.append_many([Event(f"filler {i}", session=f"s{i % 4}", embedding=v) for i, v in enumerate(vecs[:700])])
        s.compact()
        target = ids[41]  # session s1
        res = s.search(vecs[41], k=5, mode="vector", filters={"session": "s1"}, use_cache=False)
        assert not res.exact and res.ids[0] == target
        assert all(h.event.session == "s1" for h in res)
        assert target not in s.search(vecs[41], k=5, mode="vector", filters={"session": "s2"}, use_cache=False).ids
        s.forget(target)
        assert target not in s.search(vecs[41], k=5, mode="vector", use_cache=False).ids
        # a keyword-only match deep in the main index still gets a dense score and is fused in
        kid = s.append(Event("the zanzibar invoice is overdue", embedding=vecs[750]))
        s.compact()
        hit = s.search("zanzibar invoice", k=3, use_cache=False, vector=vecs[1])
        assert kid in hit.ids and all(h.dense is not None and h.keyword is not None for h in hit)
