"""The `Agent` facade: question in, answer out, with the plan, per-task results and usage."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import anyio
import anyio.to_thread

from agentrt.config import LOCAL_MODEL_NAME, Settings, get_settings
from agentrt.errors import ModelError, UsageLimitExceeded
from agentrt.executor import (
    ExecutorBackend,
    LocalBackend,
    SandboxedBackend,
    Task,
    default_backend,
)
from agentrt.llm import ChatModel, Usage
from agentrt.planner import CompilerResult, LLMCompiler, PlanExample, UsageLimits
from agentrt.tools import Tool, ToolRegistry, ToolResult, tool
from agentrt.tracing import Tracer, get_tracer

__all__ = ["Agent", "RunFinished", "RunResult", "RunStream"]

log = logging.getLogger(__name__)


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
        trace_id: the run's id in the trace store (``agentrt trace show ID``), or None when
            tracing is off.
        precomputed: the sleep-time prediction (`agentrt.sleeptime.Match`: predicted question,
            similarity, threshold) the answer was served from, else None: no planner or joiner
            call; ``llm_calls`` is 0, or 1 when a short verification call confirmed a match below
            the threshold (``precomputed.verified``).
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
    trace_id: str | None = None
    precomputed: Any = None

    @property
    def tool_calls(self) -> int:
        """Tool calls made (tasks not skipped for a failed dependency)."""
        return sum(1 for r in self.results.values() if r.error_kind != "skipped")

    @property
    def tool_reuses(self) -> int:
        """Tool calls answered from a stored sleep-time result (`ToolResult.reused`), not run."""
        return sum(1 for r in self.results.values() if r.reused)

    @classmethod
    def from_compiler(cls, res: CompilerResult, trace_id: str | None = None) -> RunResult:
        return cls(trace_id=trace_id,
            answer=res.answer, partial=res.partial, reason=res.reason,
            plan=[res.tasks[i] for i in sorted(res.tasks)], results=res.results, usage=res.usage,
            llm_calls=res.llm_calls, wall_seconds=res.wall_seconds,
            first_dispatch_seconds=res.first_dispatch_seconds, critical_path=res.critical_path,
            rounds=res.rounds, issues=[i.message for i in res.issues], cost_usd=res.cost_usd,
        )


@dataclass(frozen=True)
class RunFinished:
    """The last event of `Agent.stream`: the run's `RunResult`."""

    result: RunResult


class Agent:
    """An LLMCompiler agent over a set of tools.

    Args:
        model: a `ChatModel`; ``None`` uses the settings: ``base_url`` if set, else the embedded
            local engine (started on first use and stopped by `aclose`, or at the end of
            `run_sync`).
        tools: the tools (`Tool` objects or plain functions, made tools with `tool`), or a
            `ToolRegistry`.
        examples: worked plan examples for the planner prompt.
        max_rounds: plan/join rounds before a partial answer.
        max_concurrency: cap on concurrent tool calls.
        usage_limits: what each run may spend (tokens, LLM calls, tool calls, wall seconds, USD);
            a run reaching one raises `UsageLimitExceeded` whose ``partial`` is the `RunResult`
            so far.
        settings: configuration; defaults to `get_settings()`.
        on_event: called with every run event (see `agentrt.events`); must be cheap.
        tracing: record each run in the local trace store (``agentrt trace ...``): True (the
            default), False, or a `Tracer` to record with.
        sandbox: where tool calls run. ``"auto"`` (default): tools declaring
            ``runs_in="sandbox"`` run in the namespace sandbox, each call under its own cgroup
            limits, where this host can (else they are refused with ``denied``, never run
            unconfined, and a warning names what is missing); ``"namespace"`` / ``"docker"``:
            that sandbox backend, an error if unavailable; ``"none"``: no sandbox; or any
            `ExecutorBackend` (e.g. Ray's).
        sandbox_all: also run in-process tools in the sandbox (each call in a worker process
            under its tool's limits; slower, and the tool must be importable there).
        executor: ``"local"`` (default: this process, with ``sandbox``), or ``"ray"``: each tool
            call a Ray task sized by its `Limits` (a local Ray started and stopped by the agent,
            or the cluster at ``ray_address``), sandboxed on the worker as ``sandbox`` says.
        ray_address: ``None`` (a local Ray), ``"auto"``, ``"host:port"`` or ``"ray://host:10001"``.
        memory: the episodic memory: True (default) opens the configured store
            (``<data dir>/memory/memory.db``; without a usable embedder a warning says why and
            runs go unremembered), False for none, or a `MemoryStore`. Every run's episode
            (question, plan, results, answer) is appended, durably, before `run` returns; the
            planner is shown the most similar past episode when its question is close enough
            (cosine >= ``memory_threshold``).
        memory_session: session label of this agent's episodes (default ``"default"``).
        memory_threshold: cosine similarity of a past question to this one above which its
            episode is given to the planner.
        sleeptime: sleep-time compute (`agentrt.sleeptime`): False (default), True (a
            `SleepTimeScheduler` on this agent's memory store and model), or a scheduler to use.
            It needs memory and ``async with Agent(...)``, which starts and stops it. Then
            `attach_context` has a context anticipated while the agent is idle, and
            ``run(q, context=context_id)`` pre-empts sleep-time work at once, answers from a
            precomputed answer when ``q`` matches a predicted question above the scheduler's
            threshold (``RunResult.precomputed``), else gives the planner the learned context.
        plan_format: how the planner writes a plan: ``"text"`` (default), ``"json"``, or
            ``"parallel"`` (an outline of tool names, then every task's arguments decoded at once;
            on an endpoint other than a llama.cpp server the run uses ``"text"`` and logs why).
            See `LLMCompiler`.

    Use ``async with Agent(...) as agent: await agent.run(q)`` to keep the engine across runs.
    """

    def __init__(
        self,
        model: ChatModel | None = None,
        tools: Sequence[Tool | Callable[..., Any]] | ToolRegistry = (),
        *,
        examples: Sequence[PlanExample] = (),
        max_rounds: int = 3,
        max_concurrency: int | None = None,
        usage_limits: UsageLimits | None = None,
        settings: Settings | None = None,
        on_event: Callable[[Any], None] | None = None,
        tracing: bool | Tracer = True,
        sandbox: str | ExecutorBackend = "auto",
        sandbox_all: bool = False,
        executor: str = "local",
        ray_address: str | None = None,
        memory: Any = True,
        memory_session: str = "default",
        memory_threshold: float = 0.8,
        sleeptime: Any = False,
        plan_format: str = "text",
    ) -> None:
        if plan_format not in ("text", "json", "parallel"):
            raise ValueError(f"plan_format must be 'text', 'json' or 'parallel', not {plan_format!r}")
        self.plan_format = plan_format
        self.settings = settings or get_settings()
        self.registry = tools if isinstance(tools, ToolRegistry) else ToolRegistry(
            [t if isinstance(t, Tool) else tool(t) for t in tools])  # plain functions welcome
        self.examples = list(examples)
        self.max_rounds = max_rounds
        self.max_concurrency = max_concurrency
        self.usage_limits = usage_limits or UsageLimits()
        self.on_event = on_event
        self._tracing = tracing
        if executor not in ("local", "ray"):
            raise ValueError(f"executor must be 'local' or 'ray', not {executor!r}")
        if executor == "ray":
            if not isinstance(sandbox, str):
                raise ValueError("executor='ray' takes a sandbox name for its workers, not a backend")
            from agentrt.executor import ray_backend

            sandbox = ray_backend(ray_address, sandbox="namespace" if sandbox == "auto" else sandbox,
                                  sandbox_all=sandbox_all)
        elif ray_address is not None:
            raise ValueError("ray_address needs executor='ray'")
        self._sandbox_spec, self._sandbox_all = sandbox, sandbox_all
        self._backend: ExecutorBackend | None = None  # held open between runs by `async with`
        self._backend_stack: AsyncExitStack | None = None
        self._memory_spec, self._memory = memory, None
        self.memory_session, self.memory_threshold = memory_session, memory_threshold
        if sleeptime is not False and memory is False:
            raise ValueError("sleeptime needs memory (its learned context lives in the memory store)")
        self._sleeptime_spec, self.sleeptime = sleeptime, None  # the running SleepTimeScheduler
        self._model = model
        self._engine: Any = None
        self._local = False  # the model is the embedded local engine (cost 0 USD)

    async def _ensure_model(self) -> ChatModel:
        if self._model is None:
            from agentrt.llm import OpenAIChatModel, resolve_endpoint

            base_url, self._engine = await resolve_endpoint(self.settings)
            self._local = self.settings.uses_local_engine
            self._model = OpenAIChatModel.from_settings(self.settings, base_url=base_url)
        return self._model

    async def run(self, question: str, *, usage_limits: UsageLimits | None = None,
                  context: str | None = None) -> RunResult:
        """Answer ``question`` with a plan of parallel tool calls.

        Args:
            question: the question.
            usage_limits: limits for this run instead of the agent's.
            context: the id of a context given to `attach_context` (with ``sleeptime``): the
                answer may come from its precomputed answers, else its learned context goes to
                the planner.

        Raises:
            ModelError: the model endpoint failed after its retries; ``partial`` is the `RunResult`
                so far (finished tool results kept), or None.
            ModelNotInstalled: no endpoint is configured and the local model is not installed.
            UsageLimitExceeded: a usage limit was reached; ``partial`` is the `RunResult` so far
                (finished tool results kept, running calls cancelled, ``partial=True``).
        """
        if not isinstance(question, str) or not question.strip():
            raise ValueError("the question is empty")
        if context is not None and self.sleeptime is None:
            raise ValueError("context= needs Agent(sleeptime=...) used as `async with`")
        return await self._run(question, usage_limits, self.on_event, context)

    def attach_context(self, context_id: str, text: str, **kw: Any) -> str:
        """Attach a context (document, data set, conversation) for sleep-time compute: it is
        anticipated (notes, predicted questions with answers) while the agent is idle.

        Args:
            context_id: names it; pass it as ``run(q, context=context_id)``.
            text: the context.
            **kw: passed to `SleepTimeScheduler.attach` (``expected_queries``, ``questions``,
                ``notes_tokens``, ``predict_tokens``, ``budget``...).

        Returns the anticipate job's key (``agent.sleeptime.status()`` reports on it).

        Raises:
            RuntimeError: sleep-time compute is not running (``Agent(sleeptime=...)`` used as
                ``async with``).
        """
        if self.sleeptime is None:
            raise RuntimeError("attach_context needs Agent(sleeptime=...) used as `async with Agent(...)`")
        return self.sleeptime.attach(context_id, text, **kw)

    async def _run(self, question: str, usage_limits: UsageLimits | None,
                   on_event: Callable[[Any], None] | None, context_id: str | None = None) -> RunResult:
        model = await self._ensure_model()
        model_name = getattr(model, "model_name", None) or "unknown"
        local = self._local or model_name == LOCAL_MODEL_NAME
        tracer = self._tracer()
        async with AsyncExitStack() as stack:
            backend = self._backend
            if backend is None:  # not inside `async with agent`: a backend for this run only
                backend = await self._open_backend(stack)
            if self.sleeptime is not None and context_id is not None:  # reuse sleep-time tool results
                backend = self.sleeptime.reusing(backend, context_id)
            compiler = LLMCompiler(
                model, self.registry, examples=self.examples, max_rounds=self.max_rounds,
                max_concurrency=self.max_concurrency, on_event=on_event, backend=backend,
                usage_limits=usage_limits or self.usage_limits, tracer=tracer, model_name=model_name,
                local=local, engine_pid=self._engine_pid() if local else None,
                plan_format=self.plan_format,  # type: ignore[arg-type]
            )
            if self.sleeptime is None:
                return await self._traced_run(compiler, tracer, question, model_name)
            async with self.sleeptime.query(context_id):  # pre-empts sleep-time work at once
                return await self._traced_run(compiler, tracer, question, model_name, context_id)

    async def _open_backend(self, stack: AsyncExitStack) -> ExecutorBackend:
        """The executor backend ``sandbox`` names, entered on ``stack`` (which keeps a sandbox
        session's calls prewarmed while open)."""
        spec = self._sandbox_spec
        if not isinstance(spec, str):
            backend = spec
        elif spec == "none":
            backend = LocalBackend()
        elif spec == "auto":
            backend = default_backend("namespace")
            if isinstance(backend, SandboxedBackend):
                backend.sandbox_all = self._sandbox_all
        else:
            backend = SandboxedBackend(spec, sandbox_all=self._sandbox_all)
        if hasattr(backend, "__aenter__"):
            await stack.enter_async_context(backend)  # type: ignore[arg-type]
        return backend

    async def _traced_run(self, compiler: LLMCompiler, tracer: Tracer, question: str,
                          model_name: str, context_id: str | None = None) -> RunResult:
        store = await self._open_memory()
        with tracer.run(agent="agentrt", question=question) as run_span:
            trace_id = run_span.run_id if tracer.enabled else None
            run_span.set("gen_ai.request.model", model_name)
            context = None
            learned = ""
            if self.sleeptime is not None:
                with tracer.span("sleeptime recall", "memory") as span:
                    t0 = anyio.current_time()
                    hit = await self.sleeptime.amatch(question, context_id=context_id)
                    span.set("agentrt.sleeptime.served", hit is not None)
                    if hit is not None:
                        span.set("agentrt.sleeptime.similarity", hit.similarity)
                        span.set("agentrt.sleeptime.verified", hit.verified)
                        return await self._served(store, tracer, question, hit, trace_id,
                                                  anyio.current_time() - t0)
                    learned = await anyio.to_thread.run_sync(
                        lambda: self.sleeptime.learned_context(question, context_id=context_id))
            if store is not None:
                with tracer.span("memory recall", "memory") as span:
                    context = await anyio.to_thread.run_sync(self._recall, store, question)
                    span.set("agentrt.memory.recalled", bool(context))
            if learned:
                context = f"Learned about this context while idle:\n{learned}" + (f"\n\n{context}" if context else "")
            try:
                res = await compiler.run(question, context=context or None)
            except (UsageLimitExceeded, ModelError) as exc:
                if isinstance(exc.partial, CompilerResult):
                    if store is not None:
                        await self._remember(store, tracer, question, exc.partial)
                    exc.partial = RunResult.from_compiler(exc.partial, trace_id)
                raise
            run_span.set("agentrt.run.partial", res.partial)
            if self.sleeptime is not None:
                run_span.set("agentrt.sleeptime.tool_reuses", sum(1 for r in res.results.values() if r.reused))
            if store is not None:
                await self._remember(store, tracer, question, res)
        return RunResult.from_compiler(res, trace_id)

    async def _served(self, store: Any, tracer: Tracer, question: str, hit: Any, trace_id: str | None,
                      seconds: float) -> RunResult:
        """The `RunResult` of a run answered from a sleep-time precomputed answer (no LLM call)."""
        if store is not None:
            with tracer.span("memory append", "memory"):
                await anyio.to_thread.run_sync(lambda: store.append_episode(
                    self.memory_session, question, None, [], hit.answer,
                    meta={"precomputed": {"question": hit.question, "similarity": hit.similarity,
                                          "context_id": hit.context_id}}))
        usage = hit.usage or Usage()  # the verification call's, if one confirmed the match
        return RunResult(answer=hit.answer, partial=False, reason=None, plan=[], results={}, usage=usage,
                         llm_calls=int(hit.usage is not None), wall_seconds=seconds, first_dispatch_seconds=None,
                         critical_path=([], 0.0),
                         rounds=0, cost_usd=0.0, trace_id=trace_id, precomputed=hit)

    async def _open_memory(self) -> Any:
        """The memory store, opened on first use; None when memory is off or cannot open."""
        if self._memory is None and self._memory_spec is not False:
            if self._memory_spec is True:
                from agentrt.errors import AgentrtError
                from agentrt.memory_store import open_store

                try:
                    self._memory = await anyio.to_thread.run_sync(open_store, self.settings)
                except (AgentrtError, ImportError) as exc:
                    log.warning("runs will not be remembered: %s", exc)
                    self._memory_spec = False
            else:
                self._memory = self._memory_spec
        return self._memory

    def _recall(self, store: Any, question: str) -> str:
        """The most similar past episode as text, if its question is close enough, else ""."""
        return store.relevant_episodes(question, k=1, session=self.memory_session, max_chars=800,
                                       min_similarity=self.memory_threshold)

    async def _remember(self, store: Any, tracer: Tracer, question: str, res: CompilerResult) -> None:
        """Append the run's episode (durable when this returns)."""
        plan = "\n".join(res.tasks[i].render() for i in sorted(res.tasks))
        results = [{"tool": res.tasks[i].tool, "args": res.tasks[i].args, "ok": r.ok, "value": r.value,
                    "error": r.error} for i, r in sorted(res.results.items()) if i in res.tasks]
        meta = {"partial": res.partial, "reason": res.reason, "wall_seconds": res.wall_seconds}
        with tracer.span("memory append", "memory"):
            await anyio.to_thread.run_sync(lambda: store.append_episode(
                self.memory_session, question, plan or None, results, res.answer or None, meta=meta))

    def _tracer(self) -> Tracer:
        if isinstance(self._tracing, Tracer):
            return self._tracing
        return get_tracer() if self._tracing else Tracer(None)

    def _engine_pid(self) -> int | None:
        """The local engine's process (its CPU time is the LLM calls' energy), if known."""
        if self._engine is not None:
            return self._engine.pid or None
        from agentrt.llm import read_state

        state = read_state(self.settings)
        return state.pid if state is not None else None

    def stream(self, question: str, *, usage_limits: UsageLimits | None = None) -> RunStream:
        """Run ``question`` and yield its events as they happen.

        Use as ``async with agent.stream(q) as events: async for ev in events: ...``. The events
        are those of `agentrt.events`, ending with `RunFinished`; ``events.result`` holds the
        `RunResult` afterwards. Leaving the block early cancels the run. An error of the run
        (`UsageLimitExceeded`, `ModelError`, ...) is raised by the iteration, after the events
        that preceded it.
        """
        return RunStream(self, question, usage_limits)

    def run_sync(self, question: str) -> RunResult:
        """`run` for synchronous code; starts and stops the local engine if it needs one."""

        async def once() -> RunResult:
            try:
                return await self.run(question)
            finally:
                await self.aclose()

        return anyio.run(once)

    async def aclose(self) -> None:
        """Close the sandbox session, the memory store it opened, and the local engine it started."""
        stack, self._backend_stack, self._backend = self._backend_stack, None, None
        sleeptime, self.sleeptime = self.sleeptime, None
        if sleeptime is not None:  # stopped before the store it writes to is closed
            await sleeptime.__aexit__(None, None, None)
        if self._memory is not None and self._memory_spec is True:
            memory, self._memory = self._memory, None
            memory.close()
        try:
            if stack is not None:
                await stack.aclose()
        finally:
            engine, self._engine = self._engine, None
            if engine is not None:
                await engine.stop()
                self._model = None

    async def __aenter__(self) -> Agent:
        model = await self._ensure_model()
        stack = AsyncExitStack()
        self._backend = await self._open_backend(stack)
        self._backend_stack = stack
        if self._sleeptime_spec is not False:
            store = await self._open_memory()
            if store is None:
                await self.aclose()
                raise RuntimeError("sleeptime needs a memory store, and memory could not open (see the warning)")
            from agentrt.sleeptime import SleepTimeScheduler

            spec = self._sleeptime_spec
            sched = spec if isinstance(spec, SleepTimeScheduler) else SleepTimeScheduler(
                store, model, tracer=self._tracer(), tools=self.registry, tool_backend=self._backend)
            await sched.__aenter__()
            self.sleeptime = sched
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class RunStream:
    """The events of one run: an async iterator used inside ``async with`` (see `Agent.stream`).

    Attributes:
        result: the `RunResult` once the run has finished, else ``None``.
    """

    def __init__(self, agent: Agent, question: str, usage_limits: UsageLimits | None) -> None:
        self._agent, self._question, self._limits = agent, question, usage_limits
        self.result: RunResult | None = None
        self._error: Exception | None = None
        self._tg: Any = None

    async def __aenter__(self) -> RunStream:
        self._send, self._recv = anyio.create_memory_object_stream[Any](math.inf)
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._drive)
        return self

    async def _drive(self) -> None:
        user = self._agent.on_event

        def emit(ev: Any) -> None:
            if user is not None:
                user(ev)
            self._send.send_nowait(ev)

        with self._send:
            try:
                self.result = await self._agent._run(self._question, self._limits, emit)
            except Exception as exc:  # handed to the reader: raised from its iteration
                self._error = exc
                return
            self._send.send_nowait(RunFinished(result=self.result))

    def __aiter__(self) -> RunStream:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self._recv.receive()
        except anyio.EndOfStream:
            if self._error is not None:
                err, self._error = self._error, None
                raise err from None
            raise StopAsyncIteration from None

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool | None:
        if self.result is None:
            self._tg.cancel_scope.cancel()  # left early: stop the run
        try:
            # the block's own exception (e.g. the run's error re-raised by the iteration) is not
            # handed to the task group, which would wrap it in an ExceptionGroup; it propagates
            await self._tg.__aexit__(None, None, None)
        finally:
            self._recv.close()
        return None
