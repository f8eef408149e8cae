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
    """Console-script entry point."""
    app()
