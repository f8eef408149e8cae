"""Planner: LLMCompiler plan prompts, streaming plan parsers and validation, joiner and replanning."""

from agentrt.planner._compiler import CompilerResult, LLMCompiler
from agentrt.planner._events import (
    AnswerDelta,
    JoinDecision,
    PlanIssueSeen,
    RoundStarted,
    TaskAdded,
)
from agentrt.planner._faithful import FaithfulLLMCompiler
from agentrt.planner._json_parser import JsonPlanParser
from agentrt.planner._parser import (
    JOIN_TOOL,
    PlanEnd,
    PlanEvent,
    PlanIssue,
    TaskParsed,
    TextPlanParser,
    parse_plan,
)
from agentrt.planner._prompts import PlanExample
from agentrt.planner._react import ReAct
from agentrt.planner._schema import JOIN_MARKER, plan_array_schema, plan_json_schema
from agentrt.planner._usage import UsageLimits
from agentrt.planner._validate import PlanValidator, check_acyclic, validate_plan

__all__ = [
    "JOIN_MARKER",
    "JOIN_TOOL",
    "AnswerDelta",
    "CompilerResult",
    "FaithfulLLMCompiler",
    "JoinDecision",
    "JsonPlanParser",
    "LLMCompiler",
    "PlanEnd",
    "PlanEvent",
    "PlanExample",
    "PlanIssue",
    "PlanIssueSeen",
    "PlanValidator",
    "ReAct",
    "RoundStarted",
    "TaskAdded",
    "TaskParsed",
    "TextPlanParser",
    "UsageLimits",
    "check_acyclic",
    "parse_plan",
    "plan_array_schema",
    "plan_json_schema",
    "validate_plan",
]
