"""The Ray executor backend: tool calls as Ray tasks on a real local Ray (one per module).

Resources requested from `Limits`, infeasible requests refused at once, sandbox limits enforced on
the worker, cancellation, lost workers (retried only for idempotent tools), and the same results
as the local backend.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import anyio
import pytest

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'agentrt[ray]')")

from _scripted import ScriptedModel

from agentrt import Agent
from agentrt.executor import LocalBackend, RayBackend, Scheduler, Task
from agentrt.tools import Limits, ToolRegistry, tool

pytestmark = pytest.mark.anyio


def _sandbox_missing() -> str | None:
    from agentrt.errors import SandboxError
    from agentrt.sandbox import get_backend

    try:
        get_backend("namespace")
    except SandboxError as exc:
        return str(exc)
    return None


needs_sandbox = pytest.mark.skipif(_sandbox_missing() is not None, reason=f"no sandbox: {_sandbox_missing()}")


@pytest.fixture(scope="module")
def backend():
    """One local Ray (2 CPUs) for the whole module, started and stopped by the backend."""
    be = RayBackend(num_cpus=2)
    be.start()
    assert be.owns_cluster, "a local Ray must be started by the backend, not found running"
    yield be
    be.close()
    assert not ray.is_initialized(), "the local Ray was not shut down"


# -- tools (module level: the workers import them by name) ------------------------------------

@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
async def mul(a: int, b: int) -> int:
    """Multiply two integers (an async tool)."""
    return a * b


@tool
def fail(message: str) -> None:
    """Raise the tool's own error."""
    raise ValueError(message)


@tool
def where() -> int:
    """The pid of the process running the call."""
    return os.getpid()


@tool(limits=Limits(cpu=1))
def busy_1cpu(seconds: float) -> list[float]:
    """Sleep; return (start, end) in epoch seconds."""
    t0 = time.time()
    time.sleep(seconds)
    return [t0, time.time()]


@tool(limits=Limits(cpu=2))
def busy_2cpu(seconds: float) -> list[float]:
    """Sleep holding both CPUs of the local Ray; return (start, end) in epoch seconds."""
    t0 = time.time()
    time.sleep(seconds)
    return [t0, time.time()]


@tool(limits=Limits(cpu=64))
def greedy() -> int:
    """Asks for more CPUs than any node has."""
    return 1


@tool(runs_in="sandbox", limits=Limits(memory="64M", memory_burst=1.0, timeout=30))
def bomb(mib: int) -> int:
    """Allocate and touch ``mib`` MiB."""
    block = bytearray(mib * 2**20)
    block[::4096] = b"x" * len(block[::4096])
    return len(block)


@tool(runs_in="sandbox", limits=Limits(memory="64M", timeout=30))
def sandboxed_pid() -> int:
    """The pid seen inside the sandbox (a fresh pid namespace: small)."""
    return os.getpid()


@tool(limits=Limits(timeout=120))
def linger(pid_file: str, seconds: float) -> str:
    """Write this worker's pid to ``pid_file``, then sleep."""
    Path(pid_file).write_text(str(os.getpid()))
    time.sleep(seconds)
    return "woke up"


def _die_once(marker: str) -> str:
    if not os.path.exists(marker):
        Path(marker).write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return f"second try in {os.getpid()}"


@tool(idempotent=True)
def die_once_idempotent(marker: str) -> str:
    """Kill this worker the first time; succeed the next."""
    return _die_once(marker)


@tool
def die_once(marker: str) -> str:
    """Kill this worker the first time (not idempotent: never retried)."""
    return _die_once(marker)


def _overlap(spans: list[list[float]]) -> int:
    """Most spans running at the same moment."""
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda x: (x[0], x[1]))
    cur = best = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


# -- tests ------------------------------------------------------------------------------------

def test_task_options_come_from_the_limits_and_the_tool(backend: RayBackend) -> None:
    opts = backend.task_options(busy_1cpu, Limits(cpu=0.5, memory="256M"))
    assert opts["num_cpus"] == 0.5 and opts["memory"] == 256 * 2**20
    assert opts["max_retries"] == 0, "a tool not marked idempotent is never retried"
    assert backend.task_options(die_once_idempotent, die_once_idempotent.limits)["max_retries"] == backend.retries > 0
    custom = RayBackend(resources={"add": {"GPU": 1, "big_disk": 2}}).task_options(add, add.limits)
    assert custom["num_gpus"] == 1 and custom["resources"] == {"big_disk": 2}


async def test_a_dag_gives_the_same_results_as_the_local_backend_from_ray_workers(backend: RayBackend) -> None:
    tasks = [
        Task(id=1, tool="add", args={"a": 2, "b": 3}),
        Task(id=2, tool="mul", args={"a": 4, "b": 5}),
        Task(id=3, tool="add", args={"a": "$1", "b": "$2"}),
        Task(id=4, tool="mul", args={"a": "$3", "b": 2}),
        Task(id=5, tool="fail", args={"message": "bad input"}),
        Task(id=6, tool="add", args={"a": "$5", "b": 1}),
        Task(id=7, tool="add", args={"a": "seven", "b": 1}),
        Task(id=8, tool="where"),
    ]
    registry = ToolRegistry([add, mul, fail, where])
    local = await Scheduler(registry, backend=LocalBackend()).run(tasks)
    remote = await Scheduler(registry, backend=backend).run(tasks)
    for tid in range(1, 8):
        a, b = local[tid], remote[tid]
        assert (a.ok, a.value, a.error_kind, a.error) == (b.ok, b.value, b.error_kind, b.error), tid
    assert remote[4].value == 50
    assert remote[5].error_kind == "tool_error" and "bad input" in remote[5].error
    assert remote[6].error_kind == "skipped"
    # the calls ran in Ray worker processes, not here
    assert local[8].value == os.getpid()
    assert remote[8].value != os.getpid() and remote[8].usage.ray_worker_pid == remote[8].value
    assert remote[1].usage.ray_node_id


async def test_parallel_tasks_honour_their_cpu_requests(backend: RayBackend) -> None:
    # 2 CPUs: four 1-CPU calls run two at a time; a 2-CPU call runs alone
    tasks = [Task(id=i, tool="busy_1cpu", args={"seconds": 0.6}) for i in range(1, 5)]
    tasks.append(Task(id=5, tool="busy_2cpu", args={"seconds": 0.6}))
    results = await Scheduler(ToolRegistry([busy_1cpu, busy_2cpu]), backend=backend).run(tasks)
    assert all(r.ok for r in results.values()), results
    spans = [results[i].value for i in range(1, 5)]
    assert _overlap(spans) == 2, spans
    s5 = results[5].value
    assert all(e <= s5[0] or s >= s5[1] for s, e in spans), "the 2-CPU call overlapped another call"


async def test_memory_requests_are_scheduling_labels_too(backend: RayBackend) -> None:
    node_memory = max(n.get("memory", 0.0) for n in backend.nodes(refresh=True))
    big = Limits(cpu=0.5, memory=int(node_memory * 0.6))  # two never fit on the node at once
    registry = ToolRegistry([busy_1cpu.model_copy(update={"limits": big})])
    results = await Scheduler(registry, backend=backend).run(
        [Task(id=i, tool="busy_1cpu", args={"seconds": 0.5}) for i in (1, 2)])
    assert all(r.ok for r in results.values()), results
    assert _overlap([results[1].value, results[2].value]) == 1


async def test_a_call_asking_for_more_cpus_than_any_node_has_is_denied_at_once(backend: RayBackend) -> None:
    t0 = time.monotonic()
    r = await backend.submit(Task(id=1, tool="greedy"), greedy, {}, greedy.limits)
    assert r.error_kind == "denied" and "64 CPUs" in r.error and "2 CPUs" in r.error, r.error
    assert time.monotonic() - t0 < 5, "an infeasible task must fail fast, not wait for a node"
    r = await backend.submit(Task(id=3, tool="add"), add, {"a": 1, "b": 2}, Limits(memory="4T"))
    assert r.error_kind == "denied" and "4096.00 GiB memory" in r.error, r.error
    async with RayBackend(resources={"add": {"tpu_pod": 1}}) as custom:  # joins the running Ray
        assert not custom.owns_cluster
        r = await custom.submit(Task(id=2, tool="add"), add, {"a": 1, "b": 2}, add.limits)
    assert r.error_kind == "denied" and "tpu_pod" in r.error
    assert ray.is_initialized(), "a backend that joined a running Ray must leave it running"


@needs_sandbox
async def test_sandbox_limits_are_enforced_on_the_worker(backend: RayBackend) -> None:
    results = await Scheduler(ToolRegistry([bomb, sandboxed_pid]), backend=backend).run([
        Task(id=1, tool="bomb", args={"mib": 400}),
        Task(id=2, tool="bomb", args={"mib": 8}),
        Task(id=3, tool="sandboxed_pid"),
    ])
    r1, r2, r3 = results[1], results[2], results[3]
    assert r1.error_kind == "oom" and r1.usage.oom_killed, r1
    assert r1.usage.ray_worker_pid and r1.usage.ray_worker_pid != os.getpid()
    assert r2.ok and r2.value == 8 * 2**20 and r2.usage.memory_peak_bytes, r2  # measured by its cgroup
    assert r3.ok and r3.value < 10, "the call did not run in its own pid namespace"


async def test_cancelling_a_run_cancels_its_ray_task(backend: RayBackend, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    scheduler = Scheduler(ToolRegistry([linger]), backend=backend)
    t0 = time.monotonic()
    with anyio.move_on_after(60):
        async with scheduler.session() as session:
            session.add(Task(id=1, tool="linger", args={"pid_file": str(pid_file), "seconds": 100}))
            while not pid_file.exists():
                await anyio.sleep(0.05)
            session._tg.cancel_scope.cancel()  # type: ignore[union-attr]
    assert time.monotonic() - t0 < 30
    assert session.results[1].error_kind == "cancelled"
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        await anyio.sleep(0.1)
    assert not _alive(pid), "the worker running the cancelled call is still alive"


async def test_a_worker_killed_from_outside_gives_a_clear_error(backend: RayBackend, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    async with anyio.create_task_group() as tg:
        out: dict[str, object] = {}

        async def call() -> None:
            out["r"] = await backend.submit(Task(id=1, tool="linger"), linger,
                                            {"pid_file": str(pid_file), "seconds": 100}, linger.limits)

        tg.start_soon(call)
        with anyio.fail_after(30):
            while not pid_file.exists():
                await anyio.sleep(0.05)
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
    r = out["r"]
    assert r.error_kind == "killed", r  # type: ignore[attr-defined]
    assert "worker" in r.error and "not retried" in r.error  # type: ignore[attr-defined]


async def test_a_lost_worker_is_retried_only_for_idempotent_tools(backend: RayBackend, tmp_path: Path) -> None:
    once, twice = tmp_path / "once", tmp_path / "twice"
    r = await backend.submit(Task(id=1, tool="die_once"), die_once, {"marker": str(once)}, die_once.limits)
    assert r.error_kind == "killed" and "not marked idempotent" in r.error, r
    assert once.exists(), "the call never ran"
    r = await backend.submit(Task(id=2, tool="die_once_idempotent"), die_once_idempotent,
                             {"marker": str(twice)}, die_once_idempotent.limits)
    assert r.ok and r.value.startswith("second try"), r
    first_pid = int(twice.read_text())
    assert r.usage.ray_worker_pid != first_pid, "the retry ran in the worker that died?"


async def test_an_agent_answers_the_same_on_ray_as_locally(backend: RayBackend) -> None:
    plan = ['1. add(a=2, b=3)\n2. mul(a=4, b=5)\n3. add(a=$1, b=$2)\n4. join()']
    answer = {"thought": "3 holds it", "action": "answer", "answer": "25"}
    on_ray = await Agent(ScriptedModel([plan], [answer]), [add, mul], sandbox=backend, tracing=False).run("q")
    local = await Agent(ScriptedModel([plan], [answer]), [add, mul], sandbox="none", tracing=False).run("q")
    assert on_ray.answer == local.answer == "25"
    assert {k: v.value for k, v in on_ray.results.items()} == {k: v.value for k, v in local.results.items()}
    assert on_ray.results[3].value == 25 and on_ray.results[3].usage.ray_worker_pid != os.getpid()
    assert backend.started, "the agent must not stop a backend it was handed while others use it"


async def test_agent_executor_ray_connects_to_a_cluster_by_address(backend: RayBackend) -> None:
    import ray

    plan = ['1. add(a=2, b=3)\n2. mul(a=4, b=5)\n3. join()']
    answer = {"thought": "ok", "action": "answer", "answer": "5 and 20"}
    address = ray.get_runtime_context().gcs_address
    agent = Agent(ScriptedModel([plan], [answer]), [add, mul], executor="ray", ray_address=address,
                  sandbox="none", tracing=False, memory=False)
    res = await agent.run("q")
    assert res.results[1].value == 5 and res.results[2].value == 20
    assert res.results[1].usage.ray_worker_pid != os.getpid()
    with pytest.raises(ValueError, match="ray_address needs executor='ray'"):
        Agent(ScriptedModel([], []), [add], ray_address=address)


async def test_sandbox_none_refuses_sandbox_tools_and_sandbox_all_confines_the_rest(backend: RayBackend) -> None:
    bare = RayBackend(sandbox="none")  # started by its first call, on the running Ray
    r = await bare.submit(Task(id=1, tool="sandboxed_pid"), sandboxed_pid, {}, sandboxed_pid.limits)
    bare.close()
    assert r.error_kind == "denied" and "sandbox" in r.error, r
    if _sandbox_missing() is not None:
        pytest.skip(f"no sandbox: {_sandbox_missing()}")
    async with RayBackend(sandbox_all=True) as confined:
        r = await confined.submit(Task(id=2, tool="where"), where, {}, Limits(memory="64M"))
    assert r.ok and r.value < 10, "an in-process tool did not run in the sandbox's pid namespace"
    assert r.usage.memory_peak_bytes, "no cgroup measured the call"


#: What the scripted endpoint answers: the planner's plan, then the joiner's decision.
_PLAN = ('1. calculator(expression="12 * 7")\n2. calculator(expression="300 * 0.15")\n'
         '3. calculator(expression="$1 + $2")\n4. join()')
_JOIN = {"thought": "3 holds it", "action": "answer", "answer": "129"}


@pytest.fixture
def scripted_endpoint():
    """An OpenAI-compatible endpoint on loopback replaying `_PLAN` and `_JOIN`: the model is not what
    these tests are about, and the local engine is not started for them."""
    import json

    from _fake_openai import fake_openai, schema_name

    with fake_openai(lambda body: json.dumps(_JOIN) if schema_name(body) == "join" else _PLAN) as (url, _):
        yield url


def test_agentrt_run_on_an_existing_ray_cluster_answers_as_the_local_executor(
        backend: RayBackend, scripted_endpoint: str) -> None:
    import json
    import subprocess
    import sys

    address = ray.get_runtime_context().gcs_address
    script = Path(sys.executable).with_name("agentrt")
    agentrt = [str(script)] if script.exists() else [sys.executable, "-c", "from agentrt.cli import main; main()"]
    base = [*agentrt, "run", "--json", "--base-url", scripted_endpoint, "--model", "scripted",
            "--tools", "calculator", "What is 12 times 7, plus 15% of 300?"]
    out = {}
    for executor, extra in (("local", []), ("ray", ["--executor", "ray", "--address", address])):
        proc = subprocess.run(base + extra, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, (executor, proc.stdout[-2000:], proc.stderr[-2000:])
        out[executor] = json.loads(proc.stdout)
    local, on_ray = out["local"], out["ray"]
    assert on_ray["answer"] == local["answer"] == "129"
    assert {k: v["value"] for k, v in on_ray["results"].items()} == {k: v["value"] for k, v in local["results"].items()}
    assert local["results"]["3"]["value"] == 129
    assert all(v["usage"].get("ray_worker_pid") for v in on_ray["results"].values()), "a call did not run on Ray"
    assert not any("ray_worker_pid" in v["usage"] for v in local["results"].values())
    assert ray.is_initialized(), "the CLI shut down a cluster it only connected to"


def test_agentrt_run_names_an_unreachable_cluster_at_once(scripted_endpoint: str, tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = Path(sys.executable).with_name("agentrt")
    agentrt = [str(script)] if script.exists() else [sys.executable, "-c", "from agentrt.cli import main; main()"]
    t0 = time.monotonic()
    proc = subprocess.run([*agentrt, "run", "--json", "--base-url", scripted_endpoint, "--model", "scripted",
                           "--tools", "calculator", "--executor", "ray", "--address", f"127.0.0.1:{port}", "q"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 1, (proc.stdout[-2000:], proc.stderr[-2000:])
    assert "ExecutorUnavailable" in proc.stdout and f"127.0.0.1:{port}" in proc.stdout, proc.stdout[-2000:]
    assert time.monotonic() - t0 < 60, "an unreachable cluster must fail fast, not retry for minutes"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (dead, not yet reaped by the raylet) counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
