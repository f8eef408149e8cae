"""`agentrt trace ls|show|diff|export|plot|tail|cost`: read the local trace store."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import re
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from agentrt.cli._app import app
from agentrt.tracing import (
    DEFAULT_OTLP_ENDPOINT,
    RunSummary,
    SpanRecord,
    TraceStore,
    children_of,
    default_store_path,
    export_otlp,
    to_chrome,
    to_jsonl,
    to_otlp_json,
)
from agentrt.tracing import semconv as sc

trace_app = typer.Typer(help="Runs recorded in the local trace store: time, tokens, cost, energy.",
                        no_args_is_help=True)
app.add_typer(trace_app, name="trace")

console = Console()
err_console = Console(stderr=True)

_STORE_OPT = typer.Option(None, "--store", help="Trace store file (default: <data dir>/traces.sqlite).")
_OP_STYLE = {sc.CHAT: "blue", sc.TEXT_COMPLETION: "blue", sc.PLAN: "magenta", sc.EXECUTE_TOOL: "green",
             sc.INVOKE_AGENT: "white", sc.SANDBOX_EXEC: "cyan"}


def _store(path: Path | None) -> TraceStore:
    p = path or default_store_path()
    if not p.exists():
        err_console.print(f"[yellow]no trace store at {p} yet: run something first (agentrt run ...)[/]")
        raise typer.Exit(1)
    return TraceStore(p)


def _resolve(store: TraceStore, ref: str) -> str:
    try:
        return store.resolve(ref)
    except KeyError as exc:
        err_console.print(f"[red]error:[/] {escape(str(exc.args[0]))}")
        raise typer.Exit(1) from None


def _usd(x: float | None) -> str:
    if x is None:
        return "?"
    return f"${x:.4f}" if x >= 0.01 or x == 0 else f"${x:.6f}"


def _energy(j: float | None, method: str | None) -> str:
    if j is None:
        return "-"
    mark = "" if method == "measured" else "≈"
    return f"{mark}{j / 3600:.3f} Wh" if j >= 36 else f"{mark}{j:.2f} J"


def _secs(x: float | None) -> str:
    if x is None:
        return "running"
    return f"{x:.2f}s" if x < 100 else f"{x / 60:.1f}m"


def _when(ns: int) -> str:
    return _dt.datetime.fromtimestamp(ns / 1e9).strftime("%Y-%m-%d %H:%M:%S")


def _since(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if m:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
        return time.time_ns() - int(float(m.group(1)) * unit * 1e9)
    try:
        return int(_dt.datetime.fromisoformat(text).timestamp() * 1e9)
    except ValueError:
        raise typer.BadParameter(f"--since takes a duration like 7d, 12h, 30m or an ISO date, not {text!r}") from None


def _summary_dict(s: RunSummary) -> dict[str, Any]:
    d = dataclasses.asdict(s)
    d["wall_s"] = s.wall_s
    return d


@trace_app.command("ls")
def ls(limit: int = typer.Option(20, "--limit", "-n", help="How many runs, newest first."),
       as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
       store_path: Path | None = _STORE_OPT) -> None:
    """Recent runs with wall time, tokens, cost, energy and parallel efficiency."""
    store = _store(store_path)
    runs = store.runs(limit=limit)
    if as_json:
        console.print_json(json.dumps([_summary_dict(r) for r in runs], default=str))
        return
    # Narrow terminals (< 150 columns) get fewer, shorter columns that stay readable (status as
    # the run id's colour, LLM/tool calls in one column, the start time as HH:MM, or MM-DD when
    # not today) instead of every column squeezed to an ellipsis.
    wide = console.width >= 150  # the wide table needs ~134 columns besides the question
    t = Table(title=f"runs in {store.path} ({store.count_runs()} in all)", title_justify="left")
    if wide:
        cols = ["run", "started", "question", "status", "wall", "LLM", "tools", "tokens in/cached/out", "cost",
                "energy", "par.eff"]
    else:
        cols = ["run", "start", "question", "wall", "calls", "tokens", "cost"]
    for col in cols:
        t.add_column(col, justify="left" if col in ("run", "started", "start", "question", "status") else "right",
                     no_wrap=True, overflow="ellipsis",
                     max_width=(min(60, console.width - 134) if wide else max(10, console.width - 63)) if col == "question" else None)
    colour = {"ok": "green", "error": "red"}
    today = _dt.date.today().strftime("%Y-%m-%d")
    for r in runs:
        label = Text((r.question or r.name or "(running)")[:60])
        tokens = f"{r.input_tokens}/{r.cached_tokens}/{r.output_tokens}"
        if wide:
            t.add_row(r.run_id[:12], _when(r.started_ns), label, Text(r.status, colour.get(r.status, "yellow")),
                      _secs(r.wall_s), str(r.llm_calls), str(r.tool_calls), tokens, _usd(r.cost_usd),
                      _energy(r.energy_j, r.energy_method),
                      "-" if r.parallel_efficiency is None else f"{r.parallel_efficiency:.2f}")
        else:
            when = _when(r.started_ns)
            t.add_row(Text(r.run_id[:8], colour.get(r.status, "yellow")), when[11:16] if when[:10] == today else when[5:10],
                      label, _secs(r.wall_s), f"{r.llm_calls}/{r.tool_calls}", tokens, _usd(r.cost_usd))
    console.print(t)
    if wide:
        console.print("[dim]≈ estimated energy; par.eff = tool-call seconds / wall seconds[/]")
    else:
        console.print("[dim]run id: [green]ok[/] [red]error[/] [yellow]running[/]; calls: LLM/tool; tokens: "
                      "in/cached/out; energy and parallel efficiency: 150+ columns, or --json[/]")


def _span_label(s: SpanRecord, crit: set[str]) -> Text:
    a = s.attributes
    parts = [f"{s.duration_s:.3f}s"]
    if sc.USAGE_INPUT_TOKENS in a:
        parts.append(f"{a.get(sc.USAGE_INPUT_TOKENS)}+{a.get(sc.USAGE_OUTPUT_TOKENS, 0)} tok")
    if sc.COST_USD in a:
        parts.append(_usd(float(a[sc.COST_USD])))
    if sc.ENERGY_JOULES in a:
        parts.append(_energy(float(a[sc.ENERGY_JOULES]), a.get(sc.ENERGY_METHOD)))
    if sc.CPU_SECONDS in a:
        parts.append(f"cpu {float(a[sc.CPU_SECONDS]):.2f}s")
    style = _OP_STYLE.get(s.operation, "white")
    label = Text()
    if s.span_id in crit:
        label.append("★ ", style="bold red")
    label.append(s.name, style=f"bold {style}" if s.span_id in crit else style)
    label.append("  " + "  ".join(parts), style="dim")
    if s.status == "error":
        label.append(f"  error: {a.get(sc.ERROR_TYPE, '')}", style="red")
    return label


@trace_app.command("show")
def show(run: str = typer.Argument("last", help="Run id, unique prefix, or 'last'."),
         width: int = typer.Option(60, help="Width of the waterfall bars, characters."),
         store_path: Path | None = _STORE_OPT) -> None:
    """A run's span tree and a terminal waterfall with the critical path highlighted (★)."""
    store = _store(store_path)
    run_id = _resolve(store, run)
    s = store.run(run_id)
    spans = store.spans(run_id)
    crit = set(s.critical_path)
    console.print(f"[bold]run {run_id}[/]  {escape(s.name or '')}")
    if s.question:
        console.print(Text(f"  question: {s.question}"))
    console.print(f"  started {_when(s.started_ns)}  wall {_secs(s.wall_s)}  status {s.status}  "
                  f"LLM calls {s.llm_calls}  tool calls {s.tool_calls}  spans {s.span_count}")
    console.print(f"  tokens in {s.input_tokens} (cached {s.cached_tokens})  out {s.output_tokens} "
                  f"(reasoning {s.reasoning_tokens})  cost {_usd(s.cost_usd)}"
                  + (f" ({s.unpriced_calls} calls unpriced)" if s.unpriced_calls else "")
                  + f"  energy {_energy(s.energy_j, s.energy_method)} [{s.energy_method or 'none'}]")
    eff = "-" if s.parallel_efficiency is None else f"{s.parallel_efficiency:.2f}"
    console.print(f"  critical path {s.critical_path_s:.3f}s over {len(s.critical_path)} spans  "
                  f"parallel efficiency {eff}")
    if not spans:
        return
    kids = children_of(spans)
    roots = kids.get(None, [])
    tree = Tree(Text("spans", style="bold"))

    def add(node: Tree, span: SpanRecord) -> None:
        branch = node.add(_span_label(span, crit))
        for c in kids.get(span.span_id, []):
            add(branch, c)

    for r in roots:
        add(tree, r)
    console.print(tree)
    # waterfall: one row per span in tree order, bar placed by start offset
    t0 = min(x.start_ns for x in spans)
    total = max(max(x.end_ns for x in spans) - t0, 1)
    wf = Table(title="waterfall (★ critical path)", title_justify="left", show_edge=False, pad_edge=False)
    wf.add_column("span", no_wrap=True, max_width=44)
    wf.add_column(f"0 … {total / 1e9:.2f}s", no_wrap=True)
    wf.add_column("dur", justify="right")

    def rows(span: SpanRecord, depth: int) -> None:
        a = int((span.start_ns - t0) / total * width)
        b = max(a + 1, int((span.end_ns - t0) / total * width))
        on = span.span_id in crit
        style = ("bold red" if on else _OP_STYLE.get(span.operation, "white"))
        bar = Text(" " * a)
        bar.append("█" * (b - a), style=style)
        name = Text("  " * depth + ("★ " if on else "") + span.name, style="bold" if on else "")
        wf.add_row(name, bar, f"{span.duration_s:.3f}s")
        for c in kids.get(span.span_id, []):
            rows(c, depth + 1)

    for r in roots:
        rows(r, 0)
    console.print(wf)


def _by_name(spans: list[SpanRecord]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for s in spans:
        if s.parent_id is None:
            continue
        d = out.setdefault(s.name, {"n": 0, "s": 0.0, "tok": 0, "usd": 0.0, "j": 0.0})
        a = s.attributes
        d["n"] += 1
        d["s"] += s.duration_s
        d["tok"] += int(a.get(sc.USAGE_INPUT_TOKENS, 0)) + int(a.get(sc.USAGE_OUTPUT_TOKENS, 0))
        d["usd"] += float(a.get(sc.COST_USD, 0) or 0)
        d["j"] += float(a.get(sc.ENERGY_JOULES, 0) or 0)
    return out


def _delta(a: float | None, b: float | None, fmt: str) -> str:
    if a is None or b is None:
        return "?"
    text = format(b - a, fmt)
    if float(text) == 0:
        return format(0, fmt)
    return ("+" if b > a else "") + text


@trace_app.command("diff")
def diff(run_a: str = typer.Argument(..., help="First run (id, prefix or 'last')."),
         run_b: str = typer.Argument(..., help="Second run."),
         store_path: Path | None = _STORE_OPT) -> None:
    """Compare two runs: totals and, per span name, count, seconds, tokens, cost (B - A)."""
    store = _store(store_path)
    ida, idb = _resolve(store, run_a), _resolve(store, run_b)
    a, b = store.run(ida), store.run(idb)
    t = Table(title=f"A {ida[:12]}  vs  B {idb[:12]}", title_justify="left")
    for c in ("", "A", "B", "B - A"):
        t.add_column(c, justify="right" if c else "left")
    t.add_row("wall s", _secs(a.wall_s), _secs(b.wall_s), _delta(a.wall_s, b.wall_s, ".3f"))
    t.add_row("LLM calls", str(a.llm_calls), str(b.llm_calls), _delta(a.llm_calls, b.llm_calls, "d"))
    t.add_row("tool calls", str(a.tool_calls), str(b.tool_calls), _delta(a.tool_calls, b.tool_calls, "d"))
    t.add_row("input tokens", str(a.input_tokens), str(b.input_tokens), _delta(a.input_tokens, b.input_tokens, "d"))
    t.add_row("output tokens", str(a.output_tokens), str(b.output_tokens),
              _delta(a.output_tokens, b.output_tokens, "d"))
    t.add_row("cost USD", _usd(a.cost_usd), _usd(b.cost_usd), _delta(a.cost_usd, b.cost_usd, ".6f"))
    t.add_row("energy J", f"{a.energy_j or 0:.2f}", f"{b.energy_j or 0:.2f}", _delta(a.energy_j or 0, b.energy_j or 0, ".2f"))
    t.add_row("critical path s", f"{a.critical_path_s:.3f}", f"{b.critical_path_s:.3f}",
              _delta(a.critical_path_s, b.critical_path_s, ".3f"))
    console.print(t)
    na, nb = _by_name(store.spans(ida)), _by_name(store.spans(idb))
    per = Table(title="per span name (count, seconds, tokens, cost)", title_justify="left")
    for c in ("span", "n A", "n B", "s A", "s B", "Δ s", "Δ tokens", "Δ cost"):
        per.add_column(c, justify="left" if c == "span" else "right")
    zero = {"n": 0, "s": 0.0, "tok": 0, "usd": 0.0, "j": 0.0}
    for name in sorted(set(na) | set(nb), key=lambda k: -abs(nb.get(k, zero)["s"] - na.get(k, zero)["s"])):
        x, y = na.get(name, zero), nb.get(name, zero)
        per.add_row(Text(name), str(int(x["n"])), str(int(y["n"])), f"{x['s']:.3f}", f"{y['s']:.3f}",
                    _delta(x["s"], y["s"], ".3f"), _delta(x["tok"], y["tok"], ".0f"), _delta(x["usd"], y["usd"], ".6f"))
    console.print(per)


@trace_app.command("export")
def export(run: str = typer.Argument("last", help="Run id, unique prefix, or 'last'."),
           fmt: str = typer.Option("chrome", "--format", "-f", help="otlp | chrome | jsonl"),
           output: Path | None = typer.Option(None, "-o", "--output", help="Write to this file (otlp: OTLP/JSON file)."),
           endpoint: str | None = typer.Option(None, "--endpoint",
                                               help=f"otlp: POST to this OTLP/HTTP traces URL (e.g. {DEFAULT_OTLP_ENDPOINT})."),
           protocol: str | None = typer.Option(None, help="otlp: http/protobuf (default if installed) or http/json."),
           store_path: Path | None = _STORE_OPT) -> None:
    """Export a run as Chrome trace JSON (opens in ui.perfetto.dev), JSONL, or OTLP (file or HTTP)."""
    store = _store(store_path)
    run_id = _resolve(store, run)
    spans = store.spans(run_id)
    if fmt == "otlp":
        if endpoint is None and output is None:
            endpoint = DEFAULT_OTLP_ENDPOINT
        if endpoint is not None:
            try:
                n = export_otlp(spans, endpoint, protocol=protocol)  # type: ignore[arg-type]
            except (ConnectionError, ModuleNotFoundError, ValueError) as exc:
                err_console.print(f"[red]error:[/] {escape(str(exc))}")
                raise typer.Exit(1) from None
            err_console.print(f"sent {n} spans of run {run_id[:12]} to {endpoint}")
        if output is None:
            return
        text = json.dumps(to_otlp_json(spans))
    elif fmt == "chrome":
        text = json.dumps(to_chrome(spans))
    elif fmt == "jsonl":
        text = to_jsonl(spans, _summary_dict(store.run(run_id)))
    else:
        raise typer.BadParameter(f"--format must be otlp, chrome or jsonl, not {fmt!r}")
    if output is None:
        console.out(text, highlight=False)
    else:
        output.write_text(text)
        err_console.print(f"wrote {output} ({len(spans)} spans)")


@trace_app.command("plot")
def plot(run: str = typer.Argument("last", help="Run id, unique prefix, or 'last'."),
         output: Path = typer.Option(Path("timeline.png"), "-o", "--output", help="Image file (.png, .svg, .pdf)."),
         store_path: Path | None = _STORE_OPT) -> None:
    """A Gantt chart of the run's LLM and tool calls with the critical path (matplotlib)."""
    from agentrt.tracing import plot_timeline

    store = _store(store_path)
    run_id = _resolve(store, run)
    try:
        path = plot_timeline(store.spans(run_id), output)
    except (ModuleNotFoundError, ValueError) as exc:
        err_console.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(1) from None
    err_console.print(f"wrote {path}")


@trace_app.command("tail")
def tail(interval: float = typer.Option(0.5, help="Seconds between looks at the store."),
         duration: float | None = typer.Option(None, help="Stop after this many seconds (default: until Ctrl-C)."),
         since: str | None = typer.Option(None, help="Also show spans since this long ago (e.g. 5m)."),
         store_path: Path | None = _STORE_OPT) -> None:
    """Follow runs live: print each span as it is written, and each run's totals when it ends."""
    store = _store(store_path)
    cursor = _since(since) if since else time.time_ns()
    seen: set[tuple[str, str]] = set()
    end_at = None if duration is None else time.monotonic() + duration
    try:
        while end_at is None or time.monotonic() < end_at:
            new = [s for s in store.spans_since(cursor - 60_000_000_000) if (s.run_id, s.span_id) not in seen
                   and s.start_ns >= cursor]
            for s in sorted(new, key=lambda s: s.end_ns):
                seen.add((s.run_id, s.span_id))
                line = Text(f"{_when(s.end_ns)} {s.run_id[:8]} ", style="dim")
                line.append_text(_span_label(s, set()))
                console.print(line)
                if s.parent_id is None:
                    r = store.run(s.run_id)
                    console.print(f"[bold]run {s.run_id[:12]} ended[/] {r.status}: wall {_secs(r.wall_s)}, "
                                  f"{r.input_tokens + r.output_tokens} tokens, {_usd(r.cost_usd)}, "
                                  f"{_energy(r.energy_j, r.energy_method)}")
            time.sleep(interval)
    except KeyboardInterrupt:
        pass


@trace_app.command("cost")
def cost(since: str = typer.Option("7d", help="How far back: 7d, 12h, 30m, 2w, or an ISO date."),
         by: str = typer.Option("model", help="model | tool"),
         as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
         store_path: Path | None = _STORE_OPT) -> None:
    """Spending since a time, by model (LLM calls) or by tool (tool calls)."""
    if by not in ("model", "tool"):
        raise typer.BadParameter(f"--by must be model or tool, not {by!r}")
    store = _store(store_path)
    rows = store.cost_by(by, since_ns=_since(since))
    if as_json:
        console.print_json(json.dumps(rows))
        return
    t = Table(title=f"cost by {by} since {since}", title_justify="left")
    for c in (by, "calls", "tokens in", "tokens out", "seconds", "cost", "energy"):
        t.add_column(c, justify="left" if c == by else "right")
    total = 0.0
    for r in rows:
        total += r["cost_usd"] or 0.0
        t.add_row(Text(str(r["key"])), str(r["calls"]), str(r["input_tokens"] or "-"), str(r["output_tokens"] or "-"),
                  f"{r['seconds']:.2f}", _usd(r["cost_usd"]) if r["cost_usd"] is not None else "-",
                  _energy(r["energy_j"], None) if r["energy_j"] is not None else "-")
    console.print(t)
    console.print(f"total {_usd(total)}")
