"""Reuse of tool results computed in sleep time (issue 9: "idempotent read-only tool results
computed in sleep time are reused while valid").

Only a tool declaring both ``read_only=True`` and ``idempotent=True`` (the MCP tool annotation
hints ``readOnlyHint``/``idempotentHint`` that `agentrt.tools.Tool` carries) is ever stored or
reused: a read-only, idempotent call with the same arguments returns the same result while the
world it reads has not changed, so serving the stored one is indistinguishable from calling again.
What "has not changed" means is bounded twice:

* a TTL in seconds (``expires_at`` in the event's meta, set when the result is stored), and
* the context version: a result fetched for a context is stored in that context's session with
  the anticipate job's key (which holds the digest of the context's text); re-attaching changed
  text forgets the old job's events, and a lookup also checks that the result's job is the
  context's current one.

Storage: events of kind ``tool_result`` in session ``sleeptime/<context_id>``, text
``tool(args)``, meta ``{"tool", "args", "args_key", "value", "expires_at", "job", "ttl_s"}``
(SQLite, the store's source of truth; no other cache).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from typing import Any

from agentrt.errors import InvalidArguments
from agentrt.executor import ExecutorBackend, Task
from agentrt.memory_store import Event, MemoryStore, StoredEvent
from agentrt.sleeptime._learned import context_session
from agentrt.tools import Limits, Tool, ToolResult, ToolUsage

__all__ = ["DEFAULT_TOOL_TTL_S", "ReusingBackend", "ToolResultStore", "reusable"]

#: Seconds a sleep-time tool result stays valid by default: long enough for the queries that
#: follow an idle period, short enough that a read of a changing source is not served for long.
#: A deployment sets it per scheduler (``SleepTimeScheduler(tool_ttl_s=...)``).
DEFAULT_TOOL_TTL_S = 600.0


def reusable(tool: Tool) -> bool:
    """A tool whose results may be stored and reused: it declares read-only AND idempotent."""
    return bool(tool.read_only and tool.idempotent)


def args_key(tool: Tool, args: dict[str, Any]) -> str:
    """A canonical key of a call: sha256 of the tool's name and its validated arguments as sorted JSON.

    Raises:
        InvalidArguments: ``args`` do not fit the tool's parameters.
    """
    canon = tool.validate_args(args)
    text = json.dumps({"tool": tool.name, "args": canon}, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


class ToolResultStore:
    """Stored sleep-time tool results of one memory store: write (``event``), look up (``get``).

    Args:
        store: the memory store.
        ttl_s: default validity of a stored result, in seconds.
        clock: wall-clock seconds (``time.time``; tests pass their own).
    """

    def __init__(self, store: MemoryStore, *, ttl_s: float = DEFAULT_TOOL_TTL_S, clock=time.time) -> None:
        self.store, self.ttl_s, self.clock = store, ttl_s, clock

    def event(self, tool: Tool, args: dict[str, Any], result: ToolResult, *, context_id: str, job: str,
              ttl_s: float | None = None) -> Event | None:
        """The event recording ``result`` of ``tool(args)`` for ``context_id`` (to store with a job
        step, in the step's transaction); None when it must not be stored (the tool is not
        read-only and idempotent, the call failed, or its arguments are invalid)."""
        if not reusable(tool) or not result.ok:
            return None
        try:
            key = args_key(tool, args)
        except InvalidArguments:
            return None
        ttl = self.ttl_s if ttl_s is None else ttl_s
        text = f"{tool.name}({json.dumps(args, sort_keys=True, default=str, ensure_ascii=False)})"
        return Event(text, session=context_session(context_id), role="tool", kind="tool_result",
                     meta={"tool": tool.name, "args": args, "args_key": key, "value": result.value,
                           "expires_at": self.clock() + ttl, "ttl_s": ttl, "job": job})

    def _current_job(self, context_id: str) -> str | None:
        """The anticipate job of the context's current text (its latest unforgotten ``context`` event)."""
        evs = self._all(context_session(context_id), "context")
        live = [e for e in evs if e.expired_at is None]
        return (live[-1].meta or {}).get("job") if live else None

    def _all(self, session: str, kind: str) -> list[StoredEvent]:
        out: list[StoredEvent] = []
        after = 0
        while True:
            evs = self.store.events(session=session, kind=kind, after_id=after, limit=1000)
            if not evs:
                return out
            out += evs
            after = evs[-1].id

    def get(self, tool: Tool, args: dict[str, Any], *, context_ids: Iterable[str]) -> tuple[ToolResult, dict] | None:
        """A valid stored result of ``tool(args)`` for one of ``context_ids``, newest first, else None.

        Valid: the tool is read-only and idempotent, the result is not forgotten, not past its
        ``expires_at``, and was fetched for the context's current text. Returns the
        `ToolResult` (``reused=True``, usage zero) and the stored event's meta.
        """
        if not reusable(tool):
            return None
        try:
            key = args_key(tool, args)
        except InvalidArguments:
            return None
        now = self.clock()
        for cid in context_ids:
            job = self._current_job(cid)
            if job is None:
                continue
            for ev in reversed(self._all(context_session(cid), "tool_result")):
                meta = ev.meta or {}
                if ev.expired_at is not None or meta.get("args_key") != key or meta.get("job") != job:
                    continue
                if float(meta.get("expires_at", 0)) <= now:
                    continue
                return ToolResult(ok=True, value=meta.get("value"), usage=ToolUsage(), reused=True), \
                    {**meta, "event_id": ev.id}
        return None


class ReusingBackend:
    """An `ExecutorBackend` that answers a call of a read-only idempotent tool from a valid
    sleep-time result (:class:`ToolResultStore`) and runs every other call on ``inner``.

    Args:
        inner: the backend that runs calls.
        results: where sleep-time results are stored.
        context_ids: the contexts whose results this run may reuse.

    Attributes:
        reused: ids of the tasks answered from a stored result, in the order they were.
    """

    def __init__(self, inner: ExecutorBackend, results: ToolResultStore, context_ids: Iterable[str]) -> None:
        self.inner, self.results = inner, results
        self.context_ids = list(context_ids)
        self.reused: list[int] = []

    async def submit(self, task: Task, tool: Tool, args: dict[str, Any], limits: Limits) -> ToolResult:
        import anyio.to_thread

        if reusable(tool) and self.context_ids:
            hit = await anyio.to_thread.run_sync(
                lambda: self.results.get(tool, args, context_ids=self.context_ids))
            if hit is not None:
                self.reused.append(task.id)
                return hit[0]
        return await self.inner.submit(task, tool, args, limits)
