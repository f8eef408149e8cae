"""Tools from an MCP server: each tool the server lists becomes a `Tool` the planner can call.

Speaks the Model Context Protocol through the official `mcp` package (extra ``agentrt[mcp]``),
over stdio (a command agentrt launches) or Streamable HTTP (a URL). A tool's MCP annotations
(``readOnlyHint``, ``idempotentHint``, ``destructiveHint``, ``openWorldHint``) become the
`Tool` hints of the same names; its ``inputSchema`` is the parameter schema, and arguments are
validated against it (JSON Schema, by `jsonschema`) before a call is sent.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, AsyncExitStack
from types import TracebackType
from typing import Any

from agentrt.errors import InvalidArguments, ToolError
from agentrt.tools._limits import Limits
from agentrt.tools._tool import Tool

__all__ = ["MCPToolset"]

_NAME_OK = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")


def _plan_name(name: str) -> str:
    """A name a plan can spell: letters, digits, ``_`` and dots (MCP allows ``-`` and more)."""
    if _NAME_OK.fullmatch(name):
        return name
    clean = re.sub(r"[^\w.]", "_", name).strip(".") or "tool"
    return clean if clean[0].isalpha() or clean[0] == "_" else f"_{clean}"


class MCPToolset:
    """The tools of one MCP server, usable while the toolset is open.

    Args:
        server: a URL (``http://host:port/mcp``, Streamable HTTP), a command line (string,
            split with `shlex`) or argv list to launch as a stdio server.
        prefix: namespace for the tools' names (``"fs"`` gives ``fs.read_file``); default none.
        limits: resource intent given to each tool call (its ``timeout`` bounds a call).
        env: environment of a launched server (default: the `mcp` package's safe minimum).
        cwd: working directory of a launched server.
        launcher: wraps a stdio server's argv for the time it runs, e.g.
            ``agentrt.sandbox.sandboxed_command(Limits(memory="256M", network="none"))`` to run
            it in the namespace sandbox under its own cgroup; ``None`` launches it directly.

    Use ``async with MCPToolset(...) as mcp: Agent(model, tools=mcp.tools)``. Opening raises
    `ToolError` when the server cannot be started or does not speak MCP; a call's failure
    (``isError`` result, broken connection, timeout) is a `ToolResult` error, as for any tool.
    """

    def __init__(
        self,
        server: str | Sequence[str],
        *,
        prefix: str | None = None,
        limits: Limits | None = None,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        launcher: Callable[[Sequence[str]], AbstractContextManager[list[str]]] | None = None,
    ) -> None:
        self.server = server
        self.prefix = prefix
        self.limits = limits or Limits(timeout=60)
        self.env, self.cwd, self.launcher = env, cwd, launcher
        self.tools: list[Tool] = []
        self._stack: AsyncExitStack | None = None
        self._client: Any = None

    def _target(self, stack: AsyncExitStack) -> Any:
        from mcp import StdioServerParameters

        if isinstance(self.server, str) and re.match(r"https?://", self.server):
            if self.launcher is not None:
                raise ValueError("launcher= applies to a launched (stdio) server, not to a URL")
            return self.server
        argv = shlex.split(self.server) if isinstance(self.server, str) else list(self.server)
        if not argv:
            raise ValueError("the MCP server command is empty")
        if self.launcher is not None:
            argv = stack.enter_context(self.launcher(argv))
        return StdioServerParameters(command=argv[0], args=argv[1:], env=self.env, cwd=self.cwd)

    async def __aenter__(self) -> MCPToolset:
        try:
            from mcp import Client
        except ImportError as exc:
            raise ToolError("MCP needs the 'mcp' package: pip install 'agentrt[mcp]'") from exc
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            self._client = await stack.enter_async_context(
                Client(self._target(stack), read_timeout_seconds=self.limits.timeout))
            listed = await self._client.list_tools()
        except BaseException as exc:
            await stack.__aexit__(type(exc), exc, exc.__traceback__)
            if isinstance(exc, Exception) and not isinstance(exc, ToolError):
                raise ToolError(f"cannot open MCP server {self.server!r}: {type(exc).__name__}: {exc}") from exc
            raise
        self._stack = stack
        self.tools = [self._tool(t) for t in listed.tools]
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        stack, self._stack = self._stack, None
        self.tools = []
        if stack is not None:
            await stack.__aexit__(exc_type, exc, tb)

    def _tool(self, spec: Any) -> Tool:
        import jsonschema

        schema = dict(spec.input_schema or {"type": "object", "properties": {}})
        validator_cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        validator = validator_cls(schema)
        remote_name = spec.name
        name = _plan_name(remote_name)
        if self.prefix:
            name = f"{self.prefix}.{name}"
        client = self

        async def call(**kwargs: Any) -> Any:
            return await client._call(remote_name, kwargs)

        def validate(args: dict[str, Any]) -> dict[str, Any]:
            errors = sorted(validator.iter_errors(args), key=lambda e: list(e.absolute_path))
            if errors:
                msg = "; ".join(f"{'.'.join(map(str, e.absolute_path)) or '(args)'}: {e.message}" for e in errors)
                raise InvalidArguments(f"{name}: invalid arguments: {msg}")
            return args

        hints = spec.annotations
        tool = Tool(
            name=name, description=" ".join((spec.description or spec.title or "").split()),
            parameters=schema, returns=spec.output_schema, limits=self.limits,
            read_only=bool(hints and hints.read_only_hint),
            idempotent=bool(hints and hints.idempotent_hint),
            destructive=bool(hints and hints.destructive_hint),
            # MCP's default for openWorldHint is true: a tool is assumed to reach outside
            open_world=bool(hints is None or hints.open_world_hint is None or hints.open_world_hint),
            runs_in="in_process", fn=call,
        )
        tool._validator = validate
        return tool

    async def _call(self, name: str, args: dict[str, Any]) -> Any:
        if self._client is None or self._stack is None:
            raise ToolError(f"MCP server {self.server!r} is closed")
        result = await self._client.call_tool(name, args)
        text = "\n".join(getattr(c, "text", "") for c in result.content if getattr(c, "type", "") == "text")
        if result.is_error:
            raise ToolError(text or f"MCP tool {name!r} failed")
        if result.structured_content is not None:
            sc = result.structured_content
            # servers wrap a plain return value as {"result": value}
            return sc["result"] if isinstance(sc, dict) and list(sc) == ["result"] else sc
        return text
