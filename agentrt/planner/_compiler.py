"""The LLMCompiler loop: stream a plan, dispatch each task the moment it parses, join, replan.

Source: Kim et al., "An LLM Compiler for Parallel Function Calling" (2023, arXiv:2312.04511).
Differences from the original, each fixing a failure its users hit (see
shared/notes/anchor_llmcompiler.md): a task is handed to the scheduler when its closing
parenthesis arrives, not at the next newline; a failed or hanging tool completes its task with an
error value, so the run never hangs; bad tasks become plan issues the joiner sees; a replan keeps
every finished result and plans only what is missing, with a bounded number of rounds.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio

from agentrt.errors import UsageLimitExceeded
from agentrt.executor import (
    LocalBackend,
    Scheduler,
    Task,
    TaskFinished,
    TaskSkipped,
    TaskStarted,
    critical_path,
    resolve_refs,
)
from agentrt.llm import ChatModel, Message, Usage
from agentrt.planner._answer_stream import AnswerFieldReader
from agentrt.planner._events import (
    AnswerDelta,
    JoinDecision,
    PlanIssueSeen,
    RoundStarted,
    RunEvent,
    TaskAdded,
)
from agentrt.planner._json_parser import JsonPlanParser
from agentrt.planner._parser import PlanEnd, PlanIssue, TaskParsed, TextPlanParser
from agentrt.planner._prompts import (
    END_OF_PLAN,
    JOINER_SCHEMA,
    PlanExample,
    joiner_system_prompt,
    planner_system_prompt,
)
from agentrt.planner._schema import plan_array_schema
from agentrt.planner._usage import UsageLimits
from agentrt.planner._validate import PlanValidator
from agentrt.tools import ToolRegistry, ToolResult

__all__ = ["CompilerResult", "LLMCompiler"]

log = logging.getLogger(__name__)

JOIN_STOP = "join()"
# The text a plan ends with when the server stopped on JOIN_STOP: "...\n4. " (the number of
# the join line, with the stop string itself removed by the server).
_STOPPED_AT_JOIN = re.compile(r"(^|\n)\s*\d+\s*[.)]\s*$")


@dataclass
class CompilerResult:
    """What one run of the compiler produced.

    Attributes:
        answer: the final answer text.
        partial: the answer is incomplete (the message in ``reason`` says why).
        reason: why the answer is partial, or ``None``.
        tasks: every task of every round, by id.
        results: every task's result, by id.
        issues: plan problems found (bad tasks, parse errors), in order.
        rounds: number of plan/join rounds.
        usage: token usage of every LLM call of the run that completed (a call cut short when
            the run stopped at a usage limit has no usage report).
        llm_calls: number of LLM calls started.
        wall_seconds: end-to-end time.
        first_dispatch_seconds: time from the start to the first task dispatch, or None.
        critical_path: task ids on the longest measured chain, and its length in seconds.
        cost_usd: cost of the LLM calls where the model's price is known, else None.
    """

    answer: str
    partial: bool = False
    reason: str | None = None
    tasks: dict[int, Task] = field(default_factory=dict)
    results: dict[int, ToolResult] = field(default_factory=dict)
    issues: list[PlanIssue] = field(default_factory=list)
    rounds: int = 0
    usage: Usage = field(default_factory=Usage)
    llm_calls: int = 0
    wall_seconds: float = 0.0
    first_dispatch_seconds: float | None = None
    critical_path: tuple[list[int], float] = ([], 0.0)
    cost_usd: float | None = None


_ANSWER_ONLY_SCHEMA: dict[str, Any] = {
    **JOINER_SCHEMA,
    "properties": {**JOINER_SCHEMA["properties"], "action": {"type": "string", "enum": ["answer"]}},
}


class _LimitReached(Exception):
    """Raised inside a run to stop it at a usage limit; turned into `UsageLimitExceeded`."""


def _find_limit(exc: BaseException) -> _LimitReached | None:
    if isinstance(exc, _LimitReached):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            if (found := _find_limit(sub)) is not None:
                return found
    return None


def _describe_results(tasks: dict[int, Task], results: dict[int, ToolResult], limit: int = 700) -> str:
    """Each task and its result, for the joiner and the replanner. A task whose references all
    resolved is also shown with their values (``calculator(expression="443 - 356")``), which a
    small model reads far more reliably than ``$1 - $2``."""
    values = {k: r.value for k, r in results.items() if r.ok}
    lines = []
    for tid in sorted(tasks):
        task = tasks[tid]
        r = results.get(tid)
        out = r.describe(limit) if r is not None else "(not run)"
        head = task.render()
        if task.deps and task.deps <= values.keys():
            resolved = Task.model_construct(id=task.id, tool=task.tool, deps=frozenset(), thought=None,
                                            args=resolve_refs(task.args, values))
            shown = resolved.render().split(". ", 1)[1]
            if len(shown) <= 300:
                head += f"  [= {shown}]"
        lines.append(f"{head}\n   -> {out}")
    return "\n".join(lines)


class LLMCompiler:
    """Plan, execute in parallel, join; replan at most ``max_rounds - 1`` times.

    Args:
        model: the chat model for the planner and the joiner.
        registry: the tools a plan may call.
        examples: worked examples for the planner prompt (one is usually enough).
        max_rounds: plan/join rounds before the answer is given as partial.
        max_concurrency: cap on concurrently running tool calls (``None``: no cap).
        backend: executor backend (in-process by default).
        on_event: called synchronously with every `RunEvent` (plan task added, task
            started/finished, joiner decision); must be cheap.
        plan_max_tokens: output token cap of one planner call.
        plan_format: ``"text"`` (LLMCompiler's numbered calls, the default: measured more
            accurate with the local model, see results/parallelqa.json) or ``"json"`` (a
            ``{"tasks": [...]}`` object constrained by a JSON schema built from the registry).
        usage_limits: what one run may spend; reaching a limit raises `UsageLimitExceeded`
            with the partial `CompilerResult` as its ``partial``.
        cost: the USD cost of a `Usage` for this model (``None`` where the price is unknown);
            without it the cost is unknown and ``max_cost_usd`` cannot be enforced.
        replan: when the joiner may ask for a replan: ``"on_failure"`` (the default) only when
            a call failed or was skipped, a plan line was rejected, or no call was made — with
            every call successful its schema allows only an answer, because the local model
            asked for spurious replans of complete results; ``"joiner"`` lets it decide freely.
    """

    def __init__(
        self,
        model: ChatModel,
        registry: ToolRegistry,
        *,
        examples: Sequence[PlanExample] = (),
        max_rounds: int = 3,
        max_concurrency: int | None = None,
        backend: Any = None,
        on_event: Callable[[RunEvent], None] | None = None,
        plan_max_tokens: int = 512,
        joiner_max_tokens: int = 200,
        plan_format: Literal["text", "json"] = "text",
        usage_limits: UsageLimits | None = None,
        cost: Callable[[Usage], float | None] | None = None,
        replan: Literal["on_failure", "joiner"] = "on_failure",
    ) -> None:
        if max_rounds < 1:
            raise ValueError("max_rounds must be at least 1")
        self.model = model
        self.registry = registry
        self.examples = list(examples)
        self.max_rounds = max_rounds
        self.plan_max_tokens = plan_max_tokens
        self.joiner_max_tokens = joiner_max_tokens
        self._emit = on_event or (lambda e: None)
        self.scheduler = Scheduler(
            registry, backend=backend or LocalBackend(), max_concurrency=max_concurrency,
            on_event=self._emit,
        )
        if plan_format not in ("text", "json"):
            raise ValueError(f"plan_format must be 'text' or 'json', not {plan_format!r}")
        self.plan_format = plan_format
        self.usage_limits = usage_limits or UsageLimits()
        if self.usage_limits.max_cost_usd is not None and cost is None:
            raise ValueError("max_cost_usd needs a cost function (the model's price)")
        self._cost = cost
        if replan not in ("on_failure", "joiner"):
            raise ValueError(f"replan must be 'on_failure' or 'joiner', not {replan!r}")
        self.replan = replan
        self._system = planner_system_prompt(registry, self.examples, plan_format)
        self._plan_schema = (
            {"type": "json_schema", "json_schema": {"name": "plan", "schema": plan_array_schema(
                registry, refs="string")}} if plan_format == "json" else None
        )

    async def run(self, question: str, *, context: str | None = None) -> CompilerResult:
        """Answer ``question``; ``context`` (e.g. learned facts) is given to the planner.

        Raises:
            ModelError: the model endpoint failed (after its retries).
            UsageLimitExceeded: a usage limit was reached; ``partial`` holds the
                `CompilerResult` so far (finished results kept, running calls cancelled).
        """
        t0 = self._t0 = time.perf_counter()
        res = CompilerResult(answer="", cost_usd=self._cost(Usage()) if self._cost else None)

        def on_sched(ev: Any) -> None:
            if res.first_dispatch_seconds is None and isinstance(ev, TaskStarted):
                res.first_dispatch_seconds = time.perf_counter() - t0
            elif isinstance(ev, (TaskFinished, TaskSkipped)):
                res.results[ev.task.id] = ev.result  # kept even if the run stops early
            self._emit(ev)

        self.scheduler.on_event = on_sched
        stop: str | None = None
        try:
            with anyio.move_on_after(self.usage_limits.max_wall_seconds or float("inf")) as scope:
                await self._rounds(question, context, res)
            if scope.cancelled_caught:
                stop = f"usage limit reached: wall time {self.usage_limits.max_wall_seconds:g} s"
        except BaseException as exc:
            hit = _find_limit(exc)
            if hit is None:
                raise
            stop = str(hit)
        res.wall_seconds = time.perf_counter() - t0
        res.critical_path = critical_path(res.tasks, res.results)
        if stop is not None:
            for tid in res.tasks.keys() - res.results.keys():
                res.results[tid] = ToolResult.failure("cancelled", f"run stopped: {stop}")
            res.partial, res.reason = True, stop
            raise UsageLimitExceeded(stop, partial=res)
        return res

    async def _rounds(self, question: str, context: str | None, res: CompilerResult) -> None:
        feedback: str | None = None
        for round_no in range(1, self.max_rounds + 1):
            res.rounds = round_no
            self._emit(RoundStarted(round=round_no))
            await self._plan_and_execute(question, context, feedback, res)
            decision = await self._join(question, res)
            self._emit(decision)
            if decision.action == "answer" or round_no == self.max_rounds:
                res.answer = decision.answer
                if decision.action == "replan":
                    res.partial = True
                    res.reason = f"stopped after {self.max_rounds} rounds: {decision.thought}"
                failed = [t for t, r in res.results.items() if not r.ok]
                if failed and not res.partial and decision.action == "answer" and not any(
                    r.ok for r in res.results.values()
                ):
                    res.partial = True
                    res.reason = "every tool call failed"
                break
            feedback = decision.thought or "some results are missing or failed"

    def _account(self, res: CompilerResult, usage: Usage) -> None:
        """Add one LLM call's usage to ``res``; stop the run if a limit is now exceeded."""
        res.usage = res.usage + usage
        if self._cost is not None:
            res.cost_usd = self._cost(res.usage)
        if (msg := self.usage_limits.exceeded(res.usage, res.llm_calls, res.cost_usd)) is not None:
            raise _LimitReached(msg)

    def _before_llm_call(self, res: CompilerResult) -> None:
        """Count an LLM call about to start, unless a limit leaves no room for it."""
        if (msg := self.usage_limits.exhausted(res.usage, res.llm_calls, res.cost_usd)) is not None:
            raise _LimitReached(msg)
        res.llm_calls += 1

    def _event_handler(self, res: CompilerResult, validator: PlanValidator,
                       dispatch: Callable[[Task], None]) -> Callable[[list[Any]], bool]:
        """A function taking parser events: it validates each, records tasks and issues in
        ``res``, hands valid tasks to ``dispatch``, and returns True once the plan has ended."""

        def handle(events: list[Any]) -> bool:
            for ev in events:
                ev = validator.process(ev)
                if isinstance(ev, TaskParsed):
                    cap = self.usage_limits.max_tool_calls
                    if cap is not None and len(res.tasks) >= cap:
                        raise _LimitReached(f"usage limit reached: tool calls {cap} dispatched, "
                                            f"task {ev.task.id} would exceed the limit")
                    res.tasks[ev.task.id] = ev.task
                    self._emit(TaskAdded(task=ev.task))
                    dispatch(ev.task)
                elif isinstance(ev, PlanIssue):
                    res.issues.append(ev)
                    self._emit(PlanIssueSeen(issue=ev))
                elif isinstance(ev, PlanEnd):
                    return True
            return False

        return handle

    async def _plan_chunks(self, msgs: list[Message], res: CompilerResult) -> AsyncIterator[str]:
        """The planner's text as it streams; the call's usage is added to ``res`` at its end.

        The stream is read to its end even after the plan ended, for exact usage: a text plan
        stops at ``join()`` (the server ends the stream at once, freeing the slot, instead of
        letting a small model go on to answer the question itself)."""
        self._before_llm_call(res)
        stream = await self._plan_stream(msgs)
        async for delta in stream:
            if delta.done and delta.completion is not None:
                self._account(res, delta.completion.usage)
            elif delta.content:
                yield delta.content

    @staticmethod
    def _finish_plan(parser: TextPlanParser | JsonPlanParser, handle: Callable[[list[Any]], bool],
                     text: str, rest: str = "") -> None:
        """The stream ended before a plan end event: feed ``rest``, plus ``join()`` when the
        server stopped on it (it removes the stop string), then close the parser."""
        if _STOPPED_AT_JOIN.search(text):
            rest += JOIN_STOP
        if not handle(parser.feed(rest)):
            handle(parser.close())

    def _new_parser(self) -> TextPlanParser | JsonPlanParser:
        if self.plan_format == "json":
            return JsonPlanParser(self.registry)
        return TextPlanParser(self.registry)

    async def _plan_stream(self, msgs: list[Message]) -> Any:
        if self._plan_schema is not None:  # the schema ends the output; no stop string needed
            return await self.model.complete(msgs, stream=True, max_tokens=self.plan_max_tokens,
                                             response_format=self._plan_schema)
        return await self.model.complete(msgs, stream=True, max_tokens=self.plan_max_tokens,
                                         stop=[JOIN_STOP, END_OF_PLAN])

    def _planner_messages(self, question: str, context: str | None, feedback: str | None,
                          res: CompilerResult) -> list[Message]:
        user = f"Question: {question}"
        if context:
            user = f"Known context:\n{context}\n\n{user}"
        msgs = [Message(role="system", content=self._system), Message(role="user", content=user)]
        if res.tasks:
            next_id = max(res.tasks) + 1
            done = _describe_results(res.tasks, res.results)
            issues = "\n".join(f"- {i.message}" for i in res.issues[-5:])
            msgs.append(Message(role="user", content=(
                f"These calls were already made; do not repeat them, use $K to refer to their results:\n{done}\n"
                + (f"Problems found in the plan:\n{issues}\n" if issues else "")
                + f"What is missing: {feedback}\n"
                + (f"Write only the new calls, numbered from {next_id}, then {next_id}. join() if no call is needed."
                   if self.plan_format == "text" else
                   f"Write only the new tasks, with ids from {next_id}; an empty list if none is needed.")
            )))
        return msgs

    async def _plan_and_execute(self, question: str, context: str | None, feedback: str | None,
                                res: CompilerResult) -> None:
        parser = self._new_parser()
        validator = PlanValidator(self.registry, known_ids=set(res.tasks))
        msgs = self._planner_messages(question, context, feedback, res)
        async with self.scheduler.session(results=dict(res.results)) as session:
            handle = self._event_handler(res, validator, session.add)

            ended = False
            text: list[str] = []
            async for chunk in self._plan_chunks(msgs, res):
                if not ended:
                    text.append(chunk)
                    ended = handle(parser.feed(chunk))
            if not ended:
                self._finish_plan(parser, handle, "".join(text))
            session.close()
            results = await session.wait()
        res.results.update(results)

    async def _join(self, question: str, res: CompilerResult) -> JoinDecision:
        body = _describe_results(res.tasks, res.results) or "(no tool call was made)"
        if res.issues:
            body += "\nPlan problems:\n" + "\n".join(f"- {i.message}" for i in res.issues[-5:])
        msgs = [
            Message(role="system", content=joiner_system_prompt()),
            Message(role="user", content=f"Question: {question}\n\nResults:\n{body}"),
        ]
        schema = JOINER_SCHEMA
        if self.replan == "on_failure" and res.tasks and not res.issues and all(
                r.ok for r in res.results.values()):
            schema = _ANSWER_ONLY_SCHEMA
        self._before_llm_call(res)
        stream = await self.model.complete(
            msgs, stream=True, max_tokens=self.joiner_max_tokens,
            response_format={"type": "json_schema",
                             "json_schema": {"name": "join", "schema": schema, "strict": True}},
        )
        reader, parts = AnswerFieldReader(), []
        async for delta in stream:  # type: ignore[union-attr]
            if delta.done and delta.completion is not None:
                self._account(res, delta.completion.usage)
            elif delta.content:
                parts.append(delta.content)
                if piece := reader.feed(delta.content):
                    self._emit(AnswerDelta(text=piece))
        text = "".join(parts).strip()
        try:
            data = json.loads(text)
            return JoinDecision(action=data["action"], answer=str(data.get("answer", "")),
                                thought=str(data.get("thought", "")))
        except (ValueError, KeyError, TypeError):
            log.warning("joiner output is not the expected JSON; using it as the answer: %.200s", text)
            return JoinDecision(action="answer", answer=text, thought="joiner output was not JSON")


