"""eBPF per-call accounting and the budget guard: one BCC monitor per runtime, keyed by cgroup id.

The monitor attaches tracepoints once (a call costs no load or attach; it only adds its v2 cgroup
id to a map) and counts, per watched call (``bpf_get_current_cgroup_id()`` = the inode of the
call's v2 directory, `CallGroup.cgroup_id`):

======================  ===================================================================
counter                 tracepoint(s) (``/sys/kernel/tracing/events``)
======================  ===================================================================
``execs``               ``sched:sched_process_exec`` (successful execve/execveat)
``forks``               ``sched:sched_process_fork`` (processes and threads created)
``opens``               ``syscalls:sys_enter_open``, ``sys_enter_openat``, ``sys_enter_openat2``
                        (attempts, failed ones included)
``read_bytes``          return values > 0 of read, pread64, readv, preadv (any fd), bytes
``write_bytes``         return values > 0 of write, pwrite64, writev, pwritev, bytes
``connects``            ``syscalls:sys_enter_connect`` (every address family)
``page_faults``         ``exceptions:page_fault_user`` (user-mode faults; rusage adds kernel ones)
``context_switches``    ``sched:sched_switch`` counted for the task switched out
``oom_victims``         ``oom:mark_victim`` counted in the cgroup of the task that ran the OOM
                        killer (for a memcg OOM, the call that hit its limit)
======================  ===================================================================

The **budget guard** (`Budget`): when a watched call's ``execs``, ``opens``, ``connects`` or
``page_faults`` count passes its limit, the program stops the task that crossed it in the kernel
(``bpf_send_signal(SIGSTOP)``, before it returns to user space) and sends one perf event. The
runtime's poll thread then freezes the rest of the call (v2 ``cgroup.freeze``) and decides:
raise the limit (by ``step``, up to ``max``) and resume it (SIGCONT + thaw), or kill it and
record the breach as `CallWatch.exceeded`, a message naming the counter, its value and the limit.
Page faults stand in for memory growth (one fault is one 4 KiB page touched the first time);
``kmem:rss_stat`` would give exact RSS but is not used.

Sources: the measurements and pitfalls in shared/notes/sandbox_cgroup.md B.c (exact tracepoint
counts, map keys zeroed, +0.3 us per event); bpf-helpers(7) for ``bpf_send_signal`` and
``bpf_get_current_cgroup_id``; BCC's reference guide for the Python API. BCC comes from Debian
(``python3-bpfcc``); it is imported only here, when a monitor starts.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Protocol

from agentrt.cgroups._ebpf_sys import (
    TRACEFS,
    ebpf_status,
    ensure_tracefs,
    import_bcc,
    program_ids,
)
from agentrt.errors import SandboxError, SandboxUnavailable

__all__ = [
    "BUDGET_COUNTERS",
    "COUNTERS",
    "BpfMonitor",
    "Breach",
    "Budget",
    "CallWatch",
    "EbpfCounts",
    "shared_monitor",
]

log = logging.getLogger(__name__)

#: The counters, in the order of the kernel's ``struct counts_t``.
COUNTERS = ("execs", "forks", "opens", "read_bytes", "write_bytes", "connects", "page_faults",
            "context_switches", "oom_victims")
#: Counters a `Budget` may guard (checked on their tracepoint, where the task can be stopped).
BUDGET_COUNTERS = ("execs", "opens", "connects", "page_faults")
#: Prefix of every BPF program name agentrt loads (kernel names hold 15 characters).
PROG_PREFIX = "art_"

_IDX = {name: i for i, name in enumerate(COUNTERS)}

_PROGRAM = r"""
#include <uapi/linux/ptrace.h>

#define NCOUNT %(ncount)d
struct counts_t { u64 v[NCOUNT]; };
struct budget_t { u64 limit[NCOUNT]; u64 tripped[NCOUNT]; };
struct breach_t { u64 cgid; u64 value; u64 limit; u64 ktime_ns; u32 pid; u32 counter; };

BPF_HASH(counts, u64, struct counts_t, %(max_calls)d);
BPF_HASH(budgets, u64, struct budget_t, %(max_calls)d);
BPF_PERF_OUTPUT(breaches);

static __always_inline struct counts_t *watched(u64 *cgid) {
    *cgid = bpf_get_current_cgroup_id();
    return counts.lookup(cgid);
}

static __always_inline void guard(void *ctx, u64 cgid, u32 idx, u64 val) {
    struct budget_t *b = budgets.lookup(&cgid);
    if (!b || idx >= NCOUNT) return;
    u64 lim = b->limit[idx];
    if (lim == 0 || val <= lim) return;
    bpf_send_signal(19);  /* SIGSTOP the task that crossed the limit, in the kernel */
    if (b->tripped[idx] == 0) {  /* notify once per breach; the runtime re-arms on a raise */
        b->tripped[idx] = 1;
        struct breach_t e;
        __builtin_memset(&e, 0, sizeof(e));
        e.cgid = cgid; e.value = val; e.limit = lim; e.ktime_ns = bpf_ktime_get_ns();
        e.pid = bpf_get_current_pid_tgid() >> 32; e.counter = idx;
        breaches.perf_submit(ctx, &e, sizeof(e));
    }
}

static __always_inline void bump(void *ctx, u32 idx, u64 delta, int guarded) {
    u64 cgid;
    struct counts_t *c = watched(&cgid);
    if (!c || idx >= NCOUNT) return;
    __sync_fetch_and_add(&c->v[idx], delta);
    if (guarded) guard(ctx, cgid, idx, c->v[idx]);
}

int art_exec(struct tracepoint__sched__sched_process_exec *args) { bump(args, %(execs)d, 1, 1); return 0; }
int art_fork(struct tracepoint__sched__sched_process_fork *args) { bump(args, %(forks)d, 1, 0); return 0; }
int art_open(struct tracepoint__syscalls__sys_enter_open *args) { bump(args, %(opens)d, 1, 1); return 0; }
int art_openat(struct tracepoint__syscalls__sys_enter_openat *args) { bump(args, %(opens)d, 1, 1); return 0; }
int art_openat2(struct tracepoint__syscalls__sys_enter_openat2 *args) { bump(args, %(opens)d, 1, 1); return 0; }
int art_connect(struct tracepoint__syscalls__sys_enter_connect *args) { bump(args, %(connects)d, 1, 1); return 0; }
int art_fault(struct tracepoint__exceptions__page_fault_user *args) { bump(args, %(page_faults)d, 1, 1); return 0; }
int art_switch(struct tracepoint__sched__sched_switch *args) { bump(args, %(context_switches)d, 1, 0); return 0; }
int art_oom(struct tracepoint__oom__mark_victim *args) { bump(args, %(oom_victims)d, 1, 0); return 0; }
#define IO_EXIT(fn, sc, idx) \
int fn(struct tracepoint__syscalls__sys_exit_##sc *args) { if (args->ret > 0) bump(args, idx, args->ret, 0); return 0; }
IO_EXIT(art_read, read, %(read_bytes)d)
IO_EXIT(art_pread, pread64, %(read_bytes)d)
IO_EXIT(art_readv, readv, %(read_bytes)d)
IO_EXIT(art_preadv, preadv, %(read_bytes)d)
IO_EXIT(art_write, write, %(write_bytes)d)
IO_EXIT(art_pwrite, pwrite64, %(write_bytes)d)
IO_EXIT(art_writev, writev, %(write_bytes)d)
IO_EXIT(art_pwritev, pwritev, %(write_bytes)d)
"""

#: function -> tracepoint ("category:event"); a tracepoint this kernel lacks is skipped.
_TRACEPOINTS = {
    "art_exec": "sched:sched_process_exec", "art_fork": "sched:sched_process_fork",
    "art_open": "syscalls:sys_enter_open", "art_openat": "syscalls:sys_enter_openat",
    "art_openat2": "syscalls:sys_enter_openat2", "art_connect": "syscalls:sys_enter_connect",
    "art_fault": "exceptions:page_fault_user", "art_switch": "sched:sched_switch",
    "art_oom": "oom:mark_victim",
    "art_read": "syscalls:sys_exit_read", "art_pread": "syscalls:sys_exit_pread64",
    "art_readv": "syscalls:sys_exit_readv", "art_preadv": "syscalls:sys_exit_preadv",
    "art_write": "syscalls:sys_exit_write", "art_pwrite": "syscalls:sys_exit_pwrite64",
    "art_writev": "syscalls:sys_exit_writev", "art_pwritev": "syscalls:sys_exit_pwritev",
}


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class EbpfCounts:
    """What the monitor counted for one call (see the module docstring for each tracepoint).

    Attributes:
        execs, forks, opens, connects, page_faults, context_switches, oom_victims: events.
        read_bytes, write_bytes: bytes returned by read-like / write-like syscalls.
    """

    execs: int = 0
    forks: int = 0
    opens: int = 0
    read_bytes: int = 0
    write_bytes: int = 0
    connects: int = 0
    page_faults: int = 0
    context_switches: int = 0
    oom_victims: int = 0

    def as_usage(self) -> dict[str, int]:
        """The counters as ``ToolUsage`` fields: ``{"ebpf_execs": n, ...}``."""
        return {f"ebpf_{f.name}": getattr(self, f.name) for f in fields(self)}

    def minus(self, other: EbpfCounts) -> EbpfCounts:
        """Field-wise difference (e.g. counts since a snapshot)."""
        return EbpfCounts(*(getattr(self, f.name) - getattr(other, f.name) for f in fields(self)))


@dataclass(frozen=True)
class Budget:
    """A budget of one counted resource for one call, enforced by the kernel.

    Attributes:
        limit: the count at which the call is stopped (stopped when the count passes it).
        max: the most the runtime may raise ``limit`` to; None = ``limit`` (never raised).
        step: how much one raise adds; None = ``limit`` (the limit doubles the first time).
    """

    limit: int
    max: int | None = None
    step: int | None = None

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError(f"a budget limit must be >= 1, not {self.limit}")
        if self.max is not None and self.max < self.limit:
            raise ValueError(f"a budget's max ({self.max}) is below its limit ({self.limit})")


@dataclass
class Breach:
    """One budget breach: the kernel stopped a task of the call; what the runtime did about it.

    Attributes:
        counter: the budgeted counter (``page_faults``, ``execs``, ``opens``, ``connects``).
        value: its count when the task was stopped; limit: the limit it passed.
        pid: the host pid the kernel sent SIGSTOP to.
        kernel_ns: ``bpf_ktime_get_ns()`` at the breach (CLOCK_MONOTONIC, = ``time.monotonic_ns``).
        notified_ns: when the runtime's poll thread received the event.
        frozen_ns: when the whole call was frozen (``cgroup.events`` ``frozen 1``), or None.
        action: ``"raised"`` (resumed with ``new_limit``) or ``"killed"``.
        new_limit: the raised limit, or None.
    """

    counter: str
    value: int
    limit: int
    pid: int
    kernel_ns: int
    notified_ns: int
    frozen_ns: int | None = None
    action: str = ""
    new_limit: int | None = None


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


class _Call(Protocol):  # what a watch needs of an agentrt.cgroups.CallGroup
    @property
    def cgroup_id(self) -> int | None: ...
    @property
    def v2_dir(self) -> Path | None: ...
    def pids(self) -> list[int]: ...
    def kill(self) -> None: ...


#: A budget policy: called with the breach and the budget; returns the new limit, or None to kill.
BreachPolicy = Callable[[Breach, Budget], "int | None"]


def default_policy(breach: Breach, budget: Budget) -> int | None:
    """Raise by ``step`` up to ``max``; kill once ``max`` is reached."""
    ceiling = budget.max if budget.max is not None else budget.limit
    if breach.limit >= ceiling:
        return None
    return min(ceiling, breach.limit + (budget.step or budget.limit))


# --------------------------------------------------------------------------- watches


class CallWatch:
    """One call being counted (and guarded) by a `BpfMonitor`; from `BpfMonitor.watch`.

    Attributes:
        cgroup_id: the call's v2 cgroup id.
        budgets: counter -> `Budget`.
        breaches: every breach so far, in order.
        exceeded: None, or the message of the breach that killed the call (names the counter,
            its count and the limit, for the planner).
    """

    def __init__(self, monitor: BpfMonitor, cgroup_id: int, call: _Call | None,
                 budgets: dict[str, Budget], policy: BreachPolicy) -> None:
        self.monitor = monitor
        self.cgroup_id = cgroup_id
        self.call = call
        self.budgets = budgets
        self.policy = policy
        self.breaches: list[Breach] = []
        self.exceeded: str | None = None
        self.limits = {c: b.limit for c, b in budgets.items()}
        self._final: EbpfCounts | None = None
        self._lock = threading.RLock()  # a policy may close the watch from the poll thread

    def counts(self) -> EbpfCounts:
        """The counts now (since the watch began)."""
        if self._final is not None:
            return self._final
        return self.monitor._read(self.cgroup_id)

    def close(self) -> EbpfCounts:
        """Stop watching; return the final counts. Idempotent.

        Waits for a breach being handled (the call may have died of it) so that `breaches` and
        `exceeded` are complete when this returns.
        """
        with self._lock:
            if self._final is None:
                final = self.counts()
                self.monitor._unwatch(self.cgroup_id)
                self._final = final
            return self._final

    def _on_breach(self, br: Breach) -> None:
        with self._lock:
            if self._final is not None or self.exceeded is not None:
                return
            self._freeze(br)
            budget = self.budgets[br.counter]
            try:
                new = self.policy(br, budget)
            except Exception as exc:  # a broken policy must not leave the call frozen
                log.warning("budget policy failed (%s); killing the call", exc)
                new = None
            self.breaches.append(br)  # recorded before acting: the call may end at once
            if new is not None and new > br.limit:
                br.action, br.new_limit = "raised", new
                self.limits[br.counter] = new
                self.monitor._set_budgets(self.cgroup_id, self.limits)
                self._resume(br)
            else:
                br.action = "killed"
                self.exceeded = (f"{br.counter} budget exceeded: the kernel stopped the call at "
                                 f"{br.counter}={br.value} (limit {br.limit}"
                                 f"{', no raise allowed' if new is None else ''}); it was killed. "
                                 f"Retry with a larger {br.counter} budget or do less in one call")
                if self.call is not None:
                    self.call.kill()
                else:  # a bare cgroup id: only the stopped task is known
                    _signal(br.pid, signal.SIGKILL)

    def _freeze(self, br: Breach) -> None:
        v2 = self.call.v2_dir if self.call is not None else None
        if v2 is None:
            return
        try:
            (v2 / "cgroup.freeze").write_text("1")
        except OSError as exc:
            log.warning("cannot freeze %s: %s", v2, exc)
            return
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            try:
                if "frozen 1" in (v2 / "cgroup.events").read_text():
                    br.frozen_ns = time.monotonic_ns()
                    return
            except OSError:
                return
            time.sleep(0.0002)

    def _resume(self, br: Breach) -> None:
        for pid in self.call.pids() if self.call is not None else [br.pid]:
            _signal(pid, signal.SIGCONT)
        v2 = self.call.v2_dir if self.call is not None else None
        if v2 is not None:
            try:
                (v2 / "cgroup.freeze").write_text("0")
            except OSError as exc:
                log.warning("cannot thaw %s: %s", v2, exc)


# --------------------------------------------------------------------------- the monitor


class BpfMonitor:
    """The runtime's one BCC monitor: tracepoint counters per call cgroup, and budget guards.

    Example::

        with BpfMonitor() as mon:
            watch = mon.watch(call, budgets={"page_faults": Budget(25_000, max=100_000)})
            ... run the call ...
            counts = watch.close()          # EbpfCounts
            watch.exceeded                  # None, or why the call was killed

    Args:
        max_calls: calls that may be watched at once (map sizes).

    Raises (from `start`):
        SandboxUnavailable: BCC, kernel headers, tracefs or root are missing, or the program
            failed to compile or load (the message says which and how to fix it).
    """

    def __init__(self, max_calls: int = 4096) -> None:
        self.max_calls = max_calls
        self._bpf: Any = None
        self._watches: dict[int, CallWatch] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.attached: list[str] = []
        self._suspended: list[str] = []
        self.start_seconds = 0.0

    @property
    def running(self) -> bool:
        return self._bpf is not None

    def program_ids(self) -> list[int]:
        """Kernel ids of this monitor's loaded programs (empty when closed)."""
        return program_ids(self._bpf)

    def start(self) -> BpfMonitor:
        """Compile and attach the programs (~0.3-1 s) and start the breach poll thread."""
        if self._bpf is not None:
            return self
        t0 = time.perf_counter()
        status = ebpf_status()
        if not status.available and "tracefs" in status.detail:
            ensure_tracefs()
            status = ebpf_status()
        if not status.available:
            raise SandboxUnavailable(f"eBPF: {status.detail}; fix: {status.missing}")
        bcc = import_bcc()
        text = _PROGRAM % {"ncount": len(COUNTERS), "max_calls": self.max_calls, **_IDX}
        try:
            b = bcc.BPF(text=text.encode(), cflags=["-Wno-visibility", "-w"])
        except Exception as exc:
            raise SandboxUnavailable(f"eBPF: the monitor program did not compile or load: {exc}") from exc
        try:
            for fn, tp in _TRACEPOINTS.items():
                cat, ev = tp.split(":")
                if not (TRACEFS / "events" / cat / ev).is_dir():
                    log.info("tracepoint %s absent on this kernel: %s not counted", tp, fn)
                    continue
                b.attach_tracepoint(tp=tp.encode(), fn_name=fn.encode())
                self.attached.append(tp)
            b[b"breaches"].open_perf_buffer(self._on_event, page_cnt=16)
        except Exception as exc:
            b.cleanup()
            raise SandboxUnavailable(f"eBPF: attaching the monitor's tracepoints failed: {exc}") from exc
        self._bpf = b
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, name="agentrt-ebpf-breaches", daemon=True)
        self._thread.start()
        self.start_seconds = time.perf_counter() - t0
        return self

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                self._bpf.perf_buffer_poll(timeout=50)
            except Exception as exc:  # the thread must not die silently
                if self._stop.is_set():
                    return
                log.warning("eBPF breach poll failed: %s", exc)
                time.sleep(0.05)

    def _on_event(self, cpu: int, data: Any, size: int) -> None:
        now = time.monotonic_ns()
        ev = self._bpf[b"breaches"].event(data)
        watch = self._watches.get(int(ev.cgid))
        if watch is None or ev.counter >= len(COUNTERS):
            return
        br = Breach(counter=COUNTERS[ev.counter], value=int(ev.value), limit=int(ev.limit), pid=int(ev.pid),
                    kernel_ns=int(ev.ktime_ns), notified_ns=now)
        if br.counter in watch.budgets:
            watch._on_breach(br)

    def watch(self, call: _Call | int, budgets: dict[str, Budget] | None = None,
              policy: BreachPolicy = default_policy) -> CallWatch:
        """Start counting a call (a `CallGroup`, or a bare v2 cgroup id) from zero.

        Args:
            call: the call's group (frozen, resumed and killed as a whole on a breach), or its
                bare id (then only the task the kernel stopped is resumed or killed).
            budgets: counter (one of `BUDGET_COUNTERS`) -> `Budget`.
            policy: decides each breach (see `default_policy`).

        Raises:
            SandboxError: the monitor is not started, the call has no v2 cgroup id, the maps
                are full, or a budget names a counter that cannot be guarded.
        """
        if self._bpf is None:
            raise SandboxError("the eBPF monitor is not started (BpfMonitor.start())")
        cgid = call if isinstance(call, int) else call.cgroup_id
        if cgid is None:
            raise SandboxError("this call has no cgroup v2 directory, so eBPF cannot identify it")
        budgets = dict(budgets or {})
        bad = [c for c in budgets if c not in BUDGET_COUNTERS]
        if bad:
            raise SandboxError(f"cannot budget {bad}: only {', '.join(BUDGET_COUNTERS)} are guarded")
        w = CallWatch(self, cgid, None if isinstance(call, int) else call, budgets, policy)
        with self._lock:
            try:
                self._bpf[b"counts"][self._key(cgid)] = self._bpf[b"counts"].Leaf()
                if budgets:
                    self._set_budgets(cgid, w.limits)
            except Exception as exc:
                raise SandboxError(f"cannot watch cgroup {cgid}: {exc}") from exc
            self._watches[cgid] = w
        return w

    def _key(self, cgid: int) -> Any:
        return self._bpf[b"counts"].Key(cgid)

    def _set_budgets(self, cgid: int, limits: dict[str, int]) -> None:
        t = self._bpf[b"budgets"]
        leaf = t.Leaf()  # zeroed: tripped flags re-armed
        for c, lim in limits.items():
            leaf.limit[_IDX[c]] = lim
        t[t.Key(cgid)] = leaf

    def _read(self, cgid: int) -> EbpfCounts:
        try:
            leaf = self._bpf[b"counts"][self._key(cgid)]
        except KeyError:
            return EbpfCounts()
        return EbpfCounts(*(int(leaf.v[i]) for i in range(len(COUNTERS))))

    def _unwatch(self, cgid: int) -> None:
        with self._lock:
            self._watches.pop(cgid, None)
            for name in (b"counts", b"budgets"):
                try:
                    del self._bpf[name][self._bpf[name].Key(cgid)]
                except (KeyError, TypeError):
                    pass

    def suspend(self) -> None:
        """Detach the tracepoints (no cost per event; nothing is counted) but keep the programs,
        maps and watches, so `resume` is quick (no compile)."""
        if self._bpf is None:
            return
        for tp in self.attached:
            self._bpf.detach_tracepoint(tp=tp.encode())
        self._suspended, self.attached = list(self.attached), []

    def resume(self) -> None:
        """Attach the tracepoints again after `suspend`."""
        if self._bpf is None:
            return
        by_tp = {tp: fn for fn, tp in _TRACEPOINTS.items()}
        for tp in self._suspended:
            self._bpf.attach_tracepoint(tp=tp.encode(), fn_name=by_tp[tp].encode())
            self.attached.append(tp)
        self._suspended = []

    def close(self) -> None:
        """Stop the poll thread, detach every tracepoint, unload the programs. Idempotent."""
        b, self._bpf = self._bpf, None
        if b is None:
            return
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)
        self._watches.clear()
        b.cleanup()
        self.attached.clear()

    def __enter__(self) -> BpfMonitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


_shared: BpfMonitor | None = None
_shared_error: str | None = None
_shared_lock = threading.Lock()


def shared_monitor() -> tuple[BpfMonitor | None, str | None]:
    """This process's one monitor, started on first use: ``(monitor, None)`` or ``(None, why not)``.

    The monitor is closed at interpreter exit (atexit), which detaches and unloads everything.
    """
    global _shared, _shared_error
    with _shared_lock:
        if _shared is None and _shared_error is None:
            mon = BpfMonitor()
            try:
                mon.start()
            except SandboxUnavailable as exc:
                _shared_error = str(exc)
                log.info("eBPF accounting off: %s", exc)
            else:
                import atexit

                atexit.register(mon.close)
                _shared = mon
        return _shared, _shared_error

