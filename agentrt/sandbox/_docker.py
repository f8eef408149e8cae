"""The ``docker`` backend: tool calls in a container, through the Docker Engine API (``docker`` SDK).

One container per session holds the session's budget (``mem_limit``, ``nano_cpus``,
``pids_limit``), with no network (``network_mode="none"``: only its own loopback), a read-only
root, every capability dropped, ``no-new-privileges``, a private ``/tmp`` (tmpfs) holding the work
dir ``/tmp/work``, and the host's ``/usr`` (plus the Python prefixes a callable needs) bound
read-only, so the image itself can be a skeleton built offline (``scripts/podman-service``).

Each tool call is an exec placed in its *own sub-group of the container's cgroup* (an
`agentrt.cgroups.CallGroup` rooted there, with the call's memory, CPU and pids limits), never in
the container's group itself: the exec starts behind a gate (a shell blocked reading a FIFO in a
per-session host directory bound at ``/agentrt-gate``), the runtime finds its host pid in the
container's ``cgroup.procs``, writes it into the call's groups, and only then releases the gate,
so the command itself (and everything it forks) is charged to the call from its first byte. At
the timeout the call's group is killed (v2 ``cgroup.kill`` / SIGKILL), children included; the
container survives its calls' OOM kills.

A session used as ``async with backend.start() as sandbox:`` keeps ``prewarm`` execs started
ahead: each already created and started by the engine (~0.1 s with podman), its shell moved into
a fresh call group and waiting on its FIFO for a command line; a call writes its limits into that
group and sends its command line, so it skips the engine's exec start. A new one is prewarmed
after each call. Without ``async with`` every call's exec is started when the call comes.

A call whose mounts differ from the session's (``read_only_paths``, ``writable_paths``, a
``disk`` size) runs in a container of its own (the fallback, ~0.2-0.4 s more), gated the same
way. Network allow-lists are refused (``denied``), as in the namespace backend.

Engine: ``base_url`` argument, else `agentrt.config.Settings.docker_host`
(``AGENTRT_DOCKER_HOST``), else ``DOCKER_HOST``, else the podman socket that
``scripts/podman-service`` starts (``<data dir>/podman/podman.sock``), ``/run/podman/podman.sock``
or ``/var/run/docker.sock``, the first that exists. Tested against Podman 4.3's Docker-compatible
API (``podman system service``; its API has no ``container.update``, so limits are never changed
through the engine, only in the cgroups).

Containers carry the labels ``agentrt.runtime`` (`agentrt.cgroups.runtime_id`) and
``agentrt.session``; a backend created later removes the containers of runtimes that are dead.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import logging
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from agentrt.cgroups import CallGroup, CallLimits, CgroupDriver, runtime_id
from agentrt.errors import InvalidArguments, SandboxError, SandboxUnavailable
from agentrt.sandbox._base import ExecTarget, Outcome, outcome_result
from agentrt.sandbox._callable import WORKER_FILE, needed_paths, worker_request
from agentrt.sandbox._namespace import (
    CLEAN_ENV,
    OUTPUT_CAP,
    SANDBOX_PIDS,
    answer_result,
    shared_driver,
)
from agentrt.tools import Limits, Tool, ToolResult, ToolUsage

__all__ = ["DEFAULT_IMAGE", "DockerBackend", "DockerSandbox", "find_docker_host"]

log = logging.getLogger(__name__)

#: The image ``scripts/podman-service`` builds with ``podman import`` (a skeleton root filesystem).
DEFAULT_IMAGE = "localhost/agentrt-sandbox:1"
#: Where the per-session gate directory is bound inside the container.
GATE = "/agentrt-gate"
#: The gate: block until the runtime has moved this shell into the call's cgroup, then exec.
#: ``$0`` is the FIFO; ``$1`` the stdin file or ``-``; the rest the command.
_GATE_SCRIPT = ('read _ < "$0" || exit 125; mkdir -p /tmp/work && cd /tmp/work || exit 125; '
                'in=$1; shift; if [ "$in" = - ]; then exec "$@" </dev/null; else exec "$@" <"$in"; fi')
#: A prewarmed exec: wait for one command line on the FIFO ``$0``, then run it (it ``exec``\ s).
_WAITER = 'IFS= read -r line < "$0" || exit 125; eval "$line"'
#: Seconds to wait for a gated process to appear in the container's cgroup.
_FIND_TIMEOUT = 15.0
_LABEL_RUNTIME = "agentrt.runtime"
_LABEL_SESSION = "agentrt.session"


def find_docker_host(base_url: str | None = None) -> str | None:
    """The engine URL to use (see the module docstring for the order), or None if none is known."""
    if base_url:
        return base_url
    from agentrt.config import get_settings

    s = get_settings()
    if s.docker_host:
        return s.docker_host
    if os.environ.get("DOCKER_HOST"):
        return os.environ["DOCKER_HOST"]
    for sock in (s.data_dir / "podman" / "podman.sock", Path("/run/podman/podman.sock"),
                 Path("/var/run/docker.sock")):
        if sock.exists():
            return f"unix://{sock}"
    return None


def _python_binds() -> list[Path]:
    """Host directories this Python and its sys.path need, outside /usr (bound read-only)."""
    cands = [Path(sys.prefix), Path(sys.base_prefix), Path(os.path.realpath(sys.executable)).parent.parent,
             Path(WORKER_FILE).parent.parent.parent]  # where agentrt itself lives (an editable checkout)
    cands += [Path(p) for p in sys.path if p and os.path.isdir(p)]
    out: list[Path] = []
    for p in sorted({Path(os.path.abspath(p)) for p in cands}, key=lambda p: len(p.parts)):
        # / and /tmp would shadow the container's own root and tmpfs
        if str(p) in ("/", "/tmp") or str(p).startswith("/usr") or any(p.is_relative_to(q) for q in out):
            continue
        out.append(p)
    return out


def _alive(rid: str) -> bool:
    pid, _, _ = rid.partition("-")
    return pid.isdigit() and runtime_id(int(pid)) == rid


def _mount_roots(driver: CgroupDriver) -> dict[str, Path]:
    """Controller -> root of its hierarchy (this process's directory minus its own cgroup path)."""
    own: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        for c in ctrls.split(",") if ctrls else ["v2"]:
            own[c] = path
    roots: dict[str, Path] = {}
    for c, d in driver.dirs.items():
        rel = own.get(c, "/").strip("/")
        base = d.parent  # the driver's agentrt-<id> directory -> this process's group
        roots[c] = Path(str(base)[: len(str(base)) - len(rel)].rstrip("/")) if rel else base
    return roots


def _container_dirs(pid: int, roots: Mapping[str, Path]) -> dict[str, Path]:
    """The container's cgroup directory in each hierarchy the driver uses (from /proc/PID/cgroup)."""
    paths: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        for c in ctrls.split(",") if ctrls else ["v2"]:
            paths[c] = path
    out: dict[str, Path] = {}
    for c, root in roots.items():
        if c in paths:
            out[c] = root / paths[c].lstrip("/")
    return out


class _ContainerGroup:
    """A container's cgroup as the parent of its calls' groups (a `SessionGroup` look-alike).

    `agentrt.cgroups.CallGroup` needs only ``dirs``, ``driver`` and ``_calls`` of its session, so
    each call's group is a real `CallGroup` created inside the container's directories.
    """

    def __init__(self, driver: CgroupDriver, dirs: dict[str, Path], name: str) -> None:
        self.driver = driver
        self.dirs = dirs
        self.name = name
        self._calls: dict[str, CallGroup] = {}
        self._seq = itertools.count(1)

    def call(self, limits: CallLimits | object | None = None, name: str | None = None) -> CallGroup:
        """Create a call's group inside the container's cgroup (see `SessionGroup.call`)."""
        if limits is None:
            limits = CallLimits()
        elif not isinstance(limits, CallLimits):
            limits = CallLimits.from_limits(limits)
        name = name or f"agentrt-call-{next(self._seq)}"
        call = CallGroup(self, name, limits)  # type: ignore[arg-type]
        self._calls[name] = call
        return call

    def procs(self) -> list[int]:
        """Pids in the container's own group (not in its calls' sub-groups)."""
        d = next(iter(self.dirs.values()))
        try:
            return [int(p) for p in (d / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def close(self) -> None:
        for call in list(self._calls.values()):
            try:
                call.close()
            except SandboxError as exc:
                log.warning("container call group not removed: %s", exc)


def _call_limits(limits: Limits) -> CallLimits:
    c = CallLimits.from_limits(limits)
    return CallLimits(c.memory_max, c.memory_high, c.cpu, None if c.pids is None else c.pids + 1)


def _find_gated(group: _ContainerGroup, marker: str, deadline: float,
                stop: Callable[[], bool] = lambda: False) -> int | None:
    """The host pid of the gated shell whose command line holds ``marker`` (polls cgroup.procs).

    Gives up (None) at ``deadline`` or as soon as ``stop()`` is true (the exec ended or failed).
    """
    needle = marker.encode()
    delay = 0.0005
    while time.monotonic() < deadline and not stop():
        for pid in group.procs():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if needle in f.read():
                        return pid
            except OSError:
                continue
        time.sleep(delay)
        delay = min(delay * 2, 0.002)
    return None


def _release(fifo: Path, deadline: float, line: bytes) -> None:
    """Write ``line`` into the gate FIFO once its reader has opened it."""
    delay = 0.0005
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO or time.monotonic() > deadline:
                raise SandboxError(f"cannot release the gate {fifo}: {exc}") from exc
            time.sleep(delay)
            delay = min(delay * 2, 0.01)
            continue
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
        return


@dataclass
class _Pending:
    """An exec started behind its gate and placed in its call group: ``done`` when the exec ends."""

    call: CallGroup
    seq: int
    fifo: Path
    box: dict[str, Any]
    done: anyio.Event


class DockerSandbox:
    """One session: a long-lived container; each `exec` is a gated exec in its own sub-cgroup.

    Attributes:
        container: the session's container (``docker.models.containers.Container``).
        session: the container's cgroup as the parent of the calls' groups (observable by
            admission control, like `NamespaceSandbox.session`).
        gate_dir: host directory bound at ``/agentrt-gate`` (FIFOs and stdin files).
        per_call_containers: calls that ran in a container of their own (the fallback).
    """

    def __init__(self, backend: DockerBackend, label: str | None) -> None:
        self.backend = backend
        self.label = label
        self._closed = False
        self._seq = itertools.count(1)
        self.per_call_containers = 0
        self.warm_hits = 0
        self._closing = False
        self._warm: list[_Pending] = []
        self._tg: Any = None
        # named by the runtime, so a later backend can remove it if this process is killed
        self.gate_dir = Path(tempfile.mkdtemp(prefix=f"agentrt-gate-{backend.runtime}-"))
        self._containers: list[Any] = []
        try:
            self.container = backend._run_container(
                ["sleep", "infinity"], self.gate_dir, Limits(), session=True, label=label)
            self._containers.append(self.container)
            self.container.reload()
            pid = int(self.container.attrs["State"]["Pid"])
            self.session: Any = _ContainerGroup(backend.driver, _container_dirs(pid, backend.roots),
                                                f"container-{self.container.short_id}")
        except BaseException:
            self.close()
            raise

    async def exec(self, target: ExecTarget, limits: Limits | None = None, stdin: bytes | None = None,
                   *, args: Mapping[str, Any] | None = None) -> ToolResult:
        """Run an argv, a `Tool` or a callable as one call (see `agentrt.sandbox.Sandbox.exec`)."""
        if self._closed:
            raise SandboxError("this sandbox is closed")
        if limits is None:
            limits = target.limits if isinstance(target, Tool) else Limits()
        is_argv = isinstance(target, (list, tuple))
        name = target.name if isinstance(target, Tool) else (
            str(target[0]) if is_argv and target else getattr(target, "__qualname__", "callable"))
        if isinstance(limits.network, tuple) and limits.network:
            return ToolResult.failure("denied", f"{name}: network allow-list {list(limits.network)} is not "
                                      "supported by the docker backend; use network='none' or 'loopback'")
        try:
            if is_argv:
                if not target:
                    raise InvalidArguments("empty command")
                argv, feed = [str(a) for a in target], stdin
            else:
                req = worker_request(target, args)  # type: ignore[arg-type]
                argv, feed = [sys.executable, "-s", WORKER_FILE], json.dumps(req).encode()
                # / and /tmp cannot be bound over the container's own root and tmpfs
                missing = [p for p in needed_paths(req) + [Path(WORKER_FILE).parent]
                           if str(p) not in ("/", "/tmp") and not str(p).startswith("/usr")
                           and not any(p.is_relative_to(m) for m in self.backend.ro_paths)]
                if missing:
                    limits = limits.model_copy(update={"read_only_paths": tuple(
                        sorted({*limits.read_only_paths, *(str(p) for p in missing if p.exists())}))})
            for p in (*limits.read_only_paths, *limits.writable_paths):
                if not os.path.exists(p):
                    raise InvalidArguments(f"path {p!r} does not exist")
        except InvalidArguments as exc:
            kind = "denied" if "does not exist" in str(exc) else "invalid_args"
            return ToolResult.failure(kind, f"{name}: {exc}", ToolUsage())
        seq = next(self._seq)
        cap = OUTPUT_CAP if is_argv else 64 * OUTPUT_CAP
        if limits.read_only_paths or limits.writable_paths or limits.disk is not None:
            self.per_call_containers += 1
            o = await self._run_per_call(seq, argv, limits, feed, cap)
        else:
            warm = self._take_warm(limits, argv)
            o = await self._run_warm(warm, argv, limits, feed, cap) if warm is not None else None
            if o is None:
                o = await self._run_exec(seq, argv, limits, feed, cap)
        return outcome_result(o, limits) if is_argv else answer_result(o, limits, name)

    def _gate_files(self, seq: int, feed: bytes | None) -> tuple[Path, str, str]:
        fifo = self.gate_dir / f"call-{seq}.fifo"
        os.mkfifo(fifo, 0o600)
        stdin_arg = "-"
        if feed is not None:
            (self.gate_dir / f"call-{seq}.in").write_bytes(feed)
            stdin_arg = f"{GATE}/call-{seq}.in"
        return fifo, f"{GATE}/call-{seq}.fifo", stdin_arg

    def _cleanup_gate(self, seq: int) -> None:
        for suffix in (".fifo", ".in"):
            with contextlib.suppress(FileNotFoundError):
                (self.gate_dir / f"call-{seq}{suffix}").unlink()

    async def _launch(self, seq: int, cmd: list[str], call: CallGroup, group: Any, container: Any,
                      tg: Any) -> _Pending:
        """Start ``cmd`` (a gated shell) as an exec, find it, move it into ``call``; not released yet.

        The exec's create + start requests run in one thread of ``tg`` (start returns when the
        exec ends); the gated shell is found in the container's ``cgroup.procs`` meanwhile.
        """
        api = self.backend.client.api
        p = _Pending(call=call, seq=seq, fifo=self.gate_dir / f"call-{seq}.fifo", box={}, done=anyio.Event())
        marker = f"{GATE}/call-{seq}.fifo"

        def create_and_start() -> None:
            p.box["id"] = api.exec_create(container.id, cmd, stdout=True, stderr=True,
                                          environment=CLEAN_ENV.copy(), workdir="/tmp")["Id"]
            p.box["out"] = api.exec_start(p.box["id"], demux=True)  # returns when the exec ends

        async def run() -> None:
            try:
                await anyio.to_thread.run_sync(create_and_start, abandon_on_cancel=True)
            except self.backend.errors as exc:  # the engine failed: raised after the call's cleanup
                p.box["error"] = exc
            finally:
                p.done.set()

        tg.start_soon(run)
        deadline = time.monotonic() + _FIND_TIMEOUT
        pid = await anyio.to_thread.run_sync(_find_gated, group, marker, deadline,
                                             lambda: p.done.is_set() or self._closing)
        if pid is None:
            call.kill()
            raise SandboxError(f"the gated process did not appear in the container's cgroup within "
                               f"{_FIND_TIMEOUT:g} s (engine: {self.backend.base_url}): "
                               f"{p.box.get('error', 'no error from the engine')}")
        for f in call.procs_files:  # cgroupfs: a write that never blocks
            fd = os.open(f, os.O_WRONLY)
            try:
                os.write(fd, str(pid).encode())
            finally:
                os.close(fd)
        return p

    async def _finish(self, p: _Pending, limits: Limits, t0: float, cap: int) -> Outcome:
        """Wait for a released exec under ``limits.timeout`` (killing its group past it); read usage."""
        call = p.call
        timed_out = False
        try:
            with anyio.move_on_after(limits.timeout) as scope:
                await p.done.wait()
            timed_out = scope.cancelled_caught
        finally:
            if not p.done.is_set():  # timed out or cancelled: kill the call, the exec then ends
                call.kill()
                with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                    await p.done.wait()
        wall = time.perf_counter() - t0
        cu = call.usage()
        if "error" in p.box:
            raise SandboxError(f"docker exec failed: {p.box['error']}")
        info = await anyio.to_thread.run_sync(self.backend.client.api.exec_inspect, p.box["id"])
        rc = info.get("ExitCode")
        out, err = p.box.get("out") or (None, None)
        usage: dict[str, Any] = {
            "cpu_seconds": cu.cpu_seconds, "memory_peak_bytes": cu.memory_peak_bytes,
            "throttled_seconds": cu.throttled_seconds, "throttled_periods": cu.throttled_periods,
            "nr_periods": cu.nr_periods, "oom_kills": cu.oom_kills, "pids_peak": cu.pids_peak,
            "pids_max_hits": cu.pids_max_hits, "backend": "docker",
        }
        return Outcome(returncode=int(rc) if rc is not None else -9,
                       stdout=(out or b"")[:cap].decode(errors="replace"),
                       stderr=(err or b"")[:cap].decode(errors="replace"),
                       wall_seconds=wall, timed_out=timed_out, oom_kills=cu.oom_kills, usage=usage)

    async def _close_call(self, call: CallGroup, seq: int) -> None:
        with anyio.CancelScope(shield=True):
            if not call._closed:
                if call.populated():  # a drain may take a while
                    await anyio.to_thread.run_sync(call.close)
                else:
                    call.close()  # empty groups: a few rmdirs, cheaper than a thread hop
            self._cleanup_gate(seq)

    async def _run_exec(self, seq: int, argv: Sequence[str], limits: Limits, feed: bytes | None,
                        cap: int, container: Any = None, group: Any = None) -> Outcome:
        """One gated exec in ``container`` (the session's), inside a new call group of ``group``."""
        container = container or self.container
        group = group or self.session
        t0 = time.perf_counter()
        fifo, fifo_in, stdin_arg = self._gate_files(seq, feed)
        call = group.call(_call_limits(limits))
        try:
            async with anyio.create_task_group() as tg:
                p = await self._launch(seq, ["/bin/sh", "-c", _GATE_SCRIPT, fifo_in, stdin_arg, *argv],
                                       call, group, container, tg)
                await anyio.to_thread.run_sync(_release, fifo, time.monotonic() + _FIND_TIMEOUT, b"go\n")
                return await self._finish(p, limits, t0, cap)
        finally:
            await self._close_call(call, seq)

    # -- prewarmed execs (a session used with ``async with``) ------------------------------------

    async def _prewarm(self) -> None:
        tg = self._tg
        if tg is None or self._closed:  # the session is ending
            return
        seq = next(self._seq)
        fifo = self.gate_dir / f"call-{seq}.fifo"
        os.mkfifo(fifo, 0o600)
        call = self.session.call(CallLimits())
        try:
            p = await self._launch(seq, ["/bin/sh", "-c", _WAITER, f"{GATE}/call-{seq}.fifo"], call,
                                   self.session, self.container, tg)
        except SandboxError:
            await self._close_call(call, seq)
            if self._closing:  # the session ended while this one was being started
                return
            raise
        except BaseException:
            await self._close_call(call, seq)
            raise
        if self._closed or self._tg is None:
            await self._close_call(call, seq)
        else:
            self._warm.append(p)

    @property
    def prewarmed(self) -> int:
        """Prewarmed execs ready now."""
        return sum(1 for p in self._warm if not p.done.is_set())

    def _take_warm(self, limits: Limits, argv: Sequence[str]) -> _Pending | None:
        if self._tg is None or any("\n" in a or "\0" in a for a in argv):
            return None
        while self._warm:
            p = self._warm.pop(0)
            if not p.done.is_set():
                return p
            self._tg.start_soon(self._close_call, p.call, p.seq)
            self._refill()
        return None

    def _refill(self) -> None:
        if self._tg is not None and not self._closed:
            self._tg.start_soon(self._prewarm)

    async def _run_warm(self, p: _Pending, argv: Sequence[str], limits: Limits, feed: bytes | None,
                        cap: int) -> Outcome | None:
        t0 = time.perf_counter()
        try:
            try:
                p.call.update(_call_limits(limits))
            except SandboxError:  # e.g. a memory limit below what the waiting shell holds
                p.call.kill()
                return None
            self.warm_hits += 1
            redirect = "</dev/null"
            if feed is not None:
                (self.gate_dir / f"call-{p.seq}.in").write_bytes(feed)
                redirect = f"<{GATE}/call-{p.seq}.in"
            line = ("mkdir -p /tmp/work && cd /tmp/work || exit 125; exec "
                    + " ".join(shlex.quote(a) for a in argv) + f" {redirect}\n").encode()
            await anyio.to_thread.run_sync(_release, p.fifo, time.monotonic() + _FIND_TIMEOUT, line)
            return await self._finish(p, limits, t0, cap)
        finally:
            await self._close_call(p.call, p.seq)
            self._refill()

    async def _run_per_call(self, seq: int, argv: Sequence[str], limits: Limits, feed: bytes | None,
                            cap: int) -> Outcome:
        """The fallback: a container of its own (the call's mounts and limits), one gated exec in it.

        The container idles (``sleep infinity``) and the command is an exec, as in a session: the
        container's cgroup, holding the call's group, then outlives the command until its usage
        has been read.
        """
        t0 = time.perf_counter()
        container = None
        group: _ContainerGroup | None = None
        try:
            container = await anyio.to_thread.run_sync(lambda: self.backend._run_container(
                ["sleep", "infinity"], self.gate_dir, limits, session=False, label=self.label))
            self._containers.append(container)
            await anyio.to_thread.run_sync(container.reload)
            pid = int(container.attrs["State"]["Pid"])
            group = _ContainerGroup(self.backend.driver, _container_dirs(pid, self.backend.roots),
                                    f"container-{container.short_id}")
            o = await self._run_exec(seq, argv, limits, feed, cap, container, group)
            o.wall_seconds = time.perf_counter() - t0
            o.usage = {**(o.usage or {}), "per_call_container": True}
            return o
        finally:
            with anyio.CancelScope(shield=True):
                if group is not None:
                    await anyio.to_thread.run_sync(group.close)
                if container is not None:
                    await anyio.to_thread.run_sync(self.backend._remove, container)
                    with contextlib.suppress(ValueError):
                        self._containers.remove(container)

    def close(self) -> None:
        """Kill the session's calls, remove its containers and gate directory. Idempotent."""
        if self._closed:
            return
        self._closed = self._closing = True
        session = getattr(self, "session", None)
        if session is not None:
            session.close()
        for c in list(self._containers):
            self.backend._remove(c)
        self._containers.clear()
        shutil.rmtree(self.gate_dir, ignore_errors=True)

    async def __aenter__(self) -> DockerSandbox:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        for _ in range(self.backend.prewarm):
            self._tg.start_soon(self._prewarm)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing = True
        tg, self._tg = self._tg, None
        warm, self._warm = self._warm, []
        for p in warm:  # their execs end once their shells are killed
            p.call.kill()
        if tg is not None:
            tg.cancel_scope.cancel()
            await tg.__aexit__(None, None, None)
        for p in warm:
            await self._close_call(p.call, p.seq)
        await anyio.to_thread.run_sync(self.close)


class DockerBackend:
    """``docker`` backend: a container per session, each call an exec in its own sub-cgroup.

    Args:
        base_url: engine URL (``unix:///...``); see the module docstring for the default.
        image: the image (``scripts/podman-service`` builds `DEFAULT_IMAGE` offline).
        session_memory: the session container's memory limit, bytes (None: no container-wide
            limit; each call still has its own).
        session_cpus: the session container's CPU cores (None: no limit).
        session_pids: the session container's pids limit.
        driver: the cgroup driver (for the host's layout); this process's shared one by default.
        prewarm: execs kept started (behind their gate, in their call group) per session used with
            ``async with``: a call then skips the engine's exec start (~0.1 s with podman).

    Raises:
        SandboxUnavailable: the ``docker`` SDK is not installed, no engine answers, the image is
            missing, or cgroups cannot be created (each message names the fix).
    """

    name = "docker"

    def __init__(self, base_url: str | None = None, image: str = DEFAULT_IMAGE, *,
                 session_memory: int | None = None, session_cpus: float | None = None,
                 session_pids: int = 1024, driver: CgroupDriver | None = None, prewarm: int = 2) -> None:
        try:
            import docker
        except ImportError:
            raise SandboxUnavailable("the docker backend needs the docker SDK: pip install 'agentrt[docker]'") from None
        url = find_docker_host(base_url)
        if url is None:
            raise SandboxUnavailable(
                "no Docker Engine API socket found (AGENTRT_DOCKER_HOST, DOCKER_HOST, <data dir>/podman/"
                "podman.sock, /run/podman/podman.sock, /var/run/docker.sock): start Podman's API with "
                "scripts/podman-service, or set DOCKER_HOST")
        self.base_url = url
        try:
            self.client = docker.DockerClient(base_url=url, timeout=60, max_pool_size=64)
            self.client.ping()
        except (docker.errors.DockerException, OSError) as exc:  # requests' errors are OSErrors
            raise SandboxUnavailable(f"no Docker Engine API answers at {url}: {exc}; start Podman's API with "
                                     "scripts/podman-service (or a Docker engine), or set DOCKER_HOST") from None
        #: what the engine's client raises (its HTTP layer's errors are OSErrors)
        self.errors: tuple[type[BaseException], ...] = (docker.errors.DockerException, OSError)
        self.image = image
        try:
            self.client.images.get(image)
        except docker.errors.ImageNotFound:
            raise SandboxUnavailable(f"image {image!r} is not in the engine at {url}: scripts/podman-service builds "
                                     "it offline (podman import)") from None
        self.driver = driver or shared_driver()
        self.roots = _mount_roots(self.driver)
        self.session_memory = session_memory
        self.session_cpus = session_cpus
        self.session_pids = session_pids
        self.prewarm = prewarm
        self.runtime = runtime_id()
        self.ro_paths = _python_binds()
        self.reaped = self._reap_stale()

    def _reap_stale(self) -> int:
        n = 0
        try:
            old = self.client.containers.list(all=True, filters={"label": _LABEL_RUNTIME})
        except self.errors as exc:
            log.warning("cannot list containers to reap: %s", exc)
            return 0
        for c in old:
            rid = c.labels.get(_LABEL_RUNTIME, "")
            if rid != self.runtime and not _alive(rid):
                self._remove(c)
                n += 1
        for d in Path(tempfile.gettempdir()).glob("agentrt-gate-*"):
            m = re.fullmatch(r"agentrt-gate-(\d+-\d+)-.*", d.name)
            if m and not _alive(m.group(1)):
                shutil.rmtree(d, ignore_errors=True)
        return n

    def _run_container(self, command: list[str], gate_dir: Path, limits: Limits, *, session: bool,
                       label: str | None) -> Any:
        volumes: dict[str, dict[str, str]] = {"/usr": {"bind": "/usr", "mode": "ro"},
                                              str(gate_dir): {"bind": GATE, "mode": "ro"}}
        for p in self.ro_paths:
            volumes[str(p)] = {"bind": str(p), "mode": "ro"}
        for p in limits.read_only_paths:
            q = os.path.abspath(p)
            volumes[q] = {"bind": q, "mode": "ro"}
        for p in limits.writable_paths:
            q = os.path.abspath(p)
            volumes[q] = {"bind": q, "mode": "rw"}
        tmp = "rw,mode=1777" + (f",size={limits.disk}" if limits.disk is not None else "")
        opts: dict[str, Any] = dict(
            detach=True, network_mode="none", read_only=True, tmpfs={"/tmp": tmp},
            volumes=volumes, cap_drop=["ALL"], security_opt=["no-new-privileges"], hostname="sandbox",
            environment=CLEAN_ENV.copy(), working_dir="/tmp",
            labels={_LABEL_RUNTIME: self.runtime, _LABEL_SESSION: label or ""})
        if session:
            opts.update(pids_limit=self.session_pids)
            if self.session_memory is not None:
                opts.update(mem_limit=self.session_memory, memswap_limit=self.session_memory)
            if self.session_cpus is not None:
                opts.update(nano_cpus=int(self.session_cpus * 1e9))
        else:
            # the container's own limits as a second fence around the call's sub-group
            opts.update(pids_limit=limits.pids + SANDBOX_PIDS, mem_limit=limits.memory_max,
                        memswap_limit=limits.memory_max, nano_cpus=int(limits.cpu * 1e9))
        try:
            return self.client.containers.run(self.image, command, **opts)
        except self.errors as exc:
            raise SandboxError(f"cannot start a container from {self.image} at {self.base_url}: {exc}") from exc

    def _remove(self, container: Any) -> None:
        try:
            container.remove(force=True)
        except self.errors as exc:
            if "No such container" not in str(exc) and "404" not in str(exc):
                log.warning("container %s not removed: %s", getattr(container, "short_id", "?"), exc)

    def start(self, session: str | None = None) -> DockerSandbox:
        """Start a session's container (~0.2 s with podman).

        Raises:
            SandboxError: the container could not be started.
        """
        return DockerSandbox(self, session)

