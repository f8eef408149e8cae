"""An agent's tool calls run in the sandbox: tools declaring ``runs_in="sandbox"`` by default,
every tool with ``sandbox_all``; without a sandbox such tools are refused, never run unconfined."""

from __future__ import annotations

import os

import pytest
from _scripted import ScriptedModel

from agentrt import Agent, Limits, tool
from agentrt.tools.builtin import python, shell

pytestmark = pytest.mark.anyio
ANSWER = {"thought": "ok", "action": "answer", "answer": "done"}


def _sandbox_missing() -> str | None:
    from agentrt.errors import SandboxError
    from agentrt.sandbox import get_backend

    try:
        get_backend("namespace")
    except SandboxError as exc:
        return str(exc)
    return None


needs_sandbox = pytest.mark.skipif(_sandbox_missing() is not None, reason=f"no sandbox: {_sandbox_missing()}")


@tool(limits=Limits(memory="64M", timeout=20))
def whoami() -> dict:
    """Where this call runs: its process id and what it sees of /root."""
    return {"pid": os.getpid(), "root": sorted(os.listdir("/root")) if os.access("/root", os.R_OK) else None}


@needs_sandbox
async def test_sandbox_tools_run_sandboxed_by_default_with_their_limits() -> None:
    plan = ['1. python(code="import os; print(os.getpid())")\n'
            '2. shell(command="ls /root | wc -l")\n'
            "3. python(code=\"x = b'x' * (800 * 2**20)\")\n4. join()"]
    agent = Agent(ScriptedModel([plan], [ANSWER]), [python, shell], tracing=False)
    res = await agent.run("q")
    r1, r2, r3 = (res.results[i] for i in (1, 2, 3))
    assert r1.ok and int(r1.value["stdout"]) < 10  # a fresh pid namespace: a small pid
    assert r1.usage.cpu_seconds is not None and r1.usage.memory_peak_bytes  # measured by its cgroup
    assert r2.ok and r2.value["stdout"].strip() == "0"  # /root is hidden
    # 800 MiB > the python tool's hard limit (256 MiB x 2): killed by the OOM killer, reported
    assert r3.error_kind == "oom" and r3.usage.oom_killed


@needs_sandbox
async def test_sandbox_all_runs_in_process_tools_in_the_sandbox_too() -> None:
    plan = ['1. whoami()\n2. join()']
    inside = await Agent(ScriptedModel([plan], [ANSWER]), [whoami], sandbox_all=True, tracing=False).run("q")
    outside = await Agent(ScriptedModel([plan], [ANSWER]), [whoami], tracing=False).run("q")
    assert outside.results[1].value["pid"] == os.getpid()
    seen = inside.results[1].value
    assert seen["pid"] != os.getpid()
    # /root is an empty tmpfs there, except for the interpreter re-bound read-only when it lives
    # under /root (pyenv); the user's files (e.g. ~/.local, where agentrt keeps its data) are not
    visible = set(seen["root"] or [])
    assert ".local" not in visible and visible <= {".pyenv"}, visible


async def test_without_a_sandbox_sandbox_tools_are_refused_not_run() -> None:
    plan = ['1. shell(command="touch /tmp/agentrt-must-not-exist")\n2. join()']
    res = await Agent(ScriptedModel([plan], [ANSWER]), [shell], sandbox="none", tracing=False).run("q")
    assert res.results[1].error_kind == "denied"
    assert not os.path.exists("/tmp/agentrt-must-not-exist")


@needs_sandbox
async def test_an_agent_context_keeps_one_sandbox_session_across_runs() -> None:
    plan = ['1. python(code="print(1)")\n2. join()']
    async with Agent(ScriptedModel([plan, plan], [ANSWER, ANSWER]), [python], tracing=False) as agent:
        backend = agent._backend
        a = await agent.run("q")
        b = await agent.run("q")
        assert agent._backend is backend
    assert a.results[1].ok and b.results[1].ok and agent._backend is None


@needs_sandbox
async def test_a_sandboxed_calls_usage_reaches_its_trace_span(tmp_path) -> None:
    from agentrt.tracing import TraceStore

    store = TraceStore(tmp_path / "t.sqlite")
    plan = ['1. python(code="print(1)")\n2. join()']
    try:
        res = await Agent(ScriptedModel([plan], [ANSWER]), [python], tracing=store.tracer(), memory=False).run("q")
        store.flush()
        span = next(s for s in store.spans(res.trace_id) if s.operation == "execute_tool")
    finally:
        store.close()
    usage = res.results[1].usage
    attrs = span.attributes
    assert attrs["agentrt.usage.pids_peak"] == usage.model_extra["pids_peak"]
    if "ebpf_execs" in usage.model_extra:  # where eBPF works, its counters are on the span
        assert attrs["agentrt.usage.ebpf_execs"] == usage.model_extra["ebpf_execs"] >= 1
