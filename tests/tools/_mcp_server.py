"""A small MCP server for the tests: stdio by default, Streamable HTTP with ``--http PORT``."""

from __future__ import annotations

import sys

from mcp.server import MCPServer
from mcp.types import ToolAnnotations

server = MCPServer("agentrt-test")


@server.tool(annotations=ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False))
def word_count(text: str) -> int:
    """Count the words in a text."""
    return len(text.split())


@server.tool(name="file-size", annotations=ToolAnnotations(destructive_hint=False))
def file_size(path: str) -> int:
    """Size of a file in bytes."""
    import os

    return os.path.getsize(path)


@server.tool()
def fail(reason: str) -> str:
    """Always fails."""
    raise RuntimeError(f"failed on purpose: {reason}")


@server.tool()
def slow(seconds: float) -> str:
    """Sleep, then say so."""
    import time

    time.sleep(seconds)
    return "slept"


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--http":
        server.run("streamable-http", port=int(sys.argv[2]))
    else:
        server.run("stdio")
