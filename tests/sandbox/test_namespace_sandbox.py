"""The namespace sandbox on the real host: limits per call, isolation, outcomes, no leftovers."""

from __future__ import annotations

import os
import socket
import sys
import time
import uuid
from pathlib import Path

import anyio
import pytest

from agentrt.sandbox._namespace import SANDBOX_PIDS
from agentrt.tools import Limits

pytestmark = pytest.mark.anyio
MiB = 2**20
PY = sys.executable


def _host_procs_with(marker: str) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if marker in p.joinpath("cmdline").read_bytes().replace(b"\0", b" ").decode():
                    out.append(int(p.name))
            except OSError:
                pass
    return out


async def test_command_output_and_exit_status(sandbox):
    r = await sandbox.exec(["/bin/sh", "-c", "echo out; echo err >&2; exit 3"])
    assert not r.ok and r.error_kind == "tool_error"
    assert r.value == {"exit_code": 3, "stdout": "out\n", "stderr": "err\n"}
    assert r.usage.exit_status == 3 and r.usage.cpu_seconds is not None and r.usage.memory_peak_bytes > 0
    ok = await sandbox.exec(["cat"], stdin=b"fed")
    assert ok.ok and ok.value["stdout"] == "fed"


async def test_memory_bomb_is_reported_oom_with_its_peak(sandbox):
    r = await sandbox.exec([PY, "-c", "b = bytearray(128 * 2**20)"], Limits(memory="32M", memory_burst=1.0))
    assert r.error_kind == "oom" and r.usage.oom_killed
    assert 30 * MiB <= r.usage.memory_peak_bytes <= 33 * MiB
    assert "32 MiB" in r.error and "peak" in r.error


async def test_fork_bomb_stops_at_pids_max(sandbox):
    r = await sandbox.exec(["/bin/sh", "-c", "while :; do sleep 30 & done"], Limits(pids=16, timeout=1.5))
    extra = r.usage.model_extra
    assert extra["pids_max_hits"] > 0
    assert extra["pids_peak"] is None or extra["pids_peak"] <= 16 + SANDBOX_PIDS


async def test_pids_limit_counts_the_tools_processes_not_the_sandboxs(sandbox):
    one = await sandbox.exec(["true"], Limits(pids=1))
    assert one.ok, one
    two = await sandbox.exec(["/bin/sh", "-c", "true & wait"], Limits(pids=1))
    assert not two.ok and two.usage.model_extra["pids_max_hits"] > 0


async def test_cpu_spinner_is_throttled_to_its_quota(sandbox):
    r = await sandbox.exec(["timeout", "1", "/bin/sh", "-c", "while :; do :; done"], Limits(cpu=0.25))
    ratio = r.usage.cpu_seconds / r.usage.wall_seconds
    assert 0.03 <= ratio <= 0.4, (r.usage.cpu_seconds, r.usage.wall_seconds)  # low end: a busy host
    assert r.usage.model_extra["throttled_periods"] > 0 and r.usage.model_extra["throttled_seconds"] > 0


async def test_sleeper_past_timeout_is_killed_with_all_children(sandbox):
    marker = f"{61 + uuid.uuid4().int % 1000 / 1000:.3f}"
    t0 = time.perf_counter()
    r = await sandbox.exec(["/bin/sh", "-c", f"sleep {marker} & (sleep {marker} &) ; sleep {marker}"],
                           Limits(timeout=0.5))
    assert r.error_kind == "timeout" and r.usage.timed_out
    assert time.perf_counter() - t0 < 5
    assert _host_procs_with(f"sleep {marker}") == []


async def test_cannot_write_outside_writable_paths(sandbox, tmp_path):
    rw, ro, other = tmp_path / "rw", tmp_path / "ro", tmp_path / "other"
    for d in (rw, ro, other):
        d.mkdir()
    (ro / "in.txt").write_text("readable")
    script = (f"echo a > {rw}/a.txt && echo rw-ok; cat {ro}/in.txt; echo b > {ro}/b.txt || echo ro-denied; "
              f"echo c > {other}/c.txt || echo other-denied; touch /usr/x || echo root-denied; "
              "echo w > work.txt && echo workdir-ok")
    r = await sandbox.exec(["/bin/sh", "-c", script],
                           Limits(read_only_paths=(str(ro),), writable_paths=(str(rw),)))
    out = r.value["stdout"]
    assert "rw-ok" in out and "readable" in out and "workdir-ok" in out
    assert "ro-denied" in out and "other-denied" in out and "root-denied" in out
    assert (rw / "a.txt").read_text() == "a\n"
    assert not (ro / "b.txt").exists() and not (other / "c.txt").exists()


async def test_cannot_read_root_home(sandbox):
    marker = Path("/root") / f".agentrt-sandbox-test-{uuid.uuid4().hex}"
    try:
        marker.write_text("secret")
    except OSError as exc:
        pytest.skip(f"cannot write a marker in /root: {exc}")
    try:
        r = await sandbox.exec(["/bin/sh", "-c", f"cat {marker}; ls -A /root"])
    finally:
        marker.unlink()
    assert "secret" not in r.value["stdout"]
    assert marker.name not in r.value["stdout"]


async def test_cannot_see_host_processes(sandbox):
    r = await sandbox.exec(["/bin/sh", "-c", "ls /proc | grep -E '^[0-9]+$'; cat /proc/1/cmdline"])
    pids = [int(x) for x in r.value["stdout"].split() if x.isdigit()]
    host = [p for p in os.listdir("/proc") if p.isdigit()]
    assert len(host) > len(pids)
    assert 1 <= len(pids) <= 5, pids  # bwrap, sh, ls, grep (and cat): nothing of the host
    assert "bwrap" in r.value["stdout"]  # pid 1 of its namespace is bubblewrap, not the host's init


async def test_no_network_connection_with_network_none(sandbox):
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        port = srv.getsockname()[1]
        code = (f"import socket\ns = socket.socket()\ns.settimeout(2)\n"
                f"print(s.connect_ex(('127.0.0.1', {port})))")
        r = await sandbox.exec([PY, "-c", code], Limits(network="none"))
        host_side = socket.create_connection(("127.0.0.1", port), timeout=2)  # the listener works
        host_side.close()
    assert r.ok, r
    assert r.value["stdout"].strip() not in ("0", "")  # refused or unreachable, never connected


async def test_network_allow_list_is_denied_not_widened(sandbox):
    r = await sandbox.exec(["true"], Limits(network=("127.0.0.1:80",)))
    if sandbox.backend.net_policy() is None:  # no eBPF connect hooks here: refused, never widened
        assert r.error_kind == "denied" and "allow-list" in r.error
    else:  # enforced in the kernel instead (tests/cgroups/test_ebpf_net.py)
        assert r.ok and r.usage.model_extra["ebpf_net_denied"] == 0


async def test_sixteen_concurrent_calls_keep_their_own_limits(sandbox):
    results: dict[int, object] = {}

    async def one(i: int) -> None:
        small = i % 2 == 0  # even calls: 24 MiB limit, odd: 128 MiB; all allocate 64 MiB
        lim = Limits(memory="24M" if small else "128M", memory_burst=1.0, pids=8, timeout=60)
        results[i] = await sandbox.exec([PY, "-c", "b = bytearray(64 * 2**20); b[::4096] = b'x' * len(b[::4096])"], lim)

    async with anyio.create_task_group() as tg:
        for i in range(16):
            tg.start_soon(one, i)
    for i, r in results.items():
        if i % 2 == 0:
            assert r.error_kind == "oom" and r.usage.memory_peak_bytes <= 25 * MiB, (i, r)
        else:
            assert r.ok and 64 * MiB <= r.usage.memory_peak_bytes <= 128 * MiB, (i, r)
    assert not any(p.is_dir() for d in sandbox.session.dirs.values() for p in d.iterdir())


async def test_callable_by_module_path_returns_its_value(sandbox):
    import _sandbox_tools as t

    r = await sandbox.exec(t.add, args={"a": 2, "b": 40})
    assert r.ok and r.value == 42 and r.usage.cpu_seconds > 0
    r = await sandbox.exec(t.async_double, args={"x": 21})
    assert r.ok and r.value == 42


async def test_callable_exception_is_a_tool_error_with_the_last_line(sandbox):
    import _sandbox_tools as t

    r = await sandbox.exec(t.fail, args={"message": "no such thing"})
    assert r.error_kind == "tool_error" and r.error == "ValueError: no such thing"


async def test_callable_oom_is_reported_as_oom(sandbox):
    import _sandbox_tools as t

    r = await sandbox.exec(t.allocate, Limits(memory="48M", memory_burst=1.0), args={"mib": 200})
    assert r.error_kind == "oom" and r.usage.memory_peak_bytes >= 40 * MiB


async def test_lambda_goes_by_cloudpickle(sandbox):
    pytest.importorskip("cloudpickle", reason="the sandbox extra (cloudpickle) is not installed")
    k = 5
    r = await sandbox.exec(lambda x: x * k, args={"x": 3})
    assert r.ok and r.value == 15


async def test_tool_arguments_are_validated_before_spawn(sandbox):
    import _sandbox_tools as t

    bad = await sandbox.exec(t.typed_square, args={"x": "not a number"})
    assert bad.error_kind == "invalid_args"
    good = await sandbox.exec(t.typed_square, args={"x": "7"})  # coerced by the schema
    assert good.ok and good.value == 49


async def test_call_cancelled_from_outside_leaves_nothing(sandbox):
    marker = f"{62 + uuid.uuid4().int % 1000 / 1000:.3f}"
    with anyio.move_on_after(0.5):
        await sandbox.exec(["/bin/sh", "-c", f"sleep {marker} & sleep {marker}"], Limits(timeout=60))
    assert _host_procs_with(f"sleep {marker}") == []
    assert not any(p.is_dir() for d in sandbox.session.dirs.values() for p in d.iterdir())


async def test_process_killed_by_a_signal_is_reported_killed(sandbox):
    r = await sandbox.exec(["/bin/sh", "-c", "kill -KILL $$"])
    assert r.error_kind == "killed" and "signal 9" in r.error
    assert not r.usage.oom_killed and not r.usage.timed_out


async def test_clean_environment_and_private_workdir(sandbox, monkeypatch):
    monkeypatch.setenv("AGENTRT_SECRET_TOKEN", "leak")
    r = await sandbox.exec(["/bin/sh", "-c", "env; pwd; echo x > f && ls"])
    out = r.value["stdout"]
    assert "leak" not in out and "AGENTRT_SECRET_TOKEN" not in out
    assert "/tmp/work" in out and "f" in out.split()
    again = await sandbox.exec(["/bin/sh", "-c", "ls -A"])
    assert again.value["stdout"] == ""  # each call starts with an empty work dir


async def test_disk_limit_bounds_the_work_dir(sandbox):
    r = await sandbox.exec(["/bin/sh", "-c", "dd if=/dev/zero of=big bs=1M count=8 2>&1; ls -l big"],
                           Limits(disk="2M"))
    assert "No space left" in r.value["stdout"]


async def test_session_work_dir_is_shared_across_calls(tmp_path):
    from agentrt.errors import SandboxUnavailable
    from agentrt.sandbox import NamespaceBackend

    try:
        be = NamespaceBackend(workdir=tmp_path)
    except SandboxUnavailable as exc:
        pytest.skip(str(exc))
    sb = be.start()
    try:
        first = await sb.exec(["/bin/sh", "-c", "pwd; echo from-call-1 > note.txt"])
        second = await sb.exec(["cat", "note.txt"])
    finally:
        sb.close()
    assert first.value["stdout"].strip() == str(tmp_path)
    assert second.ok and second.value["stdout"] == "from-call-1\n"
    assert (tmp_path / "note.txt").exists()


async def test_sandboxed_process_has_no_controlling_terminal(sandbox):
    r = await sandbox.exec(["/bin/sh", "-c", "cat /dev/tty 2>&1 || echo no-tty; ps -o sid= -p $$"])
    assert "no-tty" in r.value["stdout"] or "No such device" in r.value["stdout"]


async def test_call_can_read_its_own_memory_limit(sandbox):
    """Programs that size themselves from their cgroup (JVM, Go, Node) find the call's limit."""
    script = ("p=$(grep -E '(:memory:|^0::)' /proc/self/cgroup | head -1 | cut -d: -f3); "
              "cat /sys/fs/cgroup/memory$p/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup$p/memory.max")
    r = await sandbox.exec(["/bin/sh", "-c", script], Limits(memory="40M", memory_burst=1.0))
    assert r.ok and int(r.value["stdout"].split()[0]) == 40 * MiB


async def _until_prewarmed(sb, n: int = 1) -> None:
    with anyio.fail_after(20):
        while sb.prewarmed < n:
            await anyio.sleep(0.01)


async def test_prewarmed_calls_keep_their_limits_and_leave_nothing(ns_backend):
    async with ns_backend.start("warm") as sb:
        await _until_prewarmed(sb, 2)
        ok = await sb.exec(["/bin/sh", "-c", "echo \"$1\"; cat", "sh", "it's $HOME; not expanded"], stdin=b"in")
        assert ok.ok and ok.value["stdout"] == "it's $HOME; not expanded\nin"
        assert sb.warm_hits == 1
        await _until_prewarmed(sb, 1)
        oom = await sb.exec([PY, "-c", "b = bytearray(128 * 2**20)"], Limits(memory="32M", memory_burst=1.0))
        assert oom.error_kind == "oom" and oom.usage.memory_peak_bytes <= 33 * MiB
        await _until_prewarmed(sb, 1)
        marker = f"{63 + uuid.uuid4().int % 1000 / 1000:.3f}"
        slow = await sb.exec(["/bin/sh", "-c", f"sleep {marker} & sleep {marker}"], Limits(timeout=0.3))
        assert slow.error_kind == "timeout" and _host_procs_with(f"sleep {marker}") == []
        assert sb.warm_hits == 3
        custom = await sb.exec(["true"], Limits(disk="1M"))  # other mounts: built on demand
        assert custom.ok and sb.warm_hits == 3
        dirs = list(sb.session.dirs.values())
    assert not any(d.exists() for d in dirs)  # prewarmed groups went with the session


def test_function_defined_in_a_script_runs_by_its_file(ns_backend, tmp_path):
    """A tool function in a script run as __main__ is loaded by path (its main block stays idle)."""
    import subprocess

    script = tmp_path / "agent_script.py"
    script.write_text(
        "import anyio\n"
        "from agentrt.sandbox import NamespaceBackend\n\n"
        "def shout(text: str) -> str:\n"
        "    import os\n"
        "    return text.upper() + ' from pid ' + str(os.getpid())\n\n"
        "async def main():\n"
        "    sb = NamespaceBackend().start()\n"
        "    try:\n"
        "        r = await sb.exec(shout, args={'text': 'hi'})\n"
        "    finally:\n"
        "        sb.close()\n"
        "    print(r.ok, r.value, r.error)\n\n"
        "if __name__ == '__main__':\n"
        "    anyio.run(main)\n")
    r = subprocess.run([PY, str(script)], capture_output=True, text=True, timeout=120, check=False)
    import re

    m = re.fullmatch(r"True HI from pid (\d+) None\n", r.stdout)
    assert m, r.stdout + r.stderr
    assert int(m.group(1)) < 10  # a pid of the call's own namespace
