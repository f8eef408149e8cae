"""Plan validation on arrival: tools, arguments with references, ids, references, cascades,
cycles, and linear time on huge plans."""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

import pytest
from _planner_tools import db_query, math, search
from pydantic import BaseModel, Field

from agentrt.errors import PlanError
from agentrt.executor import Ref, Task
from agentrt.planner import (
    PlanIssue,
    PlanValidator,
    TaskParsed,
    TextPlanParser,
    check_acyclic,
    parse_plan,
    validate_plan,
)
from agentrt.tools import Tool, ToolRegistry, tool


class Point(BaseModel):
    x: float
    y: float = 0.0


@tool
def plot(points: list[Point], kind: Literal["line", "bar"] = "line",
         width: Annotated[int, Field(ge=100, le=4000)] = 640,
         label: Annotated[str, Field(pattern=r"^[a-z][0-9]+$")] = "a1",
         code: Annotated[str, Field(pattern=r"^[A-Z]{3}-[0-9]{4}$")] = "ABC-0001") -> str:
    """Plot points."""
    return ""


# a tool described by a JSON schema only (as from MCP): nothing but the schema to check against
raw = Tool(name="files.read", parameters={
    "type": "object", "properties": {"path": {"type": "string"}, "limit": {"type": "integer"}},
    "required": ["path"], "additionalProperties": False})


@pytest.fixture
def registry() -> ToolRegistry:
    return ToolRegistry([search, math, db_query, plot, raw])


def T(tid: int, tool: str = "search", **args: Any) -> Task:
    return Task(id=tid, tool=tool, args=args or {"query": "q"})


def rejected(result: Task | PlanIssue) -> PlanIssue:
    assert isinstance(result, PlanIssue), f"expected a rejection, got {result!r}"
    return result


def test_valid_task_is_returned_unchanged(registry: ToolRegistry) -> None:
    v = PlanValidator(registry)
    t = T(1)
    assert v.check(t) is t
    assert v.accepted == {1: t}


def test_unknown_tool_suggests_close_names(registry: ToolRegistry) -> None:
    v = PlanValidator(registry)
    issue = rejected(v.check(T(1, "serch", query="x")))
    assert issue.task_id == 1
    assert "unknown tool 'serch'" in issue.message and "did you mean 'search'" in issue.message
    issue = rejected(v.check(T(2, "query", sql="x")))
    assert "'db.query'" in issue.message.split("(tools:")[0]


@pytest.mark.parametrize("args, words", [
    ({"query": 5}, ["query", "string"]),
    ({"query": "x", "k": "many"}, ["k", "integer"]),
    ({"k": 2}, ["query", "required"]),
    ({"query": "x", "limit": 2}, ["limit", "xtra"]),
])
def test_wrong_missing_and_unknown_arguments_are_rejected(registry: ToolRegistry, args: dict[str, Any],
                                                          words: list[str]) -> None:
    issue = rejected(PlanValidator(registry).check(Task(id=1, tool="search", args=args)))
    assert "invalid arguments" in issue.message
    for w in words:
        assert w in issue.message


def test_a_reference_may_stand_for_any_type(registry: ToolRegistry) -> None:
    v = PlanValidator(registry, known_ids={1})
    ok = [
        Task(id=2, tool="search", args={"query": Ref(task=1), "k": Ref(task=1)}),
        Task(id=3, tool="search", args={"query": "x", "k": {"$ref": 1}}),
        Task(id=4, tool="search", args={"query": "x", "k": "$1"}),  # exactly a reference: typed
        Task(id=5, tool="db.query", args={"sql": "x", "params": [1, Ref(task=1), "${1}"]}),
        Task(id=6, tool="plot", args={"points": [{"x": Ref(task=1)}, Ref(task=1)],
                                      "kind": Ref(task=1), "width": Ref(task=1), "label": "$1"}),
        Task(id=7, tool="plot", args={"points": Ref(task=1)}),
    ]
    for t in ok:
        assert v.check(t) is t, t


def test_literals_next_to_references_are_still_checked(registry: ToolRegistry) -> None:
    v = PlanValidator(registry, known_ids={1})
    i1 = rejected(v.check(Task(id=2, tool="db.query", args={"sql": "x", "params": [Ref(task=1), "oops"]})))
    assert "params.1" in i1.message and "params.0" not in i1.message
    i2 = rejected(v.check(Task(id=3, tool="search", args={"query": "x", "k": "$1 items"})))
    assert "k" in i2.message  # text around a reference is a string, not an integer
    i3 = rejected(v.check(Task(id=4, tool="plot", args={"points": [{"x": Ref(task=1)}], "width": 5})))
    assert "width" in i3.message
    i4 = rejected(v.check(Task(id=5, tool="plot", args={"points": [{"y": Ref(task=1)}]})))
    assert "points.0.x" in i4.message and "required" in i4.message


def test_a_reference_where_no_placeholder_fits_is_not_a_false_rejection(registry: ToolRegistry) -> None:
    # no placeholder is generated for this pattern; the reference must still be accepted
    v = PlanValidator(registry, known_ids={1})
    t = Task(id=2, tool="plot", args={"points": [], "code": "$1"})
    assert v.check(t) is t
    assert isinstance(v.check(Task(id=3, tool="plot", args={"points": [], "code": "abc"})), PlanIssue)


def test_schema_only_tool_checks_required_and_unknown_arguments(registry: ToolRegistry) -> None:
    v = PlanValidator(registry)
    assert "missing required argument 'path'" in rejected(v.check(
        Task(id=1, tool="files.read", args={"limit": 3}))).message
    assert "unknown argument(s) 'mode'" in rejected(v.check(
        Task(id=2, tool="files.read", args={"path": "/x", "mode": "r"}))).message
    assert isinstance(v.check(Task(id=3, tool="files.read", args={"path": "/x"})), Task)


def test_self_reference_is_rejected(registry: ToolRegistry) -> None:
    issue = rejected(PlanValidator(registry).check(T(1, query="$1")))
    assert "references itself" in issue.message


def test_forward_and_missing_references_are_rejected(registry: ToolRegistry) -> None:
    v = PlanValidator(registry)
    v.check(T(1))
    fwd = rejected(v.check(T(2, query=Ref(task=3))))
    assert "task 3, which comes later" in fwd.message and "forward references are not allowed" in fwd.message
    assert isinstance(v.check(T(3)), Task)  # 3 itself is fine once it arrives
    missing = rejected(v.check(Task(id=9, tool="search", args={"query": "x"}, deps=frozenset({7}))))
    assert "task 7, which does not exist" in missing.message


def test_duplicate_ids_are_rejected_and_the_first_stays(registry: ToolRegistry) -> None:
    v = PlanValidator(registry)
    first = T(1)
    assert v.check(first) is first
    assert "duplicate id 1" in rejected(v.check(T(1, query="again"))).message
    dependent = T(2, query="$1")
    assert v.check(dependent) is dependent  # $1 is the first task, which was accepted
    assert v.accepted[1] is first


def test_ids_must_be_new_across_rounds_but_old_results_can_be_used(registry: ToolRegistry) -> None:
    v = PlanValidator(registry, known_ids={1, 2})
    issue = rejected(v.check(T(2)))
    assert "earlier round" in issue.message and "from 3" in issue.message
    t = T(3, query="$1 and $2")
    assert v.check(t) is t


def test_rejection_cascades_to_dependents_naming_the_dependency(registry: ToolRegistry) -> None:
    v = PlanValidator(registry)
    rejected(v.check(T(1, "serch", query="x")))
    i2 = rejected(v.check(T(2, query="$1")))
    assert "depends on rejected task 1" in i2.message and "unknown tool 'serch'" in i2.message
    i3 = rejected(v.check(T(3, query=Ref(task=2))))
    assert "depends on rejected task 2" in i3.message and "task 1: " in i3.message
    t4 = T(4)
    assert v.check(t4) is t4  # independent tasks are unaffected
    assert set(v.rejected) == {1, 2, 3}


def test_parser_issues_reject_dependents_through_process(registry: ToolRegistry) -> None:
    v = PlanValidator(registry)
    plan = ('1. search("x")\n'
            '2. search("never closed)\n'
            '3. math(expression="$2 * 2")\n'
            '4. math(expression="$1 * 2")\n'
            '5. join()\n')
    events = [v.process(e) for e in parse_plan(plan, registry)]
    accepted = [e.task.id for e in events if isinstance(e, TaskParsed)]
    assert accepted == [1, 4]
    i3 = [e for e in events if isinstance(e, PlanIssue) and e.task_id == 3][0]
    assert "depends on rejected task 2" in i3.message and "string" in i3.message


def test_streamed_plan_is_validated_as_it_arrives(registry: ToolRegistry) -> None:
    parser, v = TextPlanParser(registry), PlanValidator(registry)
    out = [v.process(e) for e in parser.feed('1. search("x")\n2. math(expression=$1)')]
    assert [type(e).__name__ for e in out] == ["TaskParsed", "TaskParsed"]
    out = [v.process(e) for e in parser.feed('\n3. serch("y")')]
    assert isinstance(out[0], PlanIssue) and out[0].task_id == 3


def test_check_acyclic_finds_cycles_and_orders_the_rest() -> None:
    with pytest.raises(PlanError, match=r"cycle: (1 -> 2 -> 3 -> 1|2 -> 3 -> 1 -> 2|3 -> 1 -> 2 -> 3)"):
        check_acyclic([T(1, query="$3"), T(2, query="$1"), T(3, query="$2")])
    with pytest.raises(PlanError, match="cycle: 4 -> 4"):
        check_acyclic([T(4, query="${4}")])
    with pytest.raises(PlanError, match="duplicate task id 1"):
        check_acyclic([T(1), T(1)])
    order = check_acyclic([T(3, query="$1 $2"), T(2, query="$1"), T(1, query="$0 done earlier")])
    assert order.index(1) < order.index(2) < order.index(3)


def test_validate_plan_accepts_any_order_and_rejects_bad_tasks(registry: ToolRegistry) -> None:
    accepted, issues = validate_plan(
        [T(3, query="$2"), T(2, query="$1"), T(1), T(4, "nope", query="x"), T(5, query="$4")], registry)
    assert [t.id for t in accepted] == [1, 2, 3]
    assert {i.task_id for i in issues} == {4, 5}
    with pytest.raises(PlanError):
        validate_plan([T(1, query="$2"), T(2, query="$1")], registry)


def test_adversarial_plan_end_to_end(registry: ToolRegistry) -> None:
    plan = ('Thought: tricky\n'
            '1. search(query="f(x) = \\"$9\\"")\n'           # $9 in a string: a reference, missing
            '2. db.query(sql="select \')\'", params=[$1])\n'
            '3. search(query=$3)\n'                          # self
            '4. search(query=$5)\n'                          # forward
            '5. db.query(sql=1)\n'                           # wrong type
            '6. math(expression="$2 + $5")\n'                # depends on rejected 5
            '7. join()\n')
    v = PlanValidator(registry)
    events = [v.process(e) for e in parse_plan(plan, registry)]
    assert [e.task.id for e in events if isinstance(e, TaskParsed)] == []
    assert v.rejected.keys() == {1, 2, 3, 4, 5, 6}
    assert "task 9, which comes later" in v.rejected[1]
    assert "depends on rejected task 1" in v.rejected[2]
    assert "references itself" in v.rejected[3]
    assert "task 5, which comes later" in v.rejected[4]
    assert "invalid arguments" in v.rejected[5] and "sql" in v.rejected[5]
    assert "depends on rejected task 2 (task 1: " in v.rejected[6]
    assert "depends on rejected task 5 (invalid arguments" in v.rejected[6]


def _chain_plan(n: int) -> str:
    lines = ['1. search(query="start")']
    lines += [f'{i}. db.query(sql="q{i} uses $1", params=[${i - 1}, 7, ${max(1, i // 2)}])'
              for i in range(2, n + 1)]
    return "\n".join(lines) + f"\n{n + 1}. join()\n"


def test_huge_plan_validates_in_linear_time(registry: ToolRegistry) -> None:
    def run(n: int) -> float:
        text = _chain_plan(n)
        start = time.perf_counter()
        v = PlanValidator(registry)
        events = [v.process(e) for e in parse_plan(text, registry)]
        elapsed = time.perf_counter() - start
        assert sum(isinstance(e, TaskParsed) for e in events) == n
        return elapsed

    run(200)  # warm-up
    t1k = run(1000)
    t4k = run(4000)
    assert t1k < 2.0, f"1,000 tasks took {t1k:.2f} s"
    assert t4k < 8 * t1k + 0.5, f"4x the tasks took {t4k / t1k:.1f}x the time (not linear)"
