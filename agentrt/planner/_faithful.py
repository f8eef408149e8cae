"""Faithful LLMCompiler baseline: the original's scheduling, on our model, tools and prompts.

It reproduces three properties of the original task fetching unit (SqueezeAILab/LLMCompiler)
so the benchmark can measure what fixing them is worth: a task is dispatched only when its whole
plan line *and the newline after it* have arrived; ready tasks are found by polling every 10 ms;
and there is no failure isolation: a tool that fails aborts its round (siblings cancelled). The
original hung forever in that case; here the round ends, so a benchmark run still terminates.
"""

from __future__ import annotations

import time

import anyio

from agentrt.executor import Task, resolve_refs
from agentrt.planner._compiler import CompilerResult, LLMCompiler
from agentrt.planner._validate import PlanValidator
from agentrt.tools import ToolResult

__all__ = ["FaithfulLLMCompiler"]

POLL_INTERVAL = 0.010  # seconds, as the original's task fetching unit


class _RoundAborted(Exception):
    def __init__(self, task_id: int, result: ToolResult) -> None:
        super().__init__(f"task {task_id} failed: {result.error}")
        self.task_id, self.result = task_id, result


class FaithfulLLMCompiler(LLMCompiler):
    """`LLMCompiler` with the original's line-buffered dispatch, polling and no failure isolation;
    its joiner sees every result whole, as the original's does."""

    joiner_consumed_chars = None

    async def _plan_and_execute(self, question: str, context: str | None, feedback: str | None,
                                res: CompilerResult) -> None:
        parser = self._new_parser()
        validator = PlanValidator(self.registry, known_ids=set(res.tasks))
        msgs = self._planner_messages(question, context, feedback, res)
        pending: dict[int, Task] = {}
        running: set[int] = set()
        plan_done = anyio.Event()
        results = res.results

        handle = self._event_handler(res, validator, lambda task: pending.__setitem__(task.id, task))

        async def run_task(task: Task) -> None:
            try:
                args = resolve_refs(task.args, {k: v.value for k, v in results.items()})
                result = await self.registry.get(task.tool).call(args)
            finally:
                running.discard(task.id)
            results[task.id] = result
            if not result.ok:
                raise _RoundAborted(task.id, result)

        async def poll(tg: anyio.abc.TaskGroup) -> None:
            while True:
                for tid, task in list(pending.items()):
                    if all(d in results and results[d].ok for d in task.deps):
                        del pending[tid]
                        running.add(tid)
                        if res.first_dispatch_seconds is None:
                            res.first_dispatch_seconds = time.perf_counter() - self._t0
                        tg.start_soon(run_task, task)
                if plan_done.is_set() and not running:
                    return
                await anyio.sleep(POLL_INTERVAL)

        async def plan() -> None:
            buf, ended, text = "", False, []
            async for chunk in self._plan_chunks(msgs, res):
                if ended:
                    continue
                text.append(chunk)
                buf += chunk
                while "\n" in buf and not ended:  # whole lines only, as the original
                    line, buf = buf.split("\n", 1)
                    ended = handle(parser.feed(line + "\n"))
            if not ended:
                self._finish_plan(parser, handle, "".join(text), buf)
            plan_done.set()

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(plan)
                tg.start_soon(poll, tg)
        except* _RoundAborted as group:
            exc = group.exceptions[0]
            assert isinstance(exc, _RoundAborted)
            for tid in pending:
                results.setdefault(tid, ToolResult.failure(
                    "cancelled", f"round aborted because task {exc.task_id} failed"))
            for tid in list(res.tasks):
                results.setdefault(tid, ToolResult.failure(
                    "cancelled", f"round aborted because task {exc.task_id} failed"))
