"""The eBPF monitor on the real kernel: exact per-call counts, the budget guard, nothing left loaded.

Needs root, cgroups with a v2 tree, BCC (Debian's python3-bpfcc, linked into the venv by
scripts/setup), kernel headers and tracefs; every test skips with the reason where one is missing.
Workloads are dash loops of builtins, so each counted event comes from a known line.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from agentrt.cgroups import (
    BpfMonitor,
    Budget,
    CallLimits,
    CgroupDriver,
    EbpfCounts,
    ebpf_status,
    loaded_programs,
    shim_argv,
)
from agentrt.errors import SandboxError, SandboxUnavailable

PY = sys.executable
MiB = 2**20


@pytest.fixture(scope="module")
def monitor():
    st = ebpf_status()
    if not st.available:
        pytest.skip(f"eBPF unavailable here: {st.detail} (fix: {st.missing})")
    try:
        mon = BpfMonitor().start()
    except SandboxUnavailable as exc:
        pytest.skip(f"eBPF monitor cannot start here: {exc}")
    yield mon
    mon.close()


@pytest.fixture(scope="module")
def session():
    try:
        d = CgroupDriver()
    except SandboxUnavailable as exc:
        pytest.skip(f"cgroups unusable here: {exc}")
    if d.layout.v2 is None:
        d.close()
        pytest.skip("no cgroup v2 tree: calls have no cgroup id for eBPF")
    s = d.session()
    yield s
    d.close()


def loop(n_opens: int, n_execs: int) -> list[str]:
    """A dash script: ``n_opens`` opens (``: </dev/null``), then ``n_execs`` execs of /bin/true."""
    script = (f"i=0; while [ $i -lt {n_opens} ]; do : </dev/null; i=$((i+1)); done; "
              f"i=0; while [ $i -lt {n_execs} ]; do /bin/true; i=$((i+1)); done")
    return ["/bin/sh", "-c", script]


def run_counted(monitor, session, argv: list[str], limits: CallLimits | None = None) -> tuple[int, EbpfCounts]:
    with session.call(limits) as call:
        watch = monitor.watch(call)
        rc = subprocess.run(shim_argv(call.procs_files, argv), check=False, capture_output=True).returncode
        return rc, watch.close()


def test_counts_are_exact_per_call_under_concurrency(monitor, session):
    _, base = run_counted(monitor, session, loop(0, 0))
    _, one = run_counted(monitor, session, loop(0, 1))
    opens_per_exec = one.opens - base.opens  # the dynamic loader's opens for one /bin/true
    work = [(0, 0), (1, 0), (250, 0), (0, 7), (100, 3), (1000, 1), (37, 20), (500, 11)]
    got: dict[int, EbpfCounts] = {}
    calls = [session.call() for _ in work]
    watches = [monitor.watch(c) for c in calls]
    procs = [subprocess.Popen(shim_argv(c.procs_files, loop(*w))) for c, w in zip(calls, work, strict=True)]
    for i, p in enumerate(procs):  # all eight ran at once
        assert p.wait(60) == 0
        got[i] = watches[i].close()
    for c in calls:
        c.close()
    for i, (n_opens, n_execs) in enumerate(work):
        assert got[i].execs - base.execs == n_execs, (work[i], got[i])
        assert got[i].opens - base.opens == n_opens + n_execs * opens_per_exec, (work[i], got[i])
        assert got[i].forks - base.forks == n_execs  # dash forks once per external command


def test_bytes_written_and_read_are_exact(monitor, session):
    def dd(n: int) -> list[str]:
        return ["/bin/sh", "-c", f"head -c {n} /dev/zero > /dev/null"]

    _, small = run_counted(monitor, session, dd(1000))
    _, big = run_counted(monitor, session, dd(1000 + 3 * MiB))
    assert big.write_bytes - small.write_bytes == 3 * MiB
    assert big.read_bytes - small.read_bytes >= 3 * MiB


def test_page_faults_follow_memory_touched(monitor, session):
    touch = "b = bytearray({n}); b[::4096] = b'x' * len(b[::4096])"
    _, small = run_counted(monitor, session, [PY, "-c", touch.format(n=MiB)])
    _, big = run_counted(monitor, session, [PY, "-c", touch.format(n=101 * MiB)])
    pages = 100 * MiB // 4096
    # every page touched once faults once; a few more for the allocator's own metadata
    assert pages <= big.page_faults - small.page_faults < pages * 1.1


def test_oom_victim_is_counted_on_its_call(monitor, session):
    rc, counts = run_counted(monitor, session, [PY, "-c", "b = bytearray(200 * 2**20)"],
                             CallLimits(memory_max=48 * MiB))
    assert rc == -9 and counts.oom_victims == 1
    _, calm = run_counted(monitor, session, loop(0, 0))
    assert calm.oom_victims == 0


def test_an_unwatched_call_is_not_counted_and_watch_needs_an_id(monitor, session):
    with session.call() as a, session.call() as b:
        wa = monitor.watch(a)
        subprocess.run(shim_argv(b.procs_files, loop(100, 2)), check=True)  # b is not watched
        assert wa.close() == EbpfCounts()
    with pytest.raises(SandboxError, match="only execs, opens, connects, page_faults"):
        monitor.watch(12345, budgets={"read_bytes": Budget(10)})


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


def test_budget_guard_stops_the_call_then_resumes_it_after_a_raise(monitor, session):
    seen: list[tuple[str, int, int, bool]] = []

    def policy(br, budget):  # runs after the kernel stopped the task and the runtime froze the call
        time.sleep(0.05)  # were it running, it would fault on meanwhile
        seen.append((_state(br.pid), br.value, watch.counts().page_faults, br.frozen_ns is not None))
        return br.limit + 20_000

    with session.call() as call:
        watch = monitor.watch(call, {"page_faults": Budget(10_000, max=100_000)}, policy=policy)
        r = subprocess.run(shim_argv(call.procs_files, [PY, "-c", "b = bytearray(150 * 2**20); print('done')"]),
                           check=False, capture_output=True, text=True, timeout=60)
        counts = watch.close()
    assert r.returncode == 0 and r.stdout.strip() == "done"
    # stopped at exactly budget + 1 and held there (SIGSTOP, 'T', or frozen first, 'S'), call frozen
    assert seen and seen[0][0] in ("T", "S") and seen[0][3], seen
    assert seen[0][1] == seen[0][2] == 10_001, seen
    assert [b.action for b in watch.breaches] == ["raised"] * len(watch.breaches)
    assert [b.new_limit for b in watch.breaches][:2] == [30_000, 50_000]
    assert watch.exceeded is None and counts.page_faults > 150 * MiB // 4096


def test_budget_guard_kills_and_names_the_counter_when_no_raise_is_allowed(monitor, session, tmp_path):
    marks = tmp_path / "marks"
    script = f"for i in 1 2 3 4 5 6 7 8; do /bin/true; echo $i >> {marks}; done"
    with session.call() as call:
        watch = monitor.watch(call, {"execs": Budget(3)})
        rc = subprocess.run(shim_argv(call.procs_files, ["/bin/sh", "-c", script]), check=False,
                            timeout=60).returncode
        counts = watch.close()
    # execs: sh (1), true #1 (2), true #2 (3); true #3 is the 4th: stopped before it ran a single
    # instruction of its own, then the call was killed
    assert rc == -9
    assert marks.read_text() == "1\n2\n"
    assert counts.execs == 4
    assert watch.exceeded is not None and "execs" in watch.exceeded and "limit 3" in watch.exceeded
    assert [b.action for b in watch.breaches] == ["killed"]


def test_a_call_stopped_in_the_kernel_stays_stopped_until_the_runtime_decides(monitor, session):
    gate = threading.Event()

    def policy(br, budget):
        gate.wait(5)  # the runtime takes its time; the call must not run meanwhile
        return br.limit * 10

    with session.call() as call:
        watch = monitor.watch(call, {"opens": Budget(50, max=10_000)}, policy=policy)
        p = subprocess.Popen(shim_argv(call.procs_files, loop(200, 0)))
        deadline = time.monotonic() + 10
        while not watch.counts().opens > 50 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)
        held = watch.counts().opens
        assert p.poll() is None and held <= 52, held  # stopped at the budget, not running on
        gate.set()
        assert p.wait(30) == 0
        assert watch.close().opens >= 200


def test_no_program_stays_loaded_after_the_runtime_exits(tmp_path):
    st = ebpf_status()
    if not st.available:
        pytest.skip(f"eBPF unavailable here: {st.detail}")
    script = tmp_path / "runtime.py"
    script.write_text(textwrap.dedent("""
        import json, os, signal, subprocess, sys
        from agentrt.cgroups import CgroupDriver, shared_monitor, shared_net_policy, shim_argv
        mon, why = shared_monitor(); assert mon is not None, why
        net, why = shared_net_policy(); assert net is not None, why
        d = CgroupDriver(); s = d.session(); c = s.call()
        w = mon.watch(c); net.attach(c.v2_dir, ["127.0.0.1:9"])
        subprocess.run(shim_argv(c.procs_files, ["true"]), check=True)
        print(json.dumps(mon.program_ids() + net.program_ids()), flush=True)
        if sys.argv[1] == "kill":
            os.kill(os.getpid(), signal.SIGKILL)   # no atexit, no cleanup
        # "exit": leave it all to interpreter exit
    """))
    for how in ("exit", "kill"):
        r = subprocess.run([PY, str(script), how], check=False, capture_output=True, text=True, timeout=120)
        ids = set(json.loads(r.stdout or "[]"))
        assert len(ids) >= 4 + 9, (r.stdout, r.stderr[-2000:])  # net hooks + the monitor's tracepoints
        if how == "kill":
            CgroupDriver().close()  # the next runtime's start reaps the dead one's cgroups
        deadline = time.monotonic() + 10  # programs are freed after an RCU grace period
        left = ids
        while left and time.monotonic() < deadline:
            left = ids & {pid for pid, _, _ in loaded_programs()}
            time.sleep(0.05)
        assert not left, (how, left)
