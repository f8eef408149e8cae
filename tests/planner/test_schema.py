"""JSON Schemas of JSON plans: structurally valid, small, references allowed at every value
position, literal types still constrained; and the real engine decodes them into plans the
streaming parser reads task by task."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

import anyio
import pytest
from pydantic import BaseModel, Field

from agentrt.executor import Ref
from agentrt.planner import (
    JOIN_MARKER,
    JsonPlanParser,
    PlanEnd,
    PlanIssue,
    PlanValidator,
    TaskParsed,
    plan_array_schema,
    plan_json_schema,
)
from agentrt.tools import ToolRegistry, tool


class Point(BaseModel):
    x: float
    y: float = 0.0


class Style(BaseModel):
    color: Literal["red", "blue"] = "red"


@tool
def search(query: str, k: int = 3) -> str:
    """Web search."""
    return query


@tool
def add(a: float, b: float) -> float:
    """Add two numbers."""
    return a + b


@tool
def plot(points: list[Point], style: Style | None = None,
         width: Annotated[int, Field(ge=100)] = 640) -> str:
    """Plot points."""
    return ""


def _another_point() -> type[BaseModel]:
    class Point(BaseModel):  # another tool's model, with a def of the same name
        lat: float

    return Point


GeoPoint = _another_point()


@tool(name="geo.near")
def geo_near(where: GeoPoint, tags: dict[str, int] | None = None) -> list[str]:  # type: ignore[valid-type]
    """Places near a point."""
    return []


@pytest.fixture
def registry() -> ToolRegistry:
    return ToolRegistry([search, add, plot, geo_near])


KEYWORDS = {"$defs", "$ref", "type", "properties", "required", "additionalProperties", "items",
            "prefixItems", "anyOf", "oneOf", "allOf", "const", "enum", "minimum", "maximum",
            "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "pattern", "format",
            "minItems", "maxItems", "multipleOf", "patternProperties"}
TYPES = {"object", "array", "string", "integer", "number", "boolean", "null"}


def check_structure(schema: dict[str, Any]) -> None:
    """A structural check of a JSON Schema (2020-12 subset that grammar converters support)."""
    defs = schema.get("$defs", {})

    def walk(s: Any, where: str) -> None:
        assert isinstance(s, dict), f"{where}: a schema must be an object"
        assert set(s) <= KEYWORDS, f"{where}: unsupported keywords {set(s) - KEYWORDS}"
        if "$ref" in s:
            m = re.fullmatch(r"#/\$defs/(.+)", s["$ref"])
            assert m and m.group(1).replace("~1", "/").replace("~0", "~") in defs, f"{where}: dangling $ref"
        t = s.get("type")
        if t is not None:
            assert (t in TYPES) if isinstance(t, str) else set(t) <= TYPES, f"{where}: bad type {t}"
        for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
            if key in s:
                assert isinstance(s[key], list) and s[key], f"{where}: {key} must be a non-empty list"
                for i, sub in enumerate(s[key]):
                    walk(sub, f"{where}/{key}/{i}")
        if "properties" in s:
            for name, sub in s["properties"].items():
                walk(sub, f"{where}/properties/{name}")
            assert set(s.get("required", [])) <= set(s["properties"]), f"{where}: required not declared"
        if isinstance(s.get("additionalProperties"), dict):
            walk(s["additionalProperties"], f"{where}/additionalProperties")
        else:
            assert s.get("additionalProperties", False) in (True, False)
        if "items" in s:
            walk(s["items"], f"{where}/items")
        if "pattern" in s:
            re.compile(s["pattern"])
        if "enum" in s:
            assert isinstance(s["enum"], list) and s["enum"]

    for name, sub in defs.items():
        walk(sub, f"#/$defs/{name}")
    walk({k: v for k, v in schema.items() if k != "$defs"}, "#")
    json.dumps(schema)  # plain JSON


def conforms(value: Any, s: dict[str, Any], root: dict[str, Any]) -> bool:
    """Whether ``value`` is valid under ``s`` (the subset above)."""
    if "$ref" in s:
        return conforms(value, root["$defs"][s["$ref"].split("/")[-1]], root)
    if "anyOf" in s and not any(conforms(value, b, root) for b in s["anyOf"]):
        return False
    if "const" in s and value != s["const"]:
        return False
    if "enum" in s and value not in s["enum"]:
        return False
    t = s.get("type")
    kinds = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
    if t == "integer" and not (isinstance(value, int) and not isinstance(value, bool)):
        return False
    if t == "number" and not (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return False
    if t in kinds and not isinstance(value, kinds[t]):
        return False
    if isinstance(value, (int, float)) and "minimum" in s and value < s["minimum"]:
        return False
    if isinstance(value, str) and "pattern" in s and not re.search(s["pattern"], value):
        return False
    if isinstance(value, dict) and ("properties" in s or "additionalProperties" in s):
        props = s.get("properties", {})
        if any(k not in value for k in s.get("required", [])):
            return False
        for k, v in value.items():
            sub = props.get(k, s.get("additionalProperties", True))
            if sub is False or (isinstance(sub, dict) and not conforms(v, sub, root)):
                return False
    if isinstance(value, list) and isinstance(s.get("items"), dict):
        return all(conforms(v, s["items"], root) for v in value)
    return True


@pytest.mark.parametrize("refs", ["object", "string"])
@pytest.mark.parametrize("make", [plan_json_schema, plan_array_schema])
def test_schemas_are_structurally_valid_json_schema(registry: ToolRegistry, refs: str, make: Any) -> None:
    schema = make(registry, refs=refs)
    check_structure(schema)
    text = json.dumps(schema)
    assert '"title"' not in text and '"description"' not in text


def test_one_branch_per_tool_and_the_join_marker(registry: ToolRegistry) -> None:
    schema = plan_json_schema(registry)
    consts = [b["properties"].get("tool", {}).get("const") for b in schema["anyOf"]]
    assert consts == ["search", "add", "plot", "geo.near", None]
    assert conforms(JOIN_MARKER, schema, schema)
    assert conforms({"join": True, "thought": "enough"}, schema, schema)
    assert not conforms({"join": False}, schema, schema)


def test_references_are_allowed_at_every_value_position(registry: ToolRegistry) -> None:
    schema = plan_json_schema(registry)
    r = {"$ref": 1}
    ok = [
        {"id": 2, "tool": "search", "args": {"query": r, "k": r}},
        {"id": 2, "tool": "add", "args": {"a": r, "b": 2.5}},
        {"id": 2, "tool": "plot", "args": {"points": r}},
        {"id": 2, "tool": "plot", "args": {"points": [r, {"x": r, "y": 1}], "style": {"color": r}}},
        {"id": 2, "tool": "geo.near", "args": {"where": {"lat": r}, "tags": {"a": r, "b": 2}}},
        {"id": 2, "thought": "why", "tool": "search", "args": {"query": "text with $1"}},
    ]
    for task in ok:
        assert conforms(task, schema, schema), task


def test_literal_values_are_still_constrained(registry: ToolRegistry) -> None:
    schema = plan_json_schema(registry)
    bad = [
        {"id": 2, "tool": "search", "args": {"query": 5}},                   # wrong type
        {"id": 2, "tool": "search", "args": {"k": 2}},                       # missing required
        {"id": 2, "tool": "search", "args": {"query": "x", "extra": 1}},     # unknown argument
        {"id": 2, "tool": "plot", "args": {"points": [{"x": "far"}]}},       # nested wrong type
        {"id": 2, "tool": "plot", "args": {"points": [], "style": {"color": "green"}}},  # enum
        {"id": 2, "tool": "plot", "args": {"points": [], "width": 5}},       # minimum
        {"id": 2, "tool": "add", "args": {"a": {"$ref": "one"}, "b": 1}},    # malformed reference
        {"id": 0, "tool": "add", "args": {"a": 1, "b": 1}},                  # ids start at 1
        {"id": 2, "tool": "serch", "args": {"query": "x"}},                  # unknown tool
    ]
    for task in bad:
        assert not conforms(task, schema, schema), task


def test_tool_definitions_are_hoisted_without_collisions(registry: ToolRegistry) -> None:
    defs = plan_json_schema(registry)["$defs"]
    assert {"plot.Point", "plot.Style", "geo.near.Point"} <= set(defs)
    assert "lat" in defs["geo.near.Point"]["properties"] and "x" in defs["plot.Point"]["properties"]


def test_reference_schema_is_shared_and_size_grows_linearly() -> None:
    def many(n: int) -> ToolRegistry:
        reg = ToolRegistry()
        for i in range(n):
            reg.add(plot.model_copy(update={"name": f"plot{i}"}))
        return reg

    one = json.dumps(plan_array_schema(many(1)))
    thirty = json.dumps(plan_array_schema(many(30)))
    assert thirty.count('"required": ["$ref"]') == 1
    assert len(thirty) < 31 * len(one)


def test_string_references_avoid_a_property_named_ref(registry: ToolRegistry) -> None:
    schema = plan_json_schema(registry, refs="string")

    def property_names(s: Any) -> set[str]:
        found: set[str] = set()
        if isinstance(s, dict):
            found |= set(s.get("properties", {}))
            for v in s.values():
                found |= property_names(v)
        elif isinstance(s, list):
            for v in s:
                found |= property_names(v)
        return found

    assert "$ref" not in property_names(schema)  # llama.cpp's GBNF converter fails on one
    search_args = schema["anyOf"][0]["properties"]["args"]["properties"]
    assert search_args["query"] == {"type": "string"}  # any string already admits "$1"
    assert conforms({"id": 2, "tool": "add", "args": {"a": "$1", "b": 2}}, schema, schema)
    assert not conforms({"id": 2, "tool": "add", "args": {"a": "one", "b": 2}}, schema, schema)
    with pytest.raises(ValueError):
        plan_json_schema(registry, refs="both")  # type: ignore[arg-type]


def test_whole_plan_schema_output_streams_task_by_task(registry: ToolRegistry) -> None:
    schema = plan_array_schema(registry)
    plan = {"tasks": [
        {"id": 1, "tool": "search", "args": {"query": "population of France"}},
        {"id": 2, "tool": "search", "args": {"query": "population of Germany"}},
        {"id": 3, "tool": "add", "args": {"a": {"$ref": 1}, "b": {"$ref": 2}}},
    ]}
    assert conforms(plan, schema, schema)
    assert conforms({"tasks": []}, schema, schema)
    assert not conforms({"tasks": [JOIN_MARKER]}, schema, schema)
    text = json.dumps(plan)
    parser, emitted = JsonPlanParser(registry), []
    for i, c in enumerate(text):
        emitted += [(i, e) for e in parser.feed(c)]
    ends = [i for i, e in emitted if isinstance(e, TaskParsed)]
    for task, at in zip(plan["tasks"], ends):
        item = json.dumps(task)
        assert at == text.index(item) + len(item) - 1
    assert emitted[-1] == (len(text) - 2, PlanEnd(joined=True))
    assert [e for _, e in emitted if isinstance(e, TaskParsed)][2].task.args == {
        "a": Ref(task=1), "b": Ref(task=2)}


@pytest.mark.model
@pytest.mark.anyio
@pytest.mark.timeout(300)
@pytest.mark.parametrize("refs", ["object", "string"])
async def test_real_engine_decodes_the_plan_schema_and_tasks_stream_before_the_end(
        local_engine: Any, refs: str) -> None:
    from agentrt.config import LOCAL_MODEL_NAME
    from agentrt.llm import OpenAIChatModel

    reg = ToolRegistry([search, add])
    ref_text = '{"$ref": N}' if refs == "object" else '"$N"'
    messages = [
        {"role": "system", "content": (
            "Plan tool calls as JSON {\"tasks\": [...]}. Tools: search(query) returns a number; "
            f"add(a, b) adds two numbers. Use {ref_text} for the result of task N.")},
        {"role": "user", "content": "What is the population of France plus that of Germany?"},
    ]
    fmt = {"type": "json_schema",
           "json_schema": {"name": "plan", "schema": plan_array_schema(reg, refs=refs, thought=False)}}
    parser, validator = JsonPlanParser(reg), PlanValidator(reg)
    events: list[tuple[int, Any]] = []
    chunks = 0
    async with OpenAIChatModel(local_engine.base_url, LOCAL_MODEL_NAME, timeout=120, max_retries=0) as llm:
        with anyio.fail_after(240):
            stream = await llm.complete(messages, stream=True, max_tokens=120, response_format=fmt)
            async for delta in stream:  # type: ignore[union-attr]
                if delta.content:
                    chunks += 1
                    events += [(chunks, validator.process(e)) for e in parser.feed(delta.content)]
    events += [(chunks + 1, e) for e in parser.close()]
    tasks = [(n, e.task) for n, e in events if isinstance(e, TaskParsed)]
    assert not [e for _, e in events if isinstance(e, PlanIssue)], events
    assert len(tasks) >= 2
    assert tasks[0][0] < chunks, "the first task must be parsed while the plan is still streaming"
    assert events[-1][1] == PlanEnd(joined=True)
    assert [t.id for _, t in tasks] == list(range(1, len(tasks) + 1))
