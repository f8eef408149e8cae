"""The ``namespace`` backend: each tool call in bubblewrap namespaces, inside its own cgroup.

Per call: a cgroup (`agentrt.cgroups`) with the call's memory, CPU and pids limits, joined by the
launcher *before* bubblewrap execs; bubblewrap with its own mount, pid, network, IPC and UTS
namespaces, ``--die-with-parent``, every capability dropped, the host's
root read-only, ``/root``, ``/home``, ``/run`` and ``/var/tmp`` hidden behind empty tmpfs,
``/etc/shadow``-like files hidden, a fresh ``/tmp`` (sized by ``Limits.disk``) holding the call's
writable work dir ``/tmp/work``, ``Limits.read_only_paths`` / ``writable_paths`` bound at the same
paths, and a clean environment. At ``Limits.timeout`` the whole group is killed (v2
``cgroup.kill`` or v1 freezer + SIGKILL), children included.

Network (``Limits.network``): ``"none"`` and ``"loopback"`` both give the call a private network
namespace whose only interface is its own loopback (bubblewrap always brings ``lo`` up), so the
call reaches no host and no outside address, only sockets it opened itself. An allow-list of
``host:port`` keeps the host's network namespace and is enforced in the kernel by eBPF cgroup
connect4/6 and sendmsg4/6 programs attached to the call's v2 cgroup (`agentrt.cgroups.NetPolicy`:
any other destination fails at once with EPERM, children inherit it, it is detached when the call
ends); where eBPF is unavailable such a call is refused with ``denied`` (the reason in the
message) rather than run with more (or less) network than it asked for.

eBPF accounting (where BCC works; ``NamespaceBackend(ebpf=...)``): each call's usage also holds
the monitor's per-call counters (``ebpf_execs``, ``ebpf_opens``, ``ebpf_read_bytes``, ...; see
`agentrt.cgroups.EbpfCall`), and a call may carry ``ebpf_budgets`` (counter -> `Budget`): past
one, the kernel stops the call and the runtime raises the limit (up to the budget's ``max``) or
kills it; a killed call's result is ``limit_exceeded`` with the counter in the message.

Terminal injection (TIOCSTI, CVE-2017-5226): the launcher starts every call in a new session
(``setsid``) with pipes for stdin, stdout and stderr, so no sandboxed process has a controlling
terminal or a terminal descriptor. bubblewrap's own ``--new-session`` would only repeat that, and
costs ~5 ms per call on these hosts (measured with /tmp scripts, 60 alternating runs), so it is
not used.

No cgroup namespace: creating one from inside a non-root cgroup cost ~5 ms per call here (50
alternating runs: 20.2 vs 14.6 ms p50), and without it a program in the call sees its real group
in ``/proc/self/cgroup`` and can read its own limits under the read-only ``/sys/fs/cgroup`` (as
JVMs, Go and Node do to size themselves); the host's cgroup paths are not secrets.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import ByteReceiveStream, Process, TaskGroup

from agentrt.cgroups import (
    Budget,
    CallGroup,
    CallLimits,
    CgroupDriver,
    EbpfCall,
    EbpfDenied,
    SessionGroup,
    ebpf_parts,
    shim_argv,
)
from agentrt.errors import InvalidArguments, SandboxError, SandboxUnavailable
from agentrt.sandbox._base import ExecTarget, Outcome, outcome_result
from agentrt.sandbox._callable import WORKER_FILE, needed_paths, worker_request
from agentrt.tools import Limits, Tool, ToolResult, ToolUsage

__all__ = ["DeniedLimits", "NamespaceBackend", "NamespaceSandbox", "bwrap_argv"]

#: Host directories replaced by an empty tmpfs inside the sandbox (secrets, sockets, homes).
HIDDEN_DIRS = ("/root", "/home", "/run", "/var/tmp", "/tmp")
#: Host files replaced by an empty file inside the sandbox.
HIDDEN_FILES = ("/etc/shadow", "/etc/gshadow", "/etc/shadow-", "/etc/gshadow-", "/etc/sudoers")
#: The call's writable work directory inside the sandbox (on the call's private tmpfs).
WORKDIR = "/tmp/work"
#: Environment of every sandboxed process (nothing else of the host's leaks in).
CLEAN_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": WORKDIR, "TMPDIR": "/tmp",
             "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
#: Bytes of stdout and of stderr kept per call (the rest is counted, not kept).
OUTPUT_CAP = 1 << 20

#: Processes bubblewrap itself keeps in a call's cgroup (its monitor and the namespace's init),
#: added to ``Limits.pids`` so that the limit counts the tool's own processes.
SANDBOX_PIDS = 2

_driver: CgroupDriver | None = None


def call_limits(limits: Limits) -> CallLimits:
    """The cgroup limits of a call: `Limits` with pids.max raised by `SANDBOX_PIDS`."""
    c = CallLimits.from_limits(limits)
    return CallLimits(c.memory_max, c.memory_high, c.cpu, None if c.pids is None else c.pids + SANDBOX_PIDS)


class DeniedLimits(ValueError):
    """The call's limits ask for what this backend cannot give (a ``denied`` result)."""


def shared_driver() -> CgroupDriver:
    """This process's one `CgroupDriver` (created, and stale groups reaped, on first use)."""
    global _driver
    if _driver is None:
        _driver = CgroupDriver()
    return _driver


def _under(path: Path, dirs: Sequence[str]) -> bool:
    s = str(path)
    return any(s == d or s.startswith(d.rstrip("/") + "/") for d in dirs)


def python_paths() -> list[Path]:
    """Directories this Python needs (prefixes, sys.path) that lie under a hidden directory."""
    cands = [Path(sys.prefix), Path(sys.base_prefix), Path(os.path.realpath(sys.executable)).parent.parent]
    cands += [Path(p) for p in sys.path if p and os.path.isdir(p)]
    # agentrt itself: an editable install imports it from its checkout, which is on no sys.path
    # entry (a finder maps the name) and may lie under /tmp (a CI clone)
    cands.append(Path(__file__).resolve().parents[1])
    out: list[Path] = []
    for p in cands:
        p = Path(os.path.abspath(p))
        if _under(p, HIDDEN_DIRS) and not any(_under(p, [str(q)]) for q in out):
            out = [q for q in out if not _under(q, [str(p)])] + [p]
    return out


def bwrap_argv(limits: Limits, argv: Sequence[str], *, extra_ro: Sequence[Path] = (),
               workdir: Path | None = None, bwrap: str = "bwrap", net_hooks: bool = False) -> list[str]:
    """The bubblewrap command line for one call (see the module docstring for what it sets up).

    Args:
        limits: the call's limits (network, disk, read-only and writable paths).
        argv: the command to run inside.
        extra_ro: more host paths to show read-only (e.g. the Python the worker needs).
        workdir: a host directory to bind read-write as the work dir instead of the private one.
        net_hooks: the caller attaches eBPF connect hooks to the call's cgroup, so an allow-list
            keeps the host network namespace (no ``--unshare-net``).

    Raises:
        DeniedLimits: a read-only or writable path does not exist, or the network asks for
            an allow-list without ``net_hooks``.
    """
    allow_list = isinstance(limits.network, tuple) and bool(limits.network)
    if allow_list and not net_hooks:
        raise DeniedLimits(
            f"network allow-list {list(limits.network)} needs the eBPF connect hooks, which this "
            "sandbox does not have; use network='none' or 'loopback'")
    cmd = [bwrap, "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev"]
    for d in HIDDEN_DIRS:
        if os.path.isdir(d) and not os.path.islink(d):
            if d == "/tmp" and limits.disk is not None:
                cmd += ["--size", str(limits.disk)]
            cmd += ["--tmpfs", d]
    for f in HIDDEN_FILES:
        if os.path.isfile(f):
            cmd += ["--ro-bind", "/dev/null", f]
    for p in extra_ro:
        cmd += ["--ro-bind", str(p), str(p)]
    for p in limits.read_only_paths:
        if not os.path.exists(p):
            raise DeniedLimits(f"read-only path {p!r} does not exist")
        q = os.path.abspath(p)
        cmd += ["--ro-bind", q, q]
    for p in limits.writable_paths:
        if not os.path.exists(p):
            raise DeniedLimits(f"writable path {p!r} does not exist")
        q = os.path.abspath(p)
        cmd += ["--bind", q, q]
    if workdir is not None:
        cmd += ["--bind", str(workdir), str(workdir), "--chdir", str(workdir)]
    else:
        cmd += ["--dir", WORKDIR, "--chdir", WORKDIR]
    cmd += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", *([] if allow_list else ["--unshare-net"]),
            "--hostname", "sandbox", "--die-with-parent", "--cap-drop", "ALL", "--"]
    return cmd + list(argv)


def _visible(paths: Sequence[Path]) -> list[Path]:
    """Of ``paths``, those to bind read-only: under a hidden directory, never one itself."""
    out: set[Path] = set()
    for p in paths:
        p = Path(os.path.abspath(p))
        if p.exists() and _under(p, HIDDEN_DIRS) and str(p) not in HIDDEN_DIRS:
            out.add(p)
    # a path inside another one already bound adds nothing
    return sorted(p for p in out if not any(q != p and _under(p, [str(q)]) for q in out))


async def _pump(stream: ByteReceiveStream | None, buf: bytearray, cap: int) -> None:
    if stream is None:
        return
    while True:
        try:
            chunk = await stream.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            return
        if len(buf) < cap:
            buf += chunk[: cap - len(buf)]


async def _feed(proc: Any, data: bytes) -> None:
    try:
        await proc.stdin.send(data)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        pass  # the process exited (or closed stdin) before reading it all
    finally:
        await proc.stdin.aclose()


async def run_in_group(call: CallGroup, argv: Sequence[str], limits: Limits, stdin: bytes | None,
                       env: Mapping[str, str], cap: int = OUTPUT_CAP, ebpf: EbpfCall | None = None) -> Outcome:
    """Spawn ``argv`` joined to ``call``'s cgroups (before exec), supervise it, read usage.

    Kills the whole group at ``limits.timeout`` and on cancellation; the group is closed
    (drained and removed) before returning. Never raises for the process's own failure.
    """
    t0 = time.perf_counter()
    proc = await anyio.open_process(shim_argv(call.procs_files, argv),
                                    stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(env),
                                    start_new_session=True)
    return await supervise(call, proc, limits, stdin, cap, t0, ebpf)


async def supervise(call: CallGroup, proc: Process, limits: Limits, feed: bytes | None, cap: int,
                    t0: float, ebpf: EbpfCall | None = None) -> Outcome:
    """Feed ``proc``, read its output, wait for it under ``limits.timeout``, read usage, close.

    ``t0`` is when the call started (`time.perf_counter`), for its wall time; ``ebpf``'s
    counters are read (and its network policy detached) before the group is removed.
    """
    out, err = bytearray(), bytearray()
    timed_out = False
    stdin = feed
    try:
        with anyio.move_on_after(limits.timeout) as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_pump, proc.stdout, out, cap)
                tg.start_soon(_pump, proc.stderr, err, cap)
                if stdin is not None:
                    tg.start_soon(_feed, proc, stdin)
                await proc.wait()
        if scope.cancelled_caught:
            timed_out = True
    finally:
        with anyio.CancelScope(shield=True):
            if proc.returncode is None:
                call.kill()
                with anyio.move_on_after(5):
                    await proc.wait()
            wall = time.perf_counter() - t0
            await proc.aclose()
            cu = call.usage()
            ebpf_usage = ebpf.finish() if ebpf is not None else {}
            if timed_out or call.populated():
                await anyio.to_thread.run_sync(call.close)  # a drain may take a while
            else:
                call.close()  # empty groups: a few rmdirs, cheaper than a thread hop
    rc = proc.returncode if proc.returncode is not None else -9
    usage: dict[str, Any] = {
        "cpu_seconds": cu.cpu_seconds, "memory_peak_bytes": cu.memory_peak_bytes,
        "throttled_seconds": cu.throttled_seconds, "throttled_periods": cu.throttled_periods,
        "nr_periods": cu.nr_periods, "oom_kills": cu.oom_kills, "pids_peak": cu.pids_peak,
        "pids_max_hits": cu.pids_max_hits, **ebpf_usage,
    }
    return Outcome(returncode=rc, stdout=out.decode(errors="replace"), stderr=err.decode(errors="replace"),
                   wall_seconds=wall, timed_out=timed_out, oom_kills=cu.oom_kills, usage=usage)


def answer_result(o: Outcome, limits: Limits, what: str) -> ToolResult:
    """Map a worker's `Outcome` (its JSON answer on stdout) to the callable's `ToolResult`."""
    answer: dict[str, Any] | None = None
    for line in reversed(o.stdout.strip().splitlines()):
        try:
            answer = json.loads(line)
            break
        except ValueError:
            continue
    if o.oom_kills or o.timed_out or answer is None:
        r = outcome_result(o, limits, value=None, raw_argv=False)
        if r.ok:  # exited without an answer, not by a limit
            tail = "\n".join(o.stderr.strip().splitlines()[-3:])
            return ToolResult(ok=False, error_kind="tool_error", usage=r.usage,
                              error=f"{what}: the sandbox worker gave no answer (exit status "
                                    f"{o.returncode}): {tail or '(no stderr)'}")
        return r
    usage = outcome_result(o, limits, value=None, raw_argv=False).usage
    usage = usage.model_copy(update={"stderr_tail": o.stderr[-2000:]} if o.stderr else {})
    if answer.get("ok"):
        return ToolResult(ok=True, value=answer.get("value"), usage=usage)
    return ToolResult(ok=False, error_kind="tool_error", error=answer.get("error") or "failed", usage=usage)


#: What a prewarmed sandbox runs while it waits: read one shell-quoted command line, exec it.
WAITER = ["/bin/sh", "-c", 'IFS= read -r line || exit 125; eval "exec $line"']


@dataclass
class _Warm:
    """A prewarmed call: its cgroup (no limits yet) and bubblewrap running `WAITER` inside it."""

    call: CallGroup
    proc: Process


class NamespaceSandbox:
    """One session's namespace sandbox: a session cgroup; each `exec` gets a call cgroup.

    Used as ``async with backend.start() as sandbox:``, it keeps ``backend.prewarm`` calls
    prewarmed: a call cgroup with bubblewrap already set up (namespaces, mounts) and a shell
    waiting inside for its command. A call whose mounts are the session's default (no extra
    read-only or writable paths, no disk limit) takes one: its limits are written into the
    waiting group, its command line is sent, and the shell execs it, so the call does not wait
    for the sandbox to be built; a new one is prewarmed in the background. Other calls, and every
    call of a sandbox used without ``async with``, are built on demand.

    Attributes:
        session: the session's cgroup (its calls are its children).
        workdir: host directory bound as every call's work dir, or None for a private one per call.
        warm_hits: calls that started in a prewarmed sandbox (the rest were built on demand).
    """

    def __init__(self, backend: NamespaceBackend, session: SessionGroup, workdir: Path | None) -> None:
        self.backend = backend
        self.session = session
        self.workdir = workdir
        self._closed = False
        self.label: str | None = None
        self.warm_hits = 0
        self._warm: list[_Warm] = []
        self._tg: TaskGroup | None = None
        self._warm_argv = bwrap_argv(Limits(), WAITER, extra_ro=backend.python_ro, workdir=workdir,
                                     bwrap=backend.bwrap)

    async def _prewarm(self) -> None:
        call = self.session.call(CallLimits())
        try:
            proc = await anyio.open_process(shim_argv(call.procs_files, self._warm_argv), stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=CLEAN_ENV,
                                            start_new_session=True)
        except BaseException:
            call.close()
            raise
        if self._closed:
            call.close()
            await proc.aclose()
        else:
            self._warm.append(_Warm(call, proc))

    @property
    def prewarmed(self) -> int:
        """Prewarmed calls ready now."""
        return sum(1 for w in self._warm if w.proc.returncode is None)

    def _take_warm(self, limits: Limits, argv: Sequence[str], extra: Sequence[Path]) -> _Warm | None:
        if (self._tg is None or limits.read_only_paths or limits.writable_paths or limits.disk is not None
                or isinstance(limits.network, tuple)  # prewarmed sandboxes have a private network
                or list(extra) != self.backend.python_ro or any("\n" in a or "\0" in a for a in argv)):
            return None
        while self._warm:
            w = self._warm.pop(0)
            if w.proc.returncode is None:
                return w
            w.call.close()
            self._refill()
        return None

    def _refill(self) -> None:
        # after the call, not before: spawning forks in the event loop's thread (~1-4 ms here),
        # which would otherwise delay the very call that took the prewarmed sandbox
        if self._tg is not None and not self._closed:
            self._tg.start_soon(self._prewarm)

    async def _run_warm(self, w: _Warm, argv: Sequence[str], limits: Limits, stdin: bytes | None,
                        cap: int, budgets: Mapping[str, Budget]) -> Outcome | None:
        t0 = time.perf_counter()
        try:
            w.call.update(call_limits(limits))
        except SandboxError:  # e.g. a memory limit below what the waiting sandbox holds
            w.call.close()
            await w.proc.aclose()
            self._refill()
            return None
        self.warm_hits += 1
        line = (" ".join(shlex.quote(a) for a in argv) + "\n").encode()
        # counted from here: what the waiting sandbox did before the call is not the call's
        ebpf = EbpfCall.begin(w.call, monitor=self.backend.ebpf_monitor, budgets=budgets)
        try:
            return await supervise(w.call, w.proc, limits, line + (stdin or b""), cap, t0, ebpf)
        finally:
            ebpf.finish()
            self._refill()

    async def __aenter__(self) -> NamespaceSandbox:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        for _ in range(self.backend.prewarm):
            self._tg.start_soon(self._prewarm)
        return self

    async def __aexit__(self, *exc: object) -> None:
        tg, self._tg = self._tg, None
        if tg is not None:
            tg.cancel_scope.cancel()
            await tg.__aexit__(None, None, None)
        warm, self._warm = self._warm, []
        for w in warm:
            w.call.close()
            await w.proc.aclose()
        self.close()

    async def exec(self, target: ExecTarget, limits: Limits | None = None, stdin: bytes | None = None,
                   *, args: Mapping[str, Any] | None = None,
                   ebpf_budgets: Mapping[str, Budget] | None = None) -> ToolResult:
        """Run an argv, a `Tool` or a callable as one sandboxed call (see `Sandbox.exec`).

        ``ebpf_budgets`` (counter -> `agentrt.cgroups.Budget`; default: the backend's) are
        guarded in the kernel; a call killed at one is ``limit_exceeded``. A call with budgets or
        a network allow-list is ``denied`` where eBPF is unavailable (the message says why).
        """
        if self._closed:
            raise SandboxError("this sandbox is closed")
        if limits is None:
            limits = target.limits if isinstance(target, Tool) else Limits()
        is_argv = isinstance(target, (list, tuple))
        name = target.name if isinstance(target, Tool) else (
            str(target[0]) if is_argv and target else getattr(target, "__qualname__", "callable"))
        allow: list[str] | None = None
        pol = None
        try:
            if is_argv:
                if not target:
                    raise InvalidArguments("empty command")
                # this Python stays runnable inside (its prefix may lie under a hidden /root)
                argv, extra, feed = [str(a) for a in target], self.backend.python_ro, stdin
            else:
                req = worker_request(target, args)  # type: ignore[arg-type]
                extra = _visible(python_paths() + needed_paths(req) + [Path(WORKER_FILE).parent] + (
                    [Path(req["file"])] if req.get("file") else []))
                argv, feed = [sys.executable, "-s", WORKER_FILE], json.dumps(req).encode()
            budgets = dict(self.backend.ebpf_budgets if ebpf_budgets is None else ebpf_budgets)
            allow = list(limits.network) if isinstance(limits.network, tuple) and limits.network else None
            pol = self.backend.net_policy() if allow is not None else None
            cmd = bwrap_argv(limits, argv, extra_ro=extra, workdir=self.workdir, bwrap=self.backend.bwrap,
                             net_hooks=pol is not None)
            if budgets and self.backend.ebpf_monitor is None:
                raise DeniedLimits(f"budgets {sorted(budgets)} need the eBPF monitor: "
                                   f"{self.backend.ebpf_unavailable or 'eBPF is off'}")
        except DeniedLimits as exc:
            if allow is not None and pol is None:
                exc = DeniedLimits(f"{exc} ({self.backend.ebpf_unavailable or 'eBPF is off'})")
            return ToolResult.failure("denied", f"{name}: {exc}", ToolUsage())
        except InvalidArguments as exc:
            return ToolResult.failure("invalid_args", str(exc), ToolUsage())
        cap = OUTPUT_CAP if is_argv else 64 * OUTPUT_CAP
        warm = self._take_warm(limits, argv, extra)
        o = await self._run_warm(warm, argv, limits, feed, cap, budgets) if warm is not None else None
        if o is None:
            call = self.session.call(call_limits(limits))
            try:
                try:
                    ebpf = EbpfCall.begin(call, monitor=self.backend.ebpf_monitor, net_policy=pol, allow=allow,
                                          budgets=budgets, unavailable=self.backend.ebpf_unavailable)
                except EbpfDenied as exc:
                    return ToolResult.failure("denied", f"{name}: {exc}", ToolUsage())
                try:
                    o = await run_in_group(call, cmd, limits, feed, CLEAN_ENV, cap=cap, ebpf=ebpf)
                finally:
                    ebpf.finish()
            finally:
                if not call._closed:
                    call.close()
        r = outcome_result(o, limits) if is_argv else answer_result(o, limits, name)
        exceeded = (o.usage or {}).get("ebpf_limit_exceeded")
        if exceeded:
            r = r.model_copy(update={"ok": False, "error_kind": "limit_exceeded", "error": f"{name}: {exceeded}"})
        return r

    def close(self) -> None:
        """Kill and remove whatever the session still holds (prewarmed calls too). Idempotent."""
        if not self._closed:
            self._closed = True
            for w in self._warm:
                w.call.close()
            self.session.close()


class NamespaceBackend:
    """``namespace`` backend: bubblewrap namespaces + per-call cgroups (the default on Linux).

    Args:
        workdir: a host directory every call of a session sees read-write as its work dir
            (shared across calls); None gives each call its own private ``/tmp/work``.
        driver: the cgroup driver; this process's shared one by default.
        prewarm: calls kept prewarmed per session used with ``async with`` (see `NamespaceSandbox`).
        ebpf: per-call eBPF counters (`agentrt.cgroups.BpfMonitor`, shared by the process):
            None = where available (``ebpf_unavailable`` says why not), True = required,
            False = off. Network allow-lists load the eBPF connect hooks on first use either way.
        ebpf_budgets: default budgets of every call (counter -> `agentrt.cgroups.Budget`).

    Raises:
        SandboxUnavailable: bubblewrap is missing or cannot create namespaces, or cgroups
            cannot be created, or ``ebpf=True`` and eBPF cannot start (the message names the fix).
    """

    name = "namespace"

    def __init__(self, workdir: str | os.PathLike[str] | None = None, driver: CgroupDriver | None = None,
                 prewarm: int = 2, ebpf: bool | None = None, ebpf_budgets: Mapping[str, Budget] | None = None) -> None:
        bwrap = shutil.which("bwrap")
        if bwrap is None:
            raise SandboxUnavailable("bubblewrap (bwrap) is not installed: apt-get install -y bubblewrap")
        self.bwrap = bwrap
        self.driver = driver or shared_driver()
        self.workdir = Path(workdir).resolve() if workdir is not None else None
        self.python_ro = _visible(python_paths())
        self.prewarm = prewarm
        self.ebpf_budgets = dict(ebpf_budgets or {})
        self.ebpf_monitor, _, self.ebpf_unavailable = ebpf_parts(ebpf)

    def net_policy(self) -> Any:
        """The process's eBPF network policy (loaded on first use), or None (see ``ebpf_unavailable``)."""
        _, pol, why = ebpf_parts(False, net=True)
        if pol is None:
            self.ebpf_unavailable = why
        return pol

    def start(self, session: str | None = None) -> NamespaceSandbox:
        """Open a session's sandbox (creates its session cgroup, ``session-<n>``).

        ``session`` is a label for logs; cgroup names stay unique whatever it is.
        """
        sb = NamespaceSandbox(self, self.driver.session(), self.workdir)
        sb.label = session
        return sb
