"""An MCP server over the Python standard library, for `mcp_agent.py` (or any MCP client).

Tools: ``module_summary(module)`` (the first line of a module's docstring) and
``module_lines(module)`` (lines of its source file). Both read only, no network. Serves stdio::

    python examples/mcp_server.py
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from mcp.server import MCPServer
from mcp.types import ToolAnnotations

server = MCPServer("stdlib-info", instructions="Facts about Python standard library modules.")
READ_ONLY = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)


def _source(module: str) -> Path:
    name = module.strip().strip("'\"")
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        raise ValueError(f"no Python source for module {name!r}")
    return Path(spec.origin)


@server.tool(annotations=READ_ONLY)
def module_lines(module: str) -> int:
    """Number of lines in a standard library module's source file, e.g. "json.decoder"."""
    with _source(module).open("rb") as f:
        return sum(1 for _ in f)


@server.tool(annotations=READ_ONLY)
def module_summary(module: str) -> str:
    """The first line of a standard library module's docstring, e.g. for "difflib"."""
    import ast

    doc = ast.get_docstring(ast.parse(_source(module).read_text(encoding="utf-8")))
    return (doc or "(no docstring)").strip().splitlines()[0]


if __name__ == "__main__":
    server.run("stdio")
