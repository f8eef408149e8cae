"""Spans nest through contextvars across parallel anyio tasks and threads, with correct timing."""

from __future__ import annotations

import contextvars
import threading
import time

import anyio
import pytest
from _trace_runs import DAG, make_run

from agentrt.tracing import Tracer, TraceStore, current_span, summarize
from agentrt.tracing import semconv as sc


def test_spans_form_a_tree_with_correct_timing_under_parallel_tasks(store: TraceStore) -> None:
    tracer = store.tracer()
    run_id = anyio.run(make_run, tracer)
    assert store.flush()
    spans = store.spans(run_id)
    by_id = {s.span_id: s for s in spans}
    roots = [s for s in spans if s.parent_id is None]
    assert len(roots) == 1 and roots[0].operation == sc.INVOKE_AGENT
    root = roots[0]
    assert len(spans) == 1 + 2 + len(DAG)
    for s in spans:
        assert s.run_id == run_id
        if s is not root:
            parent = by_id[s.parent_id]  # every parent is in the run
            assert parent.start_ns <= s.start_ns and s.end_ns <= parent.end_ns, s.name
    tools = {s.attributes[sc.TASK_ID]: s for s in spans if s.operation == sc.EXECUTE_TOOL}
    assert all(t.parent_id == root.span_id for t in tools.values())
    for tid, (secs, deps) in DAG.items():
        assert tools[tid].duration_s == pytest.approx(secs, abs=0.05)
        for d in deps:  # a dependent starts only after its dependencies ended
            assert tools[tid].start_ns >= tools[d].end_ns
    # 1 and 2 ran in parallel: their intervals overlap
    assert tools[1].start_ns < tools[2].end_ns and tools[2].start_ns < tools[1].end_ns
    chats = sorted((s for s in spans if s.operation == sc.CHAT), key=lambda s: s.start_ns)
    assert chats[0].end_ns <= min(t.start_ns for t in tools.values())
    assert chats[1].start_ns >= max(t.end_ns for t in tools.values())


def test_nesting_follows_each_task_and_a_thread_with_a_copied_context(store: TraceStore) -> None:
    tracer = store.tracer()
    seen: dict[str, str | None] = {}

    def in_thread() -> None:
        with tracer.span("thread work", sc.SANDBOX_EXEC) as s:
            seen["thread_parent"] = None if s.parent_id is None else f"{s.parent_id:016x}"

    async def branch(name: str) -> None:
        with tracer.span(name, sc.EXECUTE_TOOL) as outer:
            await anyio.sleep(0.01)
            with tracer.span(name + ".inner", sc.SANDBOX_EXEC) as inner:
                await anyio.sleep(0.01)
                assert current_span() is inner
            seen[name] = f"{inner.parent_id:016x}"
            seen[name + ".outer"] = f"{outer.span_id:016x}"
            await anyio.to_thread.run_sync(in_thread)  # anyio copies the context into the worker

    async def main() -> str:
        with tracer.run(agent="a") as run:
            async with anyio.create_task_group() as tg:
                tg.start_soon(branch, "a")
                tg.start_soon(branch, "b")
            ctx = contextvars.copy_context()
            t = threading.Thread(target=ctx.run, args=(in_thread,))
            t.start()
            t.join()
            assert seen["thread_parent"] == f"{run.span_id:016x}"
        assert current_span() is None
        return run.run_id

    run_id = anyio.run(main)
    assert seen["a"] == seen["a.outer"] and seen["b"] == seen["b.outer"]
    assert store.flush()
    spans = store.spans(run_id)
    assert len(spans) == 1 + 2 * 3 + 1
    by_id = {s.span_id: s for s in spans}
    for s in spans:
        if s.name == "thread work" and s.parent_id != spans[0].span_id:
            assert by_id[s.parent_id].operation == sc.EXECUTE_TOOL


def test_an_exception_marks_the_span_as_error_and_still_records_it(store: TraceStore) -> None:
    tracer = store.tracer()
    with pytest.raises(ValueError), tracer.run(agent="x") as run:
        with tracer.span("boom", sc.EXECUTE_TOOL):
            raise ValueError("no")
    assert store.flush()
    spans = {s.name: s for s in store.spans(run.run_id)}
    assert spans["boom"].status == "error" and spans["boom"].attributes[sc.ERROR_TYPE] == "ValueError"
    assert store.run(run.run_id).status == "error"


def test_run_totals_are_the_sum_over_llm_calls(filled_store: tuple[TraceStore, list[str]]) -> None:
    store, ids = filled_store
    from _trace_runs import LLM_CALLS

    s = store.run(ids[0])
    assert s.llm_calls == 2 and s.tool_calls == len(DAG)
    assert s.input_tokens == sum(c[0] for c in LLM_CALLS)
    assert s.cached_tokens == sum(c[1] for c in LLM_CALLS)
    assert s.output_tokens == sum(c[2] for c in LLM_CALLS)
    # the stored totals equal a fresh summary of the stored spans
    again = summarize(store.spans(ids[0]))
    assert again.cost_usd == pytest.approx(s.cost_usd) and again.input_tokens == s.input_tokens


def test_disabled_tracer_records_nothing(store: TraceStore) -> None:
    tracer = Tracer(store.submit, enabled=False)
    with tracer.run(agent="off"), tracer.span("x"):
        pass
    assert store.flush()
    assert store.count_runs() == 0


def test_record_tool_result_copies_usage_adds_energy_and_ends_the_span(store: TraceStore) -> None:
    from agentrt.tools import ToolUsage
    from agentrt.tracing import cpu_power, monotonic_to_ns, record_tool_result

    tracer = store.tracer()
    with tracer.run(agent="t") as run:
        started = time.monotonic()
        span = tracer.tool("python", task_id=1, deps=[], start_ns=monotonic_to_ns(started))
        usage = ToolUsage(wall_seconds=0.5, cpu_seconds=0.25, memory_peak_bytes=10**9, oom_killed=True, exit_status=137)
        record_tool_result(span, usage, ok=False, error_kind="oom", end_ns=monotonic_to_ns(started + 0.5))
    assert store.flush()
    s = next(x for x in store.spans(run.run_id) if x.operation == sc.EXECUTE_TOOL)
    assert s.status == "error" and s.attributes[sc.ERROR_TYPE] == "oom" and s.attributes[sc.OOM_KILLED] is True
    assert s.attributes[sc.CPU_SECONDS] == 0.25 and s.attributes[sc.EXIT_STATUS] == 137
    assert s.duration_s == pytest.approx(0.5, abs=1e-6)
    assert s.attributes[sc.ENERGY_METHOD] == "estimated:cpu-tdp"
    assert s.attributes[sc.ENERGY_JOULES] == pytest.approx(0.25 * cpu_power().watts_per_thread + 1.0 * 0.375 * 0.5)
