"""Sleep-time scheduler: pre-emption, budgets, CAS against runs, triggers (scripted model, real SQLite)."""

from __future__ import annotations

import time

import anyio
import pytest
from _sleeptime_fake import FakeModel

from agentrt.errors import MemoryConflict
from agentrt.memory_store import Event, HashingEmbedder, MemoryStore
from agentrt.sleeptime import (
    FACTS_BLOCK,
    RUNS_SECTION,
    Anticipate,
    Consolidate,
    JobBudget,
    SleepTimeScheduler,
    add_note,
    cas_update,
    context_session,
    learned_label,
)
from agentrt.tracing import Tracer

pytestmark = pytest.mark.anyio

CONTEXT = "Janet has 3 apple trees. Each tree gives 4 apples a day. She sells every apple for $2."


@pytest.fixture
def store(tmp_path):
    s = MemoryStore(tmp_path / "m.db", embedder=HashingEmbedder())
    yield s
    s.close()


def sched(store, model, **kw) -> SleepTimeScheduler:
    kw.setdefault("min_idle_s", 0.0)
    kw.setdefault("every_n_runs", 0)
    kw.setdefault("consolidate_on_idle", False)
    kw.setdefault("tracer", Tracer(None))
    return SleepTimeScheduler(store, model, **kw)


def events(store, cid, kind):
    return [e for e in store.events(session=context_session(cid), kind=kind, limit=1000) if e.expired_at is None]


async def test_query_starts_at_once_and_the_preempted_job_resumes_later(store):
    model = FakeModel(delay={"notes": 30.0})
    async with sched(store, model) as sleep:
        sleep.attach("farm", CONTEXT)
        with anyio.fail_after(5):
            await model.started["notes"].wait()        # the job is inside its LLM call
        t0 = time.perf_counter()
        async with sleep.query("farm"):
            entered = time.perf_counter() - t0
            await anyio.sleep(0.05)
            assert model.cancelled == ["notes"]       # the sleep-time call was cancelled, not awaited
            assert not sleep.busy
            model.delay.clear()                       # the engine is fast again for the resumed job
            await anyio.sleep(0.2)
            assert len(model.calls) == 1              # nothing runs while the query is active
        assert entered < 0.05
        with anyio.fail_after(5):
            await sleep.wait_idle()
        hist = sleep.history[0]
        assert hist["status"] == "done" and hist["preemptions"] == 1 and hist["attempts"] == 2
    assert model.steps() == ["notes", "notes", "predict"]
    assert len(events(store, "farm", "context")) == 1   # the step done before pre-emption is not redone
    assert len(events(store, "farm", "learned")) == 1
    assert "Total apples: 12." in store.blocks.get(learned_label("farm")).value


async def test_token_budget_caps_every_call_and_stops_the_job(store):
    model = FakeModel(output_tokens=10_000)         # a model that always writes to max_tokens
    async with sched(store, model, job_budget=JobBudget(tokens=300, seconds=60)) as sleep:
        sleep.attach("farm", CONTEXT, questions=3)
        with anyio.fail_after(5):
            await sleep.wait_idle()
    hist = sleep.history[0]
    assert hist["status"] == "budget"
    assert hist["tokens"] <= 300
    prompt = sum(len(m["content"]) for m in model.calls[0]["messages"]) // 3 + 16
    assert model.calls[0]["max_tokens"] <= 300 - prompt
    assert model.steps() == ["notes"]                 # predict did not fit: never sent
    assert sleep.spent_tokens == hist["tokens"]


async def test_time_budget_spans_attempts(store):
    model = FakeModel(delay={"notes": 5.0})
    async with sched(store, model, job_budget=JobBudget(tokens=10_000, seconds=0.3)) as sleep:
        sleep.attach("farm", CONTEXT)
        with anyio.fail_after(5):
            await sleep.wait_idle()
    assert sleep.history[0]["status"] == "timeout"
    assert sleep.history[0]["seconds"] < 1.0
    assert model.steps() == ["notes"]


async def test_total_budget_is_shared_by_expected_queries(store):
    model = FakeModel(output_tokens=10_000)
    async with sched(store, model, total_tokens=2000, job_budget=JobBudget(tokens=5000)) as sleep:
        sleep.attach("busy", CONTEXT, expected_queries=9, predictability=0.5)
        sleep.attach("quiet", CONTEXT + " Extra.", expected_queries=1, predictability=0.5)
        with anyio.fail_after(5):
            await sleep.wait_idle()
    spent = {h["key"].split(":")[1]: h["tokens"] for h in sleep.history}
    assert spent["busy"] > 2.5 * spent["quiet"]
    assert sleep.spent_tokens <= 2000


async def test_cas_keeps_a_note_a_run_wrote_while_the_job_was_thinking(store):
    def run_writes():
        add_note(store, "farm", "The user said the price is now $3.")
    model = FakeModel(hooks={"predict": run_writes})
    async with sched(store, model) as sleep:
        sleep.attach("farm", CONTEXT)
        with anyio.fail_after(5):
            await sleep.wait_idle()
    block = store.blocks.get(learned_label("farm"))
    assert "Total apples: 12." in block.value                      # the job's learned context
    assert "The user said the price is now $3." in block.value      # the run's note survived
    assert block.value.index(RUNS_SECTION) > block.value.index("Total apples")
    assert [b.version for b in store.blocks.history(learned_label("farm"))] == [1, 2]


def test_a_stale_writer_conflicts_and_cas_update_merges(store):
    store.blocks.set(FACTS_BLOCK, "a", 0)
    stale = store.blocks.get(FACTS_BLOCK)
    store.blocks.set(FACTS_BLOCK, "a\nb", stale.version)           # a run writes meanwhile
    with pytest.raises(MemoryConflict):
        store.blocks.set(FACTS_BLOCK, "a\nc", stale.version)       # the stale snapshot is refused
    cas_update(store, FACTS_BLOCK, lambda blk: blk.value + "\nc", updated_by="sleeptime")
    assert store.blocks.get(FACTS_BLOCK).value == "a\nb\nc"


async def test_consolidate_stores_facts_with_provenance_and_supersedes_outdated_ones(store):
    qid = store.append_episode("s1", "Where does Alice live?", None, [], "Alice lives in Paris.")
    model = FakeModel(facts=["Alice lives in Paris."])
    async with sched(store, model) as sleep:
        sleep.consolidate_now()
        with anyio.fail_after(5):
            await sleep.wait_idle()
        old = events(store, "facts", "fact")
        assert [e.text for e in old] == ["Alice lives in Paris."]
        assert any(ed.type == "derived_from" and ev.id == qid for ed, ev in store.neighbors(old[0].id, direction="out"))

        store.append_episode("s1", "Did Alice move?", None, [], "Yes, Alice lives in Berlin now.")
        model.facts = ["Alice lives in Berlin."]
        job = Consolidate(supersede_at=0.6)
        sleep._enqueue(job, None)
        with anyio.fail_after(5):
            await sleep.wait_idle()
    now = events(store, "facts", "fact")
    assert [e.text for e in now] == ["Alice lives in Berlin."]
    assert store.get(old[0].id).expired_at is not None             # forgotten, not deleted
    sup = [ed for ed, ev in store.neighbors(now[0].id, ["ref"], direction="out") if ev.id == old[0].id]
    assert sup and sup[0].meta == {"supersedes": True}
    assert store.blocks.get(FACTS_BLOCK).value == "Alice lives in Berlin."
    assert len(model.calls) == 2                                    # the first batch was not re-read


async def test_every_n_completed_runs_triggers_consolidation(store):
    model = FakeModel(facts=["Bob likes tea."])
    async with sched(store, model, every_n_runs=2) as sleep:
        for q in ("What does Bob drink?", "Does Bob like tea?"):
            async with sleep.query():
                store.append_episode("s", q, None, [], "Bob likes tea.")
            await anyio.sleep(0.05)
            if q.startswith("What"):
                assert model.calls == []                            # one run is not enough
        with anyio.fail_after(5):
            await sleep.wait_idle()
    assert model.steps() == ["consolidate"]


async def test_idle_after_a_run_triggers_consolidation_and_a_new_query_postpones_it(store):
    model = FakeModel(facts=["Carol plays chess."])
    async with sched(store, model, consolidate_on_idle=True, idle_after_s=0.3) as sleep:
        async with sleep.query():
            store.append_episode("s", "What does Carol play?", None, [], "Chess.")
        await anyio.sleep(0.2)
        async with sleep.query():
            pass
        await anyio.sleep(0.2)
        assert model.calls == []                                    # 0.2 s after the last run: not idle yet
        with anyio.fail_after(5):
            await sleep.wait_idle(include_scheduled=True)
    assert model.steps() == ["consolidate"]


async def test_a_failed_run_does_not_count_as_completed(store):
    model = FakeModel()
    async with sched(store, model, every_n_runs=1, consolidate_on_idle=False) as sleep:
        with pytest.raises(RuntimeError):
            async with sleep.query():
                raise RuntimeError("run failed")
        await anyio.sleep(0.1)
        assert sleep.status()["pending"] == []


async def test_maintain_snapshots_the_index_and_collects_garbage(store):
    store.append_many([Event(f"note {i}", session="s") for i in range(5)])
    async with sched(store, FakeModel()) as sleep:
        sleep.request_maintenance(force=True)
        with anyio.fail_after(30):
            await sleep.wait_idle()
    hist = sleep.history[0]
    assert hist["status"] == "done" and hist["tokens"] == 0
    assert "compact" in hist["result"] and "wal_checkpoint" in hist["result"]["gc"]
    assert store.check()["ok"]


async def test_reattaching_changed_text_forgets_stale_predictions(store):
    model = FakeModel(qa=[("How many apples in total?", "12")])
    async with sched(store, model) as sleep:
        sleep.attach("farm", CONTEXT)
        with anyio.fail_after(5):
            await sleep.wait_idle()
        model.qa = [("How many pears in total?", "7")]
        sleep.attach("farm", CONTEXT.replace("apple", "pear"))
        with anyio.fail_after(5):
            await sleep.wait_idle()
    assert [e.text for e in events(store, "farm", "anticipation")] == ["How many pears in total?"]
    assert sleep.learned.match("How many apples in total?", context_id="farm", threshold=0.99) is None


async def test_job_spans_record_tokens(store):
    spans = []
    model = FakeModel()
    async with sched(store, model, tracer=Tracer(spans.append)) as sleep:
        sleep.attach("farm", CONTEXT)
        with anyio.fail_after(5):
            await sleep.wait_idle()
    chats = [s for s in spans if s.operation == "chat"]
    root = [s for s in spans if s.operation == "invoke_agent"]
    assert len(chats) == 2 and len(root) == 1
    assert all(s.trace_id == root[0].trace_id for s in chats)
    assert sum(s.attributes["gen_ai.usage.output_tokens"] for s in chats) == sleep.history[0]["output_tokens"]
    assert root[0].attributes["agentrt.sleeptime.status"] == "done"


async def test_anticipate_job_key_changes_with_text():
    assert Anticipate("c", "a").key != Anticipate("c", "b").key
