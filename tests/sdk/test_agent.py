"""The `Agent` facade: streaming events, usage limits with partial results, cost."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from _scripted import ScriptedModel, make_registry

from agentrt import Agent, UsageLimits
from agentrt.errors import ModelError, ModelHTTPError, UsageLimitExceeded
from agentrt.events import (
    AnswerDelta,
    RunFinished,
    TaskAdded,
    TaskFinished,
    TaskStarted,
)

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


async def test_a_model_error_mid_run_carries_the_finished_results() -> None:
    class FailsOnJoin(ScriptedModel):
        async def complete(self, messages, *, stream=False, response_format=None, **kw):
            if response_format is not None:  # the joiner's call
                raise ModelHTTPError("endpoint answered 503", status_code=503, body="overloaded")
            return await super().complete(messages, stream=stream, response_format=response_format, **kw)

    agent = Agent(FailsOnJoin([PLAN], []), make_registry([]), memory=False)
    with pytest.raises(ModelError) as info:
        await agent.run("q")
    part = info.value.partial
    assert part.partial and "503" in part.reason
    assert {k: r.value for k, r in part.results.items()} == {1: "result for a", 2: "result for b"}


async def test_cost_comes_from_genai_prices_with_cached_input_cheaper() -> None:
    from genai_prices import Usage as PU
    from genai_prices import calc_price

    model = ScriptedModel([PLAN], [ANSWER])
    model.model_name = "gpt-4o"
    res = await Agent(model, make_registry([]), tracing=False).run("q")
    # the scripted planner call: 100 in / 20 out; the joiner: 50 in / 10 out
    expected = float(calc_price(PU(input_tokens=150, output_tokens=30), model_ref="gpt-4o").total_price)
    assert res.cost_usd == pytest.approx(expected) and res.trace_id is None


async def test_a_run_is_traced_with_its_llm_calls_and_tool_calls(tmp_path) -> None:
    from agentrt.tracing import TraceStore

    store = TraceStore(tmp_path / "traces.sqlite")
    try:
        agent = Agent(ScriptedModel([PLAN], [ANSWER]), make_registry([]), tracing=store.tracer())
        res = await agent.run("q")
        store.flush()
        spans = store.spans(res.trace_id)
    finally:
        store.close()
    ops = sorted(s.operation for s in spans)
    assert ops == ["chat", "chat", "execute_tool", "execute_tool", "invoke_agent", "memory", "memory"]
    root = next(s for s in spans if s.operation == "invoke_agent")
    assert all(s.parent_id == root.span_id for s in spans if s is not root)
    tools = sorted((s for s in spans if s.operation == "execute_tool"), key=lambda s: s.start_ns)
    assert [s.attributes["gen_ai.tool.name"] for s in tools] == ["search", "search"]
    chats = [s for s in spans if s.operation == "chat"]
    assert sum(s.attributes["gen_ai.usage.input_tokens"] for s in chats) == res.usage.input_tokens
    assert {s.attributes["agentrt.llm.role"] for s in chats} == {"planner", "joiner"}
    assert all(root.start_ns <= s.start_ns and s.end_ns <= root.end_ns for s in spans)


async def test_a_failed_model_call_is_raised_as_itself_not_an_exception_group() -> None:
    from agentrt.errors import ModelError
    from agentrt.llm import OpenAIChatModel

    model = OpenAIChatModel("http://127.0.0.1:9/v1", "m", max_retries=0, timeout=2)
    with pytest.raises(ModelError):
        await Agent(model, make_registry([]), tracing=False, memory=False).run("q")


async def test_plain_functions_are_tools_and_an_empty_question_is_refused() -> None:
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    plan = ['1. add(a=2, b=3)\n2. join()']
    agent = Agent(ScriptedModel([plan], [ANSWER]), [add], tracing=False, memory=False)
    assert (await agent.run("q")).results[1].value == 5
    with pytest.raises(ValueError, match="empty"):
        await agent.run("  ")
