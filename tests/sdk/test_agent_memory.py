"""Every run lands in the episodic memory, durably, and a close enough past episode reaches the
planner; memory that cannot open degrades to none with a warning, never a failed run."""

from __future__ import annotations

import subprocess
import sys

import pytest
from _scripted import ScriptedModel, make_registry

from agentrt import Agent
from agentrt.memory_store import HashingEmbedder, MemoryStore

pytestmark = pytest.mark.anyio
ANSWER = {"thought": "ok", "action": "answer", "answer": "a and b"}
PLAN = ['1. search(query="a")\n2. search(query="b")\n3. join()']


async def test_each_run_is_appended_and_a_close_past_episode_reaches_the_planner(tmp_path) -> None:
    store = MemoryStore(tmp_path / "m.db", embedder=HashingEmbedder())
    model = ScriptedModel([PLAN, PLAN, PLAN], [ANSWER, ANSWER, ANSWER])
    agent = Agent(model, make_registry([]), memory=store, tracing=False)
    await agent.run("What do a and b return?")
    await agent.run("What do a and b return?")  # the same question: its episode is recalled
    await agent.run("Completely unrelated words here")  # nothing close: no context
    first, second, third = (p[1].content for p in model.planner_prompts)
    assert "Known context" not in first
    assert "Past episode 1" in second and "result for a" in second and "a and b" in second
    assert "Known context" not in third
    questions = store.events(kind="question", session="default")
    assert len(questions) == 3
    store.close()


async def test_the_episode_is_durable_when_run_returns(tmp_path) -> None:
    path = tmp_path / "m.db"
    store = MemoryStore(path, embedder=HashingEmbedder())
    await Agent(ScriptedModel([PLAN], [ANSWER]), make_registry([]), memory=store, tracing=False).run("q1")
    # another process, with the writer still open (no close, no checkpoint), sees the whole episode
    code = ("import sys; from agentrt.memory_store import MemoryStore, HashingEmbedder;"
            f"s = MemoryStore({str(path)!r}, embedder=HashingEmbedder());"
            "print(sorted(e.kind for e in s.events(limit=50)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "['answer', 'plan', 'question', 'tool_result', 'tool_result']", out.stderr
    store.close()


async def test_memory_off_and_memory_that_cannot_open(tmp_path, monkeypatch, caplog) -> None:
    res = await Agent(ScriptedModel([PLAN], [ANSWER]), make_registry([]), memory=False, tracing=False).run("q")
    assert res.answer == "a and b"
    monkeypatch.setenv("AGENTRT_MEMORY__EMBEDDER", "minilm")
    monkeypatch.setenv("AGENTRT_MEMORY__PATH", str(tmp_path / "x" / "m.db"))
    monkeypatch.setenv("AGENTRT_HOME", str(tmp_path / "empty-home"))  # no MiniLM tokenizer there
    with caplog.at_level("WARNING", logger="agentrt._agent"):
        res = await Agent(ScriptedModel([PLAN], [ANSWER]), make_registry([]), tracing=False).run("q")
    assert res.answer == "a and b"  # the run itself is unaffected
    warned = [r.message for r in caplog.records if "runs will not be remembered" in r.message]
    assert warned and "tokenizer" in warned[0].lower(), caplog.records
