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
    trace_id = getattr(result, "trace_id", None)
    if trace_id:
        summary = getattr(result, "trace_summary", None)
        if summary:
            console.print(f"[dim]trace: {summary}[/]")
        console.print(f"[dim]details: agentrt trace show {trace_id[:12]}   "
                      f"timeline: agentrt trace plot {trace_id[:12]} -o timeline.png[/]")
