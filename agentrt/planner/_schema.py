"""JSON Schemas of JSON plans, for constrained decoding: one task object, or a whole plan.

`plan_json_schema` describes ONE object of a JSON-lines plan (a task of any registered tool, or
the join marker); `plan_array_schema` describes a whole plan ``{"tasks": [...]}``, for engines
whose ``response_format`` constrains the whole output (llama.cpp, vLLM, OpenAI). Both are built
from each tool's parameter schema, in which every value position (a property, an array item, a
dict value) may instead be a reference to an earlier task's output.

Size: each tool appears once (an ``anyOf`` branch with ``"tool": {"const": name}``); the
reference schema and the tools' own ``$defs`` are shared definitions; titles, descriptions,
examples and defaults are dropped (the prompt describes the tools).

Reference spelling, ``refs=``:

- ``"object"`` (default): ``{"$ref": N}``, the typed form `agentrt.executor.Ref` serialises to.
  Accepted by LLGuidance-based engines (xllamacpp, llama.cpp built with LLGuidance, vLLM).
  llama.cpp's built-in JSON-schema-to-GBNF converter does NOT accept it: its ``resolve_refs``
  reads the ``"$ref"`` member of every object in the schema as a string, including the
  ``properties`` object that declares a property named ``$ref``, and fails.
- ``"string"``: ``"$N"``, a string matching ``^\\$[0-9]+$``; works with every converter and
  costs fewer tokens; string parameters need no alternative (any string is allowed already).
"""

from __future__ import annotations

import copy
import re
from typing import Any, Literal

from agentrt.tools import Tool, ToolRegistry

__all__ = ["JOIN_MARKER", "RefStyle", "plan_array_schema", "plan_json_schema", "tool_args_schema"]

RefStyle = Literal["object", "string"]

#: The JSON-lines plan's last object (``"thought"`` is optional).
JOIN_MARKER: dict[str, Any] = {"join": True}

_REF_DEF = "ref"
_TASK_DEF = "task"
_DROP = frozenset({"title", "description", "examples", "default", "$schema", "$id", "$comment"})
_REF_SCHEMAS: dict[str, dict[str, Any]] = {
    "object": {
        "type": "object",
        "properties": {"$ref": {"type": "integer", "minimum": 1}},
        "required": ["$ref"],
        "additionalProperties": False,
    },
    "string": {"type": "string", "pattern": "^\\$[0-9]+$"},
}
_LOCAL_REF = re.compile(r"#/(\$defs|definitions)/(.+)")


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


class _RefWrapper:
    """Rewrites one tool's parameter schema: refs allowed at value positions, defs renamed."""

    def __init__(self, tool: Tool, refs: RefStyle) -> None:
        self.prefix = f"{tool.name}."
        self.refs = refs
        self.ref = {"$ref": f"#/$defs/{_REF_DEF}"}

    def wrap(self, s: Any) -> Any:
        """A schema at a value position: it, or a reference."""
        inner = self.inner(s)
        if inner is True or inner == {}:
            return inner  # anything, a reference included
        if self.refs == "string" and inner.get("type") == "string" and len(inner) == 1:
            return inner  # any string, "$N" included
        if set(inner) == {"anyOf"}:
            return {"anyOf": [*inner["anyOf"], self.ref]}
        return {"anyOf": [inner, self.ref]}

    def inner(self, s: Any) -> Any:
        """The same schema with its sub-schemas rewritten (not itself made a reference)."""
        if not isinstance(s, dict):
            return s
        out: dict[str, Any] = {}
        for k, v in s.items():
            if k in _DROP:
                continue
            if k == "$ref" and isinstance(v, str):
                m = _LOCAL_REF.fullmatch(v)
                out[k] = f"#/$defs/{_escape(self.prefix)}{m.group(2)}" if m else v
            elif k in ("properties", "patternProperties") and isinstance(v, dict):
                out[k] = {name: self.wrap(sub) for name, sub in v.items()}
            elif k in ("additionalProperties", "items") and isinstance(v, dict):
                out[k] = self.wrap(v)
            elif k in ("prefixItems", "items") and isinstance(v, list):
                out[k] = [self.wrap(sub) for sub in v]
            elif k in ("anyOf", "oneOf", "allOf") and isinstance(v, list):
                out[k] = [self.inner(sub) for sub in v]
            elif k in ("$defs", "definitions"):
                continue  # hoisted by the caller
            else:
                out[k] = copy.deepcopy(v)
        return out


def tool_args_schema(tool: Tool, defs: dict[str, Any], *, refs: RefStyle = "object") -> dict[str, Any]:
    """The schema of ``tool``'s ``args`` object in a plan, its definitions added to ``defs``.

    Every value position accepts ``{"$ref": "#/$defs/ref"}`` as an alternative; the caller
    must put the reference schema under ``defs["ref"]``. The tool's own ``$defs`` are renamed
    ``"<tool name>.<def name>"``.
    """
    w = _RefWrapper(tool, refs)
    params = tool.parameters or {}
    for section in ("$defs", "definitions"):
        for name, body in (params.get(section) or {}).items():
            defs[f"{w.prefix}{_unescape(name)}"] = w.inner(body)
    body = w.inner(params)
    args: dict[str, Any] = {"type": body.pop("type", "object"), "properties": body.pop("properties", {})}
    args.update(body)
    return args


def _task_schemas(registry: ToolRegistry, refs: RefStyle, thought: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    if refs not in _REF_SCHEMAS:
        raise ValueError(f"refs must be 'object' or 'string', not {refs!r}")
    defs: dict[str, Any] = {_REF_DEF: dict(_REF_SCHEMAS[refs])}
    branches = []
    for tool in registry:
        props: dict[str, Any] = {"id": {"type": "integer", "minimum": 1}}
        if thought:
            props["thought"] = {"type": "string"}
        props["tool"] = {"const": tool.name}
        props["args"] = tool_args_schema(tool, defs, refs=refs)
        branches.append({"type": "object", "properties": props, "required": ["id", "tool", "args"],
                         "additionalProperties": False})
    return branches, defs


def plan_json_schema(registry: ToolRegistry, *, refs: RefStyle = "object",
                     thought: bool = True) -> dict[str, Any]:
    """JSON Schema of one object of a JSON-lines plan: a task of a registered tool, or join.

    A task is ``{"id": N, "thought"?: str, "tool": name, "args": {...}}`` with ``args``
    following the tool's parameter schema, any value of which may be a reference (see the
    module docstring for ``refs``). The join marker is ``{"thought"?: str, "join": true}``.

    Args:
        registry: the tools the plan may call (one ``anyOf`` branch each).
        refs: how references are spelled: ``"object"`` (``{"$ref": N}``) or ``"string"`` (``"$N"``).
        thought: allow an optional ``"thought"`` string in each object.

    Raises:
        ValueError: ``refs`` is neither ``"object"`` nor ``"string"``.
    """
    branches, defs = _task_schemas(registry, refs, thought)
    join: dict[str, Any] = {"type": "object", "properties": {}, "required": ["join"],
                            "additionalProperties": False}
    if thought:
        join["properties"]["thought"] = {"type": "string"}
    join["properties"]["join"] = {"const": True}
    return {"$defs": defs, "anyOf": [*branches, join]}


def plan_array_schema(registry: ToolRegistry, *, refs: RefStyle = "object",
                      thought: bool = True) -> dict[str, Any]:
    """JSON Schema of a whole plan, ``{"tasks": [task, ...]}``; the end of the array is the join.

    For engines that constrain the whole output to one schema: the output is then one JSON
    object, and `JsonPlanParser` emits each task the moment its object closes inside the
    array. Tasks are as in `plan_json_schema` (without the join marker: closing the array
    ends the plan). Same arguments and errors as `plan_json_schema`.
    """
    branches, defs = _task_schemas(registry, refs, thought)
    tasks: dict[str, Any] = {"type": "array", "maxItems": 0}  # no tools: only the empty plan
    if branches:
        defs[_TASK_DEF] = {"anyOf": branches}
        tasks = {"type": "array", "items": {"$ref": f"#/$defs/{_TASK_DEF}"}}
    return {
        "$defs": defs,
        "type": "object",
        "properties": {"tasks": tasks},
        "required": ["tasks"],
        "additionalProperties": False,
    }
