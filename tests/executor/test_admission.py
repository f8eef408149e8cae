"""Memory-aware admission control: reserve, wait in order, burst, throttle, OOM advice, no hang."""

from __future__ import annotations

import anyio
import pytest
from _admission_tools import (
    hold,  # rootdir-relative: pytest puts this directory on sys.path
)

from agentrt.errors import SandboxUnavailable
from agentrt.executor import (
    AdmissionController,
    AdmissionDenied,
    SandboxedBackend,
    Scheduler,
    Task,
)
from agentrt.tools import Limits, ToolRegistry, tool

pytestmark = pytest.mark.anyio

MiB = 2**20


# -- the policy alone (no sandbox) -----------------------------------------------------------------

async def test_calls_that_do_not_fit_wait_in_arrival_order_and_all_complete():
    ctl = AdmissionController(budget=100 * MiB)
    started: list[int] = []
    running = 0
    most = 0

    async def call(i: int) -> None:
        nonlocal running, most
        async with ctl.reserve(Limits(memory="40M", memory_burst=1.0), f"c{i}") as g:
            started.append(i)
            running += 1
            most = max(most, running)
            await anyio.sleep(0.05)
            running -= 1
            assert g.intent == 40 * MiB

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for i in range(6):
                tg.start_soon(call, i)
                await anyio.sleep(0.001)  # arrival order = i
    assert started == list(range(6))
    assert most == 2  # 2 x 40 MiB fit in 100 MiB, a third never ran beside them
    assert ctl.stats()["waited"] == 4 and ctl.running == 0 and ctl.committed == 0


async def test_head_of_queue_is_not_overtaken_by_smaller_calls():
    ctl = AdmissionController(budget=100 * MiB)
    order: list[str] = []
    release = anyio.Event()

    async def call(name: str, mem: str) -> None:
        async with ctl.reserve(Limits(memory=mem, memory_burst=1.0), name):
            order.append(name)
            if name == "first":
                await release.wait()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(call, "first", "60M")
            await anyio.sleep(0.01)
            tg.start_soon(call, "big", "80M")  # does not fit beside first: waits
            await anyio.sleep(0.01)
            tg.start_soon(call, "small", "10M")  # would fit, but must not overtake big
            await anyio.sleep(0.05)
            assert order == ["first"]
            release.set()
    assert order == ["first", "big", "small"]


async def test_intent_over_the_whole_budget_is_denied_at_once():
    ctl = AdmissionController(budget=64 * MiB)
    with anyio.fail_after(1), pytest.raises(AdmissionDenied, match="exceeds the whole admission budget"):
        async with ctl.reserve(Limits(memory="65M")):
            pass
    assert ctl.stats()["denied"] == 1 and ctl.waiting == 0


async def test_burst_room_only_while_budget_is_free_and_nobody_waits():
    ctl = AdmissionController(budget=100 * MiB)
    g1 = await ctl.admit(Limits(memory="30M", memory_burst=2.0))
    assert g1.hard == 60 * MiB  # free budget: the full burst
    g2 = await ctl.admit(Limits(memory="30M", memory_burst=2.0))
    assert g2.hard == 40 * MiB  # only what is left (100 - 60)
    ctl.release(g1)
    ctl.release(g2)
    assert ctl.committed == 0


# -- through a real sandbox (namespace backend, real cgroups) ------------------------------------

@pytest.fixture(scope="module")
def ns():
    from agentrt.sandbox import NamespaceBackend

    try:
        return NamespaceBackend(prewarm=0)
    except SandboxUnavailable as exc:
        pytest.skip(f"namespace sandbox unavailable here: {exc}")


def _hold_tool(memory: str, burst: float, timeout: float = 30) -> object:
    return tool(runs_in="sandbox", limits=Limits(memory=memory, memory_burst=burst, timeout=timeout))(hold)


async def test_sandboxed_calls_wait_for_budget_in_dag_order_and_all_complete(ns):
    ctl = AdmissionController(budget=200 * MiB)
    t = _hold_tool("90M", 1.0)
    reg = ToolRegistry([t])
    async with SandboxedBackend(ns, admission=ctl) as be:
        sched = Scheduler(reg, backend=be)
        with anyio.fail_after(60):
            results = await sched.run([Task(id=i, tool="hold", args={"first_mib": 40, "pause": 0.4})
                                       for i in range(1, 6)])
    assert all(r.ok for r in results.values()), {i: r.error for i, r in results.items()}
    waits = [results[i].usage.admission_wait_seconds for i in range(1, 6)]
    assert waits[0] < 0.05 and waits[1] < 0.05  # two fit at once
    assert all(w > 0.2 for w in waits[2:])  # the rest waited for a call to end
    assert all(results[i].usage.memory_granted_bytes == 90 * MiB for i in range(1, 6))
    assert ctl.stats()["waited"] == 3 and ctl.committed == 0


async def test_call_bursts_past_its_intent_while_budget_is_free(ns):
    ctl = AdmissionController(budget=512 * MiB)
    t = _hold_tool("64M", 3.0)
    async with SandboxedBackend(ns, admission=ctl) as be:
        r = await be.submit(Task(id=1, tool="hold", args={}), t, {"first_mib": 120, "pause": 0}, t.limits)
    assert r.ok, r.error
    assert r.usage.admission_burst is True and r.usage.memory_granted_bytes >= 192 * MiB
    assert r.usage.memory_peak_bytes > 120 * MiB  # well past its 64 MiB intent


async def test_bursting_call_is_throttled_when_another_needs_the_budget_and_oom_names_a_larger_intent(ns):
    ctl = AdmissionController(budget=256 * MiB)
    a = _hold_tool("64M", 3.0)
    b = _hold_tool("160M", 1.0)
    async with SandboxedBackend(ns, admission=ctl) as be:
        results = {}

        async def run_a() -> None:
            # 32 MiB, then (after b was admitted) 120 MiB more: over a throttled hard limit
            results["a"] = await be.submit(Task(id=1, tool="hold", args={}), a,
                                           {"first_mib": 32, "pause": 2.0, "second_mib": 120}, a.limits)

        async def run_b() -> None:
            await anyio.sleep(0.8)  # a is running (and was granted its full burst: 192 MiB)
            results["b"] = await be.submit(Task(id=2, tool="hold", args={}), b,
                                           {"first_mib": 100, "pause": 3.0}, b.limits)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(run_a)
                tg.start_soon(run_b)
    ra, rb = results["a"], results["b"]
    assert rb.ok, rb.error
    assert rb.usage.admission_wait_seconds < 0.5  # admitted by throttling a, not after a ended
    assert ra.usage.memory_granted_bytes == 192 * MiB and ra.usage.admission_throttles >= 1
    assert ra.error_kind == "oom", (ra.error_kind, ra.error)
    # a never reached into what b holds: at most the budget b left free (256 - 160 MiB)
    assert ra.usage.memory_peak_bytes is not None and ra.usage.memory_peak_bytes <= 96 * MiB
    assert "Retry with a larger memory intent, e.g. Limits(memory='" in ra.error
    assert "admission budget" in ra.error  # says why it was held below its burst


async def test_throttled_call_gets_its_burst_back_when_the_budget_frees(ns):
    ctl = AdmissionController(budget=256 * MiB)
    a = _hold_tool("64M", 3.0)
    b = _hold_tool("160M", 1.0)
    async with SandboxedBackend(ns, admission=ctl) as be:
        results = {}

        async def run_a() -> None:
            results["a"] = await be.submit(Task(id=1, tool="hold", args={}), a,
                                           {"first_mib": 32, "pause": 3.0, "second_mib": 100}, a.limits)

        async def run_b() -> None:
            await anyio.sleep(0.8)
            results["b"] = await be.submit(Task(id=2, tool="hold", args={}), b,
                                           {"first_mib": 50, "pause": 0.2}, b.limits)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(run_a)
                tg.start_soon(run_b)
    ra = results["a"]
    assert results["b"].ok and ra.ok, (results["b"].error, ra.error)
    assert ra.usage.admission_throttles >= 1 and ra.usage.admission_bursts >= 1
    assert ra.usage.memory_peak_bytes > 100 * MiB


async def test_oom_is_reported_with_its_peak_and_advice(ns):
    ctl = AdmissionController(budget=512 * MiB)
    t = _hold_tool("32M", 1.0)
    async with SandboxedBackend(ns, admission=ctl) as be:
        r = await be.submit(Task(id=1, tool="hold", args={}), t, {"first_mib": 200, "pause": 0}, t.limits)
    assert r.error_kind == "oom"
    assert 16 * MiB < r.usage.memory_peak_bytes <= 33 * MiB
    assert "peak of" in r.error and "Limits(memory='" in r.error
    assert ctl.committed == 0


async def test_sandboxed_call_over_the_whole_budget_is_denied_not_hung(ns):
    ctl = AdmissionController(budget=128 * MiB)
    t = _hold_tool("256M", 1.0)
    async with SandboxedBackend(ns, admission=ctl) as be:
        with anyio.fail_after(5):
            r = await be.submit(Task(id=1, tool="hold", args={}), t, {"first_mib": 1, "pause": 0}, t.limits)
    assert r.error_kind == "denied" and "exceeds the whole admission budget" in r.error


async def test_prewarmed_sandboxes_are_attached_to_their_grant_and_throttled():
    import sys

    from agentrt.executor import observe_session
    from agentrt.sandbox import NamespaceBackend

    try:
        backend = NamespaceBackend(prewarm=2)
    except SandboxUnavailable as exc:
        pytest.skip(f"namespace sandbox unavailable here: {exc}")
    ctl = AdmissionController(budget=256 * MiB)
    sb = backend.start("admission-warm")
    assert observe_session(sb)
    out: dict[str, object] = {}

    async def call(name: str, memory: str, burst: float, code: str, delay: float) -> None:
        await anyio.sleep(delay)
        lim = Limits(memory=memory, memory_burst=burst, timeout=30)
        async with ctl.reserve(lim, name) as g:
            r = await sb.exec([sys.executable, "-S", "-c", code], g.limits_for(lim))
            out[name] = (g.call is not None, ctl.finish(g, r, lim))

    async with sb:
        with anyio.fail_after(10):
            while sb.prewarmed < 2:
                await anyio.sleep(0.05)
        async with anyio.create_task_group() as tg:
            tg.start_soon(call, "a", "64M", 3.0, "import time; a = bytearray(32 << 20); time.sleep(2)", 0)
            tg.start_soon(call, "b", "160M", 1.0, "import time; b = bytearray(50 << 20); time.sleep(0.3)", 0.6)
    assert sb.warm_hits == 2  # both calls ran in sandboxes built ahead
    (a_seen, ra), (b_seen, rb) = out["a"], out["b"]
    assert a_seen and b_seen and ra.ok and rb.ok, (ra.error, rb.error)
    assert ra.usage.admission_throttles >= 1 and ra.usage.admission_bursts >= 1
