"""End to end with the real local model: a real question, a plan of parallel tasks, a right answer."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import anyio
import pytest

from agentrt import Agent
from agentrt.llm import OpenAIChatModel

pytestmark = [pytest.mark.model, pytest.mark.anyio]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "local_tools.py"


async def test_real_question_is_answered_with_parallel_tasks(local_engine) -> None:
    ns = runpy.run_path(str(EXAMPLES))
    tools = ns["tools"]()
    by_name = {t.name: t for t in tools}
    enc = (await by_name["stdlib_module_lines"].call({"module": "json.encoder"})).value
    dec = (await by_name["stdlib_module_lines"].call({"module": "json.decoder"})).value
    model = OpenAIChatModel(base_url=local_engine.base_url, model=local_engine.model_name, timeout=300)
    agent = Agent(model, tools, examples=ns["PLAN_EXAMPLES"])
    with anyio.fail_after(600):
        result = await agent.run("How many more lines does the standard library module json.encoder "
                                 "have than json.decoder?")
    await model.aclose()
    # the plan: two independent lookups (no dependency between them), then arithmetic on both
    lookups = [t for t in result.plan if t.tool == "stdlib_module_lines"]
    assert len(lookups) >= 2 and all(not t.deps for t in lookups)
    assert any(t.deps >= {lookups[0].id, lookups[1].id} for t in result.plan if t.tool == "calculator")
    numbers = [int(n) for n in re.findall(r"-?\d+", result.answer.replace(",", ""))]
    assert abs(enc - dec) in numbers, result.answer
    assert result.usage.input_tokens > 0 and result.usage.output_tokens > 0
    assert result.first_dispatch_seconds is not None and result.first_dispatch_seconds < result.wall_seconds
