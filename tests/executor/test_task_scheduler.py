"""The task fetching unit: event-driven dispatch, failures as values, structured cancellation."""

from __future__ import annotations

import logging
import random
import threading
import time

import anyio
import pytest

from agentrt.errors import PlanError
from agentrt.executor import (
    Ref,
    Scheduler,
    SchedulerEvent,
    Task,
    TaskFinished,
    TaskSkipped,
    TaskStarted,
    TaskStatus,
)
from agentrt.tools import Limits, ToolRegistry, ToolResult, tool

pytestmark = pytest.mark.anyio


@tool
async def sleep(seconds: float, tag: str = "") -> str:
    """Sleep, then return the tag."""
    await anyio.sleep(seconds)
    return tag


@tool
async def const(value: object) -> object:
    """Return the value given."""
    return value


@tool
async def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
async def echo(data: dict) -> dict:
    """Return the data given."""
    return data


@tool
async def boom(message: str = "boom") -> str:
    """Always raise."""
    raise ValueError(message)


def registry(*extra) -> ToolRegistry:
    return ToolRegistry([sleep, const, add, echo, boom, *extra])


class Recorder:
    def __init__(self) -> None:
        self.events: list[SchedulerEvent] = []

    def __call__(self, event: SchedulerEvent) -> None:
        self.events.append(event)

    def of(self, kind: type, task_id: int) -> SchedulerEvent:
        return next(e for e in self.events if isinstance(e, kind) and e.task.id == task_id)


async def test_task_dispatches_before_plan_finishes() -> None:
    rec = Recorder()
    started_1 = anyio.Event()

    def on_event(e: SchedulerEvent) -> None:
        rec(e)
        if isinstance(e, TaskStarted) and e.task.id == 1:
            started_1.set()

    sched = Scheduler(registry(), on_event=on_event)
    async with sched.session() as s:

        async def slow_planner() -> None:
            s.add(Task(id=1, tool="sleep", args={"seconds": 0.1, "tag": "one"}))
            await started_1.wait()
            added_2 = time.monotonic()
            s.add(Task(id=2, tool="const", args={"value": "$1"}))
            await anyio.sleep(0.5)  # the planner is still streaming
            s.add(Task(id=3, tool="const", args={"value": 3}))
            nonlocal closed_at, added_at_2
            closed_at, added_at_2 = time.monotonic(), added_2
            s.close()

        closed_at = added_at_2 = 0.0
        s_tg_results: dict[int, ToolResult] = {}
        async with anyio.create_task_group() as tg:
            tg.start_soon(slow_planner)
            s_tg_results = await s.wait()

    assert s_tg_results[2].value == "one"
    started_1_at = rec.of(TaskStarted, 1).at
    finished_1_at = rec.of(TaskFinished, 1).at
    started_2_at = rec.of(TaskStarted, 2).at
    assert started_1_at < added_at_2, "task 1 must start before task 2 is even parsed"
    assert started_2_at < closed_at - 0.3, "task 2 must run while the plan is still being streamed"
    assert 0 <= started_2_at - finished_1_at < 0.05, "task 2 starts as soon as task 1 finishes"
    assert s.timings[2].ready_at == pytest.approx(finished_1_at)


async def test_independent_tasks_run_in_parallel() -> None:
    sched = Scheduler(registry())
    t0 = time.monotonic()
    results = await sched.run([
        Task(id=1, tool="sleep", args={"seconds": 0.3, "tag": "a"}),
        Task(id=2, tool="sleep", args={"seconds": 0.3, "tag": "b"}),
    ])
    elapsed = time.monotonic() - t0
    assert [results[1].value, results[2].value] == ["a", "b"]
    assert elapsed < 0.55, f"two 0.3 s sleeps took {elapsed:.3f} s: they did not overlap"


async def test_failing_and_hanging_tools_do_not_stall_or_cancel_siblings() -> None:
    async_finally = threading.Event()
    release_thread = threading.Event()

    @tool(limits=Limits(timeout=0.2))
    async def hang_async() -> str:
        """Never returns on its own."""
        try:
            await anyio.sleep(3600)
        finally:
            async_finally.set()
        return "never"

    @tool(limits=Limits(timeout=0.2))
    def hang_sync() -> str:
        """Blocks its thread until the test releases it."""
        release_thread.wait(30)
        return "late"

    sched = Scheduler(registry(hang_async, hang_sync))
    t0 = time.monotonic()
    try:
        results = await sched.run([
            Task(id=1, tool="boom", args={"message": "kaput"}),
            Task(id=2, tool="hang_async"),
            Task(id=3, tool="hang_sync"),
            Task(id=4, tool="sleep", args={"seconds": 0.4, "tag": "sibling"}),
            Task(id=5, tool="const", args={"value": "$4"}),
        ])
        elapsed = time.monotonic() - t0
    finally:
        release_thread.set()
    assert (results[1].ok, results[1].error_kind) == (False, "tool_error")
    assert "ValueError: kaput" in (results[1].error or "")
    assert results[2].error_kind == "timeout" and results[2].usage.timed_out
    assert async_finally.is_set(), "the hanging async tool must really be cancelled"
    assert results[3].error_kind == "timeout"
    assert results[4].value == "sibling" and results[5].value == "sibling"
    assert elapsed < 1.5, f"a hanging tool stalled the run ({elapsed:.2f} s)"


async def test_dependents_of_a_failed_task_are_skipped_with_the_reason() -> None:
    calls = []

    @tool
    async def counted(x: object = None) -> str:
        """Record that it ran."""
        calls.append(x)
        return "ran"

    rec = Recorder()
    sched = Scheduler(registry(counted), on_event=rec)
    results = await sched.run([
        Task(id=1, tool="boom", args={"message": "no such city"}),
        Task(id=2, tool="counted", args={"x": "$1"}),
        Task(id=3, tool="counted", args={"x": "$2"}),
        Task(id=4, tool="counted", deps=frozenset({1})),
        Task(id=5, tool="counted", args={"x": "independent"}),
    ])
    assert calls == ["independent"]
    assert results[2].error_kind == "skipped"
    assert results[2].error == "dependency 1 failed: ValueError: no such city"
    assert results[3].error_kind == "skipped"
    assert "dependency 2" in results[3].error and "task 1 failed: ValueError: no such city" in results[3].error
    assert results[4].error == "dependency 1 failed: ValueError: no such city"
    assert results[5].ok
    skipped = {e.task.id: e.reason for e in rec.events if isinstance(e, TaskSkipped)}
    assert skipped == {2: results[2].error, 3: results[3].error, 4: results[4].error}
    assert not any(isinstance(e, TaskStarted) and e.task.id in (2, 3, 4) for e in rec.events)


async def test_long_chain_of_skips_is_bounded() -> None:
    n = 3000
    tasks = [Task(id=1, tool="boom")] + [Task(id=i, tool="const", args={"value": f"${i - 1}"}) for i in range(2, n + 1)]
    results = await Scheduler(registry()).run(tasks)
    assert all(results[i].error_kind == "skipped" for i in range(2, n + 1))
    assert max(len(results[i].error or "") for i in range(2, n + 1)) < 200
    assert "task 1 failed: ValueError: boom" in (results[n].error or "")


async def test_prefilled_results_are_kept_not_rerun_and_referenced() -> None:
    calls = []

    @tool
    async def first() -> int:
        """Would compute 41 again."""
        calls.append(1)
        return 41

    prefilled = {1: ToolResult.success(41), 2: ToolResult.failure("tool_error", "HTTP 500")}
    sched = Scheduler(registry(first))
    async with sched.session(results=prefilled) as s:
        s.add(Task(id=1, tool="first"))  # the replanner repeats a done task: kept, not re-run
        s.add(Task(id=3, tool="add", args={"a": "$1", "b": 1}))
        s.add(Task(id=4, tool="const", args={"value": Ref(task=2)}))
        s.close()
        results = await s.wait()
    assert calls == []
    assert results is prefilled, "results of the session are filled into the dict given"
    assert results[1].value == 41
    assert results[3].value == 42
    assert results[4].error == "dependency 2 failed: HTTP 500"
    assert s.status(1) is TaskStatus.DONE and s.status(4) is TaskStatus.SKIPPED


async def test_cancelling_the_enclosing_scope_leaves_no_task_running() -> None:
    entered: set[int] = set()
    cleaned: set[int] = set()
    all_started = anyio.Event()

    @tool
    async def forever(i: int) -> int:
        """Runs until cancelled."""
        entered.add(i)
        if len(entered) == 3:
            all_started.set()
        try:
            await anyio.sleep(3600)
        finally:
            cleaned.add(i)
        return i

    rec = Recorder()
    sched = Scheduler(registry(forever), on_event=rec)
    with anyio.move_on_after(5) as outer:
        async with sched.session() as s:
            for i in (1, 2, 3):
                s.add(Task(id=i, tool="forever", args={"i": i}))
            s.add(Task(id=4, tool="forever", args={"i": "$1"}))
            s.close()
            await all_started.wait()
            outer.cancel()
            await s.wait()
    assert outer.cancelled_caught
    assert entered == cleaned == {1, 2, 3}
    assert 4 not in entered
    assert {i: s.results[i].error_kind for i in (1, 2, 3)} == {1: "cancelled", 2: "cancelled", 3: "cancelled"}
    finished = {e.task.id for e in rec.events if isinstance(e, TaskFinished)}
    assert finished == {1, 2, 3}


async def test_leaving_the_session_with_an_exception_cancels_its_tasks() -> None:
    cleaned = threading.Event()
    started = anyio.Event()

    @tool
    async def forever() -> None:
        """Runs until cancelled."""
        started.set()
        try:
            await anyio.sleep(3600)
        finally:
            cleaned.set()

    with pytest.raises(ExceptionGroup) as info:
        async with Scheduler(registry(forever)).session() as s:
            s.add(Task(id=1, tool="forever"))
            await started.wait()
            raise LookupError("planner crashed")
    assert info.group_contains(LookupError)
    assert cleaned.is_set()


async def test_references_resolve_inside_nested_strings_lists_and_dicts_with_typed_values() -> None:
    sched = Scheduler(registry())
    results = await sched.run([
        Task(id=1, tool="const", args={"value": {"n": 3, "xs": [1, 2]}}),
        Task(id=2, tool="add", args={"a": 3, "b": 4}),
        Task(id=3, tool="echo", args={"data": {
            "whole": "$1",
            "list": ["$2", {"$ref": 2}, Ref(task=2), "x=${2}!"],
            "nested": {"deeper": ["${1}"]},
            "text": "sum $2 of $1",
        }}),
    ])
    data = results[3].value
    assert data["whole"] == {"n": 3, "xs": [1, 2]}
    assert data["list"] == [7, 7, 7, "x=7!"]
    assert data["nested"] == {"deeper": [{"n": 3, "xs": [1, 2]}]}
    assert data["text"] == 'sum 7 of {"n": 3, "xs": [1, 2]}'
    assert isinstance(data["list"][0], int)


async def test_unknown_dependency_at_close_is_skipped_without_hanging() -> None:
    sched = Scheduler(registry())
    with anyio.fail_after(2):
        async with sched.session() as s:
            s.add(Task(id=1, tool="const", args={"value": 1}))
            s.add(Task(id=2, tool="add", args={"a": "$1", "b": "$99"}))
            s.add(Task(id=3, tool="const", args={"value": "$2"}))
            s.close()
            results = await s.wait()
    assert results[1].ok
    assert results[2].error_kind == "skipped"
    assert "dependency 99 is not a task of this plan" in (results[2].error or "")
    assert results[3].error_kind == "skipped" and "dependency 2" in (results[3].error or "")


async def test_dependency_added_later_is_waited_for() -> None:
    sched = Scheduler(registry())
    async with sched.session() as s:
        s.add(Task(id=2, tool="add", args={"a": "$1", "b": 1}))  # a forward reference, for now
        await anyio.sleep(0.05)
        assert s.status(2) is TaskStatus.PENDING
        s.add(Task(id=1, tool="const", args={"value": 1}))
        s.close()
        results = await s.wait()
    assert results[2].value == 2


async def test_a_dependency_cycle_is_skipped_at_close_without_hanging() -> None:
    sched = Scheduler(registry())
    with anyio.fail_after(2):
        results = await sched.run([
            Task(id=1, tool="sleep", args={"seconds": 0.05}),
            Task(id=2, tool="const", args={"value": "$3"}, deps=frozenset({1})),
            Task(id=3, tool="const", args={"value": "$2"}),
            Task(id=4, tool="const", args={"value": "$4"}),
        ])
    assert results[1].ok
    for i in (2, 3, 4):
        assert results[i].error_kind == "skipped"
    assert "cycle" in (results[4].error or "")


async def test_unknown_tool_fails_with_the_registry_message() -> None:
    rec = Recorder()
    results = await Scheduler(registry(), on_event=rec).run([
        Task(id=1, tool="serach", args={"q": "x"}),
        Task(id=2, tool="const", args={"value": "$1"}),
    ])
    assert results[1].error_kind == "invalid_args"
    assert "unknown tool 'serach'" in (results[1].error or "") and "known tools" in (results[1].error or "")
    assert results[2].error_kind == "skipped"
    assert isinstance(rec.of(TaskFinished, 1), TaskFinished)


async def test_max_concurrency_limits_calls_running_at_once() -> None:
    running = peak = 0

    @tool
    async def busy() -> None:
        """Count how many run at once."""
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await anyio.sleep(0.05)
        running -= 1

    t0 = time.monotonic()
    results = await Scheduler(registry(busy), max_concurrency=2).run(
        [Task(id=i, tool="busy") for i in range(1, 7)]
    )
    assert all(r.ok for r in results.values())
    assert peak == 2
    assert time.monotonic() - t0 >= 0.14


async def test_on_event_errors_are_logged_not_propagated(caplog: pytest.LogCaptureFixture) -> None:
    def bad_handler(event: SchedulerEvent) -> None:
        raise RuntimeError("UI crashed")

    with caplog.at_level(logging.ERROR, logger="agentrt.executor._scheduler"):
        results = await Scheduler(registry(), on_event=bad_handler).run([
            Task(id=1, tool="const", args={"value": 1}),
            Task(id=2, tool="add", args={"a": "$1", "b": 1}),
        ])
    assert results[2].value == 2
    assert any("UI crashed" in (r.exc_text or "") or "on_event" in r.getMessage() for r in caplog.records)


async def test_events_carry_monotonic_timestamps_in_order() -> None:
    rec = Recorder()
    await Scheduler(registry(), on_event=rec).run([
        Task(id=1, tool="sleep", args={"seconds": 0.02}),
        Task(id=2, tool="sleep", args={"seconds": 0.02}, deps=frozenset({1})),
    ])
    s1, f1, s2, f2 = (rec.of(TaskStarted, 1), rec.of(TaskFinished, 1), rec.of(TaskStarted, 2), rec.of(TaskFinished, 2))
    assert s1.ready_at <= s1.at < f1.at <= s2.ready_at <= s2.at < f2.at
    assert f1.result.ok and f2.result.ok
    assert [type(e).__name__ for e in rec.events] == ["TaskStarted", "TaskFinished", "TaskStarted", "TaskFinished"]


async def test_a_backend_bug_surfaces_and_cancels_the_other_calls() -> None:
    cleaned = threading.Event()

    class BrokenBackend:
        async def submit(self, task, tool, args, limits):  # noqa: ANN001, ANN202
            if task.id == 2:
                await anyio.sleep(0.05)
                raise RuntimeError("backend bug")
            try:
                return await tool.call(args)
            finally:
                cleaned.set()

    with pytest.raises(ExceptionGroup) as info:
        await Scheduler(registry(), backend=BrokenBackend()).run([
            Task(id=1, tool="sleep", args={"seconds": 10}),
            Task(id=2, tool="const", args={"value": 1}),
        ])
    assert info.group_contains(RuntimeError, match="backend bug")
    assert cleaned.is_set()


async def test_misuse_of_a_session_raises() -> None:
    sched = Scheduler(registry())
    async with sched.session() as s:
        s.add(Task(id=1, tool="const", args={"value": 1}))
        with pytest.raises(PlanError, match="added twice"):
            s.add(Task(id=1, tool="const", args={"value": 2}))
        s.close()
        with pytest.raises(PlanError, match="after the plan ended"):
            s.add(Task(id=2, tool="const", args={"value": 2}))
        await s.wait()
    with pytest.raises(RuntimeError, match="async with"):
        sched.session().add(Task(id=1, tool="const", args={"value": 1}))
    with pytest.raises(ValueError):
        Scheduler(registry(), max_concurrency=0)


async def test_leaving_the_block_closes_and_waits_for_every_task() -> None:
    async with Scheduler(registry()).session() as s:
        s.add(Task(id=1, tool="sleep", args={"seconds": 0.05, "tag": "a"}))
        s.add(Task(id=2, tool="const", args={"value": "$1"}))
    assert s.closed and s.results[2].value == "a"


@pytest.mark.parametrize("max_concurrency", [None, 16])
async def test_random_dags_compute_the_right_values(max_concurrency: int | None) -> None:
    @tool
    async def mix(a: int, b: int) -> int:
        """Combine two values (a hash, so a wrong dependency shows)."""
        return (a * 31 + b) % 1_000_003

    rng = random.Random(7)
    n = 400
    tasks: list[Task] = []
    expected: dict[int, int] = {}
    for i in range(1, n + 1):
        if i > 2 and rng.random() < 0.8:
            a, b = rng.sample(range(max(1, i - 30), i), 2)
            tasks.append(Task(id=i, tool="mix", args={"a": f"${a}", "b": {"$ref": b}}))
            expected[i] = (expected[a] * 31 + expected[b]) % 1_000_003
        else:
            tasks.append(Task(id=i, tool="const", args={"value": i}))
            expected[i] = i
    rng.shuffle(tasks)  # arrival order need not be topological
    results = await Scheduler(registry(mix), max_concurrency=max_concurrency).run(tasks)
    assert {i: r.value for i, r in results.items()} == expected


async def test_no_tool_is_entered_once_the_session_is_cancelled() -> None:
    entered: list[int] = []
    scope = anyio.CancelScope()

    @tool
    async def cancel_then_return() -> int:
        """Cancel the enclosing scope, then finish normally (no checkpoint in between)."""
        scope.cancel()
        return 1

    @tool
    async def side_effect(x: int) -> int:
        """Must not start after the cancellation."""
        entered.append(x)
        await anyio.sleep(0)
        return x

    with scope:
        await Scheduler(registry(cancel_then_return, side_effect)).run([
            Task(id=1, tool="cancel_then_return"),
            Task(id=2, tool="side_effect", args={"x": "$1"}),
        ])
    assert scope.cancelled_caught
    assert entered == []


async def test_cancelling_a_session_with_idle_workers_and_waiting_tasks_ends_cleanly() -> None:
    sched = Scheduler(registry())
    with anyio.move_on_after(0.3) as scope:
        async with sched.session() as s:
            s.add(Task(id=1, tool="const", args={"value": 1}))
            s.add(Task(id=3, tool="add", args={"a": "$1", "b": "$2"}))  # waits for 2, never added
            await anyio.sleep(0.05)  # task 1 done; its worker is idle, waiting for more work
            assert s.status(1) is TaskStatus.DONE and s.status(3) is TaskStatus.PENDING
            await s.wait()  # never closed: only the timeout ends this
    assert scope.cancelled_caught
    assert 3 not in s.results


def test_a_scheduler_is_reusable_across_event_loops() -> None:  # as Agent.run_sync would use it
    sched = Scheduler(registry(), max_concurrency=2)  # its limiter outlives each loop
    for _ in range(3):
        results = anyio.run(sched.run, [Task(id=i, tool="sleep", args={"seconds": 0.01, "tag": str(i)})
                                        for i in range(1, 6)])
        assert [results[i].value for i in range(1, 6)] == ["1", "2", "3", "4", "5"]
