"""Sandbox backends where tool calls run, each call under its own limits.

- `SandboxBackend` / `Sandbox` (DESIGN.md): ``backend.start(session) -> Sandbox``;
  ``await sandbox.exec(argv | Tool | callable, limits, stdin, args=...) -> ToolResult``;
  ``sandbox.close()``.
- `NamespaceBackend` (``namespace``, the default on Linux): bubblewrap namespaces + a cgroup per
  call (`agentrt.cgroups`); a session used as ``async with backend.start() as sandbox:`` keeps
  ``prewarm`` calls built ahead (cgroup + bubblewrap waiting), so a call starts in ~1 ms instead
  of ~6-10 ms; `NoneBackend` (``none``): unconfined, timed only.
- `DockerBackend` (``docker``): one container per session through the Docker Engine API (tested
  against Podman's socket, `scripts/podman-service`), each call a gated exec in its own sub-group
  of the container's cgroup; a container per call when a call needs other mounts.
- `get_backend(name)`: a backend by name.

Error kinds of a call's result: ``oom`` (with ``usage.memory_peak_bytes``), ``timeout``,
``killed``, ``denied`` (limits the backend cannot give, e.g. a network allow-list),
``tool_error`` (non-zero exit, or the callable's exception: its traceback's last line),
``invalid_args``. Usage: wall_seconds, cpu_seconds, memory_peak_bytes, exit_status, oom_killed,
timed_out, plus throttled_seconds, throttled_periods, nr_periods, oom_kills, pids_peak,
pids_max_hits (namespace) or limits_enforced=False (none).
"""

from __future__ import annotations

from agentrt.sandbox._base import (
    EXIT_KILLED,
    EXIT_OOM,
    EXIT_TIMEOUT,
    ExecTarget,
    Outcome,
    Sandbox,
    SandboxBackend,
)
from agentrt.sandbox._docker import DockerBackend, DockerSandbox
from agentrt.sandbox._launch import sandboxed_command
from agentrt.sandbox._namespace import NamespaceBackend, NamespaceSandbox, bwrap_argv
from agentrt.sandbox._none import NoneBackend, NoneSandbox

__all__ = [
    "BACKENDS",
    "EXIT_KILLED",
    "EXIT_OOM",
    "EXIT_TIMEOUT",
    "DockerBackend",
    "DockerSandbox",
    "ExecTarget",
    "NamespaceBackend",
    "NamespaceSandbox",
    "NoneBackend",
    "NoneSandbox",
    "Outcome",
    "Sandbox",
    "SandboxBackend",
    "bwrap_argv",
    "get_backend",
    "sandboxed_command",
]

BACKENDS = ("namespace", "docker", "none")


def get_backend(name: str = "namespace", **options: object) -> SandboxBackend:
    """The backend called ``name`` (``namespace``, ``docker`` or ``none``), built with ``options``.

    Raises:
        SandboxUnavailable: the backend cannot run here (the message names what is missing).
        ValueError: unknown name.
    """
    if name == "namespace":
        return NamespaceBackend(**options)  # type: ignore[arg-type]
    if name == "none":
        return NoneBackend()
    if name == "docker":
        return DockerBackend(**options)  # type: ignore[arg-type]
    raise ValueError(f"unknown sandbox backend {name!r}; choose one of {', '.join(BACKENDS)}")
