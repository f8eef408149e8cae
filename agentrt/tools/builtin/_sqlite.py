"""SQLite tools: ``sqlite_query`` (one SQL statement, rows as dicts) and ``sqlite_schema``.

A read-only tool opens the database with the ``file:...?mode=ro`` URI, sets
``PRAGMA query_only`` and installs an authorizer that refuses ATTACH (which would reach other
files) and pragma writes; a writable one still refuses ATTACH. Each call opens its own
connection (calls run in worker threads) and is interrupted by a progress handler once it runs
past the tool's ``Limits.timeout``, because a worker thread itself cannot be cancelled.
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from agentrt.errors import ToolError
from agentrt.tools import Limits, Tool, tool

__all__ = ["sqlite_schema_tool", "sqlite_tool", "sqlite_tools"]

_FENCE = re.compile(r"^\s*```[A-Za-z]*\s*|\s*```\s*$")
_PROGRESS_OPS = 10_000
# pragmas that take an argument yet only read (PRAGMA table_info(t)); any other pragma with a
# value is a write in read-only mode
_READ_PRAGMAS = frozenset({
    "table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo",
    "foreign_key_list", "foreign_key_check", "integrity_check", "quick_check",
})  # SQLite VM instructions between deadline checks


def _connect(db_path: Path, *, writable: bool) -> sqlite3.Connection:
    if writable:
        conn = sqlite3.connect(db_path, check_same_thread=False)
    else:
        conn = sqlite3.connect(f"file:{quote(str(db_path))}?mode=ro", uri=True,
                               check_same_thread=False)
        conn.execute("PRAGMA query_only = ON")

    def authorize(action: int, arg1: str | None, arg2: str | None, *_: Any) -> int:
        if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
            return sqlite3.SQLITE_DENY
        if (action == sqlite3.SQLITE_PRAGMA and not writable and arg2 is not None
                and (arg1 or "").lower() not in _READ_PRAGMAS):
            return sqlite3.SQLITE_DENY  # "PRAGMA query_only = OFF" would change the connection
        return sqlite3.SQLITE_OK

    conn.set_authorizer(authorize)
    return conn


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return value


def describe_schema(db_path: str | os.PathLike[str]) -> str:
    """One line per table and view: ``name(col type, ...)``, read from ``sqlite_master``.

    Raises:
        sqlite3.Error: the file is not a readable SQLite database.
    """
    conn = _connect(Path(db_path), writable=False)
    try:
        names = conn.execute(
            "SELECT name, type FROM sqlite_master WHERE type IN ('table', 'view') "
            "AND name NOT LIKE 'sqlite_%' ORDER BY name"
        ).fetchall()
        lines = []
        for name, kind in names:
            cols = conn.execute(f"PRAGMA table_info({_quote_ident(name)})").fetchall()
            spec = ", ".join(f"{c[1]} {c[2]}".strip() for c in cols)
            lines.append(f"{name}({spec})" + (" [view]" if kind == "view" else ""))
        return "\n".join(lines)
    finally:
        conn.close()


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _check_db(db_path: str | os.PathLike[str], writable: bool) -> Path:
    path = Path(db_path).expanduser().resolve()
    if not writable and not path.is_file():
        raise ToolError(f"SQLite database {str(db_path)!r} does not exist")
    return path


def sqlite_tool(db_path: str | os.PathLike[str], *, writable: bool = False, max_rows: int = 200,
                name: str = "sqlite_query", description: str | None = None,
                limits: Limits | None = None) -> Tool:
    """A tool that runs one SQL statement on the SQLite database at ``db_path``.

    The default description names the database's tables and columns (read once, here), so a
    planner can write queries without calling ``sqlite_schema`` first.

    Args:
        db_path: the database file; it must exist unless ``writable``.
        writable: open read-write (the tool is then marked destructive); default read-only.
        max_rows: at most this many rows are returned per call.
        name: the tool's name.
        description: replaces the default description (and the schema read it needs).
        limits: resource intent; default 256 MiB, 1 core, 30 s.

    Returns:
        a tool ``sqlite_query(sql: str) -> list[dict]``: rows as column -> value dicts; a statement
        that returns no rows (writable only) gives ``[{"rows_affected": n}]``.

    Raises:
        ToolError: the database does not exist (read-only), or ``max_rows`` < 1.
        sqlite3.DatabaseError: the file is not an SQLite database.
    """
    if max_rows < 1:
        raise ToolError(f"max_rows must be at least 1, got {max_rows}")
    path = _check_db(db_path, writable)
    lim = limits or Limits(memory="256M", cpu=1, timeout=30)
    if description is None:
        mode = "" if writable else "read-only "
        schema = describe_schema(path) if path.exists() else ""
        description = (f"Run one {mode}SQL statement on the SQLite database and return the rows "
                       f"(at most {max_rows}) as objects. Tables: {'; '.join(schema.splitlines())}"
                       if schema else
                       f"Run one {mode}SQL statement on the SQLite database and return the rows "
                       f"(at most {max_rows}) as objects.")

    def sqlite_query(sql: str) -> list[dict[str, Any]]:
        """Run one SQL statement.

        Args:
            sql: a single SQLite statement, e.g. "SELECT name FROM t WHERE x > 3 LIMIT 10".
        """
        statement = _FENCE.sub("", sql).strip()
        if not statement:
            raise ValueError("empty SQL statement")
        # interrupt at 90% of the timeout, so the call ends with a reason rather than a timeout
        deadline = time.monotonic() + 0.9 * lim.timeout
        conn = _connect(path, writable=writable)
        conn.set_progress_handler(lambda: time.monotonic() > deadline, _PROGRESS_OPS)
        try:
            try:
                cur = conn.execute(statement)
            except (sqlite3.ProgrammingError, sqlite3.Warning) as exc:
                if "one statement at a time" in str(exc):
                    raise ValueError("only one SQL statement per call; split it into separate "
                                     "calls") from None
                raise ValueError(f"SQL error: {exc}") from None
            except sqlite3.DatabaseError as exc:
                raise ValueError(_explain(exc, writable)) from None
            if cur.description is None:
                conn.commit()
                return [{"rows_affected": cur.rowcount}]
            cols = [d[0] for d in cur.description]
            try:
                rows = cur.fetchmany(max_rows)
            except sqlite3.DatabaseError as exc:
                raise ValueError(_explain(exc, writable)) from None
            if writable:
                conn.commit()  # INSERT ... RETURNING gives rows and still writes
            return [{c: _jsonable(v) for c, v in zip(cols, row)} for row in rows]
        finally:
            conn.close()

    return tool(name=name, description=description, read_only=not writable,
                idempotent=not writable, destructive=writable, limits=lim)(sqlite_query)


def _explain(exc: sqlite3.DatabaseError, writable: bool) -> str:
    msg = str(exc)
    if msg == "interrupted":
        return "the query ran past its time limit; add a WHERE clause or LIMIT"
    if msg == "not authorized":
        return ("statement not allowed: ATTACH/DETACH are refused, and so are pragmas that "
                "change settings" + (" on a read-only database" if not writable else ""))
    if not writable and ("readonly" in msg or "query_only" in msg):
        return f"the database is read-only; only SELECT queries are allowed ({msg})"
    return f"SQL error: {msg}"


def sqlite_schema_tool(db_path: str | os.PathLike[str], *, name: str = "sqlite_schema") -> Tool:
    """A tool ``sqlite_schema() -> str`` that lists the database's tables and their columns.

    Raises:
        ToolError: the database does not exist.
    """
    path = _check_db(db_path, writable=False)

    def sqlite_schema() -> str:
        """List the tables of the SQLite database with their columns, one "table(col type, ...)" per line."""
        return describe_schema(path)

    return tool(name=name, read_only=True, idempotent=True,
                limits=Limits(memory="64M", cpu=1, timeout=10))(sqlite_schema)


def sqlite_tools(db_path: str | os.PathLike[str], *, writable: bool = False,
                 max_rows: int = 200) -> list[Tool]:
    """``[sqlite_query, sqlite_schema]`` on the database at ``db_path`` (see :func:`sqlite_tool`)."""
    return [sqlite_tool(db_path, writable=writable, max_rows=max_rows), sqlite_schema_tool(db_path)]
