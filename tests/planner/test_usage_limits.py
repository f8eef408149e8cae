"""Usage limits stop a run at once with a partial result; the joiner's answer streams as deltas."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from _scripted import ScriptedModel, make_registry

from agentrt.errors import ConfigError, UsageLimitExceeded
from agentrt.planner import AnswerDelta, JoinDecision, LLMCompiler, UsageLimits
from agentrt.tracing import register_price

pytestmark = pytest.mark.anyio

ANSWER = {"thought": "ok", "action": "answer", "answer": "The total is 42 \"units\"."}


async def test_tool_call_limit_is_never_exceeded_and_keeps_finished_results() -> None:
    log: list[str] = []
    plan = ['1. search(query="a")\n2. search(query="b")\n3. search(query="c")\n4. search(query="d")\n5. join()']
    model = ScriptedModel([plan], [ANSWER])
    compiler = LLMCompiler(model, make_registry(log), usage_limits=UsageLimits(max_tool_calls=2))
    with pytest.raises(UsageLimitExceeded, match="tool calls 2") as info:
        await compiler.run("q")
    part = info.value.partial
    assert part.partial and "tool calls" in part.reason
    assert sorted(part.tasks) == [1, 2]
    assert len(log) <= 2 and not any(q in log for q in ("search:c", "search:d"))
    assert set(part.results) == {1, 2}  # each finished, or cancelled when the run stopped
    assert model.joins, "the joiner was not called after the limit"


async def test_token_limit_stops_before_the_joiner_call() -> None:
    model = ScriptedModel([['1. search(query="a")\n2. join()']], [ANSWER])  # planner: 120 tokens
    compiler = LLMCompiler(model, make_registry([]), usage_limits=UsageLimits(max_total_tokens=100))
    with pytest.raises(UsageLimitExceeded, match="total tokens 120 > 100") as info:
        await compiler.run("q")
    assert info.value.partial.llm_calls == 1 and info.value.partial.usage.input_tokens == 100
    assert model.joins == [ANSWER]


async def test_a_limit_stop_is_traced_as_usage_limit_exceeded(tmp_path) -> None:
    from agentrt.tracing import TraceStore
    from agentrt.tracing import _semconv as sc

    store = TraceStore(tmp_path / "traces.sqlite")
    model = ScriptedModel([['1. search(query="a")\n2. join()']], [ANSWER])
    compiler = LLMCompiler(model, make_registry([]), usage_limits=UsageLimits(max_total_tokens=100),
                           tracer=store.tracer())
    with pytest.raises(UsageLimitExceeded):
        await compiler.run("q")
    assert store.flush()
    errors = {s.attributes.get(sc.ERROR_TYPE) for s in store.spans_since(0) if s.status == "error"}
    # the chat span that crossed the limit names the public error, not the internal signal; the
    # search still running when the run stopped is "cancelled"
    assert "UsageLimitExceeded" in errors and not any(e and e.startswith("_") for e in errors), errors


async def test_llm_call_limit_refuses_the_next_call_but_allows_exactly_the_limit() -> None:
    model = ScriptedModel([['1. search(query="a")\n2. join()']], [ANSWER])
    res = await LLMCompiler(model, make_registry([]), usage_limits=UsageLimits(max_llm_calls=2)).run("q")
    assert res.llm_calls == 2 and res.answer == ANSWER["answer"]

    model = ScriptedModel([['1. search(query="a")\n2. join()']], [ANSWER])
    with pytest.raises(UsageLimitExceeded, match="LLM calls") as info:
        await LLMCompiler(model, make_registry([]), usage_limits=UsageLimits(max_llm_calls=1)).run("q")
    assert info.value.partial.results[1].ok  # the plan's call finished before the joiner was refused


async def test_wall_time_limit_cancels_a_hanging_call_and_keeps_the_rest() -> None:
    reg = make_registry([])
    search = reg.get("search")
    object.__setattr__(search, "limits", search.limits.model_copy(update={"timeout": 60}))
    model = ScriptedModel([['1. search(query="a")\n2. search(query="hang")\n3. join()']], [ANSWER])
    compiler = LLMCompiler(model, reg, usage_limits=UsageLimits(max_wall_seconds=0.5))
    with anyio.fail_after(5), pytest.raises(UsageLimitExceeded, match="wall time") as info:
        await compiler.run("q")
    part = info.value.partial
    assert part.results[1].ok
    assert part.results[2].error_kind == "cancelled"
    assert part.wall_seconds < 2


async def test_cost_limit_holds_each_calls_worst_case_before_sending() -> None:
    # 1 USD per million input and output tokens; the planner call holds (prompt bytes + 512) tokens
    register_price("scripted-priced", input_per_mtok=1.0, output_per_mtok=1.0)
    model = ScriptedModel([['1. search(query="a")\n2. join()']], [ANSWER])
    model.model_name = "scripted-priced"
    res = await LLMCompiler(model, make_registry([]), usage_limits=UsageLimits(max_cost_usd=1.0)).run("q")
    assert res.cost_usd == pytest.approx((150 + 30) / 1e6)  # both calls' real usage, priced

    model = ScriptedModel([['1. search(query="a")\n2. join()']], [ANSWER])
    model.model_name = "scripted-priced"
    with pytest.raises(UsageLimitExceeded, match="usage limit reached") as info:
        await LLMCompiler(model, make_registry([]), usage_limits=UsageLimits(max_cost_usd=0.0001)).run("q")
    assert info.value.partial.llm_calls == 0  # refused before sending: its worst case did not fit
    assert len(model.plans) == 1

    with pytest.raises(ConfigError, match="no price is known"):
        LLMCompiler(ScriptedModel([], []), make_registry([]), usage_limits=UsageLimits(max_cost_usd=1.0))


async def test_answer_deltas_stream_only_the_final_answer() -> None:
    plans = [['1. search(query="a")\n2. join()'], ['2. search(query="b")\n3. join()']]
    joins = [{"thought": "need b", "action": "replan", "answer": "not this"}, ANSWER]
    events: list[Any] = []
    model = ScriptedModel(plans, joins)
    res = await LLMCompiler(model, make_registry([]), on_event=events.append).run("q")
    deltas = [e.text for e in events if isinstance(e, AnswerDelta)]
    assert len(deltas) > 1  # arrived in pieces
    assert "".join(deltas) == res.answer == ANSWER["answer"]
    last_decision = max(i for i, e in enumerate(events) if isinstance(e, JoinDecision))
    first_delta = min(i for i, e in enumerate(events) if isinstance(e, AnswerDelta))
    assert first_delta > max(i for i, e in enumerate(events)
                             if isinstance(e, JoinDecision) and e.action == "replan")
    assert first_delta < last_decision


def test_usage_limits_reject_nonsense() -> None:
    with pytest.raises(ValueError):
        UsageLimits(max_tool_calls=-1)
    with pytest.raises(ValueError):
        UsageLimits(max_wall_seconds=0)
    with pytest.raises(ValueError):
        UsageLimits(max_tokens=5)  # not a field: a typo is an error, not silently ignored
