"""A sleep-time job killed (SIGKILL) mid-job leaves memory consistent, and resumes without redoing stored steps."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import anyio
from _sleeptime_fake import FakeModel

from agentrt.memory_store import HashingEmbedder, MemoryStore
from agentrt.sleeptime import SleepTimeScheduler, context_session, learned_label
from agentrt.tracing import Tracer

CONTEXT = "Janet has 3 apple trees. Each tree gives 4 apples a day. She sells every apple for $2."

CHILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, {here!r})
    import anyio
    from _sleeptime_fake import FakeModel
    from agentrt.memory_store import HashingEmbedder, MemoryStore
    from agentrt.sleeptime import SleepTimeScheduler, add_note
    from agentrt.tracing import Tracer

    store = MemoryStore({db!r}, embedder=HashingEmbedder())

    def in_predict():
        # a run writes a note while the job thinks, then the process dies mid-call
        add_note(store, "farm", "A run noted: prices doubled.")
        print("IN_PREDICT", flush=True)

    async def main():
        model = FakeModel(delay={{"predict": 120.0}}, hooks={{"predict": in_predict}})
        async with SleepTimeScheduler(store, model, min_idle_s=0, every_n_runs=0, consolidate_on_idle=False,
                                      tracer=Tracer(None)) as sleep:
            sleep.attach("farm", {text!r})
            await sleep.wait_idle()
    anyio.run(main)
""")


def live(store, kind):
    return [e for e in store.events(session=context_session("farm"), kind=kind, limit=1000) if e.expired_at is None]


def test_sigkill_mid_job_leaves_memory_consistent_and_the_job_resumes(tmp_path):
    db = tmp_path / "m.db"
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(here=str(Path(__file__).parent), db=str(db), text=CONTEXT))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(60, proc.kill)   # a child that never reaches the job must not hang the suite
    watchdog.start()
    try:
        line = proc.stdout.readline()
        assert line.strip() == "IN_PREDICT", proc.stderr.read()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        watchdog.cancel()
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    anyio.run(_check_and_resume, db)


async def _check_and_resume(db: Path) -> None:

    store = MemoryStore(db, embedder=HashingEmbedder())
    try:
        assert store.check()["ok"]
        # all of the steps done before the kill, none of the one in flight
        assert len(live(store, "context")) == 1 and len(live(store, "learned")) == 1
        assert live(store, "anticipation") == []
        steps = sorted((e.meta or {})["step"] for e in live(store, "sleeptime_step"))
        assert steps == ["context", "notes"]
        block = store.blocks.get(learned_label("farm"))
        assert block.version == 1 and "prices doubled" in block.value       # the run's note, intact
        assert [b.version for b in store.blocks.history(learned_label("farm"))] == [1]

        model = FakeModel()
        async with SleepTimeScheduler(store, model, min_idle_s=0, every_n_runs=0, consolidate_on_idle=False,
                                      tracer=Tracer(None)) as sleep:
            sleep.attach("farm", CONTEXT)
            with anyio.fail_after(10):
                await sleep.wait_idle()
        assert sleep.history[0]["status"] == "done"
        assert model.steps() == ["predict"]                                 # resumed at the missing step
        assert len(live(store, "context")) == 1 and len(live(store, "learned")) == 1
        assert len(live(store, "anticipation")) == 1
        block = store.blocks.get(learned_label("farm"))
        assert "Total apples: 12." in block.value and "prices doubled" in block.value
        assert store.check()["ok"]
    finally:
        store.close()
