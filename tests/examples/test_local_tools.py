"""examples/local_tools.py: the packages database builds from this machine's real installation and
the tools answer questions about packages that are certainly installed (agentrt's own
dependencies) and standard library modules."""

import importlib.util
import json.decoder
import re
import sqlite3
import sys
from importlib import metadata
from pathlib import Path

import anyio
import pytest

from agentrt.tools import Tool, ToolRegistry

pytestmark = pytest.mark.anyio

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "local_tools.py"


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """The example module, with the agentrt data dir (and so its database) in a temporary dir."""
    home = tmp_path_factory.mktemp("agentrt_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AGENTRT_HOME", str(home))
        mp.delenv("AGENTRT_CONFIG", raising=False)
        spec = importlib.util.spec_from_file_location("local_tools_example", EXAMPLE)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module


def _lines(path: str) -> int:
    data = Path(path).read_bytes()
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


def _disk_size(dist: str) -> int:
    return sum(f.locate().stat().st_size for f in metadata.files(dist) if f.locate().exists())


def test_module_exports_its_tools_for_the_loader(example):
    names = [t.name for t in example.TOOLS]
    assert names == ["package_version", "package_size_kb", "package_file_count",
                     "stdlib_module_lines", "calculator", "sqlite_query"]
    assert all(isinstance(t, Tool) and t.read_only and t.idempotent for t in example.TOOLS)
    assert [t.name for t in example.tools()] == names
    assert len(ToolRegistry(example.tools())) == 6
    for t in example.TOOLS:
        assert t.description and "\n" not in t.description and len(t.description) < 240


def test_plan_examples_call_only_the_example_tools(example):
    names = {t.name for t in example.TOOLS} | {"join"}
    for ex in example.PLAN_EXAMPLES:
        called = re.findall(r"^\d+\. (\w+)\(", ex.plan, flags=re.MULTILINE)
        assert called and set(called) <= names
        assert called[-1] == "join"


def test_the_database_is_built_under_the_data_dir_with_real_rows(example):
    example.package_version.fn("pydantic")  # first use builds it
    path = example.database_path()
    assert path.parent.parent == Path(example.get_settings().data_dir)
    assert path.name == "packages.sqlite" and path.is_file()
    conn = sqlite3.connect(path)
    try:
        packages = dict(conn.execute("SELECT name, version FROM packages"))
        modules = {r[0]: r[1:] for r in conn.execute("SELECT name, kind, lines FROM stdlib_modules")}
    finally:
        conn.close()
    for dist in ("pydantic", "networkx", "anyio"):
        assert packages[metadata.metadata(dist)["Name"]] == metadata.version(dist)
    assert modules["json.decoder"] == ("source", _lines(json.decoder.__file__))
    assert modules["sys"][0] == "builtin"
    assert not any(name.startswith("test.") for name in modules)


async def test_package_tools_answer_from_the_installation(example):
    version = await example.package_version.call({"name": "pydantic"})
    assert version.ok and version.value == metadata.version("pydantic")
    count = await example.package_file_count.call({"name": "anyio"})
    assert count.value == len(metadata.files("anyio"))
    size = await example.package_size_kb.call({"name": "networkx"})
    assert isinstance(size.value, float)
    assert size.value == pytest.approx(_disk_size("networkx") / 1024, abs=0.06)


async def test_stdlib_module_lines_counts_source_lines(example):
    result = await example.stdlib_module_lines.call({"module": "json.decoder"})
    assert result.value == _lines(json.decoder.__file__)
    package = await example.stdlib_module_lines.call({"module": "json"})
    assert package.value == _lines(sys.modules["json"].__file__)  # its __init__.py
    builtin = await example.stdlib_module_lines.call({"module": "sys"})
    assert not builtin.ok and "written in C" in builtin.error


@pytest.mark.parametrize("spelling", [
    "Pydantic", "pydantic ", "the pydantic package", "`pydantic`", "pydantic==2", "pydantc",
])
def test_package_names_are_forgiving(example, spelling):
    assert example.package_version.fn(spelling) == metadata.version("pydantic")


def test_dash_and_underscore_name_the_same_package(example):
    assert example.package_version.fn("pydantic_core") == metadata.version("pydantic-core")
    assert example.package_version.fn("Pydantic-Core") == metadata.version("pydantic-core")


@pytest.mark.parametrize("spelling", [
    "json.decoder", "json/decoder.py", "the json.decoder module", "JSON.decoder", "json.decodr",
])
def test_module_names_are_forgiving(example, spelling):
    assert example.stdlib_module_lines.fn(spelling) == _lines(json.decoder.__file__)


def test_unknown_names_fail_with_close_names(example):
    with pytest.raises(ValueError, match="no installed Python package named 'pydantic-extra'; "
                                         "close names: .*pydantic"):
        example.package_version.fn("pydantic-extra")
    with pytest.raises(ValueError, match="no installed Python package named 'zzqqxx'"):
        example.package_version.fn("zzqqxx")
    with pytest.raises(ValueError, match="installed package, not a standard library module; "
                                         "use package_file_count"):
        example.stdlib_module_lines.fn("networkx")
    with pytest.raises(ValueError, match="standard library module, not an installed package"):
        example.package_file_count.fn("json")
    # equally close to json.decoder and json.encoder: no guess, both suggested
    with pytest.raises(ValueError, match=r"close names: .*json\.(de|en)coder.*json\.(de|en)coder"):
        example.stdlib_module_lines.fn("json.coder")


async def test_parallel_lookups_then_arithmetic(example):
    """The shape of the README's questions: independent calls at once, then the calculator."""
    sizes: dict[str, float] = {}

    async def size(name: str) -> None:
        sizes[name] = (await example.package_size_kb.call({"name": name})).value

    async with anyio.create_task_group() as tg:
        for name in ("pydantic", "networkx"):
            tg.start_soon(size, name)
    total = await example.calculator.call({"expression": f"{sizes['pydantic']} + {sizes['networkx']}"})
    assert total.value == pytest.approx(sizes["pydantic"] + sizes["networkx"])
    lines = [(await example.stdlib_module_lines.call({"module": m})).value
             for m in ("json.decoder", "json.encoder")]
    diff = await example.calculator.call({"expression": f"{lines[0]} - {lines[1]}"})
    assert diff.value == _lines(json.decoder.__file__) - _lines(sys.modules["json.encoder"].__file__)


async def test_sqlite_query_reads_the_database_and_refuses_writes(example):
    rows = await example.sqlite_query.call(
        {"sql": "SELECT version FROM packages WHERE normalized = 'anyio'"})
    assert rows.value == [{"version": metadata.version("anyio")}]
    write = await example.sqlite_query.call({"sql": "DELETE FROM packages"})
    assert not write.ok and "read-only" in write.error
    assert example.package_version.fn("anyio") == metadata.version("anyio")


def test_the_database_is_cached_and_rebuilt_when_stale(example):
    path = example.database_path()
    example.package_version.fn("anyio")
    built = path.stat().st_mtime_ns
    example._catalogs.clear()
    example.package_version.fn("anyio")  # same installation: reused
    assert path.stat().st_mtime_ns == built
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = 'stale' WHERE key = 'fingerprint'")
    conn.execute("DELETE FROM packages WHERE normalized = 'anyio'")
    conn.commit()
    conn.close()
    example._catalogs.clear()
    assert example.package_version.fn("anyio") == metadata.version("anyio")  # rebuilt
