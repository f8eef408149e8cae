"""Durability: the vector index is a rebuildable cache; a SIGKILLed writer loses nothing acknowledged."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from _memory_helpers import unit

from agentrt.memory_store import Event, MemoryStore


def _build(path, params, vecs):
    with MemoryStore(path, dim=384, index=params, auto_compact=False, exact_max=0) as s:
        s.append_many([Event(f"e{i}", embedding=v) for i, v in enumerate(vecs)])
        s.compact()
        assert s.index.main is not None


def _assert_serves(path, params, vecs):
    with MemoryStore(path, dim=384, index=params, auto_compact=False, exact_max=0) as s:
        s.wait_for_index()
        for i in (0, 123, 399):
            assert s.search(vecs[i], k=1, mode="vector", use_cache=False).ids == [i + 1]
        report = s.check()
        assert report["ok"], report
        return s.index.rebuilt_reason, s.index.main is not None


def test_snapshot_is_reused_on_reopen(tmp_path, rng, ann_params):
    vecs = unit(rng, 400)
    _build(tmp_path / "m.db", ann_params, vecs)
    reason, has_main = _assert_serves(tmp_path / "m.db", ann_params, vecs)
    assert reason is None and has_main


@pytest.mark.parametrize("damage", ["delete_snapshot", "delete_meta", "corrupt", "truncate"])
def test_index_is_rebuilt_when_its_files_are_lost_or_corrupt(tmp_path, rng, ann_params, damage):
    vecs = unit(rng, 400)
    _build(tmp_path / "m.db", ann_params, vecs)
    idx = tmp_path / "m.db.index"
    snap = next(idx.glob("main-*.faiss"))
    if damage == "delete_snapshot":
        snap.unlink()
    elif damage == "delete_meta":
        (idx / "meta.json").unlink()
    elif damage == "corrupt":
        data = bytearray(snap.read_bytes())
        for off in range(1000, len(data), 4099):
            data[off] ^= 0xFF
        snap.write_bytes(bytes(data))
    else:
        snap.write_bytes(snap.read_bytes()[: snap.stat().st_size // 2])
    reason, has_main = _assert_serves(tmp_path / "m.db", ann_params, vecs)
    assert reason is not None  # it noticed, and rebuilt (or served exactly) instead of failing
    # and the rebuilt snapshot is good for the next open
    reason2, has_main2 = _assert_serves(tmp_path / "m.db", ann_params, vecs)
    assert reason2 is None and has_main2


WRITER = textwrap.dedent("""
    import sys, numpy as np
    from agentrt.memory_store import Event, MemoryStore
    path, mode = sys.argv[1], sys.argv[2]
    rng = np.random.default_rng(int(sys.argv[3]))
    s = MemoryStore(path, dim=384, durability=mode)
    i = 0
    while True:
        v = rng.standard_normal(384).astype(np.float32)
        v /= np.linalg.norm(v)
        text = f"event {i} " + "y" * (i % 7 * 30000)  # every 7th kind of size crosses the blob limit
        eid = s.append(Event(text, embedding=v, session=f"s{i % 3}"))
        if i % 5 == 4:
            s.blocks.set("counter", str(i), s.blocks.get("counter").version)
        print(eid, i, flush=True)   # acknowledged: append returned
        i += 1
""")


@pytest.mark.parametrize("mode,trials", [("process", 3), ("power", 1)])
def test_sigkilled_writer_loses_no_acknowledged_event(tmp_path, mode, trials):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    rng = np.random.default_rng(1)
    for trial in range(trials):
        path = tmp_path / f"{mode}{trial}.db"
        proc = subprocess.Popen([sys.executable, str(script), str(path), mode, str(trial)],
                                stdout=subprocess.PIPE, text=True)
        acked: dict[int, int] = {}
        deadline = time.monotonic() + float(rng.uniform(0.8, 1.5))
        while time.monotonic() < deadline or len(acked) < 20:
            line = proc.stdout.readline()
            if not line:
                break
            eid, i = map(int, line.split())
            acked[eid] = i
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream: the writer is inside append or set right now
        proc.wait()
        proc.stdout.close()
        assert len(acked) >= 20
        with MemoryStore(path, dim=384) as s:
            assert s.check()["integrity_check"] == "ok"
            for eid, i in acked.items():
                ev = s.get(eid)
                assert ev is not None and ev.text.startswith(f"event {i} ")
            assert s.check()["ok"]
