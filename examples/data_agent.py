"""A data agent over a SQLite database this machine builds from its own Python installation.

The database (``<agentrt data dir>/examples/packages.sqlite``) holds the installed packages
(name, version, files, size, requirements) and the standard library's modules (lines of
source); `local_tools.py` builds it on first use and defines the tools. The planner calls the
lookups in parallel and does the arithmetic with ``calculator``.

Run (one command; the local model starts and stops by itself)::

    python examples/data_agent.py
    python examples/data_agent.py "Which has more files installed, rich or pydantic, and how many more?"
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agentrt import Agent

DEFAULT_QUESTION = "What is the combined size in KB of the pydantic and networkx packages?"


def ask(question: str = DEFAULT_QUESTION):
    """Answer ``question`` with the package tools; returns the `RunResult`."""
    sys.path.insert(0, str(Path(__file__).parent))
    from local_tools import PLAN_EXAMPLES, tools

    return Agent(tools=tools(), examples=PLAN_EXAMPLES).run_sync(question)


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).parent))
    from _report import console, print_run
    from local_tools import build_database, database_path

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("question", nargs="?", default=DEFAULT_QUESTION)
    args = ap.parse_args(argv)
    with console.status("building the package database (first run only)..."):
        build_database()
    console.print(f"[dim]database: {database_path()}[/]")
    console.print(f"[bold]question:[/] {args.question}")
    with console.status("planning and running..."):
        result = ask(args.question)
    print_run(result)
    return 3 if result.partial else 0


if __name__ == "__main__":
    raise SystemExit(main())
