"""The LLMCompiler loop: streaming dispatch, failure isolation, replanning, joiner fallbacks.

The model here is scripted (it replays fixed plan text chunk by chunk, with delays), because what
is tested is the runtime's behaviour around the model: when tasks dispatch, what survives a
failure, what a replan keeps. The real local model is exercised in test_compiler_model.py.
"""

from __future__ import annotations

import json
import time
from typing import Any

import anyio
import pytest
from _scripted import ScriptedModel, make_registry

from agentrt.errors import ModelTimeout
from agentrt.executor import TaskStarted
from agentrt.llm import Completion, Usage
from agentrt.planner import FaithfulLLMCompiler, LLMCompiler, PlanExample, ReAct
from agentrt.planner._events import JoinDecision, PlanIssueSeen, TaskAdded
from agentrt.tools import ToolRegistry, tool

pytestmark = pytest.mark.anyio


async def test_task_dispatches_before_plan_finishes() -> None:
    log: list[str] = []
    plan = ['1. search(query=', '"a")', '\n2. search(query="b")', "\n3. add(a=1, b=2)\n", "4. join()"]
    model = ScriptedModel([plan], [{"thought": "ok", "action": "answer", "answer": "done"}], chunk_delay=0.15)
    started: dict[int, float] = {}

    def on_event(ev: Any) -> None:
        if isinstance(ev, TaskStarted):
            started[ev.task.id] = time.perf_counter()

    res = await LLMCompiler(model, make_registry(log), on_event=on_event).run("q")
    assert res.answer == "done"
    # task 1 started when its ')' arrived, well before the plan stream ended
    assert started[1] < model.stream_done_at[0] - 0.3
    assert sorted(res.results) == [1, 2, 3] and all(r.ok for r in res.results.values())
    assert res.results[3].value == 3


async def test_failing_and_hanging_tools_do_not_stall_siblings() -> None:
    log: list[str] = []
    plan = ['1. search(query="boom")\n2. search(query="hang")\n3. search(query="fine")\n'
            '4. add(a=$3, b=1)\n5. join()']
    model = ScriptedModel([[plan[0]]], [{"thought": "partial", "action": "answer", "answer": "x"}])
    reg = make_registry(log)
    with anyio.fail_after(10):
        res = await LLMCompiler(model, reg).run("q")
    assert res.results[1].error_kind == "tool_error" and "exploded" in res.results[1].error
    assert res.results[2].error_kind == "timeout"
    assert res.results[3].ok
    # task 4 used $3 (a string) as a number: invalid args, reported, not a crash
    assert not res.results[4].ok


async def test_dependency_failure_skips_dependents_with_reason() -> None:
    plan = ['1. search(query="boom")\n2. add(a=$1, b=2)\n3. join()']
    model = ScriptedModel([plan], [{"thought": "t", "action": "answer", "answer": "a"}])
    res = await LLMCompiler(model, make_registry([])).run("q")
    assert res.results[2].error_kind == "skipped"
    assert "1" in res.results[2].error


async def test_replan_keeps_finished_results_and_plans_only_the_rest() -> None:
    log: list[str] = []
    plans = [
        ['1. search(query="a")\n2. search(query="boom")\n3. join()'],
        ['3. search(query="b")\n4. add(a=1, b=2)\n5. join()'],
    ]
    joins = [
        {"thought": "task 2 failed, search b instead", "action": "replan", "answer": ""},
        {"thought": "ok", "action": "answer", "answer": "final"},
    ]
    model = ScriptedModel(plans, joins)
    events: list[Any] = []
    res = await LLMCompiler(model, make_registry(log), on_event=events.append).run("q")
    assert res.answer == "final" and res.rounds == 2 and not res.partial
    assert log.count("search:a") == 1  # never re-run
    assert sorted(res.results) == [1, 2, 3, 4]
    replan_prompt = model.planner_prompts[1][-1].content
    assert "search(query=\"a\")" in replan_prompt and "result for a" in replan_prompt
    assert "ERROR(tool_error)" in replan_prompt and "numbered from 3" in replan_prompt
    assert any(isinstance(e, JoinDecision) and e.action == "replan" for e in events)


async def test_model_timeout_in_a_replan_keeps_round_one_results() -> None:
    class TimesOutOnReplan(ScriptedModel):
        async def complete(self, messages, *, stream=False, response_format=None, **kw):
            if stream and response_format is None and self.planner_prompts:  # the second plan call
                raise ModelTimeout("no answer within 1 s")
            return await super().complete(messages, stream=stream, response_format=response_format, **kw)

    plans = [['1. search(query="a")\n2. search(query="boom")\n3. join()']]
    joins = [{"thought": "task 2 failed, retry", "action": "replan", "answer": ""}]
    with pytest.raises(ModelTimeout) as info:
        await LLMCompiler(TimesOutOnReplan(plans, joins), make_registry([])).run("q")
    partial = info.value.partial
    assert partial is not None and partial.partial and "model error" in partial.reason
    assert partial.results[1].ok and partial.results[1].value == "result for a"
    assert partial.results[2].error_kind == "tool_error" and partial.rounds == 2


async def test_joiner_sees_consumed_results_shortened_and_the_rest_whole() -> None:
    from agentrt.planner._compiler import CONSUMED_RESULT_CHARS

    registry = make_registry([])

    @tool
    def page(name: str) -> str:
        """A long page about something.

        Args:
            name: what the page is about.
        """
        return f"{name}: " + "lorem ipsum " * 100

    @tool
    def length(text: str) -> int:
        """Characters in a text.

        Args:
            text: the text.
        """
        return len(text)

    registry = ToolRegistry([*registry, page, length])
    plan = ['1. page(name="used")\n2. page(name="leaf")\n3. length(text=$1)\n4. join()']
    for cls, cut in ((LLMCompiler, True), (FaithfulLLMCompiler, False)):
        model = ScriptedModel([plan], [{"thought": "t", "action": "answer", "answer": "a"}])
        seen: list[Any] = []
        orig = model.complete

        async def spy(messages, _orig=orig, _seen=seen, **kw):
            if kw.get("response_format") is not None:
                _seen.append(messages[-1].content)
            return await _orig(messages, **kw)

        model.complete = spy
        res = await cls(model, registry).run("q")
        assert res.results[3].value == len("used: " + "lorem ipsum " * 100)
        body = seen[0]
        used_line = next(line for line in body.splitlines() if line.startswith("   -> used:"))
        leaf_line = next(line for line in body.splitlines() if line.startswith("   -> leaf:"))
        assert len(leaf_line) > 600  # a result nothing consumed: whole (up to the usual 700)
        if cut:
            assert len(used_line) <= len("   -> ") + CONSUMED_RESULT_CHARS
        else:
            assert len(used_line) == len(leaf_line)


async def test_replan_that_reuses_an_old_id_is_rejected() -> None:
    plans = [['1. search(query="a")\n2. join()'], ['1. search(query="again")\n2. join()']]
    joins = [{"thought": "more", "action": "replan", "answer": ""},
             {"thought": "ok", "action": "answer", "answer": "fine"}]
    log: list[str] = []
    res = await LLMCompiler(ScriptedModel(plans, joins), make_registry(log)).run("q")
    assert log == ["search:a"]
    assert any("1" in i.message for i in res.issues)


async def test_rounds_are_bounded_and_answer_is_marked_partial() -> None:
    plans = [['1. search(query="a")\n2. join()'], ['2. search(query="b")\n3. join()']]
    joins = [{"thought": "need more", "action": "replan", "answer": ""},
             {"thought": "still missing c", "action": "replan", "answer": "best guess"}]
    res = await LLMCompiler(ScriptedModel(plans, joins), make_registry([]), max_rounds=2).run("q")
    assert res.partial and res.rounds == 2
    assert "2 rounds" in res.reason and res.answer == "best guess"


async def test_last_round_joiner_may_only_answer_and_the_answer_is_marked_partial() -> None:
    plans = [['1. search(query="boom")\n2. join()'], ['2. search(query="boom")\n3. join()']]
    joins = [{"thought": "search failed", "action": "replan", "answer": ""},
             {"thought": "both failed", "action": "answer", "answer": "unknown: the search failed twice"}]
    model = ScriptedModel(plans, joins)
    res = await LLMCompiler(model, make_registry([]), max_rounds=2).run("q")
    assert model.join_schemas[0]["properties"]["action"]["enum"] == ["answer", "replan"]
    assert model.join_schemas[1]["properties"]["action"]["enum"] == ["answer"]  # no round left
    assert res.answer == "unknown: the search failed twice"
    assert res.partial and "every tool call failed" in res.reason

    plans = [['1. search(query="a")\n2. search(query="boom")\n3. join()'], ['3. search(query="boom")\n4. join()']]
    joins = [{"thought": "2 failed", "action": "replan", "answer": ""},
             {"thought": "a only", "action": "answer", "answer": "result for a; b is missing"}]
    res = await LLMCompiler(ScriptedModel(plans, joins), make_registry([]), max_rounds=2).run("q")
    assert res.partial and "last of 2 rounds with 2 failed call(s)" in res.reason


async def test_unknown_tool_and_forward_reference_become_issues_the_joiner_sees() -> None:
    plan = ['1. nosuchtool(x=1)\n2. add(a=$5, b=1)\n3. db.count(table="users")\n4. join()']
    model = ScriptedModel([plan], [{"thought": "t", "action": "answer", "answer": "3"}])
    events: list[Any] = []
    res = await LLMCompiler(model, make_registry([]), on_event=events.append).run("q")
    assert res.results[3].value == 3  # the dotted tool ran
    assert 1 not in res.results and 2 not in res.results
    assert len([e for e in events if isinstance(e, PlanIssueSeen)]) == 2
    assert [t for t in res.tasks] == [3]


async def test_joiner_garbage_is_used_as_answer_not_crash() -> None:
    plan = ['1. search(query="a")\n2. join()']
    model = ScriptedModel([plan], ["the answer is 42 (not json)"])
    res = await LLMCompiler(model, make_registry([])).run("q")
    assert res.answer.startswith("the answer is 42")


async def test_plan_cut_at_join_stop_sequence_is_complete() -> None:
    # servers remove the stop string: the stream ends with "3. " instead of "3. join()"
    plan = ['1. search(query="a")\n2. search(query="b")\n3. ']
    model = ScriptedModel([plan], [{"thought": "t", "action": "answer", "answer": "ok"}])
    res = await LLMCompiler(model, make_registry([])).run("q")
    assert sorted(res.results) == [1, 2] and not res.issues


async def test_cancelling_a_run_leaves_no_running_task() -> None:
    log: list[str] = []
    plan = ['1. search(query="slow1")\n2. search(query="slow2")\n3. join()']
    model = ScriptedModel([plan], [{"thought": "t", "action": "answer", "answer": "x"}])
    reg = make_registry(log, delays={"slow1": 0.4, "slow2": 0.4})
    with anyio.move_on_after(0.2) as scope:
        await LLMCompiler(model, reg).run("q")
    assert scope.cancelled_caught
    await anyio.sleep(0.5)
    assert sorted(log) == ["search:slow1", "search:slow2"]  # both started, neither kept running


async def test_faithful_baseline_waits_for_newline_and_aborts_round_on_failure() -> None:
    plan = ['1. search(query="a")', " ", "\n", '2. search(query="boom")\n3. search(query="slow")\n4. join()']
    model = ScriptedModel([plan], [{"thought": "t", "action": "answer", "answer": "x"}], chunk_delay=0.2)
    started: dict[int, float] = {}

    def on_event(ev: Any) -> None:
        if isinstance(ev, TaskAdded):
            started[ev.task.id] = time.perf_counter()

    t0 = time.perf_counter()
    res = await FaithfulLLMCompiler(model, make_registry([], delays={"slow": 1.0}), on_event=on_event).run("q")
    assert started[1] - t0 >= 0.5  # only once the newline (third chunk) arrived
    assert res.results[2].error_kind == "tool_error"
    assert res.results[3].error_kind == "cancelled"  # no failure isolation


async def test_react_baseline_calls_one_tool_per_turn() -> None:
    class ReactModel:
        model_name = "scripted"

        def __init__(self) -> None:
            self.turns = [
                {"thought": "look up", "action": "search", "args": {"query": "a"}, "answer": ""},
                {"thought": "add", "action": "add", "args": {"a": 1, "b": 2}, "answer": ""},
                {"thought": "done", "action": "finish", "args": {}, "answer": "3"},
            ]

        async def complete(self, messages, **kw):
            return Completion(content=json.dumps(self.turns.pop(0)), usage=Usage(input_tokens=10, output_tokens=5))

    res = await ReAct(ReactModel(), make_registry([])).run("q")
    assert res.answer == "3" and res.llm_calls == 3 and len(res.tasks) == 2
    assert res.results[2].value == 3


def test_plan_example_renders_in_prompt() -> None:
    from agentrt.planner._prompts import planner_system_prompt

    reg = make_registry([])
    ex = PlanExample(question="Q?", plan='1. search(query="x")\n2. join()')
    text = planner_system_prompt(reg, [ex])
    assert "db.count(table: string)" in text and "Example question: Q?" in text


async def test_json_plan_format_dispatches_each_task_when_its_object_closes() -> None:
    plan = ['{"tasks": [{"id": 1, "tool": "search", "args": {"query": "a"}}', ", ",
            '{"id": 2, "tool": "search", "args": {"query": "b"}}, ',
            '{"id": 3, "tool": "add", "args": {"a": 1, "b": 2}}]}']
    model = ScriptedModel([plan], [{"thought": "ok", "action": "answer", "answer": "done"}], chunk_delay=0.2)
    started: dict[int, float] = {}

    def on_event(ev: Any) -> None:
        if isinstance(ev, TaskStarted):
            started[ev.task.id] = time.perf_counter()

    compiler = LLMCompiler(model, make_registry([]), on_event=on_event, plan_format="json")
    assert '"tasks"' in compiler._system
    res = await compiler.run("q")
    assert started[1] < model.stream_done_at[0] - 0.3
    assert sorted(res.results) == [1, 2, 3] and res.results[3].value == 3


def test_json_prompt_converts_text_examples() -> None:
    from agentrt.planner._prompts import planner_system_prompt

    ex = PlanExample(question="Q?", plan='1. search(query="x")\n2. add(a=$1, b=2)\n3. join()')
    text = planner_system_prompt(make_registry([]), [ex], "json")
    assert '{"id": 2, "tool": "add", "args": {"a": "$1", "b": 2}}' in text


async def test_joiner_may_replan_only_after_a_failure_by_default() -> None:
    plans = [['1. search(query="a")\n2. join()'], ['2. search(query="boom")\n3. join()'],
             ['3. search(query="c")\n4. join()']]
    joins = [{"thought": "t", "action": "replan", "answer": ""}] * 2 + [
        {"thought": "t", "action": "answer", "answer": "x"}]
    model = ScriptedModel(plans, joins)
    await LLMCompiler(model, make_registry([])).run("q")
    enums = [s["properties"]["action"]["enum"] for s in model.join_schemas]
    # round 1: every call succeeded -> answer only; round 2: a call failed -> replan allowed
    assert enums[0] == ["answer"] and enums[1] == ["answer", "replan"]

    model = ScriptedModel([plans[0]], [joins[2]])
    await LLMCompiler(model, make_registry([]), replan="joiner").run("q")
    assert model.join_schemas[0]["properties"]["action"]["enum"] == ["answer", "replan"]
