"""Spans and the tracer: cheap in-memory recording, nesting through contextvars.

A span is built in memory and, when it ends, handed to the tracer's sink (the trace store's
background writer) with one non-blocking queue put: recording never waits on I/O. Nesting uses a
`contextvars.ContextVar`, so a span opened in an anyio task is the parent of spans opened in the
tasks that task starts (anyio copies the context into each new task), and of spans opened in worker
threads run with a copied context (`anyio.to_thread.run_sync` does this; for a plain thread use
``contextvars.copy_context().run(fn)``).

Times are integer nanoseconds since the Unix epoch (`time.time_ns`), as OTLP wants them.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any, Self

from agentrt.tracing import _semconv as sc

__all__ = ["Span", "SpanRecord", "Tracer", "current_span", "monotonic_to_ns"]

_current: ContextVar[Span | None] = ContextVar("agentrt_current_span", default=None)
_getrandbits = random.getrandbits
_time_ns = time.time_ns

# one anchor so monotonic timestamps (the scheduler's events) map onto epoch nanoseconds
_ANCHOR_WALL_NS = time.time_ns()
_ANCHOR_MONO = time.monotonic()


def monotonic_to_ns(t: float) -> int:
    """Convert a `time.monotonic` timestamp (seconds) of this process to epoch nanoseconds."""
    return _ANCHOR_WALL_NS + int((t - _ANCHOR_MONO) * 1e9)


def current_span() -> Span | None:
    """The span active in this context (task or thread), or None."""
    return _current.get()


class Span:
    """One timed operation: a run, an LLM call, a tool call, a sandbox exec, a memory operation.

    Use it as a (sync or async) context manager, or call `end` yourself for spans started with
    `Tracer.start_span`. After `end` it is handed to the tracer's writer and must not be changed.

    Attributes:
        name: span name, e.g. ``"chat gpt-4o"`` or ``"execute_tool search"`` (OTel GenAI form).
        operation: ``gen_ai.operation.name`` (``chat``, ``execute_tool``, ``invoke_agent``, ...).
        trace_id: 128-bit int; equals the run id (`run_id` gives it as 32 hex digits).
        span_id: 64-bit int.
        parent_id: the parent's span_id, or None for a run's root span.
        start_ns, end_ns: epoch nanoseconds (end_ns is 0 while open).
        attributes: ``gen_ai.*`` / ``agentrt.*`` attributes (str, bool, int, float or lists).
        status: ``"ok"`` or ``"error"``.
        links: span_ids this span depends on (DAG edges; exported as OTel span links).
    """

    __slots__ = (
        "_token",
        "_tracer",
        "attributes",
        "end_ns",
        "links",
        "name",
        "operation",
        "parent_id",
        "span_id",
        "start_ns",
        "status",
        "trace_id",
    )

    def __init__(self, tracer: Tracer, name: str, operation: str, trace_id: int, parent_id: int | None,
                 attributes: dict[str, Any], start_ns: int) -> None:
        self._tracer = tracer
        self.name = name
        self.operation = operation
        self.trace_id = trace_id
        self.span_id = _getrandbits(64) or 1
        self.parent_id = parent_id
        self.attributes = attributes
        self.start_ns = start_ns
        self.end_ns = 0
        self.status = "ok"
        self.links: list[int] = []
        self._token: Token[Span | None] | None = None

    @property
    def run_id(self) -> str:
        """The run (trace) id as 32 lowercase hex digits."""
        return f"{self.trace_id:032x}"

    def set(self, key: str, value: Any) -> Span:
        """Set one attribute; returns the span."""
        self.attributes[key] = value
        return self

    def set_attributes(self, attributes: Mapping[str, Any]) -> Span:
        """Set several attributes; returns the span."""
        self.attributes.update(attributes)
        return self

    def record_usage(self, *, input_tokens: int, output_tokens: int, cached_input_tokens: int = 0,
                     reasoning_tokens: int = 0, model: str | None = None) -> Span:
        """Record token usage of an inference call (counts as the server reports them).

        ``input_tokens`` includes ``cached_input_tokens``; ``output_tokens`` includes
        ``reasoning_tokens`` (OTel GenAI and genai-prices partition). The trace store prices the
        span (``agentrt.cost.usd``) from these when it is written, unless a cost was already set.
        """
        a = self.attributes
        a[sc.USAGE_INPUT_TOKENS] = int(input_tokens)
        a[sc.USAGE_OUTPUT_TOKENS] = int(output_tokens)
        if cached_input_tokens:
            a[sc.USAGE_CACHE_READ_INPUT_TOKENS] = int(cached_input_tokens)
        if reasoning_tokens:
            a[sc.USAGE_REASONING_OUTPUT_TOKENS] = int(reasoning_tokens)
        if model is not None:
            a[sc.RESPONSE_MODEL] = model
        return self

    def record_energy(self, joules: float, method: str) -> Span:
        """Record the energy this span used, in joules, and how it was obtained.

        ``method`` is ``"measured"`` (RAPL/NVML counters) or ``"estimated:<model>"``.
        """
        self.attributes[sc.ENERGY_JOULES] = float(joules)
        self.attributes[sc.ENERGY_METHOD] = method
        return self

    def link(self, span: Span | int) -> Span:
        """Add a dependency edge to another span (it produced an input of this one)."""
        self.links.append(span if isinstance(span, int) else span.span_id)
        return self

    def record_exception(self, exc: BaseException) -> Span:
        self.status = "error"
        self.attributes[sc.ERROR_TYPE] = type(exc).__qualname__
        return self

    def end(self, end_ns: int | None = None) -> None:
        """End the span now (or at ``end_ns``) and hand it to the writer. Idempotent."""
        if self.end_ns:
            return
        self.end_ns = end_ns if end_ns is not None else _time_ns()
        self._tracer._sink(self)

    # -- context manager: becomes the current span in this context -------------------------------
    def __enter__(self) -> Self:
        self._token = _current.set(self)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if self._token is not None:
            _current.reset(self._token)
            self._token = None
        if exc is not None:
            self.status = "error"
            self.attributes[sc.ERROR_TYPE] = exc_type.__qualname__ if exc_type else "Exception"
        self.end()

    async def __aenter__(self) -> Self:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        self.__exit__(exc_type, exc, tb)

    def to_record(self) -> SpanRecord:
        return SpanRecord(
            run_id=f"{self.trace_id:032x}", span_id=f"{self.span_id:016x}",
            parent_id=None if self.parent_id is None else f"{self.parent_id:016x}",
            name=self.name, operation=self.operation, start_ns=self.start_ns, end_ns=self.end_ns,
            status=self.status, attributes=dict(self.attributes),
            links=[f"{x:016x}" for x in self.links],
        )

    def __repr__(self) -> str:
        return f"Span({self.name!r}, operation={self.operation!r}, span_id={self.span_id:016x})"


@dataclass(slots=True)
class SpanRecord:
    """A finished span as stored and queried (ids as hex strings; times in epoch ns)."""

    run_id: str
    span_id: str
    parent_id: str | None
    name: str
    operation: str
    start_ns: int
    end_ns: int
    status: str = "ok"
    attributes: dict[str, Any] = field(default_factory=dict)
    links: list[str] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        return max(0, self.end_ns - self.start_ns) / 1e9


class Tracer:
    """Creates spans and hands finished ones to ``sink`` (normally a `TraceStore`'s writer).

    Args:
        sink: called with each ended `Span`, on the thread that ended it; it must not block
            (`TraceStore.submit` is one queue put). ``None`` discards spans (tracing off).
        enabled: False makes every span a no-op that is never recorded (spans are still
            returned, so instrumented code needs no branches).

    Recording cost: about a few microseconds per span here (see ``benchmarks/tracing.py``).
    """

    def __init__(self, sink: Callable[[Span], None] | None = None, *, enabled: bool = True) -> None:
        self._sink_fn = sink
        self.enabled = enabled and sink is not None

    def _sink(self, span: Span) -> None:
        if self.enabled:
            self._sink_fn(span)  # type: ignore[misc]

    def start_span(self, name: str, operation: str = "", *, parent: Span | None | bool = True,
                   start_ns: int | None = None, attributes: dict[str, Any] | None = None) -> Span:
        """Start a span that is NOT made current; end it with `Span.end`.

        For spans whose start and end come from events (the scheduler's ``TaskStarted`` /
        ``TaskFinished``) rather than from a block of code.

        Args:
            name: span name.
            operation: ``gen_ai.operation.name``.
            parent: the parent span; True (default) means the span current in this context; None
                or False starts a new run (a root span with a new trace id).
            start_ns: epoch ns (see `monotonic_to_ns`); default now.
            attributes: initial attributes (the dict is kept, not copied).
        """
        if parent is True:
            parent = _current.get()
        attrs = attributes if attributes is not None else {}
        if operation:
            attrs[sc.OPERATION_NAME] = operation
        if parent:
            return Span(self, name, operation, parent.trace_id, parent.span_id, attrs,
                        start_ns if start_ns is not None else _time_ns())
        return Span(self, name, operation, _getrandbits(128) or 1, None, attrs,
                    start_ns if start_ns is not None else _time_ns())

    def span(self, name: str, operation: str = "", **attributes: Any) -> Span:
        """A child of the current span (or a new run's root if there is none), as a context manager.

        ``with tracer.span("plan", "plan"): ...``; keyword arguments become attributes (use
        `Span.set` for dotted names).
        """
        return self.start_span(name, operation, attributes=attributes)

    def run(self, name: str = "", *, agent: str | None = None, question: str | None = None,
            attributes: Mapping[str, Any] | None = None) -> Span:
        """The root ``invoke_agent`` span of a new run (always a new trace, even when nested).

        Its trace id is the run id. When it ends the store computes the run's totals (tokens,
        cost, energy, critical path, parallel efficiency).
        """
        attrs: dict[str, Any] = dict(attributes or {})
        if agent:
            attrs[sc.AGENT_NAME] = agent
        if question is not None:
            attrs[sc.RUN_QUESTION] = question
        span_name = f"{sc.INVOKE_AGENT} {agent}" if agent else (name or sc.INVOKE_AGENT)
        span = self.start_span(span_name, sc.INVOKE_AGENT, parent=None, attributes=attrs)
        if name:
            span.name = name
        return span

    def chat(self, model: str, *, provider: str | None = None, local: bool | None = None,
             max_tokens: int | None = None, operation: str = sc.CHAT, **attributes: Any) -> Span:
        """A child inference span named ``"{operation} {model}"`` with the request attributes set.

        Args:
            model: ``gen_ai.request.model``.
            provider: ``gen_ai.provider.name`` (e.g. ``openai``); None lets pricing find it.
            local: the model runs on this machine (cost 0 USD); default: it is agentrt's
                embedded model.
            max_tokens: ``gen_ai.request.max_tokens``.
        """
        from agentrt.config import LOCAL_MODEL_NAME

        attrs: dict[str, Any] = {sc.REQUEST_MODEL: model,
                                 sc.MODEL_LOCAL: bool(model == LOCAL_MODEL_NAME if local is None else local)}
        if provider:
            attrs[sc.PROVIDER_NAME] = provider
        if max_tokens is not None:
            attrs[sc.REQUEST_MAX_TOKENS] = max_tokens
        attrs.update(attributes)
        return self.start_span(f"{operation} {model}", operation, attributes=attrs)

    def tool(self, tool_name: str, *, call_id: str | None = None, task_id: int | None = None,
             deps: Iterable[int] = (), parent: Span | None | bool = True, start_ns: int | None = None,
             **attributes: Any) -> Span:
        """An ``execute_tool {tool_name}`` span; ``task_id``/``deps`` feed the critical path."""
        attrs: dict[str, Any] = {sc.TOOL_NAME: tool_name, sc.TOOL_TYPE: "function"}
        if call_id is not None:
            attrs[sc.TOOL_CALL_ID] = call_id
        if task_id is not None:
            attrs[sc.TASK_ID] = task_id
            attrs[sc.TASK_DEPS] = sorted(deps)
        attrs.update(attributes)
        return self.start_span(f"{sc.EXECUTE_TOOL} {tool_name}", sc.EXECUTE_TOOL, parent=parent,
                               start_ns=start_ns, attributes=attrs)
