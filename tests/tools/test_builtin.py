"""Built-in tools: the calculator refuses code and accepts how small LLMs write arithmetic; the
file tools stay under their roots; the SQLite tools stay read-only and one statement a call."""

import math
import os
import sqlite3
import time

import pytest

from agentrt.errors import ToolError
from agentrt.tools import Limits, ToolRegistry
from agentrt.tools.builtin import (
    builtin_tools,
    calculator,
    evaluate,
    file_tools,
    sqlite_schema_tool,
    sqlite_tool,
)

pytestmark = pytest.mark.anyio


# --- calculator ------------------------------------------------------------------------------


@pytest.mark.parametrize("expression, expected", [
    ("(3 + 4) * 2", 14),
    ("1,234 + 1", 1235),
    ("1,234,567.5 / 2", 617283.75),
    ("sqrt(1,000,000)", 1000),
    ("```python\n2 + 3\n```", 5),
    ("```\n(3 + 4) * 2\n```", 14),
    ("`7*6`", 42),
    ("12 km + 3km", 15),
    ("3.5MB * 2", 7),
    ("100 km/h * 2", 200),
    ("15% * 200", 30),
    ("200 * 15%", 30),
    ("15% of 200", 30),
    ("50 percent of 80", 40),
    ("10 % 3", 1),  # modulo when both sides are operands
    ("3 x 4", 12),
    ("3x4", 12),
    ("3 × 4", 12),
    ("12,345 x 2", 24690),
    ("2^10", 1024),
    ("2 + 2 =", 4),
    ("2+2 = ?", 4),
    ("result = 3*3", 9),
    ("What is 5 + 5?", 10),
    ("12.5 kg × 4 =", 50),
    ("$1,234.50 * 2", 2469),
    ("max(1,234)", 234),  # a comma between arguments is not a thousands separator
    ("max([1, 5, 3])", 5),
    ("min(4, 2.5)", 2.5),
    ("abs(-3) + round(2.6)", 6),
    ("round(3.14159, 2)", 3.14),
    ("x = round(2.5) + 1", 3),
    ("math.sqrt(16)", 4),
    ("log10(100)", 2),
    ("log(e)", 1),
    ("exp(0)", 1),
    ("2(3+4)", 14),
    ("17 // 5", 3),
    ("-2**2", -4),
    ("-(-3)", 3),
    ("0.1 + 0.2", 0.3),
    ("2**-1", 0.5),
])
def test_calculator_accepts_small_llm_style_arithmetic(expression, expected):
    assert evaluate(expression) == pytest.approx(expected)


def test_calculator_keeps_integers_exact():
    value = evaluate("2**100 + 1")
    assert isinstance(value, int) and value == 2**100 + 1
    assert isinstance(evaluate("7 * 6"), int)
    assert evaluate("2 * pi") == pytest.approx(2 * math.pi)


@pytest.mark.parametrize("expression, message", [
    ("__import__('os')", "unknown function '__import__'"),
    ("__import__('os').system('true')", "math functions by name"),
    ("().__class__.__bases__[0].__subclasses__()", "math functions by name"),
    ("().__class__", "attribute access"),
    ("(1).real", "attribute access"),
    ("lambda: 1", "lambda"),
    ("open('/etc/passwd')", "unknown function 'open'"),
    ("[1][0]", "indexing"),
    ("x + 1", "unknown name 'x'"),
    ("1 < 2", "comparisons"),
    ("'a' * 3", "only numbers"),
    ("True + 1", "only numbers"),
    ("[x for x in range(9)]", "not allowed"),
    ("1/0", "division by zero"),
    ("sqrt(-1)", "domain"),
    ("log(0)", "domain"),
    ("exp(1000)", "too large"),
    ("(-8) ** (1/3)", "not a real number"),
    ("1, 2", "several numbers"),
    ("[1] * 10**9", "not lists"),
    ("-[1]", "not lists"),
    ("max(1, [2])", "max"),
    ("", "empty expression"),
    ("$1 + $2", "unresolved task reference"),
    ("2 +", "cannot parse"),
    ("sqrt", "is a function"),
    ("round(1.5, ndigits=1)", "positional"),
])
def test_calculator_refuses_code_and_nonsense_with_a_clear_message(expression, message):
    with pytest.raises(ValueError, match=message):
        evaluate(expression)


@pytest.mark.parametrize("expression", [
    "10**10**10",
    "9**9**9",
    "2**100000",
    "pow(10, 100000)",
    "(10**1000) * (10**1000) * (10**1000) * (10**1000) * (10**1000)",
    "9" * 3000,
    "(" * 300 + "1" + ")" * 300,
    "-" * 1500 + "1",
])
def test_calculator_refuses_huge_or_deep_input_quickly(expression):
    start = time.perf_counter()
    with pytest.raises(ValueError):
        evaluate(expression)
    assert time.perf_counter() - start < 1


async def test_calculator_tool_turns_a_refusal_into_a_tool_error():
    ok = await calculator.call({"expression": "1,234 x 2"})
    assert ok.ok and ok.value == 2468
    refused = await calculator.call({"expression": "__import__('os').getcwd()"})
    assert not refused.ok and refused.error_kind == "tool_error"
    assert refused.error.startswith("ValueError: ")


def test_calculator_tool_metadata_is_planner_ready():
    assert calculator.name == "calculator"
    assert calculator.read_only and calculator.idempotent and not calculator.destructive
    assert len(calculator.description) < 160 and "\n" not in calculator.description
    assert calculator.parameters["required"] == ["expression"]
    assert calculator.parameters["properties"]["expression"]["description"]
    assert calculator.limits.timeout <= 10


# --- file tools ------------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path):
    """root/ with notes, a subdirectory, a binary file and links out to a secret beside it."""
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "notes.txt").write_text("alpha\nbeta TODO one\ngamma\n")
    (root / "sub" / "code.py").write_text("x = 1\n# TODO two\ny = 2\n")
    (root / "blob.bin").write_bytes(b"\x00\x01TODO\x00")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("TODO in git\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("TODO secret\n")
    os.symlink(outside / "secret.txt", root / "link_to_secret.txt")
    os.symlink(outside, root / "link_to_outside")
    os.symlink(root / "notes.txt", root / "link_to_notes.txt")
    tools = {t.name: t for t in file_tools([root])}
    return root, outside, tools


async def test_read_file_reads_under_the_root(tree):
    root, _, tools = tree
    assert (await tools["read_file"].call({"path": "notes.txt"})).value.startswith("alpha\n")
    assert (await tools["read_file"].call({"path": str(root / "sub" / "code.py")})).value == (
        "x = 1\n# TODO two\ny = 2\n")
    inner_link = await tools["read_file"].call({"path": "link_to_notes.txt"})
    assert inner_link.ok and inner_link.value.startswith("alpha")


@pytest.mark.parametrize("path", [
    "../outside/secret.txt",
    "sub/../../outside/secret.txt",
    "link_to_secret.txt",
    "link_to_outside/secret.txt",
    "/etc/passwd",
])
async def test_paths_outside_the_roots_are_refused(tree, path):
    _, _, tools = tree
    result = await tools["read_file"].call({"path": path})
    assert not result.ok and result.error_kind == "tool_error"
    assert "PermissionError" in result.error and "outside the allowed roots" in result.error
    assert "secret" not in (result.value or "")
    listed = await tools["list_dir"].call({"path": "link_to_outside"})
    assert not listed.ok and "outside the allowed roots" in listed.error


async def test_read_file_truncates_and_refuses_binary_and_directories(tree):
    _, _, tools = tree
    cut = await tools["read_file"].call({"path": "notes.txt", "max_bytes": 5})
    assert cut.value.startswith("alpha\n[truncated: first 5 of 26 bytes")
    binary = await tools["read_file"].call({"path": "blob.bin"})
    assert "binary file" in binary.error
    directory = await tools["read_file"].call({"path": "sub"})
    assert "is a directory" in directory.error
    missing = await tools["read_file"].call({"path": "nope.txt"})
    assert "FileNotFoundError" in missing.error
    assert (await tools["read_file"].call({"path": "notes.txt", "max_bytes": 0})).error_kind == (
        "invalid_args")


async def test_list_dir_sorts_and_marks_directories(tree):
    _, _, tools = tree
    entries = (await tools["list_dir"].call({})).value
    assert entries == sorted(entries)
    assert "sub/" in entries and "notes.txt" in entries and ".git/" in entries
    assert (await tools["list_dir"].call({"path": "sub"})).value == ["code.py"]


async def test_grep_reports_file_line_text_and_stays_inside(tree):
    _, _, tools = tree
    matches = (await tools["grep"].call({"pattern": "TODO"})).value
    assert "notes.txt:2: beta TODO one" in matches
    assert "sub/code.py:2: # TODO two" in matches
    joined = "\n".join(matches)
    assert "secret" not in joined  # links out of the root are not followed
    assert "blob.bin" not in joined and ".git" not in joined
    only_sub = (await tools["grep"].call({"pattern": r"^\w = \d", "path": "sub"})).value
    assert only_sub == ["sub/code.py:1: x = 1", "sub/code.py:3: y = 2"]


async def test_grep_stops_at_max_matches_and_rejects_bad_patterns(tree):
    _, _, tools = tree
    capped = (await tools["grep"].call({"pattern": "a", "max_matches": 1})).value
    assert len(capped) == 2 and capped[1].startswith("... more matches not shown")
    bad = await tools["grep"].call({"pattern": "foo("})
    assert "invalid regular expression" in bad.error


async def test_relative_paths_are_looked_up_under_each_root(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (b / "only_in_b.txt").write_text("from b")
    tools = {t.name: t for t in file_tools([a, b])}
    assert (await tools["read_file"].call({"path": "only_in_b.txt"})).value == "from b"
    assert str(a) in tools["read_file"].description and str(b) in tools["read_file"].description
    matches = (await tools["grep"].call({"pattern": "from"})).value
    assert matches == [f"{b / 'only_in_b.txt'}:1: from b"]  # absolute with several roots
    assert (await tools["list_dir"].call({})).value == [f"{a}/", f"{b}/"]
    assert (await tools["list_dir"].call({"path": str(b)})).value == ["only_in_b.txt"]


def test_file_tools_need_existing_directories(tmp_path):
    with pytest.raises(ToolError, match="not an existing directory"):
        file_tools([tmp_path / "missing"])
    with pytest.raises(ToolError, match="at least one root"):
        file_tools([])


# --- sqlite ----------------------------------------------------------------------------------


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "data.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE cities (name TEXT, population INTEGER, photo BLOB);
        INSERT INTO cities VALUES ('Lyon', 522000, x'00ff'), ('Nice', 342000, NULL),
                                  ('Oslo', 709000, NULL);
        CREATE VIEW big AS SELECT name FROM cities WHERE population > 500000;
    """)
    conn.commit()
    conn.close()
    return path


def _count(path) -> int:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT count(*) FROM cities").fetchone()[0]
    finally:
        conn.close()


async def test_sqlite_query_returns_rows_as_dicts_up_to_max_rows(db):
    query = sqlite_tool(db, max_rows=2)
    result = await query.call({"sql": "SELECT * FROM cities ORDER BY name"})
    assert result.value == [
        {"name": "Lyon", "population": 522000, "photo": "<2 bytes>"},
        {"name": "Nice", "population": 342000, "photo": None},
    ]
    fenced = await query.call({"sql": "```sql\nSELECT count(*) AS n FROM big;\n```"})
    assert fenced.value == [{"n": 2}]


@pytest.mark.parametrize("sql", [
    "INSERT INTO cities VALUES ('Rome', 2800000, NULL)",
    "DELETE FROM cities",
    "DROP TABLE cities",
    "CREATE TABLE t (x)",
    "PRAGMA query_only = OFF",
])
async def test_a_read_only_database_refuses_writes(db, sql):
    query = sqlite_tool(db)
    result = await query.call({"sql": sql})
    assert not result.ok and result.error_kind == "tool_error"
    assert "read-only" in result.error
    assert _count(db) == 3


async def test_multiple_statements_and_attach_are_refused(db, tmp_path):
    query = sqlite_tool(db)
    several = await query.call({"sql": "SELECT 1; DELETE FROM cities"})
    assert "only one SQL statement" in several.error
    attach = await query.call({"sql": f"ATTACH DATABASE '{tmp_path / 'other.sqlite'}' AS o"})
    assert not attach.ok and "ATTACH" in attach.error
    assert not (tmp_path / "other.sqlite").exists()
    assert _count(db) == 3


async def test_a_writable_database_accepts_writes(db):
    query = sqlite_tool(db, writable=True)
    assert query.destructive and not query.read_only
    result = await query.call({"sql": "INSERT INTO cities VALUES ('Rome', 2800000, NULL)"})
    assert result.value == [{"rows_affected": 1}]
    assert _count(db) == 4


async def test_a_runaway_query_is_interrupted_with_a_reason(db):
    query = sqlite_tool(db, limits=Limits(timeout=0.5))
    start = time.perf_counter()
    result = await query.call({"sql": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL "
                                      "SELECT x + 1 FROM c) SELECT count(*) FROM c"})
    assert result.error_kind == "tool_error" and "time limit" in result.error
    assert time.perf_counter() - start < 2


async def test_the_planner_sees_the_schema(db):
    query = sqlite_tool(db)
    assert "cities(name TEXT, population INTEGER, photo BLOB)" in query.description
    assert query.read_only and query.idempotent
    schema = await sqlite_schema_tool(db).call({})
    assert schema.value.splitlines() == ["big(name TEXT) [view]",
                                         "cities(name TEXT, population INTEGER, photo BLOB)"]


def test_a_missing_database_is_refused_up_front(tmp_path):
    with pytest.raises(ToolError, match="does not exist"):
        sqlite_tool(tmp_path / "missing.sqlite")
    assert not (tmp_path / "missing.sqlite").exists()


# --- all together ----------------------------------------------------------------------------


def test_builtin_tools_register_together(tree, db):
    root, _, _ = tree
    assert [t.name for t in builtin_tools()] == ["calculator"]
    tools = builtin_tools(roots=[root], db=db)
    registry = ToolRegistry(tools)
    assert registry.names == ["calculator", "read_file", "list_dir", "grep", "sqlite_query",
                              "sqlite_schema"]
    assert all(t.read_only and t.idempotent for t in registry)
