"""Tasks of a plan, typed references between them, and how references are resolved.

A `Task` is one tool call of a plan. Its arguments are JSON, in which a `Ref` (or, inside a
string, the LLMCompiler notation ``$N`` / ``${N}``) stands for the output of task N. A string
that is exactly one reference resolves to the referenced task's typed value; a reference inside
a longer string is replaced by the value's text.
"""

from __future__ import annotations

import json
import re
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Ref", "Task", "TaskStatus", "find_refs", "resolve_refs", "REF_PATTERN"]

#: ``$3`` or ``${3}``; a ``$`` followed by digits inside a string is a reference.
REF_PATTERN = re.compile(r"\$\{(\d+)\}|\$(\d+)")


class Ref(BaseModel):
    """A typed reference to the output of task ``task`` (JSON form ``{"$ref": N}``)."""

    model_config = ConfigDict(frozen=True)

    task: int

    def to_json(self) -> dict[str, int]:
        return {"$ref": self.task}


class TaskStatus(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"


class Task(BaseModel):
    """One tool call in a plan.

    Attributes:
        id: positive integer, unique within a run (replans continue the numbering).
        tool: tool name (may be dotted).
        args: arguments, JSON with `Ref` objects or ``$N`` strings for other tasks' outputs.
        deps: ids of tasks this one waits for: every referenced task plus any explicit ones.
        thought: the planner's note for this task, if any.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    id: int = Field(ge=1)
    tool: str
    args: dict[str, Any] = Field(default_factory=dict)
    deps: frozenset[int] = frozenset()
    thought: str | None = None

    def model_post_init(self, __context: Any) -> None:
        refs = find_refs(self.args)
        if not refs <= self.deps:
            object.__setattr__(self, "deps", frozenset(self.deps | refs))

    def render(self) -> str:
        """The task in LLMCompiler's text form, e.g. ``2. search(query="x", k=$1)``."""
        parts = ", ".join(f"{k}={_render(v)}" for k, v in self.args.items())
        return f"{self.id}. {self.tool}({parts})"


def _render(value: Any) -> str:
    if isinstance(value, Ref):
        return f"${value.task}"
    if isinstance(value, dict) and set(value) == {"$ref"}:
        return f"${value['$ref']}"
    if isinstance(value, list):
        return "[" + ", ".join(_render(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {_render(v)}" for k, v in value.items()) + "}"
    return json.dumps(value, ensure_ascii=False)


def _as_ref(value: Any) -> int | None:
    if isinstance(value, Ref):
        return value.task
    if isinstance(value, dict) and len(value) == 1 and "$ref" in value and isinstance(value["$ref"], int):
        return value["$ref"]
    return None


def find_refs(value: Any) -> frozenset[int]:
    """Ids of every task referenced anywhere in ``value`` (nested dicts, lists, strings)."""
    found: set[int] = set()
    stack = [value]
    while stack:
        v = stack.pop()
        ref = _as_ref(v)
        if ref is not None:
            found.add(ref)
        elif isinstance(v, str):
            if "$" in v:
                for m in REF_PATTERN.finditer(v):
                    found.add(int(m.group(1) or m.group(2)))
        elif isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
    return frozenset(found)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(value)


def resolve_refs(value: Any, outputs: dict[int, Any]) -> Any:
    """Replace every reference in ``value`` with the output of the task it names.

    ``outputs`` maps task id to that task's (typed) value. A string that is exactly ``$N``
    becomes the value itself (a number stays a number); ``$N`` inside a longer string is
    replaced by the value's text (JSON for non-strings).

    Raises:
        KeyError: a referenced task has no output in ``outputs``.
    """
    ref = _as_ref(value)
    if ref is not None:
        return outputs[ref]
    if isinstance(value, str):
        if "$" not in value:
            return value
        m = REF_PATTERN.fullmatch(value.strip())
        if m:
            return outputs[int(m.group(1) or m.group(2))]
        return REF_PATTERN.sub(lambda mm: _text(outputs[int(mm.group(1) or mm.group(2))]), value)
    if isinstance(value, dict):
        return {k: resolve_refs(v, outputs) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [resolve_refs(v, outputs) for v in value]
    return value
