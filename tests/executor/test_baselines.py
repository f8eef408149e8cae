"""The polling baseline computes what the scheduler computes, only later."""

from __future__ import annotations

import anyio
import pytest

from agentrt.executor import Task
from agentrt.executor._baselines import PollingScheduler
from agentrt.tools import ToolRegistry, ToolResult, tool

pytestmark = pytest.mark.anyio


@tool
async def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
async def boom() -> int:
    """Always raise."""
    raise ValueError("boom")


async def test_polling_baseline_runs_a_plan_and_terminates_on_bad_dependencies() -> None:
    with anyio.fail_after(5):
        results = await PollingScheduler(ToolRegistry([add, boom])).run(
            [
                Task(id=2, tool="add", args={"a": "$1", "b": 1}),
                Task(id=3, tool="add", args={"a": "$2", "b": "$2"}),
                Task(id=4, tool="boom"),
                Task(id=5, tool="add", args={"a": "$4", "b": 1}),
                Task(id=6, tool="add", args={"a": "$77", "b": 1}),
            ],
            results={1: ToolResult.success(1)},
        )
    assert results[3].value == 4
    assert results[5].error_kind == "skipped"
    assert results[6].error_kind == "skipped"
