"""Precomputed answers on a REAL memory store with the real embedder (all-MiniLM-L6-v2): the
anticipate job's write path, then a paraphrased query matching its predicted question, served by
the Agent without any planner call (issue 9: the last bench served none; a paraphrase scores
~0.7 with this embedder, below the 0.95 threshold that alone decides without verification)."""

from __future__ import annotations

import anyio
import pytest
from _scripted import ScriptedModel, make_registry
from _sleeptime_fake import FakeModel, Routed

from agentrt import Agent
from agentrt.memory_store import MemoryStore
from agentrt.sleeptime import (
    DEFAULT_MATCH_THRESHOLD,
    DEFAULT_VERIFY_FLOOR,
    LearnedMemory,
    SleepTimeScheduler,
)
from agentrt.tracing import Tracer

pytestmark = pytest.mark.anyio

# GSM8K test problem 0 as Stateful GSM8K splits it (benchmarks/sleeptime.py): context / query
CONTEXT = ("Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins "
           "for her friends every day with four. She sells the remainder at the farmers' market daily for $2 "
           "per fresh duck egg.")
QUERY = "How much in dollars does she make every day at the farmers' market?"
# what the real model predicted for it (seen on the shared engine, 2026-11-30)
PREDICTED = [("How many eggs does Janet sell daily?", "9"),
             ("How much does Janet make daily from selling eggs?", "18"),
             ("What is Janet's daily profit?", "12")]
ANSWER = {"thought": "ok", "action": "answer", "answer": "computed"}
PLAN = ['1. search(query="eggs")\n2. join()']


@pytest.fixture
def minilm_store(tmp_path):
    from agentrt.config import get_settings
    from agentrt.errors import EmbedderNotInstalled
    from agentrt.memory_store import MiniLMEmbedder, minilm_tokenizer_path

    try:
        emb = MiniLMEmbedder(minilm_tokenizer_path(get_settings().data_dir), threads=1)
    except EmbedderNotInstalled as exc:
        pytest.skip(f"the real embedder is not installed here: {exc}")
    store = MemoryStore(tmp_path / "m.db", embedder=emb, auto_compact=False)
    yield store
    store.close()


async def test_a_paraphrased_predicted_question_is_served_from_its_precomputed_answer(minilm_store):
    sleep = FakeModel(notes="Janet sells 16 - 3 - 4 = 9 eggs a day, 9 x $2 = $18.", qa=PREDICTED,
                      verdicts=["yes", "no"])
    run = ScriptedModel([PLAN], [ANSWER])
    model = Routed(sleep, run)
    sched = SleepTimeScheduler(minilm_store, model, min_idle_s=0.0, every_n_runs=0, consolidate_on_idle=False,
                               tracer=Tracer(None), verify_floor=DEFAULT_VERIFY_FLOOR)
    agent = Agent(model, make_registry([]), memory=minilm_store, tracing=False, sandbox="none", sleeptime=sched)
    async with agent:
        agent.attach_context("gsm0", CONTEXT)
        with anyio.fail_after(20):
            await sched.wait_idle()
        assert sched.history[0]["status"] == "done" and sched.history[0]["result"]["predicted"] == 3

        best = LearnedMemory(minilm_store).best(QUERY, context_id="gsm0")
        assert best is not None and best.question == PREDICTED[1][0] and best.answer == "18"
        assert 0.5 < best.similarity < DEFAULT_MATCH_THRESHOLD   # a paraphrase, not a repeat

        served = await agent.run(QUERY, context="gsm0")
        assert served.precomputed is not None and served.answer == "18"
        assert served.precomputed.verified and served.precomputed.similarity == pytest.approx(best.similarity)
        assert run.planner_prompts == [] and served.plan == []    # no planner, no joiner, no tool
        assert served.llm_calls == 1 and sleep.steps()[-1] == "verify"   # only the short check
        verify_prompt = sleep.calls[-1]["messages"][1]["content"]
        assert QUERY in verify_prompt and PREDICTED[1][0] in verify_prompt and CONTEXT not in verify_prompt
        assert sleep.calls[-1]["max_tokens"] <= 4

        # a near-verbatim repeat passes the threshold on similarity alone: no call at all
        calls = len(sleep.calls)
        again = await agent.run(PREDICTED[1][0], context="gsm0")
        assert again.precomputed is not None and not again.precomputed.verified and again.llm_calls == 0
        assert len(sleep.calls) == calls

        # a related question the verifier rejects is computed, with the learned context
        other = await agent.run("How many eggs does Janet eat every morning?", context="gsm0")
        assert other.precomputed is None and other.answer == "computed" and sleep.steps()[-1] == "verify"
    assert "Janet sells 16 - 3 - 4 = 9 eggs a day" in run.planner_prompts[0][1].content


async def test_without_verification_a_paraphrase_is_never_served(minilm_store):
    sleep = FakeModel(qa=PREDICTED)
    model = Routed(sleep, ScriptedModel([], []))
    async with SleepTimeScheduler(minilm_store, model, min_idle_s=0.0, every_n_runs=0, consolidate_on_idle=False,
                                  tracer=Tracer(None), verify_floor=None) as sched:
        sched.attach("gsm0", CONTEXT)
        with anyio.fail_after(20):
            await sched.wait_idle()
        assert await sched.amatch(QUERY, context_id="gsm0") is None
        assert "verify" not in sleep.steps()
        low = SleepTimeScheduler(minilm_store, model, verify_floor=0.99)   # floor above its similarity
        assert await low.amatch(QUERY, context_id="gsm0") is None and "verify" not in sleep.steps()
