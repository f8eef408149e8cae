"""Analysis of a run's spans: totals, critical path, parallel efficiency, lanes for timelines.

Critical path: the "last-arriving predecessor" walk used for distributed traces (as in Jaeger's
critical-path view and Google's "critical path analysis" of RPC trees), made DAG-aware. Work spans
are the root's children and every ``execute_tool`` span. Starting from the work span that ends
last, each step goes to the span that made the current one wait:

- a task with dependencies (``agentrt.task.deps``): the dependency that finished last;
- a task without dependencies: the LLM/plan span that produced it (the latest-ending non-task
  span that ended before it started, else the one running when it started: a streaming planner);
- any other span (e.g. the joiner's LLM call): the work span that ended last before it started.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from agentrt.tracing import _semconv as sc
from agentrt.tracing._span import SpanRecord

__all__ = ["RunSummary", "assign_lanes", "children_of", "critical_path", "summarize"]

_EPS_NS = 1_000  # 1 µs: ends and starts this close count as "before"


@dataclass(slots=True)
class RunSummary:
    """Totals of one run (what `trace ls` shows).

    Attributes:
        run_id: 32 hex digits.
        name: the root span's name.
        started_ns, ended_ns: epoch ns (ended_ns None while running).
        status: ``ok``, ``error`` or ``running``.
        input_tokens, output_tokens, cached_tokens, reasoning_tokens: sums over inference spans.
        cost_usd: sum of priced spans, USD; None when no span was priced and some were unpriced.
        unpriced_calls: inference spans without a known price.
        energy_j: sum of outermost spans that carry energy, J; energy_method: their method, or
            ``mixed`` / None.
        llm_calls, tool_calls, span_count: counts.
        critical_path: span ids on the critical path, first to last; critical_path_s its length
            from the first span's start to the last one's end, seconds.
        parallel_efficiency: sum of tool-call seconds / run wall seconds (average tool calls in
            flight; > 1 means tool calls overlapped).
        question: the root span's ``agentrt.run.question`` (None when the run had none).
    """

    run_id: str
    name: str
    started_ns: int
    ended_ns: int | None
    status: str = "ok"
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float | None = 0.0
    unpriced_calls: int = 0
    energy_j: float | None = None
    energy_method: str | None = None
    llm_calls: int = 0
    tool_calls: int = 0
    span_count: int = 0
    critical_path: list[str] = field(default_factory=list)
    critical_path_s: float = 0.0
    parallel_efficiency: float | None = None
    question: str | None = None

    @property
    def wall_s(self) -> float | None:
        return None if self.ended_ns is None else (self.ended_ns - self.started_ns) / 1e9


def children_of(spans: Iterable[SpanRecord]) -> dict[str | None, list[SpanRecord]]:
    """Map parent span id (None for roots) to its children, sorted by start time."""
    out: dict[str | None, list[SpanRecord]] = {}
    ids = {s.span_id for s in spans}
    for s in spans:
        parent = s.parent_id if s.parent_id in ids else None
        out.setdefault(parent, []).append(s)
    for v in out.values():
        v.sort(key=lambda s: (s.start_ns, -s.end_ns))
    return out


def _root(spans: Sequence[SpanRecord]) -> SpanRecord | None:
    roots = [s for s in spans if s.parent_id is None]
    return min(roots, key=lambda s: s.start_ns) if roots else None


def critical_path(spans: Sequence[SpanRecord]) -> list[SpanRecord]:
    """The spans on the run's critical path, first to last (see the module docstring).

    Args:
        spans: every finished span of one run (the root included).
    """
    root = _root(spans)
    root_id = root.span_id if root else None
    work: dict[str, SpanRecord] = {}
    for s in spans:
        if s.span_id != root_id and (s.parent_id == root_id or s.operation == sc.EXECUTE_TOOL):
            work[s.span_id] = s
    if not work:
        return []
    by_task: dict[int, SpanRecord] = {}
    for s in work.values():
        tid = s.attributes.get(sc.TASK_ID)
        if isinstance(tid, int) and (tid not in by_task or s.end_ns > by_task[tid].end_ns):
            by_task[tid] = s  # a retried task: its last attempt
    # spans by end time, for "the latest one that ended before t" lookups (O(log n) + skips)
    all_by_end = sorted(work.values(), key=lambda s: s.end_ns)
    plain_by_end = [s for s in all_by_end if sc.TASK_DEPS not in s.attributes]
    all_ends = [s.end_ns for s in all_by_end]
    plain_ends = [s.end_ns for s in plain_by_end]

    def latest_before(t: int, plain: bool, seen: set[str]) -> SpanRecord | None:
        spans, ends = (plain_by_end, plain_ends) if plain else (all_by_end, all_ends)
        i = bisect.bisect_right(ends, t) - 1
        while i >= 0 and spans[i].span_id in seen:
            i -= 1
        return spans[i] if i >= 0 else None

    cur = max(work.values(), key=lambda s: (s.end_ns, s.start_ns))
    path = [cur]
    seen = {cur.span_id}
    while True:
        pred: SpanRecord | None = None
        is_task = sc.TASK_DEPS in cur.attributes
        deps = [by_task[d] for d in cur.attributes.get(sc.TASK_DEPS) or () if d in by_task] if is_task else []
        if deps:
            pred = max(deps, key=lambda s: s.end_ns)
        else:
            pred = latest_before(cur.start_ns + _EPS_NS, is_task, seen)
            if pred is None and is_task:  # produced by a plan still streaming when the task started
                running = [w for w in plain_by_end if w.span_id not in seen and w.start_ns <= cur.start_ns < w.end_ns]
                pred = max(running, key=lambda s: s.start_ns) if running else None
        if pred is None or pred.span_id in seen:
            break
        path.append(pred)
        seen.add(pred.span_id)
        cur = pred
    path.reverse()
    return path


def assign_lanes(spans: Sequence[SpanRecord]) -> dict[str, int]:
    """Give every span a lane (0, 1, ...) so that spans on one lane never partly overlap.

    On a lane, two spans are either disjoint in time or one is an ancestor of the other and
    contains it (perfect nesting, what Perfetto's JSON importer needs: perfetto.dev/docs/faq). A
    span goes on its parent's lane when it nests there, else on the first free lane, else a new
    lane (greedy interval colouring), so concurrent tool calls get one lane each and a short call
    never looks like the child of a longer sibling.
    """
    parent = {s.span_id: s.parent_id for s in spans}
    order = sorted(spans, key=lambda s: (s.start_ns, -s.end_ns))
    lanes: list[list[SpanRecord]] = []  # per lane: stack of open spans
    lane_of: dict[str, int] = {}

    def is_ancestor(a: str, s: SpanRecord) -> bool:
        p = s.parent_id
        while p is not None:
            if p == a:
                return True
            p = parent.get(p)
        return False

    def fits(i: int, s: SpanRecord) -> bool:
        stack = lanes[i]
        while stack and stack[-1].end_ns <= s.start_ns:
            stack.pop()
        if not stack:
            return True
        top = stack[-1]
        return top.start_ns <= s.start_ns and s.end_ns <= top.end_ns and is_ancestor(top.span_id, s)

    for s in order:
        choice = None
        parent_lane = lane_of.get(s.parent_id) if s.parent_id else None
        if parent_lane is not None and fits(parent_lane, s):
            choice = parent_lane
        else:
            for i in range(len(lanes)):
                if fits(i, s):
                    choice = i
                    break
        if choice is None:
            lanes.append([])
            choice = len(lanes) - 1
        lanes[choice].append(s)
        lane_of[s.span_id] = choice
    return lane_of


def _outermost_with(spans: Sequence[SpanRecord], key: str) -> list[SpanRecord]:
    by_id = {s.span_id: s for s in spans}
    out = []
    for s in spans:
        if key not in s.attributes:
            continue
        p, covered = s.parent_id, False
        while p is not None and p in by_id:
            if key in by_id[p].attributes:
                covered = True
                break
            p = by_id[p].parent_id
        if not covered:
            out.append(s)
    return out


def summarize(spans: Sequence[SpanRecord], *, run_id: str | None = None) -> RunSummary:
    """Totals, critical path and parallel efficiency of one run from its spans."""
    root = _root(spans)
    start = min((s.start_ns for s in spans), default=0)
    end = max((s.end_ns for s in spans), default=0)
    if root is not None:
        start, end = root.start_ns, max(root.end_ns, end)
    summary = RunSummary(run_id=run_id or (spans[0].run_id if spans else ""), name=root.name if root else "",
                         started_ns=start, ended_ns=end, status=root.status if root else "ok",
                         span_count=len(spans),
                         question=root.attributes.get(sc.RUN_QUESTION) if root else None)
    cost = 0.0
    priced = 0
    tool_s = 0.0
    for s in spans:
        a = s.attributes
        if s.operation in sc.INFERENCE_OPERATIONS:
            summary.llm_calls += 1
            summary.input_tokens += int(a.get(sc.USAGE_INPUT_TOKENS, 0))
            summary.output_tokens += int(a.get(sc.USAGE_OUTPUT_TOKENS, 0))
            summary.cached_tokens += int(a.get(sc.USAGE_CACHE_READ_INPUT_TOKENS, 0))
            summary.reasoning_tokens += int(a.get(sc.USAGE_REASONING_OUTPUT_TOKENS, 0))
            if a.get(sc.COST_STATUS) == "unpriced":
                summary.unpriced_calls += 1
        elif s.operation == sc.EXECUTE_TOOL:
            summary.tool_calls += 1
            tool_s += s.duration_s
    for s in _outermost_with(spans, sc.COST_USD):
        cost += float(s.attributes[sc.COST_USD])
        priced += 1
    summary.cost_usd = None if (priced == 0 and summary.unpriced_calls) else cost
    energy = _outermost_with(spans, sc.ENERGY_JOULES)
    if energy:
        summary.energy_j = sum(float(s.attributes[sc.ENERGY_JOULES]) for s in energy)
        methods = {str(s.attributes.get(sc.ENERGY_METHOD, "unknown")) for s in energy}
        summary.energy_method = methods.pop() if len(methods) == 1 else "mixed"
    path = critical_path(spans)
    summary.critical_path = [s.span_id for s in path]
    if path:
        summary.critical_path_s = (path[-1].end_ns - path[0].start_ns) / 1e9
    wall = (end - start) / 1e9
    summary.parallel_efficiency = tool_s / wall if wall > 0 and summary.tool_calls else None
    return summary
