"""The `Agent` facade: streaming events, usage limits with partial results, cost."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from _scripted import ScriptedModel, make_registry

from agentrt import Agent, UsageLimits
from agentrt._agent import price_function
from agentrt.errors import UsageLimitExceeded
from agentrt.events import (
    AnswerDelta,
    RunFinished,
    TaskAdded,
    TaskFinished,
    TaskStarted,
)
from agentrt.llm import Usage

pytestmark = pytest.mark.anyio

ANSWER = {"thought": "ok", "action": "answer", "answer": "a and b"}
PLAN = ['1. search(query=', '"a")\n2. search(query="b")\n', '3. join()']


async def test_stream_yields_tasks_then_answer_deltas_then_result() -> None:
    agent = Agent(ScriptedModel([PLAN], [ANSWER], chunk_delay=0.05), make_registry([]))
    async with agent.stream("q") as events:
        seen = [ev async for ev in events]
    kinds = [type(e).__name__ for e in seen]
    assert kinds[-1] == "RunFinished" and events.result is seen[-1].result
    assert events.result.answer == "a and b"
    assert "".join(e.text for e in seen if isinstance(e, AnswerDelta)) == "a and b"
    added = [i for i, e in enumerate(seen) if isinstance(e, TaskAdded)]
    started = [i for i, e in enumerate(seen) if isinstance(e, TaskStarted)]
    finished = [i for i, e in enumerate(seen) if isinstance(e, TaskFinished)]
    assert len(added) == len(started) == len(finished) == 2
    assert added[0] < started[0] < finished[0]
    assert max(finished) < min(i for i, e in enumerate(seen) if isinstance(e, AnswerDelta))


async def test_leaving_the_stream_early_cancels_the_run() -> None:
    reg = make_registry([])
    search = reg.get("search")
    object.__setattr__(search, "limits", search.limits.model_copy(update={"timeout": 60}))
    agent = Agent(ScriptedModel([['1. search(query="hang")\n2. join()']], [ANSWER]), reg)
    with anyio.fail_after(5):
        async with agent.stream("q") as events:
            async for ev in events:
                if isinstance(ev, TaskStarted):
                    break
    assert events.result is None


async def test_stream_raises_the_run_error_after_its_events() -> None:
    agent = Agent(ScriptedModel([PLAN], [ANSWER]), make_registry([]),
                  usage_limits=UsageLimits(max_tool_calls=1))
    seen: list[Any] = []
    with pytest.raises(UsageLimitExceeded) as info:
        async with agent.stream("q") as events:
            async for ev in events:
                seen.append(ev)
    assert any(isinstance(e, TaskAdded) for e in seen)
    assert not any(isinstance(e, RunFinished) for e in seen)
    part = info.value.partial
    assert part.partial and [t.id for t in part.plan] == [1]


async def test_run_limit_overrides_the_agents_and_partial_is_a_run_result() -> None:
    agent = Agent(ScriptedModel([PLAN, PLAN], [ANSWER, ANSWER]), make_registry([]))
    res = await agent.run("q")
    assert res.answer == "a and b" and res.tool_calls == 2 and res.cost_usd is None  # "scripted" has no price
    with pytest.raises(UsageLimitExceeded, match="total tokens") as info:
        await agent.run("q", usage_limits=UsageLimits(max_total_tokens=50))
    assert info.value.partial.llm_calls == 1 and info.value.partial.partial


def test_price_function_uses_genai_prices_and_says_unknown() -> None:
    from genai_prices import Usage as PU
    from genai_prices import calc_price

    usage = Usage(input_tokens=1000, output_tokens=200, cached_tokens=400)
    expected = float(calc_price(PU(input_tokens=1000, cache_read_tokens=400, output_tokens=200),
                                model_ref="gpt-4o").total_price)
    assert price_function("gpt-4o", local=False)(usage) == pytest.approx(expected)
    # cached input is cheaper than fresh input
    assert expected < float(calc_price(PU(input_tokens=1000, output_tokens=200), model_ref="gpt-4o").total_price)
    assert price_function("no-such-model-xyz", local=False)(usage) is None
    assert price_function("anything", local=True)(usage) == 0.0
