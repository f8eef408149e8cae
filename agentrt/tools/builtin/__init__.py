"""Built-in tools: a safe calculator, file tools bound to root directories, SQLite, ``http_get``
to allow-listed hosts (in-process); ``python`` and ``shell`` (``runs_in="sandbox"``: only a sandbox executor backend runs them).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from agentrt.tools import Tool
from agentrt.tools.builtin._calculator import calculator, evaluate, normalize_expression
from agentrt.tools.builtin._exec import python, shell
from agentrt.tools.builtin._files import file_tools
from agentrt.tools.builtin._http import http_get_tool
from agentrt.tools.builtin._sqlite import describe_schema, sqlite_schema_tool, sqlite_tool, sqlite_tools

__all__ = [
    "builtin_tools",
    "calculator",
    "describe_schema",
    "evaluate",
    "file_tools",
    "http_get_tool",
    "normalize_expression",
    "python",
    "shell",
    "sqlite_schema_tool",
    "sqlite_tool",
    "sqlite_tools",
]


def builtin_tools(roots: Iterable[str | os.PathLike[str]] | None = None,
                  db: str | os.PathLike[str] | None = None) -> list[Tool]:
    """The built-in tools: ``calculator``; with ``roots``, ``read_file``, ``list_dir`` and ``grep``
    restricted to them; with ``db``, read-only ``sqlite_query`` and ``sqlite_schema`` on it.

    Raises:
        ToolError: a root is not a directory, or the database does not exist.
    """
    tools = [calculator]
    if roots is not None:
        tools += file_tools(roots)
    if db is not None:
        tools += sqlite_tools(db)
    return tools
