"""Plan validation on arrival: tools, arguments, ids and references of each task as it is parsed.

Rules (each a `PlanIssue` whose message says what to do; the plan goes on without the task):

- the tool must be registered (the message suggests close names);
- the arguments must validate against the tool's schema, where a reference (``Ref``,
  ``{"$ref": N}``, or a string that is exactly ``$N``) may stand for a value of any type —
  literal values must validate and required arguments must be present;
- the id must be new: not used earlier in this plan, nor in an earlier round (``known_ids``);
- every reference (and explicit dependency) must name a task already accepted in this plan or
  finished in an earlier round. A task may not reference itself, and **forward references are
  not allowed**: LLMCompiler plans are written in topological order (a task only uses results
  of tasks above it), so a reference to a task not yet seen is an error. This also makes a
  streamed plan acyclic by construction;
- a task that depends on a rejected task is rejected too, and the message names the rejected
  dependency and why it was rejected.

Each check is O(size of the task), so a plan is validated in linear time. Plans built another
way (the SDK, tests) can be checked as a whole with `validate_plan` / `check_acyclic`.
"""

from __future__ import annotations

import difflib
import logging
import math
import re
from collections.abc import Iterable
from typing import Any

import networkx as nx

from agentrt.errors import InvalidArguments, PlanError
from agentrt.executor import REF_PATTERN, Ref, Task
from agentrt.planner._parser import PlanEvent, PlanIssue, TaskParsed
from agentrt.tools import Tool, ToolRegistry

__all__ = ["PlanValidator", "check_acyclic", "unknown_tool_message", "validate_plan"]

log = logging.getLogger(__name__)


class PlanValidator:
    """Checks each task of one plan (one planning round) as it arrives, in arrival order.

    Args:
        registry: the tools the plan may call.
        known_ids: ids of tasks finished in earlier rounds; they may be referenced but not
            reused.

    Use `check` on each parsed task, or `process` on each parser event (which also learns
    from the parser's own issues, so that dependents of a task that did not even parse are
    rejected with a message naming it).
    """

    def __init__(self, registry: ToolRegistry, known_ids: Iterable[int] = ()) -> None:
        self.registry = registry
        self.known_ids = frozenset(known_ids)
        self._accepted: dict[int, Task] = {}
        self._rejected: dict[int, tuple[int, str]] = {}  # id -> (root cause's id, its reason)
        self._messages: dict[int, str] = {}
        self._placeholders_ok: dict[tuple[str, str], bool] = {}

    @property
    def accepted(self) -> dict[int, Task]:
        """Tasks accepted so far, by id, in arrival order."""
        return dict(self._accepted)

    @property
    def rejected(self) -> dict[int, str]:
        """Ids rejected so far, each with its issue's message."""
        return dict(self._messages)

    def process(self, event: PlanEvent) -> PlanEvent:
        """Validate a `TaskParsed` (it becomes a `PlanIssue` if rejected); record a parser
        `PlanIssue` naming a task as a rejection; pass `PlanEnd` through."""
        if isinstance(event, TaskParsed):
            checked = self.check(event.task)
            return event if checked is event.task else checked  # type: ignore[return-value]
        if isinstance(event, PlanIssue) and event.task_id is not None:
            tid = event.task_id
            if tid not in self._accepted and tid not in self._rejected and tid not in self.known_ids:
                self._rejected[tid] = (tid, event.message)
                self._messages[tid] = event.message
        return event

    def check(self, task: Task) -> Task | PlanIssue:
        """``task`` itself if it is valid, else a `PlanIssue` listing every problem found."""
        tid = task.id
        problems: list[str] = []
        new_id = True
        if tid in self.known_ids:
            new_id = False
            problems.append(f"id {tid} belongs to a task of an earlier round; number new tasks "
                            f"from {max(self.known_ids) + 1}")
        elif tid in self._accepted or tid in self._rejected:
            new_id = False
            problems.append(f"duplicate id {tid}; every task needs a new id")
        root: tuple[int, str] | None = None
        for d in sorted(task.deps):
            if d == tid:
                problems.append(f"it references itself (${d})")
            elif d in self._rejected:
                root_id, reason = self._rejected[d]
                via = "" if root_id == d else f"task {root_id}: "
                problems.append(f"it depends on rejected task {d} ({via}{_clip(reason)})")
                root = root or (root_id, reason)
            elif d not in self._accepted and d not in self.known_ids:
                where = "comes later" if d > tid else "does not exist"
                problems.append(f"it references task {d}, which {where}: a task may only use "
                                "results of tasks written before it (forward references are not "
                                "allowed)")
        tool = self.registry.get(task.tool) if task.tool in self.registry else None
        if tool is None:
            problems.append(unknown_tool_message(task.tool, self.registry))
        else:
            problems.extend(self._check_args(tool, task))
        if not problems:
            self._accepted[tid] = task
            return task
        message = f"task {tid} ({task.tool}) rejected: " + "; ".join(problems)
        if new_id:
            self._rejected[tid] = root if root and len(problems) == 1 else (tid, "; ".join(problems))
            self._messages[tid] = message
        return PlanIssue(tid, task.render(), message)

    def _check_args(self, tool: Tool, task: Task) -> list[str]:
        params = tool.parameters or {}
        args: dict[str, Any] = {}
        ref_keys = []
        for k, v in task.args.items():
            args[k], n = _substitute(v, _property(params, k), params)
            if n:
                ref_keys.append(k)
        try:
            tool.validate_args(args)
        except InvalidArguments as exc:
            untrusted = [k for k in ref_keys if not self._trust_placeholder(tool, k)]
            if untrusted:
                log.debug("task %s: arguments of %s not checked, no valid placeholder for %s: %s",
                          task.id, tool.name, untrusted, exc)
                return []
            msg = str(exc)
            head = f"{tool.name}: invalid arguments: "
            return [f"invalid arguments: {msg[len(head):] if msg.startswith(head) else msg}"]
        return _check_keys(task.args, params)

    def _trust_placeholder(self, tool: Tool, key: str) -> bool:
        """Whether placeholders for argument ``key`` of ``tool`` validate, so that an error in
        arguments with a reference there is the arguments' fault, not the placeholder's."""
        ok = self._placeholders_ok.get((tool.name, key))
        if ok is None:
            params = tool.parameters or {}
            probe = _placeholder(params, params)
            if not isinstance(probe, dict):
                probe = {}
            probe[key] = _placeholder(_property(params, key), params, deep=True)
            try:
                tool.validate_args(probe)
                ok = True
            except InvalidArguments:
                ok = False
            self._placeholders_ok[(tool.name, key)] = ok
        return ok


def unknown_tool_message(name: str, registry: ToolRegistry) -> str:
    """``unknown tool 'x'`` with close names (difflib) and the known tools."""
    names = registry.names
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    close += [n for n in names if n.rsplit(".", 1)[-1] == name and n not in close]
    msg = f"unknown tool {name!r}"
    if close:
        msg += "; did you mean " + " or ".join(repr(c) for c in close) + "?"
    shown = sorted(names)[:20]
    more = f" and {len(names) - 20} more" if len(names) > 20 else ""
    return msg + f" (tools: {', '.join(shown) or 'none'}{more})"


def check_acyclic(tasks: Iterable[Task]) -> list[int]:
    """Task ids in a topological order (dependencies first), for plans in any order.

    Dependencies on ids that are not among ``tasks`` (finished earlier) are ignored.

    Raises:
        PlanError: two tasks share an id, or the dependencies form a cycle (the message
            gives the cycle, e.g. ``2 -> 3 -> 2``; a self-reference is ``3 -> 3``).
    """
    graph = nx.DiGraph()
    tasks = list(tasks)
    for t in tasks:
        if t.id in graph:
            raise PlanError(f"duplicate task id {t.id}")
        graph.add_node(t.id)
    for t in tasks:
        graph.add_edges_from((d, t.id) for d in t.deps if d in graph)
    try:
        return list(nx.topological_sort(graph))
    except nx.NetworkXUnfeasible:
        cycle = nx.find_cycle(graph)
        path = " -> ".join(str(u) for u, _ in cycle) + f" -> {cycle[0][0]}"
        raise PlanError(f"the plan has a cycle: {path}; a task cannot (indirectly) use its own "
                        "result") from None


def validate_plan(tasks: Iterable[Task], registry: ToolRegistry,
                  known_ids: Iterable[int] = ()) -> tuple[list[Task], list[PlanIssue]]:
    """Validate a whole plan given in any order: accepted tasks (topological order) and issues.

    Raises:
        PlanError: duplicate ids or a cycle (see `check_acyclic`).
    """
    tasks = list(tasks)
    order = check_acyclic(tasks)
    by_id = {t.id: t for t in tasks}
    validator = PlanValidator(registry, known_ids)
    accepted, issues = [], []
    for tid in order:
        checked = validator.check(by_id[tid])
        (issues if isinstance(checked, PlanIssue) else accepted).append(checked)
    return accepted, issues  # type: ignore[return-value]


# -- arguments with references ----------------------------------------------------------------

def _is_ref(value: Any) -> bool:
    if isinstance(value, Ref):
        return True
    if isinstance(value, dict):
        return len(value) == 1 and isinstance(value.get("$ref"), int)
    return isinstance(value, str) and "$" in value and REF_PATTERN.fullmatch(value.strip()) is not None


def _substitute(value: Any, schema: Any, root: dict[str, Any]) -> tuple[Any, int]:
    """``value`` with each reference replaced by a placeholder valid for its position's schema;
    also the number of references replaced."""
    if _is_ref(value):
        return _placeholder(schema, root), 1
    if isinstance(value, dict):
        s = _branch(schema, root, "object", value)
        out, n = {}, 0
        for k, v in value.items():
            out[k], m = _substitute(v, _property(s, k), root)
            n += m
        return out, n
    if isinstance(value, list):
        s = _branch(schema, root, "array", value)
        out_list, n = [], 0
        for i, v in enumerate(value):
            item, m = _substitute(v, _item(s, i), root)
            out_list.append(item)
            n += m
        return out_list, n
    return value, 0


def _resolve(s: Any, root: dict[str, Any]) -> dict[str, Any]:
    for _ in range(16):
        if not isinstance(s, dict):
            return {}
        ref = s.get("$ref")
        if not isinstance(ref, str):
            return s
        m = re.fullmatch(r"#/(\$defs|definitions)/(.+)", ref)
        if m is None:
            return {}
        name = m.group(2).replace("~1", "/").replace("~0", "~")
        s = (root.get(m.group(1)) or {}).get(name, {})
    return {}


def _branch(schema: Any, root: dict[str, Any], kind: str, value: Any) -> dict[str, Any]:
    """The sub-schema of ``schema`` (through ``$ref`` and ``anyOf``) that fits a dict or list."""
    s = _resolve(schema, root)
    branches = s.get("anyOf") or s.get("oneOf")
    if not branches:
        return s
    best, score = {}, -1
    for b in branches:
        b = _resolve(b, root)
        t = b.get("type")
        fits = t == kind or (isinstance(t, list) and kind in t) or (
            t is None and ("properties" in b if kind == "object" else "items" in b))
        if not fits:
            continue
        sc = len(set(value) & set(b.get("properties", {}))) if kind == "object" else 0
        if sc > score:
            best, score = b, sc
    return best


def _property(s: dict[str, Any], key: str) -> Any:
    props = s.get("properties") or {}
    if key in props:
        return props[key]
    for pattern, sub in (s.get("patternProperties") or {}).items():
        if re.search(pattern, key):
            return sub
    extra = s.get("additionalProperties")
    return extra if isinstance(extra, dict) else {}


def _item(s: dict[str, Any], i: int) -> Any:
    prefix = s.get("prefixItems")
    if isinstance(prefix, list) and i < len(prefix):
        return prefix[i]
    items = s.get("items")
    if isinstance(items, list):
        return items[i] if i < len(items) else {}
    return items if isinstance(items, dict) else {}


_FORMATS = {
    "date-time": "2000-01-01T00:00:00Z", "date": "2000-01-01", "time": "00:00:00",
    "duration": "P1D", "uri": "https://example.com/", "url": "https://example.com/",
    "email": "user@example.com", "uuid": "00000000-0000-4000-8000-000000000000",
    "ipv4": "127.0.0.1", "ipv6": "::1", "hostname": "example.com",
}


def _placeholder(schema: Any, root: dict[str, Any], *, deep: bool = False, depth: int = 0) -> Any:
    """A value valid for ``schema`` (best effort): what a reference stands for while the
    literal arguments around it are validated. ``deep`` fills optional properties and one
    array item too (used to test that placeholders of a tool's schema validate at all)."""
    s = _resolve(schema, root)
    if depth > 24 or not s:
        return None
    if "const" in s:
        return s["const"]
    if s.get("enum"):
        return s["enum"][0]
    branches = s.get("anyOf") or s.get("oneOf")
    if branches:
        resolved = [_resolve(b, root) for b in branches]
        b = next((r for r in resolved if r.get("type") != "null"), resolved[0])
        return _placeholder(b, root, deep=deep, depth=depth + 1)
    if s.get("allOf"):
        merged: dict[str, Any] = {}
        for part in s["allOf"]:
            merged.update(_resolve(part, root))
        merged.update({k: v for k, v in s.items() if k != "allOf"})
        return _placeholder(merged, root, deep=deep, depth=depth + 1)
    t = s.get("type")
    if isinstance(t, list):
        t = next((x for x in t if x != "null"), "null")
    if t is None:
        t = "object" if "properties" in s else "array" if "items" in s else None
    deep = deep and depth < 4
    if t == "string":
        return _string(s)
    if t in ("integer", "number"):
        return _number(s, t == "integer")
    if t == "boolean":
        return False
    if t == "array":
        n = max(int(s.get("minItems", 0)), 1 if deep else 0)
        n = min(n, int(s.get("maxItems", n)))
        return [_placeholder(_item(s, i), root, deep=deep, depth=depth + 1) for i in range(n)]
    if t == "object":
        props = s.get("properties") or {}
        keys = list(props) if deep else [k for k in s.get("required", []) if k in props]
        return {k: _placeholder(props[k], root, deep=deep, depth=depth + 1) for k in keys}
    return None  # any value (or "null")


def _string(s: dict[str, Any]) -> str:
    base = _FORMATS.get(s.get("format", ""), "x")
    lo, hi = int(s.get("minLength", 0)), s.get("maxLength")
    candidates = [base, "x", "a", "0", "A", "a0", "A0", "0a", "a_0", "a-0", "a.a", "a a", "example",
                  "user@example.com", ""]
    pattern = s.get("pattern")
    for c in candidates:
        c = c + "x" * max(0, lo - len(c))
        if hi is not None:
            c = c[: int(hi)]
        if len(c) < lo:
            continue
        if pattern is None:
            return c
        try:
            if re.search(pattern, c):
                return c
        except re.error:
            return c
    return base


def _number(s: dict[str, Any], integer: bool) -> int | float:
    lo, lo_x = s.get("minimum"), s.get("exclusiveMinimum")
    hi, hi_x = s.get("maximum"), s.get("exclusiveMaximum")
    step = s.get("multipleOf")

    def ok(v: float) -> bool:
        return ((lo is None or v >= lo) and (lo_x is None or v > lo_x) and (hi is None or v <= hi)
                and (hi_x is None or v < hi_x) and (not step or abs(v / step - round(v / step)) < 1e-9))

    bounds = [b for b in (lo, lo_x, hi, hi_x) if isinstance(b, (int, float))]
    candidates: list[float] = [0]
    for b in bounds:
        candidates += [b, b + 1, b - 1, b + 0.5, b - 0.5]
    if len(bounds) >= 2:
        candidates.append((min(bounds) + max(bounds)) / 2)
    if step:
        candidates += [math.ceil(c / step) * step for c in list(candidates)]
    for c in candidates:
        v = math.ceil(c) if integer and c != int(c) else c
        v = int(v) if integer else float(v)
        if ok(v):
            return v
    return 0 if integer else 0.0


def _check_keys(args: dict[str, Any], params: dict[str, Any]) -> list[str]:
    """Required and unknown arguments by the schema alone (for tools validated by nothing else)."""
    props = params.get("properties") or {}
    problems = [f"missing required argument {k!r}" for k in params.get("required", []) if k not in args]
    if params.get("additionalProperties") is False:
        unknown = [k for k in args if k not in props]
        if unknown:
            problems.append(f"unknown argument(s) {', '.join(map(repr, unknown))} "
                            f"(expected: {', '.join(props) or 'none'})")
    return problems


def _clip(s: str, n: int = 160) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"

