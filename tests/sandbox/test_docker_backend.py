"""The docker (container) backend against a real engine (Podman's Docker API): the namespace cases.

Skipped, with the reason, when the docker SDK, an engine socket or the image is missing
(``scripts/podman-service`` starts Podman's API and builds the image offline).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import anyio
import pytest

from agentrt.errors import SandboxUnavailable
from agentrt.tools import Limits

pytestmark = pytest.mark.anyio
MiB = 2**20
PY = "python3"  # the host's /usr is bound read-only into the container


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


@pytest.fixture(scope="module")
def docker_backend():
    from agentrt.sandbox import DockerBackend

    try:
        return DockerBackend()
    except SandboxUnavailable as exc:
        pytest.skip(f"docker backend unavailable here: {exc}")


@pytest.fixture
async def sandbox(docker_backend):
    sb = docker_backend.start("test")
    cid = sb.container.id
    dirs = list(sb.session.dirs.values())
    yield sb
    sb.close()
    # nothing left behind: no container of this session, no cgroup, no gate directory
    left = docker_backend.client.containers.list(all=True, filters={"id": cid})
    assert left == []
    assert not any(d.exists() for d in dirs), dirs
    assert not sb.gate_dir.exists()


async def test_command_output_exit_status_and_stdin(sandbox):
    r = await sandbox.exec(["/bin/sh", "-c", "echo out; echo err >&2; exit 3"])
    assert not r.ok and r.error_kind == "tool_error"
    assert r.value == {"exit_code": 3, "stdout": "out\n", "stderr": "err\n"}
    assert r.usage.exit_status == 3 and r.usage.cpu_seconds is not None and r.usage.memory_peak_bytes > 0
    ok = await sandbox.exec(["cat"], stdin=b"fed")
    assert ok.ok and ok.value["stdout"] == "fed"


async def test_each_exec_runs_in_its_own_sub_group_of_the_container(sandbox):
    r = await sandbox.exec(["/bin/sh", "-c", "grep memory /proc/self/cgroup"])
    path = r.value["stdout"].strip().split(":", 2)[2]
    container_group = str(sandbox.session.dirs["memory"]).split("/sys/fs/cgroup/memory", 1)[1]
    assert path.startswith(container_group + "/") and path != container_group


async def test_memory_bomb_is_reported_oom_with_its_peak_and_container_survives(sandbox):
    r = await sandbox.exec([PY, "-c", "b = bytearray(128 * 2**20)"], Limits(memory="32M", memory_burst=1.0))
    assert r.error_kind == "oom" and r.usage.oom_killed
    assert 30 * MiB <= r.usage.memory_peak_bytes <= 33 * MiB
    assert "peak" in r.error
    again = await sandbox.exec(["true"])
    assert again.ok  # the session's container lives on


async def test_fork_bomb_stops_at_pids_max(sandbox):
    r = await sandbox.exec(["/bin/sh", "-c", "while :; do sleep 30 & done"], Limits(pids=16, timeout=1.5))
    extra = r.usage.model_extra
    assert extra["pids_max_hits"] > 0
    assert extra["pids_peak"] is None or extra["pids_peak"] <= 17


async def test_cpu_spinner_is_throttled_to_its_quota(sandbox):
    r = await sandbox.exec(["timeout", "1", "/bin/sh", "-c", "while :; do :; done"], Limits(cpu=0.25))
    ratio = r.usage.cpu_seconds / 1.0
    assert 0.03 <= ratio <= 0.4, (r.usage.cpu_seconds, r.usage.wall_seconds)
    assert r.usage.model_extra["throttled_periods"] > 0


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
              "touch /etc/x || echo etc-denied; touch /agentrt-gate/x || echo gate-denied; "
              "echo w > work.txt && echo workdir-ok")
    r = await sandbox.exec(["/bin/sh", "-c", script],
                           Limits(read_only_paths=(str(ro),), writable_paths=(str(rw),)))
    out = r.value["stdout"]
    assert "rw-ok" in out and "readable" in out and "workdir-ok" in out
    assert all(w in out for w in ("ro-denied", "other-denied", "root-denied", "etc-denied", "gate-denied"))
    assert (rw / "a.txt").read_text() == "a\n"
    assert not (ro / "b.txt").exists() and not (other / "c.txt").exists()
    assert r.usage.model_extra["per_call_container"] is True  # its own mounts: a container of its own


async def test_cannot_read_root_home(sandbox):
    marker = Path("/root") / f".agentrt-docker-test-{uuid.uuid4().hex}"
    try:
        marker.write_text("secret")
    except OSError as exc:
        pytest.skip(f"cannot write a marker in /root: {exc}")
    try:
        r = await sandbox.exec(["/bin/sh", "-c", f"cat {marker}; ls -A /root"])
    finally:
        marker.unlink()
    assert "secret" not in r.value["stdout"] and marker.name not in r.value["stdout"]


async def test_cannot_see_host_processes(sandbox):
    r = await sandbox.exec(["/bin/sh", "-c", "ls /proc | grep -E '^[0-9]+$'"])
    pids = [int(x) for x in r.value["stdout"].split() if x.isdigit()]
    host = [p for p in os.listdir("/proc") if p.isdigit()]
    assert len(host) > len(pids)
    assert 1 <= len(pids) <= 6, pids  # the container's sleep, the exec's sh, ls, grep: nothing of the host


async def test_no_network_connection_with_network_none(sandbox):
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        port = srv.getsockname()[1]
        code = (f"import socket\ns = socket.socket()\ns.settimeout(2)\n"
                f"print(s.connect_ex(('127.0.0.1', {port})))")
        r = await sandbox.exec([PY, "-c", code], Limits(network="none"))
    assert r.ok, r
    assert r.value["stdout"].strip() not in ("0", "")  # refused or unreachable, never connected


async def test_network_allow_list_is_denied_not_widened(sandbox):
    r = await sandbox.exec(["true"], Limits(network=("127.0.0.1:80",)))
    assert r.error_kind == "denied" and "allow-list" in r.error


async def test_sixteen_concurrent_calls_keep_their_own_limits(sandbox):
    results: dict[int, object] = {}

    async def one(i: int) -> None:
        small = i % 2 == 0  # even calls: 24 MiB limit, odd: 128 MiB; all allocate 64 MiB
        lim = Limits(memory="24M" if small else "128M", memory_burst=1.0, pids=8, timeout=60)
        results[i] = await sandbox.exec([PY, "-c", "b = bytearray(64 * 2**20)"], lim)

    async with anyio.create_task_group() as tg:
        for i in range(16):
            tg.start_soon(one, i)
    for i, r in results.items():
        if i % 2 == 0:
            assert r.error_kind == "oom" and r.usage.memory_peak_bytes <= 25 * MiB, (i, r)
        else:
            assert r.ok and 64 * MiB <= r.usage.memory_peak_bytes <= 128 * MiB, (i, r)
    # every call's sub-group is gone; the container's own group remains until the session closes
    assert not any(p.is_dir() for d in sandbox.session.dirs.values() for p in d.iterdir())


async def test_callable_runs_in_the_container_and_returns_its_value(sandbox):
    import _sandbox_tools as t

    r = await sandbox.exec(t.add, args={"a": 2, "b": 40})
    assert r.ok and r.value == 42, r


def test_no_engine_is_a_clear_sandbox_unavailable(monkeypatch):
    from agentrt.sandbox import DockerBackend

    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/agentrt-test.sock")
    monkeypatch.delenv("AGENTRT_DOCKER_HOST", raising=False)
    with pytest.raises(SandboxUnavailable, match="no Docker Engine API answers .* scripts/podman-service"):
        DockerBackend()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    agentrt = str(Path(sys.executable).with_name("agentrt"))
    return subprocess.run([agentrt, "sandbox", "run", "--backend", "docker", *args], check=False,
                          capture_output=True, text=True, timeout=120)


def test_cli_backend_docker_passes_exit_status_and_reports_oom(docker_backend):
    r = _cli("--", "/bin/sh", "-c", "echo out; exit 7")
    assert r.returncode == 7 and r.stdout == "out\n" and "sandbox: exit 7" in r.stderr
    r = _cli("--memory", "32M", "--json", "--", PY, "-c", "b = bytearray(128 * 2**20)")
    assert r.returncode == 137
    out = json.loads(r.stdout)
    assert out["backend"] == "docker" and out["error_kind"] == "oom"
    assert out["usage"]["memory_peak_bytes"] <= 33 * MiB


def test_cli_unknown_image_is_a_clear_error(docker_backend):
    r = _cli("--image", "localhost/agentrt-no-such-image:0", "--", "true")
    assert r.returncode == 125 and "scripts/podman-service" in r.stderr


def test_containers_of_a_killed_runtime_are_reaped_by_the_next_backend(docker_backend):
    script = ("import anyio, os, sys\n"
              "from agentrt.sandbox import DockerBackend\n"
              "sb = DockerBackend().start('doomed')\n"
              "print(sb.container.id, sb.gate_dir, flush=True)\n"
              "os.kill(os.getpid(), 9)\n")
    r = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120)
    cid, gate = r.stdout.split()
    assert r.returncode == -9 and cid and Path(gate).is_dir()
    assert docker_backend.client.containers.list(all=True, filters={"id": cid})  # left by the dead runtime
    from agentrt.sandbox import DockerBackend

    again = DockerBackend()
    assert again.reaped >= 1
    assert docker_backend.client.containers.list(all=True, filters={"id": cid}) == []
    assert not Path(gate).exists()


async def test_admission_control_holds_container_calls_to_the_budget(docker_backend):
    from agentrt.executor import AdmissionController, observe_session

    ctl = AdmissionController(budget=100 * MiB)
    sb = docker_backend.start("admission")
    assert observe_session(sb)
    attached: list[bool] = []
    results = []

    async def one() -> None:
        lim = Limits(memory="60M", memory_burst=1.0)
        async with ctl.reserve(lim, "hold") as g:
            r = await sb.exec([PY, "-c", "import time; b = bytearray(40 * 2**20); time.sleep(0.8)"],
                              g.limits_for(lim))
            attached.append(g.call is not None)  # the call's sub-group in the container was seen
            results.append(ctl.finish(g, r, lim))

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(one)
            tg.start_soon(one)
    finally:
        sb.close()
    assert all(r.ok for r in results), [r.error for r in results]
    waits = sorted(r.usage.admission_wait_seconds for r in results)
    assert waits[0] < 0.1 and waits[1] > 0.5  # 2 x 60 MiB do not fit in 100 MiB: one waited
    assert attached == [True, True]


async def test_prewarmed_execs_keep_their_limits_and_leave_nothing(docker_backend):
    async with docker_backend.start("warm") as sb:
        with anyio.fail_after(30):
            while sb.prewarmed < 1:
                await anyio.sleep(0.05)
        cid, dirs = sb.container.id, list(sb.session.dirs.values())
        oom = await sb.exec([PY, "-c", "b = bytearray(128 * 2**20)"], Limits(memory="32M", memory_burst=1.0))
        fed = await sb.exec(["/bin/sh", "-c", 'cat; printf " %s" "$0"', "it's here"], stdin=b"fed")
        slow = await sb.exec(["sleep", "30"], Limits(timeout=0.5))
        assert sb.warm_hits >= 1
    assert oom.error_kind == "oom" and 30 * MiB <= oom.usage.memory_peak_bytes <= 33 * MiB
    assert fed.ok and fed.value["stdout"] == "fed it's here"
    assert slow.error_kind == "timeout"
    assert docker_backend.client.containers.list(all=True, filters={"id": cid}) == []
    assert not any(d.exists() for d in dirs) and not sb.gate_dir.exists()


async def test_plan_runs_in_the_container_through_the_scheduler_with_admission(docker_backend):
    from agentrt.executor import AdmissionController, SandboxedBackend, Scheduler, Task
    from agentrt.tools import ToolRegistry
    from agentrt.tools.builtin import python, shell

    reg = ToolRegistry([python, shell])
    tasks = [Task(id=1, tool="shell", args={"command": "echo $((6 * 7))"}),
             Task(id=2, tool="python", args={"code": "print($1['stdout'].strip() + '!')"})]
    async with SandboxedBackend(docker_backend, admission=AdmissionController(budget=2 * 2**30)) as be:
        results = await Scheduler(reg, backend=be).run(tasks)
    assert results[1].ok and results[1].value["stdout"] == "42\n", results[1]
    assert results[2].ok and results[2].value["stdout"].strip() == "42!", results[2]
    for r in results.values():
        assert r.usage.model_extra["backend"] == "docker"
        assert r.usage.model_extra["admission_budget_bytes"] == 2 * 2**30
