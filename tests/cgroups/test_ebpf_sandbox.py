"""eBPF through the namespace sandbox: counters in every call's usage, allow-lists, budgets.

Real bubblewrap calls in real cgroups with the real monitor; skips with the reason where the
sandbox or eBPF is missing. The degradation tests run everywhere the sandbox runs.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from agentrt.cgroups import COUNTERS, Budget
from agentrt.errors import SandboxUnavailable
from agentrt.tools import Limits

pytestmark = pytest.mark.anyio
PY = sys.executable
AGENTRT = str(Path(sys.executable).with_name("agentrt"))


@pytest.fixture(scope="module")
def backend():
    from agentrt.sandbox import NamespaceBackend

    try:
        be = NamespaceBackend(ebpf=None)
    except SandboxUnavailable as exc:
        pytest.skip(f"namespace sandbox unavailable here: {exc}")
    if be.ebpf_monitor is None:
        pytest.skip(f"eBPF unavailable here: {be.ebpf_unavailable}")
    return be


@pytest.fixture(scope="module")
def plain_backend():
    from agentrt.sandbox import NamespaceBackend

    try:
        return NamespaceBackend(ebpf=False)
    except SandboxUnavailable as exc:
        pytest.skip(f"namespace sandbox unavailable here: {exc}")


def trues(n: int) -> list[str]:
    return ["/bin/sh", "-c", f"i=0; while [ $i -lt {n} ]; do /bin/true; i=$((i+1)); done"]


def ebpf(r) -> dict:
    return {k: v for k, v in (r.usage.model_extra or {}).items() if k.startswith("ebpf_")}


async def test_every_call_reports_its_counters_exactly_on_demand_and_prewarmed(backend):
    sb = backend.start("counts")
    try:
        base = ebpf(await sb.exec(trues(0)))
        five = ebpf(await sb.exec(trues(5)))
    finally:
        sb.close()
    assert {f"ebpf_{c}" for c in COUNTERS} <= set(base)
    assert five["ebpf_execs"] - base["ebpf_execs"] == 5
    async def ready() -> None:
        # a call that takes a sandbox still being built also counts the rest of its building
        # (bubblewrap's exec of the waiting shell): let it finish first
        with anyio.fail_after(20):
            while warm.prewarmed < 1:
                await anyio.sleep(0.02)
        await anyio.sleep(0.5)

    async with backend.start("warm") as warm:
        await ready()
        w0 = ebpf(await warm.exec(trues(0)))
        await ready()
        w5 = ebpf(await warm.exec(trues(5)))
        assert warm.warm_hits == 2
    # a prewarmed call counts from when it took the sandbox: its shell's exec, not bubblewrap's
    assert w5["ebpf_execs"] - w0["ebpf_execs"] == 5
    assert w0["ebpf_execs"] == base["ebpf_execs"] - 1


async def test_concurrent_calls_do_not_see_each_others_counts(backend):
    n = [0, 1, 2, 3, 5, 8, 13, 21]
    got: dict[int, dict] = {}

    async def one(i: int) -> None:
        got[i] = ebpf(await sb.exec(trues(n[i])))

    sb = backend.start("concurrent")
    try:
        async with anyio.create_task_group() as tg:
            for i in range(len(n)):
                tg.start_soon(one, i)
    finally:
        sb.close()
    base = got[0]["ebpf_execs"]
    assert [got[i]["ebpf_execs"] - base for i in range(len(n))] == n


async def test_allow_list_is_enforced_in_the_kernel_for_sandboxed_calls(backend):
    with socket.socket() as a, socket.socket() as b:
        for s in (a, b):
            s.bind(("127.0.0.1", 0))
            s.listen(8)
        pa, pb = a.getsockname()[1], b.getsockname()[1]
        code = ("import socket, errno\n"
                f"for p in ({pa}, {pb}):\n"
                "    s = socket.socket(); s.settimeout(5)\n"
                "    try: s.connect(('127.0.0.1', p)); print('ok')\n"
                "    except OSError as e: print(errno.errorcode[e.errno])\n")
        sb = backend.start("net")
        try:
            r = await sb.exec([PY, "-c", code], Limits(network=(f"127.0.0.1:{pa}",)))
            none = await sb.exec([PY, "-c", code], Limits(network="none"))
        finally:
            sb.close()
    assert r.ok, r.error
    assert r.value["stdout"].split() == ["ok", "EPERM"]
    assert (ebpf(r)["ebpf_net_denied"], ebpf(r)["ebpf_net_allowed"]) == (1, 1)
    assert ebpf(r)["ebpf_connects"] == 2
    # a private network namespace: no listener of the host is reachable at all
    assert none.value["stdout"].split() == ["ECONNREFUSED", "ECONNREFUSED"]


async def test_a_call_over_its_budget_is_limit_exceeded_with_the_counter(backend):
    sb = backend.start("budget")
    try:
        killed = await sb.exec(trues(20), ebpf_budgets={"execs": Budget(6)})
        raised = await sb.exec(trues(20), ebpf_budgets={"execs": Budget(6, max=100, step=10)})
    finally:
        sb.close()
    assert not killed.ok and killed.error_kind == "limit_exceeded"
    assert "execs" in killed.error and "limit 6" in killed.error
    assert ebpf(killed)["ebpf_breaches"][0]["action"] == "killed"
    assert raised.ok, raised.error
    assert [b["new_limit"] for b in ebpf(raised)["ebpf_breaches"]] == [16, 26]


async def test_budget_from_the_backend_applies_to_callables_too(backend):
    from agentrt.sandbox import NamespaceBackend

    be = NamespaceBackend(ebpf_budgets={"page_faults": Budget(3_000)})
    sb = be.start("callable")
    try:
        r = await sb.exec(bytearray, args={"source": 200 * 2**20})  # ~51,200 page faults
    finally:
        sb.close()
    assert r.error_kind == "limit_exceeded" and "page_faults" in r.error


async def test_without_ebpf_counters_are_absent_and_budgets_are_denied(plain_backend):
    sb = plain_backend.start("plain")
    try:
        r = await sb.exec(["true"])
        denied = await sb.exec(["true"], ebpf_budgets={"execs": Budget(5)})
    finally:
        sb.close()
    assert r.ok and ebpf(r) == {}  # not measured is absent, never zero
    assert denied.error_kind == "denied" and "eBPF" in denied.error


async def test_allow_list_is_denied_with_the_reason_where_the_hooks_are_missing(plain_backend, monkeypatch):
    import agentrt.cgroups._ebpf_call as ec

    monkeypatch.setattr(ec, "shared_net_policy", lambda: (None, "eBPF: BCC is not installed (test)"))
    sb = plain_backend.start("nohooks")
    try:
        r = await sb.exec(["true"], Limits(network=("127.0.0.1:80",)))
    finally:
        sb.close()
    assert r.error_kind == "denied" and "allow-list" in r.error and "BCC is not installed" in r.error


def test_cli_json_includes_the_ebpf_counters(backend):
    r = subprocess.run([AGENTRT, "sandbox", "run", "--json", "--", "/bin/sh", "-c", "/bin/true; /bin/true"],
                       check=False, capture_output=True, text=True, timeout=120)
    out = json.loads(r.stdout)
    assert r.returncode == 0 and out["usage"]["ebpf_execs"] >= 3 and "ebpf_page_faults" in out["usage"]


def test_cli_budget_stops_a_command_and_names_the_counter(backend):
    script = "for i in 1 2 3 4 5 6; do /bin/true; done"
    r = subprocess.run([AGENTRT, "sandbox", "run", "--json", "--budget", "execs=3", "--", "/bin/sh", "-c", script],
                       check=False, capture_output=True, text=True, timeout=120)
    out = json.loads(r.stdout)
    assert out["error_kind"] == "limit_exceeded" and "execs" in out["error"] and out["usage"]["ebpf_execs"] == 4
    ok = subprocess.run([AGENTRT, "sandbox", "run", "--budget", "execs=3:100", "--", "/bin/sh", "-c", script],
                        check=False, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "ebpf: " in ok.stderr


async def test_every_task_of_a_run_carries_its_own_counters(backend):
    from agentrt.executor import SandboxedBackend, Scheduler, Task
    from agentrt.tools import ToolRegistry
    from agentrt.tools.builtin import shell

    tasks = [Task(id=i, tool="shell", args={"command": f"for i in $(seq {n}); do /bin/true; done"})
             for i, n in enumerate([0, 4, 9], start=1)]
    async with SandboxedBackend(backend, session="run") as be:
        results = await Scheduler(ToolRegistry([shell]), backend=be).run(tasks)
    execs = {i: ebpf(r)["ebpf_execs"] for i, r in results.items()}
    assert all(r.ok for r in results.values())
    assert (execs[2] - execs[1], execs[3] - execs[1]) == (4, 9)
