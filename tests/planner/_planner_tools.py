"""Tools shared by the planner's parser and validator tests."""

from __future__ import annotations

from typing import Any

from agentrt.tools import tool


@tool
def search(query: str, k: int = 3) -> str:
    """Web search."""
    return query


@tool
def math(expression: str) -> float:
    """Evaluate an arithmetic expression."""
    return 0.0


@tool(name="db.query")
def db_query(sql: str, params: list[int] | None = None) -> list[dict[str, Any]]:
    """Run a read-only SQL query."""
    return []
