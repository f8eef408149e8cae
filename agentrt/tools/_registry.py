"""`ToolRegistry`: the set of tools a run may use, by (possibly dotted) name."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from agentrt.errors import DuplicateTool, ToolError, ToolNotFound
from agentrt.tools._tool import Tool

__all__ = ["ToolRegistry"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class ToolRegistry:
    """Tools by name. Names are identifiers joined by dots (``"db.query"``); duplicates are rejected."""

    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for t in tools:
            self.add(t)

    def add(self, tool: Tool, *, namespace: str | None = None) -> Tool:
        """Register ``tool`` (as ``namespace.name`` when a namespace is given).

        Raises:
            ToolError: the name is not dotted identifiers.
            DuplicateTool: a tool of that name exists.
        """
        if namespace:
            tool = tool.model_copy(update={"name": f"{namespace}.{tool.name}"})
            tool._args_model = tool._args_model  # private attrs survive model_copy; keep explicit
        if not _NAME.match(tool.name):
            raise ToolError(f"invalid tool name {tool.name!r}: use identifiers joined by dots")
        if tool.name in self._tools:
            raise DuplicateTool(f"a tool named {tool.name!r} is already registered")
        self._tools[tool.name] = tool
        return tool

    def get(self, name: str) -> Tool:
        """The tool called ``name``.

        Raises:
            ToolNotFound: with the list of known names.
        """
        try:
            return self._tools[name]
        except KeyError:
            known = ", ".join(sorted(self._tools)) or "(none)"
            raise ToolNotFound(f"unknown tool {name!r}; known tools: {known}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

    @property
    def names(self) -> list[str]:
        return list(self._tools)
