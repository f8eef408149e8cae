"""Parallel plan decoding: an outline of tool names, then every task's arguments at once.

Logic is tested against a scripted llama.cpp-like server on a real loopback socket (its "model"
answers the outline and each task's argument branches from a script, with delays and failures);
the joiner is a scripted chat model. The real local engine is exercised in the `model` tests.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from _fake_llamacpp import FakeServer, JsonHandler, render_turns
from _scripted import ScriptedModel

from agentrt.executor import TaskStarted
from agentrt.llm import Completion, Delta, Usage
from agentrt.planner import LLMCompiler, PlanExample
from agentrt.planner._parallel_plan import outline_grammar, parse_outline
from agentrt.tools import ToolRegistry, tool

pytestmark = pytest.mark.anyio

EXAMPLE = PlanExample(question="What is 2 + 3 times 4?",
                      plan='1. add(a=3, b=4)\n2. add(a=2, b="$1")\n3. join()')


# -- a scripted llama.cpp server ----------------------------------------------------------------

def _render(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
    """ChatML with Qwen2.5's tool-call blocks, ending with the generation prompt."""
    out = "<|im_start|>system\n"
    for m in messages[:1]:
        if m["role"] == "system":
            out += m.get("content") or ""
    if tools:
        out += "\n<tools>\n" + "\n".join(json.dumps(t) for t in tools) + "\n</tools>"
    out += "<|im_end|>\n"
    return out + render_turns(messages, skip_system=True)


@dataclass
class Script:
    """The fake model: the outline text, each task's argument values (by task id, then key), a
    delay per task's branches, tasks whose branches fail with HTTP 500, and whether the native
    endpoints exist at all (``raw=False``: a plain OpenAI-compatible server)."""

    outline: str
    args: dict[int, dict[str, Any]]
    delays: dict[int, float] = field(default_factory=dict)
    fail: set[int] = field(default_factory=set)
    raw: bool = True
    log: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def FakeLlamaCpp(script: Script) -> FakeServer:
    return FakeServer(script, _Handler)


class _Handler(JsonHandler):
    script: Script

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        s = self.script
        if not s.raw or self.path not in ("/apply-template", "/completion"):
            self._send(404, {"error": {"code": 404, "message": "File Not Found"}})
            return
        if self.path == "/apply-template":
            self._send(200, {"prompt": _render(body["messages"], body.get("tools"))})
            return
        started = time.perf_counter()
        prompt: str = body["prompt"]
        asked = re.findall(r"Write call (\d+):", prompt)
        task = int(asked[-1]) if asked else None
        status, content = 200, ""
        if prompt.endswith("Outline:\n"):
            content = s.outline
        elif m := re.search(r'"([^"]+)":$', prompt):
            assert task is not None
            time.sleep(s.delays.get(task, 0.0))
            if task in s.fail:
                status = 500
            else:
                content = " " + json.dumps(s.args[task][m.group(1)]) + ","
        else:  # the optional tail after the required pairs: none written
            content = "}}"
        with s.lock:
            s.log.append({"task": task, "prompt": prompt, "body": body, "started": started,
                          "ended": time.perf_counter(), "content": content})
        if status != 200:
            self._send(status, {"error": {"code": status, "message": "slot crashed"}})
            return
        self._send(200, {"content": content, "tokens_predicted": max(1, len(content) // 3), "stop_type": "eos",
                         "id_slot": 0, "timings": {"prompt_n": 7, "cache_n": len(prompt) // 4}})


class Joiner:
    """A chat model that only joins (the plan never goes through the chat API in parallel mode)
    and knows the raw server's URL, as `OpenAIChatModel` does."""

    model_name = "scripted"

    def __init__(self, base_url: str, answer: str = "done") -> None:
        self.base_url, self.answer = base_url, answer
        self.prompts: list[str] = []

    async def complete(self, messages: Any, *, stream: bool = False, **kw: Any) -> Any:
        self.prompts.append("\n".join(m.content or "" for m in messages))
        text = json.dumps({"thought": "ok", "action": "answer", "answer": self.answer})
        done = Completion(content=text, usage=Usage(input_tokens=50, output_tokens=10, requests=1))

        async def gen() -> Any:
            yield Delta(content=text)
            yield Delta(done=True, completion=done)

        return gen() if stream else done


def registry(calls: list[tuple[str, dict[str, Any], float]]) -> ToolRegistry:
    @tool
    async def add(a: float, b: float) -> float:
        """Add two numbers.

        Args:
            a: first number.
            b: second number.
        """
        calls.append(("add", {"a": a, "b": b}, time.perf_counter()))
        return a + b

    @tool
    async def search(query: str, k: int = 3) -> str:
        """Search for one entity.

        Args:
            query: what to look up.
            k: how many hits.
        """
        calls.append(("search", {"query": query, "k": k}, time.perf_counter()))
        return f"about {query}: 42"

    return ToolRegistry([add, search])


# -- the outline ----------------------------------------------------------------------------------

def test_outline_grammar_names_only_known_tools_and_earlier_calls() -> None:
    g = outline_grammar(["search", "db.query"], first_id=1, max_tasks=3)
    assert g.startswith("%llguidance {}\n")
    assert 'tool: "db.query" | "search"' in g
    # line 1 may reference nothing; line 3 only $1 and $2; after 3 calls only join() remains
    assert 'l0: "1. " (tool "()" "\\n" l1)' in g
    assert 'r2: "$1" | "$2"' in g and '"$3"' not in g
    assert 'l3: "4. " ("join()")' in g
    # a replan continues the numbering and may use earlier rounds' tasks
    g2 = outline_grammar(["search"], first_id=4, max_tasks=2, known_ids=[1, 2, 3], min_tasks=0)
    assert 'l0: "4. " (tool "(" (r0 (", " r0)*)? ")" "\\n" l1 | "join()")' in g2
    assert 'r0: "$1" | "$2" | "$3"' in g2


def test_outline_parse_rejects_unknown_tools_and_forward_references() -> None:
    reg = registry([])
    tasks, issues = parse_outline("1. search()\n2. search()\n3. add($1, $2)\n4. join()", reg)
    assert [(t.id, t.tool, t.deps) for t in tasks] == [(1, "search", ()), (2, "search", ()), (3, "add", (1, 2))]
    assert issues == []
    tasks, issues = parse_outline("1. search($2)\n2. fly()\n3. join()", reg)
    assert [(t.id, t.deps) for t in tasks] == [(1, ())]
    assert "$2" in issues[0].message and "fly" in issues[1].message


# -- whole runs against the scripted server ------------------------------------------------------

async def _run(script: Script, **kw: Any) -> tuple[Any, Joiner, list[Any], list[Any]]:
    calls: list[tuple[str, dict[str, Any], float]] = []
    events: list[Any] = []
    with FakeLlamaCpp(script) as server:
        joiner = Joiner(server.base_url)
        compiler = LLMCompiler(joiner, registry(calls), examples=[EXAMPLE], plan_format="parallel",
                               on_event=lambda e: events.append((time.perf_counter(), e)), **kw)
        with anyio.fail_after(30):
            res = await compiler.run("What is 42 plus 42, about x and y?")
    return res, joiner, calls, events


async def test_tasks_get_their_own_arguments_and_references_resolve() -> None:
    script = Script(outline="1. search()\n2. search()\n3. add($1, $2)\n4. join()",
                    args={1: {"query": "x", "k": None}, 2: {"query": "y", "k": 5}, 3: {"a": "$1", "b": 2.5}})
    res, joiner, calls, _ = await _run(script)
    assert res.answer == "done" and not res.issues
    assert res.tasks[1].args == {"query": "x"}  # null: the optional argument is left to its default
    assert res.tasks[2].args == {"query": "y", "k": 5}
    assert res.tasks[3].deps == {1, 2}  # $1 from the arguments, $2 from the outline
    searches = sorted((c[1]["query"], c[1]["k"]) for c in calls if c[0] == "search")
    assert searches == [("x", 3), ("y", 5)]
    assert 3 in res.results  # ran after both searches (search returns text: add rejects it, as a value)
    # each branch asked for its own call, after the whole outline
    prompts = {e["task"]: e["prompt"] for e in script.log if e["task"]}
    assert "Write call 2: search()" in prompts[2] and "Calls 1, 2 all use search" in prompts[2]
    assert "3. add($1, $2)\n4. join()" in prompts[1]
    # a reference is admitted only to an earlier call: none in task 1's grammars, $1 and $2 in task 3's
    grammars = {e["task"]: e["body"]["grammar"] for e in script.log if e["task"] and "grammar" in e["body"]}
    assert "$" not in grammars[1]
    assert '"$1", "$2"' in grammars[3] and '"$3"' not in grammars[3]
    # the joiner saw every task and its result; usage counts every request
    assert "1. search(" in joiner.prompts[-1] and "about y" in joiner.prompts[-1]
    assert res.llm_calls >= 1 + 5 + 1 and res.usage.output_tokens > 0


async def test_references_resolve_to_numbers() -> None:
    script = Script(outline="1. add()\n2. add($1)\n3. join()",
                    args={1: {"a": 3, "b": 4}, 2: {"a": 2, "b": "$1"}})
    res, *_ = await _run(script)
    assert res.results[1].value == 7 and res.results[2].value == 9
    assert res.tasks[2].args == {"a": 2, "b": "$1"} and res.tasks[2].deps == {1}


async def test_invalid_arguments_are_a_plan_issue_not_a_call() -> None:
    # the grammar admits "$N" where a number is due, for earlier calls only; a model (here a
    # script) that writes "$9" anyway gets its arguments rejected, and nothing runs for them
    script = Script(outline="1. add()\n2. add()\n3. join()", args={1: {"a": 1, "b": 2}, 2: {"a": "$9", "b": 1}})
    res, joiner, calls, _ = await _run(script)
    assert [c[1] for c in calls] == [{"a": 1, "b": 2}]
    assert [i.task_id for i in res.issues] == [2] and "$9" in res.issues[0].message
    assert "Plan problems" in joiner.prompts[-1]


async def test_branch_failure_is_a_plan_issue_the_joiner_sees() -> None:
    script = Script(outline="1. search()\n2. search()\n3. add($1, $2)\n4. join()",
                    args={1: {"query": "x", "k": None}, 3: {"a": "$1", "b": "$2"}}, fail={2})
    res, joiner, calls, _ = await _run(script, max_rounds=1)
    assert [c[1]["query"] for c in calls] == ["x"]  # task 1 ran; 2 failed to decode; 3 depends on it
    by_task = {i.task_id: i.message for i in res.issues}
    assert "could not be decoded" in by_task[2] and "HTTP 500" in by_task[2]
    assert "rejected task 2" in by_task[3]
    assert 2 not in res.tasks and 3 not in res.tasks and res.results[1].ok
    assert "could not be decoded" in joiner.prompts[-1]


async def test_tasks_dispatch_before_all_branches_finish() -> None:
    script = Script(outline="1. search()\n2. search()\n3. join()",
                    args={1: {"query": "x", "k": None}, 2: {"query": "y", "k": None}}, delays={2: 1.0})
    res, _, _, events = await _run(script)
    started = {e.task.id: t for t, e in events if isinstance(e, TaskStarted)}
    last_branch_end = max(e["ended"] for e in script.log if e["task"] == 2)
    assert sorted(started) == [1, 2]
    assert started[1] < last_branch_end - 0.5  # task 1 ran while task 2's arguments were decoding
    assert res.results[1].ok and res.results[2].ok


async def test_falls_back_to_the_text_plan_without_native_endpoints(caplog: pytest.LogCaptureFixture) -> None:
    script = Script(outline="", args={}, raw=False)
    calls: list[tuple[str, dict[str, Any], float]] = []
    with FakeLlamaCpp(script) as server:
        model = ScriptedModel([['1. add(a=1, b=2)\n2. join()']], [{"thought": "t", "action": "answer", "answer": "3"}])
        model.base_url = server.base_url  # type: ignore[attr-defined]
        compiler = LLMCompiler(model, registry(calls), plan_format="parallel")
        with caplog.at_level(logging.WARNING, logger="agentrt.planner._compiler"), anyio.fail_after(30):
            res = await compiler.run("1 + 2?")
    assert res.answer == "3" and res.results[1].value == 3
    assert len(model.planner_prompts) == 1  # the plan came from the text planner
    assert any("parallel plan decoding unavailable" in r.message and "using the text plan" in r.message
               for r in caplog.records)
    assert script.log == []


async def test_a_model_without_a_url_falls_back_too() -> None:
    model = ScriptedModel([['1. add(a=1, b=2)\n2. join()']], [{"thought": "t", "action": "answer", "answer": "3"}])
    res = await LLMCompiler(model, registry([]), plan_format="parallel").run("1 + 2?")
    assert res.results[1].value == 3


# -- the real local engine ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def engine_url(request: pytest.FixtureRequest) -> str:
    """The registered (shared) engine when it answers, else the session's own local engine."""
    from agentrt.config import get_settings
    from agentrt.llm import running_engine

    state = anyio.run(running_engine, get_settings())
    if state is not None:
        return state.base_url
    return request.getfixturevalue("local_engine").base_url


@pytest.mark.model
async def test_real_model_plans_known_tools_with_valid_arguments(engine_url: str) -> None:
    from agentrt.llm import OpenAIChatModel

    calls: list[tuple[str, dict[str, Any], float]] = []
    reg = registry(calls)
    model = OpenAIChatModel(base_url=engine_url, model="local", timeout=600)
    example = PlanExample(question="What do the search results say about Paris and Rome, added up?",
                          plan='1. search(query="Paris")\n2. search(query="Rome")\n3. add(a="$1", b="$2")\n4. join()')
    compiler = LLMCompiler(model, reg, examples=[example], plan_format="parallel", max_rounds=1)
    with anyio.fail_after(900):
        res = await compiler.run("What do the search results say about Oslo and Lima, added up?")
    await model.aclose()
    assert res.tasks, res.issues
    assert all(t.tool in ("search", "add") for t in res.tasks.values())
    for t in res.tasks.values():  # arguments valid for the tool, references in place of values
        tool_ = reg.get(t.tool)
        tool_.validate_args({k: (1 if isinstance(v, str) and v.startswith("$") else v) for k, v in t.args.items()})
    queries = [c[1]["query"].lower() for c in calls if c[0] == "search"]
    assert any("oslo" in q for q in queries) and any("lima" in q for q in queries), queries


def test_agent_and_cli_take_the_plan_format() -> None:
    from typer.testing import CliRunner

    from agentrt import Agent
    from agentrt.cli._app import app

    assert Agent(tools=[], plan_format="parallel", memory=False).plan_format == "parallel"
    with pytest.raises(ValueError, match="plan_format"):
        Agent(tools=[], plan_format="xml", memory=False)
    out = CliRunner().invoke(app, ["run", "--plan-format", "xml", "1 + 1?"])
    assert out.exit_code == 2 and "--plan-format" in out.output


async def test_a_same_tool_call_sees_its_earlier_siblings_arguments_other_tools_do_not_wait() -> None:
    script = Script(outline="1. search()\n2. add()\n3. search()\n4. join()",
                    args={1: {"query": "Danube", "k": None}, 2: {"a": 1, "b": 2}, 3: {"query": "Rhine", "k": None}},
                    delays={1: 0.6})
    res, *_ = await _run(script)
    assert not res.issues and res.results[2].value == 3
    prompts = {e["task"]: e["prompt"] for e in script.log if e["task"]}
    assert 'already written, for other items of the question:\n1. search(query="Danube")' in prompts[3]
    assert "already written" not in prompts[1] and "already written" not in prompts[2]
    spans = {}
    for e in script.log:
        if e["task"]:
            lo, hi = spans.get(e["task"], (e["started"], e["ended"]))
            spans[e["task"]] = (min(lo, e["started"]), max(hi, e["ended"]))
    assert spans[3][0] >= spans[1][1] - 0.01  # search 3 decoded after search 1's arguments were known
    assert spans[2][0] < spans[1][1] - 0.3  # add did not wait for search 1


async def test_siblings_parallel_decodes_same_tool_calls_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from agentrt.planner._parallel_plan import ParallelPlanner

    init = ParallelPlanner.__init__
    monkeypatch.setattr(ParallelPlanner, "__init__",
                        lambda self, *a, **kw: init(self, *a, **{**kw, "siblings": "parallel"}))
    script = Script(outline="1. search()\n2. search()\n3. join()",
                    args={1: {"query": "x", "k": None}, 2: {"query": "y", "k": None}}, delays={1: 0.6, 2: 0.6})
    await _run(script)
    firsts = {}
    for e in script.log:
        if e["task"]:
            firsts.setdefault(e["task"], e["started"])
    assert abs(firsts[1] - firsts[2]) < 0.3
    assert not any("already written" in e["prompt"] for e in script.log)
