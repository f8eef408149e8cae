"""A scripted chat model and tools for compiler tests: the model replays fixed plan text chunk by
chunk (with delays) and fixed joiner replies, so tests can pin down the runtime's behaviour around
the model."""

from __future__ import annotations

import json
import time
from typing import Any

import anyio

from agentrt.llm import Completion, Delta, Usage
from agentrt.tools import ToolRegistry, tool


class ScriptedModel:
    """Replays planner streams (lists of chunks) and joiner replies in order."""

    model_name = "scripted"

    def __init__(self, plans: list[list[str]], joins: list[dict[str, str] | str], chunk_delay: float = 0.0):
        self.plans, self.joins, self.chunk_delay = list(plans), list(joins), chunk_delay
        self.planner_prompts: list[list[Any]] = []
        self.stream_done_at: list[float] = []
        self.join_schemas: list[dict[str, Any]] = []

    async def complete(self, messages, *, stream=False, response_format=None, **kw):
        is_join = (response_format or {}).get("json_schema", {}).get("name") == "join"
        if is_join:
            self.join_schemas.append(response_format["json_schema"]["schema"])
        if stream and not is_join:
            self.planner_prompts.append(list(messages))
            chunks = self.plans.pop(0)

            async def gen():
                for c in chunks:
                    if self.chunk_delay:
                        await anyio.sleep(self.chunk_delay)
                    yield Delta(content=c)
                self.stream_done_at.append(time.perf_counter())
                yield Delta(done=True, completion=Completion(
                    content="".join(chunks), usage=Usage(input_tokens=100, output_tokens=20, requests=1)))

            return gen()
        reply = self.joins.pop(0)
        text = reply if isinstance(reply, str) else json.dumps(reply)
        done = Completion(content=text, usage=Usage(input_tokens=50, output_tokens=10, requests=1))
        if not stream:
            return done

        async def joiner_stream():
            for i in range(0, len(text), 5):
                yield Delta(content=text[i:i + 5])
            yield Delta(done=True, completion=done)

        return joiner_stream()


def make_registry(log: list[str], delays: dict[str, float] | None = None) -> ToolRegistry:
    delays = delays or {}

    @tool
    async def search(query: str) -> str:
        """Look something up.

        Args:
            query: what to look up.
        """
        log.append(f"search:{query}")
        await anyio.sleep(delays.get(query, 0.01))
        if query == "boom":
            raise RuntimeError("search backend exploded")
        if query == "hang":
            await anyio.sleep(3600)
        return f"result for {query}"

    @tool
    def add(a: float, b: float) -> float:
        """Add two numbers.

        Args:
            a: first.
            b: second.
        """
        log.append("add")
        return a + b

    @tool(name="db.count")
    def db_count(table: str) -> int:
        """Count rows.

        Args:
            table: the table.
        """
        return {"users": 3, "orders": 7}[table]

    object.__setattr__(search, "limits", search.limits.model_copy(update={"timeout": 0.5}))
    return ToolRegistry([search, add, db_count])
