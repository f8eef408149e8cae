"""Prompts of the planner and the joiner, kept short: on a CPU, prompt tokens dominate latency.

The structure follows LLMCompiler (Kim et al., 2023, arXiv:2312.04511): a numbered plan of tool
calls with ``$N`` references and a final ``join()``; a joiner that answers or asks to replan.
The wording is ours and tuned for small local models (one worked example, a stable prefix that
the engine's prompt cache can reuse across calls).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel

from agentrt.tools import Tool

__all__ = ["END_OF_PLAN", "PlanExample", "joiner_system_prompt", "planner_system_prompt", "render_tool"]

END_OF_PLAN = "<END_OF_PLAN>"


class PlanExample(BaseModel):
    """A worked example for the planner prompt: a question and its plan in the text format."""

    question: str
    plan: str


def _type_of(schema: dict[str, Any]) -> str:
    if "enum" in schema:
        return " | ".join(json.dumps(v) for v in schema["enum"])
    if "anyOf" in schema:
        return " | ".join(_type_of(s) for s in schema["anyOf"])
    t = schema.get("type", "any")
    if t == "array":
        return f"list[{_type_of(schema.get('items', {}))}]"
    return str(t)


def render_tool(tool: Tool) -> str:
    """One tool as a compact signature line plus its description and parameter notes."""
    props: dict[str, Any] = tool.parameters.get("properties", {})
    required = set(tool.parameters.get("required", []))
    params = []
    notes = []
    for name, schema in props.items():
        opt = "" if name in required else "?"
        params.append(f"{name}{opt}: {_type_of(schema)}")
        if schema.get("description"):
            notes.append(f"    {name}: {schema['description']}")
    head = f"- {tool.name}({', '.join(params)}): {tool.description}"
    return "\n".join([head, *notes])


_PLANNER_RULES = """\
You write a plan of tool calls that answers the user's question. Write one call per line,
numbered 1, 2, 3, ..., each like: 2. tool_name(arg="text", other=3)
- Argument values are JSON literals. Write $K to use the result of call K (K < the call's number).
- Calls that do not need each other's results run in parallel, so make them separate calls.
- Use only these tools:
{tools}
- After the last call, write one more numbered line with join(), e.g. 4. join()
Then stop. Do not answer the question yourself."""


_PLANNER_RULES_JSON = """\
You write a plan of tool calls that answers the user's question, as JSON:
{{"tasks": [{{"id": N, "tool": "...", "args": {{...}}}}, ...]}}
- ids count up from 1. Write "$K" as an argument value to use the result of task K (K < N).
- Calls that do not need each other's results run in parallel, so make them separate tasks.
- Use only these tools:
{tools}
Do not answer the question yourself."""


def _example_as_json(example: PlanExample) -> str:
    from agentrt.planner._parser import parse_plan

    tasks = [
        {"id": ev.task.id, "tool": ev.task.tool, "args": _refs_as_strings(ev.task.args)}
        for ev in parse_plan(example.plan) if type(ev).__name__ == "TaskParsed"
    ]
    return json.dumps({"tasks": tasks}, ensure_ascii=False)


def _refs_as_strings(value: Any) -> Any:
    from agentrt.executor import Ref

    if isinstance(value, Ref):
        return f"${value.task}"
    if isinstance(value, dict):
        return {k: _refs_as_strings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_refs_as_strings(v) for v in value]
    return value


def planner_system_prompt(tools: Iterable[Tool], examples: Sequence[PlanExample],
                          plan_format: str = "text") -> str:
    """The planner's system prompt, for the ``"text"`` or the ``"json"`` plan format.

    The tool list and examples come first and never change within a session, so the prompt
    prefix is identical across calls and the engine's prompt cache reuses it. Examples are
    written in the text format and converted for the JSON one.
    """
    tool_text = "\n".join(render_tool(t) for t in tools)
    if plan_format == "json":
        parts = [_PLANNER_RULES_JSON.format(tools=tool_text)]
        parts += [f"Example question: {ex.question}\n{_example_as_json(ex)}" for ex in examples]
    else:
        parts = [_PLANNER_RULES.format(tools=tool_text)]
        parts += [f"Example question: {ex.question}\n{ex.plan.strip()}" for ex in examples]
    return "\n\n".join(parts)


JOINER_SYSTEM = """\
You are given a question and the results of tool calls made to answer it. The last results \
usually hold the answer: read it from them, do not recompute it.
Reply with action "answer" and a short, direct answer unless \
a result needed for the answer is an ERROR or was never computed; only then reply "replan" and \
say in "thought" which call is missing.
The answer has the form the question asks for: when it asks which one, name it (compare the \
results and give the name, not a number); when it asks how much or how many, a number with its unit.
Reply with JSON only: {"thought": "...", "action": "answer" | "replan", "answer": "..."}

Example question: How much taller is tower A than tower B, in metres?
Results:
1. height(name="tower A")
   -> 330
2. height(name="tower B")
   -> 300
3. calculator(expression="$1 - $2")  [= calculator(expression="330 - 300")]
   -> 30
{"thought": "Call 3 computed it: 30.", "action": "answer", "answer": "30 m"}

Example question: If tower A grew by 10% and tower B by 20%, which one would be shorter?
Results:
1. height(name="tower A")
   -> 330
2. height(name="tower B")
   -> 300
3. calculator(expression="$1 * 1.1")  [= calculator(expression="330 * 1.1")]
   -> 363
4. calculator(expression="$2 * 1.2")  [= calculator(expression="300 * 1.2")]
   -> 360
{"thought": "Tower A would be 363 and tower B 360; 360 is the smaller, so tower B is the shorter.", "action": "answer", "answer": "tower B"}

Example question: What are tower A and tower B each used for?
Results:
1. describe(name="tower A")
   -> Tower A is a radio mast that broadcasts FM stations to the whole region.
2. describe(name="tower B")
   -> Tower B. An observation tower with a restaurant on its top floor.
{"thought": "Calls 1 and 2 describe each tower.", "action": "answer", "answer": "Tower A broadcasts FM radio; tower B is an observation tower with a restaurant."}"""


def joiner_system_prompt() -> str:
    return JOINER_SYSTEM


JOINER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "thought": {"type": "string", "maxLength": 400},
        "action": {"type": "string", "enum": ["answer", "replan"]},
        "answer": {"type": "string", "maxLength": 300},
    },
    "required": ["thought", "action", "answer"],
    "additionalProperties": False,
}
