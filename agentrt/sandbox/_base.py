"""The `SandboxBackend` / `Sandbox` protocols and the mapping of a call's outcome to a `ToolResult`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from agentrt.tools import Limits, Tool, ToolResult, ToolUsage

__all__ = ["ExecTarget", "Outcome", "Sandbox", "SandboxBackend", "outcome_result"]

#: What `Sandbox.exec` runs: an argv, a `Tool` (its function), or a plain Python callable.
ExecTarget = Sequence[str] | Tool | Callable[..., Any]

#: Exit status the sandbox launcher reports for a call it killed at its timeout (as coreutils
#: ``timeout``), for an OOM kill (128 + SIGKILL, as shells report it) and for another kill.
EXIT_TIMEOUT = 124
EXIT_OOM = 137
EXIT_KILLED = 137


@runtime_checkable
class Sandbox(Protocol):
    """One session's sandbox; each `exec` is one tool call under its own limits."""

    async def exec(self, target: ExecTarget, limits: Limits | None = None, stdin: bytes | None = None,
                   *, args: Mapping[str, Any] | None = None) -> ToolResult:
        """Run ``target`` (argv, `Tool` or callable with ``args``) under ``limits``.

        Returns:
            argv: ``value = {"exit_code", "stdout", "stderr"}``; ``ok`` when it exited 0, else
            ``error_kind`` ``tool_error`` (non-zero exit), ``oom``, ``timeout``, ``killed`` or
            ``denied`` (the limits ask for what the backend cannot give). A callable: its return
            value, or the error; ``usage`` is filled either way.

        Raises:
            SandboxError: the sandbox itself failed (not the call).
        """
        ...

    def close(self) -> None:
        """Kill what still runs and remove the session's resources. Idempotent."""
        ...


@runtime_checkable
class SandboxBackend(Protocol):
    """Where tool calls run: ``namespace`` (bubblewrap + cgroups), ``none`` (in process), ..."""

    name: str

    def start(self, session: str | None = None) -> Sandbox:
        """Open a session's sandbox.

        Raises:
            SandboxUnavailable: a part the backend needs is missing (names it and the fix).
        """
        ...


@dataclass
class Outcome:
    """What happened to one sandboxed process, before it becomes a `ToolResult`.

    Attributes:
        returncode: the launcher's exit status (negative: killed by that signal).
        stdout, stderr: captured output (decoded, possibly truncated).
        wall_seconds: wall-clock seconds from spawn to exit.
        timed_out: killed by the runtime at ``Limits.timeout``.
        oom_kills: processes the OOM killer killed in the call (None: not measurable).
        usage: extra usage fields (cpu_seconds, memory_peak_bytes, throttled_seconds, ...).
    """

    returncode: int
    stdout: str
    stderr: str
    wall_seconds: float
    timed_out: bool = False
    oom_kills: int | None = None
    usage: dict[str, Any] | None = None


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1].strip() if lines else ""


def outcome_result(o: Outcome, limits: Limits, *, value: Any = None, raw_argv: bool = True) -> ToolResult:
    """Map an `Outcome` to a `ToolResult`: ``oom`` > ``timeout`` > ``killed`` > ``tool_error``.

    ``oom`` when the call's cgroup counted an OOM kill (whatever the exit status: a shell may
    survive its child's kill); ``timeout`` when the runtime killed it at its limit; ``killed``
    when it died of a signal (exit status 128 + n from bubblewrap or a shell, or -n).
    """
    usage = ToolUsage(wall_seconds=o.wall_seconds, exit_status=o.returncode,
                      oom_killed=bool(o.oom_kills), timed_out=o.timed_out, **(o.usage or {}))
    if value is None and raw_argv:
        value = {"exit_code": o.returncode, "stdout": o.stdout, "stderr": o.stderr}
    if o.oom_kills:
        peak = usage.memory_peak_bytes
        peak_s = f"; peak {peak / 2**20:.1f} MiB" if peak is not None else ""
        return ToolResult(ok=False, value=value, error_kind="oom", usage=usage,
                          error=f"out of memory: the kernel killed the call at its memory limit "
                                f"({limits.memory_max / 2**20:.0f} MiB = intent x burst){peak_s}; "
                                "retry with a larger memory intent or less data")
    if o.timed_out:
        return ToolResult(ok=False, value=value, error_kind="timeout", usage=usage,
                          error=f"timed out after {limits.timeout:g} s; the call and all its processes "
                                "were killed")
    if o.returncode < 0 or o.returncode in (128 + 9, 128 + 15, 128 + 6, 128 + 11):
        sig = -o.returncode if o.returncode < 0 else o.returncode - 128
        return ToolResult(ok=False, value=value, error_kind="killed", usage=usage,
                          error=f"killed by signal {sig}{': ' + _last_line(o.stderr) if o.stderr else ''}")
    if o.returncode != 0 and raw_argv:
        return ToolResult(ok=False, value=value, error_kind="tool_error", usage=usage,
                          error=f"exit status {o.returncode}: {_last_line(o.stderr) or '(no stderr)'}")
    return ToolResult(ok=True, value=value, usage=usage)
