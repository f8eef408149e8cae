"""Streaming plan parsers: tasks are emitted at their closing parenthesis / brace, bad input is an
issue (never an exception), and the plan's end is an event."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from _planner_tools import db_query, math, search

from agentrt.executor import Ref
from agentrt.planner import (
    JsonPlanParser,
    PlanEnd,
    PlanIssue,
    TaskParsed,
    TextPlanParser,
    parse_plan,
)
from agentrt.tools import ToolRegistry, tool


@tool(name="http.post")
def http_post(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> str:
    """POST a JSON body."""
    return ""


@pytest.fixture
def registry() -> ToolRegistry:
    return ToolRegistry([search, math, db_query, http_post])


def tasks(events: list[Any]) -> list[Any]:
    return [e.task for e in events if isinstance(e, TaskParsed)]


def issues(events: list[Any]) -> list[PlanIssue]:
    return [e for e in events if isinstance(e, PlanIssue)]


def ends(events: list[Any]) -> list[PlanEnd]:
    return [e for e in events if isinstance(e, PlanEnd)]


def feed_chars(parser: Any, text: str) -> list[tuple[int, Any]]:
    """Feed one character at a time; (index of the character that completed it, event)."""
    out = []
    for i, c in enumerate(text):
        out += [(i, e) for e in parser.feed(c)]
    out += [(len(text), e) for e in parser.close()]
    return out


# -- text format ------------------------------------------------------------------------------

PLAN = (
    "Thought: look up both populations\n"
    "1. search(query=\"population of France\")\n"
    "2. search(\"population of Germany\")\n"
    "3. math(expression=\"$1 + $2\")\n"
    "Thought: that is all\n"
    "4. join()\n"
    "<END_OF_PLAN>\n"
)


def test_text_plan_gives_tasks_refs_thoughts_and_end(registry: ToolRegistry) -> None:
    events = parse_plan(PLAN, registry)
    t1, t2, t3 = tasks(events)
    assert (t1.id, t1.tool, t1.args, t1.thought) == (1, "search", {"query": "population of France"},
                                                     "look up both populations")
    assert t2.args == {"query": "population of Germany"}  # positional -> first parameter
    assert t2.thought is None
    assert t3.args == {"expression": "$1 + $2"} and t3.deps == {1, 2}
    assert events[-1] == PlanEnd(joined=True, thought="that is all")
    assert not issues(events)


def test_task_dispatches_at_its_closing_paren_not_at_the_newline(registry: ToolRegistry) -> None:
    parser = TextPlanParser(registry)
    seen = feed_chars(parser, PLAN)
    emitted = [(i, e) for i, e in seen if isinstance(e, TaskParsed)]
    assert len(emitted) == 3
    for i, ev in emitted:
        line = f"{ev.task.id}. "
        close = PLAN.index(")\n", PLAN.index(line))
        assert i == close, f"task {ev.task.id} emitted at {i}, its ')' is at {close}"
    end_at = [i for i, e in seen if isinstance(e, PlanEnd)]
    assert end_at == [PLAN.index("join()") + len("join()") - 1]


def test_nothing_is_emitted_before_the_closing_paren(registry: ToolRegistry) -> None:
    parser = TextPlanParser(registry)
    text = '1. search(query="a (b) [c] {d} \\" e )\'f\' $1", k=2'
    for c in text:
        assert parser.feed(c) == []
    (ev,) = parser.feed(")")
    assert isinstance(ev, TaskParsed)
    assert ev.task.args == {"query": "a (b) [c] {d} \" e )'f' $1", "k": 2}


def test_strings_with_parens_quotes_and_refs_stay_text(registry: ToolRegistry) -> None:
    plan = ("1. search(query='it\\'s (really) \"quoted\"')\n"
            "2. search(query=\"cost of $1 in ${1} (USD)\", k=$1)\n")
    t1, t2 = tasks(parse_plan(plan, registry))
    assert t1.args["query"] == "it's (really) \"quoted\""
    assert t2.args == {"query": "cost of $1 in ${1} (USD)", "k": Ref(task=1)}
    assert t2.deps == {1}


def test_nested_lists_and_dicts_with_references(registry: ToolRegistry) -> None:
    plan = ('1. search("x")\n'
            '2. http.post(url="https://e.org/a)", body={"a": [1, -2.5, {"b": ")]}"}], '
            '"c": $1, \'d\': [true, false, null, None]})\n')
    _, t2 = tasks(parse_plan(plan, registry))
    assert t2.tool == "http.post"
    assert t2.args["body"] == {"a": [1, -2.5, {"b": ")]}"}], "c": Ref(task=1),
                               "d": [True, False, None, None]}
    assert t2.deps == {1}


def test_references_in_both_spellings_become_refs(registry: ToolRegistry) -> None:
    plan = '1. search("a")\n2. search("b")\n3. db.query(sql="select", params=[$1, ${2}])\n'
    t3 = tasks(parse_plan(plan, registry))[2]
    assert t3.tool == "db.query"
    assert t3.args["params"] == [Ref(task=1), Ref(task=2)]
    assert t3.deps == {1, 2}


def test_positional_arguments_follow_the_schema_order(registry: ToolRegistry) -> None:
    events = parse_plan('1. search("q", 5)\n2. search("q", 5, 6)\n3. search("q", query="r")\n', registry)
    (t1,) = tasks(events)
    assert t1.args == {"query": "q", "k": 5}
    i2, i3 = issues(events)
    assert i2.task_id == 2 and "2 positional arguments" not in i2.message and "takes 2" in i2.message
    assert i3.task_id == 3 and "given twice" in i3.message


def test_unknown_tool_keeps_its_positional_values_for_the_validator(registry: ToolRegistry) -> None:
    (t,) = tasks(parse_plan('1. serch("x", 2)\n', registry))
    assert t.tool == "serch" and t.args == {"_0": "x", "_1": 2}


@pytest.mark.parametrize("line", [
    '1) search("x")',
    '  1.   search ( "x" )',
    'Action 1: search("x")',
    'Step 1: search("x")',
    '- 1. search("x")',
    '1. search("x")  # a comment (with parens)',
    '1: search("x")',
])
def test_numbering_variants(registry: ToolRegistry, line: str) -> None:
    events = parse_plan(f"```\n{line}\n```\n", registry)
    (t,) = tasks(events)
    assert (t.id, t.tool, t.args) == (1, "search", {"query": "x"})
    assert not issues(events)


def test_join_without_number_and_text_after_join_is_ignored(registry: ToolRegistry) -> None:
    parser = TextPlanParser(registry)
    events = parser.feed('1. search("x")\njoin()\nI think the answer is 42.\n2. search("y")\n')
    assert [t.id for t in tasks(events)] == [1]
    assert events[-1] == PlanEnd(joined=True)
    assert parser.feed('3. search("z")\n') == [] and parser.close() == []


def test_join_arriving_after_a_stop_string_ends_the_plan(registry: ToolRegistry) -> None:
    # the compiler stops the server at "join()" and feeds it back after "4. "
    parser = TextPlanParser(registry)
    assert tasks(parser.feed('1. search("x")\n4. '))
    assert parser.feed("join()") == [PlanEnd(joined=True)]


def test_join_cut_off_by_the_stream_still_ends_the_plan_as_joined(registry: ToolRegistry) -> None:
    events = parse_plan('Thought: for 1\n1. search("x"\nThought: all done\n2. join(', registry)
    assert issues(events)[0].task_id == 1
    assert events[-1] == PlanEnd(joined=True, thought="all done")


def test_end_of_plan_without_join_is_not_joined(registry: ToolRegistry) -> None:
    events = parse_plan('1. search("x")\n<END_OF_PLAN>\n2. search("y")\n', registry)
    assert len(tasks(events)) == 1
    assert events[-1] == PlanEnd(joined=False)


def test_stream_end_without_join_is_not_joined(registry: ToolRegistry) -> None:
    events = parse_plan('1. search("x")\nThought: dangling', registry)
    assert events[-1] == PlanEnd(joined=False, thought="dangling")


def test_garbage_lines_are_issues_and_parsing_goes_on(registry: ToolRegistry) -> None:
    events = parse_plan('Here is my plan:\n1. search("x")\n2. Compute the sum of both\n'
                        '3. search("y")\n', registry)
    assert [t.id for t in tasks(events)] == [1, 3]
    i1, i2 = issues(events)
    assert i1.task_id is None and "Here is my plan" in i1.text and "not a task" in i1.message
    assert i2.task_id == 2


def test_truncated_plan_gives_an_issue_for_the_unfinished_task(registry: ToolRegistry) -> None:
    parser = TextPlanParser(registry)
    events = parser.feed('1. search("x")\n2. db.query(sql="select (1", params=[1, ')
    assert [t.id for t in tasks(events)] == [1]
    tail = parser.close()
    (issue,) = issues(tail)
    assert issue.task_id == 2 and "truncated" in issue.message and issue.text.startswith("2. db.query(")
    assert tail[-1] == PlanEnd(joined=False)


def test_unterminated_string_rejects_only_its_task(registry: ToolRegistry) -> None:
    events = parse_plan('1. search("never closed)\n2. search("y")\n', registry)
    assert [t.id for t in tasks(events)] == [2]
    (issue,) = issues(events)
    assert issue.task_id == 1 and "string" in issue.message


def test_missing_paren_is_detected_at_the_next_task_line(registry: ToolRegistry) -> None:
    events = parse_plan('1. search("x"\n2. search("y")\n3. join()\n', registry)
    assert [t.id for t in tasks(events)] == [2]
    assert issues(events)[0].task_id == 1 and "closing parenthesis" in issues(events)[0].message
    assert events[-1].joined


def test_mismatched_bracket_rejects_the_task(registry: ToolRegistry) -> None:
    events = parse_plan('1. db.query(sql="x", params=[1, 2)\n2. search("y")\n', registry)
    assert [t.id for t in tasks(events)] == [2]
    assert issues(events)[0].task_id == 1 and "mismatched" in issues(events)[0].message


@pytest.mark.parametrize("args, why", [
    ("expression=1 + 2", "not a literal"),
    ("expression=x", "bare name"),
    ("**{'a': 1}", "**"),
    ("expression=f'{1}'", "not a literal"),
    ("expression=", "invalid syntax"),
])
def test_arguments_that_are_not_literals_are_issues(registry: ToolRegistry, args: str, why: str) -> None:
    (issue,) = issues(parse_plan(f"1. math({args})\n", registry))
    assert issue.task_id == 1 and why in issue.message


def test_task_id_zero_is_an_issue(registry: ToolRegistry) -> None:
    (issue,) = issues(parse_plan('0. search("x")\n', registry))
    assert issue.task_id == 0


def test_huge_text_plan_parses_in_linear_time(registry: ToolRegistry) -> None:
    lines = ['1. search(query="start")']
    lines += [f'{i}. search(query="step {i} of $1 (and \\"more\\")", k=${i - 1})' for i in range(2, 1001)]
    text = "\n".join(lines) + "\n1001. join()\n"
    parser = TextPlanParser(registry)
    start = time.perf_counter()
    events = []
    for j in range(0, len(text), 7):  # small chunks, as a model streams them
        events += parser.feed(text[j:j + 7])
    elapsed = time.perf_counter() - start
    assert [t.id for t in tasks(events)] == list(range(1, 1001))
    assert tasks(events)[-1].deps == {1, 999}
    assert events[-1] == PlanEnd(joined=True)
    assert elapsed < 2.0, f"1,000 tasks took {elapsed:.2f} s"


# -- JSON format ------------------------------------------------------------------------------

JSONL = (
    '{"id": 1, "tool": "search", "args": {"query": "population of France"}}\n'
    '{"id": 2, "thought": "the other one", "tool": "search", "args": {"query": "a } b \\" { c"}}\n'
    '{"id": 3, "tool": "db.query", "args": {"sql": "$1 and $2", "params": [{"$ref": 1}, {"$ref": 2}]}}\n'
    '{"join": true, "thought": "done"}\n'
)


def test_json_lines_plan(registry: ToolRegistry) -> None:
    events = parse_plan(JSONL, registry)
    t1, t2, t3 = tasks(events)
    assert t1.args == {"query": "population of France"}
    assert t2.thought == "the other one" and t2.args == {"query": 'a } b " { c'}
    assert t3.args == {"sql": "$1 and $2", "params": [Ref(task=1), Ref(task=2)]}
    assert t3.deps == {1, 2}
    assert events[-1] == PlanEnd(joined=True, thought="done")
    assert not issues(events)


def test_json_task_is_emitted_at_its_closing_brace(registry: ToolRegistry) -> None:
    text = JSONL.replace("\n", "")  # objects back to back, no newline to wait for
    seen = feed_chars(JsonPlanParser(registry), text)
    at = [i for i, e in seen if isinstance(e, TaskParsed)]
    closes = [text.index('"args"', text.index(f'"id": {n}')) for n in (1, 2, 3)]
    closes = [text.index("}}", c) + 1 for c in closes[:2]] + [text.index("}]}}", closes[2]) + 3]
    assert at == closes
    assert [i for i, e in seen if isinstance(e, PlanEnd)] == [len(text) - 1]


@pytest.mark.parametrize("wrap", [
    lambda items: "[" + ",\n ".join(items) + "]",
    lambda items: '{"tasks": [' + ", ".join(items) + "]}",
    lambda items: '```json\n{"plan": [\n' + ",\n".join(items) + "\n]}\n```",
])
def test_json_array_forms_emit_each_task_when_its_object_closes(registry: ToolRegistry, wrap: Any) -> None:
    items = ['{"id": 1, "tool": "search", "args": {"query": "x [1]"}}',
             '{"id": 2, "tool": "search", "args": {"query": "y", "k": {"$ref": 1}}, "deps": [1]}']
    text = wrap(items)
    seen = feed_chars(JsonPlanParser(registry), text)
    got = [(i, e) for i, e in seen if isinstance(e, TaskParsed)]
    assert [e.task.id for _, e in got] == [1, 2]
    for (i, e), item in zip(got, items):
        assert i == text.index(item) + len(item) - 1
        assert e.task.args == json.loads(item)["args"] | (
            {"k": Ref(task=1)} if e.task.id == 2 else {})
    end = [(i, e) for i, e in seen if isinstance(e, PlanEnd)]
    assert end == [(text.rindex("]"), PlanEnd(joined=True))]
    assert not issues([e for _, e in seen])


def test_tasks_wrapper_thought_goes_to_the_first_task(registry: ToolRegistry) -> None:
    events = parse_plan('{"thought": "search first", "tasks": [{"id": 1, "tool": "search", '
                        '"args": {"query": "x"}}]}', registry, format="json")
    (t,) = tasks(events)
    assert t.thought == "search first"
    assert events[-1].joined


def test_empty_plan_array_is_a_join(registry: ToolRegistry) -> None:
    assert parse_plan('{"tasks": []}', registry) == [PlanEnd(joined=True)]


def test_bracketed_note_is_not_mistaken_for_an_empty_plan(registry: ToolRegistry) -> None:
    events = parse_plan('[note]\n{"id": 1, "tool": "search", "args": {"query": "x"}}\n', registry,
                        format="json")
    assert [t.id for t in tasks(events)] == [1]
    assert issues(events)[0].text == "[note]"
    assert events[-1] == PlanEnd(joined=False)


def test_join_as_a_task_object_ends_the_plan(registry: ToolRegistry) -> None:
    events = parse_plan('{"id": 1, "tool": "search", "args": {"query": "x"}}\n'
                        '{"id": 2, "tool": "join", "args": {}}\n'
                        '{"id": 3, "tool": "search", "args": {"query": "y"}}\n', registry)
    assert [t.id for t in tasks(events)] == [1]
    assert events[-1] == PlanEnd(joined=True)


def test_json_leniency_python_literals_string_arguments_and_thought_lines(registry: ToolRegistry) -> None:
    events = parse_plan(
        "Thought: python style below\n"
        "{'id': 1, 'tool': 'search', 'args': {'query': 'x', 'k': 2,},}\n"
        '{"id": "2", "name": "search", "arguments": "{\\"query\\": \\"y\\"}"}\n'
        '{"id": 3, "tool": "search", "args": {"query": "z", "k": $2}}\n',
        registry, format="json")
    t1, t2, t3 = tasks(events)
    assert t1.thought == "python style below" and t1.args == {"query": "x", "k": 2}
    assert (t2.id, t2.tool, t2.args) == (2, "search", {"query": "y"})
    assert t3.args["k"] == Ref(task=2)


@pytest.mark.parametrize("line, task_id, why", [
    ('{"tool": "search", "args": {"query": "x"}}', None, '"id"'),
    ('{"id": 4, "args": {"query": "x"}}', 4, '"tool"'),
    ('{"id": 5, "tool": "search", "args": ["x"]}', 5, '"args" must be an object'),
    ('{"id": 6, "tool": "search", "args": {"k": {"$ref": "one"}}}', 6, "reference"),
    ('{"id": 7, "tool": "search", "args": {"query": oops}}', 7, "not valid JSON"),
    ('{"id": 8, "tool": "search", "deps": "1", "args": {}}', 8, '"deps"'),
])
def test_malformed_json_tasks_are_issues(registry: ToolRegistry, line: str, task_id: int | None,
                                         why: str) -> None:
    events = parse_plan(line + '\n{"id": 9, "tool": "search", "args": {"query": "ok"}}\n', registry,
                        format="json")
    (issue,) = issues(events)
    assert issue.task_id == task_id and why in issue.message
    assert [t.id for t in tasks(events)] == [9]


def test_json_prose_between_objects_is_an_issue(registry: ToolRegistry) -> None:
    events = parse_plan('{"id": 1, "tool": "search", "args": {"query": "x"}}\nNow I search again {\n'
                        '{"id": 2, "tool": "search", "args": {"query": "y"}}\n', registry, format="json")
    assert [t.id for t in tasks(events)] == [1, 2]
    assert issues(events)[0].task_id is None and "Now I search" in issues(events)[0].text


def test_json_truncated_object_is_an_issue_with_its_id(registry: ToolRegistry) -> None:
    parser = JsonPlanParser(registry)
    events = parser.feed('{"tasks": [{"id": 1, "tool": "search", "args": {"query": "x"}}, '
                         '{"id": 2, "tool": "search", "args": {"query": "y}')
    assert [t.id for t in tasks(events)] == [1]
    tail = parser.close()
    assert issues(tail)[0].task_id == 2 and "truncated" in issues(tail)[0].message
    assert tail[-1] == PlanEnd(joined=False)


def test_json_unterminated_string_and_mismatched_bracket_recover_at_next_line(
        registry: ToolRegistry) -> None:
    events = parse_plan('{"id": 1, "tool": "search", "args": {"query": "x}}\n'
                        '{"id": 2, "tool": "search", "args": {"query": "y"]}\n'
                        '{"id": 3, "tool": "search", "args": {"query": "z"}}\n', registry, format="json")
    assert [i.task_id for i in issues(events)] == [1, 2]
    assert [t.id for t in tasks(events)] == [3]


def test_escape_split_across_chunks(registry: ToolRegistry) -> None:
    parser = JsonPlanParser(registry)
    events = parser.feed('{"id": 1, "tool": "search", "args": {"query": "a\\')
    events += parser.feed('"}"}}')
    (t,) = tasks(events)
    assert t.args["query"] == 'a"}'


def test_huge_json_plan_parses_in_linear_time(registry: ToolRegistry) -> None:
    items = [json.dumps({"id": i, "tool": "search",
                         "args": {"query": f"step {i} {{ }}", "k": {"$ref": i - 1} if i > 1 else 1}})
             for i in range(1, 1001)]
    text = '{"tasks": [' + ", ".join(items) + "]}"
    parser = JsonPlanParser(registry)
    start = time.perf_counter()
    events = []
    for j in range(0, len(text), 5):
        events += parser.feed(text[j:j + 5])
    elapsed = time.perf_counter() - start
    assert [t.id for t in tasks(events)] == list(range(1, 1001))
    assert events[-1] == PlanEnd(joined=True)
    assert elapsed < 2.0, f"1,000 tasks took {elapsed:.2f} s"


def test_parse_plan_detects_the_format(registry: ToolRegistry) -> None:
    assert tasks(parse_plan('```json\n[{"id": 1, "tool": "search", "args": {"query": "x"}}]\n```',
                            registry))[0].args == {"query": "x"}
    assert tasks(parse_plan('1. search("x")', registry))[0].args == {"query": "x"}
    with pytest.raises(ValueError):
        parse_plan("", registry, format="yaml")


ADVERSARIAL_TEXT = (
    "```\nThought: a (tricky) plan\n"
    '1. search(query="a \\"(\\" b", k=2)  # note (x)\n'
    "2. db.query(sql='it\\'s', params=[$1, ${1}])\n"
    '3. search("never closed\n'
    '4. http.post(url="u", body={"k": [1, {"a": ")"}]}\n'
    '5. search("x") 6. search("y")\n'
    "Some commentary.\n"
    '7. search(query=$6'
)
ADVERSARIAL_JSON = (
    "```json\nThought: go\n"
    '{"id": 1, "tool": "search", "args": {"query": "} { \\\\\\" ]"}}{"id": 2, "tool": "search",'
    ' "args": {"query": "x", "k": {"$ref": 1}}}\n'
    "prose {\n"
    '[{"id": 3, "tool": "search", "args": {"query": "y"]}\n'
    '{"tasks": [{"id": 4, "tool": "search", "args": {"query": "z"}}, {"id": 5, "tool": '
)


@pytest.mark.parametrize("text, make", [
    (PLAN, TextPlanParser), (ADVERSARIAL_TEXT, TextPlanParser),
    (JSONL, JsonPlanParser), (ADVERSARIAL_JSON, JsonPlanParser),
])
def test_events_do_not_depend_on_how_the_stream_is_chunked(registry: ToolRegistry, text: str,
                                                           make: Any) -> None:
    import random

    whole = make(registry)
    expected = whole.feed(text) + whole.close()
    assert any(isinstance(e, TaskParsed) for e in expected)
    rng = random.Random(7)
    for _ in range(40):
        parser, got, i = make(registry), [], 0
        while i < len(text):
            n = rng.choice([1, 1, 2, 3, 5, 8, 13, 64])
            got += parser.feed(text[i:i + n])
            i += n
        got += parser.close()
        assert got == expected
