"""Sleep-time compute wired into the Agent: precomputed answers served above the threshold only,
learned context to the planner otherwise, a run pre-empting sleep-time work at once, and the
scheduler starting and stopping with the Agent (scripted models, real SQLite)."""

from __future__ import annotations

import time

import anyio
import pytest
from _scripted import ScriptedModel, make_registry
from _sleeptime_fake import FakeModel, Routed

from agentrt import Agent
from agentrt.memory_store import HashingEmbedder, MemoryStore
from agentrt.sleeptime import SleepTimeScheduler, learned_label
from agentrt.tracing import Tracer

pytestmark = pytest.mark.anyio

CONTEXT = "Janet has 3 apple trees. Each tree gives 4 apples a day. She sells every apple for $2."
ANSWER = {"thought": "ok", "action": "answer", "answer": "computed"}
PLAN = ['1. search(query="apples")\n2. join()']


@pytest.fixture
def store(tmp_path):
    s = MemoryStore(tmp_path / "m.db", embedder=HashingEmbedder())
    yield s
    s.close()


def make(store, sleep: FakeModel, plans=(), joins=(), **kw):
    run = ScriptedModel(list(plans), list(joins))
    model = Routed(sleep, run)
    sched = SleepTimeScheduler(store, model, min_idle_s=0.0, every_n_runs=0, consolidate_on_idle=False,
                               tracer=Tracer(None), **kw)
    agent = Agent(model, make_registry([]), memory=store, tracing=False, sandbox="none", sleeptime=sched)
    return agent, sched, run


async def test_a_predicted_question_is_served_and_another_gets_the_learned_context(store):
    sleep = FakeModel(qa=[("How many apples are there in total each day?", "12")])
    agent, sched, run = make(store, sleep, [PLAN], [ANSWER], threshold=0.9)
    async with agent:
        assert agent.sleeptime is sched
        agent.attach_context("farm", CONTEXT)
        with anyio.fail_after(10):
            await sched.wait_idle()
        served = await agent.run("How many apples are there in total each day?", context="farm")
        assert served.precomputed is not None and served.answer == "12"
        assert served.llm_calls == 0 and served.plan == [] and run.planner_prompts == []
        assert served.precomputed.similarity >= 0.9
        other = await agent.run("What colour is the barn door?", context="farm")
        assert other.precomputed is None and other.answer == "computed"
    prompt = run.planner_prompts[0][1].content
    assert "Total apples: 12" in prompt                       # the learned notes reached the planner
    assert "How many apples are there in total each day?" in prompt
    answers = [e.text for e in store.events(kind="answer", session="default")]
    assert answers == ["12", "computed"]                      # both runs remembered
    assert agent.sleeptime is None                            # stopped with the agent


async def test_below_the_threshold_nothing_is_served(store):
    sleep = FakeModel(qa=[("How many apples are there in total each day?", "12")])
    agent, sched, run = make(store, sleep, [PLAN], [ANSWER], threshold=0.999, verify_floor=None)
    async with agent:
        agent.attach_context("farm", CONTEXT)
        with anyio.fail_after(10):
            await sched.wait_idle()
        best = sched.learned.best("How many apples in total are there each day?", context_id="farm")
        assert best is not None and 0.5 < best.similarity < 0.999  # close, but not close enough
        res = await agent.run("How many apples in total are there each day?", context="farm")
    assert res.precomputed is None and res.answer == "computed" and len(run.planner_prompts) == 1


async def test_a_run_preempts_sleep_time_work_at_once_and_the_job_resumes(store):
    sleep = FakeModel(delay={"notes": 60.0})
    agent, sched, _ = make(store, sleep, [PLAN], [ANSWER])
    async with agent:
        agent.attach_context("farm", CONTEXT)
        with anyio.fail_after(5):
            await sleep.started["notes"].wait()               # the job is inside its LLM call
        t0 = time.perf_counter()
        res = await agent.run("What colour is the barn door?", context="farm")
        assert time.perf_counter() - t0 < 5                   # did not wait for the 60 s call
        assert res.answer == "computed"
        assert sleep.cancelled == ["notes"]
        assert sched.preemptions == 1
        sleep.delay.clear()
        with anyio.fail_after(10):
            await sched.wait_idle()                           # resumed once idle, then finished
        assert store.blocks.get(learned_label("farm")).value.startswith("Total apples: 12")
        assert sched.history[-1]["status"] == "done" and sched.history[-1]["preemptions"] == 1


async def test_sleeptime_true_starts_and_stops_with_the_agent_and_misuse_is_refused(store):
    sleep = FakeModel()
    model = Routed(sleep, ScriptedModel([], []))
    with pytest.raises(ValueError, match="needs memory"):
        Agent(model, memory=False, sleeptime=True)
    agent = Agent(model, memory=store, tracing=False, sandbox="none", sleeptime=True)
    with pytest.raises(RuntimeError, match="async with"):
        agent.attach_context("farm", CONTEXT)                 # not started outside `async with`
    with pytest.raises(ValueError, match="sleeptime"):
        await agent.run("q", context="farm")
    async with agent:
        sched = agent.sleeptime
        assert isinstance(sched, SleepTimeScheduler) and sched.store is store
        agent.attach_context("farm", CONTEXT)
        with anyio.fail_after(15):
            while not sched.history:                          # default min_idle_s: 1 s
                await anyio.sleep(0.05)
        assert sched.history[0]["status"] == "done"
    assert agent.sleeptime is None
    with pytest.raises(RuntimeError):
        agent.attach_context("farm", CONTEXT)
