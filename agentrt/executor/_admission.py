"""Memory-aware admission control: each sandboxed call reserves its memory intent against a budget.

Memory, not CPU, limits how many tool calls can run at once (AgentCgroup, Zheng et al. 2026:
peaks of 2-4 GB against a 185 MB baseline, bursts up to 15x the average, almost all inside tool
calls). Running every ready call at once and letting the OOM killer pick victims loses work; a
static per-container limit kills the calls that burst. The policy here:

- **Reserve.** A call is admitted when the sum of the *committed* memory of running calls plus
  its intent (``Limits.memory``) fits the budget (bytes; by default a fraction of MemAvailable,
  `agentrt.config.Settings.admission_memory_fraction`). A call's committed memory is its current
  hard limit, between its intent and ``intent x memory_burst``.
- **Wait in order.** Calls that do not fit wait first-in first-out, i.e. in the order the
  scheduler made them ready (DAG order), instead of running and being OOM-killed; the head of the
  queue is never overtaken, so a large call is not starved by small ones.
- **Burst with free budget.** An admitted call gets a hard limit of up to ``intent x burst`` when
  that much of the budget is free and nobody waits; otherwise its intent.
- **Throttle without.** When a waiting call does not fit, bursting calls are held back: their hard
  limit is lowered to ``max(intent, memory now + margin)`` (`agentrt.cgroups.CallGroup.update`;
  on cgroup v1 there is no ``memory.high``, so the hard limit is the throttle). When calls end and
  nobody waits, throttled calls get their burst room back.
- **OOM with advice.** A call killed at its limit returns ``oom`` with its peak and a message
  the planner can act on: "retry with a larger memory intent, e.g. memory='384M'".
- **Never a hang.** A call whose intent exceeds the whole budget is refused at once (``denied``).

The decisions are reported in the call's `agentrt.tools.ToolUsage` extra fields:
``admission_wait_seconds``, ``admission_queue_ahead`` (calls ahead of it when it arrived),
``memory_granted_bytes`` (hard limit at start), ``admission_burst`` (started with burst room),
``admission_throttles`` / ``admission_bursts`` (times its hard limit was lowered / raised while it
ran), ``admission_budget_bytes``.

Hook: a sandbox whose session exposes an `agentrt.cgroups.SessionGroup`-like ``session`` (the
namespace and docker backends do) is observed with `observe_session`: every call group created
or updated while a grant is current (a context variable, so concurrent calls never mix) is
attached to that grant, which lets the controller throttle and re-grant it live. Without the hook
the controller still reserves and waits, but cannot change a running call's limit.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio

from agentrt.cgroups import CallGroup, CallLimits
from agentrt.errors import ConfigError, SandboxError
from agentrt.tools import Limits, ToolResult, ToolUsage

__all__ = ["AdmissionController", "AdmissionDenied", "Grant", "mem_available", "observe_session"]

log = logging.getLogger(__name__)

#: Headroom over a throttled call's current memory, bytes: lowering a v1 hard limit to exactly the
#: usage makes the kernel reclaim (or refuse with EBUSY) on the next page.
THROTTLE_MARGIN = 8 * 2**20


def mem_available() -> int:
    """``MemAvailable`` from /proc/meminfo, bytes (the kernel's estimate of allocatable memory).

    Raises:
        ConfigError: /proc/meminfo cannot be read (not Linux): pass an explicit budget.
    """
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError as exc:
        raise ConfigError(f"cannot read /proc/meminfo ({exc}); give AdmissionController an explicit "
                          "budget (bytes)") from exc
    raise ConfigError("/proc/meminfo has no MemAvailable; give AdmissionController an explicit budget")


class AdmissionDenied(Exception):
    """A call's memory intent exceeds the whole budget: it can never be admitted."""


@dataclass(eq=False)
class Grant:
    """One call's admission: what it reserved and the decisions taken for it.

    Attributes:
        seq: arrival order (FIFO position).
        intent: memory intent, bytes (``Limits.memory``).
        ceiling: most it may burst to, bytes (``Limits.memory_max``).
        hard: hard limit granted now, bytes (``intent <= hard <= ceiling``).
        label: for logs (the tool's name).
        call: the call's cgroup, once the sandbox created it (see `observe_session`).
        queue_ahead: calls waiting or running ahead of it when it arrived.
        waited_seconds: seconds between arrival and admission.
        granted_at_start: ``hard`` when admitted, bytes.
        throttles, bursts: times its hard limit was lowered / raised while it ran.
    """

    seq: int
    intent: int
    ceiling: int
    label: str = ""
    hard: int = 0
    call: CallGroup | None = None
    queue_ahead: int = 0
    waited_seconds: float = 0.0
    granted_at_start: int = 0
    throttles: int = 0
    bursts: int = 0
    _event: anyio.Event = field(default_factory=anyio.Event, repr=False)
    _admitted: bool = False

    def limits_for(self, limits: Limits) -> Limits:
        """``limits`` with the hard limit set to the one granted (``memory_burst = hard / intent``)."""
        if self.hard >= limits.memory_max:
            return limits
        # ceil so that int(memory * burst) is not a byte short of the grant
        return limits.model_copy(update={"memory_burst": max(1.0, math.ceil(self.hard * 1e9 / self.intent) / 1e9)})

    def attach(self, call: Any) -> None:
        """Record the call's cgroup (first one wins) and write the current grant into it."""
        if self.call is not None or not self._admitted:
            return
        self.call = call
        if call.limits.memory_max is not None and call.limits.memory_max != self.hard:
            try:
                call.update(CallLimits(memory_max=self.hard))
            except SandboxError as exc:
                log.debug("grant %d: cannot set hard limit %d: %s", self.seq, self.hard, exc)

    def usage_fields(self, budget: int) -> dict[str, Any]:
        """The admission decisions, as `ToolUsage` extra fields."""
        return {"admission_wait_seconds": round(self.waited_seconds, 6), "admission_queue_ahead": self.queue_ahead,
                "memory_granted_bytes": self.granted_at_start, "admission_burst": self.granted_at_start > self.intent,
                "admission_throttles": self.throttles, "admission_bursts": self.bursts,
                "admission_budget_bytes": budget}


_current: contextvars.ContextVar[Grant | None] = contextvars.ContextVar("agentrt_admission_grant", default=None)


class _ObservedCall:
    """A call group whose limit updates made under a grant attach it to that grant."""

    def __init__(self, inner: CallGroup) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def update(self, limits: Any) -> None:
        self._inner.update(limits)
        g = _current.get()
        if g is not None:
            g.attach(self._inner)


class _ObservedSession:
    """A session group whose calls, created or updated under a grant, attach to that grant."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def call(self, limits: Any = None, name: str | None = None) -> _ObservedCall:
        c = self._inner.call(limits, name)
        g = _current.get()
        if g is not None:
            g.attach(c)
        return _ObservedCall(c)


def observe_session(sandbox: Any) -> bool:
    """Let admission control see the call groups ``sandbox`` creates (the hook described above).

    Call it before the sandbox makes its first call (before ``async with``, which may prewarm).

    Returns:
        True if ``sandbox`` has a ``session`` with a ``call`` method (now observed), else False.
    """
    session = getattr(sandbox, "session", None)
    if session is None or isinstance(session, _ObservedSession) or not callable(getattr(session, "call", None)):
        return isinstance(session, _ObservedSession)
    sandbox.session = _ObservedSession(session)
    return True


class AdmissionController:
    """Reserves sandboxed calls' memory intents against a budget (see the module docstring).

    Args:
        budget: bytes all admitted calls may commit at once; None: ``fraction`` of MemAvailable.
        fraction: share of MemAvailable when ``budget`` is None (default: the settings', 0.8).
        margin: headroom over a throttled call's current memory, bytes.

    One controller is shared by every call that should compete for the same memory: one per host
    (`default`), or one per session for a session budget. It is not thread-safe: use it from one
    event loop.

    Raises:
        ConfigError: no budget given and MemAvailable cannot be read.
        ValueError: ``budget`` or ``fraction`` is not positive.
    """

    _default: AdmissionController | None = None

    def __init__(self, budget: int | None = None, *, fraction: float | None = None,
                 margin: int = THROTTLE_MARGIN) -> None:
        if budget is None:
            if fraction is None:
                from agentrt.config import get_settings

                s = get_settings()
                if s.admission_memory_budget is not None:
                    budget = s.admission_memory_budget
                fraction = s.admission_memory_fraction
            if budget is None:
                if not 0 < fraction <= 1:
                    raise ValueError(f"fraction must be in (0, 1], got {fraction}")
                budget = int(mem_available() * fraction)
        if budget <= 0:
            raise ValueError(f"admission budget must be positive, got {budget} bytes")
        self.budget = int(budget)
        self.margin = margin
        self._running: dict[int, Grant] = {}
        self._waiting: deque[Grant] = deque()
        self._seq = itertools.count(1)
        self.admitted = 0
        self.waited = 0
        self.denied = 0
        self.throttles = 0
        self.bursts = 0

    @classmethod
    def default(cls) -> AdmissionController:
        """This process's host-wide controller (created from the settings on first use)."""
        if cls._default is None:
            cls._default = cls()
        return cls._default

    # -- accounting ----------------------------------------------------------------------------

    @property
    def committed(self) -> int:
        """Bytes the running calls may use now (sum of their hard limits)."""
        return sum(g.hard for g in self._running.values())

    @property
    def reserved(self) -> int:
        """Bytes of intent of the running calls."""
        return sum(g.intent for g in self._running.values())

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def stats(self) -> dict[str, int]:
        """Counters since creation: admitted, waited (had to queue), denied, throttles, bursts."""
        return {"admitted": self.admitted, "waited": self.waited, "denied": self.denied,
                "throttles": self.throttles, "bursts": self.bursts, "budget_bytes": self.budget}

    # -- policy --------------------------------------------------------------------------------

    def _throttle(self, need: int) -> None:
        """Lower bursting calls' hard limits (oldest last) until ``need`` bytes are free, or no more."""
        for g in sorted(self._running.values(), key=lambda g: -g.seq):
            if self.budget - self.committed >= need:
                return
            if g.call is None or g.hard <= g.intent:
                continue
            now = g.call.memory_current()
            target = max(g.intent, (now or 0) + self.margin)
            if target >= g.hard:
                continue
            try:
                g.call.update(CallLimits(memory_max=target))
            except SandboxError as exc:  # v1: EBUSY when it cannot reclaim down to target
                log.debug("throttle of call %d to %d bytes failed: %s", g.seq, target, exc)
                continue
            g.hard = target
            g.throttles += 1
            self.throttles += 1

    def _regrant(self) -> None:
        """With nobody waiting, give throttled (or intent-only) calls burst room back, oldest first."""
        if self._waiting:
            return
        for g in sorted(self._running.values(), key=lambda g: g.seq):
            free = self.budget - self.committed
            if free <= 0:
                return
            if g.call is None or g.hard >= g.ceiling:
                continue
            target = min(g.ceiling, g.hard + free)
            try:
                g.call.update(CallLimits(memory_max=target))
            except SandboxError as exc:
                log.debug("burst of call %d to %d bytes failed: %s", g.seq, target, exc)
                continue
            g.hard = target
            g.bursts += 1
            self.bursts += 1

    def _admit_ready(self) -> None:
        """Admit waiting calls from the head while they fit (throttling bursts to make room)."""
        while self._waiting:
            g = self._waiting[0]
            if self.budget - self.committed < g.intent:
                self._throttle(g.intent)
            free = self.budget - self.committed
            if free < g.intent:
                return
            self._waiting.popleft()
            self._start(g, free)
        self._regrant()

    def _start(self, g: Grant, free: int) -> None:
        # burst room only when nobody else waits for it
        g.hard = g.intent if self._waiting else min(g.ceiling, max(g.intent, free))
        g.granted_at_start = g.hard
        g._admitted = True
        self._running[g.seq] = g
        self.admitted += 1
        g._event.set()

    async def admit(self, limits: Limits, label: str = "") -> Grant:
        """Wait (FIFO) until ``limits.memory`` fits the budget; return the grant. Pair with `release`.

        Raises:
            AdmissionDenied: the intent exceeds the whole budget.
        """
        intent = int(limits.memory)
        if intent > self.budget:
            self.denied += 1
            raise AdmissionDenied(
                f"{label or 'call'}: memory intent {intent / 2**20:.0f} MiB exceeds the whole admission "
                f"budget {self.budget / 2**20:.0f} MiB, so it can never run; ask for less memory (process "
                "the data in parts) or raise the budget (AGENTRT_ADMISSION_MEMORY_BUDGET)")
        g = Grant(seq=next(self._seq), intent=intent, ceiling=max(intent, int(limits.memory_max)), label=label)
        g.queue_ahead = len(self._waiting) + len(self._running)
        t0 = time.monotonic()
        self._waiting.append(g)
        self._admit_ready()
        if not g._admitted:
            self.waited += 1
            try:
                await g._event.wait()
            except BaseException:
                if g._admitted:
                    self.release(g)
                else:
                    self._waiting.remove(g)
                    self._admit_ready()  # the head may have changed
                raise
        g.waited_seconds = time.monotonic() - t0
        return g

    def release(self, g: Grant) -> None:
        """The call ended: free its memory and admit whoever now fits. Idempotent."""
        if self._running.pop(g.seq, None) is not None:
            g.call = None
            self._admit_ready()

    @asynccontextmanager
    async def reserve(self, limits: Limits, label: str = "") -> AsyncIterator[Grant]:
        """``async with controller.reserve(limits) as grant:`` admit, make ``grant`` current, release.

        While the block runs, call groups created through an observed session attach to
        ``grant`` (see `observe_session`).

        Raises:
            AdmissionDenied: the intent exceeds the whole budget.
        """
        g = await self.admit(limits, label)
        token = _current.set(g)
        try:
            yield g
        finally:
            _current.reset(token)
            self.release(g)

    def finish(self, g: Grant, result: ToolResult, limits: Limits) -> ToolResult:
        """Add the grant's decisions to ``result.usage``, and OOM advice the planner can act on."""
        fields = g.usage_fields(self.budget)
        usage = result.usage.model_copy(update=fields) if result.usage is not None else ToolUsage(**fields)
        update: dict[str, Any] = {"usage": usage}
        if result.error_kind == "oom":
            peak = result.usage.memory_peak_bytes or g.hard
            # twice the peak seen (the call was stopped on its way up), at least the intent x 2
            suggest = max(2 * peak, 2 * g.intent)
            suggest_mib = int(math.ceil(suggest / 2**20 / 64) * 64)
            held = (f"; it was held to {g.hard / 2**20:.0f} MiB because the admission budget "
                    f"({self.budget / 2**20:.0f} MiB) was in use by other calls" if g.hard < g.ceiling else "")
            update["error"] = (f"out of memory: killed at its memory limit ({g.hard / 2**20:.0f} MiB; intent "
                               f"{g.intent / 2**20:.0f} MiB) with a peak of {peak / 2**20:.1f} MiB{held}. Retry "
                               f"with a larger memory intent, e.g. Limits(memory='{suggest_mib}M'), or process "
                               "less data per call")
        return result.model_copy(update=update)

