"""Executor backends: where one task's tool call runs once the scheduler has dispatched it.

A backend receives a task whose references are already resolved and returns its `ToolResult`.
It never raises for the tool's own failure (that is a value); an exception out of ``submit`` is
a failure of the runtime itself and ends the scheduling session.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from agentrt.executor._task import Task
from agentrt.tools import Limits, Tool, ToolResult

__all__ = ["ExecutorBackend", "LocalBackend"]


@runtime_checkable
class ExecutorBackend(Protocol):
    """Runs one tool call of a plan.

    ``submit`` is awaited inside the scheduler's task group, so cancelling the session cancels
    it; an implementation must give up its work (or abandon it) when cancelled.
    """

    async def submit(self, task: Task, tool: Tool, args: dict[str, Any], limits: Limits) -> ToolResult:
        """Run ``tool`` with ``args`` (references resolved) under ``limits``.

        Returns:
            The call's `ToolResult`: a value, or an error with its kind (``timeout``,
            ``tool_error``, ``invalid_args``, ``denied`` ...). Never raises for the tool's failure.
        """
        ...


class LocalBackend:
    """Runs in-process tools in this process, on the scheduler's event loop.

    Async tools are awaited directly; sync tools run in a worker thread (``Tool.call``), which is
    abandoned, not joined, when the call times out or is cancelled. ``Limits.timeout`` applies;
    memory, CPU and network limits need a sandbox backend and are not enforced here. A tool that
    declares ``runs_in="sandbox"`` is refused (``denied``) rather than run unconfined.
    """

    async def submit(self, task: Task, tool: Tool, args: dict[str, Any], limits: Limits) -> ToolResult:
        if tool.runs_in != "in_process":
            return ToolResult.failure(
                "denied",
                f"tool {tool.name!r} must run in a sandbox (runs_in={tool.runs_in!r}); the local "
                "backend runs only in-process tools: use a sandbox executor backend",
            )
        if limits is not tool.limits and limits != tool.limits:
            tool = tool.model_copy(update={"limits": limits})
        return await tool.call(args)
