"""Reuse of tool results computed in sleep time: a read-only idempotent call fetched by
``anticipate`` answers the same call of a later run while valid (TTL, context version); a tool
that is not both read-only and idempotent is never stored nor reused (real SQLite, real tools)."""

from __future__ import annotations

import json

import anyio
import pytest
from _scripted import ScriptedModel
from _sleeptime_fake import FakeModel

from agentrt import Agent
from agentrt.executor import LocalBackend, Task
from agentrt.memory_store import HashingEmbedder, MemoryStore
from agentrt.sleeptime import (
    SleepTimeScheduler,
    ToolResultStore,
    _prompts,
    learned_label,
)
from agentrt.tools import ToolRegistry, tool
from agentrt.tracing import Tracer

pytestmark = pytest.mark.anyio

CONTEXT = "Janet sells apples at the market. Prices change every morning."


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def make_tools(calls: list[str]):
    @tool(read_only=True, idempotent=True)
    def price(item: str) -> float:
        """Today's market price of an item, in dollars.

        Args:
            item: what is sold.
        """
        calls.append(f"price:{item}")
        return {"apple": 2.0, "pear": 3.0}[item]

    @tool(read_only=True)  # read-only but not idempotent (e.g. a random sample): never reused
    def sample(item: str) -> str:
        """A random customer review of an item.

        Args:
            item: what is sold.
        """
        calls.append(f"sample:{item}")
        return f"review {len(calls)}"

    return [price, sample]


class WithTools(FakeModel):
    """`FakeModel` that also answers the ``tools`` step with fixed calls."""

    def __init__(self, proposed: list[dict], **kw) -> None:
        super().__init__(**kw)
        self.proposed = proposed

    async def complete(self, messages, **kw):
        if messages[0]["content"].startswith(_prompts.TOOLS_SYSTEM.split("{")[0]):
            self.calls.append({"step": "tools", "max_tokens": kw.get("max_tokens"), "messages": messages,
                               "schema": kw.get("response_format")})
            from agentrt.llm import Completion, Usage

            return Completion(content=json.dumps({"calls": self.proposed}),
                              usage=Usage(input_tokens=50, output_tokens=10, requests=1))
        return await super().complete(messages, **kw)


@pytest.fixture
def store(tmp_path):
    s = MemoryStore(tmp_path / "m.db", embedder=HashingEmbedder())
    yield s
    s.close()


async def learn(store, tools, proposed, *, clock, prefetch=(), ttl=60.0, text=CONTEXT):
    model = WithTools(proposed)
    sched = SleepTimeScheduler(store, model, min_idle_s=0.0, every_n_runs=0, consolidate_on_idle=False,
                               tracer=Tracer(None), tools=tools, tool_ttl_s=ttl)
    sched.tool_results.clock = clock
    async with sched:
        sched.attach("market", text, prefetch=prefetch)
        with anyio.fail_after(10):
            await sched.wait_idle()
    assert sched.history[-1]["status"] == "done", sched.history
    return sched, model


async def test_a_sleep_time_result_is_reused_while_valid_then_expires(store):
    calls: list[str] = []
    price, sample = make_tools(calls)
    clock = Clock()
    sched, model = await learn(store, [price, sample], [{"tool": "price", "args": {"item": "apple"}},
                                                        {"tool": "sample", "args": {"item": "apple"}}],
                               clock=clock, ttl=60.0)
    assert calls == ["price:apple"]                        # the non-idempotent tool was not even offered
    schema = model.calls[-1]["schema"]["json_schema"]["schema"]
    assert schema["properties"]["calls"]["items"]["properties"]["tool"]["enum"] == ["price"]
    assert "price({\"item\": \"apple\"}) -> 2.0" in store.blocks.get(learned_label("market")).value

    backend = sched.reusing(LocalBackend(), "market")
    res = await backend.submit(Task(id=1, tool="price", args={"item": "apple"}), price, {"item": "apple"},
                               price.limits)
    assert res.ok and res.value == 2.0 and res.reused and backend.reused == [1]
    assert calls == ["price:apple"]                        # served, not run again
    other = await backend.submit(Task(id=2, tool="price", args={"item": "pear"}), price, {"item": "pear"},
                                 price.limits)
    assert other.value == 3.0 and not other.reused and calls[-1] == "price:pear"   # other arguments: run
    s = await backend.submit(Task(id=3, tool="sample", args={"item": "apple"}), sample, {"item": "apple"},
                             sample.limits)
    assert not s.reused and calls[-1] == "sample:apple"

    clock.t += 61                                          # past the TTL: run again
    late = await backend.submit(Task(id=4, tool="price", args={"item": "apple"}), price, {"item": "apple"},
                                price.limits)
    assert late.value == 2.0 and not late.reused and calls[-1] == "price:apple" and backend.reused == [1]


async def test_a_non_idempotent_tool_is_never_stored_even_when_asked(store):
    calls: list[str] = []
    price, sample = make_tools(calls)
    clock = Clock()
    await learn(store, [price, sample], [], clock=clock,
                prefetch=[("sample", {"item": "apple"}), ("price", {"item": "pear"})])
    assert calls == ["price:pear"]                         # the prefetch of `sample` was ignored
    results = ToolResultStore(store, clock=clock)
    from agentrt.tools import ToolResult

    assert results.event(sample, {"item": "apple"}, ToolResult.success("x"), context_id="market", job="j") is None
    assert results.get(sample, {"item": "apple"}, context_ids=["market"]) is None
    assert results.get(price, {"item": "pear"}, context_ids=["market"])[0].value == 3.0
    assert results.get(price, {"item": "pear"}, context_ids=["elsewhere"]) is None   # another context


async def test_changed_context_text_invalidates_its_tool_results(store):
    calls: list[str] = []
    price, _ = make_tools(calls)
    clock = Clock()
    await learn(store, [price], [{"tool": "price", "args": {"item": "apple"}}], clock=clock, ttl=3600)
    results = ToolResultStore(store, clock=clock)
    assert results.get(price, {"item": "apple"}, context_ids=["market"]) is not None
    # re-attached with new text: a new context version; the old result is not served
    await learn(store, [price], [], clock=clock, text=CONTEXT + " Pears arrived today.")
    assert results.get(price, {"item": "apple"}, context_ids=["market"]) is None


async def test_a_run_reuses_the_sleep_time_result_and_counts_it(store):
    calls: list[str] = []
    price, sample = make_tools(calls)
    sleep = WithTools([{"tool": "price", "args": {"item": "apple"}}], qa=[("Where does Janet sell?", "market")])
    run = ScriptedModel(['1. price(item="apple")\n2. sample(item="apple")\n3. join()'],
                        [{"thought": "ok", "action": "answer", "answer": "$2"}])

    class Routed:
        model_name = "scripted"

        async def complete(self, messages, **kw):
            first = messages[0]
            if isinstance(first, dict):
                return await sleep.complete(messages, **{k: v for k, v in kw.items() if k != "stream"})
            return await run.complete(messages, **kw)

    sched = SleepTimeScheduler(store, Routed(), min_idle_s=0.0, every_n_runs=0, consolidate_on_idle=False,
                               tracer=Tracer(None), tools=[price, sample], verify_floor=None)
    agent = Agent(Routed(), ToolRegistry([price, sample]), memory=store, tracing=False, sandbox="none",
                  sleeptime=sched)
    async with agent:
        agent.attach_context("market", CONTEXT)
        with anyio.fail_after(10):
            await sched.wait_idle()
        assert calls == ["price:apple"]
        res = await agent.run("What does an apple cost today?", context="market")
    assert res.answer == "$2" and res.tool_calls == 2 and res.tool_reuses == 1
    assert res.results[1].reused and res.results[1].value == 2.0 and not res.results[2].reused
    assert calls == ["price:apple", "sample:apple"]       # price ran once, in sleep time
