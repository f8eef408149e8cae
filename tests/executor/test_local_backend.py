"""The local executor backend: in-process calls, limits, refusal of sandbox-only tools."""

from __future__ import annotations

import time

import anyio
import pytest

from agentrt.executor import ExecutorBackend, LocalBackend, Task
from agentrt.tools import Limits, tool

pytestmark = pytest.mark.anyio


@tool
async def nap(seconds: float) -> str:
    """Sleep a while."""
    await anyio.sleep(seconds)
    return "rested"


@tool
def square(x: int) -> int:
    """A sync tool: runs in a worker thread."""
    return x * x


@tool(runs_in="sandbox")
def rm_rf(path: str) -> None:
    """Must never run unconfined."""
    raise AssertionError("ran outside a sandbox")


def test_local_backend_implements_the_protocol() -> None:
    assert isinstance(LocalBackend(), ExecutorBackend)


async def test_runs_sync_and_async_tools_in_process() -> None:
    backend = LocalBackend()
    r = await backend.submit(Task(id=1, tool="square"), square, {"x": 7}, square.limits)
    assert r.ok and r.value == 49
    r = await backend.submit(Task(id=2, tool="nap"), nap, {"seconds": 0.01}, nap.limits)
    assert r.ok and r.value == "rested" and r.usage.wall_seconds >= 0.01


async def test_limits_given_override_the_tools_timeout() -> None:
    t0 = time.monotonic()
    r = await LocalBackend().submit(Task(id=1, tool="nap"), nap, {"seconds": 5}, Limits(timeout=0.1))
    assert r.error_kind == "timeout" and r.usage.timed_out
    assert time.monotonic() - t0 < 1.0
    assert nap.limits.timeout == 60.0, "the registered tool is not changed"


async def test_invalid_arguments_are_a_value_not_an_exception() -> None:
    r = await LocalBackend().submit(Task(id=1, tool="square"), square, {"x": "seven"}, square.limits)
    assert r.error_kind == "invalid_args" and "x" in (r.error or "")


async def test_sandbox_only_tools_are_refused_not_run_unconfined() -> None:
    r = await LocalBackend().submit(Task(id=1, tool="rm_rf"), rm_rf, {"path": "/"}, rm_rf.limits)
    assert r.error_kind == "denied" and "sandbox" in (r.error or "")
