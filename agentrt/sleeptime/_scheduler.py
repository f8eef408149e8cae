"""`SleepTimeScheduler`: runs sleep-time jobs while a session is idle, pre-empted by every query.

Structured concurrency: the scheduler's worker is a task in the scheduler's own task group,
started by ``async with SleepTimeScheduler(...)`` and cancelled when that block exits; no job
outlives it. Each job attempt runs in its own cancel scope; a query entering
``async with scheduler.query():`` cancels that scope synchronously and returns at once (it never
waits for the job), and the job resumes from its last stored step once the session is idle again.

Triggers (completed runs are counted when ``query()`` exits, never mid-run: Letta #3104):

* a context is attached (:meth:`attach`): ``anticipate`` it at the next idle moment;
* ``every_n_runs`` runs completed since the last consolidation: ``consolidate`` at the next idle
  moment;
* a run completed and no query came for ``idle_after_s``: ``consolidate`` the runs since the last one;
* maintenance is due (the store's exact buffer needs folding into the index, or
  ``maintain_every_forgets`` facts were superseded, or :meth:`request_maintenance`): ``maintain``.

"Idle" means no query has been active for ``min_idle_s`` (a debounce, so back-to-back queries of
one conversation are not interleaved with sleep-time LLM calls).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Self

import anyio

from agentrt.executor import ExecutorBackend
from agentrt.llm import ChatModel
from agentrt.memory_store import MemoryStore
from agentrt.sleeptime._budget import (
    ContextStats,
    JobBudget,
    allocate_tokens,
    predictability,
)
from agentrt.sleeptime._jobs import (
    Anticipate,
    BudgetExhausted,
    Consolidate,
    Job,
    JobContext,
    JobState,
    Maintain,
    job_span,
)
from agentrt.sleeptime._learned import (
    DEFAULT_MATCH_THRESHOLD,
    LearnedMemory,
    Match,
)
from agentrt.sleeptime._reuse import (
    DEFAULT_TOOL_TTL_S,
    ReusingBackend,
    ToolResultStore,
    reusable,
)
from agentrt.tools import Tool
from agentrt.tracing import Budget, Tracer, get_tracer

__all__ = ["SleepTimeScheduler"]

log = logging.getLogger(__name__)

_PRIORITY = {"anticipate": 0, "consolidate": 1, "maintain": 2}


@dataclass
class _Pending:
    job: Job
    budget: JobBudget
    not_before: float = 0.0
    state: JobState = field(default_factory=JobState)
    seq: int = 0


class SleepTimeScheduler:
    """Owns sleep-time work for one runtime (or session): triggers, budgets, pre-emption.

    Args:
        store: the memory store jobs read and write (with an embedder: jobs embed what they store).
        model: the chat model jobs call (the same local engine as the runs is fine: a query
            pre-empts the job's call, which frees the slot).
        idle_after_s: seconds without a query after a run before the runs are consolidated.
        min_idle_s: seconds without a query before any job starts or resumes.
        every_n_runs: consolidate after this many completed runs (0: never by count).
        consolidate_on_idle: consolidate after ``idle_after_s`` of idleness (if any run happened).
        job_budget: the default token and time budget of one job (anticipate budgets may be
            lowered by the allocation, see ``total_tokens``).
        total_tokens: the sleep-time token budget of this scheduler's life over all jobs; None
            means unlimited (each job still has ``job_budget``). Anticipate jobs get shares of
            what is left by :func:`allocate_tokens` (expected queries x predictability).
        threshold: cosine threshold of :meth:`match` (calibrate it: :func:`calibrate_threshold`).
        verify_floor: :meth:`amatch` checks a best candidate with similarity in
            ``[verify_floor, threshold)`` by one short call of ``model`` (:func:`verify_match`)
            and serves it if confirmed; None (default): never (similarity alone decides). Off by
            default: in results/sleeptime.json the 1.5B model's check accepted 10 of 16 candidates,
            of which 2 were right (GSM8K 2/4, LoCoMo 0/6); use it with a stronger model, e.g.
            ``DEFAULT_VERIFY_FLOOR``.
        maintain_every_forgets: facts superseded (forgotten) by consolidation after which a
            ``maintain`` job is queued; one is also queued whenever the store's exact buffer is
            due to be folded into the ANN index (``store.index.needs_compaction()``).
        tracer: where job spans go (default: ``agentrt.tracing.get_tracer()``).
        on_progress: called with short progress lines (e.g. the CLI's console).
        tools: tools ``anticipate`` may call while idle (only read-only AND idempotent ones);
            their results are reused by runs while valid (:meth:`reusing`).
        tool_backend: runs those calls (default: ``agentrt.executor.LocalBackend``).
        tool_ttl_s: seconds a stored tool result stays valid.
        max_tool_calls: tool calls the model may propose per context (0: only ``prefetch``).

    Use::

        async with SleepTimeScheduler(store, model) as sleep:
            sleep.attach("report", text, expected_queries=5)
            async with sleep.query("report"):          # pre-empts sleep-time work at once
                hit = await sleep.amatch(question, context_id="report")
                context = sleep.learned_context(question, context_id="report")
                ...                                     # answer: hit.answer, or plan with context
    """

    def __init__(self, store: MemoryStore, model: ChatModel, *, idle_after_s: float = 30.0, min_idle_s: float = 1.0,
                 every_n_runs: int = 5, consolidate_on_idle: bool = True, job_budget: JobBudget | None = None,
                 total_tokens: int | None = None, threshold: float = DEFAULT_MATCH_THRESHOLD,
                 verify_floor: float | None = None,
                 maintain_every_forgets: int = 1000, tracer: Tracer | None = None,
                 on_progress: Callable[[str], None] | None = None, tools: Iterable[Tool] = (),
                 tool_backend: ExecutorBackend | None = None, tool_ttl_s: float = DEFAULT_TOOL_TTL_S,
                 max_tool_calls: int = 4) -> None:
        self.store, self.model = store, model
        self.idle_after_s, self.min_idle_s = idle_after_s, min_idle_s
        self.every_n_runs, self.consolidate_on_idle = every_n_runs, consolidate_on_idle
        self.job_budget = job_budget or JobBudget()
        self.total_tokens = total_tokens
        self.maintain_every_forgets = maintain_every_forgets
        self.tracer = tracer
        self.on_progress = on_progress
        self.learned = LearnedMemory(store, threshold=threshold)
        self.verify_floor = verify_floor
        self.tools = [t for t in tools if reusable(t)]
        self.tool_backend, self.max_tool_calls = tool_backend, max_tool_calls
        self.tool_results = ToolResultStore(store, ttl_s=tool_ttl_s)
        self.contexts: dict[str, ContextStats] = {}
        self.spent_tokens = 0
        self._context_spent: dict[str, int] = {}
        self.history: list[dict] = []
        self.preemptions = 0
        self._pending: dict[str, _Pending] = {}
        self._seq = 0
        self._active = 0
        self._last_query_end: float | None = None
        self._runs_since_consolidate = 0
        self._forgets_since_maintain = 0
        self._current: anyio.CancelScope | None = None
        self._current_key: str | None = None
        self._wake = anyio.Event()
        self._idle = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None
        self._closing = False

    # ---- lifecycle -------------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._worker)
        return self

    async def __aexit__(self, *exc: object) -> bool | None:
        self._closing = True
        if self._current is not None:
            self._current.cancel()
        assert self._tg is not None
        self._tg.cancel_scope.cancel()
        return await self._tg.__aexit__(*exc)

    # ---- triggers --------------------------------------------------------------------------------
    def attach(self, context_id: str, text: str, *, expected_queries: float = 1.0,
               predictability: float | None = None, questions: int | None = None,
               notes_tokens: int = 512, predict_tokens: int = 384, passage_chars: int = 400,
               budget: JobBudget | None = None, prefetch: Sequence[tuple[str, dict]] = ()) -> str:
        """Attach a context (document, data set, conversation): ``anticipate`` it when idle.

        Args:
            context_id: names it; queries pass it to :meth:`query` / :meth:`match`.
            text: the context.
            expected_queries: how many queries about it the caller expects (for budget sharing).
            predictability: in [0, 1] if known; else estimated from past match hits.
            questions: how many questions to predict (default ``min(8, max(3, 2 x expected_queries))``).
            notes_tokens: ``max_tokens`` of the notes call (how long the model may think).
            predict_tokens: ``max_tokens`` of the call predicting questions with answers.
            passage_chars: the text is also stored as passages of about this many characters,
                so a query gets the passages closest to it (0: none).
            budget: this job's budget (default: the scheduler's, possibly lowered by allocation).
            prefetch: ``(tool name, args)`` calls of the scheduler's ``tools`` to run and store
                in any case (besides those the model proposes).

        Returns the job key (``status()`` reports on it).
        """
        stats = self.contexts.setdefault(context_id, ContextStats())
        stats.expected_queries = expected_queries
        stats.predictability = predictability
        n = questions if questions is not None else int(min(8, max(3, round(2 * expected_queries))))
        job = Anticipate(context_id, text, questions=n, notes_tokens=notes_tokens, predict_tokens=predict_tokens,
                         passage_chars=passage_chars, tools=self.tools, prefetch=prefetch,
                         max_tool_calls=self.max_tool_calls, backend=self.tool_backend,
                         results=self.tool_results)
        self._enqueue(job, budget)
        return job.key

    def request_maintenance(self, *, force: bool = False) -> None:
        """Queue a ``maintain`` job (index snapshot if due or ``force``, GC) for the next idle moment."""
        self._enqueue(Maintain(force=force), None)

    def consolidate_now(self) -> None:
        """Queue a ``consolidate`` job for the next idle moment."""
        self._enqueue(Consolidate(), None)

    def _enqueue(self, job: Job, budget: JobBudget | None, not_before: float = 0.0) -> None:
        old = self._pending.get(job.key)
        if old is not None:  # the same work is already queued: keep its spent budget
            old.not_before = max(old.not_before, not_before) if not_before else old.not_before
            self._wake.set()
            return
        self._seq += 1
        self._pending[job.key] = _Pending(job, budget or self.job_budget, not_before, seq=self._seq)
        self._wake.set()

    # ---- test time -------------------------------------------------------------------------------
    @asynccontextmanager
    async def query(self, context_id: str | None = None) -> AsyncIterator[None]:
        """Wrap one run: sleep-time work is pre-empted at once (cancelled, to resume later).

        Entering never waits for the job: its cancel scope is cancelled synchronously and the
        job unwinds on its own. On a normal exit the run counts as completed (for
        ``every_n_runs``); the idle timers restart either way.
        """
        self._active += 1
        if self._current is not None:
            self._current.cancel()
        if context_id is not None:
            self.contexts.setdefault(context_id, ContextStats()).queries += 1
        self._wake.set()
        completed = False
        try:
            yield
            completed = True
        finally:
            self._active -= 1
            self._last_query_end = time.monotonic()
            if completed:
                self._after_run()
            self._wake.set()

    def _after_run(self) -> None:
        self._runs_since_consolidate += 1
        if self.every_n_runs and self._runs_since_consolidate >= self.every_n_runs:
            self._runs_since_consolidate = 0
            self._enqueue(Consolidate(), None)
        elif self.consolidate_on_idle:
            pend = self._pending.get("consolidate")
            due = time.monotonic() + self.idle_after_s
            if pend is None:
                self._enqueue(Consolidate(), None, not_before=due)
            elif pend.state.status == "pending":
                pend.not_before = max(pend.not_before, due)
        self._maintenance_check()

    def _maintenance_check(self) -> None:
        if self.store.index.needs_compaction() or self._forgets_since_maintain >= self.maintain_every_forgets:
            self._forgets_since_maintain = 0
            self._enqueue(Maintain(), None, not_before=time.monotonic() + self.idle_after_s)

    def learned_context(self, question: str | None = None, *, context_id: str | None = None) -> str:
        """Learned context text for the planner (``LLMCompiler.run(question, context=...)``)."""
        return self.learned.learned_context(question, context_id=context_id)

    def match(self, question: str, *, context_id: str | None = None) -> Match | None:
        """A precomputed answer above the threshold, or None; counts hits for predictability."""
        m = self.learned.match(question, context_id=context_id)
        if m is not None:
            self.contexts.setdefault(m.context_id, ContextStats()).hits += 1
        return m

    async def amatch(self, question: str, *, context_id: str | None = None) -> Match | None:
        """:meth:`match`, plus verification of a candidate in ``[verify_floor, threshold)`` by one
        short call of the scheduler's model (``Match.verified``, ``Match.usage``); call it inside
        :meth:`query` (sleep-time work is pre-empted, so the call does not queue behind a job).

        Raises:
            ModelError: the verification call failed.
        """
        m = await self.learned.amatch(question, context_id=context_id, model=self.model,
                                      verify_floor=self.verify_floor)
        if m is not None:
            self.contexts.setdefault(m.context_id, ContextStats()).hits += 1
        return m

    def reusing(self, backend: ExecutorBackend, context_id: str) -> ReusingBackend:
        """``backend`` for one run about ``context_id``: a call of a read-only idempotent tool with
        the same arguments as a valid sleep-time call returns its stored result
        (``ToolResult.reused``; the returned backend's ``reused`` lists the task ids)."""
        return ReusingBackend(backend, self.tool_results, [context_id])

    # ---- state -----------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """A job attempt is running now."""
        return self._current is not None

    async def wait_idle(self, *, include_scheduled: bool = False) -> None:
        """Return when no job is running and none is due now (with ``include_scheduled``: none
        is pending at all, so also wait for jobs scheduled later, e.g. an idle consolidation)."""
        while True:
            now = time.monotonic()
            pending = [p for p in self._pending.values() if include_scheduled or p.not_before <= now]
            if self._current is None and not pending:
                return
            if self._idle.is_set():
                self._idle = anyio.Event()
            await self._idle.wait()

    def status(self) -> dict:
        """Pending jobs, finished attempts, contexts and their stats, tokens spent."""
        return {"pending": [{"key": k, "kind": p.job.kind, "status": p.state.status, "tokens": p.state.tokens,
                             "seconds": round(p.state.seconds, 3), "preemptions": p.state.preemptions,
                             "steps_done": list(p.state.steps_done)} for k, p in self._pending.items()],
                "running": self._current_key, "history": list(self.history),
                "contexts": {c: {**s.as_dict(), "predictability_used": round(predictability(s), 3),
                                 "spent_tokens": self._context_spent.get(c, 0)}
                             for c, s in self.contexts.items()},
                "spent_tokens": self.spent_tokens, "total_tokens": self.total_tokens,
                "remaining_tokens": None if self.total_tokens is None else self.total_tokens - self.spent_tokens,
                "preemptions": self.preemptions}

    # ---- the worker ------------------------------------------------------------------------------
    def _ready(self, now: float) -> _Pending | None:
        if self._active or self._closing:
            return None
        if self._last_query_end is not None and now - self._last_query_end < self.min_idle_s:
            return None
        ready = [p for p in self._pending.values() if p.not_before <= now]
        if not ready:
            return None
        return min(ready, key=lambda p: (_PRIORITY.get(p.job.kind, 9), p.seq))

    def _next_wake(self, now: float) -> float:
        if self._active or not self._pending:
            return math.inf
        t = min(p.not_before for p in self._pending.values())
        if self._last_query_end is not None:
            t = max(t, self._last_query_end + self.min_idle_s)
        return max(t - now, 0.0)

    async def _worker(self) -> None:
        while True:
            now = time.monotonic()
            pend = self._ready(now)
            if pend is not None:
                await self._attempt(pend)
                self._idle.set()  # wait_idle callers re-check
                continue
            self._idle.set()
            wait = self._next_wake(now)
            with anyio.move_on_after(wait if wait != math.inf else None):
                await self._wake.wait()
            self._wake = anyio.Event()

    def _token_limit(self, pend: _Pending) -> int:
        """Tokens this attempt may use: the job's budget minus what it spent, and with a total
        budget, the context's share of the total (allocated over every attached context by
        expected queries x predictability) minus what that context already spent."""
        limit = pend.budget.tokens - pend.state.tokens
        if self.total_tokens is not None:
            cid = pend.job.context_id
            if pend.job.kind == "anticipate" and cid is not None:
                share = allocate_tokens(self.total_tokens, self.contexts).get(cid, 0)
                limit = min(limit, share - self._context_spent.get(cid, 0))
            limit = min(limit, self.total_tokens - self.spent_tokens)
        return max(limit, 0)

    async def _attempt(self, pend: _Pending) -> None:
        job, state = pend.job, pend.state
        tracer = self.tracer or get_tracer()
        seconds_left = pend.budget.seconds - state.seconds
        budget = Budget(tokens=self._token_limit(pend))
        state.attempts += 1
        state.status = "running"
        before = state.tokens
        started = time.monotonic()
        result: dict | None = None
        scope = anyio.CancelScope()
        self._current, self._current_key = scope, job.key
        jc = JobContext(self.store, self.model, job.key, job.session, budget, tracer, state, self.on_progress)
        span = job_span(tracer, job)
        try:
            with span, scope:
                span.set("agentrt.sleeptime.attempt", state.attempts)
                span.set("agentrt.sleeptime.budget_tokens", budget.limit_tokens)
                try:
                    with anyio.fail_after(max(seconds_left, 0.0)):
                        result = await job.run(jc)
                    state.status = "done"
                except BudgetExhausted as exc:
                    state.status, state.error = "budget", str(exc)
                except TimeoutError:
                    state.status, state.error = "timeout", f"time budget of {pend.budget.seconds} s spent"
                except Exception as exc:  # a failed job is reported, not retried (no unbounded burn)
                    log.exception("sleep-time job %s failed", job.key)
                    state.status, state.error = "error", f"{type(exc).__name__}: {exc}"
                span.set("agentrt.sleeptime.status", state.status)
        finally:
            self._current, self._current_key = None, None
            state.seconds += time.monotonic() - started
            self.spent_tokens += state.tokens - before
            if job.context_id is not None:
                self._context_spent[job.context_id] = self._context_spent.get(job.context_id, 0) + state.tokens - before
        if scope.cancelled_caught or state.status == "running":
            state.status = "preempted"
            state.preemptions += 1
            self.preemptions += 1
            if self.on_progress:
                self.on_progress(f"{job.key}: pre-empted by a query; will resume")
            return
        if job.kind == "consolidate":
            self._runs_since_consolidate = 0
            self._forgets_since_maintain += (result or {}).get("superseded", 0)
        if job.kind != "maintain" and state.status == "done":
            self._maintenance_check()
        self._pending.pop(job.key, None)
        self.history.append({"key": job.key, "kind": job.kind, "status": state.status, "error": state.error,
                             "tokens": state.tokens, "input_tokens": state.input_tokens,
                             "output_tokens": state.output_tokens,
                             "cached_input_tokens": state.cached_input_tokens, "seconds": round(state.seconds, 3),
                             "attempts": state.attempts, "preemptions": state.preemptions, "result": result})
        if self.on_progress:
            self.on_progress(f"{job.key}: {state.status} ({state.tokens} tokens, {state.seconds:.1f} s)")
