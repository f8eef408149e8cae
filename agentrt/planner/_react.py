"""ReAct baseline: one tool call per LLM turn, on the same model and tools.

Source: Yao et al., "ReAct: Synergizing Reasoning and Acting in Language Models" (2022,
arXiv:2210.03629), the baseline LLMCompiler is measured against. Each turn the model writes a
thought and either one tool call or the final answer, constrained to JSON by a schema built
from the tool names, so a small model cannot drift out of the format.
"""

from __future__ import annotations

import json
import time
from typing import Any

from agentrt.executor import Task
from agentrt.llm import ChatModel, Message
from agentrt.planner._compiler import CompilerResult
from agentrt.planner._prompts import render_tool
from agentrt.tools import ToolRegistry, ToolResult

__all__ = ["ReAct"]

_SYSTEM = """\
You answer the user's question by calling tools, one call per turn. Tools:
{tools}
Each turn, reply with JSON only: {{"thought": "...", "action": TOOL_NAME or "finish", "args": {{...}}, "answer": "..."}}.
After each call you see its result. When you can answer, use action "finish" and put a short, \
direct answer in "answer" (a name, a number with its unit, or yes/no).{example}"""


class ReAct:
    """The ReAct loop. ``max_steps`` bounds the number of tool calls; ``example`` is a worked
    transcript (turns and observations) for the system prompt, as the planner gets one."""

    def __init__(self, model: ChatModel, registry: ToolRegistry, *, max_steps: int = 8,
                 example: str | None = None, max_tokens: int = 200) -> None:
        self.model = model
        self.registry = registry
        self.max_steps = max_steps
        self.max_tokens = max_tokens
        self._system = _SYSTEM.format(
            tools="\n".join(render_tool(t) for t in registry),
            example=f"\n\nExample:\n{example.strip()}" if example else "",
        )
        self._schema = {
            "type": "object",
            "properties": {
                "thought": {"type": "string", "maxLength": 200},
                "action": {"type": "string", "enum": [*registry.names, "finish"]},
                "args": {"type": "object"},
                "answer": {"type": "string", "maxLength": 300},
            },
            "required": ["thought", "action", "args", "answer"],
        }

    async def run(self, question: str) -> CompilerResult:
        t0 = time.perf_counter()
        res = CompilerResult(answer="")
        msgs = [Message(role="system", content=self._system),
                Message(role="user", content=f"Question: {question}")]
        for step in range(1, self.max_steps + 2):
            res.rounds = step
            comp: Any = await self.model.complete(
                msgs, max_tokens=self.max_tokens,
                response_format={"type": "json_schema",
                                 "json_schema": {"name": "react", "schema": self._schema}},
            )
            res.usage = res.usage + comp.usage
            res.llm_calls += 1
            msgs.append(Message(role="assistant", content=comp.content))
            try:
                data = json.loads(comp.content)
                action, args = data["action"], data.get("args") or {}
            except (ValueError, KeyError, TypeError):
                msgs.append(Message(role="user", content="Observation: reply with the JSON format only."))
                continue
            if action == "finish" or step > self.max_steps:
                res.answer = str(data.get("answer", ""))
                if action != "finish":
                    res.partial, res.reason = True, f"no answer after {self.max_steps} tool calls"
                break
            # ReAct has no references: "$1" in its arguments is just text, never a dependency
            task = Task.model_construct(id=len(res.tasks) + 1, tool=action,
                                        args=args if isinstance(args, dict) else {}, deps=frozenset(),
                                        thought=None)
            res.tasks[task.id] = task
            if res.first_dispatch_seconds is None:
                res.first_dispatch_seconds = time.perf_counter() - t0
            result: ToolResult = await self.registry.get(action).call(task.args)
            res.results[task.id] = result
            msgs.append(Message(role="user", content=f"Observation: {result.describe(700)}"))
        res.wall_seconds = time.perf_counter() - t0
        # one call after another: the critical path is every call
        res.critical_path = (sorted(res.tasks), sum(r.usage.wall_seconds for r in res.results.values()))
        return res
