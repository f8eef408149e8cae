"""`agentrt run`: answer a question with a live view of the plan and its tasks."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import typer
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from agentrt.cli._app import app
from agentrt.errors import AgentrtError, UsageLimitExceeded
from agentrt.planner import PlanExample

console = Console(stderr=False)

#: The worked example given to the planner with the built-in tools.
BUILTIN_EXAMPLE = PlanExample(
    question="What is 12 times 7, plus 15% of 300?",
    plan='1. calculator(expression="12 * 7")\n2. calculator(expression="300 * 0.15")\n'
         '3. calculator(expression="$1 + $2")\n4. join()',
)


def load_tools_file(path: Path) -> tuple[list[Any], list[Any]]:
    """Import a Python file and return its tools (``TOOLS`` or ``tools()``) and ``PLAN_EXAMPLES``.

    Raises:
        typer.BadParameter: the file is missing or defines no tools.
    """
    from agentrt.tools import Tool

    if not path.is_file():
        raise typer.BadParameter(f"not a file: {path}")
    spec = importlib.util.spec_from_file_location(f"agentrt_user_tools_{path.stem}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        tools = getattr(module, "TOOLS", None)
        if tools is None and callable(getattr(module, "tools", None)):
            tools = module.tools()
    except Exception as exc:  # the user's file is at fault: say where, not a traceback of ours
        raise typer.BadParameter(f"cannot load tools from {path}: {type(exc).__name__}: {exc}") from None
    if tools is None:
        raise typer.BadParameter(f"{path} defines neither TOOLS nor tools()")
    tools = list(tools)
    if not tools:
        raise typer.BadParameter(f"{path} defines no tools (TOOLS is empty)")
    bad = [repr(t)[:40] for t in tools if not isinstance(t, Tool)]
    if bad:
        raise typer.BadParameter(f"{path}: TOOLS must hold Tool objects (made with @tool); got {', '.join(bad)}")
    return tools, list(getattr(module, "PLAN_EXAMPLES", []))


class LiveView:
    """Keeps the state of every task from run events and renders it as a rich table."""

    def __init__(self) -> None:
        self.rows: dict[int, dict[str, Any]] = {}
        self.notes: list[str] = []
        self.answer = ""
        self.t0 = time.perf_counter()
        self.live = True  # False once the run ended: no "planning..." line in the final render

    def on_event(self, ev: Any) -> None:
        kind = type(ev).__name__
        now = time.perf_counter() - self.t0
        task = getattr(ev, "task", None)
        if kind == "TaskAdded":
            self.rows[task.id] = {"task": task, "state": "waiting", "added": now}
        elif kind == "TaskStarted" and task is not None and task.id in self.rows:
            self.rows[task.id].update(state="running", start=now)
        elif kind in ("TaskFinished", "TaskSkipped") and task is not None and task.id in self.rows:
            result = getattr(ev, "result", None)
            ok = bool(result is not None and result.ok)
            self.rows[task.id].update(state="done" if ok else ("skipped" if kind == "TaskSkipped" else "failed"),
                                      end=now, result=result)
        elif kind == "AnswerDelta":
            self.answer += ev.text
        elif kind == "PlanIssueSeen":
            self.notes.append(f"[yellow]plan issue:[/] {escape(ev.issue.message)}")
        elif kind == "JoinDecision":
            if ev.action == "replan":
                self.notes.append(f"[magenta]replan:[/] {escape(ev.thought)}")
        elif kind == "RoundStarted" and ev.round > 1:
            self.notes.append(f"[magenta]round {ev.round}[/]")

    def render(self) -> Group:
        notes = [Text.from_markup(n) for n in self.notes]
        answer = [Text.assemble(("answer: ", "bold green"), self.answer)] if self.answer else []
        if not self.rows:  # nothing planned yet (or the model never answered): no empty table
            waiting = [Text("planning...", style="dim")] if self.live else []
            return Group(*waiting, *notes, *answer)
        table = Table(title="plan", expand=False, show_lines=False)
        for col in ("#", "call", "state", "start s", "wall s", "result"):
            table.add_column(col, overflow="fold")
        colors = {"waiting": "dim", "running": "cyan", "done": "green", "failed": "red", "skipped": "yellow"}
        for tid in sorted(self.rows):
            row = self.rows[tid]
            task = row["task"]
            result = row.get("result")
            preview = ""
            if result is not None:
                preview = result.describe(80).replace("\n", " ")
            start = f"{row['start']:.2f}" if "start" in row else ""
            wall = f"{row['end'] - row['start']:.2f}" if "end" in row and "start" in row else ""
            call = task.render().split(". ", 1)[-1]
            table.add_row(str(tid), call[:70], Text(row["state"], style=colors[row["state"]]), start, wall, preview)
        return Group(table, *notes, *answer)


def _first_agentrt_error(exc: BaseException) -> AgentrtError | None:
    """The runtime error inside ``exc`` (task groups wrap errors in exception groups)."""
    if isinstance(exc, AgentrtError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _first_agentrt_error(inner)
            if found is not None:
                return found
    return None


@app.command()
def run(
    question: str = typer.Argument(..., help="The question to answer."),
    tools_from: Path | None = typer.Option(None, "--tools-from", help="Python file defining TOOLS (and PLAN_EXAMPLES)."),
    tool_names: list[str] = typer.Option([], "--tools", help="Use only these tools (repeatable)."),
    model: str | None = typer.Option(None, help="Model name at the endpoint."),
    base_url: str | None = typer.Option(None, "--base-url", help="OpenAI-compatible endpoint; default: the local engine."),
    max_rounds: int = typer.Option(3, min=1, help="Plan/join rounds before a partial answer."),
    plan_format: str = typer.Option("text", "--plan-format",
                                    help="How the plan is written: text, json, or parallel (an outline of tool "
                                         "names, then every task's arguments decoded at once; llama.cpp servers "
                                         "only, elsewhere text is used and a warning says why)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON instead of the live view."),
    max_tokens: int | None = typer.Option(None, "--max-tokens", min=0, help="Stop after this many LLM tokens (in + out)."),
    max_tool_calls: int | None = typer.Option(None, "--max-tool-calls", min=0, help="Stop before exceeding this many tool calls."),
    max_seconds: float | None = typer.Option(None, "--max-seconds", min=0.001, help="Stop after this many seconds."),
    max_cost: float | None = typer.Option(None, "--max-cost", min=0, help="Stop above this cost in USD (priced models)."),
    sandbox: str = typer.Option("auto", help="Where tool calls run: auto (the namespace sandbox where it works), "
                                             "namespace, docker, or none."),
    sandbox_all: bool = typer.Option(False, "--sandbox-all", help="Run in-process tools in the sandbox too."),
    memory: bool = typer.Option(True, "--memory/--no-memory",
                                help="Remember this run in the episodic memory and show the planner a close past one."),
    executor: str = typer.Option("local", help="Where tool calls are executed: local (this process), or ray "
                                              "(each call a Ray task; its sandbox runs on the worker)."),
    address: str | None = typer.Option(None, "--address", help="Ray cluster for --executor ray: auto, host:port "
                                                               "or ray://host:10001; default: a local Ray for this run."),
) -> None:
    """Answer QUESTION: plan tool calls as a DAG, run them in parallel, join the results.

    Exit status: 0 with a full answer, 3 with a partial one, 4 when a usage limit stopped the run
    (what it had is printed), 1 on an error.
    """
    if not question.strip():
        raise typer.BadParameter("the question is empty")
    if plan_format not in ("text", "json", "parallel"):
        raise typer.BadParameter(f"--plan-format must be text, json or parallel, not {plan_format!r}")
    if sandbox not in ("auto", "namespace", "docker", "none"):
        raise typer.BadParameter(f"--sandbox must be auto, namespace, docker or none, not {sandbox!r}")
    if executor not in ("local", "ray"):
        raise typer.BadParameter(f"--executor must be local or ray, not {executor!r}")
    backend: Any = sandbox
    if executor == "ray":
        from agentrt.errors import ExecutorUnavailable
        from agentrt.executor import ray_backend

        try:
            backend = ray_backend(address, sandbox="namespace" if sandbox == "auto" else sandbox,
                                  sandbox_all=sandbox_all)
        except ExecutorUnavailable as exc:
            raise typer.BadParameter(str(exc)) from None
    elif address is not None:
        raise typer.BadParameter("--address needs --executor ray")
    from agentrt import Agent, UsageLimits
    from agentrt.config import get_settings
    from agentrt.tools.builtin import builtin_tools

    if tools_from is not None:
        tools, examples = load_tools_file(tools_from)
    else:
        tools, examples = builtin_tools(roots=[Path.cwd()]), [BUILTIN_EXAMPLE]
        if sandbox != "none":  # code and commands only where they run confined
            from agentrt.tools.builtin import python, shell

            tools += [python, shell]
    if tool_names:
        wanted = set(tool_names)
        unknown = wanted - {t.name for t in tools}
        if unknown:
            raise typer.BadParameter(f"unknown tools {sorted(unknown)}; available: {[t.name for t in tools]}")
        tools = [t for t in tools if t.name in wanted]
    settings = get_settings(model=model, base_url=base_url)
    view = LiveView()
    limits = UsageLimits(max_total_tokens=max_tokens, max_tool_calls=max_tool_calls,
                         max_wall_seconds=max_seconds, max_cost_usd=max_cost)

    async def go() -> Any:
        agent = Agent(tools=tools, examples=examples, max_rounds=max_rounds, settings=settings,
                      on_event=view.on_event, usage_limits=limits, sandbox=backend, sandbox_all=sandbox_all,
                      memory=memory, plan_format=plan_format)
        try:
            if as_json:
                return await agent.run(question)
            with console.status("starting the model...", spinner="dots"):
                await agent._ensure_model()
            view.t0 = time.perf_counter()
            with Live(view.render(), console=console, refresh_per_second=8) as live:
                async def refresh() -> None:
                    while True:
                        live.update(view.render())
                        await anyio.sleep(0.125)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(refresh)
                    try:
                        result = await agent.run(question)
                    finally:
                        tg.cancel_scope.cancel()
                        view.answer = ""  # printed below with the run's figures
                        view.live = False
                        live.update(view.render())
            return result
        finally:
            await agent.aclose()

    stopped: UsageLimitExceeded | None = None
    try:
        result = anyio.run(go)
    except (AgentrtError, BaseExceptionGroup) as exc:
        err = _first_agentrt_error(exc)
        if err is None:
            raise
        if not isinstance(err, UsageLimitExceeded) or err.partial is None:
            # rich's Live leaves the cursor after its last line when an error ends it
            console.print(f"{'' if as_json or not view.rows else chr(10)}[red]error:[/] {type(err).__name__}: {escape(str(err))}")
            raise typer.Exit(1) from None
        stopped, result = err, err.partial
    _report(result, as_json)
    if stopped is not None:
        if not as_json:
            console.print(f"[red]stopped:[/] {escape(str(stopped))}")
        raise typer.Exit(4)
    if result.partial:
        raise typer.Exit(3)


def _report(result: Any, as_json: bool) -> None:
    if as_json:
        out = {
            "answer": result.answer, "partial": result.partial, "reason": result.reason,
            "plan": [t.render() for t in result.plan],
            "results": {str(k): v.model_dump(mode="json") for k, v in result.results.items()},
            "usage": result.usage.model_dump(), "llm_calls": result.llm_calls,
            "wall_seconds": result.wall_seconds, "first_dispatch_seconds": result.first_dispatch_seconds,
            "critical_path": {"tasks": result.critical_path[0], "seconds": result.critical_path[1]},
            "rounds": result.rounds, "issues": result.issues, "cost_usd": result.cost_usd,
            "trace_id": result.trace_id,
        }
        console.print_json(json.dumps(out, default=str))
        return
    style = "yellow" if result.partial else "bold green"
    answer = escape(result.answer) if result.answer else "[dim](none: the run ended before an answer was written)[/]"
    console.print(f"\n[{style}]{'partial answer' if result.partial else 'answer'}:[/] {answer}")
    if result.partial:
        console.print(f"[yellow]partial:[/] {escape(result.reason or '')}")
    u = result.usage
    path, path_s = result.critical_path
    console.print(
        f"[dim]tokens: {u.input_tokens} in ({u.cached_tokens} cached), {u.output_tokens} out; "
        f"{result.llm_calls} LLM calls; {len(result.plan)} tasks in {result.rounds} round(s)\n"
        f"wall: {result.wall_seconds:.2f} s; first dispatch at {result.first_dispatch_seconds or 0:.2f} s; "
        f"critical path: {' -> '.join(map(str, path)) or '-'} ({path_s:.2f} s of tool time); "
        f"cost: {_cost_text(result.cost_usd)}[/]"
    )
    if result.trace_id:
        short = result.trace_id[:12]
        console.print(f"[dim]trace {short}: agentrt trace show {short}  |  agentrt trace plot {short} -o timeline.png[/]")


def _cost_text(cost: float | None) -> str:
    if cost is None:
        return "unknown (no price for this model)"
    return "0 USD (local model)" if cost == 0 else f"{cost:.6f} USD"
