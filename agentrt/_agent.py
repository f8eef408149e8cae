"""The `Agent` facade: question in, answer out, with the plan, per-task results and usage."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from agentrt.config import Settings, get_settings
from agentrt.executor import Task
from agentrt.llm import ChatModel, Usage
from agentrt.planner import LLMCompiler, PlanExample
from agentrt.tools import Tool, ToolRegistry, ToolResult

__all__ = ["Agent", "RunResult"]


@dataclass
class RunResult:
    """The outcome of `Agent.run`.

    Attributes:
        answer: the final answer.
        partial: True when the answer is incomplete; ``reason`` says why.
        plan: every task planned, in id order (replans included).
        results: each task's `ToolResult`, by task id.
        usage: tokens of every LLM call (input, output, cached).
        llm_calls: number of LLM calls.
        wall_seconds: end-to-end seconds.
        first_dispatch_seconds: seconds until the first tool call started.
        critical_path: (task ids, seconds) of the longest measured chain of tool calls.
        rounds: plan/join rounds (1 + replans).
        issues: plan problems (rejected tasks), as text.
        cost_usd: cost when the model's price is known (0.0 for the local model), else None.
    """

    answer: str
    partial: bool
    reason: str | None
    plan: list[Task]
    results: dict[int, ToolResult]
    usage: Usage
    llm_calls: int
    wall_seconds: float
    first_dispatch_seconds: float | None
    critical_path: tuple[list[int], float]
    rounds: int
    issues: list[str] = field(default_factory=list)
    cost_usd: float | None = None


class Agent:
    """An LLMCompiler agent over a set of tools.

    Args:
        model: a `ChatModel`; ``None`` uses the settings: ``base_url`` if set, else the embedded
            local engine (started on first use and stopped by `aclose`, or at the end of
            `run_sync`).
        tools: the tools (or a `ToolRegistry`).
        examples: worked plan examples for the planner prompt.
        max_rounds: plan/join rounds before a partial answer.
        max_concurrency: cap on concurrent tool calls.
        settings: configuration; defaults to `get_settings()`.
        on_event: called with every run event (task added/started/finished, joiner decision).

    Use ``async with Agent(...) as agent: await agent.run(q)`` to keep the engine across runs.
    """

    def __init__(
        self,
        model: ChatModel | None = None,
        tools: Sequence[Tool] | ToolRegistry = (),
        *,
        examples: Sequence[PlanExample] = (),
        max_rounds: int = 3,
        max_concurrency: int | None = None,
        settings: Settings | None = None,
        on_event: Callable[[Any], None] | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self.registry = tools if isinstance(tools, ToolRegistry) else ToolRegistry(tools)
        self.examples = list(examples)
        self.max_rounds = max_rounds
        self.max_concurrency = max_concurrency
        self.on_event = on_event
        self._model = model
        self._engine: Any = None

    async def _ensure_model(self) -> ChatModel:
        if self._model is None:
            from agentrt.llm import OpenAIChatModel, resolve_endpoint

            base_url, self._engine = await resolve_endpoint(self.settings)
            self._model = OpenAIChatModel.from_settings(self.settings, base_url=base_url)
        return self._model

    async def run(self, question: str) -> RunResult:
        """Answer ``question`` with a plan of parallel tool calls.

        Raises:
            ModelError: the model endpoint failed after its retries.
            ModelNotInstalled: no endpoint is configured and the local model is not installed.
        """
        model = await self._ensure_model()
        compiler = LLMCompiler(model, self.registry, examples=self.examples, max_rounds=self.max_rounds,
                               max_concurrency=self.max_concurrency, on_event=self.on_event)
        res = await compiler.run(question)
        cost = 0.0 if self._engine is not None or self.settings.uses_local_engine else None
        return RunResult(
            answer=res.answer, partial=res.partial, reason=res.reason,
            plan=[res.tasks[i] for i in sorted(res.tasks)], results=res.results, usage=res.usage,
            llm_calls=res.llm_calls, wall_seconds=res.wall_seconds,
            first_dispatch_seconds=res.first_dispatch_seconds, critical_path=res.critical_path,
            rounds=res.rounds, issues=[i.message for i in res.issues], cost_usd=cost,
        )

    def run_sync(self, question: str) -> RunResult:
        """`run` for synchronous code; starts and stops the local engine if it needs one."""

        async def once() -> RunResult:
            try:
                return await self.run(question)
            finally:
                await self.aclose()

        return anyio.run(once)

    async def aclose(self) -> None:
        """Stop the local engine if this agent started it."""
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.stop()
            self._model = None

    async def __aenter__(self) -> Agent:
        await self._ensure_model()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
