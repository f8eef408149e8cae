"""Events a run emits as it goes (for live display and traces)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["AnswerDelta", "JoinDecision", "PlanIssueSeen", "RoundStarted", "RunEvent", "TaskAdded"]


@dataclass(frozen=True)
class RoundStarted:
    """A plan/join round began (1 for the first plan, 2+ for replans)."""

    round: int


@dataclass(frozen=True)
class TaskAdded:
    """A task parsed and validated; it was handed to the scheduler."""

    task: Any


@dataclass(frozen=True)
class PlanIssueSeen:
    """A task or plan line was rejected (the joiner sees it too)."""

    issue: Any


@dataclass(frozen=True)
class JoinDecision:
    """The joiner's decision for a round."""

    action: Literal["answer", "replan"]
    answer: str
    thought: str = ""


@dataclass(frozen=True)
class AnswerDelta:
    """A piece of the final answer's text, as the joiner streams it.

    Emitted only once the joiner has decided to answer (not to replan), so the deltas of a run
    concatenate to its answer.
    """

    text: str


RunEvent = Any  # RoundStarted | TaskAdded | PlanIssueSeen | AnswerDelta | JoinDecision | scheduler events
