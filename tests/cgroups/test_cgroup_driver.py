"""Per-call cgroups on the real host: limits enforced, usage read back, nothing left behind.

Needs root and cgroups that can enforce memory, CPU and pids (v2 with controllers, or the hybrid
v1 layout); every test skips with the reason where they are missing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from agentrt.cgroups import (
    SHIM_JOIN_FAILED,
    CallLimits,
    CgroupDriver,
    detect_layout,
    python_shim_argv,
    runtime_id,
    shim_argv,
)
from agentrt.errors import SandboxUnavailable
from agentrt.tools import Limits

PY = sys.executable
MiB = 2**20


@pytest.fixture
def driver():
    try:
        d = CgroupDriver()
    except SandboxUnavailable as exc:
        pytest.skip(f"cgroups unusable here: {exc}")
    yield d
    d.close()


def _groups_of(driver: CgroupDriver) -> list[Path]:
    """Every directory under this runtime's root, in every hierarchy."""
    return [p for d in set(driver.dirs.values()) if d.exists() for p in d.rglob("*") if p.is_dir()]


# -- layout detection (pure: mountinfo texts as on real hosts) ---------------------------------

HYBRID_MOUNTINFO = """\
30 25 0:26 / /sys/fs/cgroup/memory rw,relatime shared:9 - cgroup cgroup rw,memory
31 25 0:27 / /sys/fs/cgroup/cpu rw,relatime shared:10 - cgroup cgroup rw,cpu
32 25 0:28 / /sys/fs/cgroup/pids rw,relatime shared:11 - cgroup cgroup rw,pids
33 25 0:29 / /sys/fs/cgroup/unified rw,relatime shared:12 - cgroup2 cgroup2 rw
"""


def test_hybrid_layout_places_groups_under_own_memcg():
    lay = detect_layout(HYBRID_MOUNTINFO, "4:memory:/process_api/abc\n1:cpu:/\n8:pids:/\n0::/\n")
    assert lay.kind == "hybrid"
    assert lay.v1["memory"] == Path("/sys/fs/cgroup/memory/process_api/abc")
    assert lay.v1["cpu"] == Path("/sys/fs/cgroup/cpu")
    assert lay.v2 == Path("/sys/fs/cgroup/unified")


def test_layout_without_controllers_is_none_with_the_fix():
    text = "33 25 0:29 / /sys/fs/cgroup rw,relatime - cgroup2 cgroup2 rw\n"
    lay = detect_layout(text, "0::/user.slice\n")
    assert lay.kind == "none"
    assert "subtree_control" in lay.missing
    with pytest.raises(SandboxUnavailable, match="cgroups"):
        CgroupDriver(lay)


def test_no_cgroup_mount_is_none():
    lay = detect_layout("22 1 0:5 / /proc rw - proc proc rw\n", "")
    assert lay.kind == "none" and "no cgroup" in lay.detail


def test_this_host_layout_matches_its_mounts():
    lay = detect_layout()
    mounts = Path("/proc/self/mountinfo").read_text()
    if " - cgroup " in mounts and "memory" in mounts:
        assert lay.kind in ("hybrid", "v2")
    assert lay.detail


# -- real groups -------------------------------------------------------------------------------

def test_limits_are_written_hard_is_intent_times_burst_soft_is_intent(driver):
    with driver.session() as s, s.call(Limits(memory="64M", memory_burst=1.5, cpu=0.25, pids=17)) as c:
        if driver.layout.kind == "v2":
            assert int((c.dirs["v2"] / "memory.max").read_text()) == 96 * MiB
            assert int((c.dirs["v2"] / "memory.high").read_text()) == 64 * MiB
            assert (c.dirs["v2"] / "cpu.max").read_text().split() == ["25000", "100000"]
            assert c.soft_limit_enforced
        else:
            mem = c.dirs["memory"]
            assert int((mem / "memory.limit_in_bytes").read_text()) == 96 * MiB
            assert int((mem / "memory.soft_limit_in_bytes").read_text()) == 64 * MiB
            assert int((c.dirs["cpu"] / "cpu.cfs_quota_us").read_text()) == 25000
            assert not c.soft_limit_enforced
        assert (c.dirs.get("pids", c.dirs.get("v2")) / "pids.max").read_text().strip() == "17"
    assert _groups_of(driver) == []


def test_memory_bomb_is_oom_killed_inside_its_call(driver):
    with driver.session() as s, s.call(CallLimits(memory_max=32 * MiB, memory_high=32 * MiB)) as c:
        r = subprocess.run(shim_argv(c.procs_files, [PY, "-c", "b = bytearray(128 * 2**20)"]),
                           capture_output=True)
        u = c.usage()
    assert r.returncode == -signal.SIGKILL
    assert u.oom_kills == 1
    assert 30 * MiB <= u.memory_peak_bytes <= 33 * MiB


def test_memory_below_the_limit_completes_with_its_peak(driver):
    with driver.session() as s, s.call(CallLimits(memory_max=128 * MiB)) as c:
        r = subprocess.run(shim_argv(c.procs_files, [PY, "-c", "b = bytearray(48 * 2**20); b[::4096] = b'x' * len(b[::4096])"]))
        u = c.usage()
    assert r.returncode == 0
    assert u.oom_kills == 0
    assert 48 * MiB <= u.memory_peak_bytes < 128 * MiB


def test_fork_bomb_stops_at_pids_max(driver):
    with driver.session() as s, s.call(CallLimits(pids=12)) as c:
        r = subprocess.run(shim_argv(c.procs_files, ["/bin/sh", "-c", "for i in $(seq 60); do sleep 0.5 & done; wait"]),
                           capture_output=True, text=True, timeout=30)
        u = c.usage()
    assert r.returncode != 0 and "fork" in r.stderr.lower()
    assert u.pids_max_hits and u.pids_max_hits > 0
    if u.pids_peak is not None:
        assert u.pids_peak <= 12


def test_cpu_spinner_is_throttled_to_its_quota(driver):
    with driver.session() as s, s.call(CallLimits(cpu=0.2)) as c:
        t0 = time.perf_counter()
        subprocess.run(shim_argv(c.procs_files, ["timeout", "1", "/bin/sh", "-c", "while :; do :; done"]))
        wall = time.perf_counter() - t0
        u = c.usage()
    assert u.cpu_seconds is not None and u.throttled_periods is not None
    assert 0.03 <= u.cpu_seconds / wall <= 0.35, (u.cpu_seconds, wall)  # low end: a busy host
    assert u.throttled_periods > 0 and u.throttled_seconds > 0


def test_close_kills_and_drains_a_call_with_children(driver):
    s = driver.session()
    c = s.call(CallLimits(pids=32))
    p = subprocess.Popen(shim_argv(c.procs_files, ["/bin/sh", "-c", "sleep 60 & sleep 60 & sleep 60"]))
    deadline = time.monotonic() + 5
    while len(c.pids()) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    pids = c.pids()
    assert len(pids) >= 3
    c.close()
    assert p.wait(timeout=5) == -signal.SIGKILL
    assert not any(Path(f"/proc/{pid}").exists() and "sleep" in Path(f"/proc/{pid}/cmdline").read_text()
                   for pid in pids)
    assert all(not d.exists() for d in c.dirs.values())
    s.close()
    assert _groups_of(driver) == []


def test_close_kills_a_process_that_joined_after_the_drain(driver, monkeypatch):
    # a prewarmed launch joins its call while the call is being closed: the drain saw the group
    # empty, so removing it meets EBUSY; close must kill the late joiner, not fail after 5 s
    import agentrt.cgroups._driver as drv

    s = driver.session()
    c = s.call(CallLimits(pids=8))
    p = subprocess.Popen(shim_argv(c.procs_files, ["/bin/sleep", "60"]))
    deadline = time.monotonic() + 5
    while not c.pids() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert c.pids()
    monkeypatch.setattr(drv, "_populated", lambda dirs, v2: False)  # the drain misses it
    t0 = time.monotonic()
    c.close(timeout=3)
    assert time.monotonic() - t0 < 2
    assert p.wait(timeout=5) == -signal.SIGKILL
    monkeypatch.undo()
    s.close()
    assert _groups_of(driver) == []


def test_shim_fails_with_its_own_status_when_it_cannot_join(tmp_path):
    missing = tmp_path / "nope" / "cgroup.procs"
    r = subprocess.run(shim_argv([missing], ["/bin/echo", "ran"]), capture_output=True, text=True)
    assert r.returncode == SHIM_JOIN_FAILED and "ran" not in r.stdout
    r = subprocess.run(python_shim_argv([missing], ["/bin/echo", "ran"]), capture_output=True, text=True)
    assert r.returncode == SHIM_JOIN_FAILED and "ran" not in r.stdout


def test_process_joins_before_exec(driver):
    """The exec'd command is already in the call's groups: its own /proc/self/cgroup says so."""
    with driver.session() as s, s.call(CallLimits()) as c:
        r = subprocess.run(shim_argv(c.procs_files, ["cat", "/proc/self/cgroup"]), capture_output=True, text=True)
    lines = r.stdout.splitlines()
    assert any(f"/agentrt-{driver.runtime_id}/{s.name}/{c.name}" in ln for ln in lines if ":memory:" in ln or ln.startswith("0::"))


def test_stale_groups_of_a_dead_runtime_are_reaped(driver, tmp_path):
    """A runtime SIGKILLed with a call running leaves groups; the next driver's start reaps them."""
    script = textwrap.dedent("""
        import subprocess, sys, time
        from agentrt.cgroups import CgroupDriver, CallLimits, shim_argv, runtime_id
        d = CgroupDriver(reap=False)
        c = d.session().call(CallLimits(pids=8))
        p = subprocess.Popen(shim_argv(c.procs_files, ["sleep", "61.5"]))
        while not c.pids():
            time.sleep(0.01)
        print(runtime_id(), c.pids()[0], flush=True)
        time.sleep(60)
    """)
    child = subprocess.Popen([PY, "-c", script], stdout=subprocess.PIPE, text=True)
    rid, sleeper = child.stdout.readline().split()
    child.kill()
    child.wait()
    stale = [b / f"agentrt-{rid}" for b in {d.parent for d in driver.dirs.values()}]
    assert any(p.exists() for p in stale)
    assert Path(f"/proc/{sleeper}").exists()
    again = CgroupDriver()
    try:
        assert rid in again.reaped
        assert not any(p.exists() for p in stale)
        deadline = time.monotonic() + 5
        while Path(f"/proc/{sleeper}").exists() and time.monotonic() < deadline:
            time.sleep(0.01)  # a zombie until init reaps it; gone from /proc then
        status = Path(f"/proc/{sleeper}/status")
        assert not status.exists() or "zombie" in status.read_text()
        assert runtime_id() not in again.reaped  # a live runtime's groups are never reaped
    finally:
        again.close()


def test_driver_close_leaves_no_group(driver):
    s = driver.session()
    s.call(CallLimits(pids=4))
    s.call(CallLimits(pids=4))
    other = CgroupDriver(reap=False)
    other_dirs = dict(other.dirs)
    other.close()  # shares the root with `driver`: it must stay while `driver` uses it
    assert all(d.exists() for d in other_dirs.values())
    driver.close()
    remaining = [d for d in driver.dirs.values() if d.exists()]
    # the root goes with the last driver of this process (the sandbox's shared one may hold it)
    assert all(not any(p.is_dir() for p in d.iterdir()) for d in remaining) or remaining == []
    assert _groups_of(driver) == []


def test_pid_file_name_is_pid_and_start_time():
    rid = runtime_id()
    pid, start = rid.split("-")
    assert int(pid) == os.getpid() and int(start) > 0


def test_not_root_gets_a_capability_error_naming_the_fix():
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to an unprivileged user")
    script = textwrap.dedent("""
        import os
        from agentrt.cgroups import CgroupDriver, detect_layout
        from agentrt.errors import SandboxUnavailable
        layout = detect_layout()
        os.setgid(65534); os.setuid(65534)
        try:
            CgroupDriver(layout, reap=False)
        except SandboxUnavailable as exc:
            print("unavailable:", exc)
        else:
            print("created")
    """)
    r = subprocess.run([PY, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    if detect_layout().kind == "none":
        pytest.skip("no cgroup layout on this host")
    assert r.stdout.startswith("unavailable:"), r.stdout + r.stderr
    assert "root" in r.stdout and "Delegate" in r.stdout


def test_a_live_call_can_be_given_more_memory(driver):
    """Raising the hard limit of a running call lets it finish what would have been OOM-killed."""
    with driver.session() as s, s.call(CallLimits(memory_max=32 * MiB, pids=8)) as c:
        code = ("import sys, time\nsys.stdin.readline()\n"
                "b = bytearray(64 * 2**20); b[::4096] = b'x' * len(b[::4096])\nprint('done')")
        p = subprocess.Popen(shim_argv(c.procs_files, [PY, "-c", code]), stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
        c.update(CallLimits(memory_max=128 * MiB))
        assert c.limits.memory_max == 128 * MiB and c.limits.pids == 8
        out, _ = p.communicate("go\n", timeout=30)
        assert p.returncode == 0 and out.strip() == "done"
        assert c.usage().oom_kills == 0 and c.memory_current() is not None
