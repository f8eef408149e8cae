"""Detect the host's cgroup layout: pure v2 with controllers, hybrid (v1 controllers + v2), or none.

Sources: ``/proc/self/mountinfo`` (proc(5)) for the mounts, ``/proc/self/cgroup`` (cgroups(7))
for this process's own place in each hierarchy; new groups are created *under* that place, so a
runtime that lives in a memory cgroup (as on these machines, ``memory:/process_api/<id>``) keeps
its calls charged to it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = ["CgroupLayout", "LayoutKind", "detect_layout"]

LayoutKind = Literal["v2", "hybrid", "none"]

#: v1 controllers the driver uses: limits (memory, cpu, pids), accounting (cpuacct) and
#: kill/drain (freezer).
V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids", "freezer")
#: Controllers a v2 tree must offer for the driver to enforce limits with it.
V2_NEEDED = frozenset({"memory", "cpu", "pids"})


@dataclass(frozen=True)
class CgroupLayout:
    """Where the driver creates groups on this host.

    Attributes:
        kind: ``"v2"`` (unified tree with memory, cpu and pids controllers available),
            ``"hybrid"`` (v1 memory/cpu/pids hierarchies for limits, plus a v2 tree without
            controllers used for identity, ``cgroup.kill`` and PSI), or ``"none"``.
        v1: controller -> this process's directory in that controller's v1 hierarchy (for
            ``kind == "hybrid"``); co-mounted controllers (``cpu,cpuacct``) share a directory.
        v2: this process's directory in the v2 tree, or None when cgroup2 is not mounted.
        v2_controllers: the controllers the v2 tree offers at ``v2`` (``cgroup.controllers``).
        detail: one line for humans (``agentrt doctor``) saying what was found.
        missing: for ``kind == "none"``, what is missing and how to add it.
    """

    kind: LayoutKind
    v1: dict[str, Path] = field(default_factory=dict)
    v2: Path | None = None
    v2_controllers: frozenset[str] = frozenset()
    detail: str = ""
    missing: str = ""

    @property
    def writable(self) -> bool:
        """Whether this process may create groups (write access to every base directory)."""
        dirs = list(self.v1.values()) + ([self.v2] if self.v2 is not None else [])
        return bool(dirs) and all(os.access(d, os.W_OK) for d in dirs)


def _parse_mountinfo(text: str) -> tuple[dict[str, tuple[str, str]], list[tuple[str, str]]]:
    """``(v1: controller -> (mount point, root), v2: [(mount point, root)])``."""
    v1: dict[str, tuple[str, str]] = {}
    v2: list[tuple[str, str]] = []
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        root, mount_point, fstype, opts = fields[3], fields[4], rfields[0], rfields[2]
        if fstype == "cgroup2":
            v2.append((mount_point, root))
        elif fstype == "cgroup":
            for opt in opts.split(","):
                if opt in V1_CONTROLLERS and opt not in v1:
                    v1[opt] = (mount_point, root)
    return v1, v2


def _parse_proc_cgroup(text: str) -> tuple[dict[str, str], str | None]:
    """``(v1: controller -> path, v2 path or None)`` from ``/proc/<pid>/cgroup``."""
    v1: dict[str, str] = {}
    v2: str | None = None
    for line in text.splitlines():
        hid, _, rest = line.partition(":")
        ctrls, _, path = rest.partition(":")
        if hid == "0" and ctrls == "":
            v2 = path
        else:
            for c in ctrls.split(","):
                v1[c] = path
    return v1, v2


def _join(mount_point: str, mount_root: str, path: str) -> Path:
    # A mount of a sub-tree (mount root != "/", as in containers) shows only what lies below it.
    rel = path
    if mount_root not in ("/", "") and path.startswith(mount_root):
        rel = path[len(mount_root):]
    return Path(mount_point) / rel.lstrip("/")


def detect_layout(mountinfo: str | None = None, proc_cgroup: str | None = None) -> CgroupLayout:
    """Classify this host's cgroups and find this process's own directories.

    Args:
        mountinfo: text of ``/proc/self/mountinfo`` (read when None; tests pass their own).
        proc_cgroup: text of ``/proc/self/cgroup`` (read when None).

    Returns:
        A `CgroupLayout`; ``kind == "none"`` with ``missing`` set when no layout can enforce
        memory, CPU and pids limits. Never raises for a missing feature.
    """
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError as exc:
            return CgroupLayout("none", detail=f"cannot read /proc/self/mountinfo: {exc}",
                                missing="a Linux /proc filesystem")
    if proc_cgroup is None:
        try:
            proc_cgroup = Path("/proc/self/cgroup").read_text()
        except OSError:
            proc_cgroup = ""
    v1_mounts, v2_mounts = _parse_mountinfo(mountinfo)
    own_v1, own_v2 = _parse_proc_cgroup(proc_cgroup)

    v2_dir: Path | None = None
    v2_ctrls: frozenset[str] = frozenset()
    if v2_mounts:
        mp, root = v2_mounts[0]
        v2_dir = _join(mp, root, own_v2 or "/")
        try:
            v2_ctrls = frozenset((v2_dir / "cgroup.controllers").read_text().split())
        except OSError:
            v2_ctrls = frozenset()
    v2_desc = f"controllers: {' '.join(sorted(v2_ctrls))}" if v2_ctrls else "no controllers"

    if v2_dir is not None and V2_NEEDED <= v2_ctrls:
        return CgroupLayout("v2", v2=v2_dir, v2_controllers=v2_ctrls,
                            detail=f"cgroup v2 at {v2_dir} with {v2_desc}")
    v1_dirs: dict[str, Path] = {}
    for ctrl, (mp, root) in v1_mounts.items():
        v1_dirs[ctrl] = _join(mp, root, own_v1.get(ctrl, "/"))
    lacking = [c for c in ("memory", "cpu", "pids") if c not in v1_dirs]
    if not lacking:
        where = f"; cgroup v2 at {v2_dir} ({v2_desc}) for identity" if v2_dir else "; no cgroup v2"
        kind: LayoutKind = "hybrid"
        return CgroupLayout(kind, v1=v1_dirs, v2=v2_dir, v2_controllers=v2_ctrls,
                            detail=f"hybrid: v1 {', '.join(sorted(v1_dirs))} at {v1_dirs['memory']}"
                                   f"{where}")
    if v2_dir is not None:
        return CgroupLayout("none", v2=v2_dir, v2_controllers=v2_ctrls,
                            detail=f"cgroup v2 at {v2_dir} with {v2_desc}; memory, cpu and pids needed",
                            missing="enable the controllers for this subtree (echo +memory +cpu +pids "
                                    "> cgroup.subtree_control of the parent) or run in a delegated "
                                    "cgroup (systemd-run --scope -p Delegate=yes ...)")
    return CgroupLayout("none", detail="no cgroup filesystem mounted",
                        missing="mount cgroup2 (mount -t cgroup2 none /sys/fs/cgroup) or v1 "
                                f"{', '.join(lacking)} hierarchies")
