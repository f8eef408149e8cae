"""Plan events, and the streaming parser of LLMCompiler's numbered text plans.

A plan parser is fed the model's output chunk by chunk and emits a `TaskParsed` the moment a
task's text is complete — its closing parenthesis here, its closing brace in a JSON plan (see
`agentrt.planner.JsonPlanParser`) — never at the next newline, so the scheduler can dispatch it
while the model is still writing the plan. Bad input never raises: a line or task that cannot
be understood becomes a `PlanIssue`, and the plan's end (``join()``, the join marker, or the
end of the stream) is a `PlanEnd`.

Text format (Kim et al., "An LLM Compiler for Parallel Function Calling", arXiv:2312.04511)::

    Thought: optional free text, attached to the next task
    1. search(query="population of France")
    2. search("population of Germany")          # positional: the tool's parameters in order
    3. math(expression="$1 + $2")
    4. join()
    <END_OF_PLAN>

Syntax only is checked here; tools, arguments and references are checked by
`agentrt.planner.PlanValidator`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from agentrt.executor import Task
from agentrt.planner._literals import parse_call_args
from agentrt.tools import ToolRegistry

__all__ = [
    "JOIN_TOOL",
    "PlanEnd",
    "PlanEvent",
    "PlanIssue",
    "TaskParsed",
    "TextPlanParser",
    "parse_plan",
]

#: The reserved function name that ends a plan (LLMCompiler's ``join()``); never a tool.
JOIN_TOOL = "join"
END_OF_PLAN = "<END_OF_PLAN>"


@dataclass(frozen=True, slots=True)
class TaskParsed:
    """A task whose text is complete and syntactically valid (not yet validated).

    Attributes:
        task: the task; references are `Ref` objects (bare ``$N`` / ``{"$ref": N}``) or
            ``$N`` text inside strings.
        text: the task's source text, for traces and error messages.
    """

    task: Task
    text: str = ""


@dataclass(frozen=True, slots=True)
class PlanIssue:
    """A line or task that was rejected; the plan goes on without it.

    Attributes:
        task_id: the id of the rejected task, or ``None`` for a line that is not a task.
        text: the offending source text (a task's rendering for validation issues).
        message: what was wrong and what to do, self-contained (it is shown to the replanner).
    """

    task_id: int | None
    text: str
    message: str


@dataclass(frozen=True, slots=True)
class PlanEnd:
    """The plan is over; nothing after this event is parsed.

    Attributes:
        joined: the planner ended the plan itself (``join()``, the JSON join marker, or the
            close of a ``[...]`` / ``{"tasks": [...]}`` plan); ``False`` when the stream just
            stopped (end of output, ``<END_OF_PLAN>`` without ``join()``, truncation).
        thought: a ``Thought:`` (or the join marker's ``"thought"``) not attached to any task,
            usually the planner's note before ``join()``.
    """

    joined: bool
    thought: str | None = None


PlanEvent = TaskParsed | PlanIssue | PlanEnd

_THOUGHT = re.compile(r"thought\s*:\s*(.*)", re.I | re.S)
_NUMBERED = re.compile(r"\s*(?:[-*]\s+)?(?:(?:action|step|task)\s*)?(\d+)\s*[.):]")


class _PlanParser:
    """What both parsers share: thoughts, the end of the plan, and lines outside tasks."""

    def __init__(self, registry: ToolRegistry | None = None) -> None:
        self.registry = registry
        self._thoughts: list[str] = []
        self._ended = False

    @property
    def ended(self) -> bool:
        """A `PlanEnd` has been emitted; further input is ignored."""
        return self._ended

    def feed(self, chunk: str) -> list[PlanEvent]:
        """Parse ``chunk``; returns the events it completed (often none)."""
        if self._ended or not chunk:
            return []
        self._buf += chunk
        out: list[PlanEvent] = []
        self._scan(out)
        return out

    def _scan(self, out: list[PlanEvent]) -> None:
        """Consume what ``self._buf`` holds, appending completed events to ``out``."""
        raise NotImplementedError

    def close(self) -> list[PlanEvent]:
        """End of the stream: flush what is pending; the last event is the `PlanEnd`."""
        raise NotImplementedError

    def _take_thought(self) -> str | None:
        if not self._thoughts:
            return None
        text = " ".join(self._thoughts)
        self._thoughts.clear()
        return text

    def _end(self, joined: bool, thought: str | None = None) -> PlanEnd:
        self._ended = True
        pending = self._take_thought()
        return PlanEnd(joined=joined, thought=thought or pending)

    def _line(self, line: str, out: list[PlanEvent], expected: str) -> None:
        """A complete line outside any task: blank, fence, comment, thought, end, or garbage."""
        s = line.strip().strip(",")
        if not s or s.startswith(("```", "#", "//")):
            return
        if s.startswith(END_OF_PLAN):
            out.append(self._end(joined=False))
            return
        m = _THOUGHT.match(s)
        if m:
            if m.group(1).strip():
                self._thoughts.append(m.group(1).strip())
            return
        num = _NUMBERED.match(s)
        tid = int(num.group(1)) if num else None
        out.append(PlanIssue(tid, s, f"line {_clip(s)!r} is not a task: expected {expected}"))


class TextPlanParser(_PlanParser):
    """Incremental parser of LLMCompiler's numbered text plans.

    ``feed(chunk)`` returns the events completed by ``chunk``; ``close()`` flushes the end of
    the stream. A task is emitted when its closing parenthesis arrives — brackets are balanced
    and string literals (``'...'`` or ``"..."``, with escapes) are skipped, so parentheses,
    quotes and ``$1`` inside strings or nested lists/dicts do not end it early.

    Accepted: ``N. tool(args)``, also ``N)`` / ``N:`` / ``Action N:`` / ``Step N:`` and a
    leading ``-`` bullet; dotted tool names (``db.query``); ``join()`` with or without a number
    (it ends the plan); ``Thought: ...`` lines (attached to the next task, or to the
    `PlanEnd`); code fences, blank lines, ``#`` comments and ``<END_OF_PLAN>``. Arguments are
    keyword (``k=v``) or positional (mapped onto the tool's parameters in schema order, so
    the registry is needed); values are Python/JSON literals (strings, numbers,
    ``True/False/None``, ``true/false/null``, lists, dicts) or references ``$N`` / ``${N}``,
    which become ``Ref(task=N)``; inside a string ``$N`` stays text, which `Task` understands.

    Recovery: a string still open at the end of its line, a mismatched bracket, or a new task
    line while a task is still open, makes the unfinished task a `PlanIssue` and parsing goes
    on at the next line. A stream that ends inside a task gives a `PlanIssue` for that task.
    """

    _EXPECTED = "'N. tool(arguments)' or 'N. join()'"
    _HEADER = re.compile(
        r"\s*(?:[-*]\s+)?(?:(?:action|step|task)\s*)?(\d+)\s*[.):]\s*"
        r"([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)\s*\(",
        re.I,
    )
    _BARE_JOIN = re.compile(r"\s*(join)\s*\(")
    _RESTART = re.compile(r"\s*(?:thought\s*:|<END_OF_PLAN>|```)", re.I)
    _LINE_STOP = re.compile(r"[\n(]")
    _TASK_STOP = re.compile(r"[()\[\]{}\"'\n]")
    _IN_STRING = {'"': re.compile(r'[\\"\n]'), "'": re.compile(r"[\\'\n]")}
    _CLOSER = {")": "(", "]": "[", "}": "{"}

    def __init__(self, registry: ToolRegistry | None = None) -> None:
        super().__init__(registry)
        self._buf = ""  # unconsumed text; index 0 is the start of the current line or task
        self._i = 0  # scan position in _buf
        self._mode = "line"  # line | task | skip (rest of a broken line)
        self._line_paren = False  # the current line's first '(' was already examined
        self._after_task: int | None = None  # id of the task that ended earlier on this line
        # task state
        self._tid = 0
        self._tool = ""
        self._args_at = 0
        self._stack: list[str] = []
        self._quote: str | None = None
        self._nl: int | None = None  # start of the latest line inside an open task
        self._nl_paren = False

    def close(self) -> list[PlanEvent]:
        """End of the stream: flush the last line; a task still open becomes a `PlanIssue`."""
        if self._ended:
            return []
        out: list[PlanEvent] = []
        if self._mode == "task" and self._tool == JOIN_TOOL:
            out.append(self._end(joined=True))  # "join(" cut off: the planner did end the plan
        elif self._mode == "task":
            text = self._buf.strip()
            out.append(PlanIssue(self._tid, text, (
                f"task {self._tid} ({self._tool}) is truncated: the plan ended before its closing "
                "parenthesis")))
            self._take_thought()
        elif self._mode == "line":
            self._text_line(self._buf, out)
        self._buf, self._i, self._mode = "", 0, "line"
        if not self._ended:
            out.append(self._end(joined=False))
        return out

    # -- scanning -------------------------------------------------------------------------

    def _scan(self, out: list[PlanEvent]) -> None:
        while not self._ended:
            if self._mode == "line":
                if not self._scan_line(out):
                    return
            elif self._mode == "task":
                if not self._scan_task(out):
                    return
            else:  # skip the rest of a broken line
                j = self._buf.find("\n", self._i)
                if j < 0:
                    self._i = len(self._buf)
                    return
                self._consume(j + 1)
                self._mode = "line"

    def _consume(self, upto: int) -> None:
        self._buf = self._buf[upto:]
        self._i = 0
        self._line_paren = False

    def _scan_line(self, out: list[PlanEvent]) -> bool:
        """Advance in a line outside any task; False when more input is needed."""
        buf = self._buf
        m = self._LINE_STOP.search(buf, self._i)
        if m is None:
            self._i = len(buf)
            return False
        j = m.start()
        if buf[j] == "\n":
            self._text_line(buf[:j], out)
            self._consume(j + 1)
            self._after_task = None
            return True
        self._i = j + 1
        if self._line_paren:
            return True
        self._line_paren = True
        h = self._HEADER.fullmatch(buf, 0, j + 1)
        if h is not None:
            self._start_task(int(h.group(1)), h.group(2), j + 1)
        else:
            b = self._BARE_JOIN.fullmatch(buf, 0, j + 1)
            if b is not None:
                self._start_task(0, JOIN_TOOL, j + 1)
        return True

    def _text_line(self, line: str, out: list[PlanEvent]) -> None:
        if self._after_task is not None:
            s = line.strip()
            if s and not s.startswith(("#", "//", END_OF_PLAN)):
                num = _NUMBERED.match(s)
                out.append(PlanIssue(int(num.group(1)) if num else None, s, (
                    f"unexpected text {_clip(s)!r} after task {self._after_task}; write one task "
                    "per line")))
                return
        self._line(line, out, self._EXPECTED)

    def _start_task(self, tid: int, tool: str, args_at: int) -> None:
        self._mode = "task"
        self._tid, self._tool, self._args_at = tid, tool, args_at
        self._stack = ["("]
        self._quote = None
        self._nl = None
        self._nl_paren = False
        self._i = args_at

    def _abort_task(self, out: list[PlanEvent], upto: int, why: str, *, mode: str = "line") -> None:
        text = self._buf[:upto].strip()
        out.append(PlanIssue(self._tid or None, text, f"task {self._tid} ({self._tool}): {why}"))
        self._take_thought()  # it was the broken task's
        self._consume(upto)
        self._mode = mode
        self._after_task = None

    def _scan_task(self, out: list[PlanEvent]) -> bool:
        """Advance inside a task's parentheses; False when more input is needed."""
        buf, n, i = self._buf, len(self._buf), self._i
        while i < n:
            if self._quote is not None:
                m = self._IN_STRING[self._quote].search(buf, i)
                if m is None:
                    self._i = n
                    return False
                j = m.start()
                c = buf[j]
                if c == "\\":
                    if j + 1 >= n:  # the escaped character has not arrived yet
                        self._i = j
                        return False
                    i = j + 2
                    continue
                if c == "\n":
                    self._abort_task(out, j + 1, "a string is not closed before the end of its line")
                    return True
                self._quote = None
                i = j + 1
                continue
            m = self._TASK_STOP.search(buf, i)
            if m is None:
                self._i = n
                return False
            j = m.start()
            c = buf[j]
            i = j + 1
            if c == '"' or c == "'":
                self._quote = c
            elif c == "\n":
                if self._nl is not None and self._RESTART.match(buf, self._nl, j):
                    self._abort_task(out, self._nl, "missing closing parenthesis")
                    return True
                self._nl, self._nl_paren = j + 1, False
            elif c in "([{":
                if c == "(" and self._nl is not None and not self._nl_paren:
                    self._nl_paren = True
                    if self._HEADER.fullmatch(buf, self._nl, j + 1) or self._BARE_JOIN.fullmatch(
                            buf, self._nl, j + 1):
                        self._abort_task(out, self._nl, "missing closing parenthesis")
                        return True
                self._stack.append(c)
            else:  # a closer
                if self._stack[-1] != self._CLOSER[c]:
                    self._abort_task(out, j + 1, f"mismatched {c!r} in the arguments", mode="skip")
                    return True
                self._stack.pop()
                if not self._stack:
                    self._finish_task(out, j)
                    return True
        self._i = n
        return False

    def _finish_task(self, out: list[PlanEvent], close_at: int) -> None:
        text = self._buf[: close_at + 1].strip()
        args_text = self._buf[self._args_at:close_at]
        tid, tool = self._tid, self._tool
        self._consume(close_at + 1)
        self._line_paren = True  # a second task on the same line is not started by '('
        self._mode = "line"
        if tool == JOIN_TOOL:
            out.append(self._end(joined=True))
            return
        self._after_task = tid
        out.append(self._make_task(tid, tool, args_text, text))

    def _make_task(self, tid: int, tool: str, args_text: str, text: str) -> PlanEvent:
        try:
            positional, kwargs = parse_call_args(args_text)
        except ValueError as exc:
            self._take_thought()
            return PlanIssue(tid, text, f"task {tid} ({tool}): cannot parse the arguments: {exc}")
        if positional:
            params = _param_names(self.registry, tool)
            if params is None:  # unknown tool: keep the values; the validator rejects the tool
                params = [f"_{k}" for k in range(len(positional))]
            if len(positional) > len(params):
                self._take_thought()
                return PlanIssue(tid, text, (
                    f"task {tid} ({tool}): {len(positional)} positional arguments given but the tool "
                    f"takes {len(params)} ({', '.join(params) or 'none'})"))
            given = dict(zip(params, positional))
            twice = [k for k in given if k in kwargs]
            if twice:
                self._take_thought()
                return PlanIssue(tid, text, f"task {tid} ({tool}): argument {twice[0]!r} given twice")
            kwargs = {**given, **kwargs}
        return _task_event(tid, tool, kwargs, self._take_thought(), text)


def parse_plan(text: str, registry: ToolRegistry | None = None, *,
               format: str = "auto") -> list[PlanEvent]:
    """Parse a whole plan at once (not streaming); the events end with one `PlanEnd`.

    Args:
        text: the complete plan text.
        registry: needed to map positional arguments of the text format.
        format: ``"text"``, ``"json"``, or ``"auto"`` (JSON when the first non-blank,
            non-fence character is ``{`` or ``[``).
    """
    if format == "auto":
        body = re.sub(r"^\s*(```[^\n]*\n\s*)?", "", text)
        format = "json" if body[:1] in ("{", "[") else "text"
    from agentrt.planner._json_parser import JsonPlanParser  # it builds on this module

    parser: _PlanParser
    if format == "json":
        parser = JsonPlanParser(registry)
    elif format == "text":
        parser = TextPlanParser(registry)
    else:
        raise ValueError(f"unknown plan format {format!r}: use 'text', 'json' or 'auto'")
    return parser.feed(text) + parser.close()


# -- shared by both parsers ------------------------------------------------------------------

def _task_event(tid: int, tool: str, args: dict[str, Any], thought: str | None, text: str,
                deps: frozenset[int] = frozenset()) -> PlanEvent:
    try:
        task = Task(id=tid, tool=tool, args=args, thought=thought, deps=deps)
    except ValidationError as exc:
        msg = "; ".join(e["msg"] for e in exc.errors())
        return PlanIssue(tid, text, f"task {tid} ({tool}) is invalid: {msg} (task ids start at 1)")
    return TaskParsed(task, text)


def _param_names(registry: ToolRegistry | None, tool: str) -> list[str] | None:
    if registry is None or tool not in registry:
        return None
    return list(registry.get(tool).parameters.get("properties", {}))


def _clip(s: str, n: int = 120) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"
