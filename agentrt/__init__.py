"""agentrt: an agent orchestration runtime with resource control."""

from agentrt.tools import Limits, Tool, ToolRegistry, ToolResult, tool

__all__ = ["Limits", "Tool", "ToolRegistry", "ToolResult", "tool"]
__version__ = "0.1.0"
