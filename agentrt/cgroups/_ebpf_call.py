"""One tool call's eBPF parts, for sandbox backends: its counters, budgets and network policy.

A backend calls `EbpfCall.begin` after creating the call's cgroup and before its process starts
(or, for a prewarmed call, when the call takes it: what the sandbox did while it waited is not
counted, though a call that takes a sandbox still being built counts the rest of its building),
and `EbpfCall.finish` after the process
ended and before the cgroup is removed; ``finish`` returns the usage fields to merge into the
call's ``ToolUsage``:

- ``ebpf_execs``, ``ebpf_forks``, ``ebpf_opens``, ``ebpf_read_bytes``, ``ebpf_write_bytes``,
  ``ebpf_connects``, ``ebpf_page_faults``, ``ebpf_context_switches``, ``ebpf_oom_victims``
  (`EbpfCounts`; present only where the monitor runs);
- ``ebpf_net_denied`` / ``ebpf_net_allowed``: connects and sendmsgs the policy refused / let
  through (present only for a call with an allow-list);
- ``ebpf_breaches``: ``[{"counter", "value", "limit", "action", "new_limit", "stop_to_notify_us",
  "stop_to_frozen_us"}]`` for each budget breach (present only when there was one);
- ``ebpf_limit_exceeded``: the message of the breach that killed the call (the caller reports
  the call as ``limit_exceeded`` with it).
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from agentrt.cgroups._driver import CgroupDriver
from agentrt.cgroups._ebpf import BpfMonitor, Budget, CallWatch, shared_monitor
from agentrt.cgroups._ebpf_net import NetAttachment, NetPolicy, shared_net_policy
from agentrt.cgroups._ebpf_sys import ebpf_status
from agentrt.cgroups._shim import shim_argv
from agentrt.errors import SandboxError, SandboxUnavailable

__all__ = ["EbpfCall", "EbpfDenied", "ebpf_parts", "ebpf_probe"]

log = logging.getLogger(__name__)


class EbpfDenied(Exception):
    """A call asks for an eBPF part (network allow-list, budget) this host cannot give."""


def ebpf_parts(monitor: bool | None, *, net: bool = False) -> tuple[BpfMonitor | None, NetPolicy | None, str | None]:
    """The shared monitor (and, with ``net``, the network policy) of this process.

    Args:
        monitor: True = required, None = when available, False = off.
        net: also load the network policy programs.

    Returns:
        ``(monitor or None, net policy or None, why a part is missing or None)``.

    Raises:
        SandboxError (`SandboxUnavailable`): ``monitor=True`` and the monitor cannot start.
    """
    mon, why = (None, "eBPF accounting turned off") if monitor is False else shared_monitor()
    if monitor is True and mon is None:
        raise SandboxUnavailable(why or "eBPF monitor unavailable")
    pol: NetPolicy | None = None
    if net:
        pol, why_net = shared_net_policy()
        why = why_net or why
    return mon, pol, why


class EbpfCall:
    """The eBPF parts of one call; see the module docstring.

    Attributes:
        watch: the monitor's watch, or None (no monitor).
        net: the attached network policy, or None (no allow-list).
    """

    def __init__(self, watch: CallWatch | None, net: NetAttachment | None) -> None:
        self.watch = watch
        self.net = net
        self._usage: dict[str, Any] | None = None

    @classmethod
    def begin(cls, call: Any, *, monitor: BpfMonitor | None, net_policy: NetPolicy | None = None,
              allow: Sequence[str] | None = None, budgets: Mapping[str, Budget] | None = None,
              unavailable: str | None = None) -> EbpfCall:
        """Watch ``call`` (a `CallGroup`) and attach its allow-list to its v2 directory.

        Args:
            allow: ``host:port`` entries; None = no network policy (the call's network is
                handled otherwise, e.g. by a private network namespace); ``[]`` = deny all.
            budgets: counter -> `Budget`, guarded in the kernel.
            unavailable: why a missing part is missing (for the `EbpfDenied` message).

        Raises:
            EbpfDenied: an allow-list or budgets were asked for without the part that enforces
                them, or the allow-list does not parse or resolve.
            SandboxError: the part is there but attaching failed.
        """
        if budgets and monitor is None:
            raise EbpfDenied(f"budgets {sorted(budgets)} need the eBPF monitor, which is unavailable here: "
                             f"{unavailable or 'eBPF off'}")
        if allow is not None and net_policy is None:
            raise EbpfDenied(f"network allow-list {list(allow)} needs the eBPF connect hooks, which are "
                             f"unavailable here: {unavailable or 'eBPF off'}; use network='none' or 'loopback'")
        if allow is not None and call.v2_dir is None:
            raise EbpfDenied("network allow-list needs a cgroup v2 directory per call (none on this host)")
        watch = monitor.watch(call, dict(budgets or {})) if monitor is not None and call.cgroup_id else None
        att = None
        if allow is not None:
            try:
                att = net_policy.attach(call.v2_dir, list(allow))  # type: ignore[union-attr]
            except ValueError as exc:
                if watch is not None:
                    watch.close()
                raise EbpfDenied(str(exc)) from exc
            except SandboxError:
                if watch is not None:
                    watch.close()
                raise
        return cls(watch, att)

    @property
    def exceeded(self) -> str | None:
        """The message of the budget breach that killed the call, or None."""
        return self.watch.exceeded if self.watch is not None else None

    def finish(self) -> dict[str, Any]:
        """Stop watching, detach the policy; return the usage fields. Idempotent."""
        if self._usage is not None:
            return self._usage
        usage: dict[str, Any] = {}
        if self.net is not None:
            denied, allowed = self.net.close()
            usage["ebpf_net_denied"], usage["ebpf_net_allowed"] = denied, allowed
        if self.watch is not None:
            usage.update(self.watch.close().as_usage())
            if self.watch.breaches:
                usage["ebpf_breaches"] = [
                    {"counter": b.counter, "value": b.value, "limit": b.limit, "action": b.action,
                     "new_limit": b.new_limit, "stop_to_notify_us": (b.notified_ns - b.kernel_ns) / 1e3,
                     "stop_to_frozen_us": None if b.frozen_ns is None else (b.frozen_ns - b.kernel_ns) / 1e3}
                    for b in self.watch.breaches]
            if self.watch.exceeded:
                usage["ebpf_limit_exceeded"] = self.watch.exceeded
        self._usage = usage
        return usage


def ebpf_probe() -> tuple[bool, str]:
    """End-to-end check of the eBPF parts (``agentrt doctor``): ``(works, what was seen)``.

    Starts this process's monitor and network policy, runs ``/bin/true`` in a fresh call cgroup
    (the monitor must count exactly 1 exec) and a connect to 127.0.0.1:9 under a deny-all policy
    (it must fail with EPERM). Never raises; ~0.5-1 s the first time (compiling the programs).
    """
    st = ebpf_status()
    if not st.available:
        return False, f"{st.detail}; fix: {st.missing}"
    t0 = time.perf_counter()
    mon, why = shared_monitor()
    pol, why_net = shared_net_policy()
    if mon is None or pol is None:
        return False, str(why or why_net)
    connect = ("import socket, errno\ns = socket.socket()\n"
               "try:\n    s.connect(('127.0.0.1', 9)); print('connected')\n"
               "except OSError as e:\n    print(errno.errorcode.get(e.errno, e.errno))\n")
    try:
        with CgroupDriver() as d, d.session() as s, s.call() as call:
            watch = mon.watch(call)
            subprocess.run(shim_argv(call.procs_files, ["/bin/true"]), check=True, timeout=30)
            execs = watch.close().execs
            with pol.attach(call.v2_dir, []):
                got = subprocess.run(shim_argv(call.procs_files, [sys.executable, "-c", connect]), check=False,
                                     capture_output=True, text=True, timeout=30).stdout.strip()
    except (SandboxError, OSError, subprocess.SubprocessError) as exc:
        return False, f"a test call failed: {exc}"
    ok = execs == 1 and got == "EPERM"
    return ok, (f"monitor counted {execs} exec of /bin/true (expected 1) on {len(mon.attached)} tracepoints; "
                f"a connect under a deny-all policy gave {got or 'nothing'} (expected EPERM); "
                f"{time.perf_counter() - t0:.1f} s")
