"""The root `agentrt` typer application; sub-commands register themselves here."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="agentrt",
    help="agentrt: an agent runtime that plans tool calls as a DAG and runs them in parallel under limits.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


def main() -> None:
    """Console-script entry point: runtime errors are printed as one line, not a traceback."""
    from rich.console import Console

    from agentrt.errors import AgentrtError

    try:
        app()
    except AgentrtError as exc:
        Console(stderr=True).print(f"[red]error:[/] {type(exc).__name__}: {exc}", highlight=False)
        raise SystemExit(1) from None
