"""`agentrt sandbox run`: run one command in a sandbox under limits; print its exit status and usage.

The command's stdout and stderr are printed as it wrote them (after it ends; at most 1 MiB of
each is kept), the usage summary goes to stderr (or, with ``--json``, one JSON object replaces
both on stdout). Exit status: the command's own; otherwise

- 124: killed at ``--timeout`` (as coreutils ``timeout``),
- 137: killed by the OOM killer at ``--memory`` (128 + SIGKILL, as a shell reports it),
- 128 + n: killed by signal n,
- 125: the sandbox could not run it (a part is missing, or the limits were denied).
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import anyio
import typer
from rich.console import Console

from agentrt.cli._app import app
from agentrt.errors import SandboxError
from agentrt.sandbox import BACKENDS, EXIT_OOM, EXIT_TIMEOUT, get_backend
from agentrt.tools import Limits, ToolResult

#: Exit status when the sandbox itself could not run the command.
EXIT_SANDBOX = 125
EXIT_NOT_EXECUTABLE = 126  # as POSIX shells and `env` report them
EXIT_NOT_FOUND = 127

sandbox_app = typer.Typer(name="sandbox", help="Run commands in a sandbox under per-call limits.",
                          no_args_is_help=True)
app.add_typer(sandbox_app)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def check_sandbox() -> tuple[str, str, str, str]:
    """``agentrt doctor``'s line for the sandbox: one real call under limits, end to end.

    Returns:
        ``(name, status, detail, fix)``; status is ``ok`` or ``missing``.
    """
    from agentrt.cgroups import detect_layout

    layout = detect_layout()
    name = "sandbox (namespace)"
    try:
        be = get_backend("namespace")
    except SandboxError as exc:
        fix = "apt-get install -y bubblewrap" if "bubblewrap" in str(exc) else "run as root (see the cgroups line)"
        return name, "missing", f"cannot start: {exc}", fix

    async def probe() -> ToolResult:
        sb = be.start("doctor")
        try:
            return await sb.exec(["sh", "-c", "echo $$"], Limits(memory="32M", cpu=0.5, pids=8, timeout=10))
        finally:
            sb.close()

    r = anyio.run(probe)
    if not r.ok:
        return name, "missing", f"a test call failed: {r.error}", "agentrt sandbox run -- true   (shows the error)"
    pid = (r.value or {}).get("stdout", "").strip()
    detail = (f"a call ran as pid {pid} in its own pid namespace, {layout.kind} cgroups, "
              f"{r.usage.wall_seconds * 1000:.0f} ms end to end")
    return name, "ok", detail, ""


def _mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.1f} MiB"


def _exit_code(r: ToolResult) -> int:
    if r.error_kind == "timeout":
        return EXIT_TIMEOUT
    if r.error_kind == "oom":
        return EXIT_OOM
    if r.error_kind in ("denied", "invalid_args"):
        return EXIT_SANDBOX
    rc = r.usage.exit_status
    if rc is None:
        return EXIT_SANDBOX
    return 128 - rc if rc < 0 else rc


def _summary(r: ToolResult, code: int) -> str:
    u = r.usage
    extra = u.model_extra or {}
    thr = extra.get("throttled_seconds")
    parts = [f"exit {code}" + (f" ({r.error_kind})" if r.error_kind else ""),
             f"wall {u.wall_seconds:.3f} s",
             f"cpu {u.cpu_seconds:.3f} s" if u.cpu_seconds is not None else "cpu n/a",
             f"peak {_mib(u.memory_peak_bytes)}",
             f"throttled {thr:.3f} s in {extra.get('throttled_periods')} periods" if thr is not None
             else "throttled n/a",
             f"oom kills {extra.get('oom_kills', 'n/a')}",
             f"pids peak {extra.get('pids_peak', 'n/a')}"]
    if "ebpf_execs" in extra:  # eBPF counters (namespace backend, where BCC works)
        parts.append(f"ebpf: {extra['ebpf_execs']} execs, {extra['ebpf_opens']} opens, "
                     f"{extra['ebpf_read_bytes']}/{extra['ebpf_write_bytes']} bytes read/written, "
                     f"{extra['ebpf_connects']} connects, {extra['ebpf_page_faults']} page faults")
    return "sandbox: " + ", ".join(parts)


def _check_command(argv0: str, backend: str) -> None:
    """Exit 127 (not found) or 126 (not executable) with a clear message before starting a sandbox,
    as a shell would, instead of the sandbox's own exec failure (bwrap exits 1). Only for the
    namespace and none backends, whose root is the host's (read-only); a container has its own
    filesystem and reports its own error. A relative path (``./x``) is left to the sandbox: it
    resolves against the call's work dir, not this directory."""
    if backend not in ("namespace", "none"):
        return
    from agentrt.sandbox._namespace import CLEAN_ENV

    if "/" not in argv0:
        path = CLEAN_ENV["PATH"] if backend == "namespace" else os.environ.get("PATH", CLEAN_ENV["PATH"])
        if shutil.which(argv0, path=path) is None:
            err.print(f"[red]error:[/] command not found: {argv0!r} (searched PATH={path})")
            raise typer.Exit(EXIT_NOT_FOUND)
    elif os.path.isabs(argv0):
        if not os.path.exists(argv0):
            err.print(f"[red]error:[/] no such file: {argv0}")
            raise typer.Exit(EXIT_NOT_FOUND)
        if os.path.isdir(argv0) or not os.access(argv0, os.X_OK):
            err.print(f"[red]error:[/] not an executable file: {argv0}")
            raise typer.Exit(EXIT_NOT_EXECUTABLE)


def _budgets(specs: list[str]) -> dict[str, object]:
    """``--budget COUNTER=LIMIT[:MAX]`` -> ``{counter: Budget(LIMIT, max=MAX)}``."""
    from agentrt.cgroups import BUDGET_COUNTERS, Budget

    out: dict[str, object] = {}
    for spec in specs:
        name, _, rest = spec.partition("=")
        lim, _, mx = rest.partition(":")
        if name not in BUDGET_COUNTERS or not lim.isdigit() or (mx and not mx.isdigit()):
            raise typer.BadParameter(f"{spec!r}: use COUNTER=LIMIT[:MAX], COUNTER one of "
                                     f"{', '.join(BUDGET_COUNTERS)}", param_hint="--budget")
        try:
            out[name] = Budget(int(lim), max=int(mx) if mx else None)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--budget") from None
    return out


@sandbox_app.command("run", context_settings={"allow_interspersed_args": False})
def run_cmd(
    cmd: list[str] = typer.Argument(..., metavar="-- CMD [ARGS]...", help="The command and its arguments."),
    memory: str = typer.Option("512M", help="Memory limit (bytes, or 512M, 1G...): the OOM killer acts above it."),
    burst: float = typer.Option(1.0, min=1.0, help="Hard limit = memory x burst; memory is the soft limit."),
    cpus: float = typer.Option(1.0, min=0.01, help="CPU cores (fractional), as a CFS quota."),
    pids: int = typer.Option(64, min=1, help="Most processes and threads at once (pids.max)."),
    timeout: float = typer.Option(30.0, min=0.001, help="Seconds before the command and all its children are killed."),
    network: str = typer.Option("none", help="none | loopback (a private loopback) | HOST:PORT[,HOST:PORT] (only those, enforced by "
                                 "eBPF connect hooks; denied where eBPF is unavailable)."),
    backend: str = typer.Option("namespace", help=f"Sandbox backend: {' | '.join(BACKENDS)} (docker: a "
                                "container through the Docker API, e.g. Podman's from scripts/podman-service)."),
    image: str | None = typer.Option(None, help="Container image for --backend docker (default: the one "
                                     "scripts/podman-service builds)."),
    ro: list[str] = typer.Option([], "--ro", help="Host path visible read-only (repeatable)."),
    rw: list[str] = typer.Option([], "--rw", help="Host path visible read-write (repeatable)."),
    disk: str | None = typer.Option(None, help="Size of the private /tmp holding the work dir (e.g. 64M)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (exit code, usage, output)."),
    interactive: bool = typer.Option(False, "--interactive", "-i",
                                     help="Pass this command's standard input to CMD (read to its end first)."),
    budget: list[str] = typer.Option([], "--budget", help="COUNTER=LIMIT[:MAX] (execs, opens, connects, "
                                     "page_faults): the kernel stops CMD past LIMIT; raised up to MAX, else "
                                     "killed (limit_exceeded, exit 137). Namespace backend with eBPF; repeatable."),
    ebpf: bool = typer.Option(True, "--ebpf/--no-ebpf", help="Per-call eBPF counters where BCC works (namespace "
                              "backend; loading the monitor takes ~0.3-1 s)."),
) -> None:
    """Run CMD in a sandbox; print its output, exit status and usage; exit with its status.

    Exit status: CMD's own; 124 if killed at --timeout; 137 if OOM-killed at --memory; 128+N if
    killed by signal N; 125 if the sandbox could not run it (a missing part, or denied limits);
    127 if CMD is not found, 126 if it is not executable.
    """
    _check_command(cmd[0], backend)
    net: str | tuple[str, ...] = network if network in ("none", "loopback") else tuple(
        x.strip() for x in network.split(",") if x.strip())
    try:
        limits = Limits(memory=memory, memory_burst=burst, cpu=cpus, pids=pids, timeout=timeout,
                        network=net, disk=disk, read_only_paths=tuple(ro), writable_paths=tuple(rw))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    # like `docker run -i`: stdin only when asked, so a script whose stdin stays open never hangs here
    stdin = sys.stdin.buffer.read() if interactive and sys.stdin is not None else None
    budgets = _budgets(budget)
    if budgets and backend != "namespace":
        raise typer.BadParameter("budgets need the namespace backend", param_hint="--budget")
    try:
        be = get_backend(backend, **({"image": image} if image and backend == "docker" else {}),
                         **({"ebpf_budgets": budgets} if budgets else {}),
                         **({"ebpf": False} if not ebpf and backend == "namespace" else {}))
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--backend") from None
    except SandboxError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(EXIT_SANDBOX) from None

    async def go() -> ToolResult:
        sb = be.start("cli")
        try:
            return await sb.exec(list(cmd), limits, stdin)
        finally:
            sb.close()

    try:
        r = anyio.run(go)
    except SandboxError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(EXIT_SANDBOX) from None
    code = _exit_code(r)
    value = r.value if isinstance(r.value, dict) else {}
    if as_json:
        out = {"exit_code": code, "ok": r.ok, "error_kind": r.error_kind, "error": r.error,
               "usage": r.usage.model_dump(), "stdout": value.get("stdout", ""), "stderr": value.get("stderr", ""),
               "backend": backend, "limits": limits.model_dump(mode="json")}
        sys.stdout.write(json.dumps(out) + "\n")
    else:
        sys.stdout.write(value.get("stdout", ""))
        sys.stdout.flush()
        sys.stderr.write(value.get("stderr", ""))
        if r.error_kind in ("oom", "timeout", "denied", "invalid_args", "killed", "limit_exceeded"):
            err.print(f"[red]{r.error_kind}:[/] {r.error}")
        err.print(_summary(r, code))
    raise typer.Exit(code)
