"""A plan through the Scheduler with `SandboxedBackend`: sandbox tools in the sandbox, per call."""

from __future__ import annotations

import anyio
import pytest

from agentrt.executor import LocalBackend, SandboxedBackend, Scheduler, Task
from agentrt.tools import Limits, ToolRegistry
from agentrt.tools.builtin import calculator, python, shell

pytestmark = pytest.mark.anyio


@pytest.fixture
async def backend(ns_backend):
    be = SandboxedBackend(ns_backend, session="plan")
    yield be
    be.close()


async def test_plan_runs_sandboxed_and_in_process_calls_with_references(backend):
    reg = ToolRegistry([python, shell, calculator])
    tasks = [
        Task(id=1, tool="shell", args={"command": "echo $((6 * 7))"}),
        Task(id=2, tool="python", args={"code": "import os; print(os.getpid())"}),
        Task(id=3, tool="calculator", args={"expression": "2 + 3"}),
        Task(id=4, tool="python", args={"code": "print($3 + 1)"}),
    ]
    results = await Scheduler(reg, backend=backend).run(tasks)
    assert results[1].ok and results[1].value["stdout"] == "42\n"
    # the python tool's process is pid 3 or so of its own namespace, not a host pid
    assert results[2].ok and int(results[2].value["stdout"]) < 10
    assert results[3].ok and results[3].value == 5 and results[3].usage.exit_status is None
    assert results[4].ok and results[4].value["stdout"].strip() == "6"
    assert results[1].usage.memory_peak_bytes and results[1].usage.cpu_seconds is not None


async def test_sandboxed_call_failures_are_values_not_exceptions(backend):
    reg = ToolRegistry([python])
    tight = python.model_copy(update={"limits": Limits(memory="24M", memory_burst=1.0, timeout=10)})
    r_oom = await backend.submit(Task(id=1, tool="python", args={}), tight,
                                 {"code": "b = bytearray(256 * 2**20)"}, tight.limits)
    assert r_oom.error_kind == "oom" and r_oom.usage.memory_peak_bytes <= 25 * 2**20
    slow = python.model_copy(update={"limits": Limits(timeout=0.5)})
    r_to = await backend.submit(Task(id=2, tool="python", args={}), slow,
                                {"code": "import time; time.sleep(30)"}, slow.limits)
    assert r_to.error_kind == "timeout"
    results = await Scheduler(reg, backend=backend).run(
        [Task(id=1, tool="python", args={"code": "raise SystemExit(4)"})])
    assert results[1].ok and results[1].value["exit_code"] == 4  # the program's status is its value


async def test_shell_tool_keeps_writes_inside_the_sandbox(backend, tmp_path):
    target = tmp_path / "escape.txt"
    r = await backend.submit(Task(id=1, tool="shell", args={}), shell,
                             {"command": f"echo x > {target}; echo $?"}, shell.limits)
    assert r.ok and r.value["stdout"].strip() != "0"
    assert not target.exists()


async def test_local_backend_still_refuses_sandbox_tools():
    r = await LocalBackend().submit(Task(id=1, tool="shell", args={}), shell, {"command": "true"}, shell.limits)
    assert r.error_kind == "denied"


async def test_parallel_sandboxed_calls_overlap(backend):
    reg = ToolRegistry([shell])
    tasks = [Task(id=i, tool="shell", args={"command": "sleep 0.4"}) for i in range(1, 5)]
    t0 = anyio.current_time()
    results = await Scheduler(reg, backend=backend).run(tasks)
    assert all(r.ok for r in results.values())
    assert anyio.current_time() - t0 < 1.55  # 4 x 0.4 s in sequence would take over 1.6 s


def test_default_backend_is_sandboxed_where_the_sandbox_runs(ns_backend):
    from agentrt.executor import default_backend

    be = default_backend()
    assert isinstance(be, SandboxedBackend) and be.backend.name == "namespace"
    be.close()


async def test_backend_as_context_prewarms_and_cleans_up(ns_backend):
    reg = ToolRegistry([shell])
    async with SandboxedBackend(ns_backend, session="ctx") as be:
        sb = be._sandbox
        with anyio.fail_after(20):
            while sb.prewarmed < 1:
                await anyio.sleep(0.01)
        results = await Scheduler(reg, backend=be).run([Task(id=1, tool="shell", args={"command": "echo warm"})])
        assert results[1].ok and results[1].value["stdout"] == "warm\n"
        assert sb.warm_hits == 1
        dirs = list(sb.session.dirs.values())
    assert not any(d.exists() for d in dirs)
