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

from agentrt.errors import ConfigError, ModelError, UsageLimitExceeded
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
from agentrt.tools import ToolRegistry, ToolResult, ToolUsage
from agentrt.tracing import (
    QUEUE_WAIT_SECONDS,
    Budget,
    EnergyMeter,
    Reservation,
    Span,
    Tracer,
    current_span,
    monotonic_to_ns,
    price,
    record_tool_result,
)

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


class _LLMCall:
    """One planner or joiner LLM call, as traced: its ``chat`` span (not made current, so tool
    calls dispatched meanwhile do not nest under it), the engine's energy over the call, and the
    budget's hold of its worst-case cost."""

    def __init__(self, span: Span, meter: EnergyMeter | None, hold: Reservation | None) -> None:
        self.span, self.meter, self.hold = span, meter, hold

    def settle(self, usage: Usage) -> None:
        self.span.record_usage(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
                               cached_input_tokens=usage.cached_tokens)
        if self.hold is not None:
            self.hold.settle(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
                             cached_input_tokens=usage.cached_tokens)
            self.hold = None

    def end(self, exc: BaseException | None = None) -> None:
        if self.hold is not None:
            self.hold.release()  # cut short before its usage was reported
        if self.meter is not None:
            self.meter.__exit__(None, None, None)
            if self.meter.energy is not None:
                self.span.record_energy(self.meter.energy.joules, self.meter.energy.method)
        if isinstance(exc, _LimitReached):  # the trace names the public error, not the internal signal
            exc = UsageLimitExceeded(str(exc))
        if exc is not None and not isinstance(exc, anyio.get_cancelled_exc_class()):
            self.span.record_exception(exc)
        self.span.end()


class _LimitReached(Exception):
    """Raised inside a run to stop it at a usage limit; turned into `UsageLimitExceeded`."""


def _unwrap(exc: BaseException) -> BaseException:
    """The one error inside task-group wrappers (``ExceptionGroup`` of a single exception), so a
    caller's ``except ModelError`` catches a failed model call; several errors stay grouped."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _find_limit(exc: BaseException) -> _LimitReached | None:
    if isinstance(exc, _LimitReached):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            if (found := _find_limit(sub)) is not None:
                return found
    return None


#: characters of a result the joiner sees when later calls consumed it and all of them succeeded:
#: its content reached the answer through them, and its full text (search pages, file bodies)
#: was about half of the joiner's prompt on ParallelQA, i.e. seconds of prompt evaluation there
CONSUMED_RESULT_CHARS = 200


def _describe_results(tasks: dict[int, Task], results: dict[int, ToolResult], limit: int = 700,
                      consumed_limit: int | None = None) -> str:
    """Each task and its result, for the joiner and the replanner. A task whose references all
    resolved is also shown with their values (``calculator(expression="443 - 356")``), which a
    small model reads far more reliably than ``$1 - $2``. With ``consumed_limit``, a result that
    other tasks took as input, all of them successfully, is cut to that many characters."""
    values = {k: r.value for k, r in results.items() if r.ok}
    consumers: dict[int, list[int]] = {}
    for task in tasks.values():
        for dep in task.deps:
            consumers.setdefault(dep, []).append(task.id)
    lines = []
    for tid in sorted(tasks):
        task = tasks[tid]
        r = results.get(tid)
        lim = limit
        if consumed_limit is not None and r is not None and r.ok and consumers.get(tid) and all(
                (c := results.get(u)) is not None and c.ok for u in consumers[tid]):
            lim = min(limit, consumed_limit)
        out = r.describe(lim) if r is not None else "(not run)"
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
            accurate with the local model, see results/parallelqa.json), ``"json"`` (a
            ``{"tasks": [...]}`` object constrained by a JSON schema built from the registry),
            or ``"parallel"`` (an outline of tool names, then every task's arguments decoded at
            once, see `agentrt.planner._parallel_plan`; needs a llama.cpp server: elsewhere the
            run uses ``"text"``, logs a warning and marks the run span
            ``agentrt.plan.format``/``agentrt.plan.fallback_reason``).
        usage_limits: what one run may spend; reaching a limit raises `UsageLimitExceeded`
            with the partial `CompilerResult` as its ``partial``.
        tracer: where spans go (``chat`` per LLM call, ``execute_tool`` per task, children of
            the span current when `run` is called); default: tracing off.
        model_name: the model's name for spans and prices (default: ``model.model_name``).
        local: the model is the embedded local engine (0 USD; energy from its process).
        engine_pid: process of the local engine, whose CPU time gives each call's energy.
        replan: when the joiner may ask for a replan: ``"on_failure"`` (the default) only when
            a call failed or was skipped, a plan line was rejected, or no call was made — with
            every call successful its schema allows only an answer, because the local model
            asked for spurious replans of complete results; ``"joiner"`` lets it decide freely.
    """

    #: the joiner sees a result that later calls consumed cut to this many characters (None: whole)
    joiner_consumed_chars: int | None = CONSUMED_RESULT_CHARS

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
        plan_format: Literal["text", "json", "parallel"] = "text",
        usage_limits: UsageLimits | None = None,
        replan: Literal["on_failure", "joiner"] = "on_failure",
        tracer: Tracer | None = None,
        model_name: str | None = None,
        local: bool = False,
        engine_pid: int | None = None,
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
        if plan_format not in ("text", "json", "parallel"):
            raise ValueError(f"plan_format must be 'text', 'json' or 'parallel', not {plan_format!r}")
        self.plan_format = plan_format
        self.usage_limits = usage_limits or UsageLimits()
        if replan not in ("on_failure", "joiner"):
            raise ValueError(f"replan must be 'on_failure' or 'joiner', not {replan!r}")
        self.replan = replan
        self.tracer = tracer or Tracer(None)
        self.model_name = model_name or getattr(model, "model_name", None) or "unknown"
        self.local, self.engine_pid = local, engine_pid
        if self.usage_limits.max_cost_usd is not None and self._price(Usage(input_tokens=1)) is None:
            raise ConfigError(f"max_cost_usd cannot be enforced: no price is known for model "
                              f"{self.model_name!r}; register one with agentrt.tracing.register_price()")
        self._budget: Budget | None = None
        self._parent: Span | None = None
        self._parallel: Any = None  # the ParallelPlanner of this run, when plan_format="parallel" works here
        self._system = planner_system_prompt(registry, self.examples, plan_format)
        self._plan_schema = (
            {"type": "json_schema", "json_schema": {"name": "plan", "schema": plan_array_schema(
                registry, refs="string")}} if plan_format == "json" else None
        )

    async def run(self, question: str, *, context: str | None = None) -> CompilerResult:
        """Answer ``question``; ``context`` (e.g. learned facts) is given to the planner.

        Raises:
            ModelError: the model endpoint failed (after its retries); its ``partial`` holds the
                `CompilerResult` so far (e.g. round 1's results when a replan call failed).
            UsageLimitExceeded: a usage limit was reached; ``partial`` holds the
                `CompilerResult` so far (finished results kept, running calls cancelled).
        """
        t0 = self._t0 = time.perf_counter()
        res = CompilerResult(answer="", cost_usd=self._price(Usage()))
        self._parent = current_span()
        limit_usd = self.usage_limits.max_cost_usd
        self._budget = Budget(usd=limit_usd) if limit_usd is not None else None
        tool_spans: dict[int, Span] = {}

        def on_sched(ev: Any) -> None:
            if isinstance(ev, TaskStarted):
                if res.first_dispatch_seconds is None:
                    res.first_dispatch_seconds = time.perf_counter() - t0
                span = tool_spans[ev.task.id] = self.tracer.tool(
                    ev.task.tool, task_id=ev.task.id, deps=ev.task.deps, call_id=str(ev.task.id),
                    parent=self._parent, start_ns=monotonic_to_ns(ev.at))
                span.set(QUEUE_WAIT_SECONDS, max(0.0, ev.at - ev.ready_at))
            elif isinstance(ev, (TaskFinished, TaskSkipped)):
                res.results[ev.task.id] = ev.result  # kept even if the run stops early
                span = tool_spans.pop(ev.task.id, None)
                if span is None:  # never started (skipped, or refused before its tool ran)
                    span = self.tracer.tool(ev.task.tool, task_id=ev.task.id, deps=ev.task.deps,
                                            call_id=str(ev.task.id), parent=self._parent,
                                            start_ns=monotonic_to_ns(ev.at))
                record_tool_result(span, ev.result.usage, ok=ev.result.ok, error_kind=ev.result.error_kind,
                                   end_ns=monotonic_to_ns(ev.at))
            self._emit(ev)

        self.scheduler.on_event = on_sched
        stop: str | None = None
        if self.plan_format == "parallel":
            self._parallel = await self._open_parallel()
        try:
            with anyio.move_on_after(self.usage_limits.max_wall_seconds or float("inf")) as scope:
                await self._rounds(question, context, res)
            if scope.cancelled_caught:
                stop = f"usage limit reached: wall time {self.usage_limits.max_wall_seconds:g} s"
        except BaseException as exc:
            hit = _find_limit(exc)
            if hit is None:
                err = _unwrap(exc)
                if isinstance(err, ModelError):  # keep what finished, e.g. round 1's results
                    self._stopped(res, t0, tool_spans, f"model error: {err}")
                    err.partial = res
                raise err from None
            stop = str(hit)
        finally:
            if self._parallel is not None:
                await self._parallel.aclose()
                self._parallel = None
        self._stopped(res, t0, tool_spans, stop)
        if stop is not None:
            raise UsageLimitExceeded(stop, partial=res)
        return res

    @staticmethod
    def _stopped(res: CompilerResult, t0: float, tool_spans: dict[int, Span], stop: str | None) -> None:
        """Close the books of a run: wall time, critical path, spans of calls still open; when it
        stopped early (``stop`` says why), unfinished calls become ``cancelled`` results."""
        res.wall_seconds = time.perf_counter() - t0
        res.critical_path = critical_path(res.tasks, res.results)
        for span in tool_spans.values():  # calls cancelled when the run stopped
            record_tool_result(span, ToolUsage(), ok=False, error_kind="cancelled")
        tool_spans.clear()
        if stop is not None:
            for tid in res.tasks.keys() - res.results.keys():
                res.results[tid] = ToolResult.failure("cancelled", f"run stopped: {stop}")
            res.partial, res.reason = True, stop

    async def _rounds(self, question: str, context: str | None, res: CompilerResult) -> None:
        feedback: str | None = None
        for round_no in range(1, self.max_rounds + 1):
            res.rounds = round_no
            self._emit(RoundStarted(round=round_no))
            await self._plan_and_execute(question, context, feedback, res)
            decision = await self._join(question, res, last=round_no == self.max_rounds)
            self._emit(decision)
            if decision.action == "answer" or round_no == self.max_rounds:
                res.answer = decision.answer
                failed = [t for t, r in res.results.items() if not r.ok]
                if decision.action == "replan":
                    res.partial = True
                    res.reason = f"stopped after {self.max_rounds} rounds: {decision.thought}"
                elif failed and not any(r.ok for r in res.results.values()):
                    res.partial = True
                    res.reason = "every tool call failed"
                elif round_no == self.max_rounds and (failed or res.issues):
                    res.partial = True  # answered because no round was left, not because all was there
                    res.reason = (f"answered in the last of {self.max_rounds} rounds with {len(failed)} failed "
                                  f"call(s) and {len(res.issues)} plan problem(s)")
                break
            feedback = decision.thought or "some results are missing or failed"

    def _account(self, res: CompilerResult, usage: Usage, call: _LLMCall) -> None:
        """Add one LLM call's usage to ``res`` and its trace; stop the run if a limit is now exceeded."""
        call.settle(usage)
        res.usage = res.usage + usage
        res.cost_usd = self._price(res.usage)
        if (msg := self.usage_limits.exceeded(res.usage, res.llm_calls, res.cost_usd)) is not None:
            raise _LimitReached(msg)

    def _price(self, usage: Usage) -> float | None:
        """USD of ``usage`` for this model (genai-prices or a registered price; 0 when local),
        or None when no price is known."""
        cost = price(self.model_name, input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
                     cached_input_tokens=min(usage.cached_tokens, usage.input_tokens), local=self.local)
        return None if cost.usd is None else float(cost.usd)

    def _before_llm_call(self, res: CompilerResult, role: str, msgs: list[Message],
                         max_tokens: int) -> _LLMCall:
        """Count an LLM call about to start, unless a limit leaves no room for it; open its span,
        start measuring the engine's energy, and hold its worst-case cost against the budget
        (prompt tokens bounded by the prompt's UTF-8 bytes: a token is at least one byte)."""
        if (msg := self.usage_limits.exhausted(res.usage, res.llm_calls, res.cost_usd)) is not None:
            raise _LimitReached(msg)
        hold = None
        if self._budget is not None:
            prompt_bytes = sum(len((m.content or "").encode()) + 8 for m in msgs)
            try:
                hold = self._budget.reserve(self.model_name, prompt_tokens=prompt_bytes,
                                            max_tokens=max_tokens, local=self.local)
            except UsageLimitExceeded as exc:
                raise _LimitReached(f"usage limit reached: {exc}") from None
        res.llm_calls += 1
        span = self.tracer.chat(self.model_name, max_tokens=max_tokens, local=self.local)
        span.set("agentrt.llm.role", role)
        meter = None
        if self.engine_pid:
            meter = EnergyMeter(pid=self.engine_pid)
            meter.__enter__()
        return _LLMCall(span, meter, hold)

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
        call = self._before_llm_call(res, "planner", msgs, self.plan_max_tokens)
        try:
            stream = await self._plan_stream(msgs)
            async for delta in stream:
                if delta.done and delta.completion is not None:
                    self._account(res, delta.completion.usage, call)
                elif delta.content:
                    yield delta.content
        except BaseException as exc:
            call.end(exc)
            raise
        call.end()

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

    async def _open_parallel(self) -> Any:
        """The run's `ParallelPlanner`, or None (and a warning) where the endpoint lacks what it needs."""
        from agentrt.planner._parallel_plan import ParallelPlanner

        inner, base_url = self.model, None
        while base_url is None and inner is not None:  # wrappers (e.g. a bench's) keep the client as .model
            base_url, inner = getattr(inner, "base_url", None), getattr(inner, "model", None)
        why = None if isinstance(base_url, str) else "the model is not an OpenAI-compatible HTTP endpoint"
        planner = None
        if why is None:
            planner = ParallelPlanner(self.registry, self.examples, base_url)
            why = await planner.unsupported()
        if why is not None:
            log.warning("parallel plan decoding unavailable (%s); using the text plan", why)
            if self._parent is not None:
                self._parent.set("agentrt.plan.fallback_reason", why)
            if planner is not None:
                await planner.aclose()
            planner = None
        if self._parent is not None:
            self._parent.set("agentrt.plan.format", "parallel" if planner is not None else "text")
        return planner

    async def _plan_and_execute(self, question: str, context: str | None, feedback: str | None,
                                res: CompilerResult) -> None:
        if self._parallel is not None:
            await self._parallel.plan_and_execute(self, question, context, feedback, res)
            return
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

    async def _join(self, question: str, res: CompilerResult, *, last: bool = False) -> JoinDecision:
        """The joiner's decision. In the ``last`` round a replan could not run, so its schema allows
        only an answer and it is asked to answer from what it has and say what is missing (asked
        for a replan there, the local model wrote its replan note as the answer)."""
        body = _describe_results(res.tasks, res.results,
                                 consumed_limit=self.joiner_consumed_chars) or "(no tool call was made)"
        if res.issues:
            body += "\nPlan problems:\n" + "\n".join(f"- {i.message}" for i in res.issues[-5:])
        msgs = [
            Message(role="system", content=joiner_system_prompt()),
            Message(role="user", content=f"Question: {question}\n\nResults:\n{body}" + (
                "\n\nNo more calls can be made: answer from these results, and say what is missing "
                "if they do not give the whole answer." if last else "")),
        ]
        schema = JOINER_SCHEMA
        if last or (self.replan == "on_failure" and res.tasks and not res.issues and all(
                r.ok for r in res.results.values())):
            schema = _ANSWER_ONLY_SCHEMA
        call = self._before_llm_call(res, "joiner", msgs, self.joiner_max_tokens)
        reader, parts = AnswerFieldReader(), []
        try:
            stream = await self.model.complete(
                msgs, stream=True, max_tokens=self.joiner_max_tokens,
                response_format={"type": "json_schema",
                                 "json_schema": {"name": "join", "schema": schema, "strict": True}},
            )
            async for delta in stream:  # type: ignore[union-attr]
                if delta.done and delta.completion is not None:
                    self._account(res, delta.completion.usage, call)
                elif delta.content:
                    parts.append(delta.content)
                    if piece := reader.feed(delta.content):
                        self._emit(AnswerDelta(text=piece))
        except BaseException as exc:
            call.end(exc)
            raise
        call.end()
        text = "".join(parts).strip()
        try:
            data = json.loads(text)
            return JoinDecision(action=data["action"], answer=str(data.get("answer", "")),
                                thought=str(data.get("thought", "")))
        except (ValueError, KeyError, TypeError):
            log.warning("joiner output is not the expected JSON; using it as the answer: %.200s", text)
            return JoinDecision(action="answer", answer=text, thought="joiner output was not JSON")


