"""Tracing, cost and energy: spans with OpenTelemetry GenAI names, a local SQLite trace store,
prices from genai-prices, a reserving run budget, energy per span, and exporters.

Layer 1: imports only `agentrt.errors`, `agentrt.config` and libraries.

How to instrument (a few lines per place; spans nest through contextvars, so anyio tasks and
threads run with a copied context inherit the current span)::

    from agentrt.tracing import (Budget, EnergyMeter, QUEUE_WAIT_SECONDS, get_tracer,
                                 monotonic_to_ns, record_tool_result)

    tracer = get_tracer()                         # writes to <data_dir>/traces.sqlite

    # 1. Agent.run: one invoke_agent span per run (its trace id is the run id)
    with tracer.run(agent="agentrt", question=question) as run_span:
        ...                                       # planner, scheduler, joiner inside

    # 2. each planner / joiner LLM call: a chat span with usage (priced when the store writes
    #    it); with a Budget, reserve the worst case before sending and settle afterwards
    with tracer.chat(model, max_tokens=max_tokens) as span:           # local=True for the engine
        with budget.reserve(model, prompt_tokens=n_prompt, max_tokens=max_tokens) as hold:
            with EnergyMeter(pid=engine_pid) as meter:                 # local engine only
                completion = await llm.complete(...)
            u = completion.usage
            hold.settle(input_tokens=u.input_tokens, output_tokens=u.output_tokens,
                        cached_input_tokens=u.cached_tokens)
        span.record_usage(input_tokens=u.input_tokens, output_tokens=u.output_tokens,
                          cached_input_tokens=u.cached_tokens)
        span.record_energy(meter.energy.joules, meter.energy.method)   # local engine only

    # 3. Scheduler(on_event=...): execute_tool spans from the scheduler's events
    tool_spans = {}
    def on_event(ev):
        if isinstance(ev, TaskStarted):
            sp = tracer.tool(ev.task.tool, task_id=ev.task.id, deps=ev.task.deps,
                             call_id=str(ev.task.id), parent=run_span,
                             start_ns=monotonic_to_ns(ev.at))
            sp.set(QUEUE_WAIT_SECONDS, ev.at - ev.ready_at)            # admission wait
            tool_spans[ev.task.id] = sp
        elif isinstance(ev, TaskFinished) and ev.task.id in tool_spans:
            record_tool_result(tool_spans.pop(ev.task.id), ev.result.usage, ok=ev.result.ok,
                               error_kind=ev.result.error_kind, end_ns=monotonic_to_ns(ev.at))

`record_tool_result` copies wall/CPU seconds, peak memory, exit status, OOM/timeout flags onto
the span and adds an ``estimated:cpu-tdp`` energy figure from the CPU seconds. A sandbox exec or a
memory operation is ``with tracer.span(name, semconv.SANDBOX_EXEC | semconv.SEARCH_MEMORY)``.

Remote inference spans without energy get a per-token estimate and every inference span with
usage is priced when the store writes it. `agentrt trace ls/show/plot/export/diff/tail/cost` read
the store.
"""

from __future__ import annotations

import threading
from typing import Any

from agentrt.tracing import _semconv as semconv
from agentrt.tracing._analysis import (
    RunSummary,
    assign_lanes,
    children_of,
    critical_path,
    summarize,
)
from agentrt.tracing._cost import Budget, Cost, Reservation, price, register_price
from agentrt.tracing._energy import (
    CPU_TDP_TABLE,
    JOULES_PER_OUTPUT_TOKEN,
    MEMORY_WATTS_PER_GB,
    CpuPower,
    Energy,
    EnergyMeter,
    Nvml,
    Rapl,
    cgroup_cpu_seconds,
    cpu_power,
    energy_for_cpu_seconds,
    energy_for_tokens,
    node_cpu_seconds,
    process_cpu_seconds,
)
from agentrt.tracing._export import (
    DEFAULT_OTLP_ENDPOINT,
    export_otlp,
    to_chrome,
    to_jsonl,
    to_otlp_json,
    to_otlp_protobuf,
)
from agentrt.tracing._semconv import QUEUE_WAIT_SECONDS
from agentrt.tracing._span import (
    Span,
    SpanRecord,
    Tracer,
    current_span,
    monotonic_to_ns,
)
from agentrt.tracing._store import TraceStore, default_store_path

__all__ = [
    "CPU_TDP_TABLE", "DEFAULT_OTLP_ENDPOINT", "JOULES_PER_OUTPUT_TOKEN", "MEMORY_WATTS_PER_GB",
    "QUEUE_WAIT_SECONDS", "Budget", "Cost", "CpuPower", "Energy", "EnergyMeter", "Nvml", "Rapl", "Reservation",
    "RunSummary", "Span", "SpanRecord", "TraceStore", "Tracer", "assign_lanes", "cgroup_cpu_seconds",
    "children_of", "cpu_power", "critical_path", "current_span", "default_store_path", "energy_for_cpu_seconds",
    "energy_for_tokens", "export_otlp", "get_store", "get_tracer", "monotonic_to_ns", "node_cpu_seconds",
    "plot_timeline", "price", "process_cpu_seconds", "record_tool_result", "register_price", "semconv",
    "set_tracer", "summarize", "to_chrome", "to_jsonl", "to_otlp_json", "to_otlp_protobuf",
]

_lock = threading.Lock()
_store: TraceStore | None = None
_tracer: Tracer | None = None


def get_store() -> TraceStore:
    """The process-wide trace store at `default_store_path()` (created on first use)."""
    global _store
    with _lock:
        if _store is None:
            _store = TraceStore()
        return _store


def get_tracer() -> Tracer:
    """The process-wide tracer (writes to `get_store()` unless replaced with `set_tracer`)."""
    global _tracer
    if _tracer is None:
        store = get_store()
        with _lock:
            if _tracer is None:
                _tracer = store.tracer()
    return _tracer


def set_tracer(tracer: Tracer | None) -> None:
    """Replace the process-wide tracer (e.g. ``Tracer(None)`` to turn tracing off; None resets)."""
    global _tracer
    with _lock:
        _tracer = tracer


def record_tool_result(span: Span, usage: Any, *, ok: bool = True, error_kind: Any = None,
                       end_ns: int | None = None) -> None:
    """Copy a `ToolUsage` (duck-typed: wall_seconds, cpu_seconds, memory_peak_bytes, exit_status,
    oom_killed, timed_out, plus its scalar extra fields as ``agentrt.usage.<name>``, e.g. the
    eBPF counters and admission-control decisions) onto a tool span, add its ``estimated:cpu-tdp`` energy when CPU seconds
    are known and no energy was recorded, and end the span."""
    a = span.attributes
    cpu = getattr(usage, "cpu_seconds", None)
    mem = getattr(usage, "memory_peak_bytes", None)
    wall = float(getattr(usage, "wall_seconds", 0.0) or 0.0)
    a[semconv.WALL_SECONDS] = wall
    if cpu is not None:
        a[semconv.CPU_SECONDS] = float(cpu)
    if mem is not None:
        a[semconv.MEMORY_PEAK_BYTES] = int(mem)
    if getattr(usage, "exit_status", None) is not None:
        a[semconv.EXIT_STATUS] = int(usage.exit_status)
    if getattr(usage, "oom_killed", False):
        a[semconv.OOM_KILLED] = True
    if getattr(usage, "timed_out", False):
        a[semconv.TIMED_OUT] = True
    # what the sandbox, admission control and eBPF add (ToolUsage extras): agentrt.usage.<name>
    for key, value in (getattr(usage, "model_extra", None) or {}).items():
        if isinstance(value, (bool, int, float, str)):
            a[f"agentrt.usage.{key}"] = value
    if cpu is not None and semconv.ENERGY_JOULES not in a:
        e = energy_for_cpu_seconds(float(cpu), memory_bytes=int(mem or 0), wall_seconds=wall)
        span.record_energy(e.joules, e.method)
    if not ok:
        span.status = "error"
        a[semconv.ERROR_TYPE] = str(getattr(error_kind, "value", error_kind) or "tool_error")
    span.end(end_ns)


def plot_timeline(*args: Any, **kwargs: Any) -> Any:
    """See `agentrt.tracing._plot.plot_timeline` (imports matplotlib only when called)."""
    from agentrt.tracing._plot import plot_timeline as _plot

    return _plot(*args, **kwargs)
