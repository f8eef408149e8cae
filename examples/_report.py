"""Printing a finished run for the examples: the plan with each call's timing, usage, and the trace."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()


def print_run(result: Any) -> None:
    """Show a `RunResult`: answer, the plan's calls (parallel ones overlap in time), usage and the
    trace summary written for the run."""
    table = Table(title="plan", show_lines=False)
    for col in ("#", "call", "ok", "wall s", "result"):
        table.add_column(col, overflow="fold")
    for task in result.plan:
        r = result.results.get(task.id)
        ok = "-" if r is None else ("yes" if r.ok else (r.error_kind or "no"))
        wall = f"{r.usage.wall_seconds:.2f}" if r is not None else ""
        table.add_row(str(task.id), task.render().split(". ", 1)[-1][:70], ok, wall,
                      r.describe(60).replace("\n", " ") if r is not None else "")
    console.print(table)
    style = "yellow" if result.partial else "bold green"
    console.print(f"[{style}]answer:[/] {result.answer}" + (f"  [yellow](partial: {result.reason})[/]"
                                                             if result.partial else ""))
    u = result.usage
    path, path_s = result.critical_path
    console.print(
        f"[dim]{result.llm_calls} LLM calls, {u.input_tokens} tokens in ({u.cached_tokens} cached), "
        f"{u.output_tokens} out; {result.tool_calls} tool calls in {result.rounds} round(s); "
        f"wall {result.wall_seconds:.2f} s, first call at {result.first_dispatch_seconds or 0:.2f} s; "
        f"critical path {' -> '.join(map(str, path)) or '-'} ({path_s:.2f} s)[/]"
    )
    if result.trace_id:
        print_trace(result.trace_id)


def print_trace(trace_id: str) -> None:
    """The run's trace summary from the local trace store: spans, energy, parallel efficiency."""
    from agentrt.tracing import get_store

    store = get_store()
    store.flush()
    short = trace_id[:12]
    try:
        run = store.run(trace_id)
    except KeyError:
        console.print(f"[dim]trace {short}: not in the store yet[/]")
        return
    energy = f"{run.energy_j:.1f} J ({run.energy_method})" if run.energy_j is not None else "unknown"
    cost = "unknown" if run.cost_usd is None else f"{run.cost_usd:.6f} USD"
    eff = f"{run.parallel_efficiency:.2f}" if run.parallel_efficiency is not None else "-"
    console.print(f"[dim]trace {short}: {run.span_count} spans, {run.llm_calls} LLM calls, "
                  f"{run.tool_calls} tool calls; energy {energy}; cost {cost}; "
                  f"tool calls in flight on average {eff}; critical path {run.critical_path_s:.2f} s\n"
                  f"  agentrt trace show {short}   |   agentrt trace plot {short} -o timeline.png[/]")
