"""The `agentrt` command line (typer + rich)."""

from agentrt.cli._app import app, main

__all__ = ["app", "main"]
