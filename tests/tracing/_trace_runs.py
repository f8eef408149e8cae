"""Runs made through the public tracing API, shaped like LLMCompiler runs (shared by the tests)."""

from __future__ import annotations

import time

import anyio

from agentrt.tracing import Tracer, record_tool_result


class _Usage:
    """A ToolUsage-like record (the fields `record_tool_result` reads)."""

    def __init__(self, wall: float, cpu: float) -> None:
        self.wall_seconds, self.cpu_seconds, self.memory_peak_bytes = wall, cpu, 50_000_000
        self.exit_status, self.oom_killed, self.timed_out = 0, False, False


#: Simulated planner/joiner usage: (input, cached, output) tokens of each LLM call.
LLM_CALLS = [(1200, 300, 150), (900, 0, 40)]
#: task id -> (sleep seconds, deps); 1 and 2 run in parallel, 3 waits for both, 4 is independent.
DAG = {1: (0.10, []), 2: (0.20, []), 3: (0.10, [1, 2]), 4: (0.05, [])}


async def make_run(tracer: Tracer, question: str = "how far?", model: str = "gpt-4o",
                   scale: float = 1.0) -> str:
    """One run shaped like an LLMCompiler run: plan (chat), DAG of tools, join (chat)."""
    with tracer.run(agent="test-agent", question=question) as run:
        inp, cached, out = LLM_CALLS[0]
        with tracer.chat(model, provider="openai", max_tokens=512) as c:
            await anyio.sleep(0.03)
            c.record_usage(input_tokens=inp, output_tokens=out, cached_input_tokens=cached)
        done = {tid: anyio.Event() for tid in DAG}

        async def task(tid: int) -> None:
            secs, deps = DAG[tid]
            for d in deps:
                await done[d].wait()
            span = tracer.tool(f"tool{tid}", task_id=tid, deps=deps, call_id=str(tid))
            t0 = time.monotonic()
            await anyio.sleep(secs * scale)
            record_tool_result(span, _Usage(time.monotonic() - t0, 0.01 * tid))
            done[tid].set()

        async with anyio.create_task_group() as tg:
            for tid in DAG:
                tg.start_soon(task, tid)
        inp, cached, out = LLM_CALLS[1]
        with tracer.chat(model, provider="openai", max_tokens=256) as c:
            await anyio.sleep(0.02)
            c.record_usage(input_tokens=inp, output_tokens=out, cached_input_tokens=cached)
    return run.run_id
