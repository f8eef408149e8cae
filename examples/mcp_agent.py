"""An agent whose tools come from an MCP server (``mcp_server.py``, launched over stdio).

The server runs inside agentrt's sandbox (no network, 256 MiB, 16 processes) when the sandbox
works on this machine, else directly (the script says which). Its tools' MCP annotations
(read-only, idempotent) become the tools' hints; the planner calls them in parallel.

Run (one command; the local model starts and stops by itself)::

    python examples/mcp_agent.py
    python examples/mcp_agent.py "What is the difflib module for, and how many lines is it?"
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import anyio

from agentrt import Agent, Limits, PlanExample
from agentrt.tools import MCPToolset
from agentrt.tools.builtin import calculator

DEFAULT_QUESTION = "How many lines do the json.encoder and json.decoder modules have together?"
EXAMPLES = [PlanExample(
    question="How many more lines does the module csv have than the module glob?",
    plan='1. stdlib.module_lines(module="csv")\n2. stdlib.module_lines(module="glob")\n'
         '3. calculator(expression="$1 - $2")\n4. join()',
)]
SERVER = [sys.executable, str(Path(__file__).with_name("mcp_server.py"))]


def sandbox_launcher():
    """A launcher putting the server in the namespace sandbox, or None where it cannot run here."""
    from agentrt.errors import SandboxError
    from agentrt.sandbox import sandboxed_command

    try:
        return sandboxed_command(Limits(memory="256M", pids=16, network="none"))
    except SandboxError:
        return None


async def run(question: str, *, verbose: bool = True) -> object:
    """Answer ``question`` with the MCP server's tools and the calculator; returns the `RunResult`."""
    sys.path.insert(0, str(Path(__file__).parent))
    from _report import console

    launcher = sandbox_launcher()
    if verbose:
        console.print(f"[dim]MCP server: {' '.join(SERVER)} "
                      f"({'in the namespace sandbox' if launcher else 'not sandboxed: no sandbox on this machine'})[/]")
    async with MCPToolset(SERVER, prefix="stdlib", launcher=launcher) as mcp:
        if verbose:
            console.print(f"[dim]tools: {', '.join(t.name for t in mcp.tools)}[/]")
        async with Agent(tools=[*mcp.tools, calculator], examples=EXAMPLES) as agent:
            return await agent.run(question)


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).parent))
    from _report import console, print_run

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("question", nargs="?", default=DEFAULT_QUESTION)
    args = ap.parse_args(argv)
    console.print(f"[bold]question:[/] {args.question}")
    with console.status("planning and running..."):
        result = anyio.run(run, args.question)
    print_run(result)
    return 3 if result.partial else 0


if __name__ == "__main__":
    raise SystemExit(main())
