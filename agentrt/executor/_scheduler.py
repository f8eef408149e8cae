"""The task fetching unit: dispatches each task of a plan the moment its dependencies are done.

LLMCompiler's task fetching unit (Kim et al., "An LLM Compiler for Parallel Function Calling",
ICML 2024) polls its task list every 10 ms; this one is event-driven instead. Adding a task whose
dependencies are all done dispatches it at once; otherwise it waits in a map keyed by each missing
dependency, with a counter of unmet dependencies. When a task finishes, its dependents' counters
are decremented and those that reach zero are dispatched. Plain dicts and counters only: the hot
path does no graph analysis.

Calls run in worker tasks of an anyio task group owned by a `Session`, so no call outlives its
session and cancelling the session (or the scope around it) cancels every running call. A worker
that finishes a call runs one of the tasks its result made ready itself (as Go's scheduler runs a
readied goroutine next on the same P), and otherwise waits idle for the next ready task, so a
chain of tasks does not pay for spawning an anyio task per link.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel

from agentrt.errors import PlanError, ToolNotFound
from agentrt.executor._backend import ExecutorBackend, LocalBackend
from agentrt.executor._task import Task, TaskStatus, resolve_refs
from agentrt.tools import Tool, ToolRegistry, ToolResult

__all__ = [
    "Scheduler",
    "SchedulerEvent",
    "Session",
    "TaskFinished",
    "TaskSkipped",
    "TaskStarted",
    "TaskTiming",
    "critical_path",
    "makespan",
]

logger = logging.getLogger(__name__)

_now = time.monotonic
#: Most idle workers a session keeps for tasks still to come; more exit when they run out of work.
_MAX_IDLE_WORKERS = 64
#: Longest error text of a failed dependency copied into a skipped task's message, in characters.
_REASON_CHARS = 500


@dataclass(frozen=True, slots=True)
class TaskStarted:
    """A task's tool call was handed to the backend.

    Attributes:
        task: the task.
        at: when, in `time.monotonic` seconds.
        ready_at: when its last dependency finished (or it was added, if later), monotonic
            seconds; ``at - ready_at`` is the time it spent waiting for dispatch and capacity.
    """

    task: Task
    at: float
    ready_at: float


@dataclass(frozen=True, slots=True)
class TaskFinished:
    """A task ended with ``result``: a value, the tool's failure, or ``cancelled``.

    Follows a `TaskStarted`, except when the task failed before its tool could be entered
    (unknown tool, unresolvable reference).

    Attributes:
        task: the task.
        result: its result.
        at: when, in `time.monotonic` seconds.
    """

    task: Task
    result: ToolResult
    at: float


@dataclass(frozen=True, slots=True)
class TaskSkipped:
    """A task was not run because a dependency failed, was skipped, or can never finish.

    Attributes:
        task: the task.
        result: its result (``error_kind="skipped"``; ``error`` says which dependency and why).
        at: when, in `time.monotonic` seconds.
    """

    task: Task
    result: ToolResult
    at: float

    @property
    def reason(self) -> str:
        return self.result.error or ""


SchedulerEvent = TaskStarted | TaskFinished | TaskSkipped


@dataclass(slots=True)
class TaskTiming:
    """When one task went through each stage, in `time.monotonic` seconds (``None``: not reached).

    Attributes:
        added_at: the planner handed it to the session.
        ready_at: its dependencies were all done (dispatch began).
        started_at: its tool call was handed to the backend (after any concurrency wait).
        finished_at: its result was recorded (also set for skipped and failed tasks).
    """

    added_at: float
    ready_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None


_Job = tuple[Task, Tool, dict[str, Any], float]  # task, its tool, resolved args, ready_at


class _Idle:
    """An idle worker's mailbox: ``job`` is set before ``wake``; ``None`` means exit."""

    __slots__ = ("job", "wake")

    def __init__(self) -> None:
        self.job: _Job | None = None
        self.wake = anyio.Event()


class Scheduler:
    """Dispatches the tasks of a plan onto an executor backend as their dependencies finish.

    Args:
        registry: the tools tasks may call.
        backend: where calls run; `LocalBackend` (in process) by default.
        max_concurrency: most tool calls running at once, across all sessions of this
            scheduler; ``None`` for no limit.
        on_event: called synchronously with every `SchedulerEvent`, on the event loop; it must be
            cheap. An exception from it is logged and otherwise ignored. A session uses the
            handler set when it was opened.

    Raises:
        ValueError: ``max_concurrency`` is less than 1.
    """

    def __init__(
        self,
        registry: ToolRegistry,
        backend: ExecutorBackend | None = None,
        max_concurrency: int | None = None,
        on_event: Callable[[SchedulerEvent], None] | None = None,
    ) -> None:
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1 or None, got {max_concurrency}")
        self.registry = registry
        self.backend: ExecutorBackend = backend if backend is not None else LocalBackend()
        self.max_concurrency = max_concurrency
        self.on_event = on_event
        self._limiter = anyio.CapacityLimiter(max_concurrency) if max_concurrency is not None else None

    def session(self, results: dict[int, ToolResult] | None = None) -> Session:
        """A scheduling session for one plan (one planning round); use with ``async with``.

        Args:
            results: results of earlier rounds (replans). They are kept, never re-run, and
                references to them resolve to their values. The dict is filled in place with the
                results of this session's tasks.
        """
        return Session(self, results)

    async def run(self, tasks: Iterable[Task], results: dict[int, ToolResult] | None = None) -> dict[int, ToolResult]:
        """Run a complete plan: add every task, close, and wait for all of them.

        Returns:
            Results by task id (including the prefilled ``results``).
        """
        async with self.session(results) as s:
            for task in tasks:
                s.add(task)
            s.close()
            return await s.wait()


class Session:
    """One plan's worth of tasks, run in a task group that lives as long as the ``async with``.

    ``add`` and ``close`` are synchronous and never block, so a streaming planner can call them
    (from the event loop's thread) as each task is parsed. ``wait`` returns once ``close`` was called and every added task has a
    result. Leaving the ``async with`` block normally closes the session and waits for every task;
    leaving it with an exception, or cancelling the enclosing scope, cancels every running call.

    An exception raised by the backend (not a tool's failure, which is a value) is a bug of the
    runtime: it cancels the other calls and propagates out of the ``async with`` block (in an
    ``ExceptionGroup``, as anyio task groups do).
    """

    def __init__(self, scheduler: Scheduler, results: dict[int, ToolResult] | None) -> None:
        self._scheduler = scheduler
        self._registry = scheduler.registry
        self._backend = scheduler.backend
        self._limiter = scheduler._limiter
        self._on_event = scheduler.on_event
        self._results: dict[int, ToolResult] = results if results is not None else {}
        self._prefilled = frozenset(self._results)
        self._tasks: dict[int, Task] = {}
        self._timings: dict[int, TaskTiming] = {}
        # dependency id -> ids of tasks waiting for it (may hold ids no longer waiting)
        self._waiting: dict[int, list[int]] = {}
        # task id -> number of dependencies not yet done, for tasks still waiting
        self._unmet: dict[int, int] = {}
        # root cause of each skipped task, so chains of skips do not nest their messages
        self._skip_roots: dict[int, str] = {}
        self._running: set[int] = set()
        self._pending = 0  # added, no result yet
        self._inflight = 0  # handed to a worker, no result yet
        self._idle: list[_Idle] = []  # workers waiting for a job
        self._closed = False
        self._tg: anyio.abc.TaskGroup | None = None
        self._done: anyio.Event | None = None
        self._cancelled_exc: type[BaseException] = BaseException

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Session:
        if self._tg is not None:
            raise RuntimeError("a Session can be entered only once; open a new one with Scheduler.session()")
        self._cancelled_exc = anyio.get_cancelled_exc_class()
        self._done = anyio.Event()
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        assert self._tg is not None
        if exc_type is None:
            self.close()
        try:
            return await self._tg.__aexit__(exc_type, exc, tb)
        finally:
            self._closed = True

    def add(self, task: Task) -> None:
        """Hand ``task`` to the session; it is dispatched as soon as its dependencies are done.

        A task whose id already has a prefilled result (from an earlier round) is ignored: its
        result is kept and it is not run again. A task with a failed or skipped dependency is
        skipped at once.

        Raises:
            PlanError: a task with this id was already added, or the session is closed.
            RuntimeError: the session was not entered with ``async with``.
        """
        if self._tg is None:
            raise RuntimeError("use the session with `async with scheduler.session() as s:` before adding tasks")
        tid = task.id
        if self._closed:
            raise PlanError(f"task {tid} added after the plan ended (close() was already called)")
        results = self._results
        if tid in results or tid in self._tasks:
            if tid in self._prefilled:
                return
            raise PlanError(f"task {tid} was added twice; task ids must be unique within a run")
        now = _now()
        self._tasks[tid] = task
        self._timings[tid] = TaskTiming(added_at=now)
        self._pending += 1
        unmet = 0
        failed: int | None = None
        waiting = self._waiting
        for dep in task.deps:
            r = results.get(dep)
            if r is None:
                unmet += 1
                lst = waiting.get(dep)
                if lst is None:
                    waiting[dep] = [tid]
                else:
                    lst.append(tid)
            elif not r.ok:
                failed = dep
                break
        if failed is not None:
            self._settle([(tid, self._skip(tid, failed))], now)
        elif unmet:
            self._unmet[tid] = unmet
        else:
            job = self._prepare(tid, now)
            if isinstance(job, ToolResult):
                self._settle([(tid, job)], now)
            else:
                self._hand(job)

    def close(self) -> None:
        """Say that no more tasks will come (the plan ended). Idempotent.

        Tasks waiting on an id that was never added are skipped now; tasks that can never run
        (a dependency cycle) are skipped once nothing else is running.
        """
        if self._closed:
            return
        self._closed = True
        now = _now()
        work: list[tuple[int, ToolResult]] = []
        unknown = [d for d in self._waiting if d not in self._tasks and d not in self._results]
        for dep in sorted(unknown):
            for tid in self._waiting.pop(dep):
                if self._unmet.pop(tid, None) is not None:
                    msg = (f"dependency {dep} is not a task of this plan: no task with that id was "
                           f"added before the plan ended")
                    work.append((tid, ToolResult.failure("skipped", msg)))
        if work:
            self._settle(work, now)  # ends with _check_idle
            return
        self._check_idle(now)

    async def wait(self) -> dict[int, ToolResult]:
        """Wait until ``close()`` was called and every added task has a result.

        Returns:
            The results dict: every task of the session plus the prefilled results, by task id.
        """
        if self._done is None:
            raise RuntimeError("use the session with `async with scheduler.session() as s:` before waiting")
        await self._done.wait()
        return self._results

    # -- introspection ---------------------------------------------------------------------

    @property
    def results(self) -> dict[int, ToolResult]:
        """Results so far, by task id (prefilled ones included); filled in place."""
        return self._results

    @property
    def tasks(self) -> Mapping[int, Task]:
        """Tasks added to this session, by id (prefilled results have no task here)."""
        return self._tasks

    @property
    def timings(self) -> Mapping[int, TaskTiming]:
        """When each added task was added, became ready, started and finished."""
        return self._timings

    @property
    def closed(self) -> bool:
        return self._closed

    def status(self, task_id: int) -> TaskStatus:
        """Where task ``task_id`` stands.

        Raises:
            KeyError: no task or result with that id in this session.
        """
        r = self._results.get(task_id)
        if r is not None:
            if r.ok:
                return TaskStatus.DONE
            return TaskStatus.SKIPPED if r.error_kind == "skipped" else TaskStatus.FAILED
        if task_id in self._running:
            return TaskStatus.RUNNING
        if task_id in self._tasks:
            return TaskStatus.PENDING
        raise KeyError(f"no task {task_id} in this session")

    # -- hot path ----------------------------------------------------------------------------

    def _prepare(self, tid: int, now: float) -> _Job | ToolResult:
        """Task ``tid`` became ready: look up its tool and resolve its references.

        Returns the job to run, or the task's result if it failed before its tool could be entered.
        """
        task = self._tasks[tid]
        self._timings[tid].ready_at = now
        try:
            tool = self._registry.get(task.tool)
        except ToolNotFound as exc:
            return ToolResult.failure("invalid_args", f"task {tid}: {exc}")
        args = task.args
        if task.deps:
            results = self._results
            try:
                args = resolve_refs(args, {d: results[d].value for d in task.deps})
            except KeyError as exc:  # deps are computed from refs, so only a hand-built Task gets here
                return ToolResult.failure("invalid_args", f"task {tid}: reference to task {exc} has no result")
        self._inflight += 1
        return (task, tool, args, now)

    def _hand(self, job: _Job) -> None:
        """Give a prepared job to an idle worker, or to a new one."""
        if self._idle:
            worker = self._idle.pop()
            worker.job = job
            worker.wake.set()
        else:
            assert self._tg is not None
            self._tg.start_soon(self._worker, job, name="agentrt task worker")

    async def _worker(self, job: _Job) -> None:
        """Run jobs until none is left for this worker.

        After a call, the worker settles its result and itself runs one of the tasks that result
        made ready (after a checkpoint, so other tasks get their turn): a chain of tasks costs no
        task spawn and no wake-up per link. With nothing to run it waits, idle, for a job, or
        exits when no job can come any more.
        """
        cancelled = self._cancelled_exc
        try:
            # A job handed over while the session is being cancelled must not enter its tool.
            await anyio.lowlevel.checkpoint_if_cancelled()
        except cancelled:
            self._abandon(job)
            raise
        while True:
            task = job[0]
            try:
                if self._limiter is None:
                    result = await self._call(job)
                else:
                    async with self._limiter:
                        result = await self._call(job)
            except cancelled:
                self._abandon(job)
                raise
            self._inflight -= 1
            self._running.discard(task.id)
            nxt = self._settle([(task.id, result)], _now(), keep=True)
            if nxt is not None:
                job = nxt
                try:
                    await anyio.lowlevel.checkpoint()
                except cancelled:
                    self._abandon(job)
                    raise
                continue
            if (self._closed and not self._unmet) or len(self._idle) >= _MAX_IDLE_WORKERS:
                return
            idle = _Idle()
            self._idle.append(idle)
            try:
                await idle.wake.wait()
            except cancelled:
                if idle.job is not None:
                    self._abandon(idle.job)
                elif idle in self._idle:
                    self._idle.remove(idle)
                raise
            if idle.job is None:
                return
            job = idle.job

    async def _call(self, job: _Job) -> ToolResult:
        task, tool, args, ready_at = job
        at = _now()
        self._timings[task.id].started_at = at
        self._running.add(task.id)
        if self._on_event is not None:
            self._emit(TaskStarted(task, at, ready_at))
        return await self._backend.submit(task, tool, args, tool.limits)

    def _abandon(self, job: _Job) -> None:
        """A job's worker was cancelled: record the task as cancelled, if it has no result yet."""
        self._inflight -= 1
        self._running.discard(job[0].id)
        self._record_cancelled(job[0])

    def _settle(self, work: list[tuple[int, ToolResult]], now: float, keep: bool = False) -> _Job | None:
        """Record results and propagate them to dependents, iteratively (chains can be long).

        Tasks made ready are handed to workers; with ``keep``, the first one is returned instead,
        for the calling worker to run itself.
        """
        results = self._results
        unmet = self._unmet
        waiting = self._waiting
        tasks = self._tasks
        emit = self._emit if self._on_event is not None else None
        kept: _Job | None = None
        while work:
            tid, result = work.pop()
            results[tid] = result
            self._pending -= 1
            self._timings[tid].finished_at = now
            if emit is not None:
                if result.error_kind == "skipped":
                    emit(TaskSkipped(tasks[tid], result, now))
                else:
                    emit(TaskFinished(tasks[tid], result, now))
            dependents = waiting.pop(tid, None)
            if not dependents:
                continue
            ok = result.ok
            for d in dependents:
                n = unmet.get(d)
                if n is None:
                    continue
                if not ok:
                    del unmet[d]
                    work.append((d, self._skip(d, tid)))
                elif n > 1:
                    unmet[d] = n - 1
                else:
                    del unmet[d]
                    job = self._prepare(d, now)
                    if isinstance(job, ToolResult):
                        work.append((d, job))
                    elif keep and kept is None:
                        kept = job
                    else:
                        self._hand(job)
        if self._closed:
            self._check_idle(now)
        return kept

    def _check_idle(self, now: float) -> None:
        if self._pending == 0:
            assert self._done is not None
            self._done.set()
            for worker in self._idle:  # no job can come any more
                worker.wake.set()
            self._idle.clear()
            return
        if self._inflight == 0 and self._unmet:
            # Closed, nothing running, tasks still waiting: they wait on each other (a cycle).
            work: list[tuple[int, ToolResult]] = []
            for tid in sorted(self._unmet):
                undone = sorted(d for d in self._tasks[tid].deps if d not in self._results)
                msg = f"dependencies {undone} can never finish (dependency cycle)"
                work.append((tid, ToolResult.failure("skipped", msg)))
            self._unmet.clear()
            self._settle(work, now)

    def _skip(self, tid: int, dep: int) -> ToolResult:
        """The result of task ``tid``, skipped because dependency ``dep`` failed or was skipped."""
        r = self._results[dep]
        error = _clip(r.error or "")
        if r.error_kind == "skipped":
            root = self._skip_roots.get(dep, error)
            msg = f"dependency {dep} was skipped ({root})"
        else:
            root = f"task {dep} failed: {error}"
            msg = f"dependency {dep} failed: {error}"
        self._skip_roots[tid] = root
        return ToolResult.failure("skipped", msg)

    def _record_cancelled(self, task: Task) -> None:
        tid = task.id
        if tid in self._results:
            return
        now = _now()
        result = ToolResult.failure("cancelled", f"task {tid} was cancelled before it finished")
        self._results[tid] = result
        self._pending -= 1
        self._timings[tid].finished_at = now
        if self._on_event is not None:
            self._emit(TaskFinished(task, result, now))

    def _emit(self, event: SchedulerEvent) -> None:
        try:
            self._on_event(event)  # type: ignore[misc]
        except Exception:
            logger.exception("on_event handler raised on %s for task %d; ignored",
                             type(event).__name__, event.task.id)


def _clip(text: str) -> str:
    return text if len(text) <= _REASON_CHARS else text[: _REASON_CHARS - 3] + "..."


def critical_path(
    tasks: Iterable[Task] | Mapping[int, Task], results: Mapping[int, ToolResult]
) -> tuple[list[int], float]:
    """The longest chain of dependent tasks, weighted by each task's measured wall time.

    A task's weight is ``results[id].usage.wall_seconds`` (0 for a task without a result, and for
    skipped tasks). A dependency that is not among ``tasks`` but has a result (a prefilled result
    of an earlier round) counts as a chain of one; one with neither is ignored.

    Returns:
        (task ids from first to last, total seconds of their wall times); ``([], 0.0)`` for no
        tasks. Ties are broken towards the lower task id.

    Raises:
        PlanError: the tasks' dependencies form a cycle.
    """
    by_id = dict(tasks) if isinstance(tasks, Mapping) else {t.id: t for t in tasks}

    def weight(tid: int) -> float:
        r = results.get(tid)
        return r.usage.wall_seconds if r is not None else 0.0

    best: dict[int, tuple[float, int | None]] = {}  # id -> (longest chain ending here, previous id)
    visiting: set[int] = set()
    for root in sorted(by_id):
        if root in best:
            continue
        stack: list[tuple[int, bool]] = [(root, False)]
        while stack:
            tid, expanded = stack.pop()
            if tid in best:
                continue
            task = by_id.get(tid)
            deps = sorted(d for d in task.deps if d in by_id or d in results) if task is not None else []
            if not expanded:
                if tid in visiting:
                    raise PlanError(f"the tasks' dependencies form a cycle through task {tid}")
                visiting.add(tid)
                stack.append((tid, True))
                for d in deps:
                    if d not in best:
                        if d in visiting:
                            raise PlanError(f"the tasks' dependencies form a cycle through tasks {tid} and {d}")
                        stack.append((d, False))
                continue
            visiting.discard(tid)
            prev: int | None = None
            longest = 0.0
            for d in deps:
                if best[d][0] > longest or prev is None:
                    longest, prev = best[d][0], d
            best[tid] = (longest + weight(tid), prev)
    if not by_id:
        return [], 0.0
    end = max(sorted(by_id), key=lambda t: best[t][0])
    total = best[end][0]
    path = [end]
    prev = best[end][1]
    while prev is not None:
        path.append(prev)
        prev = best[prev][1]
    path.reverse()
    return path, total


def makespan(timings: Mapping[int, TaskTiming]) -> float:
    """Seconds from the first task's start to the last task's finish (0.0 if none started)."""
    starts = [t.started_at for t in timings.values() if t.started_at is not None]
    ends = [t.finished_at for t in timings.values() if t.finished_at is not None]
    if not starts or not ends:
        return 0.0
    return max(ends) - min(starts)
