"""Baseline schedulers, measured beside `Scheduler` in the same run (benchmarks/scheduler.py).

`PollingScheduler` reproduces the task fetching unit of the original LLMCompiler
(SqueezeAILab/LLMCompiler, ``src/llm_compiler/task_fetching_unit.py``, ``TaskFetchingUnit.schedule``):
every ``SCHEDULING_INTERVAL`` = 10 ms it scans all remaining tasks, starts each one whose
dependencies are all done, then sleeps. Calls run through the same `ExecutorBackend`, `Tool.call`
and `resolve_refs` as `Scheduler`, so a comparison measures scheduling alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import anyio

from agentrt.errors import ToolNotFound
from agentrt.executor._backend import ExecutorBackend, LocalBackend
from agentrt.executor._task import Task, resolve_refs
from agentrt.tools import ToolRegistry, ToolResult

__all__ = ["PollingScheduler", "SCHEDULING_INTERVAL"]

#: LLMCompiler's polling interval, seconds.
SCHEDULING_INTERVAL = 0.01


class PollingScheduler:
    """LLMCompiler's polling task fetching unit, for comparison only (not used by the runtime).

    Differences from the original, none of which changes its timing: it uses anyio instead of
    bare ``asyncio.create_task`` (so no task outlives ``run``), and a task whose dependency
    failed is skipped instead of being run with the failure's text.
    """

    def __init__(self, registry: ToolRegistry, backend: ExecutorBackend | None = None,
                 interval: float = SCHEDULING_INTERVAL) -> None:
        self.registry = registry
        self.backend: ExecutorBackend = backend if backend is not None else LocalBackend()
        self.interval = interval

    async def run(self, tasks: Iterable[Task], results: dict[int, ToolResult] | None = None) -> dict[int, ToolResult]:
        """Run a complete plan (all tasks known up front, as ``TaskFetchingUnit.schedule``)."""
        results = results if results is not None else {}
        all_tasks = {t.id: t for t in tasks if t.id not in results}
        remaining = set(all_tasks)
        done: set[int] = set(results)

        async def run_task(task: Task) -> None:
            failed = next((d for d in sorted(task.deps) if not results[d].ok), None)
            if failed is not None:
                results[task.id] = ToolResult.failure("skipped", f"dependency {failed} failed: {results[failed].error}")
            else:
                try:
                    tool = self.registry.get(task.tool)
                except ToolNotFound as exc:
                    results[task.id] = ToolResult.failure("invalid_args", str(exc))
                else:
                    args: dict[str, Any] = resolve_refs(task.args, {d: results[d].value for d in task.deps})
                    results[task.id] = await self.backend.submit(task, tool, args, tool.limits)
            done.add(task.id)

        running = 0
        total = len(done) + len(all_tasks)

        async def counted(task: Task) -> None:
            nonlocal running
            try:
                await run_task(task)
            finally:
                running -= 1

        async with anyio.create_task_group() as tg:
            while len(done) < total:
                executable = [tid for tid in remaining if all(d in done for d in all_tasks[tid].deps)]
                for tid in executable:
                    running += 1
                    tg.start_soon(counted, all_tasks[tid])
                    remaining.discard(tid)
                if not executable and not running and remaining:
                    # waits on an unknown task or a cycle: the original would poll forever
                    for tid in remaining:
                        results[tid] = ToolResult.failure("skipped", "dependencies can never finish")
                        done.add(tid)
                    remaining.clear()
                    break
                await anyio.sleep(self.interval)
        return results
