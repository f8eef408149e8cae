"""Tools: the `Tool` model, schemas from signatures, the registry, results and limits, MCP."""

from agentrt.tools._limits import Limits, parse_bytes
from agentrt.tools._mcp import MCPToolset
from agentrt.tools._registry import ToolRegistry
from agentrt.tools._result import ErrorKind, ToolResult, ToolUsage
from agentrt.tools._tool import Tool, tool

__all__ = ["ErrorKind", "Limits", "MCPToolset", "Tool", "ToolRegistry", "ToolResult", "ToolUsage", "parse_bytes", "tool"]
