"""A matplotlib Gantt chart of a run: one row per LLM call / tool call, the critical path outlined.

Needs matplotlib (extra ``[trace]``); uses the non-interactive Agg backend.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

from agentrt.tracing import _semconv as sc
from agentrt.tracing._analysis import critical_path
from agentrt.tracing._span import SpanRecord

__all__ = ["plot_timeline"]

_COLORS = {sc.CHAT: "#4C72B0", sc.TEXT_COMPLETION: "#4C72B0", sc.PLAN: "#8172B2", sc.EXECUTE_TOOL: "#55A868",
           sc.SANDBOX_EXEC: "#64B5CD", sc.SEARCH_MEMORY: "#CCB974", sc.CREATE_MEMORY: "#CCB974"}


def plot_timeline(spans: Sequence[SpanRecord], path: str | Path, *, title: str | None = None) -> Path:
    """Draw the run's work spans (root's children and tool calls) as a Gantt chart into ``path``.

    Bars: x = seconds from the run's start, one row per span in start order, coloured by
    operation; critical-path bars are outlined in red and joined by a red line; task dependencies
    are grey arrows. The format follows the suffix (``.png``, ``.svg``, ``.pdf``).

    Raises:
        ModuleNotFoundError: matplotlib is not installed (the message names the extra).
        ValueError: no spans.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(f"trace plot needs matplotlib ({exc}); install it with: "
                                  "pip install 'agentrt[trace]'") from None
    if not spans:
        raise ValueError("no spans to plot")
    roots = [s for s in spans if s.parent_id is None]
    root = min(roots, key=lambda s: s.start_ns) if roots else None
    t0 = root.start_ns if root else min(s.start_ns for s in spans)
    rid = root.span_id if root else None
    work = sorted((s for s in spans if s.span_id != rid and (s.parent_id == rid or s.operation == sc.EXECUTE_TOOL)),
                  key=lambda s: (s.start_ns, s.name))
    if not work:
        work = sorted(spans, key=lambda s: s.start_ns)
    crit = [s.span_id for s in critical_path(spans)]
    crit_set = set(crit)
    row = {s.span_id: i for i, s in enumerate(work)}
    by_id = {s.span_id: s for s in work}
    fig_h = max(2.5, 0.35 * len(work) + 1.5)
    fig, ax = plt.subplots(figsize=(12, fig_h))
    for s in work:
        x = (s.start_ns - t0) / 1e9
        w = max((s.end_ns - s.start_ns) / 1e9, 1e-4)
        color = _COLORS.get(s.operation, "#999999")
        on = s.span_id in crit_set
        ax.barh(row[s.span_id], w, left=x, height=0.6, color=color, alpha=0.9 if on else 0.6,
                edgecolor="#D62728" if on else "none", linewidth=2.0 if on else 0)
        text = f" {w:.2f}s"
        tokens = s.attributes.get(sc.USAGE_OUTPUT_TOKENS)
        if tokens is not None:
            text += f"  {s.attributes.get(sc.USAGE_INPUT_TOKENS, 0)}+{tokens} tok"
        ax.text(x + w, row[s.span_id], text, va="center", fontsize=7)
        ax.set_yticks(range(len(work)))
    ax.set_yticklabels([(s.name if len(s.name) <= 40 else s.name[:37] + "...") for s in work], fontsize=8)
    by_task = {s.attributes[sc.TASK_ID]: s for s in work if isinstance(s.attributes.get(sc.TASK_ID), int)}
    for s in by_task.values():
        for d in s.attributes.get(sc.TASK_DEPS) or ():
            src = by_task.get(d)
            if src is not None:
                ax.annotate("", xy=((s.start_ns - t0) / 1e9, row[s.span_id]),
                            xytext=((src.end_ns - t0) / 1e9, row[src.span_id]),
                            arrowprops={"arrowstyle": "->", "color": "#777777", "lw": 0.8})
    chain = [by_id[c] for c in crit if c in row]
    for a, b in itertools.pairwise(chain):  # the hand-over from one critical span to the next
        ax.plot([(a.end_ns - t0) / 1e9, (b.start_ns - t0) / 1e9], [row[a.span_id], row[b.span_id]],
                color="#D62728", lw=1.2, ls="--")
    ax.invert_yaxis()
    ax.set_xlabel("seconds since run start")
    ax.grid(axis="x", alpha=0.3)
    ops = sorted({s.operation for s in work})
    handles = [Patch(color=_COLORS.get(o, "#999999"), label=o or "span") for o in ops]
    handles.append(Patch(facecolor="white", edgecolor="#D62728", linewidth=2, label="critical path"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.set_title(title or (f"run {spans[0].run_id[:12]}: " + (root.name if root else "")), fontsize=10)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
