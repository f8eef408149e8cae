"""The events of a run, as `Agent.stream` yields them and ``on_event`` receives them.

In the order a run produces them: `RoundStarted` (1, then 2+ for each replan), `TaskAdded` (a
plan task parsed and validated, possibly before the plan has finished streaming),
`PlanIssueSeen` (a rejected task), `TaskStarted` / `TaskFinished` / `TaskSkipped` (tool calls,
interleaved as they run in parallel), `AnswerDelta` (pieces of the final answer as the joiner
writes it), `JoinDecision` (answer or replan), and, from `Agent.stream` only, `RunFinished`
with the `RunResult`.
"""

from agentrt._agent import RunFinished
from agentrt.executor import TaskFinished, TaskSkipped, TaskStarted
from agentrt.planner import (
    AnswerDelta,
    JoinDecision,
    PlanIssueSeen,
    RoundStarted,
    TaskAdded,
)

__all__ = [
    "AnswerDelta", "JoinDecision", "PlanIssueSeen", "RoundStarted", "RunFinished", "TaskAdded",
    "TaskFinished", "TaskSkipped", "TaskStarted",
]
