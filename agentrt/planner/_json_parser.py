"""The streaming parser of JSON plans: JSON lines, a JSON array, or ``{"tasks": [...]}``.

JSON-lines format, one object per task, then the join marker::

    {"id": 1, "tool": "search", "args": {"query": "population of France"}}
    {"id": 2, "thought": "...", "tool": "search", "args": {"query": "population of Germany"}}
    {"id": 3, "tool": "add", "args": {"a": {"$ref": 1}, "b": {"$ref": 2}}}
    {"join": true}

Schemas that constrain a model to this format: `agentrt.planner.plan_json_schema` (one object)
and `agentrt.planner.plan_array_schema` (a whole ``{"tasks": [...]}`` plan).
"""

from __future__ import annotations

import json
import re
from typing import Any

from agentrt.planner._literals import parse_value, refs_to_objects
from agentrt.planner._parser import (
    JOIN_TOOL,
    PlanEvent,
    PlanIssue,
    _clip,
    _PlanParser,
    _task_event,
)
from agentrt.tools import ToolRegistry

__all__ = ["JsonPlanParser"]


class JsonPlanParser(_PlanParser):
    """Incremental parser of JSON plans: JSON lines, a JSON array, or ``{"tasks": [...]}``.

    One task is one object (keys in any order)::

        {"id": 3, "thought": "optional", "tool": "add", "args": {"a": {"$ref": 1}, "b": "$2"}}

    - ``id``: positive integer, required; ``tool``: the tool name, required; ``args``: object
      (default ``{}``; a JSON string is decoded, as in OpenAI tool calls); ``thought``: optional
      text; ``deps``: optional list of extra task ids to wait for. ``name`` and ``arguments``
      are accepted for ``tool`` and ``args``.
    - A reference is ``{"$ref": N}`` anywhere in ``args`` (it becomes ``Ref(task=N)``); a
      string ``"$N"`` or text containing ``$N`` is kept as is (`Task` understands it).
    - The join marker ends the plan: ``{"join": true}`` (optionally with ``"thought"``); an
      object whose tool is ``"join"`` is accepted too.
    - The whole plan may be wrapped: ``[ {...}, {...} ]`` or ``{"tasks": [ ... ]}`` (also
      ``"plan"`` or ``"steps"`` as the key), the form a whole-output JSON schema produces (see
      `plan_array_schema`); there the closing ``]`` of the task array ends the plan as a join.
      A ``"thought"`` string before the array is attached to the first task.

    Each object is emitted when its closing brace arrives, with or without a newline after it
    (nesting and strings, with escapes, are tracked). Code fences, blank lines, ``Thought:``
    lines and ``<END_OF_PLAN>`` are tolerated between objects; other text outside objects is a
    `PlanIssue`. An object that is not valid JSON is retried as a Python literal (single quotes,
    ``True``, trailing commas, bare ``$N``) before it is rejected. A string that runs past the
    end of its line (JSON forbids raw newlines in strings) or a mismatched bracket rejects the
    object being read, and parsing goes on at the next line.
    """

    _EXPECTED = 'one JSON object per task, e.g. {"id": 1, "tool": "search", "args": {...}}'
    _TASK_KEYS = frozenset({"tasks", "plan", "steps"})
    _TOKEN = re.compile(r'[{}\[\]",:]')
    _IN_STRING = re.compile(r'[\\"\n]')
    _ID = re.compile(r'"id"\s*:\s*"?(\d+)')

    def __init__(self, registry: ToolRegistry | None = None) -> None:
        super().__init__(registry)
        self._buf = ""
        self._i = 0
        self._stack: list[str] = []
        self._in_str = False
        self._str_at = 0
        self._line_blank = True  # only whitespace and commas since the line (or value) began
        self._skip_line = False  # dropping the rest of a line after a broken object
        self._item_at: int | None = None  # where the object being read began
        self._item_depth = 0  # len(stack) while inside that object
        self._array_depth: int | None = None  # len(stack) inside the plan's task array
        self._array_at = 0  # where a top-level array began
        self._array_items = 0  # objects seen in the plan's task array
        self._key_next = False  # the next string in the top-level object is a key
        self._key: str | None = None  # the latest key of the top-level object
        self._top_thought: str | None = None  # its "thought" value

    def close(self) -> list[PlanEvent]:
        """End of the stream: a task still open becomes a `PlanIssue`; then `PlanEnd`."""
        if self._ended:
            return []
        out: list[PlanEvent] = []
        if self._item_at is not None:
            text = self._buf[self._item_at:].strip()
            m = self._ID.search(text)
            tid = int(m.group(1)) if m else None
            out.append(PlanIssue(tid, text, (
                f"task {tid if tid is not None else '(no id)'} is truncated: the plan ended before "
                "its closing brace")))
        elif not self._stack and not self._skip_line:
            self._line(self._buf, out, self._EXPECTED)
        self._buf, self._i, self._stack = "", 0, []
        if not self._ended:
            out.append(self._end(joined=False))
        return out

    def _reset(self, out: list[PlanEvent], upto: int, why: str) -> None:
        """Drop a broken object (and any wrapper around it); go on at the next line."""
        text = self._buf[self._item_at if self._item_at is not None else 0:upto].strip()
        m = self._ID.search(text)
        tid = int(m.group(1)) if m else None
        out.append(PlanIssue(tid, text, f"task {tid if tid is not None else '(no id)'}: {why}"))
        self._stack.clear()
        self._in_str = False
        self._item_at = None
        self._array_depth = None
        nl = self._buf.find("\n", upto - 1)
        self._buf = self._buf[nl + 1:] if nl >= 0 else ""
        self._skip_line = nl < 0  # the rest of the line has not arrived yet
        self._i = 0
        self._line_blank = True

    def _scan(self, out: list[PlanEvent]) -> None:
        buf = self._buf
        i, n = self._i, len(buf)
        while i < n and not self._ended:
            if self._in_str:
                m = self._IN_STRING.search(buf, i)
                if m is None:
                    i = n
                    break
                j = m.start()
                c = buf[j]
                if c == "\\":
                    if j + 1 >= n:
                        i = j
                        break
                    i = j + 2
                    continue
                if c == "\n":
                    self._reset(out, j + 1, "a string is not closed before the end of its line")
                    buf, i, n = self._buf, 0, len(self._buf)
                    continue
                self._in_str = False
                if len(self._stack) == 1 and self._stack[0] == "{":
                    self._top_level_string(buf[self._str_at:j + 1])
                i = j + 1
                continue
            if not self._stack:  # between values: a line of text, or the start of a value
                if self._skip_line:  # the rest of a broken line
                    nl = buf.find("\n", i)
                    self._skip_line = nl < 0
                    self._buf = buf = buf[nl + 1:] if nl >= 0 else ""
                    i, n = 0, len(buf)
                    continue
                c = buf[i]
                if c == "\n":
                    self._line(buf[:i], out, self._EXPECTED)
                    self._buf = buf = buf[i + 1:]
                    i, n = 0, len(buf)
                    self._line_blank = True
                elif c in "{[" and self._line_blank:
                    self._stack.append(c)
                    if c == "{":
                        self._item_at, self._item_depth = i, 1
                        self._key_next, self._key, self._top_thought = True, None, None
                    else:
                        self._array_depth, self._array_at, self._array_items = 1, i, 0
                    i += 1
                else:
                    if c not in " \t\r,":
                        self._line_blank = False
                    i += 1
                continue
            m = self._TOKEN.search(buf, i)
            if m is None:
                i = n
                break
            j = m.start()
            c = buf[j]
            i = j + 1
            depth = len(self._stack)
            if c == '"':
                self._in_str, self._str_at = True, j
            elif c == "{" or c == "[":
                if depth == 1 and c == "[" and self._stack[0] == "{" and self._key in self._TASK_KEYS \
                        and self._item_at is not None and self._item_depth == 1:
                    self._item_at, self._array_depth = None, 2  # {"tasks": [ -- a wrapper
                    if self._top_thought:
                        self._thoughts.append(self._top_thought)
                    self._array_at, self._array_items = j, 0
                elif c == "{" and self._item_at is None and depth == self._array_depth:
                    self._item_at, self._item_depth = j, depth + 1
                    self._array_items += 1
                self._stack.append(c)
            elif c == "}" or c == "]":
                if self._stack[-1] != ("{" if c == "}" else "["):
                    self._reset(out, j + 1, f"mismatched {c!r}")
                    buf, i, n = self._buf, 0, len(self._buf)
                    continue
                self._stack.pop()
                if c == "}" and self._item_at is not None and depth == self._item_depth:
                    text = buf[self._item_at:j + 1]
                    self._item_at = None
                    out.append(self._item(text))
                elif c == "]" and depth == self._array_depth:
                    self._array_depth = None
                    text = buf[self._array_at:j + 1]
                    if self._array_items or not text.startswith("[") or re.fullmatch(r"\[\s*\]", text):
                        out.append(self._end(joined=True))
                    else:  # "[note]": a line of text, not an (empty) plan
                        out.append(PlanIssue(None, text, f"{_clip(text)!r} is not a task: expected "
                                             f"{self._EXPECTED}"))
                if not self._stack:
                    self._buf = buf = buf[i:]
                    i, n = 0, len(buf)
                    self._line_blank = True
                elif self._item_at is None and len(self._stack) == self._array_depth and j > 4096:
                    # between the items of a long array: drop what was read, keep the structure
                    self._buf = buf = buf[i:]
                    i, n = 0, len(buf)
            elif depth == 1 and self._stack[0] == "{":
                self._key_next = c == ","
        self._i = i

    def _top_level_string(self, raw: str) -> None:
        try:
            s = json.loads(raw)
        except ValueError:
            return
        if self._key_next:
            self._key = s
        elif self._key == "thought" and isinstance(s, str) and s.strip():
            self._top_thought = s.strip()  # the wrapper's, if this object turns out to be one

    def _item(self, text: str) -> PlanEvent:
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError):
            try:
                obj = parse_value(text)
            except ValueError as exc:
                m = self._ID.search(text)
                tid = int(m.group(1)) if m else None
                return PlanIssue(tid, text.strip(), f"task {tid if tid is not None else '(no id)'} "
                                 f"is not valid JSON: {exc}")
        return self._task_from_object(obj, text.strip())

    def _task_from_object(self, obj: Any, text: str) -> PlanEvent:
        if not isinstance(obj, dict):
            return PlanIssue(None, text, f"expected a task object, got {type(obj).__name__}")
        tool = obj.get("tool", obj.get("name"))
        thought = obj.get("thought") if isinstance(obj.get("thought"), str) else None
        if obj.get("join") is True or tool == JOIN_TOOL:
            return self._end(joined=True, thought=thought)
        raw_id = obj.get("id")
        if isinstance(raw_id, str) and raw_id.strip().lstrip("$").isdigit():
            raw_id = int(raw_id.strip().lstrip("$"))
        if not isinstance(raw_id, int) or isinstance(raw_id, bool):
            self._take_thought()
            return PlanIssue(None, text, f'a task needs an integer "id" (got {raw_id!r}); '
                             'number tasks 1, 2, 3, ...')
        if not isinstance(tool, str) or not tool:
            self._take_thought()
            return PlanIssue(raw_id, text, f'task {raw_id} has no "tool" name')
        args = obj.get("args", obj.get("arguments", {}))
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except ValueError:
                pass
        if args is None:
            args = {}
        if not isinstance(args, dict):
            self._take_thought()
            return PlanIssue(raw_id, text, f'task {raw_id} ({tool}): "args" must be an object, '
                             f"got {type(args).__name__}")
        deps = obj.get("deps") or []
        if not isinstance(deps, list) or not all(_is_id(d) for d in deps):
            self._take_thought()
            return PlanIssue(raw_id, text, f'task {raw_id} ({tool}): "deps" must be a list of task ids')
        try:
            args = refs_to_objects(args)
        except ValueError as exc:
            self._take_thought()
            return PlanIssue(raw_id, text, f"task {raw_id} ({tool}): {exc}")
        pending = self._take_thought()
        return _task_event(raw_id, tool, args, thought or pending, text,
                           deps=frozenset(_as_id(d) for d in deps))


def _is_id(v: Any) -> bool:
    return (isinstance(v, int) and not isinstance(v, bool)) or (
        isinstance(v, str) and v.strip().lstrip("$").isdigit())


def _as_id(v: Any) -> int:
    return v if isinstance(v, int) else int(v.strip().lstrip("$"))
