"""The cgroup driver: a hierarchy ``agentrt-<runtime id>/session-<n>/call-<n>`` per tool call.

Per call it sets the hard memory limit (intent x burst), the soft limit (intent), a CFS CPU quota
and pids.max, reads usage back as a typed record, and kills, drains and removes the group.

Two layouts are driven (see `detect_layout`):

- **v2** (controllers available): ``memory.max`` = hard limit, ``memory.high`` = intent (the
  kernel throttles and reclaims above it), ``memory.oom.group = 1``, ``cpu.max``, ``pids.max``;
  peak from ``memory.peak``, OOM kills from ``memory.events`` ``oom_kill``.
- **hybrid** (v1 controllers + a v2 tree without controllers, as on these machines): v1
  ``memory.limit_in_bytes`` = hard limit (and ``memory.memsw.limit_in_bytes`` equal to it, so
  swap cannot extend it); v1 has no ``memory.high``: its closest honest equivalent is
  ``memory.soft_limit_in_bytes`` = intent, which makes the kernel reclaim the call back toward
  its intent first *when the host is under memory pressure*, but neither throttles nor
  reclaims otherwise (cgroup-v1 memory.txt, section 7). `CallGroup.soft_limit_enforced` says
  which one a call got. ``cpu.cfs_quota_us``/``cpu.cfs_period_us``, ``pids.max``; peak from
  ``memory.max_usage_in_bytes``; OOM kills from ``memory.oom_control``'s ``oom_kill`` counter
  (``memory.failcnt`` counts limit hits, not kills, and stays 0 when a memsw limit is set).
  Each call also gets a v2 directory (no controllers) that gives it an identity (its inode is
  the eBPF cgroup id), CPU time (core ``cpu.stat`` ``usage_usec``), ``cgroup.kill`` and PSI
  files; without a v2 tree, v1 ``cpuacct`` gives CPU time and v1 ``freezer`` a race-free kill.

Liveness and reaping: the runtime id is ``<pid>-<start time in clock ticks>`` of the process
that created the hierarchy (the pid file, encoded in the name). At start the driver removes every
``agentrt-*`` group under its base whose owner is no longer alive (killing what still runs in it),
so a runtime killed with SIGKILL leaves nothing behind past the next start.
"""

from __future__ import annotations

import atexit
import errno
import itertools
import logging
import os
import re
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from agentrt.cgroups._layout import CgroupLayout, detect_layout
from agentrt.errors import SandboxError, SandboxUnavailable

__all__ = [
    "CallGroup",
    "CallLimits",
    "CgroupDriver",
    "CgroupUsage",
    "SessionGroup",
    "reap_stale",
    "runtime_id",
]

log = logging.getLogger(__name__)

#: CFS period used for CPU quotas, microseconds (the kernel's default, 100 ms).
CFS_PERIOD_US = 100_000
#: Smallest quota the kernel accepts, microseconds (kernel/sched/core.c: min_cfs_quota_period).
MIN_CFS_QUOTA_US = 1_000
_NAME = re.compile(r"^agentrt-(\d+)-(\d+)$")


def _start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (field 22 of /proc/<pid>/stat), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name may hold spaces and parentheses: split after the last ')'
    return int(stat.rpartition(")")[2].split()[19])


def runtime_id(pid: int | None = None) -> str:
    """This process's runtime id, ``"<pid>-<start ticks>"``: unique across pid reuse."""
    pid = os.getpid() if pid is None else pid
    return f"{pid}-{_start_ticks(pid)}"


def _alive(rid: str) -> bool:
    m = re.fullmatch(r"(\d+)-(\d+)", rid)
    if not m:
        return False
    return _start_ticks(int(m.group(1))) == int(m.group(2))


@dataclass(frozen=True)
class CallLimits:
    """The limits one call's group gets.

    Attributes:
        memory_max: hard memory limit, bytes (``memory.max`` / ``memory.limit_in_bytes``); None
            for no limit.
        memory_high: soft limit, bytes (``memory.high``; on v1 ``memory.soft_limit_in_bytes``).
        cpu: CPU cores (fractional), as a CFS quota of ``cpu * 100 ms`` per 100 ms; None for none.
        pids: ``pids.max``; None for no limit.
    """

    memory_max: int | None = None
    memory_high: int | None = None
    cpu: float | None = None
    pids: int | None = None

    @classmethod
    def from_limits(cls, limits: object) -> CallLimits:
        """From a `agentrt.tools.Limits`: max = memory x memory_burst, high = memory."""
        return cls(memory_max=limits.memory_max, memory_high=limits.memory,  # type: ignore[attr-defined]
                   cpu=limits.cpu, pids=limits.pids)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class CgroupUsage:
    """What one call's group used, read just before removal. ``None``: not measurable here.

    Attributes:
        memory_peak_bytes: peak memory charged (v1 ``memory.max_usage_in_bytes``, v2
            ``memory.peak``), bytes.
        cpu_seconds: user + system CPU time (v1 ``cpuacct.usage``, v2 ``cpu.stat usage_usec``), s.
        nr_periods: CFS periods in which the group ran (``cpu.stat``).
        throttled_periods: periods in which it was throttled (``nr_throttled``).
        throttled_seconds: total time throttled (``throttled_time`` ns / ``throttled_usec``), s.
        oom_kills: processes the kernel's OOM killer killed in the group (``oom_kill`` counter).
        pids_peak: most processes (and threads) at once (``pids.peak``), when the kernel has it.
        pids_max_hits: forks refused at ``pids.max`` (``pids.events`` ``max``).
    """

    memory_peak_bytes: int | None = None
    cpu_seconds: float | None = None
    nr_periods: int | None = None
    throttled_periods: int | None = None
    throttled_seconds: float | None = None
    oom_kills: int | None = None
    pids_peak: int | None = None
    pids_max_hits: int | None = None


def _read(path: Path | str) -> str | None:
    # raw os calls: cgroupfs files are tiny, and Path.read_text's text-I/O stack costs more than
    # the read itself (tens of these per call)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 65536):  # seq files answer at most a page or so per read
            chunks.append(chunk)
        return b"".join(chunks).decode()
    except OSError:
        return None
    finally:
        os.close(fd)


def _keyed(text: str | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def _write(path: Path | str, value: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
    except OSError as exc:
        raise SandboxError(f"cannot write {value!r} to {path}: {exc.strerror or exc}") from exc


def _procs(d: Path) -> list[int]:
    text = _read(d / "cgroup.procs")
    return [int(p) for p in text.split()] if text else []


def _kill_tree(dirs: list[Path], v2: Path | None, freezer: Path | None) -> None:
    """SIGKILL every process in the groups ``dirs`` (and their sub-groups)."""
    if v2 is not None and (v2 / "cgroup.kill").exists():
        try:  # kills the whole v2 sub-tree at once, new forks included (kernel >= 5.14)
            (v2 / "cgroup.kill").write_text("1")
        except OSError as exc:
            log.debug("cgroup.kill on %s failed: %s", v2, exc)
    frozen = False
    if freezer is not None and (freezer / "freezer.state").exists() and any(_procs(freezer)):
        # freeze first, so nothing forks between reading cgroup.procs and the kill
        try:
            (freezer / "freezer.state").write_text("FROZEN")
            frozen = True
        except OSError:
            frozen = False
    for d in dirs:
        for sub in _subdirs(d) + [d]:
            for pid in _procs(sub):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    if frozen and freezer is not None:
        try:  # SIGKILL is delivered only once the tasks thaw
            (freezer / "freezer.state").write_text("THAWED")
        except OSError:
            pass


def _subdirs(d: Path) -> list[Path]:
    """Every sub-group of ``d``, deepest first (cgroupfs holds many files: skip them cheaply)."""
    out: list[Path] = []
    try:
        with os.scandir(d) as it:
            children = [Path(e.path) for e in it if e.is_dir(follow_symlinks=False)]
    except OSError:
        return out
    for c in children:
        out += _subdirs(c) + [c]
    return out


def _populated(dirs: list[Path], v2: Path | None) -> bool:
    if v2 is not None:
        ev = _keyed(_read(v2 / "cgroup.events"))
        if ev.get("populated", 0):
            return True
    for d in dirs:
        if _procs(d):
            return True
        if any(_procs(sub) for sub in _subdirs(d)):
            return True
    return False


def _rmdir_tree(d: Path, deadline: float) -> None:
    try:  # the usual case: a call's group has no sub-groups
        d.rmdir()
        return
    except FileNotFoundError:
        return
    except OSError:
        pass
    for sub in _subdirs(d):
        _rmdir(sub, deadline)
    _rmdir(d, deadline)


def _rmdir(d: Path, deadline: float) -> None:
    delay = 0.0005
    while True:
        try:
            d.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            # EBUSY: a task that was just killed is still exiting (pid namespaces die async), or
            # one joined after the group was drained (a launch cancelled mid-spawn): kill it too
            if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY) or time.monotonic() > deadline:
                raise SandboxError(f"cannot remove cgroup {d}: {exc.strerror}") from exc
            for pid in _procs(d):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        time.sleep(delay)
        delay = min(delay * 2, 0.02)


def _destroy(dirs: list[Path], v2: Path | None, freezer: Path | None, timeout: float) -> None:
    """Kill everything in the groups, wait until they are empty, remove them (leaves first)."""
    deadline = time.monotonic() + timeout
    existing = [d for d in dirs if d.exists()]
    if v2 is not None and not v2.exists():
        v2 = None
    if freezer is not None and not freezer.exists():
        freezer = None
    delay = 0.0002
    while _populated(existing, v2):
        _kill_tree(existing, v2, freezer)
        if time.monotonic() > deadline:
            raise SandboxError(f"processes still run in {existing[0] if existing else v2} after "
                               f"{timeout:g} s of SIGKILL")
        time.sleep(delay)
        delay = min(delay * 2, 0.02)
    for d in existing + ([v2] if v2 is not None else []):
        _rmdir_tree(d, deadline)


class CallGroup:
    """One tool call's group in every hierarchy of the layout.

    A process joins it *before it execs* by writing its pid into each of `procs_files`
    (`agentrt.cgroups.shim_argv` builds a launcher that does so). Use as a context manager or
    call `close` (kill, drain, remove); `usage` reads the counters (valid until `close`).

    Attributes:
        name: ``call-<n>``.
        limits: the limits written.
        dirs: controller (``"memory"``, ``"cpu"``, ..., ``"v2"``) -> directory.
        soft_limit_enforced: True on v2 (``memory.high`` throttles); False on v1, where the soft
            limit only applies under host memory pressure.
    """

    def __init__(self, session: SessionGroup, name: str, limits: CallLimits) -> None:
        self.session = session
        self.name = name
        self.limits = limits
        self.dirs: dict[str, Path] = {c: d / name for c, d in session.dirs.items()}
        self._closed = False
        self.soft_limit_enforced = session.driver.layout.kind == "v2"
        made: list[Path] = []
        try:
            for d in dict.fromkeys(self.dirs.values()):
                d.mkdir()
                made.append(d)
            self._apply(limits)
        except (OSError, SandboxError) as exc:
            for d in reversed(made):
                try:
                    d.rmdir()
                except OSError:
                    pass
            if isinstance(exc, SandboxError):
                raise
            raise SandboxError(f"cannot create cgroup {name} under {session.name}: {exc}") from exc

    def _apply(self, lim: CallLimits) -> None:
        d = self.dirs
        if self.session.driver.layout.kind == "v2":
            v2 = d["v2"]
            if lim.memory_max is not None:
                _write(v2 / "memory.max", str(lim.memory_max))
                if (v2 / "memory.swap.max").exists():
                    _write(v2 / "memory.swap.max", "0")
            if lim.memory_high is not None:
                _write(v2 / "memory.high", str(lim.memory_high))
            if (v2 / "memory.oom.group").exists():
                _write(v2 / "memory.oom.group", "1")
            if lim.cpu is not None:
                _write(v2 / "cpu.max", f"{max(MIN_CFS_QUOTA_US, int(lim.cpu * CFS_PERIOD_US))} {CFS_PERIOD_US}")
            if lim.pids is not None:
                _write(v2 / "pids.max", str(lim.pids))
            return
        mem = d["memory"]
        if lim.memory_max is not None:
            memsw = mem / "memory.memsw.limit_in_bytes"
            # v1 requires memory.limit <= memsw.limit at every step: raise memsw first, lower it last
            cur = _read(mem / "memory.limit_in_bytes")
            raising = cur is not None and cur.strip().isdigit() and lim.memory_max > int(cur)
            order = [memsw, mem / "memory.limit_in_bytes"] if raising else [mem / "memory.limit_in_bytes", memsw]
            for f in order:
                if f != memsw or memsw.exists():
                    _write(f, str(lim.memory_max))
        if lim.memory_high is not None:
            _write(mem / "memory.soft_limit_in_bytes", str(lim.memory_high))
        if lim.cpu is not None:
            _write(d["cpu"] / "cpu.cfs_period_us", str(CFS_PERIOD_US))
            _write(d["cpu"] / "cpu.cfs_quota_us", str(max(MIN_CFS_QUOTA_US, int(lim.cpu * CFS_PERIOD_US))))
        if lim.pids is not None:
            _write(d["pids"] / "pids.max", str(lim.pids))

    @property
    def procs_files(self) -> list[Path]:
        """The ``cgroup.procs`` files a process writes its pid into to join this call."""
        return [p / "cgroup.procs" for p in dict.fromkeys(self.dirs.values())]

    @property
    def v2_dir(self) -> Path | None:
        """The call's v2 directory (identity, ``cgroup.kill``, PSI), or None without cgroup2."""
        return self.dirs.get("v2")

    @property
    def cgroup_id(self) -> int | None:
        """The v2 cgroup id (inode of `v2_dir`), as ``bpf_get_current_cgroup_id()`` returns it."""
        return self.v2_dir.stat().st_ino if self.v2_dir is not None else None

    def update(self, limits: CallLimits | object) -> None:
        """Rewrite the limits of a live call (e.g. let it burst, or hold it to its intent).

        Fields that are None are left as they are.

        Raises:
            SandboxError: a limit could not be written (e.g. a memory limit below current usage
                that the kernel cannot reclaim to: v1 answers EBUSY).
        """
        lim = limits if isinstance(limits, CallLimits) else CallLimits.from_limits(limits)
        self._apply(lim)
        self.limits = CallLimits(*(new if new is not None else old for new, old in
                                   zip((lim.memory_max, lim.memory_high, lim.cpu, lim.pids),
                                       (self.limits.memory_max, self.limits.memory_high, self.limits.cpu,
                                        self.limits.pids), strict=True)))

    def memory_current(self) -> int | None:
        """Memory charged to the call now, bytes (``memory.current`` / ``memory.usage_in_bytes``)."""
        f = (self.dirs["v2"] / "memory.current" if self.session.driver.layout.kind == "v2"
             else self.dirs["memory"] / "memory.usage_in_bytes")
        text = _read(f)
        return int(text) if text and text.strip().isdigit() else None

    def pids(self) -> list[int]:
        """Host pids of the processes in the call now (from the first hierarchy)."""
        return _procs(next(iter(self.dirs.values())))

    def usage(self) -> CgroupUsage:
        """Read the call's counters (see `CgroupUsage` for the files). Never raises."""
        d = self.dirs
        if self.session.driver.layout.kind == "v2":
            v2 = d["v2"]
            cpu = _keyed(_read(v2 / "cpu.stat"))
            peak = _read(v2 / "memory.peak")
            pp = _read(v2 / "pids.peak")
            return CgroupUsage(
                memory_peak_bytes=int(peak) if peak and peak.strip().isdigit() else None,
                cpu_seconds=cpu["usage_usec"] / 1e6 if "usage_usec" in cpu else None,
                nr_periods=cpu.get("nr_periods"), throttled_periods=cpu.get("nr_throttled"),
                throttled_seconds=cpu["throttled_usec"] / 1e6 if "throttled_usec" in cpu else None,
                oom_kills=_keyed(_read(v2 / "memory.events")).get("oom_kill"),
                pids_peak=int(pp) if pp and pp.strip().isdigit() else None,
                pids_max_hits=_keyed(_read(v2 / "pids.events")).get("max"))
        peak = _read(d["memory"] / "memory.max_usage_in_bytes")
        cpu_ns = _read(d["cpuacct"] / "cpuacct.usage") if "cpuacct" in d else None
        cpu_s: float | None = int(cpu_ns) / 1e9 if cpu_ns and cpu_ns.strip().isdigit() else None
        if cpu_s is None and "v2" in d:  # the v2 tree has core cpu.stat without controllers
            v2cpu = _keyed(_read(d["v2"] / "cpu.stat"))
            cpu_s = v2cpu["usage_usec"] / 1e6 if "usage_usec" in v2cpu else None
        stat = _keyed(_read(d["cpu"] / "cpu.stat"))
        pp = _read(d["pids"] / "pids.peak")
        return CgroupUsage(
            memory_peak_bytes=int(peak) if peak and peak.strip().isdigit() else None,
            cpu_seconds=cpu_s, nr_periods=stat.get("nr_periods"),
            throttled_periods=stat.get("nr_throttled"),
            throttled_seconds=stat["throttled_time"] / 1e9 if "throttled_time" in stat else None,
            oom_kills=_keyed(_read(d["memory"] / "memory.oom_control")).get("oom_kill"),
            pids_peak=int(pp) if pp and pp.strip().isdigit() else None,
            pids_max_hits=_keyed(_read(d["pids"] / "pids.events")).get("max"))

    def kill(self) -> None:
        """SIGKILL every process of the call (v2 ``cgroup.kill``; else freeze, kill, thaw)."""
        _kill_tree(list(dict.fromkeys(self.dirs.values())), self.dirs.get("v2"), self.dirs.get("freezer"))

    def populated(self) -> bool:
        """Whether any process is still in the call's groups."""
        return _populated(list(dict.fromkeys(self.dirs.values())), self.dirs.get("v2"))

    def close(self, timeout: float = 5.0) -> None:
        """Kill what still runs, wait until the groups are empty, and remove them. Idempotent.

        Raises:
            SandboxError: a process survived ``timeout`` seconds of SIGKILL, or a directory
                could not be removed.
        """
        if self._closed:
            return
        v2 = self.dirs.get("v2")
        dirs = [d for c, d in self.dirs.items() if c != "v2"]
        _destroy(list(dict.fromkeys(dirs)), v2, self.dirs.get("freezer"), timeout)
        self._closed = True
        self.session._calls.pop(self.name, None)

    def __enter__(self) -> CallGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SessionGroup:
    """One session's group: the parent of its calls' groups (an optional memory budget).

    Attributes:
        name: ``session-<n>``.
        dirs: controller -> directory.
    """

    def __init__(self, driver: CgroupDriver, name: str, memory_max: int | None) -> None:
        self.driver = driver
        self.name = name
        self.dirs: dict[str, Path] = {c: d / name for c, d in driver.dirs.items()}
        self._calls: dict[str, CallGroup] = {}
        self._seq = itertools.count(1)
        self._lock = threading.Lock()
        for d in dict.fromkeys(self.dirs.values()):
            try:
                d.mkdir()
            except OSError as exc:
                raise SandboxError(f"cannot create cgroup {d}: {exc}") from exc
        if driver.layout.kind == "v2":
            _write(self.dirs["v2"] / "cgroup.subtree_control", "+memory +cpu +pids")
        if memory_max is not None:
            f = "memory.max" if driver.layout.kind == "v2" else "memory.limit_in_bytes"
            _write(self.dirs["v2" if driver.layout.kind == "v2" else "memory"] / f, str(memory_max))

    def call(self, limits: CallLimits | object | None = None, name: str | None = None) -> CallGroup:
        """Create a call's group with ``limits`` (a `CallLimits` or an `agentrt.tools.Limits`).

        Raises:
            SandboxError: the group could not be created or a limit not written.
        """
        if limits is None:
            limits = CallLimits()
        elif not isinstance(limits, CallLimits):
            limits = CallLimits.from_limits(limits)
        with self._lock:
            name = name or f"call-{next(self._seq)}"
            call = CallGroup(self, name, limits)
            self._calls[name] = call
        return call

    def close(self, timeout: float = 5.0) -> None:
        """Close every call still open, then remove the session's groups."""
        for call in list(self._calls.values()):
            call.close(timeout)
        v2 = self.dirs.get("v2")
        dirs = [d for c, d in self.dirs.items() if c != "v2"]
        _destroy(list(dict.fromkeys(dirs)), v2, self.dirs.get("freezer"), timeout)
        self.driver._sessions.pop(self.name, None)

    def __enter__(self) -> SessionGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def reap_stale(layout: CgroupLayout) -> list[str]:
    """Remove ``agentrt-<pid>-<start>`` groups whose runtime is dead, killing what runs in them.

    Returns:
        The runtime ids reaped.
    """
    bases = _bases(layout)
    # every hierarchy an older version (or another layout choice) may have used
    bases.update({c: d for c, d in layout.v1.items() if c in ("memory", "cpu", "cpuacct", "pids", "freezer")})
    stale: set[str] = set()
    for base in dict.fromkeys(bases.values()):
        try:
            entries = list(base.iterdir())
        except OSError:
            continue
        for e in entries:
            m = _NAME.match(e.name)
            if m and e.is_dir() and not _alive(f"{m.group(1)}-{m.group(2)}"):
                stale.add(f"{m.group(1)}-{m.group(2)}")
    for rid in sorted(stale):
        dirs = {c: b / f"agentrt-{rid}" for c, b in bases.items()}
        v2 = dirs.pop("v2", None)
        try:
            _destroy(list(dict.fromkeys(dirs.values())), v2, dirs.get("freezer"), 5.0)
            log.info("reaped cgroups of dead runtime %s", rid)
        except SandboxError as exc:
            log.warning("could not reap cgroups of dead runtime %s: %s", rid, exc)
    return sorted(stale)


def _bases(layout: CgroupLayout) -> dict[str, Path]:
    if layout.kind == "v2":
        assert layout.v2 is not None
        return {"v2": layout.v2}
    # With a v2 tree, its directory gives CPU time (core cpu.stat) and cgroup.kill without any
    # controller: cpuacct and freezer groups would only add a mkdir, a join and an rmdir per call.
    wanted = ("memory", "cpu", "pids") if layout.v2 is not None else ("memory", "cpu", "cpuacct", "pids", "freezer")
    bases = {c: d for c, d in layout.v1.items() if c in wanted}
    if layout.v2 is not None:
        bases["v2"] = layout.v2
    return bases


class CgroupDriver:
    """Creates and removes this runtime's groups: ``<base>/agentrt-<runtime id>/session-*/call-*``.

    ``<base>`` is this process's own group in each hierarchy, so calls stay inside the limits the
    runtime itself lives under. Creating a driver first reaps the groups of dead runtimes. One
    driver per process is typical; several share the ``agentrt-<runtime id>`` root.

    Example::

        driver = CgroupDriver()
        with driver.session() as s, s.call(Limits(memory="64M", cpu=0.5, pids=32)) as call:
            proc = subprocess.run(shim_argv(call.procs_files, ["python3", "-c", "..."]))
            peak = call.usage().memory_peak_bytes

    Raises:
        SandboxUnavailable: no usable layout (names what is missing), or not allowed to create
            groups (not root and no delegated subtree).
    """

    _instances: ClassVar[list[CgroupDriver]] = []
    _registered: ClassVar[bool] = False
    _seq: ClassVar[itertools.count[int]] = itertools.count(1)

    def __init__(self, layout: CgroupLayout | None = None, *, reap: bool = True) -> None:
        self.layout = layout or detect_layout()
        if self.layout.kind == "none":
            raise SandboxUnavailable(f"cgroups: {self.layout.detail}; needed: {self.layout.missing}")
        if not self.layout.writable:
            raise SandboxUnavailable(
                f"cgroups: {self.layout.detail}, but this user (uid {os.getuid()}) cannot create groups "
                "there: run as root, or inside a delegated subtree (systemd-run --scope -p Delegate=yes)")
        self.runtime_id = runtime_id()
        self.reaped = reap_stale(self.layout) if reap else []
        bases = _bases(self.layout)
        self.dirs: dict[str, Path] = {c: b / f"agentrt-{self.runtime_id}" for c, b in bases.items()}
        for d in self.dirs.values():
            try:
                d.mkdir(exist_ok=True)
            except OSError as exc:
                raise SandboxUnavailable(f"cannot create cgroup {d}: {exc}") from exc
        if self.layout.kind == "v2":
            self._enable_v2_controllers(bases["v2"])
        self._sessions: dict[str, SessionGroup] = {}
        CgroupDriver._instances.append(self)
        if not CgroupDriver._registered:
            atexit.register(CgroupDriver._close_all)
            CgroupDriver._registered = True

    def _enable_v2_controllers(self, base: Path) -> None:
        for d in (base, self.dirs["v2"]):
            try:
                (d / "cgroup.subtree_control").write_text("+memory +cpu +pids")
            except OSError as exc:
                if exc.errno == errno.EBUSY:
                    raise SandboxUnavailable(
                        f"cgroups: cannot enable memory, cpu and pids below {d}: it holds processes "
                        "(cgroup v2's no-internal-process rule); run agentrt in a delegated cgroup whose "
                        "processes live in a leaf (systemd-run --scope -p Delegate=yes agentrt ...)") from exc
                raise SandboxUnavailable(f"cgroups: cannot enable controllers in {d}: {exc}") from exc

    def session(self, memory_max: int | None = None, name: str | None = None) -> SessionGroup:
        """Create a session's group; ``memory_max`` (bytes) caps the sum of its calls.

        Raises:
            SandboxError: the group could not be created.
        """
        name = name or f"session-{next(CgroupDriver._seq)}"
        s = SessionGroup(self, name, memory_max)
        self._sessions[name] = s
        return s

    def close(self, timeout: float = 5.0) -> None:
        """Close every session of this driver; remove the runtime root when no driver uses it."""
        for s in list(self._sessions.values()):
            s.close(timeout)
        if self in CgroupDriver._instances:
            CgroupDriver._instances.remove(self)
        if not any(d.dirs == self.dirs for d in CgroupDriver._instances):
            v2 = self.dirs.get("v2")
            dirs = [d for c, d in self.dirs.items() if c != "v2"]
            try:
                _destroy(list(dict.fromkeys(dirs)), v2, self.dirs.get("freezer"), timeout)
            except SandboxError as exc:
                log.warning("cgroup root not removed: %s", exc)

    @classmethod
    def _close_all(cls) -> None:
        for d in list(cls._instances):
            try:
                d.close()
            except Exception as exc:  # at exit: report, never raise
                log.warning("cgroup cleanup at exit failed: %s", exc)

    def __enter__(self) -> CgroupDriver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
