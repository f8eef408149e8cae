"""critical_path and makespan: the longest measured chain through a plan's DAG."""

from __future__ import annotations

import pytest

from agentrt.errors import PlanError
from agentrt.executor import Task, TaskTiming, critical_path, makespan
from agentrt.tools import ToolResult, ToolUsage


def ok(seconds: float) -> ToolResult:
    return ToolResult.success(None, ToolUsage(wall_seconds=seconds))


def test_critical_path_follows_the_longest_measured_chain() -> None:
    #   1 (0.1) -> 2 (0.5) -> 4 (0.2)
    #   1 (0.1) -> 3 (0.3) -> 4
    #   5 (0.7) alone
    tasks = [
        Task(id=1, tool="t"),
        Task(id=2, tool="t", deps=frozenset({1})),
        Task(id=3, tool="t", deps=frozenset({1})),
        Task(id=4, tool="t", args={"a": "$2", "b": "$3"}),
        Task(id=5, tool="t"),
    ]
    results = {1: ok(0.1), 2: ok(0.5), 3: ok(0.3), 4: ok(0.2), 5: ok(0.7)}
    path, seconds = critical_path(tasks, results)
    assert path == [1, 2, 4]
    assert seconds == pytest.approx(0.8)
    assert critical_path({t.id: t for t in tasks}, results) == (path, seconds)


def test_critical_path_counts_prefilled_results_and_ignores_missing_ones() -> None:
    tasks = [Task(id=3, tool="t", deps=frozenset({1, 2, 99}))]
    results = {1: ok(2.0), 2: ok(1.0), 3: ok(0.5)}
    assert critical_path(tasks, results) == ([1, 3], pytest.approx(2.5))


def test_critical_path_of_nothing_is_empty() -> None:
    assert critical_path([], {}) == ([], 0.0)


def test_critical_path_rejects_a_cycle() -> None:
    tasks = [Task(id=1, tool="t", deps=frozenset({2})), Task(id=2, tool="t", deps=frozenset({1}))]
    with pytest.raises(PlanError, match="cycle"):
        critical_path(tasks, {})


def test_critical_path_handles_long_chains_without_recursion() -> None:
    n = 20_000
    tasks = [Task(id=i, tool="t", deps=frozenset({i - 1}) if i > 1 else frozenset()) for i in range(1, n + 1)]
    path, seconds = critical_path(tasks, {i: ok(0.001) for i in range(1, n + 1)})
    assert path == list(range(1, n + 1)) and seconds == pytest.approx(20.0)


def test_makespan_spans_first_start_to_last_finish() -> None:
    timings = {
        1: TaskTiming(added_at=0.0, ready_at=0.0, started_at=1.0, finished_at=2.0),
        2: TaskTiming(added_at=0.0, ready_at=2.0, started_at=2.5, finished_at=4.0),
        3: TaskTiming(added_at=0.0),
    }
    assert makespan(timings) == pytest.approx(3.0)
    assert makespan({}) == 0.0
