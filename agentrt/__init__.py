"""agentrt: an agent orchestration runtime with resource control.

The public SDK surface: `Agent` (plan tool calls as a DAG, run them in parallel, join),
`tool` (make a tool from a function), `Limits` (a tool's resource intent), `ToolResult`,
`UsageLimits` (what a run may spend). Run events are in `agentrt.events`.
"""

from agentrt._agent import Agent, RunResult
from agentrt.planner import PlanExample, UsageLimits
from agentrt.tools import Limits, Tool, ToolRegistry, ToolResult, tool

__all__ = ["Agent", "Limits", "PlanExample", "RunResult", "Tool", "ToolRegistry", "ToolResult", "UsageLimits", "tool"]
__version__ = "0.1.0"
