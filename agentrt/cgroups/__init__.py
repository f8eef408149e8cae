"""Per-call cgroups: layout detection, the session -> call hierarchy, limits, usage, the join shim.

Public API (see each object's docstring for units, files and errors):

- `detect_layout() -> CgroupLayout`: ``kind`` is ``"v2"`` (controllers available),
  ``"hybrid"`` (v1 memory/cpu/pids + a v2 tree without controllers, as on these machines) or
  ``"none"``; ``detail`` is one line for humans.
- `CgroupDriver(layout=None)`: reaps groups of dead runtimes, then owns
  ``<own cgroup>/agentrt-<pid>-<start ticks>``. ``driver.session(memory_max=None)`` ->
  `SessionGroup`; ``session.call(limits)`` -> `CallGroup` (``limits``: `CallLimits` or an
  `agentrt.tools.Limits`: hard = memory x memory_burst, soft = memory, CPU quota = cpu cores,
  pids.max = pids). ``driver.close()`` / ``session.close()`` / ``call.close()`` kill, drain and
  remove (also at interpreter exit).
- `CallGroup`: ``procs_files`` (to join), ``pids()``, ``memory_current()`` (bytes now),
  ``update(limits)`` (rewrite a live call's limits), ``usage() -> CgroupUsage``
  (memory_peak_bytes, cpu_seconds, nr_periods, throttled_periods, throttled_seconds, oom_kills,
  pids_peak, pids_max_hits), ``kill()``, ``populated()``, ``close()``, ``v2_dir`` and
  ``cgroup_id`` (the v2 inode, = ``bpf_get_current_cgroup_id()``), ``soft_limit_enforced``.
- `shim_argv(procs_files, argv)`: the argv that joins the groups *before* exec'ing ``argv``
  (``/bin/sh``, ~1 ms); exit status `SHIM_JOIN_FAILED` (125) if joining failed.
- `reap_stale(layout)`: remove groups of dead runtimes (the driver does it at start).

Errors: `agentrt.errors.SandboxUnavailable` when no layout can enforce limits or this user may
not create groups (the message names the fix); `agentrt.errors.SandboxError` when a group cannot
be created, written or removed.

Extension points for later parts (admission control, the container backend, eBPF): a session's
``memory_max`` is the session budget; a call's ``dirs`` maps each controller to its directory
(e.g. to place a container exec's pid by writing ``call.procs_files``); ``cgroup_id`` keys eBPF
maps.

eBPF (optional; BCC from Debian, imported only when a monitor or policy starts; see `_ebpf*.py`):

- `ebpf_status() -> EbpfStatus` (available, detail, missing): the parts present, nothing loaded.
- `BpfMonitor` (``start()``/``close()``, a context manager; `shared_monitor()` gives this
  process's one): per-call tracepoint counters keyed by cgroup id. ``monitor.watch(call,
  budgets={"page_faults": Budget(limit, max=, step=)})`` -> `CallWatch` (``counts()``,
  ``close() -> EbpfCounts``, ``breaches``, ``exceeded``): the kernel SIGSTOPs a call past a
  budget, the runtime freezes it, then raises the limit or kills it.
- `NetPolicy` (`shared_net_policy()`): ``attach(v2_dir, ["host:port", ...]) -> NetAttachment``:
  cgroup connect4/6 + sendmsg4/6 programs; everything else fails with EPERM; ``close()`` detaches.
- `EbpfCall`: both for one call, as a sandbox backend uses them (``begin`` ... ``finish()`` ->
  usage fields ``ebpf_*``); `EbpfDenied` when a call asks for a part this host lacks;
  `ebpf_parts(monitor, net=)` -> the process's monitor and policy, or why not;
  `parse_allow(["host:port"])` -> resolved allow-list entries (ValueError when one is bad).
- `ebpf_probe() -> (works, detail)`: one counted call and one denied connect (``agentrt doctor``).
- `loaded_programs()`: every BPF program in the kernel ``(id, type, name)``; agentrt's are ``art_*``.
"""

from agentrt.cgroups._driver import (
    CallGroup,
    CallLimits,
    CgroupDriver,
    CgroupUsage,
    SessionGroup,
    reap_stale,
    runtime_id,
)
from agentrt.cgroups._ebpf import (
    BUDGET_COUNTERS,
    COUNTERS,
    BpfMonitor,
    Breach,
    Budget,
    CallWatch,
    EbpfCounts,
    shared_monitor,
)
from agentrt.cgroups._ebpf_call import EbpfCall, EbpfDenied, ebpf_parts, ebpf_probe
from agentrt.cgroups._ebpf_net import (
    NetAttachment,
    NetPolicy,
    parse_allow,
    shared_net_policy,
)
from agentrt.cgroups._ebpf_sys import EbpfStatus, ebpf_status, loaded_programs
from agentrt.cgroups._layout import CgroupLayout, LayoutKind, detect_layout
from agentrt.cgroups._shim import SHIM_JOIN_FAILED, python_shim_argv, shim_argv

__all__ = [
    "BUDGET_COUNTERS",
    "COUNTERS",
    "SHIM_JOIN_FAILED",
    "BpfMonitor",
    "Breach",
    "Budget",
    "CallGroup",
    "CallLimits",
    "CallWatch",
    "CgroupDriver",
    "CgroupLayout",
    "CgroupUsage",
    "EbpfCall",
    "EbpfCounts",
    "EbpfDenied",
    "EbpfStatus",
    "LayoutKind",
    "NetAttachment",
    "NetPolicy",
    "SessionGroup",
    "detect_layout",
    "ebpf_parts",
    "ebpf_probe",
    "ebpf_status",
    "loaded_programs",
    "parse_allow",
    "python_shim_argv",
    "reap_stale",
    "runtime_id",
    "shared_monitor",
    "shared_net_policy",
    "shim_argv",
]
