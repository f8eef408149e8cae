"""The `Tool` contract: schemas from signatures, descriptions from docstrings, calls as results,
`Limits` parsing and the `ToolRegistry`."""

import enum
import threading
import time
from typing import Literal, Optional

import anyio
import pytest
from pydantic import BaseModel, ValidationError

from agentrt.errors import DuplicateTool, InvalidArguments, ToolError, ToolNotFound
from agentrt.tools import Limits, Tool, ToolRegistry, parse_bytes, tool

pytestmark = pytest.mark.anyio


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Point(BaseModel):
    x: int
    y: int = 0


class Shape(BaseModel):
    name: str
    corners: list[Point]


# --- schemas ---------------------------------------------------------------------------------


def test_schema_from_type_hints_covers_optional_literal_enum_list_and_defaults():
    @tool
    def f(a: Optional[int], mode: Literal["fast", "slow"] = "fast", color: Color = Color.RED,
          tags: list[str] = [], limit: float = 1.5) -> int:  # noqa: B006
        return 0

    props = f.parameters["properties"]
    assert f.parameters["type"] == "object"
    assert f.parameters["required"] == ["a"]
    assert {"type": "null"} in props["a"]["anyOf"] and {"type": "integer"} in props["a"]["anyOf"]
    assert props["mode"]["enum"] == ["fast", "slow"] and props["mode"]["default"] == "fast"
    assert f.parameters["$defs"]["Color"]["enum"] == ["red", "blue"]
    assert props["color"]["default"] == "red"
    assert props["tags"] == {"type": "array", "items": {"type": "string"}, "default": []}
    assert props["limit"]["type"] == "number" and props["limit"]["default"] == 1.5
    assert f.parameters["additionalProperties"] is False
    assert f.returns == {"type": "integer"}


def test_schema_of_nested_pydantic_models_uses_defs():
    @tool
    def draw(shape: Shape) -> list[Point]:
        return shape.corners

    defs = draw.parameters["$defs"]
    assert draw.parameters["properties"]["shape"] == {"$ref": "#/$defs/Shape"}
    assert defs["Shape"]["properties"]["corners"]["items"] == {"$ref": "#/$defs/Point"}
    assert defs["Point"]["required"] == ["x"]
    assert draw.returns["items"] == {"$ref": "#/$defs/Point"}


async def test_nested_model_arguments_arrive_as_models_and_results_come_back_as_json():
    seen = {}

    @tool
    def draw(shape: Shape) -> list[Point]:
        seen["shape"] = shape
        return shape.corners

    result = await draw.call({"shape": {"name": "tri", "corners": [{"x": 1}, {"x": 2, "y": 3}]}})
    assert isinstance(seen["shape"], Shape) and isinstance(seen["shape"].corners[0], Point)
    assert result.ok
    assert result.value == [{"x": 1, "y": 0}, {"x": 2, "y": 3}]  # plain JSON, not models


async def test_enum_results_are_json_values():
    @tool
    def pick() -> Color:
        return Color.BLUE

    assert (await pick.call({})).value == "blue"


def test_args_and_kwargs_cannot_be_described():
    with pytest.raises(TypeError, match=r"\*args"):
        @tool
        def f(*values: int) -> int:
            return 0


# --- docstrings ------------------------------------------------------------------------------


def test_google_docstring_gives_first_paragraph_and_parameter_descriptions():
    @tool
    def add(a: int, b: int = 2) -> int:
        """Add two integers.

        Implementation notes a planner does not need to read.

        Args:
            a: the first addend.
            b: the second addend.

        Returns:
            the sum.
        """
        return a + b

    assert add.description == "Add two integers."
    assert add.parameters["properties"]["a"]["description"] == "the first addend."
    assert add.parameters["properties"]["b"]["description"] == "the second addend."


def test_parameter_descriptions_wrapped_over_lines_become_one_line():
    @tool
    def search(query: str) -> list[str]:
        """Search the notes.

        Args:
            query: words to look for; a long description that wraps
                onto a second line.
        """
        return []

    assert search.parameters["properties"]["query"]["description"] == (
        "words to look for; a long description that wraps onto a second line.")


def test_numpy_docstring_gives_parameter_descriptions():
    @tool
    def scale(x: float, factor: float) -> float:
        """Scale a number.

        Parameters
        ----------
        x : float
            the number to scale.
        factor : float
            what to multiply it by.
        """
        return x * factor

    assert scale.description == "Scale a number."
    assert scale.parameters["properties"]["x"]["description"] == "the number to scale."
    assert scale.parameters["properties"]["factor"]["description"] == "what to multiply it by."


def test_sphinx_docstring_gives_parameter_descriptions():
    @tool
    def greet(name: str) -> str:
        """Greet someone by name.

        :param name: who to greet.
        :returns: the greeting.
        """
        return f"hi {name}"

    assert greet.description == "Greet someone by name."
    assert greet.parameters["properties"]["name"]["description"] == "who to greet."


def test_explicit_description_and_name_override_the_docstring():
    @tool(name="math.double", description="Double it.")
    def double(x: int) -> int:
        """Something else entirely."""
        return 2 * x

    assert (double.name, double.description) == ("math.double", "Double it.")


# --- calls -----------------------------------------------------------------------------------


async def test_bare_decorator_and_decorator_with_options_make_tools():
    @tool
    def bare(x: int) -> int:
        return x + 1

    @tool(limits={"memory": "64M", "timeout": 5}, read_only=True, idempotent=True)
    def configured(x: int) -> int:
        return x + 2

    assert isinstance(bare, Tool) and isinstance(configured, Tool)
    assert bare.name == "bare" and not bare.read_only
    assert configured.read_only and configured.idempotent and not configured.destructive
    assert configured.limits.memory == 64 * 1024**2 and configured.limits.timeout == 5
    assert (await bare.call({"x": 1})).value == 2
    assert (await configured.call({"x": 1})).value == 3


async def test_sync_and_async_functions_both_run():
    @tool
    def sync_tool(x: int) -> int:
        return x * 10

    @tool
    async def async_tool(x: int) -> int:
        await anyio.sleep(0)
        return x * 100

    assert (await sync_tool.call({"x": 2})).value == 20
    assert (await async_tool.call({"x": "3"})).value == 300  # lax coercion of "3"


async def test_invalid_arguments_give_invalid_args_naming_each_field():
    @tool
    def f(a: int, b: Literal["x", "y"] = "x") -> int:
        return a

    result = await f.call({"a": "not a number", "b": "z", "c": 1})
    assert not result.ok and result.error_kind == "invalid_args"
    assert "a:" in result.error and "b:" in result.error and "c:" in result.error
    missing = await f.call({})
    assert missing.error_kind == "invalid_args" and "a: Field required" in missing.error
    with pytest.raises(InvalidArguments, match="arguments must be an object"):
        f.validate_args(["a"])  # type: ignore[arg-type]


async def test_a_raising_tool_gives_tool_error_with_its_message():
    @tool
    def broken(x: int) -> int:
        raise ValueError(f"cannot handle {x}")

    result = await broken.call({"x": 7})
    assert not result.ok and result.error_kind == "tool_error"
    assert result.error == "ValueError: cannot handle 7"


async def test_a_hanging_async_tool_times_out_within_its_limit():
    @tool(limits=Limits(timeout=0.2))
    async def hang() -> int:
        await anyio.sleep(60)
        return 0

    start = time.perf_counter()
    result = await hang.call({})
    elapsed = time.perf_counter() - start
    assert result.error_kind == "timeout" and result.usage.timed_out
    assert 0.2 <= elapsed < 2
    assert "0.2 s" in result.error


async def test_a_hanging_sync_tool_times_out_and_its_thread_is_abandoned():
    release = threading.Event()

    @tool(limits=Limits(timeout=0.2))
    def hang() -> int:
        release.wait(10)
        return 0

    start = time.perf_counter()
    try:
        result = await hang.call({})
    finally:
        release.set()
    assert result.error_kind == "timeout"
    assert time.perf_counter() - start < 2


async def test_a_timeout_the_tool_raises_itself_is_its_error_not_the_limit():
    @tool(limits=Limits(timeout=30))
    async def fetch() -> str:
        raise TimeoutError("upstream took too long")

    result = await fetch.call({})
    assert result.error_kind == "tool_error" and not result.usage.timed_out
    assert "upstream took too long" in result.error


async def test_an_unserialisable_result_is_a_tool_error():
    @tool
    def f() -> object:
        return object()

    result = await f.call({})
    assert result.error_kind == "tool_error"


# --- limits ----------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("512M", 512 * 1024**2),
    ("1.5G", int(1.5 * 1024**3)),
    ("64KiB", 64 * 1024),
    ("2 gb", 2 * 1024**3),
    ("100", 100),
    (4096, 4096),
])
def test_sizes_parse_with_binary_units(text, expected):
    assert parse_bytes(text) == expected
    assert Limits(memory=text).memory == expected


@pytest.mark.parametrize("bad", ["lots", "12X", "-5M", "", "1.2.3G", "M", True, -1])
def test_bad_sizes_are_rejected(bad):
    with pytest.raises(ValidationError):
        Limits(memory=bad)


def test_limits_defaults_hard_limit_and_validation():
    lim = Limits(memory="100M", memory_burst=2)
    assert lim.memory_max == 200 * 1024**2
    assert Limits().network == "none" and Limits().timeout > 0
    with pytest.raises(ValidationError):
        Limits(timeout=0)
    with pytest.raises(ValidationError):
        Limits(cpus=2)  # unknown field: a typo must not pass silently
    with pytest.raises(ValidationError):
        Limits(memory_burst=0.5)


# --- registry --------------------------------------------------------------------------------


def _named(name: str) -> Tool:
    @tool(name=name)
    def f() -> int:
        return 1

    return f


def test_registry_accepts_dotted_names_and_namespaces():
    reg = ToolRegistry([_named("db.query"), _named("calc")])
    added = reg.add(_named("read"), namespace="files")
    assert added.name == "files.read"
    assert reg.names == ["db.query", "calc", "files.read"]
    assert "files.read" in reg and "read" not in reg
    assert len(reg) == 3 and [t.name for t in reg] == reg.names
    assert reg.get("files.read").validate_args({}) == {}  # the copy keeps its args model


@pytest.mark.parametrize("bad", ["1abc", "a..b", "a-b", "db.", "has space"])
def test_registry_rejects_names_that_are_not_dotted_identifiers(bad):
    with pytest.raises(ToolError, match="invalid tool name"):
        ToolRegistry([_named(bad)])


def test_registry_rejects_duplicates():
    reg = ToolRegistry([_named("calc")])
    with pytest.raises(DuplicateTool, match="calc"):
        reg.add(_named("calc"))
    reg.add(_named("calc"), namespace="m")  # another namespace is another name
    with pytest.raises(DuplicateTool, match="m.calc"):
        reg.add(_named("calc"), namespace="m")


def test_unknown_tool_error_lists_known_names():
    reg = ToolRegistry([_named("db.query"), _named("calc")])
    with pytest.raises(ToolNotFound) as info:
        reg.get("calculator")
    assert str(info.value) == "unknown tool 'calculator'; known tools: calc, db.query"
    assert isinstance(info.value, KeyError) and isinstance(info.value, ToolError)
