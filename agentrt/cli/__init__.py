"""The `agentrt` command line (typer + rich)."""

from agentrt.cli._app import app, main
from agentrt.cli import _bench, _chat, _doctor, _engine, _memory, _run, _sandbox, _sleep, _trace  # noqa: F401,E402  (registration)

__all__ = ["app", "main"]
